"""Execute the notebooks with papermill on the smoke profile and assert on what they recorded."""
import math

import pytest

from icm_lib.tutorial import notebook_paths, run_notebook

pytestmark = pytest.mark.notebooks


@pytest.fixture(scope="module")
def nb00(tmp_path_factory):
    root = tmp_path_factory.mktemp("nb")
    path = notebook_paths(["00"])[0]
    metrics = run_notebook(path, "smoke", root / "outputs", root / "data")
    return metrics, root / "outputs" / "smoke" / path.stem


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
