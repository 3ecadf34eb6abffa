"""Acceptance checks of an embedded world: can a machine's need for bits show in it at all?

A study of coding for machines only teaches something in a world where a machine needs bits that
cost something. Before any study, three properties of the world are measured (issue: experiments
that can show what the tutorial teaches), each from runs the studies share (load-or-compute):

1. **informative machines**: the recognizers' metric on the uncompressed val images is high
   enough that a loss of it can be seen;
2. **the MSE codec loses the task at low rate**: a codec trained for pixels keeps a small share of
   that metric near ``low_bpp`` -- so there is something for a task loss to win;
3. **bits compete** (detection): at equal rate the ROI method (the ground-truth objects' latent
   kept, the rest scaled down by QF) beats the task-loss baseline it is applied to -- the
   property of real images that the ROI method rests on. Where a task-loss codec can already drop
   everything a machine does not need, ROI has nothing left to win.

``python -m icm_lib.world_check --profile cpu --world patterns`` prints the checks and writes
``results/world-<world>-<profile>.json``.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import replace
from pathlib import Path

from .evaluate import bd_rate_or_reason
from .profiles import get_profile, parse_overrides
from .runtime import env_path, get_device
from .statistics import equal_rate_delta

#: what each check must reach (the issue's acceptance bars)
MIN_DET_MAP = 0.3  # uncompressed mAP@[.5:.95]
MIN_SEG_MIOU = 0.5
MAX_MSE_SHARE = 0.7  # the MSE codec keeps at most this share of the metric near LOW_BPP
LOW_BPP = 0.1


def share_at(points: list[dict], metric: str, bpp: float, reference: float) -> float | None:
    """The metric at ``bpp`` (linear in log-bpp between the two nearest points; ``None``
    outside the points' range) as a share of ``reference``."""
    pts = sorted(points, key=lambda p: p["bpp"])
    for a, b in zip(pts, pts[1:]):
        if a["bpp"] <= bpp <= b["bpp"]:
            t = (math.log(bpp) - math.log(a["bpp"])) / (math.log(b["bpp"]) - math.log(a["bpp"]))
            return (a[metric] + t * (b[metric] - a[metric])) / reference
    return None


def run_checks(
    profile_name: str,
    world: str,
    data_dir: Path,
    det_lambdas: tuple[float, ...] | None = None,
    overrides: dict | None = None,
    progress: bool = True,
) -> dict:
    """Train-or-load what the checks need and measure them (see the module docstring)."""
    from .experiment import Experiment

    profile = get_profile(profile_name, **(overrides or {}))
    profile = replace(profile, data=replace(profile.data, world=world))
    device = get_device()
    t0 = time.perf_counter()
    exp = Experiment.prepare(profile, data_dir, device, progress)
    uncompressed = {
        "det": {k: exp.reports["det"]["val"][k] for k in ("map", "map_50")},
        "seg": {k: exp.reports["seg"]["val"][k] for k in ("miou", "pixel_acc")},
        "recognizer_train_seconds": {t: exp.reports[t]["train_seconds"] for t in ("det", "seg")},
    }
    print(f"[world {world}] uncompressed: {uncompressed}", flush=True)

    metrics = {"det": ("map", "map_50"), "seg": ("miou", "pixel_acc")}

    def row(point, task, lmbda, part="eval"):
        ev = point.record[part][task]
        return {"lmbda": lmbda, "bpp": ev["bpp"], "psnr": ev["psnr"]} | {
            k: ev[k] for k in metrics[task]
        }

    mse = [
        exp.point("det", "mse", lm, 0, eval_tasks=("det", "seg")) for lm in profile.icm.mse_lambdas
    ]
    mse_det = [row(p, "det", lm) for p, lm in zip(mse, profile.icm.mse_lambdas)]
    mse_seg = [row(p, "seg", lm) for p, lm in zip(mse, profile.icm.mse_lambdas)]
    print(f"[world {world}] MSE det: {mse_det}\n[world {world}] MSE seg: {mse_seg}", flush=True)
    baseline, roi = [], []
    run_keys = [Path(p.record["run_dir"]).name for p in mse]
    for lm in det_lambdas or profile.icm.det_lambdas:
        p = exp.point("det", "baseline", lm, 0, roi=True)
        run_keys.append(Path(p.record["run_dir"]).name)
        baseline.append(row(p, "det", lm))
        roi.append(row(p, "det", lm, part="roi"))
        print(f"[world {world}] det λ={lm:g}: baseline {baseline[-1]} roi {roi[-1]}", flush=True)

    det_ref, seg_ref = uncompressed["det"]["map"], uncompressed["seg"]["miou"]
    checks = {
        "informative_det": {"value": det_ref, "bar": MIN_DET_MAP, "pass": det_ref >= MIN_DET_MAP},
        "informative_seg": {
            "value": seg_ref,
            "bar": MIN_SEG_MIOU,
            "pass": seg_ref >= MIN_SEG_MIOU,
        },
    }
    for task, pts, metric, ref in (
        ("det", mse_det, "map", det_ref),
        ("seg", mse_seg, "miou", seg_ref),
    ):
        share = share_at(pts, metric, LOW_BPP, ref) if ref > 0 else None
        checks[f"mse_loses_{task}"] = {
            "share_at_low_bpp": share,
            "low_bpp": LOW_BPP,
            "bar": MAX_MSE_SHARE,
            "pass": share is not None and share <= MAX_MSE_SHARE,
            "note": None if share is not None else "the MSE curve does not span the low bpp",
        }
    gain = equal_rate_delta(*([(p["bpp"], p["map"]) for p in c] for c in (baseline, roi)))
    checks["roi_beats_baseline_det"] = {
        "map_gain_at_equal_rate": gain,
        "bd_rate": bd_rate_or_reason(baseline, roi, "map"),
        "bd_rate_front": bd_rate_or_reason(baseline, roi, "map", front=True),
        "pass": gain is not None and gain > 0,
    }
    from .results import code_commit

    return {
        "world": world,
        "profile": profile.name,
        "commit": code_commit(),
        "run_keys": run_keys,
        "recognizers": {t: Path(exp.reports[t]["path"]).name for t in ("det", "seg")},
        "overrides": overrides or {},
        "uncompressed": uncompressed,
        "mse": {"det": mse_det, "seg": mse_seg},
        "det_baseline": baseline,
        "det_roi": roi,
        "roi_qf": profile.icm.roi_qf,
        "checks": checks,
        "passed": all(c["pass"] for c in checks.values()),
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> dict:
    from .runtime import atomic_write_json

    p = argparse.ArgumentParser(prog="python -m icm_lib.world_check", description=__doc__)
    p.add_argument("--profile", default="cpu")
    p.add_argument("--world", default="patterns")
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--det-lambdas", type=float, nargs="*", default=None)
    p.add_argument("--overrides", default="", help='e.g. "recognition__train_steps=1200"')
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    data_dir = args.data_dir or env_path("ICM_DATA_DIR", "data")
    out = run_checks(
        args.profile,
        args.world,
        data_dir,
        tuple(args.det_lambdas) if args.det_lambdas else None,
        parse_overrides(args.overrides),
    )
    path = args.out or Path("results") / f"world-{args.world}-{args.profile}.json"
    atomic_write_json(path, out)
    for name, check in out["checks"].items():
        print(f"{name}: {'PASS' if check['pass'] else 'FAIL'} {check}")
    return out


if __name__ == "__main__":
    main()
