"""The λ pilot: which λ make a study's R-D curves informative (issue: experiments that can show
what the tutorial teaches).

A λ grid chosen by habit can leave a curve flat (every point at the uncompressed metric: the
codec already keeps all the machine needs) or collapsed (the task lost at the lowest rate); on
either, BD-rate is undefined and an effect cannot show. The pilot trains the seed-``pilot.seed``
baseline of each task at the full schedule on a factor-2 grid (``profile.pilot``) and applies the
rule declared in ``results/analysis-plan.json`` *before* the runs it governs:

* **the study's grid**: the 4 consecutive λ whose metrics rise strictly with rate and lie inside
  80-98 % of the uncompressed metric, spanning the widest range of it; ties to the lower rates;
* **where no window lies inside the band** (amendment 4): the 4 consecutive λ that rise strictly
  and reach the highest share at their top, with ``band_reached`` false, which every claim of
  the task then carries beside its verdict;
* **the ablation's λ**: the second-lowest chosen λ, unless its run collapses (its validation task
  loss over the last fifth of training exceeds the mid-training value by more than
  ``COLLAPSE_RISE``); then the next higher.

The pilot runs are the study's own seed-0 baselines (same keys, validation included), so nothing
is trained twice. ``python -m icm_lib.pilot --profile cpu-patterns`` writes
``results/pilot-<profile>.json`` (:class:`~icm_lib.results.PilotFile`); the chosen grids are
then written into the profile by hand, and a test checks that they are the file's.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from .errors import ConfigError
from .profiles import Profile, get_profile, parse_overrides
from .results import PilotFile, RunRecord
from .runtime import env_path, get_device, tell
from .statistics import resampled_curve
from .tasks import DETECTION, TASKS, get_task

#: the band of the uncompressed metric a study's curve should cover (analysis plan)
BAND = (0.80, 0.98)
#: points per R-D curve
WINDOW = 4
#: the rise of the validation task loss (last fifth over mid-training, relative) that marks a
#: run that lost its task
COLLAPSE_RISE = 0.10

RULE = {
    "grid": f"the {WINDOW} consecutive pilot λ whose metrics rise strictly with rate (bpp and "
    f"metric both strictly increasing) and lie inside {BAND[0]:.0%}-{BAND[1]:.0%} of the "
    "uncompressed metric, spanning the widest part of it; ties to the lower rates",
    "fallback": f"where no such window lies inside the band (amendment 4): the {WINDOW} "
    "consecutive λ that rise strictly and reach the highest share at their top (ties to the "
    "lower rates); band_reached false, named beside every claim of the task",
    "ablation": "the second-lowest chosen λ unless its pilot run collapsed, else the next higher",
    "collapse": "mean validation task loss over the last 20 % of training steps > "
    f"(1 + {COLLAPSE_RISE:g}) x its mean over 40-60 % of the steps",
}


def collapsed(val: dict | None) -> bool | None:
    """Whether a run's validation curve (``{"step", "task_loss", ...}``) shows the task lost
    (see :data:`RULE`); ``None`` without a curve."""
    if not val or not val.get("step"):
        return None
    steps, loss = val["step"], val["task_loss"]
    end = steps[-1]
    mid = [v for s, v in zip(steps, loss) if 0.4 * end <= s <= 0.6 * end]
    last = [v for s, v in zip(steps, loss) if s >= 0.8 * end]
    if not mid or not last:
        return None
    return sum(last) / len(last) > (1 + COLLAPSE_RISE) * sum(mid) / len(mid)


def select(rows: list[dict], reference: float) -> dict:
    """The rule applied to one task's pilot ``rows`` (``{"lmbda", "bpp", "metric",
    "collapsed"}``, any order) against the uncompressed ``reference`` metric.

    Returns:
        ``{"lambdas", "ablation_lambda", "band_reached", "reason", "shares"}`` (``shares``:
        each λ's metric over ``reference``). Where no window lies inside the band, the rule's
        fallback window with ``band_reached`` false and the reason (which way the grid would
        have to extend); ``lambdas`` ``None`` when no 4 consecutive λ even rise strictly.
    """
    rows = sorted(rows, key=lambda r: r["lmbda"])
    share_of = {r["lmbda"]: r["metric"] / reference for r in rows}
    shares = [{"lmbda": lm, "share": s} for lm, s in share_of.items()]
    best, best_span = None, -1.0
    fallback, fallback_top = None, -1.0
    for i in range(len(rows) - WINDOW + 1):
        win = rows[i : i + WINDOW]
        rising = all(
            b["bpp"] > a["bpp"] and b["metric"] > a["metric"] for a, b in zip(win, win[1:])
        )
        if not rising:
            continue
        inside = all(BAND[0] <= share_of[r["lmbda"]] <= BAND[1] for r in win)
        span = win[-1]["metric"] - win[0]["metric"]
        if inside and span > best_span + 1e-12:  # ties keep the lower rates
            best, best_span = win, span
        top = share_of[win[-1]["lmbda"]]
        if top > fallback_top + 1e-12:
            fallback, fallback_top = win, top
    reason, reached = None, best is not None
    if not reached:
        low = [lm for lm, s in share_of.items() if s < BAND[0]]
        high = [lm for lm, s in share_of.items() if s > BAND[1]]
        reason = (
            "no λ reaches the band's top: extend the grid upwards"
            if not high and len(low) == len(rows)
            else "every λ is above the band: extend the grid downwards"
            if not low and len(high) == len(rows)
            else f"fewer than {WINDOW} consecutive λ rise strictly inside the band: refine the "
            "grid (a factor √2) where the shares cross it"
        )
        if fallback is None:
            reason += f"; no {WINDOW} consecutive λ rise strictly, so no fallback either"
            return {
                "lambdas": None,
                "ablation_lambda": None,
                "band_reached": False,
                "reason": reason,
                "shares": shares,
            }
        best = fallback
        reason = (
            f"band not reached ({reason}); the fallback of amendment 4: the strictly rising "
            f"window whose top keeps {fallback_top:.0%} of the uncompressed metric"
        )
    chosen = [r["lmbda"] for r in best]
    ablation = next(
        (r["lmbda"] for r in best[1:] if r.get("collapsed") is not True),
        None,
    )
    if ablation is None:
        reason = "; ".join(filter(None, [reason, "every chosen λ above the lowest collapsed"]))
    return {
        "lambdas": chosen,
        "ablation_lambda": ablation,
        "band_reached": reached,
        "reason": reason,
        "shares": shares,
    }


#: image resamples behind the pilot's noise figures (:func:`metric_noise`)
NOISE_BOOT = 300


def metric_noise(runs: list[RunRecord], n_boot: int = NOISE_BOOT, seed: int = 0) -> list | None:
    """How far one task's pilot metrics can be told apart on its val images: per λ (ascending),
    the bootstrap SE of the metric over image resamples (``se``) and of its rise over the
    previous λ (``rise``, ``rise_se``; paired: every run of a replicate is scored on the same
    resample). A rise within about one ``rise_se`` cannot be told from none, so no spacing of
    λ there makes a curve rise strictly. ``None`` without per-image records."""
    runs = sorted(runs, key=lambda r: r.lmbda)
    points = [r.point(r.task) for r in runs]
    if not points or any(p is None or p.images is None for p in points):
        return None
    records = [p.images for p in points]
    n, rng = len(records[0]), np.random.default_rng(seed)
    boot = np.array(
        [
            [metric for _, metric in resampled_curve(records, rng.integers(0, n, n))]
            for _ in range(n_boot)
        ]
    )
    out = []
    for i, (run, point) in enumerate(zip(runs, points, strict=True)):
        row = {"lmbda": run.lmbda, "se": float(np.nanstd(boot[:, i], ddof=1))}
        if i:
            rise = boot[:, i] - boot[:, i - 1]
            row |= {
                "rise": point.metric - points[i - 1].metric,
                "rise_se": float(np.nanstd(rise, ddof=1)),
            }
        out.append(row)
    return out


def row_of(run: RunRecord) -> dict:
    point = run.point(run.task)
    return {
        "lmbda": run.lmbda,
        "bpp": point.bpp,
        "metric": point.metric,
        "collapsed": collapsed(run.val),
    }


def run_pilot(
    profile: Profile,
    tasks: list[str],
    data_dir: str | Path,
    results_dir: str | Path,
    progress: bool = True,
) -> PilotFile:
    """Train-or-load the pilot runs, apply the rule, write ``results/pilot-<profile>.json``
    after every run (a stopped pilot resumes, from the cache or, where the cache is gone, from
    the runs its file holds; ``complete`` says when it is whole)."""
    from .experiment import Experiment

    t0 = time.perf_counter()
    pilot = profile.pilot
    if not any(pilot.lambdas(t) for t in tasks):
        raise ConfigError(
            f"profile {profile.name!r} declares no pilot grid (profile.pilot): the pilot is for "
            "profiles whose λ are chosen by it, e.g. cpu-patterns"
        )
    exp = Experiment.prepare(profile, data_dir, get_device(), progress, tasks=tasks)
    path = PilotFile.path(results_dir, profile.name)
    runs: list[RunRecord] = []

    def write(complete: bool) -> PilotFile:
        selection = {}
        for task in map(get_task, tasks):
            ref = exp.reports[task.name]["val"][task.metric]
            rows = [row_of(r) for r in runs if r.task == task.name]
            done = len(rows) == len(pilot.lambdas(task))
            selection[task.name] = {
                "uncompressed": ref,
                "rows": rows,
                **(select(rows, ref) if done else {"lambdas": None, "reason": "pilot running"}),
            }
            if complete:
                selection[task.name]["noise"] = metric_noise(
                    [r for r in runs if r.task == task.name]
                )
        out = PilotFile(
            profile=profile.name,
            seeds=[pilot.seed],
            compute_hours_in_runs=round(sum(r.seconds for r in runs) / 3600, 3),
            wall_hours_this_invocation=round((time.perf_counter() - t0) / 3600, 3),
            complete=complete,
            runs=runs,
            selection=selection,
            rule=RULE,
        )
        out.write(path)
        return out

    recorded = PilotFile.recorded(path)  # a machine that lost its cache: the file's runs
    total = sum(len(pilot.lambdas(t)) for t in tasks)
    for task in map(get_task, tasks):
        for lmbda in pilot.lambdas(task):
            started = time.perf_counter()
            run = exp.recorded_point(recorded, task, "baseline", lmbda, pilot.seed)
            if run is None:
                run = exp.point(task, "baseline", lmbda, pilot.seed, roi=task is DETECTION).run
            runs.append(run)
            write(False)
            tell(f"pilot-{profile.name}", len(runs), total, run, started)
    return write(True)


def check(profile: Profile, results_dir: str | Path) -> list[str]:
    """What stands between the profile and its study: nothing (``[]``) when its λ grids and
    ablation λ are those its committed pilot chose; else one line per difference, saying what
    to set (the profile holds the choice as constants, which every reader of it sees)."""
    path = PilotFile.path(results_dir, profile.name)
    if not path.is_file():
        return [f"no pilot yet: python -m icm_lib.pilot --profile {profile.name}"]
    pilot = PilotFile.read(path)
    if not pilot.complete:
        return [f"the pilot is not complete: python -m icm_lib.pilot --profile {profile.name}"]
    out = []
    for task in pilot.selection:
        chosen = pilot.selection[task]
        if chosen.get("lambdas") is None:
            out.append(f"{task}: the pilot chose no λ ({chosen.get('reason')})")
            continue
        field = f"{task}_lambdas"
        if tuple(profile.icm.lambdas(task)) != tuple(chosen["lambdas"]):
            out.append(f"{task}: set icm.{field} = {tuple(chosen['lambdas'])}")
        if profile.ablation.lmbda(task) != chosen["ablation_lambda"]:
            out.append(f"{task}: set ablation.{task}_lmbda = {chosen['ablation_lambda']}")
    return out


def main(argv: list[str] | None = None) -> PilotFile | list[str]:
    p = argparse.ArgumentParser(prog="python -m icm_lib.pilot", description=__doc__.split("\n")[0])
    p.add_argument("--profile", default="cpu-patterns")
    p.add_argument("--tasks", nargs="+", default=sorted(TASKS), choices=sorted(TASKS))
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--results-dir", type=Path, default=Path("results"))
    p.add_argument("--overrides", default="")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--check",
        action="store_true",
        help="train nothing: exit 1 unless the profile holds the λ its committed pilot chose",
    )
    args = p.parse_args(argv)
    profile = get_profile(args.profile, **parse_overrides(args.overrides))
    if args.check:
        problems = check(profile, args.results_dir)
        for line in problems or [f"profile {profile.name} holds the λ its pilot chose"]:
            print(line)
        if problems:
            raise SystemExit(1)
        return problems
    out = run_pilot(
        profile,
        args.tasks,
        args.data_dir or env_path("ICM_DATA_DIR", "data"),
        args.results_dir,
        not args.no_progress,
    )
    for task, sel in out.selection.items():
        print(
            f"{task}: uncompressed {sel['uncompressed']:.4f}; chosen λ {sel['lambdas']}, "
            f"ablation λ {sel.get('ablation_lambda')}"
            + (f" ({sel['reason']})" if sel.get("reason") else "")
        )
        for row in sel.get("noise") or []:
            rise = f"; rise {row['rise']:+.4f} (SE {row['rise_se']:.4f})" if "rise" in row else ""
            print(f"  λ {row['lmbda']:g}: metric SE {row['se']:.4f} over val images{rise}")
    return out


if __name__ == "__main__":
    from .cli import command_status

    raise SystemExit(command_status(main))
