"""Rename the runs an ablation results file records to the path-free run keys (one-off).

Before commit "path-free run keys", a run's key hashed the *absolute* path of its dataset, so a
results file written in one checkout named runs that no other checkout could find, and notebook 03
retrained them. This recomputes each recorded row's old name with the data folder it was recorded
under, requires it to equal the recorded name (else nothing is written), and replaces the row's
``run_dir`` with the path-free name of the same run. Only names change; no number is touched.

    python tools/migrate_run_keys.py --profile cpu --recorded-data-dir /work/main/data
"""

from __future__ import annotations

import argparse
from pathlib import Path

from icm_lib.experiment import Experiment
from icm_lib.profiles import get_profile
from icm_lib.results import AblationFile
from icm_lib.runtime import get_device


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--data-dir", default="data", type=Path)
    ap.add_argument("--results-dir", default="results", type=Path)
    ap.add_argument("--recorded-data-dir", required=True, help="absolute data folder of the study")
    args = ap.parse_args(argv)
    profile = get_profile(args.profile)
    path = AblationFile.path(args.results_dir, profile.name)
    summary = AblationFile.read(path)
    exp = Experiment.prepare(profile, args.data_dir, get_device(None), progress=False)
    renamed = []
    for row in summary.runs:
        old = Path(row.run_dir)
        ids = (row.task, row.variant, row.seed)
        legacy = exp.ablation_run_dir(*ids, data_dir_as=args.recorded_data_dir)
        if legacy.name != old.name:
            print(f"{old.name}: not the run these settings give under {args.recorded_data_dir}")
            return 1
        renamed.append(str(old.parent / exp.ablation_run_dir(*ids).name))
    for row, run_dir in zip(summary.runs, renamed):
        print(f"{row.run_key} -> {Path(run_dir).name}")
        row.run_dir = run_dir
    summary.write(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
