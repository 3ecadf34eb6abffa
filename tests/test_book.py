"""The book (``make book``, ``book/build.py``) and the exercises' worked solutions
(``notebooks/solutions/``), on the smoke profile.

The six notebooks executed on ``smoke`` (once per session, shared with the notebook tests:
``tests/conftest.py``), as ``make tutorial PROFILE=smoke`` does. Each solution then runs under
papermill on those caches and the test asserts on the metrics it recorded. The book is built
from the same outputs (with the executed solutions), checked for broken internal links and
assets from other hosts, and opened in headless Chromium (``browser``): figures load,
equations render, a screenshot is kept in ``outputs/test-artifacts/``.
"""

from __future__ import annotations

import functools
import http.server
import importlib.util
import math
import re
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "outputs" / "test-artifacts"


def _load_builder():
    spec = importlib.util.spec_from_file_location("book_build", REPO / "book" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


book_build = _load_builder()


# ---------------------------------------------------------------------- fast: no notebook runs
def test_without_executed_notebooks_the_book_says_how_to_make_them(tmp_path, capsys):
    with pytest.raises(book_build.BookError, match="make tutorial PROFILE=smoke"):
        book_build.build("cpu", tmp_path / "outputs", out=tmp_path / "book")
    assert book_build.main(["--outputs", str(tmp_path / "outputs")]) == 2
    assert "run `make tutorial PROFILE=cpu` first" in capsys.readouterr().err


def test_without_cpu_outputs_the_book_falls_back_to_smoke_with_a_banner(tmp_path, capsys):
    def executed(profile):
        for stem in book_build.notebook_stems():
            folder = tmp_path / profile / stem
            folder.mkdir(parents=True)
            (folder / f"{stem}.ipynb").write_text("{}")
            (folder / "metrics.json").write_text("{}")

    executed("smoke")
    used, found, banner = book_build.choose_outputs(tmp_path, "cpu")
    assert used == "smoke" and len(found) == len(book_build.notebook_stems()) >= 6
    assert "**smoke**" in banner and "`make tutorial`" in banner
    assert "building from the smoke outputs instead" in capsys.readouterr().out
    executed("cpu")
    assert book_build.choose_outputs(tmp_path, "cpu")[::2] == ("cpu", None)  # no banner


def test_a_study_page_names_the_code_and_the_environment_of_its_file():
    from dataclasses import replace

    from icm_lib.results import StudyFile, code_environment

    study = replace(StudyFile.read(REPO / "results" / "study-cpu.json"), environment=None)
    line = book_build._provenance_lines(study, Path("study-cpu.json"), "make study")[0]
    assert f"code {study.commit['sha'][:10]}" in line
    assert "environment: not recorded" in line  # a file written before environments were
    now = replace(study, environment=code_environment())
    line = book_build._provenance_lines(now, Path("study-cpu.json"), "make study")[0]
    assert f"torch {now.environment['packages']['torch']}" in line


def test_site_checker_finds_broken_links_and_remote_assets(tmp_path):
    """The offline and link checks can fail: a page with a missing file, a missing anchor and a
    script from another host."""
    (tmp_path / "a.html").write_text('<p id="here">x</p><a href="#here">ok</a>')
    (tmp_path / "index.html").write_text(
        '<a href="a.html#here">ok</a><a href="a.html#gone">anchor</a><a href="b.html">file</a>'
        '<img src="_images/f.png"><script src="https://cdn.example.org/x.js"></script>'
        '<a href="https://example.org">an external link is fine</a>'
    )
    found = book_build.site_problems(tmp_path)
    assert found["broken"] == [
        "index.html: _images/f.png",
        "index.html: a.html#gone (no such anchor)",
        "index.html: b.html",
    ]
    assert found["external_assets"] == ["index.html: https://cdn.example.org/x.js"]


# ---------------------------------------------------------------------- the smoke tutorial
#: what the notebooks train on top of smoke's data, machines and reference codec, trimmed for
#: time: segmentation only (``TASKS``), two PatchGAN presets, no MSE curve (notebook 00's codec
#: stands for it); the kernels inherit it, solutions included
PRESETS = ("full", "no-adv")
OVERRIDES = f"tutorial__gan_presets={PRESETS!r}".replace(" ", "") + " tutorial__mse_curve=False"


@pytest.fixture(scope="module")
def smoke(root, request):
    """``(outputs, data)``: the six notebooks executed on smoke, as the book reads them -- the
    same execution the notebook tests assert on (``tests/conftest.py``), not a second one. The
    book is built from their CPU execution (its solutions run on the CPU): the ``cuda``
    parameter skips before any notebook runs."""
    folder, device = root
    if device != "cpu":
        pytest.skip("the book is built from the notebooks' CPU execution")
    for notebooks in ("nb03", "nb05"):  # (and those they build on)
        request.getfixturevalue(notebooks)
    return folder / "outputs", folder / "data"


def _solution(smoke, stem: str) -> dict:
    outputs, data = smoke
    t0 = time.perf_counter()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ICM_OVERRIDES", OVERRIDES)
        metrics = book_build.run_solution(
            book_build.SOLUTIONS / f"{stem}.py", "smoke", outputs, data, extra={"DEVICE": "cpu"}
        )
    print(f"{stem}: {time.perf_counter() - t0:.0f} s")
    assert metrics["profile"] == "smoke"
    return metrics


def test_every_notebook_ends_with_exercises_and_has_a_solution():
    import nbformat

    from icm_lib.tutorial import notebook_paths

    for path in notebook_paths():
        last = nbformat.read(path, as_version=4).cells[-1]
        assert last.cell_type == "markdown" and last.source.startswith("## Exercises"), path.name
        items = [line for line in last.source.splitlines() if re.match(r"\d\. \*\*", line)]
        assert 2 <= len(items) <= 4, path.name  # each: change something, predict, run
        assert f"(solutions/{path.stem}.py)" in last.source
        assert (book_build.SOLUTIONS / f"{path.stem}.py").is_file()


def test_solution_00_threshold_flipped_bit_header(smoke):
    m = _solution(smoke, "00_data_preparation")
    boxes = [m["pseudo_boxes_per_image"][t] for t in sorted(m["pseudo_boxes_per_image"], key=float)]
    assert all(b2 <= b1 for b1, b2 in zip(boxes, boxes[1:])), boxes  # a higher bar drops boxes
    assert m["flipped_bit"]["outcome"] == "refused"
    assert m["flipped_bit"]["error"] == "BitstreamError"
    one, two = m["header"]["1"], m["header"]["2"]
    assert two["side"] == [2 * s for s in one["side"]]
    assert one["overhead_bytes"] == two["overhead_bytes"] > 0  # a fixed-size header
    assert two["payload_bytes"] > one["payload_bytes"]
    assert two["header_bpp"] == pytest.approx(one["header_bpp"] / 4)


def test_solution_01_double_lambda_and_roi_qf(smoke):
    m = _solution(smoke, "01_baseline_training")
    d = m["double_lambda"]
    assert d["lmbda"] == 2 * max(d["grid"]) and d["new_run_dir"] != d["old_run_dir"]
    assert d["loss_decomposition_max_relative_error"] < 1e-5  # loss = bpp + λ(task + w·mse)
    assert d["new"]["bpp"] > 0 and all(math.isfinite(v) for v in d["new"].values())
    r = m["roi"]
    qf = {float(k): v for k, v in r["qf"].items()}
    assert qf[1.0]["bpp"] == pytest.approx(r["codec_alone"]["bpp"], rel=1e-12)  # the same bytes
    assert qf[2.0]["bpp"] < qf[1.4]["bpp"] < qf[1.0]["bpp"]


def test_solution_02_alpha_zero_width_gradients(smoke):
    m = _solution(smoke, "02_auxiliary_branch_training")
    a = m["alpha_zero"]
    assert a["run_dirs_differ"] is True
    assert all(math.isfinite(v) for p in a["points"].values() for v in p.values())
    # α = 0 gives the baseline back: the same codec updates, so the same R-D point
    assert a["point_gap"]["bpp"] == pytest.approx(0, abs=1e-9), a
    assert max(a["log_gap"].values()) == pytest.approx(0, abs=1e-9), a
    w = m["branch_width"]
    assert 2 < w["ratio"] < 4
    g = m["encoder_gradients"]
    assert g["0"]["branch_norm"] == 0 and g["0.5"]["branch_norm"] > 0
    assert g["0"]["task_norm"] == pytest.approx(g["0.5"]["task_norm"], rel=1e-6)  # α-free
    assert g["0.5"]["task_norm"] > 0


def test_solution_03_gradient_reach_and_one_more_seed(smoke):
    m = _solution(smoke, "03_position_ablation")
    reach = m["gradient_reach"]
    assert reach["aux-enc"]["g_a"] > 0 and reach["aux-enc"]["g_s"] == 0  # encoder only
    assert reach["aux-dec"]["g_s"] > 0 and reach["aux-dec"]["g_s_last_layer"] == 0
    assert reach["aux-task"]["g_s_last_layer"] > 0  # through the recognizer, all of g_s
    assert sorted(m["order"]) == sorted(m["final_main_loss"])
    for v in m["intervals"].values():
        assert v["n_after"] == v["n_before"] + 1 == 3
        assert v["ci95_after"] == pytest.approx(v["ci95_by_formula"], rel=1e-9)


def test_solution_04_no_adversary_and_first_layer(smoke):
    m = _solution(smoke, "04_patchgan_finetuning")
    c = m["changes"]
    assert c["no-adv"]["adv_weight"] == 0 and c["full"]["adv_weight"] > 0
    assert c["no-adv"]["bitstreams_identical"] and c["full"]["bitstreams_identical"]
    assert c["no-adv"]["psnr"] != 0  # without the adversary the decoder still trains
    one = m["first_layer_only"]
    assert one["layers_changed"][0] is True and not any(one["layers_changed"][1:])
    assert one["encoder_identical"] is True and one["bitstreams_identical"] is True
    assert one["steps"] == 4


def test_solution_05_lambda_sweep_difference_map_decoders(smoke):
    m = _solution(smoke, "05_visualization")
    assert len(m["sweep"]) == len(m["val_curve"]) == 4
    assert all(v["bytes"] > 0 and math.isfinite(v["psnr"]) for v in m["sweep"])
    assert m["sweep"][-1]["bytes"] > m["sweep"][0]["bytes"]  # λ x1000: more bytes
    d = m["difference_map"]
    assert d["difference_map_mean"] == pytest.approx(d["rate_difference"], abs=1e-5)
    decoders = m["decoders"]
    assert m["as_trained"] in decoders and len(decoders) == 1 + len(PRESETS)
    assert len({v["bytes"] for v in decoders.values()}) == 1  # the same bytes ...
    assert len({round(v["psnr"], 6) for v in decoders.values()}) > 1  # ... decoded differently


# ---------------------------------------------------------------------- the book
@pytest.fixture(scope="module")
def book(smoke, tmp_path_factory):
    for name in ("sphinx", "myst_nb"):  # the `dev` extra; an offline GPU kit lacks them
        pytest.importorskip(name, reason=f"the book needs {name}: pip install -e '.[dev]'")
    outputs, _ = smoke
    out = tmp_path_factory.mktemp("site")
    record = book_build.build("smoke", outputs, out=out, strict=True)
    print(
        f"book: {record['pages']} pages, {record['bytes'] / 1e6:.1f} MB, "
        f"built in {record['seconds']:.0f} s"
    )
    return record, out / "html"


def test_book_from_the_smoke_outputs(book, smoke):
    record, site = book
    assert record["profile"] == "smoke" and record["warnings"] == []
    assert record["broken"] == [] and record["external_assets"] == []
    index = (site / "index.html").read_text()
    assert "smoke" in index and "make tutorial" in index  # the banner
    assert "Results of the studies" in index  # the README's story and tables
    for stem in book_build.notebook_stems():
        page = (site / "notebooks" / f"{stem}.html").read_text()
        assert page.count("<img") >= 1, stem  # the executed notebook's figures
        assert "Exercises" in page and f"solutions/{stem}.html" in page
        assert "application/vnd.jupyter.widget-view+json" not in page
    nb00 = (site / "notebooks" / "00_data_preparation.html").read_text()
    assert nb00.count('class="math') >= 6  # Eq. 1-6, for MathJax to render
    assert "explorer gallery" not in nb00  # progress bars dropped silently ...
    nb05 = (site / "notebooks" / "05_visualization.html").read_text()
    assert nb05.count("explorer gallery") == 1 and "explorer.html" in nb05  # ... a widget not
    gallery = (site / "explorer.html").read_text()
    assert gallery.count("<img") == len(list((site / "_images").glob("explorer_*.png"))) > 0
    for study in record["studies"]:
        assert (site / "studies" / f"{study}.html").is_file()
    assert {"study", "ablation", "gan"} <= set(record["studies"])
    assert (site / "studies" / "gan.html").read_text().count("<img") >= 1
    outputs, _ = smoke
    for stem in record["solutions"]:  # executed by the tests above (when selected): with outputs
        page = (site / "notebooks" / "solutions" / f"{stem}.html").read_text()
        ran = (outputs / "solutions" / "smoke" / stem / f"{stem}.ipynb").is_file()
        assert ("cell_output" in page) == ran and ("Not executed for this book" in page) != ran
    for page in (site / "notebooks").rglob("*.html"):  # no frozen "0%|" of a progress bar
        assert "it/s]" not in page.read_text(), page.name
    mathjax = site / "_static" / "mathjax" / "tex-svg.js"
    assert mathjax.stat().st_size > 1_000_000  # served from the book itself


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def served(book):
    _, site = book
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.browser
def test_book_in_a_real_browser(served):
    """The index and notebook 00's page in headless Chromium: every image decoded, every
    equation typeset by the book's own MathJax (no error node), nothing loaded from another
    host, every same-site link answered; screenshots in outputs/test-artifacts/."""
    import urllib.request

    from test_notebooks import _browser_or_skip, _wait

    browser = _browser_or_skip()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        for page, shot, min_math in [
            ("index.html", "book-index.png", 0),
            ("notebooks/00_data_preparation.html", "book-notebook00.png", 6),
        ]:
            browser.get(f"{served}/{page}")
            _wait(
                lambda: browser.execute_script("return document.readyState") == "complete",
                60,
                f"{page} to load",
            )
            if min_math:  # MathJax typesets after the load event
                count = "return document.querySelectorAll('mjx-container svg').length"
                _wait(lambda: browser.execute_script(count) >= min_math, 60, "MathJax")
                errors = browser.execute_script(
                    "return document.querySelectorAll('mjx-merror, [data-mjx-error]').length"
                )
                assert errors == 0
            images = browser.execute_script(
                "return Array.from(document.images).map(i => [i.src, i.complete && "
                "i.naturalWidth > 0])"
            )
            assert images and all(ok for _, ok in images), [s for s, ok in images if not ok]
            resources = browser.execute_script(
                "return performance.getEntriesByType('resource').map(r => r.name)"
            )
            assert [r for r in resources if not r.startswith(served)] == []
            links = browser.execute_script(
                "return Array.from(document.links).map(a => a.href.split('#')[0])"
            )
            for link in sorted({u for u in links if u.startswith(served)}):
                with urllib.request.urlopen(link, timeout=10) as r:
                    assert r.status == 200, link
            browser.save_screenshot(str(ARTIFACTS / shot))
            assert (ARTIFACTS / shot).stat().st_size > 10_000
            print(f"screenshot: {ARTIFACTS / shot}")
        figure = "document.querySelector('.cell_output img').scrollIntoView({block: 'center'})"
        browser.execute_script(figure)  # notebook 00's first figure, as a reader meets it
        browser.save_screenshot(str(ARTIFACTS / "book-notebook00-figure.png"))
    finally:
        browser.quit()
