"""The tutorial as a static book (``make book``): the notebooks as ``make tutorial`` executed them,
the README, a page per study in ``results/``, the explorer as a gallery, the exercises' solutions.

    python book/build.py [--profile cpu] [--outputs outputs] [--results results] [--out DIR]
    python book/build.py --profile smoke      # from `make tutorial PROFILE=smoke`'s outputs

Reads ``<outputs>/<profile>/NN_name/`` (the executed notebook, its figures and metrics.json) of
every ``notebooks/NN_name.ipynb``. Where the ``cpu`` outputs are missing it builds from the
``smoke`` ones, with a banner on every page saying so, or, without those either, says how to make
them and exits with status 2. No notebook is executed and nothing under ``notebooks/`` is
written: the executed notebooks are copied to ``<out>/src/`` (widget outputs removed: a static
page has no kernel), next to the staged README and generated pages, and Sphinx + MyST-NB
(``book/conf.py``) writes ``<out>/html/``. Open ``<out>/html/index.html``; it needs no network.
``<out>/book.json`` records the build (profile, seconds, bytes, pages, warnings, broken links).

The solutions of ``notebooks/solutions/`` appear with their outputs where they were executed
into ``<outputs>/solutions/<profile>/`` (``--run-solutions`` does that first, on the caches of
``--data-dir``, as the tests do on ``smoke``), else as their cells.

Run by path (``python book/build.py``) or from Python with ``main(argv)``.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import sys
import time
from collections import defaultdict
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

REPO = Path(__file__).resolve().parent.parent
BOOK = REPO / "book"
NOTEBOOKS = REPO / "notebooks"
SOLUTIONS = NOTEBOOKS / "solutions"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
#: tqdm's text form of a notebook progress bar: "desc:  40%|████      | 2/5 [00:01<...]"
PROGRESS_BAR = re.compile(r"\d+%\|.*\| *\d+/\d+")


class BookError(Exception):
    """The book cannot be built as asked; the message says what to do."""


# ---------------------------------------------------------------------- which outputs
def notebook_stems() -> list[str]:
    """``NN_name`` of every numbered notebook, in reading order."""
    return sorted(p.stem for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def executed_notebooks(outputs: Path, profile: str) -> tuple[dict[str, Path], list[str]]:
    """``({stem: executed .ipynb}, [stems without one])`` under ``<outputs>/<profile>/``."""
    found, missing = {}, []
    for stem in notebook_stems():
        path = outputs / profile / stem / f"{stem}.ipynb"
        if path.is_file() and (path.parent / "metrics.json").is_file():
            found[stem] = path
        else:
            missing.append(stem)
    return found, missing


def choose_outputs(outputs: Path, profile: str) -> tuple[str, dict[str, Path], str | None]:
    """``(profile used, {stem: executed notebook}, banner or None)``; :class:`BookError` when
    neither ``profile``'s nor the smoke outputs are complete."""
    found, missing = executed_notebooks(outputs, profile)
    if not missing:
        banner = _smoke_banner(profile) if profile == "smoke" else None
        return profile, found, banner
    how = (
        f"the book shows the notebooks as `make tutorial` executed them, and {outputs}/{profile}/ "
        f"lacks {', '.join(missing)}: run `make tutorial PROFILE={profile}` first"
    )
    if profile == "cpu":
        how += " (about 27 min on 2 cores with AVX-512, about 65 with AVX2 only)"
    if profile != "smoke":
        smoke, smoke_missing = executed_notebooks(outputs, "smoke")
        if not smoke_missing:
            print(f"[book] {how}; building from the smoke outputs instead, with a banner")
            return "smoke", smoke, _smoke_banner(profile)
        how += ", or `make tutorial PROFILE=smoke` (a few minutes) and `make book PROFILE=smoke`"
    raise BookError(how)


