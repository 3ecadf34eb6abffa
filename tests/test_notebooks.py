"""Execute the notebooks with papermill on the smoke profile and assert on what they recorded."""

import functools
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from icm_lib.tutorial import notebook_paths, run_notebook

pytestmark = pytest.mark.notebooks
ROOT = Path(__file__).resolve().parents[1]


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
    # where the bits go, over the val images: both codecs on the same objects
    objects = m["bits_on_objects"]
    assert set(objects) == {"baseline", "aux-enc"}  # smoke trains detection here
    assert objects["baseline"]["area_share"] == objects["aux-enc"]["area_share"]
    for o in objects.values():
        assert 0 < o["area_share"] < 1 and 0 < o["bits_share"] < 1 and o["images"] == 8
        assert o["concentration"] == pytest.approx(o["bits_share"] / o["area_share"])


def test_notebook_03_position_ablation(nb03):
    m, out = nb03
    assert m["seeds"] == [0, 1]  # the smoke profile's ablation seeds
    for task, t in m["tasks"].items():
        assert set(t["variants"]) == {"baseline", "aux-enc", "aux-dec", "aux-task"}
        assert sorted(t["order"]) == sorted(t["variants"])
        final = {k: [v["final"][s] for s in ("0", "1")] for k, v in t["variants"].items()}
        for k, v in t["variants"].items():
            assert v["n"] == 2 and len(v["final"]) == 2 and _finite(final[k])
            assert v["curve"]["step"] == [1, 2] and _finite(v["curve"]["mean"])  # validated
            assert v["mean"] == pytest.approx(sum(final[k]) / 2)
        paired = {k: v["vs_baseline"] for k, v in t["variants"].items() if k != "baseline"}
        base = final["baseline"]
        for k, p in paired.items():  # each position minus the baseline of the same seed
            diffs = [a - b for a, b in zip(final[k], base)]
            assert p["n"] == 2 and p["mean"] == pytest.approx(sum(diffs) / 2)
        sizes = t["branch_million_parameters"]
        assert sizes["aux-task"] < sizes["aux-enc"]  # no stem (det) or a head only (seg)
        (out / f"validation_{task}.png").stat()
    assert _finite([v for pair in m["train_loss"].values() for v in pair])
    assert (out / "branch_positions.png").stat().st_size > 5_000


@functools.cache
def _recorded_claims(profile: str) -> list:
    from icm_lib.claims import recorded_claims

    return recorded_claims(ROOT / "results", profile)


def _assert_shows_the_recorded_claims(out, *prefixes):
    """A notebook shows its claims as the analysis computes them from the committed files, for
    the control world (``cpu``) and the patterns world (``cpu-patterns``; none where its
    files are not committed yet), with a forest plot per world that has them."""
    recorded = json.loads((out / "claims.json").read_text())
    shown = recorded["claims"]
    assert set(shown) == {"cpu", "cpu-patterns"}
    for name, rows in shown.items():
        expected = [c for c in _recorded_claims(name) if c.name.startswith(prefixes)]
        assert [r["name"] for r in rows] == [c.name for c in expected]
        assert [r["verdict"] for r in rows] == [c.verdict["verdict"] for c in expected]
        assert [r["estimate"] for r in rows] == [c.interval["estimate"] for c in expected]
        assert [r["lo"] for r in rows] == [c.interval["lo"] for c in expected]
        figure = out / f"claims-{name}-{prefixes[0]}.png"
        assert figure.is_file() == bool(expected)
    assert shown["cpu"], "the committed cpu files hold every claim"
    return recorded


def test_notebook_01_shows_the_positive_control(nb01):
    _assert_shows_the_recorded_claims(nb01[1], "positive_control")


