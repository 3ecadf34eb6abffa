
import pytest
import torch

from icm_lib.metrics import (BDRateError, ConfusionMatrix, bd_rate, bpp_from_likelihoods,
                             detection_map, ms_ssim, psnr, rd_front)
from icm_lib.profiles import get_profile
from icm_lib.runtime import (atomic_torch_save, atomic_write_json, load_checkpoint)
from icm_lib.errors import CheckpointError


def test_psnr_and_ms_ssim():
    x = torch.rand(2, 3, 64, 64)
    assert psnr(x, x + 0.1 * torch.ones_like(x)) == pytest.approx(20.0, abs=1e-4)
    assert ms_ssim(x, x) == pytest.approx(1.0, abs=1e-6)
    assert ms_ssim(x, torch.rand_like(x)) < 0.5


def test_bpp_from_likelihoods():
    lk = {"y": torch.full((2, 4, 2, 2), 0.5)}  # 1 bit per element, 16 per image
    assert float(bpp_from_likelihoods(lk, 16)) == pytest.approx(1.0)


def test_miou_known_values():
    cm = ConfusionMatrix(3)
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 0, 0]])
    cm.update(pred, target)
    # class 0: inter 1, union 3; class 1: inter 2, union 3; class 2: inter 1, union 2
    assert cm.miou() == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)


def test_detection_map_perfect_and_empty():
    gt = [{"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 40, 40]]), "labels": torch.tensor([1, 2])}]
    perfect = [{**gt[0], "scores": torch.tensor([0.9, 0.8])}]
    assert detection_map(perfect, gt)["map"] == pytest.approx(1.0)
    none = [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}]
    assert detection_map(none, gt)["map"] == pytest.approx(0.0)


def test_bd_rate_known_shift_and_errors():
    r = [0.1, 0.2, 0.4, 0.8]
    q = [0.3, 0.4, 0.5, 0.6]
    assert bd_rate(r, q, [v * 0.8 for v in r], q) == pytest.approx(-20.0, abs=1e-6)
    assert bd_rate(r, q, [v * 1.25 for v in r], q) == pytest.approx(25.0, abs=1e-6)
    with pytest.raises(BDRateError, match="increase"):
        bd_rate(r, [0.3, 0.5, 0.4, 0.6], r, q)
    with pytest.raises(BDRateError, match="overlap"):
        bd_rate(r, q, r, [0.7, 0.8, 0.9, 0.95])
    with pytest.raises(BDRateError, match="4"):
        bd_rate(r[:3], q[:3], r, q)


def test_bd_rate_on_the_operational_front_of_a_saturating_curve():
    # points are given out of rate order; the saturated tail (0.8 -> 0.45) and a tie are dominated
    assert rd_front([0.4, 0.1, 0.8, 0.2, 0.3], [0.5, 0.3, 0.45, 0.4, 0.4]) == [1, 3, 0]
    r, q = [0.1, 0.2, 0.4, 0.8], [0.3, 0.4, 0.5, 0.6]
    sat = [0.3, 0.4, 0.5, 0.45]  # saturates: strict BD-rate refuses it
    with pytest.raises(BDRateError, match="increase"):
        bd_rate(r, q, [v * 0.8 for v in r], sat)
    # on the fronts, 20 % fewer bits over the common quality range 0.3..0.5 is -20 %
    assert bd_rate(r, q, [v * 0.8 for v in r], sat, front=True) == pytest.approx(-20.0, abs=1e-6)
    # a monotonic pair gives the same as the strict estimator (a pure rate shift is exact in both)
    assert bd_rate(r, q, [v * 1.25 for v in r], q, front=True) == pytest.approx(25.0, abs=1e-6)
    with pytest.raises(BDRateError, match="2 .* on its front"):
        bd_rate(r, q, r, [0.6, 0.5, 0.4, 0.3], front=True)  # only the cheapest point survives
    with pytest.raises(BDRateError, match="non-finite"):
        bd_rate(r, q, r, [0.3, float("nan"), 0.5, 0.6], front=True)


def test_atomic_checkpoint_and_truncation(tmp_path):
    path = tmp_path / "ckpt.pt"
    atomic_torch_save({"w": torch.arange(5), "step": 3}, path)
    assert load_checkpoint(path)["step"] == 3
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(CheckpointError, match="delete it"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(TypeError):
        atomic_write_json(tmp_path / "x.json", {"bad": object()})
    assert list(tmp_path.iterdir()) == []


def test_profiles_and_overrides():
    p = get_profile("cpu", data__n_train=10, codec__name="mbt2018-mean")
    assert p.data.n_train == 10 and p.codec.name == "mbt2018-mean"
    assert get_profile("paper").codec.name == "cheng2020-attn"
    with pytest.raises(ValueError):
        get_profile("gpu")
    with pytest.raises(ValueError):
        get_profile("cpu", data__nope=1)
