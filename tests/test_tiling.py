"""Decoding memory: tiled synthesis (icm_lib.tiling) and the decode-budget bench's crafted
streams (``python -m icm_lib.bench decode-budget``)."""

import json
import subprocess
import sys

import pytest
import torch

from icm_lib.dev.bench import budget_codec, crafted_stream
from icm_lib.dev.common import scene_images
from icm_lib.tiling import exact_overlap, seam_error, synthesize_tiled


@pytest.fixture(scope="module")
def latents(trained_family_codecs):
    """ŷ (1, 48, 32, 32) of a 512 px scene under each briefly trained family codec."""
    codecs, _ = trained_family_codecs
    x = scene_images(1, 512, seed=3)
    with torch.no_grad():
        return {f: (c.eval(), c.encode(x)["latent_hat"]) for f, c in codecs.items()}


@pytest.mark.parametrize("family", ["scale", "mean-scale", "autoregressive"])
def test_tiled_synthesis_equals_the_full_one_with_enough_overlap(latents, family):
    codec, y = latents[family]
    exact = exact_overlap(codec.name)
    for tile in (5, 8, 16):
        assert seam_error(codec.decoder, y, tile, exact) < 1e-5
    # the bound is not vacuous: without context the seams show
    assert seam_error(codec.decoder, y, 8, 0) > 1e-2


def test_tiles_cover_any_shape():
    g_s = budget_codec("bmshj2018-hyperprior", "smoke").decoder
    torch.manual_seed(0)
    for h, w in ((1, 1), (3, 40), (17, 5), (9, 9)):
        y = torch.randn(1, 48, h, w)
        tiled = synthesize_tiled(g_s, y, tile=4, overlap=2)
        assert tiled.shape == (1, 3, 16 * h, 16 * w)
        assert torch.allclose(tiled, g_s(y), atol=1e-5)
    with pytest.raises(ValueError, match="tile"):
        synthesize_tiled(g_s, y, tile=0)


PEAKS = """
import json, torch
from pathlib import Path
from icm_lib.dev.bench import budget_codec
from icm_lib.tiling import synthesize_tiled
torch.set_num_threads(1)
g_s = budget_codec("bmshj2018-hyperprior", "smoke").decoder
y = torch.zeros(1, 48, 64, 64)  # a 1024 x 1024 image

def status_kb(field):
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field))
    return int(line.split()[1])

def reset():  # the peak (VmHWM) back to the current resident size
    Path("/proc/self/clear_refs").write_text("5")
    return status_kb("VmRSS")

with torch.no_grad():
    g_s(torch.zeros(1, 48, 4, 4))  # torch's one-time allocations, before the baseline
    before = reset()
    x = synthesize_tiled(g_s, y, tile=16, overlap=2)
    tiled = status_kb("VmHWM") - before
    del x
    before = reset()
    x = g_s(y)
    full = status_kb("VmHWM") - before
print(json.dumps({"tiled": tiled, "full": full}))
"""


def test_tiled_synthesis_bounds_the_peak_memory():
    """In a fresh process, each synthesis's peak resident memory above the level before it
    (Linux: the peak is reset through /proc/self/clear_refs before each)."""
    out = subprocess.run(
        [sys.executable, "-c", PEAKS], capture_output=True, text=True, check=True, timeout=300
    )
    kb = json.loads(out.stdout.strip().splitlines()[-1])
    # the full synthesis holds several 32-channel 512² activations (~32 MB each); the tiled one
    # the 12 MB image and one tile's activations
    assert kb["full"] > 60_000 and kb["tiled"] < kb["full"] / 2, kb


@pytest.mark.parametrize("name", ["bmshj2018-hyperprior", "mbt2018-mean", "cheng2020-attn"])
def test_crafted_streams_are_tiny_valid_claims(name):
    codec = budget_codec(name, "smoke")
    data = crafted_stream(codec, 130, 70)  # padded to 192 x 128
    x = codec.decompress(data)
    assert x.shape == (1, 3, 130, 70) and torch.isfinite(x).all()
    big = crafted_stream(codec, 1024, 1024)
    # a claim costs almost nothing: under 0.1 bit per claimed pixel (random weights; a trained
    # codec's most probable symbols are cheaper still), far below any real image's rate
    assert len(big) * 8 / (1024 * 1024) < 0.1


def test_decode_budget_cli_prints_a_row_per_case(tmp_path, capsys):
    from icm_lib.dev.bench import main

    out = tmp_path / "rows.json"
    argv = ["decode-budget", "--claims", "64x128", "--codecs", "mbt2018-mean", "--tile", "2"]
    assert main([*argv, "--overlap", "2", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert row["codec"] == "mbt2018-mean" and row["mpix"] == pytest.approx(64 * 128 / 1e6)
    assert row["seconds"] > 0 and row["peak_mb"] >= 0 and "tiled_mb" in row
    assert "s/MPix" in capsys.readouterr().out


@pytest.mark.parametrize("family", ["scale", "autoregressive"])
def test_decompress_with_tiles_equals_the_whole_synthesis(trained_family_codecs, family):
    """``decompress(tile=...)``: the same pixels (to float rounding) and the same decoded ŷ."""
    codecs, _ = trained_family_codecs
    codec = codecs[family].eval()
    data = codec.compress(scene_images(1, 320, seed=4))
    whole = codec.decompress(data)
    latent = codec.decoded_latent(data)
    tiled = codec.decompress(data, tile=6)  # a 20 x 20 latent in 4 x 4 tiles
    assert tiled.shape == whole.shape
    assert (tiled - whole).abs().max() < 1e-5
    assert torch.equal(codec._captured.pop("latent_hat"), latent)
    assert torch.equal(codec.decompress(data, tile=64), whole)  # one tile: the whole latent