def test_notebook_02_shows_iino_et_als_rd_claims(nb02):
    rows = _assert_shows_the_recorded_claims(
        nb02[1], "iino_seg_rd", "iino_det_rd", "iino_det_vs_roi"
    )["claims"]["cpu"]
    assert not any("ablation" in r["name"] for r in rows)
    # along the curve or off it: each world's aux-enc runs against the same seed's baseline
    from icm_lib.claims import along_or_off
    from icm_lib.results import DepthFile, GradientsFile, StudyFile

    along = json.loads((nb02[1] / "along.json").read_text())["along"]
    assert set(along) == {"cpu", "cpu-patterns"}
    for name, tasks in along.items():
        study = StudyFile.find(ROOT / "results", name)
        assert (tasks is None) == (study is None)
        for task, shown in (tasks or {}).items():
            rows = along_or_off(study, task)
            offsets = [r["offset"] for r in rows if r["offset"] is not None]
            assert shown["runs"] == len(rows) and shown["inside"] == len(offsets)
            assert shown["offset"] == pytest.approx(sum(offsets) / len(offsets))
        assert (nb02[1] / f"along-{name}.png").is_file() == bool(tasks)
    # the mechanism: the gradients and depth files of both worlds, where measured

    shown = json.loads((nb02[1] / "mechanism.json").read_text())["gradients"]
    assert set(shown) == {"cpu", "cpu-patterns"}
    for name, entry in shown.items():
        assert (entry is None) == (GradientsFile.find(ROOT / "results", name) is None)
    depth = json.loads((nb02[1] / "mechanism.json").read_text())["depth"]
    assert set(depth) == {"cpu", "cpu-patterns"}
    for name, entry in depth.items():
        f = DepthFile.find(ROOT / "results", name)
        assert (entry is None) == (f is None)
        for task, rows in (entry or {}).items():  # the file's backbones, in its order
            assert [r["backbone"] for r in rows] == [
                r["backbone"] for r in f.tasks[task]["backbones"]
            ]


def test_notebook_03_shows_the_ablation_claims(nb03):
    _assert_shows_the_recorded_claims(nb03[1], "iino_ablation")


def test_notebook_04_shows_le_et_als_claims_and_the_factorial(nb04):
    from icm_lib.claims import factorial_table
    from icm_lib.results import GanFile

    recorded = _assert_shows_the_recorded_claims(nb04[1], "le_patchgan")
    assert "cpu" in recorded["factorial"]
    for name, table in recorded["factorial"].items():
        assert table == factorial_table(GanFile.find(ROOT / "results", name))


def test_notebook_05_visualization_and_explorer(nb05):
    m, out = nb05
    assert m["rd_source"] == "this notebook's runs (seed 0)"  # no study files given
    for task, f in m["bit_allocation"].items():
        assert set(f["bpp"]) == {"MSE codec", "w/o aux", "w/ aux"} and min(f["bpp"].values()) > 0
        assert math.isfinite(f["difference_mean"]) and f["difference_abs_max"] >= 0
        (out / f"bit_allocation_{task}.png").stat()
        (out / f"rd_{task}.png").stat()
    assert set(m["checkerboard"]) == {
        "machine codec",
        *(f"PatchGAN {p}" for p in ("full", "limited", "no-adv")),
    }
    assert all(0 <= v <= 1 for v in m["checkerboard"].values())
    e = m["explorer"]
    assert e["tasks"] == ["det", "seg"] and e["codecs"] == 20 and e["finetuned"] == 3
    views = e["views"]
    assert len(views) == 2 * 2 + 4
    for v in views:
        assert v["bpp"] > 0 and v["bytes"] > 0 and math.isfinite(v["psnr"])
        assert 0 <= v.get("map", v.get("miou")) <= 1
    # notebook 04's codec: its own decoder and the three finetuned ones read the very same bytes
    same_bytes = views[4:]
    assert [v["decoder"] for v in same_bytes] == ["as trained", "full", "limited", "no-adv"]
    assert len({v["bytes"] for v in same_bytes}) == 1 and len({v["bpp"] for v in same_bytes}) == 1
    assert len({round(v["psnr"], 6) for v in same_bytes}) > 1  # ... and decode them differently
    assert len(list(out.glob("explorer_*.png"))) == len(views)
    # the other world, read from the cache only: not generated or trained in this data folder
    assert set(e["worlds"]) == {"smoke (shapes)"}
    assert set(e["not_cached"]) == {"cpu-patterns"}
    message = e["not_cached"]["cpu-patterns"]
    assert "embedded patterns scenes" in message
    assert "python -m icm_lib.world_check --profile cpu-patterns" in message


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
    assert m["agreement_with_study"] == []  # results/ holds no smoke PatchGAN study to agree with


