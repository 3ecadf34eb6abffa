"""Execute the numbered notebooks in order with papermill (``make tutorial``).

    python -m icm_lib.tutorial --profile cpu --output-dir outputs [--only 00]

Each notebook ``notebooks/NN_name.ipynb`` is executed into ``<output-dir>/<profile>/NN_name/``
(executed notebook, figures and ``metrics.json``) with parameters ``PROFILE``, ``DATA_DIR`` and
``OUTPUT_DIR``; later notebooks find earlier results through these folders and ``data/cache``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"


def notebook_paths(only: list[str] | None = None) -> list[Path]:
    paths = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if only:
        paths = [p for p in paths if any(p.name.startswith(o) for o in only)]
    return paths


def run_notebook(
    path: Path,
    profile: str,
    output_dir: Path,
    data_dir: Path,
    extra: dict | None = None,
    log_output: bool = False,
) -> dict:
    """Execute one notebook; return the metrics JSON it recorded."""
    import papermill as pm

    out = output_dir / profile / path.stem
    out.mkdir(parents=True, exist_ok=True)
    params = {"PROFILE": profile, "DATA_DIR": str(data_dir), "OUTPUT_DIR": str(out)}
    if "RESULTS_DIR" in pm.inspect_notebook(str(path)):  # notebooks that read the studies
        params["RESULTS_DIR"] = str(REPO / "results")
    params.update(extra or {})
    pm.execute_notebook(
        str(path),
        str(out / path.name),
        parameters=params,
        cwd=str(out),
        kernel_name="python3",
        progress_bar=False,
        log_output=log_output,
    )
    metrics = out / "metrics.json"
    if not metrics.is_file():
        raise RuntimeError(f"{path.name} ran but recorded no metrics.json in {out}")
    return json.loads(metrics.read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--profile", default="cpu", choices=["smoke", "cpu", "paper"])
    ap.add_argument("--output-dir", default="outputs", type=Path)
    ap.add_argument("--data-dir", default=REPO / "data", type=Path)
    ap.add_argument("--only", nargs="*", help="notebook prefixes, e.g. 00 01")
    args = ap.parse_args(argv)
    paths = notebook_paths(args.only)
    if not paths:
        print("no notebooks matched", file=sys.stderr)
        return 2
    summary = {}
    for path in paths:
        t0 = time.perf_counter()
        print(f"[tutorial] {path.name} (profile {args.profile}) ...", flush=True)
        run_notebook(
            path, args.profile, args.output_dir.resolve(), args.data_dir.resolve(), log_output=False
        )
        summary[path.stem] = round(time.perf_counter() - t0, 1)
        print(f"[tutorial] {path.name} done in {summary[path.stem]} s", flush=True)
    print(json.dumps({"seconds": summary, "total": round(sum(summary.values()), 1)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