def _smoke_banner(wanted: str) -> str:
    """The banner of a book built from the smoke outputs (markdown)."""
    how = (
        f"run `make tutorial` (the `{wanted}` profile) and `make book` for the real ones"
        if wanted != "smoke"
        else "run `make tutorial` and `make book` for the `cpu` profile's"
    )
    return (
        "This build shows the **smoke** profile's outputs: tiny data and a few training steps, "
        f"so its figures and numbers only show that the code runs; {how}."
    )


def _html(markdown: str) -> str:
    """The banner's bold and code spans as HTML (the theme's announcement bar)."""
    text = html.escape(markdown, quote=False)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


# ---------------------------------------------------------------------- staging
def stage(
    src: Path, profile: str, notebooks: dict[str, Path], results: Path, results_profile: str,
    banner: str | None, outputs: Path,
) -> dict:  # fmt: skip
    """Write the book's sources into ``src``; return what the pages are (for the context)."""
    if src.exists():
        shutil.rmtree(src)
    (src / "notebooks" / "solutions").mkdir(parents=True)
    for stem, path in notebooks.items():
        _stage_notebook(path, src / "notebooks" / f"{stem}.ipynb")
    solutions = _stage_solutions(src / "notebooks" / "solutions", outputs / "solutions" / profile)
    studies = _stage_studies(src, results, results_profile)
    gallery = _stage_gallery(src, notebooks, profile)
    _stage_readme(src, profile, notebooks, studies, solutions, gallery, banner)
    return {"notebooks": list(notebooks), "solutions": solutions, "studies": studies}


def _stage_notebook(path: Path, target: Path, gallery: str = "../explorer.md") -> None:
    """The executed notebook without widget outputs (a note points to the gallery where a real
    widget was shown, tqdm's bars go silently) and with exercise links pointing at the staged
    solution pages."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    nb.metadata.pop("widgets", None)
    cells = []
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = re.sub(r"(\(solutions/[0-9]{2}_[\w]+)\.py\)", r"\1.ipynb)", cell.source)
        cells.append(cell)
        if cell.cell_type != "code":
            continue
        kept, widgets = [], []
        for out in cell.get("outputs", []):
            if WIDGET_VIEW in out.get("data", {}):
                widgets.append(out["data"].get("text/plain", ""))
            else:
                kept.append(out)
        cell.outputs = kept
        if any(not PROGRESS_BAR.search(w) for w in widgets):  # a widget, not a tqdm bar
            note = (
                "*In the book:* this cell showed an interactive widget, which needs a running "
                "kernel (`make lab`). Its views, pre-rendered, are in the "
                f"[explorer gallery]({gallery})."
            )
            cells.append(nbformat.v4.new_markdown_cell(note))
    nb.cells = cells
    nbformat.write(nb, target)


def _stage_solutions(target: Path, executed: Path) -> list[str]:
    """Each ``notebooks/solutions/NN_name.py`` as a page: executed (with its outputs) where
    ``<outputs>/solutions/<profile>/NN_name/`` has it (:func:`run_solution`), else its cells
    without outputs."""
    import jupytext
    import nbformat

    stems = []
    for source in solution_sources():
        stem = source.stem
        ran = executed / stem / f"{stem}.ipynb"
        if ran.is_file():
            _stage_notebook(ran, target / f"{stem}.ipynb", gallery="../../explorer.md")
        else:
            nb = jupytext.read(source)
            nb.cells.insert(
                1,
                nbformat.v4.new_markdown_cell(
                    "*Not executed for this book:* `python book/build.py --run-solutions` runs "
                    "every solution first (on `make tutorial`'s caches), and `make lab` opens this "
                    "`.py` as a notebook; the tests run every solution on the `smoke` profile."
                ),
            )
            nbformat.write(nb, target / f"{stem}.ipynb")
        stems.append(stem)
    return stems


def solution_sources() -> list[Path]:
    """``notebooks/solutions/NN_name.py``: the worked exercises, one file per notebook."""
    return sorted(SOLUTIONS.glob("[0-9][0-9]_*.py"))


def run_solution(
    source: Path, profile: str, outputs: Path, data_dir: Path, extra: dict | None = None
) -> dict:
    """Execute one solution with papermill (as ``make tutorial`` runs a notebook) into
    ``<outputs>/solutions/<profile>/NN_name/``; return the metrics it recorded. The caches of
    the tutorial's notebooks under ``data_dir`` are reused."""
    import tempfile

    import jupytext
    import nbformat

    from icm_lib.tutorial import run_notebook

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{Path(source).stem}.ipynb"
        nbformat.write(jupytext.read(source), path)
        return run_notebook(path, profile, Path(outputs) / "solutions", Path(data_dir), extra)