# ---------------------------------------------------------------------- notebook 05 in a browser
ARTIFACTS = Path(__file__).resolve().parent.parent / "outputs" / "test-artifacts"


def test_notebooks_train_the_tutorial_part_and_read_the_rest_from_the_study(
    root, nb02, nb03, nb04, monkeypatch
):
    """``profile.tutorial`` as on `cpu` (segmentation at one λ, no detection codec, no MSE
    curve, one PatchGAN preset): notebooks 01, 02 and 05 train only that and draw the rest from
    the study file, whose seed-0 runs are the very runs trained here (same keys, same cache)."""
    import torch

    from icm_lib.profiles import get_profile
    from icm_lib.study import run_ablation_study, run_study

    folder, device = root
    results, smoke = folder / "study-results", get_profile("smoke")
    run_study(
        smoke, [0], ["det", "seg"], ["baseline", "aux-enc"], folder / "data", results,
        torch.device(device), progress=False,
    )  # fmt: skip
    ablation = run_ablation_study(
        smoke, list(smoke.ablation.seeds), ["det", "seg"], folder / "data", results,
        torch.device(device), progress=False,
    )  # fmt: skip
    # notebook 03 reads the runs the ablation file records and the cache lacks
    cache, hidden = folder / "data" / "cache" / "icm", folder / "hidden-ablation-runs"
    hidden.mkdir()
    for row in ablation.runs:
        (cache / row.run_key).rename(hidden / row.run_key)
    try:
        m03 = run_notebook(
            notebook_paths(["03"])[0], "smoke", folder / "outputs-tutorial", folder / "data",
            extra={"DEVICE": device, "RESULTS_DIR": str(results)},
        )  # fmt: skip
    finally:
        for run in hidden.iterdir():
            run.rename(cache / run.name)
    assert m03["runs_from_results_file"] == len(ablation.runs) == 16
    assert m03["runs_from_other_reference_weights"] == 0  # this machine made them
    assert m03["train_loss"] == {}  # nothing trained
    assert m03["tasks"]["seg"]["order"] == nb03[0]["tasks"]["seg"]["order"]
    for task in ("det", "seg"):
        for v, t in m03["tasks"][task]["variants"].items():
            assert t["final"] == nb03[0]["tasks"][task]["variants"][v]["final"]
    monkeypatch.setenv(
        "ICM_OVERRIDES",
        "tutorial__det_lambdas=() tutorial__seg_lambdas=(0.05,) tutorial__mse_curve=False "
        "tutorial__gan_presets=('full',)",
    )
    out = folder / "outputs-tutorial"
    m = {
        n: run_notebook(
            notebook_paths([n])[0], "smoke", out, folder / "data",
            extra={"DEVICE": device, "RESULTS_DIR": str(results)},
        )
        for n in ("01", "02", "05")
    }  # fmt: skip
    m01, m02, m05 = m["01"], m["02"], m["05"]
    assert m01["study"].startswith("study-smoke.json (1 seeds")
    assert m01["tasks"]["det"]["lambdas"] == [] and m01["tasks"]["seg"]["lambdas"] == [0.05]
    assert m01["tasks"]["seg"]["mse"] == []  # no MSE curve trained: the study's is drawn
    assert set(m01["tasks"]["det"]["bd_rate"]) == {"mse", "roi"}  # the study's table
    rows = m01["tasks"]["seg"]["study_agreement"]
    assert [(r["curve"], r["lmbda"]) for r in rows] == [("baseline", 0.05)]
    assert rows[0]["max_abs_difference"] == 0.0  # the same run, found in the study
    rows = m02["tasks"]["seg"]["study_agreement"]
    assert sorted(r["curve"] for r in rows) == ["aux-enc", "baseline"]
    assert all(r["max_abs_difference"] == 0.0 for r in rows)
    assert m02["tasks"]["det"] == {
        "metric": "map", "lambdas": [], "study_bd_rate": m02["tasks"]["det"]["study_bd_rate"]
    } and "aux-enc" in m02["tasks"]["det"]["study_bd_rate"]  # fmt: skip
    assert m05["rd_source"].startswith("study-smoke.json")
    assert set(m05["bit_allocation"]) == {"seg"}
    assert m05["explorer"]["finetuned"] == 1 and set(m05["checkerboard"]) == {
        "machine codec",
        "PatchGAN full",
    }


