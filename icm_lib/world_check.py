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

With them, the **foundations** every run starts from are checked for convergence: each
recognizer's val metric has plateaued, and the reference codec's val bpp and PSNR have settled
(amendment 2 of ``results/analysis-plan.json``).

``python -m icm_lib.world_check --profile cpu-patterns`` prints the checks and writes
``results/world-<profile>.json`` (:class:`~icm_lib.results.WorldFile`); ``--profile cpu`` checks
the control world.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from .evaluate import bd_rate_or_reason
from .profiles import Profile, get_profile, parse_overrides
from .results import WorldFile
from .runtime import env_path, get_device
from .statistics import equal_rate_delta

#: what each check must reach (the issue's acceptance bars)
MIN_DET_MAP = 0.3  # uncompressed mAP@[.5:.95]
MIN_SEG_MIOU = 0.5
MAX_MSE_SHARE = 0.7  # the MSE codec keeps at most this share of the metric near LOW_BPP
LOW_BPP = 0.1
#: the foundations (amendment 2 of the analysis plan): over the last fifth of training the
#: reference codec's val bpp and PSNR each move less than this share of their final value ...
MAX_REFERENCE_MOVE = 0.01
#: ... and each recognizer's val metric gains less than this share of its final value
MAX_RECOGNIZER_GAIN = 0.02


#: per check: what it measures (in words), the key of its value, how the value meets the bar,
#: and the bar where a check records none (files written before it did)
CHECKS = {
    "informative_det": ("the detector's uncompressed val mAP@[.5:.95]", "value", ">=", MIN_DET_MAP),
    "informative_seg": ("the segmenter's uncompressed val mIoU", "value", ">=", MIN_SEG_MIOU),
    "mse_loses_det": (
        "share of that mAP the MSE codec keeps at 0.1 bpp", "share_at_low_bpp", "<=", MAX_MSE_SHARE
    ),
    "mse_loses_seg": (
        "share of that mIoU the MSE codec keeps at 0.1 bpp", "share_at_low_bpp", "<=", MAX_MSE_SHARE
    ),
    "roi_beats_baseline_det": (
        "ROI's mAP gain over the task-loss baseline at equal rate", "map_gain_at_equal_rate", ">",
        0.0,
    ),
    "plateau_det": (
        "the detector's val mAP gain over its last fifth", "gain_over_last_fifth", "<",
        MAX_RECOGNIZER_GAIN,
    ),
    "plateau_seg": (
        "the segmenter's val mIoU gain over its last fifth", "gain_over_last_fifth", "<",
        MAX_RECOGNIZER_GAIN,
    ),
    "reference_converged": (
        "the reference codec's val bpp / PSNR move over its last fifth", "move_over_last_fifth",
        "each within ±", MAX_REFERENCE_MOVE,
    ),
}  # fmt: skip


def _shown(v) -> str:
    if isinstance(v, dict):
        return " / ".join(f"{k} {_shown(x)}" for k, x in v.items())
    return "–" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def describe_check(name: str, check: dict) -> dict[str, str]:
    """A recorded check in words: ``{"words", "value", "bar", "note"}`` (the report's table and
    the claims' notes)."""
    words, key, op, default = CHECKS.get(name, (name, "value", "", None))
    return {
        "words": words,
        "value": _shown(check.get(key)),
        "bar": f"{op} {_shown(check.get('bar', default))}",
        "note": check.get("note") or "",
    }


def share_at(points: list[dict], metric: str, bpp: float, reference: float) -> float | None:
    """The metric at ``bpp`` (linear in log-bpp between the two nearest points; ``None``
    outside the points' range) as a share of ``reference``."""
    pts = sorted(points, key=lambda p: p["bpp"])
    for a, b in zip(pts, pts[1:]):
        if a["bpp"] <= bpp <= b["bpp"]:
            t = (math.log(bpp) - math.log(a["bpp"])) / (math.log(b["bpp"]) - math.log(a["bpp"]))
            return (a[metric] + t * (b[metric] - a[metric])) / reference
    return None


