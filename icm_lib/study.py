"""The resumable studies, written to ``results/`` as plain data: seed 001's R-D points of every
(task, variant, λ, seed) with BD-rates and confidence intervals, and seed 002's PatchGAN presets.

Every run is load-or-compute (a trained codec in its run folder, its evaluation in a JSON beside
it; :meth:`icm_lib.experiment.Experiment.grid`), so a stopped study resumes where it stopped, and
notebooks 01-02 reuse the seed-0 runs::

    python -m icm_lib.study --profile cpu --seeds 0 1 2        # or: make study
    python -m icm_lib.study --study ablation --seeds 0 1 2     # section 4.2: branch position
    python -m icm_lib.study --study gan --seeds 0 1 2          # seed 002: PatchGAN presets

Curves per task:

* ``mse``       the human-viewing reference (MSE codecs at ``icm.mse_lambdas``; seed 0 only);
* ``baseline``  Eq. 4 (task loss only);
* ``aux-enc``   Eq. 5 / 6 (the proposed auxiliary branch on ŷ);
* ``roi``       the baseline codecs coded with the ROI scaling of Ahonen et al. (detection only).

BD-rate is computed per seed against that seed's baseline curve on the task metric (mAP or mIoU),
then summarised as mean and 95 % Student-t interval over seeds. The README's tables are made from
these files by :mod:`icm_lib.report`.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path

import torch

from .aux_branch import VARIANTS
from .evaluate import ablation_table, bd_rates, curves, mean_ci
from .experiment import Experiment
from .gan import PRESETS, gan_point
from .profiles import Profile, get_profile
from .report import fmt_mean_ci, report, write_between_markers
from .runtime import atomic_write_json, get_device
from .tasks import TASKS, get_task

#: the paper's average BD-rates of aux-enc against the baseline (seed 001 section 4.1)
PAPER_BD_RATE = {"det": -27.7, "seg": -20.3}
#: seed 002's headline: relative change of the task score after PatchGAN finetuning
PAPER_GAN_TASK_CHANGE = -1.6


def run_study(
    profile: Profile,
    seeds: list[int],
    tasks: list[str],
    variants: list[str],
    data_dir: str | Path,
    results_dir: str | Path,
    device: torch.device,
    progress: bool = True,
    reference_curve: bool = True,
) -> dict:
    """Run (or resume) the whole grid and write ``results/study-<profile>.json`` after every run
    and the R-D figure at the end. Returns the summary."""
    from . import plots

    t_start = time.perf_counter()
    exp = Experiment.prepare(profile, data_dir, device, progress)
    results_dir = Path(results_dir)
    out_json = results_dir / f"study-{profile.name}.json"
    runs: list[dict] = []

    def write(done: bool) -> dict:
        summary = summarise(
            profile, runs, tasks, seeds, variants, done, time.perf_counter() - t_start
        )
        atomic_write_json(out_json, summary)
        return summary

    for point in exp.grid(seeds, tasks, variants, reference_curve):
        runs.append(point.record)  # the weights stay on disk
        write(False)
    summary = write(True)
    for task in map(get_task, tasks):
        fig = plots.rd_curves(
            curves(runs, task.name),
            task.metric,
            title=f"{task.name}: R-D on the {profile.name} profile ({len(seeds)} seeds)",
        )
        plots.save(fig, results_dir, f"study-{profile.name}-{task.name}-rd")
    return summary


def summarise(
    profile: Profile,
    runs: list[dict],
    tasks: list[str],
    seeds: list[int],
    variants: list[str],
    done: bool,
    wall_seconds: float,
) -> dict:
    """The study's JSON: every R-D point, BD-rate tables and the compute spent."""
    per_task = {}
    for task in map(get_task, tasks):
        c = curves(runs, task.name)
        per_task[task.name] = {
            "metric": task.metric,
            "curves": c,
            "bd_rate": bd_rates(c, task.name),
            "paper_bd_rate_aux_enc": PAPER_BD_RATE[task.name],
        }
    compute = sum(r["train_seconds"] for r in runs) + sum(
        p.get("seconds", 0.0) for r in runs for p in [*r["eval"].values(), *r["roi"].values()]
    )
    return {
        "profile": profile.name,
        "complete": done,
        "seeds": seeds,
        "variants": variants,
        "runs": len(runs),
        "compute_hours_in_runs": round(compute / 3600, 3),
        "wall_hours_this_invocation": round(wall_seconds / 3600, 3),
        "icm_config": asdict(profile.icm),
        "tasks": per_task,
    }


