"""Le et al.: the PatchGAN, decoder-only finetuning (bitstreams unchanged), the checkerboard score."""

import pytest
import torch
import torch.nn.functional as F

from icm_lib.gan import (
    PatchDiscriminator,
    discriminator_loss,
    generator_loss,
    load_or_finetune,
    trainable_decoder_parameters,
)
from icm_lib.metrics import checkerboard_score
from icm_lib.profiles import get_profile

CPU = torch.device("cpu")


@pytest.mark.parametrize("n_layers, expected", [(3, 70), (2, 34), (1, 16)])
def test_receptive_field_formula_and_measured(n_layers, expected):
    d = PatchDiscriminator(channels=8, n_layers=n_layers).eval()
    assert d.receptive_field == expected
    x = torch.rand(1, 3, 160, 160, requires_grad=True)
    out = d(x)
    out[0, 0, out.shape[2] // 2, out.shape[3] // 2].backward()
    rows = x.grad.abs().sum((0, 1, 3)).nonzero()
    cols = x.grad.abs().sum((0, 1, 2)).nonzero()
    # the gradient of one logit covers at most the receptive field (zero padding can trim it)
    assert int(rows.max() - rows.min() + 1) == expected == int(cols.max() - cols.min() + 1)


def test_pix2pix_widths():
    convs = [m for m in PatchDiscriminator().net if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 1]
    assert [c.stride[0] for c in convs] == [2, 2, 2, 1, 1] and {
        c.kernel_size[0] for c in convs
    } == {4}


@pytest.mark.parametrize("kind", ["lsgan", "ns"])
def test_adversarial_losses_prefer_the_right_answer(kind):
    good, bad = torch.full((4,), 5.0), torch.full((4,), -5.0)
    assert discriminator_loss(good, bad, kind) < discriminator_loss(bad, good, kind)
    if kind == "ns":
        assert generator_loss(good, kind) < generator_loss(bad, kind)
    with pytest.raises(ValueError):
        generator_loss(good, "wgan")


def _smooth_photo(size=128):
    from skimage import data

    from icm_lib.data.images import to_rgb_tensor

    x = to_rgb_tensor(data.astronaut())[None]
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def test_checkerboard_score_sees_periodic_patterns_only():
    x = _smooth_photo()
    blurred = F.avg_pool2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), 5, 1)
    yy, xx = torch.meshgrid(torch.arange(128), torch.arange(128), indexing="ij")
    period2 = 0.04 * (((yy + xx) % 2) * 2 - 1).float()
    period8 = 0.04 * (((yy // 4 + xx // 4) % 2) * 2 - 1).float()
    assert checkerboard_score(x + period2, x) > 0.99  # a residual that is only the pattern
    assert checkerboard_score(x + period8, x) > 0.9
    assert checkerboard_score(blurred, x) < 0.01  # a smooth residual has no peaks
    assert checkerboard_score((x + 0.03 * torch.randn_like(x)), x) < 0.01  # nor has white noise
    mixed = checkerboard_score(blurred + period2, x)
    assert 0.1 < mixed < 0.9 and mixed > checkerboard_score(blurred + 0.25 * period2, x)
    with pytest.raises(ValueError, match="multiples"):
        checkerboard_score(x[..., :100, :100], x[..., :100, :100])


def test_decoder_layers_choice():
    from icm_lib.codec import build_codec

    codec = build_codec("bmshj2018-hyperprior", N=16, M=24)
    first_two = trainable_decoder_parameters(codec, 2)
    children = list(codec.decoder.children())
    assert {id(p) for p in first_two} == {id(p) for m in children[:2] for p in m.parameters()}
    assert all(not p.requires_grad for p in codec.encoder_parameters())
    assert len(trainable_decoder_parameters(codec, None)) == len(list(codec.decoder_parameters()))
    with pytest.raises(ValueError):
        trainable_decoder_parameters(codec, 99)


def _finetune(exp, tmp_path, preset="full", stop_after=None, seed=0):
    return load_or_finetune(
        exp.reference,
        exp.machine("seg"),
        exp.datasets.train("seg"),
        exp.profile.gan,
        preset,
        seed,
        tmp_path,
        CPU,
        progress=False,
        stop_after=stop_after,
    )


def test_finetuning_changes_the_decoder_only_and_keeps_bitstreams(smoke_env, tmp_path):
    reference = smoke_env.reference
    x = smoke_env.datasets.val("seg")[0][0]
    tuned, log, run_dir = _finetune(smoke_env, tmp_path)
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    for (name, a), b in zip(reference.encoder_named_parameters(), tuned.encoder_parameters()):
        assert torch.equal(a, b), name  # bit for bit
    assert any(
        not torch.equal(a, b)
        for a, b in zip(reference.decoder_parameters(), tuned.decoder_parameters())
    )
    data = reference.compress(x)
    assert tuned.compress(x) == data  # same bytes: the rate cannot change
    assert not torch.equal(tuned.decompress(data), reference.decompress(data))
    assert (run_dir / "discriminator.pt").is_file()


def test_finetuning_resumes_bit_for_bit(smoke_env, tmp_path):
    straight, log_a, _ = _finetune(smoke_env, tmp_path / "a")
    _finetune(smoke_env, tmp_path / "b", stop_after=2)
    torch.manual_seed(42)
    resumed, log_b, _ = _finetune(smoke_env, tmp_path / "b")
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    assert log_a == [dict(r, seconds=a["seconds"]) for r, a in zip(log_b, log_a)]


def test_a_seeds_presets_compute_its_pseudo_labels_once(smoke_env, tmp_path, monkeypatch):
    """Every preset of a seed finetunes on the same crops: the first computes their labels, the
    next reads them all from the cache, and trains bit for bit as without it."""
    machine = smoke_env.machine("seg")
    real, calls = type(machine).pseudo_labels, {"n": 0}

    def counting(self, x):
        calls["n"] += 1
        return real(self, x)

    monkeypatch.setattr(type(machine), "pseudo_labels", counting)
    monkeypatch.setenv("ICM_PSEUDO_CACHE", "0")
    plain, _, _ = _finetune(smoke_env, tmp_path / "off", "limited")
    assert calls["n"] == 4
    monkeypatch.setenv("ICM_PSEUDO_CACHE", "1")
    _finetune(smoke_env, tmp_path / "on", "full")
    assert calls["n"] == 8 and len(list((tmp_path / "on" / "pseudo").rglob("*.pt"))) == 4
    tuned, _, _ = _finetune(smoke_env, tmp_path / "on", "limited")
    assert calls["n"] == 8  # every batch's labels from the cache
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), tuned.parameters()))


