"""No input crashes or hangs the decoder or the encoder's door: damaged, crafted and
extreme-aspect containers behind a recomputed checksum, and NaN / ±inf images and weights, each
case in a worker process (icm_lib.fuzz), for the scale, mean-scale and autoregressive families
with random and briefly trained weights."""

import random
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from icm_lib import bitstream
from icm_lib.codec import ICMCodec, build_codec
from icm_lib.dev.fuzz import KINDS, NONFINITE_FORMS, fuzz, mutate, nonfinite_input
from icm_lib.errors import BitstreamError


def _check(rows, cases):
    assert len(rows) == 3 * 2 * len(KINDS)
    for r in rows:
        assert r["cases"] == cases
        assert r["decoded"] + r["refused"] + r["other"] + r["crash"] + r["hang"] == cases
        assert (r["crash"], r["hang"], r["other"]) == (0, 0, 0), r
        assert r["refused"] > 0, r  # the mutations reach the checks
        if r["kind"] == "nonfinite":
            assert r["refused"] == cases, r  # no NaN / inf image or weight is ever coded


def test_fuzz_decoder_isolated_cases():
    # aspect claims up to 64 x 2048 px here (seconds per case); the module's default is 65536
    _check(fuzz(cases=12, train_steps=60, aspect_side=2048), 12)


def _small(name="bmshj2018-hyperprior"):
    torch.manual_seed(0)
    codec = build_codec(name, N=32, M=48).eval()
    codec.update()
    return codec


def test_aspect_claims_are_consistent_and_reach_the_decode_limit():
    """``aspect`` headers are consistent (they reach the decoder's work, not its header
    checks), thin either way round, and include 64 x 65,536 (written as 65,535 + 1 px of
    padding): exactly the default max_decode_pixels, so it is decoded before it is refused."""
    codec = _small()
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    data = codec.compress(image)
    claims = Counter()
    for seed in range(200):
        header, _ = bitstream.unpack(mutate(data, "aspect", random.Random(seed)))
        ph, pw = header.height + header.pad_h, header.width + header.pad_w
        assert min(ph, pw) in (64, 128) and max(ph, pw) <= 65536
        assert header.latent_shape == (ph // 64, pw // 64)
        assert 0 <= header.pad_h < 64 and 0 <= header.pad_w < 64
        claims[(ph, pw)] += 1
    assert claims[(64, 65536)] and claims[(65536, 64)]
    assert any(ph > pw for ph, pw in claims) and any(ph < pw for ph, pw in claims)
    assert 64 * 65536 == ICMCodec.max_decode_pixels
    seed = next(
        s
        for s in range(200)
        if (lambda h: (h.width, h.pad_w, h.height) == (65535, 1, 64))(
            bitstream.unpack(mutate(data, "aspect", random.Random(s)))[0]
        )
    )
    t0 = time.perf_counter()
    with pytest.raises(BitstreamError, match="does not end"):  # decoded in full, then refused
        codec.decompress(mutate(data, "aspect", random.Random(seed)))
    assert time.perf_counter() - t0 < 120


def test_nonfinite_cases_cover_every_form_and_are_refused():
    codec = _small()
    seen = Counter()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(80):
            form, run, expected = nonfinite_input(codec, random.Random(seed), Path(tmp))
            with pytest.raises(expected, match="NaN or infinite"):
                run()
            seen[form] += 1
    assert set(seen) == set(NONFINITE_FORMS)


@pytest.mark.slow
def test_fuzz_decoder_many_cases():
    _check(fuzz(cases=400, train_steps=300), 400)


def test_mutations_keep_a_valid_checksum_and_change_the_stream():
    data = bitstream.pack(
        bitstream.Header(
            "bmshj2018-hyperprior", 0, 32, 48, 128, 128, 0, 0, (2, 2), bytes(range(8))
        ),
        [bytes(range(64))],
    )
    rng = random.Random(0)
    for kind in [k for k in KINDS if k not in ("nonfinite", "files")]:
        changed = 0
        for _ in range(50):
            blob = mutate(data, kind, rng)
            changed += blob != data
            if kind != "header":  # header bytes may break the structure, never the CRC
                bitstream.unpack(blob)
        assert changed >= 45, kind


def test_damaged_files_are_refused_or_read_as_promised(tmp_path):
    """Every form of the ``files`` kind (a codec, a results file, a log; cut, flipped, blocks,
    emptied, NaN, garbled): the reader refuses it with the project's error or reads it as it
    promises -- a codec only with its exact weights."""
    from icm_lib.dev.fuzz import FILE_FORMS, damaged_file
    from icm_lib.files import atomic_torch_save

    codec_path = tmp_path / "codec.pt"
    atomic_torch_save(_small().codec_state(), codec_path)
    outcomes, forms = Counter(), Counter()
    for seed in range(150):
        form, run = damaged_file(str(codec_path), random.Random(seed), tmp_path)
        outcome = run()
        forms[form.split("-")[0]] += 1
        outcomes[outcome] += 1
        if form in ("codec-cut", "codec-empty", "results-empty"):
            assert outcome == "refused", form
        assert outcome in ("refused", "decoded"), (form, outcome)
    assert set(forms) == set(FILE_FORMS) and outcomes["refused"] > 30
