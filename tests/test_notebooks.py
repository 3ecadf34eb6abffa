"""Execute the notebooks with papermill on the smoke profile and assert on what they recorded."""

import math

import pytest
from conftest import DEVICES

from icm_lib.tutorial import notebook_paths, run_notebook

pytestmark = pytest.mark.notebooks


@pytest.fixture(scope="module", params=DEVICES)
def root(request, tmp_path_factory):
    """One data folder for all notebooks, as in ``make tutorial``: later ones reuse the caches.
    The notebooks run on the CPU and (tests marked `gpu`) on CUDA."""
    return tmp_path_factory.mktemp(f"nb-{request.param}"), request.param


def _run(root, number):
    folder, device = root
    path = notebook_paths([number])[0]
    metrics = run_notebook(
        path, "smoke", folder / "outputs", folder / "data", extra={"DEVICE": device}
    )
    assert metrics["device"].startswith(device)
    return metrics, folder / "outputs" / "smoke" / path.stem


@pytest.fixture(scope="module")
def nb00(root):
    return _run(root, "00")


@pytest.fixture(scope="module")
def nb01(root, nb00):
    return _run(root, "01")


@pytest.fixture(scope="module")
def nb02(root, nb01):
    return _run(root, "02")


def test_notebook_00_data(nb00):
    m, out = nb00
    assert m["profile"] == "smoke"
    d = m["data"]
    assert (d["n_train"], d["n_val"]) == (16, 8)  # the smoke profile's sizes
    assert d["det_classes"] == 6 and d["seg_classes"] == 11
    assert d["instances"]["train"]["instances"] >= 2 * d["n_train"]
    for name in ["dataset_examples", "pseudo_labels", "roundtrip", "mse_codec_training"]:
        assert (out / f"{name}.png").stat().st_size > 5_000
    assert (out / "00_data_preparation.ipynb").is_file()


def test_notebook_00_recognition_and_task_loss(nb00):
    m, _ = nb00
    assert 0.0 <= m["recognition"]["det"]["val"]["map"] <= 1.0
    assert 0.0 <= m["recognition"]["seg"]["val"]["miou"] <= 1.0
    assert m["recognition"]["det"]["train_steps"] == 4
    p = m["pseudo_labels"]
    # the gradient of the task loss reaches the pixels
    assert p["saliency_sum"] > 0 and math.isfinite(p["saliency_sum"])
    assert math.isfinite(p["noisy_seg_loss"]) and math.isfinite(p["noisy_det_loss"])


def test_notebook_00_codec_round_trip(nb00):
    m, _ = nb00
    c = m["codec"]
    assert c["latent_identical"] is True
    assert c["decoded_shape"][1:] == c["image_shape"]
    assert c["bytes"] > 20 and c["bpp"] == pytest.approx(c["bytes"] * 8 / (128 * 128))
    assert c["bpp"] > c["bpp_payload"] > 0 and c["bpp_estimate"] > 0
    assert len(c["train_losses"]) == 3 and all(math.isfinite(v) for v in c["train_losses"])
    dec = m["machines_on_decoded"]
    assert dec["bpp"] > 0 and math.isfinite(dec["psnr"]) and 0 < dec["ms_ssim"] <= 1


def _finite(values):
    return all(math.isfinite(v) for v in values)


def _assert_rd_points_ordered_by_lambda(points, lambdas):
    """bpp finite, positive, not lower for a larger λ (to 0.5 %: a few bytes over the smoke val
    set), and spread."""
    assert lambdas == sorted(lambdas) and len(points) == len(lambdas) == 4
    bpp = [p["bpp"] for p in points]
    assert _finite(bpp) and min(bpp) > 0
    assert all(b2 >= 0.995 * b1 for b1, b2 in zip(bpp, bpp[1:])), bpp
    assert bpp[-1] > 1.02 * bpp[0], bpp
    assert _finite([p["metric"] for p in points] + [p["psnr"] for p in points])


def test_notebook_01_baseline(nb01):
    m, out = nb01
    for task, t in m["tasks"].items():
        _assert_rd_points_ordered_by_lambda(t["baseline"], t["lambdas"])
        assert _finite(t["first_loss"] + t["last_loss"])
        assert all(last < first for first, last in zip(t["first_loss"], t["last_loss"])), t
        assert len(t["mse"]) == 2 and _finite([p["bpp"] for p in t["mse"]])
        assert set(t["bd_rate"]) == ({"mse", "roi"} if task == "det" else {"mse"})
        assert set(t["bd_rate_front"]) == set(t["bd_rate"])
        (out / f"rd_{task}.png").stat()
    # the ROI baseline codes the same codecs with the background latent divided by QF > 1
    det = m["tasks"]["det"]
    assert len(det["roi"]) == 4
    assert all(r["bpp"] < b["bpp"] for r, b in zip(det["roi"], det["baseline"]))
    for name in ["training_curves", "bit_allocation"]:
        assert (out / f"{name}.png").stat().st_size > 5_000


def test_notebook_02_aux_branch(nb02):
    m, out = nb02
    for t in m["tasks"].values():
        _assert_rd_points_ordered_by_lambda(t["aux-enc"], t["lambdas"])
        _assert_rd_points_ordered_by_lambda(t["baseline"], t["lambdas"])
        assert all(last < first for first, last in zip(t["first_loss"], t["last_loss"])), t
        assert _finite([v for pair in t["branch_loss_first_last"] for v in pair])
        assert all(first > 0 for first, _ in t["branch_loss_first_last"])
        # the branch is trained alongside but never saved with the codec
        assert t["codec_keys_equal_reference"] is True and t["decodes_without_branch"] is True
        assert t["branch_tensors"] > 10 and t["branch_million_parameters"] > 0
        assert "aux-enc" in t["bd_rate"] and "aux-enc" in t["bd_rate_front"]
        # a strictly monotonic pair lies wholly on its fronts: the fallback is then defined too
        if t["bd_rate"]["aux-enc"]["bd_rate"] is not None:
            assert t["bd_rate_front"]["aux-enc"]["bd_rate"] is not None
    assert (out / "bit_allocation.png").stat().st_size > 5_000


@pytest.fixture(scope="module")
def nb04(root, nb01):
    return _run(root, "04")


def test_notebook_04_patchgan(nb04):
    m, out = nb04
    before = m["before"]
    assert set(m["presets"]) == {"full", "limited", "no-adv"}
    for r in m["presets"].values():
        assert r["encoder_identical"] is True and r["bitstreams_identical"] is True
        assert r["bpp"] == before["bpp"]  # same bytes, same rate
        assert r["losses_finite"] is True and r["steps"] == 4
        assert all(math.isfinite(r[k]) for k in ("psnr", "ms_ssim", "checkerboard", "metric"))
        assert 0 <= r["checkerboard"] <= 1
        assert r["psnr"] != before["psnr"]  # the decoder did change
    assert (out / "before_after.png").stat().st_size > 5_000