# ---------------------------------------------------------------------- seed 001 section 4.2
#: the paper's finding: the lowest validation main loss with the branch just before the decoder
PAPER_ABLATION_LOWEST = "aux-enc"


def run_ablation_study(
    profile: Profile,
    seeds: list[int],
    tasks: list[str],
    data_dir: str | Path,
    results_dir: str | Path,
    device: torch.device,
    progress: bool = True,
) -> dict:
    """The branch-position ablation: every setting of ``profile.ablation.variants`` per task
    and seed, trained with validation (load-or-compute); writes
    ``results/ablation-<profile>.json`` after every run and the curves at the end."""
    from . import plots

    t_start = time.perf_counter()
    exp = Experiment.prepare(profile, data_dir, device, progress)
    out_json = Path(results_dir) / f"ablation-{profile.name}.json"
    rows: list[dict] = []
    summary: dict = {}
    for row in ablation_rows(exp, seeds, tasks, recorded_rows(out_json)):
        rows.append({k: v for k, v in row.items() if k != "log"})
        summary = summarise_ablation(profile, rows, seeds, time.perf_counter() - t_start)
        atomic_write_json(out_json, summary)
    for task, table in summary["tasks"].items():
        fig = plots.validation_curves(
            table,
            f"{task}: validation main loss by branch position "
            f"({profile.name}, λ={profile.ablation.lmbda(task):g})",
        )
        plots.save(fig, results_dir, f"ablation-{profile.name}-{task}")
    return summary


def ablation_rows(
    exp: Experiment,
    seeds: list[int],
    tasks: list[str],
    recorded: dict[str, dict],
    steps: int | None = None,
):
    """Each setting's run record, per seed, task and ``profile.ablation.variants``: from the
    cache or trained (load-or-compute, with its ``log``), or, when the cache lacks the run, the
    row an earlier results file ``recorded`` (:func:`recorded_rows`; without the log). The
    study and notebook 03 walk the same rows."""
    for seed in seeds:
        for task in tasks:
            for variant in exp.profile.ablation.variants:
                run_dir = exp.ablation_run_dir(task, variant, seed, steps)
                row = recorded.get(run_dir.name)
                if row is None or (run_dir / "codec.pt").is_file():
                    row = exp.ablation_point(task, variant, seed, steps=steps).record
                yield row


def recorded_rows(path: Path) -> dict[str, dict]:
    """The finished runs of an earlier invocation's results file, by run folder name.

    The results file is the record that outlives a session (the cache is not committed): a run
    whose folder name, which carries the key of everything that decides it, is in the file and
    not in the cache is taken from the file instead of being trained again, marked
    ``"from_results_file": true``. A run in the cache is loaded from there as usual.
    """
    if not path.is_file():
        return {}
    import json

    rows = json.loads(path.read_text()).get("rows", [])
    return {Path(r["run_dir"]).name: {**r, "from_results_file": True} for r in rows}


def summarise_ablation(
    profile: Profile, rows: list[dict], seeds: list[int], wall_seconds: float
) -> dict:
    """The ablation's JSON: the records, the table of :func:`~icm_lib.evaluate.ablation_table`
    per task with the paper's claim beside it, and the compute spent."""
    done = len(rows) == len(seeds) * len(profile.ablation.variants) * len({r["task"] for r in rows})
    return {
        "profile": profile.name,
        "seeds": seeds,
        "complete": done,
        "rows": rows,
        "tasks": ablation_table(rows),
        "paper_lowest": PAPER_ABLATION_LOWEST,
        "ablation_config": asdict(profile.ablation),
        "compute_hours_in_runs": round(sum(r["train_seconds"] for r in rows) / 3600, 3),
        "wall_hours_this_invocation": round(wall_seconds / 3600, 3),
    }


# ---------------------------------------------------------------------- seed 002
def summarise_gan(rows: list[dict]) -> dict:
    """Mean and 95 % interval over seeds of before, after and the change, per preset."""
    out = {}
    for preset in sorted({r["preset"] for r in rows}):
        rs = [r for r in rows if r["preset"] == preset]
        metric = get_task(rs[0]["task"]).metric
        table = {}
        for key in ("bpp", "psnr", "ms_ssim", "checkerboard", metric):
            table[key] = {
                "before": mean_ci([r["before"][key] for r in rs]),
                "after": mean_ci([r["after"][key] for r in rs]),
                "change": mean_ci([r["after"][key] - r["before"][key] for r in rs]),
            }
        table["task_relative_change_percent"] = mean_ci(
            [
                100 * (r["after"][metric] / r["before"][metric] - 1)
                for r in rs
                if r["before"][metric] > 0
            ]
        )
        out[preset] = table
    return out