def _stage_readme(src, profile, notebooks, studies, solutions, gallery, banner) -> None:
    """index.md: the README (its images and files staged beside it) with the book's contents
    inserted before its first section."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    for link in sorted(set(re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text))):
        if "://" in link or link.startswith("mailto:"):
            continue
        source = REPO / link
        if source.is_file():
            (src / link).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, src / link)
    extra_docs = [d for d in ("data/README.md",) if (src / d).is_file()]
    contents = ["## This book", ""]
    if banner:
        contents += [":::{warning}", banner, ":::", ""]
    contents += [
        f"Built by `make book` from the notebooks as `make tutorial` executed them (profile "
        f"`{profile}`), and from the study files in `results/`. Every number and figure below was "
        "computed, not typed; a static page has no kernel, so the interactive explorer of "
        "notebook 05 is shown as a [gallery of its views](explorer.md). Each notebook ends with "
        "exercises: change something, predict the outcome, run it; the worked solutions are at "
        "the end of the book.",
        "",
    ]
    contents += _toctree("Notebooks", [f"notebooks/{s}" for s in notebooks])
    contents += _toctree(
        "Studies", [f"studies/{s}" for s in studies] + (["explorer"] if gallery else [])
    )
    contents += _toctree(
        "Solutions to the exercises", [f"notebooks/solutions/{s}" for s in solutions]
    )
    contents += _toctree("More", [d.removesuffix(".md") for d in extra_docs], hidden=True)
    head, sep, rest = text.partition("\n## ")
    (src / "index.md").write_text(head + "\n" + "\n".join(contents) + "\n" + sep + rest)


def _toctree(caption: str, entries: list[str], hidden: bool = False) -> list[str]:
    if not entries:
        return []
    options = [f":caption: {caption}", ":maxdepth: 1", *([":hidden:"] if hidden else [])]
    return ["```{toctree}", *options, "", *entries, "```", ""]


# ---------------------------------------------------------------------- studies
STUDY_TITLES = {
    "study": "Study: R-D curves and BD-rates (Iino et al.)",
    "ablation": "Study: where the auxiliary loss enters (Iino et al., section 4.2)",
    "gan": "Study: PatchGAN decoder finetuning over seeds (Le et al.)",
    "gradients": "Measurement: who pushes the encoder, task loss or branch (Iino et al.'s premise)",
    "depth": "Measurement: does a deeper recognizer starve the encoder? (Iino et al.'s premise)",
}


def _stage_studies(src: Path, results: Path, profile: str) -> list[str]:
    """A page per results file of ``profile`` (its figures beside it, its tables from
    ``icm_lib.report``), and the declared analysis plan. Returns the page names."""
    from icm_lib import report
    from icm_lib.results import REGENERATE, AblationFile, ClaimsFile, GanFile, StudyFile

    out = src / "studies"
    out.mkdir()
    pages = []
    readers = {"study": StudyFile, "ablation": AblationFile, "gan": GanFile, "claims": ClaimsFile}
    for kind in REGENERATE:
        path = results / f"{kind}-{profile}.json"
        if not path.is_file():
            continue
        figures = sorted(results.glob(f"{kind}-{profile}-*.png"))
        lines = [f"# {STUDY_TITLES.get(kind, f'Results: {path.stem}')}", ""]
        if kind in readers:
            d = readers[kind].read(path)
            lines += _provenance_lines(d, path, REGENERATE[kind].format(profile=profile))
            tables = report.file_tables(d)
            if kind == "gan":
                figures.append(_gan_figure(d, out / f"{path.stem}-changes.png"))
        else:  # a kind without a table here: its fields besides the runs
            data = json.loads(path.read_text())
            shown = {k: v for k, v in data.items() if k not in ("runs", "run_keys")}
            text = json.dumps(shown, indent=1)
            tables = (
                ["```json", text, "```"]
                if len(text) <= 20_000  # a cut JSON text would not lex as JSON: shown as text
                else [
                    f"(the first 20,000 of {len(text):,} characters)",
                    "```text",
                    text[:20_000],
                    "```",
                ]
            )
        for fig in figures:
            if fig.parent != out:
                shutil.copy2(fig, out / fig.name)
            lines += [f"![{fig.stem}]({fig.name})", ""]
        lines += tables
        (out / f"{kind}.md").write_text("\n".join(lines) + "\n")
        pages.append(kind)
    plan = results / "analysis-plan.json"
    if plan.is_file():
        text = json.dumps(json.loads(plan.read_text()), indent=1, ensure_ascii=False)
        (out / "analysis-plan.md").write_text(
            "# The declared analysis plan\n\nWritten into `results/analysis-plan.json` before the "
            "runs it governs: estimators, margins, seeds and λ.\n\n```json\n" + text + "\n```\n"
        )
        pages.append("analysis-plan")
    return pages


def _provenance_lines(d, path: Path, command: str) -> list[str]:
    from icm_lib.report import environment_words
    from icm_lib.results import code_changed

    sha = (d.commit or {}).get("sha") or "unknown"
    tree = ", with changes to the code" if code_changed(d.commit) else ""
    lines = [
        f"From `results/{path.name}` (profile `{d.profile}`, seeds {d.seeds}, created "
        f"{d.created}, code {sha[:10]}{tree}; environment: "
        f"{environment_words(d.environment)}); regenerate with `{command}`.",
        "",
    ]
    if d.reproduced_by_current_code is False:
        lines += [":::{warning}", *d.notes, ":::", ""]
    elif d.notes:
        lines += [":::{note}", *d.notes, ":::", ""]
    return lines


def _gan_figure(d, path: Path) -> Path:
    """Le et al.'s changes (after − before, mean ± 95 % CI over seeds) per preset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from icm_lib.report import GAN_KEYS

    presets = list(d.summary)
    metric = next(k for k in d.summary[presets[0]] if k not in GAN_KEYS)
    keys = [("psnr", "PSNR (dB)"), ("checkerboard", "checkerboard score"), (metric, metric)]
    fig, axes = plt.subplots(1, 3, figsize=(10, 3))
    for ax, (key, label) in zip(axes, keys):
        means = [d.summary[p][key]["change"]["mean"] for p in presets]
        cis = [d.summary[p][key]["change"].get("ci95") or 0 for p in presets]
        ax.bar(presets, means, yerr=cis, capsize=4, color=["C0", "C1", "C7"][: len(presets)])
        ax.axhline(0, color="black", lw=0.8)
        ax.set_title(f"{label}: after − before", fontsize=9)
    fig.suptitle(f"PatchGAN finetuning, profile {d.profile}, seeds {d.seeds}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------- the explorer gallery
def _stage_gallery(src: Path, notebooks: dict[str, Path], profile: str) -> bool:
    """explorer.md: notebook 05's pre-rendered explorer views with their numbers."""
    stem = next((s for s in notebooks if s.startswith("05_")), None)
    if stem is None:
        return False
    folder = notebooks[stem].parent
    metrics = json.loads((folder / "metrics.json").read_text())
    views = metrics.get("explorer", {}).get("views", [])
    out = src / "explorer"
    out.mkdir()
    lines = [
        "# The explorer, pre-rendered",
        "",
        "Notebook 05's explorer decodes any cached codec, λ, decoder and val image on demand; "
        "that needs a kernel (`make lab`). These are the views its last cells rendered "
        f"(profile `{profile}`): for each, the original with the machine's output, the decoding "
        "with the machine's output, the bits of ŷ and the error. Views of one codec with "
        "several decoders read the very same bytes.",
        "",
        "```{container} explorer-gallery",
    ]
    for i, numbers in enumerate(views):
        png = folder / f"explorer_{i}.png"
        if not png.is_file():
            continue
        shutil.copy2(png, out / png.name)
        lines += ["", f"```{{figure}} explorer/{png.name}", f":alt: explorer view {i}", "",
                  _caption(numbers), "```"]  # fmt: skip
    lines += ["```", ""]
    (src / "explorer.md").write_text("\n".join(lines))
    return True


def _caption(n: dict) -> str:
    metric = next((k for k in ("map", "miou") if k in n), None)
    parts = [
        f"{n.get('task', '?')} · {n.get('variant', '?')} · λ {n.get('lmbda', '?')}",
        f"decoder: {n.get('decoder', 'as trained')} · val image {n.get('index', '?')}",
    ]
    numbers = [f"{n['bpp']:.4f} bpp" if "bpp" in n else None]
    numbers += [f"PSNR {n['psnr']:.2f} dB" if "psnr" in n else None]
    numbers += [f"{metric} {n[metric]:.3f}" if metric else None]
    return " — ".join([" · ".join(parts), ", ".join(x for x in numbers if x)])


# ---------------------------------------------------------------------- checks of the site
class _Page(HTMLParser):
    """The ids, links and loaded assets of one HTML page."""

    def __init__(self):
        super().__init__()
        self.ids, self.links, self.assets = set(), [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        if tag == "a" and a.get("name"):
            self.ids.add(a["name"])
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])
        if tag in ("img", "script", "iframe", "source") and a.get("src"):
            self.assets.append(a["src"])
        if tag == "link" and a.get("href") and a.get("rel") != "canonical":
            self.assets.append(a["href"])