def _browser_or_skip():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip(
            "no headless browser: install Debian's chromium and chromium-driver "
            "(.ci/run does) to run the JupyterLab test of notebook 05"
        )
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium (dev)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1400,1600",
        f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=webdriver.ChromeService(driver), options=options)


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture
def jupyterlab(root, nb05, tmp_path):
    """JupyterLab on localhost serving a copy of notebook 05 (so nothing in the repository is
    saved over), its kernel pointed at the smoke caches of the notebooks above."""
    folder, _ = root
    shutil.copy(notebook_paths(["05"])[0], tmp_path / "05_visualization.ipynb")
    port, token = _free_port(), "icm-browser-test"
    env = {
        **os.environ,
        "ICM_PROFILE": "smoke",
        "ICM_DATA_DIR": str(folder / "data"),
        "ICM_OUTPUT_DIR": str(tmp_path / "out"),
        "ICM_OFFLINE": "1",
    }
    args = f"--no-browser --port={port} --IdentityProvider.token={token} --allow-root"
    args += " --ServerApp.ip=127.0.0.1 --LabApp.expose_app_in_browser=True"
    log = open(tmp_path / "jupyterlab.log", "w")
    lab = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", *args.split(), f"--ServerApp.root_dir={tmp_path}"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(
            lambda: _responds(f"{url}/api/status?token={token}"),
            120,
            f"JupyterLab to start (its log: {tmp_path / 'jupyterlab.log'})",
        )
        yield f"{url}/lab/tree/05_visualization.ipynb?token={token}", tmp_path / "out"
    finally:
        lab.terminate()
        lab.wait(timeout=30)
        log.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _responds(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.mark.browser
def test_notebook_05_explorer_in_a_real_browser(jupyterlab):
    """Open notebook 05 in JupyterLab in headless Chromium, run every cell, press the
    explorer's "next image" button and check that the displayed picture changes; the screenshot
    is kept in outputs/test-artifacts/."""
    from selenium.webdriver.common.by import By

    url, out = jupyterlab
    browser = _browser_or_skip()
    try:
        browser.get(url)
        # the notebook panel's kernel (headless Chromium has no focused "current" widget)
        kernel = (
            "const a = window.jupyterapp; if (!a) return null;"
            "const w = Array.from(a.shell.widgets('main')).find(w => w.sessionContext);"
            "const k = w && w.sessionContext.session && w.sessionContext.session.kernel;"
            "return k && k.status;"
        )
        _wait(lambda: browser.execute_script(kernel) == "idle", 120, "the notebook's kernel")
        browser.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells')")
        _wait(lambda: (out / "metrics.json").is_file(), 600, "the notebook to run to its end")

        def picture():
            images = browser.find_elements(By.CSS_SELECTOR, ".widget-image")
            return images and images[0].get_attribute("src")

        before = _wait(picture, 60, "the explorer's picture")
        html = browser.find_elements(By.CSS_SELECTOR, ".widget-html-content")
        assert any("index</b> 0" in h.get_attribute("innerHTML") for h in html)
        button = next(
            b for b in browser.find_elements(By.CSS_SELECTOR, "button") if "next image" in b.text
        )
        browser.execute_script("arguments[0].scrollIntoView();", button)
        button.click()
        after = _wait(
            lambda: picture() if picture() != before else None,
            60,
            "the picture to change after 'next image'",
        )
        assert after != before
        _wait(
            lambda: any(
                "index</b> 1" in h.get_attribute("innerHTML")
                for h in browser.find_elements(By.CSS_SELECTOR, ".widget-html-content")
            ),
            30,
            "the numbers of image 1",
        )
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "notebook05-explorer.png"
        browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        print(f"screenshot: {shot}")
    finally:
        browser.quit()