def run_gan_study(
    profile: Profile,
    seeds: list[int],
    data_dir: str | Path,
    results_dir: str | Path,
    device: torch.device,
    progress: bool = True,
) -> dict:
    """Every preset over ``seeds``; writes ``results/gan-<profile>.json`` after every run."""
    t_start = time.perf_counter()
    exp = Experiment.prepare(profile, data_dir, device, progress)
    rows = []
    out_json = Path(results_dir) / f"gan-{profile.name}.json"
    summary: dict = {}
    for seed in seeds:
        for preset in PRESETS:
            rows.append(gan_point(exp, seed, preset)["record"])
            summary = {
                "profile": profile.name,
                "seeds": seeds,
                "rows": rows,
                "summary": summarise_gan(rows),
                "gan_config": asdict(profile.gan),
                "paper_task_relative_change_percent": PAPER_GAN_TASK_CHANGE,
                "compute_hours_in_runs": round(sum(x["train_seconds"] for x in rows) / 3600, 3),
                "wall_hours_this_invocation": round((time.perf_counter() - t_start) / 3600, 3),
            }
            atomic_write_json(out_json, summary)
    return summary


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m icm_lib.study", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--profile", default="cpu")
    parser.add_argument(
        "--study",
        choices=["aux", "ablation", "gan"],
        default="aux",
        help="aux: seed 001 (R-D, BD-rate); ablation: seed 001 section 4.2 (branch position); "
        "gan: seed 002 (PatchGAN finetuning)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tasks", nargs="+", default=["det", "seg"], choices=sorted(TASKS))
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["baseline", "aux-enc"],
        choices=[v for v in VARIANTS if v != "mse"],
    )
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--device", default="")
    parser.add_argument("--no-reference-curve", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--report",
        action="store_true",
        help="print the README's markdown tables from results/ and exit "
        "(= python -m icm_lib.report)",
    )
    parser.add_argument(
        "--readme",
        default=None,
        help="with --report: also write the tables into this file between the "
        "<!-- study-report:start/end --> markers",
    )
    return parser


def main(argv: list[str] | None = None) -> dict:
    """``python -m icm_lib.study --profile cpu --seeds 0 1 2`` (see ``--help``)."""
    args = _parser().parse_args(argv)
    if args.report:
        text = report(args.results_dir, args.profile)
        print(text)
        if args.readme:
            write_between_markers(Path(args.readme), text)
        return {"report": text}
    profile, device = get_profile(args.profile), get_device(args.device or None)
    if args.study == "ablation":
        summary = run_ablation_study(
            profile,
            args.seeds,
            args.tasks,
            args.data_dir,
            args.results_dir,
            device,
            not args.no_progress,
        )
        for task, t in summary["tasks"].items():
            print(
                f"{task}: "
                + ", ".join(f"{v} {t['variants'][v]['mean']:.4f}" for v in t["order"])
                + f" (lowest first; paper: {PAPER_ABLATION_LOWEST} lowest)"
            )
        return summary
    if args.study == "gan":
        summary = run_gan_study(
            profile, args.seeds, args.data_dir, args.results_dir, device, not args.no_progress
        )
        for preset, t in summary["summary"].items():
            print(
                f"{preset}: "
                + ", ".join(
                    f"{k} {v['before']['mean']:.4g} → {v['after']['mean']:.4g}"
                    for k, v in t.items()
                    if "before" in v
                )
            )
        return summary
    summary = run_study(
        profile,
        args.seeds,
        args.tasks,
        args.variants,
        args.data_dir,
        args.results_dir,
        device,
        not args.no_progress,
        not args.no_reference_curve,
    )
    for task, t in summary["tasks"].items():
        for name, row in t["bd_rate"].items():
            print(
                f"{task} {name:9s} BD-rate {fmt_mean_ci(row, 1, ' %')}; on the operational fronts "
                f"{fmt_mean_ci(row.get('front'), 1, ' %')} (paper aux-enc {t['paper_bd_rate_aux_enc']:+.1f} %)"
            )
    return summary


if __name__ == "__main__":
    main()