def test_limited_preset_lowers_the_adversarial_weight(smoke_env, tmp_path):
    from icm_lib.gan import preset_config

    cfg = get_profile("cpu").gan
    assert preset_config(cfg, "limited").adv_weight == cfg.limited_adv_weight < cfg.adv_weight
    assert preset_config(cfg, "no-adv").adv_weight == 0.0
    assert preset_config(cfg, "full") == cfg


def test_factorial_cells_set_the_pixel_weight_and_the_preset_list_keys_no_run(scenes, tmp_path):
    from dataclasses import replace

    from icm_lib.codec import build_codec
    from icm_lib.data import PascalContextSegmentation
    from icm_lib.gan import gan_run_dir, preset_config

    cfg = get_profile("cpu-patterns").gan
    assert set(cfg.presets) == {
        "no-adv",
        "limited",
        "full",
        "no-adv-px1",
        "limited-px1",
        "full-px1",
    }
    cell = preset_config(cfg, "limited-px1")
    assert (cell.adv_weight, cell.pixel_weight) == (cfg.limited_adv_weight, 1.0)
    assert preset_config(cfg, "full-px20") == preset_config(cfg, "full")
    for bad in ("fulll", "full-pxa", "full-px-1", "px1"):
        with pytest.raises(ValueError, match="preset|pixel weight"):
            preset_config(cfg, bad)
    codec = build_codec("bmshj2018-hyperprior", N=32, M=48)
    train = PascalContextSegmentation(scenes.context_root, "train", max_images=2)
    full = replace(preset_config(cfg, "full"), seed=1)
    a = gan_run_dir(codec, train, full, "full", tmp_path)
    assert a == gan_run_dir(codec, train, replace(full, presets=("full",)), "full", tmp_path)
    assert a != gan_run_dir(codec, train, replace(full, pixel_weight=1.0), "full", tmp_path)
