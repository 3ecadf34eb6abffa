"""Execute the numbered notebooks in order with papermill (``make tutorial``).

    python -m icm_lib.tutorial --profile cpu --output-dir outputs [--only 00]

Each notebook ``notebooks/NN_name.ipynb`` is executed into ``<output-dir>/<profile>/NN_name/``
(executed notebook, figures and ``metrics.json``) with parameters ``PROFILE``, ``DATA_DIR`` and
``OUTPUT_DIR``; later notebooks find earlier results through these folders and ``data/cache``.

Progress shows in the terminal: which notebook and cell runs (with the cell's heading), what the
cells print, and a text bar per training run or data step (``ICM_PROGRESS=log``, redrawn every
``ICM_PROGRESS_SECONDS``); ``--quiet`` shows the notebooks only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from .errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"


def notebook_paths(only: list[str] | None = None) -> list[Path]:
    paths = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if only:
        paths = [p for p in paths if any(p.name.startswith(o) for o in only)]
    return paths


class _CellProgress(logging.Filter):
    """papermill's "Executing Cell N---" log lines -> ``[tutorial] <notebook> cell N/M: <the
    heading above it>``; its other lines (cell endings, output echoes) are dropped, since the
    cells' output reaches the terminal directly."""

    def __init__(self, path: Path):
        super().__init__()
        import nbformat

        self.name, self.headings = path.stem, []
        heading = ""
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "markdown" and cell.source.lstrip().startswith("#"):
                heading = cell.source.lstrip().splitlines()[0].lstrip("# ").strip()
            self.headings.append(heading)
            if "parameters" in cell.metadata.get("tags", []):  # papermill injects a cell here
                self.headings.append(heading)
        self.total = len(self.headings)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith("Executing Cell "):
            return False
        n = int(message.removeprefix("Executing Cell ").rstrip("-") or 0)
        heading = self.headings[n - 1] if 0 < n <= len(self.headings) else ""
        record.msg, record.args = f"[tutorial] {self.name} cell {n}/{self.total}: {heading}", ()
        return True


def run_notebook(
    path: Path,
    profile: str,
    output_dir: Path,
    data_dir: Path,
    extra: dict | None = None,
    log_output: bool = False,
) -> dict:
    """Execute one notebook; return the metrics JSON it recorded. ``log_output``: show the
    cells being run and stream their output (and the training bars) to this terminal."""
    import papermill as pm

    out = output_dir / profile / path.stem
    out.mkdir(parents=True, exist_ok=True)
    params = {"PROFILE": profile, "DATA_DIR": str(data_dir), "OUTPUT_DIR": str(out)}
    if "RESULTS_DIR" in pm.inspect_notebook(str(path)):  # notebooks that read the studies
        params["RESULTS_DIR"] = str(REPO / "results")
    params.update(extra or {})
    logger, cells = logging.getLogger("papermill"), None
    if log_output:
        os.environ.setdefault("ICM_PROGRESS", "log")  # the kernel inherits it: text bars
        cells = logging.StreamHandler(sys.stdout)
        cells.addFilter(_CellProgress(path))
        logger.addHandler(cells)
        logger.setLevel(logging.INFO)
    try:
        pm.execute_notebook(
            str(path),
            str(out / path.name),
            parameters=params,
            cwd=str(out),
            kernel_name="python3",
            progress_bar=False,
            log_output=log_output,
            stdout_file=sys.stdout if log_output else None,
            stderr_file=sys.stderr if log_output else None,
        )
    finally:
        if cells is not None:
            logger.removeHandler(cells)
    metrics = out / "metrics.json"
    if not metrics.is_file():
        raise RuntimeError(f"{path.name} ran but recorded no metrics.json in {out}")
    from .files import read_json  # here: the module stays light until a notebook has run

    return read_json(
        metrics,
        what=f"the metrics {path.name} recorded",
        fix=f"run {path.name} again (python -m icm_lib.tutorial --only {path.name[:2]})",
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--profile", default="cpu", choices=["smoke", "cpu", "paper"])
    ap.add_argument("--output-dir", default="outputs", type=Path)
    ap.add_argument("--data-dir", default=REPO / "data", type=Path)
    ap.add_argument("--only", nargs="*", help="notebook prefixes, e.g. 00 01")
    ap.add_argument("--quiet", action="store_true", help="no cell progress or cell output")
    args = ap.parse_args(argv)
    paths = notebook_paths(args.only)
    if not paths:
        asked = f"--only {' '.join(args.only)}" if args.only else f"no notebooks in {NOTEBOOKS}"
        raise ConfigError(f"{asked}: no notebook to run")
    summary = {}
    for path in paths:
        t0 = time.perf_counter()
        print(f"[tutorial] {path.name} (profile {args.profile}) ...", flush=True)
        run_notebook(
            path,
            args.profile,
            args.output_dir.resolve(),
            args.data_dir.resolve(),
            log_output=not args.quiet,
        )
        summary[path.stem] = round(time.perf_counter() - t0, 1)
        print(f"[tutorial] {path.name} done in {summary[path.stem]} s", flush=True)
    print(json.dumps({"seconds": summary, "total": round(sum(summary.values()), 1)}, indent=2))
    return 0


if __name__ == "__main__":
    from .cli import command_status

    raise SystemExit(command_status(main))