def last_fifth_move(steps: list[int], values: list[float]) -> float | None:
    """``(v_end - v_start) / |v_end|`` over the last fifth of a curve: ``v_start`` is the value
    at the last logged step at or before 80 % of the final step (``None``: fewer than 2 points or
    no point there)."""
    if len(steps) < 2 or not values[-1]:
        return None
    start = [v for s, v in zip(steps, values) if s <= 0.8 * steps[-1]]
    return (values[-1] - start[-1]) / abs(values[-1]) if start else None


def foundation_checks(recognizers: dict, reference_log: list[dict]) -> dict:
    """Converged foundations: each recognizer's val metric has plateaued and the reference
    codec's val bpp and PSNR have settled (see the bars above)."""
    checks = {}
    for task, metric in (("det", "map"), ("seg", "miou")):
        curve = recognizers[task].get("val_curve") or []
        gain = last_fifth_move([p["step"] for p in curve], [p[metric] for p in curve])
        checks[f"plateau_{task}"] = {
            "gain_over_last_fifth": gain,
            "bar": MAX_RECOGNIZER_GAIN,
            "pass": gain is not None and gain < MAX_RECOGNIZER_GAIN,
            "note": None if gain is not None else "no val curve (recognition.eval_every)",
        }
    rows = [r for r in reference_log if "val_bpp" in r]
    moves = {
        k: last_fifth_move([r["step"] for r in rows], [r[f"val_{k}"] for r in rows])
        for k in ("bpp", "psnr")
    }
    checks["reference_converged"] = {
        "move_over_last_fifth": moves,
        "bar": MAX_REFERENCE_MOVE,
        "pass": all(m is not None and abs(m) < MAX_REFERENCE_MOVE for m in moves.values()),
        "note": None if rows else "no val curve (mse.validate_every)",
    }
    return checks


def _point_rows(runs, task: str, curve: str) -> list[dict]:
    """``{"lmbda", "bpp", metric}`` of every run's point of ``curve`` on ``task``."""
    rows = []
    for run in runs:
        point = run.point(task, curve)
        if point is not None and point.metric is not None:
            rows.append({"lmbda": run.lmbda, "bpp": point.bpp, point.metric_name: point.metric})
    return rows


def checks_of(recognizers: dict, runs: list) -> dict:
    """The checks from the recognizers' val metrics and the runs' R-D points."""
    det_ref, seg_ref = recognizers["det"]["val"]["map"], recognizers["seg"]["val"]["miou"]
    checks = {
        "informative_det": {"value": det_ref, "bar": MIN_DET_MAP, "pass": det_ref >= MIN_DET_MAP},
        "informative_seg": {"value": seg_ref, "bar": MIN_SEG_MIOU, "pass": seg_ref >= MIN_SEG_MIOU},
    }
    mse_runs = [r for r in runs if r.variant == "mse"]
    for task, metric, ref in (("det", "map", det_ref), ("seg", "miou", seg_ref)):
        share = share_at(_point_rows(mse_runs, task, "mse"), metric, LOW_BPP, ref) if ref else None
        checks[f"mse_loses_{task}"] = {
            "share_at_low_bpp": share,
            "low_bpp": LOW_BPP,
            "bar": MAX_MSE_SHARE,
            "pass": share is not None and share <= MAX_MSE_SHARE,
            "note": None if share is not None else "the MSE curve does not span the low bpp",
        }
    det_runs = [r for r in runs if r.variant == "baseline" and r.task == "det"]
    baseline, roi = (_point_rows(det_runs, "det", c) for c in ("baseline", "roi"))
    gain = equal_rate_delta(*([(p["bpp"], p["map"]) for p in c] for c in (baseline, roi)))
    checks["roi_beats_baseline_det"] = {
        "map_gain_at_equal_rate": gain,
        "bd_rate": bd_rate_or_reason(baseline, roi, "map"),
        "bd_rate_front": bd_rate_or_reason(baseline, roi, "map", front=True),
        "bar": 0.0,
        "pass": gain is not None and gain > 0,
    }
    return checks