def site_problems(html_dir: Path) -> dict[str, list[str]]:
    """``{"broken": [...], "external_assets": [...]}`` over every page of the built site: an
    internal link or asset whose file (or ``#anchor`` in it) does not exist, and any asset
    (script, stylesheet, image) loaded from another host — the book must work offline."""
    html_dir = Path(html_dir)
    pages = {}
    for path in html_dir.rglob("*.html"):
        if "_static" in path.relative_to(html_dir).parts:  # the theme's template fragments
            continue
        p = _Page()
        p.feed(path.read_text(encoding="utf-8", errors="replace"))
        pages[path.resolve()] = p
    broken, external = [], []
    for path, page in pages.items():
        where = path.relative_to(html_dir.resolve())
        for ref, is_asset in [(r, False) for r in page.links] + [(r, True) for r in page.assets]:
            parts = urlsplit(html.unescape(ref))
            if parts.scheme in ("http", "https") or ref.startswith("//"):
                if is_asset:
                    external.append(f"{where}: {ref}")
                continue
            if parts.scheme in ("mailto", "data", "javascript"):
                continue
            target = (path.parent / unquote(parts.path)).resolve() if parts.path else path
            if target.is_dir():
                target = target / "index.html"
            if not target.is_file():
                broken.append(f"{where}: {ref}")
            elif parts.fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else set()
                if unquote(parts.fragment) not in ids:
                    broken.append(f"{where}: {ref} (no such anchor)")
    return {"broken": sorted(set(broken)), "external_assets": sorted(set(external))}


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# ---------------------------------------------------------------------- build
def build(
    profile: str = "cpu",
    outputs: Path = REPO / "outputs",
    results: Path = REPO / "results",
    out: Path | None = None,
    results_profile: str = "cpu",
    strict: bool = False,
    run_solutions: bool = False,
    data_dir: Path = REPO / "data",
) -> dict:
    """Stage and build; return the record also written to ``<out>/book.json``.
    ``run_solutions``: first execute every solution (:func:`run_solution`, the same profile,
    ``data_dir``'s caches) so that their pages show their outputs."""
    t0 = time.perf_counter()
    outputs, results = Path(outputs).resolve(), Path(results).resolve()
    out = Path(out or outputs / "book").resolve()
    used, notebooks, banner = choose_outputs(outputs, profile)
    if run_solutions:
        for source in solution_sources():
            print(f"[book] running {source.relative_to(REPO)} (profile {used}) ...", flush=True)
            run_solution(source, used, outputs, Path(data_dir).resolve())
    src, site = out / "src", out / "html"
    pages = stage(src, used, notebooks, results, results_profile, banner, outputs)
    context = src / "book-context.json"
    context.write_text(
        json.dumps({"profile": used, "banner_html": _html(banner) if banner else ""})
    )
    if site.exists():
        shutil.rmtree(site)
    from sphinx.cmd.build import build_main  # here: a missing install fails after the checks

    warnings = out / "sphinx-warnings.txt"
    args = ["-b", "html", "-c", str(BOOK), "-d", str(out / "doctrees"), "-q", "-w", str(warnings)]
    args += ["-E", *(["-W", "--keep-going"] if strict else []), str(src), str(site)]
    previous = os.environ.get("ICM_BOOK_CONTEXT")
    os.environ["ICM_BOOK_CONTEXT"] = str(context)
    try:
        status = build_main(args)
    finally:
        if previous is None:
            os.environ.pop("ICM_BOOK_CONTEXT", None)
        else:
            os.environ["ICM_BOOK_CONTEXT"] = previous
    warning_lines = [w for w in warnings.read_text().splitlines() if w.strip()]
    if status != 0:
        raise BookError(
            f"sphinx-build exited with {status}; its warnings ({warnings}):\n"
            + "\n".join(warning_lines[:40])
        )
    for source_map in (site / "_static").rglob("*.map"):  # the theme's, for its developers
        source_map.unlink()
    problems = site_problems(site)
    record = {
        "profile": used,
        "asked_profile": profile,
        "from_smoke_fallback": used != profile,
        "index": str(site / "index.html"),
        "seconds": round(time.perf_counter() - t0, 1),
        "bytes": _size(site),
        "pages": len([p for p in site.rglob("*.html") if "_static" not in p.parts]),
        "warnings": warning_lines,
        **problems,
        **pages,
    }
    (out / "book.json").write_text(json.dumps(record, indent=1))
    return record


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--profile", default="cpu", choices=["smoke", "cpu", "paper"])
    ap.add_argument("--outputs", default=REPO / "outputs", type=Path, help="make tutorial's")
    ap.add_argument("--results", default=REPO / "results", type=Path, help="make study's")
    ap.add_argument("--results-profile", default="cpu", help="whose results/ files (default cpu)")
    ap.add_argument("--out", default=None, type=Path, help="default: <outputs>/book")
    ap.add_argument("--strict", action="store_true", help="any Sphinx warning fails the build")
    ap.add_argument(
        "--run-solutions", action="store_true", help="execute notebooks/solutions/ first"
    )
    ap.add_argument("--data-dir", default=REPO / "data", type=Path, help="make tutorial's caches")
    args = ap.parse_args(argv)
    try:
        r = build(
            args.profile, args.outputs, args.results, args.out, args.results_profile,
            args.strict, args.run_solutions, args.data_dir,
        )  # fmt: skip
    except BookError as exc:
        print(f"[book] {exc}", file=sys.stderr)
        return 2
    grouped = defaultdict(list)
    for key in ("warnings", "broken", "external_assets"):
        for line in r[key]:
            grouped[key].append(line)
            print(f"[book] {key}: {line}")
    print(
        f"[book] {r['index']}: profile {r['profile']}, {r['pages']} pages, "
        f"{r['bytes'] / 1e6:.1f} MB, built in {r['seconds']:.0f} s; {len(r['warnings'])} "
        f"warnings, {len(r['broken'])} broken links, {len(r['external_assets'])} external assets"
    )
    return 1 if grouped["broken"] or grouped["external_assets"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