def run_checks(
    profile: Profile,
    data_dir: Path,
    det_lambdas: tuple[float, ...] | None = None,
    progress: bool = True,
) -> WorldFile:
    """Train-or-load what the checks need and measure them (see the module docstring): the
    recognizers, the MSE reference curve scored on both tasks, and seed-0 detection baselines
    at ``det_lambdas`` (default: the pilot's grid, else the profile's) with their ROI points.
    The runs are the study's and the pilot's own (same keys)."""
    from .experiment import Experiment

    device = get_device()
    t0 = time.perf_counter()
    exp = Experiment.prepare(profile, data_dir, device, progress)
    recognizers = {
        t: {
            "file": Path(r["path"]).name,
            "val": r["val"],
            "val_curve": r.get("val_curve", []),
            "train_steps": r["train_steps"],
            "train_seconds": r["train_seconds"],
        }
        for t, r in exp.reports.items()
    }
    print(
        f"[world {profile.data.world}] recognizers: "
        f"{ {t: r['val'] for t, r in recognizers.items()} }",
        flush=True,
    )
    runs = [
        exp.point("det", "mse", lm, 0, eval_tasks=("det", "seg")).run
        for lm in profile.icm.mse_lambdas
    ]
    lambdas = det_lambdas or profile.pilot.lambdas("det") or profile.icm.lambdas("det")
    for lm in lambdas:
        runs.append(exp.point("det", "baseline", lm, 0, roi=True).run)
        base, roi = runs[-1].point("det"), runs[-1].point("det", "roi")
        print(
            f"[world] det λ={lm:g}: baseline {base.bpp:.4f} bpp mAP {base.metric:.4f}; "
            f"roi {roi.bpp:.4f} bpp mAP {roi.metric:.4f}",
            flush=True,
        )
    reference = {
        "steps": profile.mse.steps,
        "val_curve": [
            {"step": r["step"], "bpp": r["val_bpp"], "psnr": r["val_psnr"]}
            for r in exp.reference_log
            if "val_bpp" in r
        ],
        "train_seconds": exp.reference_log[-1]["seconds"] if exp.reference_log else 0.0,
    }
    checks = {**checks_of(recognizers, runs), **foundation_checks(recognizers, exp.reference_log)}
    hours = (time.perf_counter() - t0) / 3600
    return WorldFile(
        profile=profile.name,
        seeds=[0],
        compute_hours_in_runs=round(sum(r.seconds for r in runs) / 3600, 3),
        wall_hours_this_invocation=round(hours, 3),
        world=profile.data.world,
        recognizers=recognizers,
        reference=reference,
        runs=runs,
        checks=checks,
        passed=all(c["pass"] for c in checks.values()),
        notes=[
            f"roi_qf {profile.icm.roi_qf:g}; the bars are those of results/analysis-plan.json",
        ],
    )


def main(argv: list[str] | None = None) -> WorldFile:
    p = argparse.ArgumentParser(prog="python -m icm_lib.world_check", description=__doc__)
    p.add_argument("--profile", default="cpu-patterns")
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--results-dir", type=Path, default=Path("results"))
    p.add_argument("--det-lambdas", type=float, nargs="*", default=None)
    p.add_argument("--overrides", default="", help='e.g. "recognition__det_train_steps=1200"')
    p.add_argument("--no-progress", action="store_true", help="no progress bars (a batch log)")
    args = p.parse_args(argv)
    data_dir = args.data_dir or env_path("ICM_DATA_DIR", "data")
    profile = get_profile(args.profile, **parse_overrides(args.overrides))
    out = run_checks(
        profile,
        data_dir,
        tuple(args.det_lambdas) if args.det_lambdas else None,
        progress=not args.no_progress,
    )
    out.write(WorldFile.path(args.results_dir, profile.name))
    for name, check in out.checks.items():
        print(f"{name}: {'PASS' if check['pass'] else 'FAIL'} {check}")
    return out


if __name__ == "__main__":
    from .cli import command_status

    raise SystemExit(command_status(main))
