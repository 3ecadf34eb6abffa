"""The resumable studies, written to ``results/`` as typed files (:mod:`icm_lib.results`): seed
001's runs with their R-D points (per-image data included) of every (task, variant, λ, seed),
with BD-rates and confidence intervals, and seed 002's PatchGAN presets.

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
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from .aux_branch import VARIANTS
from .evaluate import ablation_table, bd_rates, curves, mean_ci
from .experiment import Experiment
from .gan import PRESETS, gan_point
from .profiles import Profile, get_profile
from .report import fmt_mean_ci, report, write_between_markers
from .results import PAPERS, AblationFile, GanFile, GanRecord, RunRecord, StudyFile, figure_name
from .runtime import get_device
from .tasks import TASKS, get_task


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
) -> StudyFile:
    """Run (or resume) the whole grid and write ``results/study-<profile>.json`` after every run
    and the R-D figure at the end. Returns the study file."""
    from . import plots

    t_start = time.perf_counter()
    exp = Experiment.prepare(profile, data_dir, device, progress)
    out_json = StudyFile.path(results_dir, profile.name)
    runs: list[RunRecord] = []

    def write(done: bool) -> StudyFile:
        study = summarise(
            profile, runs, tasks, seeds, variants, done, time.perf_counter() - t_start
        )
        study.write(out_json)
        return study

    for point in exp.grid(seeds, tasks, variants, reference_curve):
        runs.append(point.run)  # the weights stay on disk
        write(False)
    study = write(True)
    for task in map(get_task, tasks):
        fig = plots.rd_curves(
            curves(runs, task.name),
            task.metric,
            title=f"{task.name}: R-D on the {profile.name} profile ({len(seeds)} seeds)",
        )
        plots.save(fig, results_dir, figure_name("study", profile.name, task.name, "rd"))
    return study


def summarise(
    profile: Profile,
    runs: list[RunRecord],
    tasks: list[str],
    seeds: list[int],
    variants: list[str],
    done: bool,
    wall_seconds: float,
) -> StudyFile:
    """The study's file: every run with its R-D points, BD-rate tables and the compute spent."""
    per_task = {}
    for task in map(get_task, tasks):
        per_task[task.name] = {
            "metric": task.metric,
            "bd_rate": _as_json(bd_rates(curves(runs, task.name), task.name)),
        }
    compute = sum(r.seconds or 0.0 for r in runs) + sum(
        p.seconds or 0.0 for r in runs for p in r.points
    )
    return StudyFile(
        profile=profile.name,
        seeds=seeds,
        compute_hours_in_runs=round(compute / 3600, 3),
        wall_hours_this_invocation=round(wall_seconds / 3600, 3),
        complete=done,
        variants=variants,
        runs=runs,
        tasks=per_task,
        icm_config=_as_json(asdict(profile.icm)),
    )


def _as_json(table: dict) -> dict:
    """``table`` as it reads back from JSON (seed keys as strings, tuples as lists)."""
    return json.loads(json.dumps(table))


# ---------------------------------------------------------------------- seed 001 section 4.2
def run_ablation_study(
    profile: Profile,
    seeds: list[int],
    tasks: list[str],
    data_dir: str | Path,
    results_dir: str | Path,
    device: torch.device,
    progress: bool = True,
) -> AblationFile:
    """The branch-position ablation: every setting of ``profile.ablation.variants`` per task
    and seed, trained with validation (load-or-compute); writes
    ``results/ablation-<profile>.json`` after every run and the curves at the end."""
    from . import plots

    t_start = time.perf_counter()
    exp = Experiment.prepare(profile, data_dir, device, progress)
    out_json = AblationFile.path(results_dir, profile.name)
    rows: list[RunRecord] = []
    summary = None
    for row in ablation_rows(exp, seeds, tasks, recorded_rows(out_json)):
        rows.append(replace(row, log=[]))  # the log stays in the run folder
        summary = summarise_ablation(profile, rows, seeds, time.perf_counter() - t_start)
        summary.write(out_json)
    for task, table in summary.tasks.items():
        fig = plots.validation_curves(
            table,
            f"{task}: validation main loss by branch position "
            f"({profile.name}, λ={profile.ablation.lmbda(task):g})",
        )
        plots.save(fig, results_dir, figure_name("ablation", profile.name, task))
    return summary


def ablation_rows(
    exp: Experiment,
    seeds: list[int],
    tasks: list[str],
    recorded: dict[str, RunRecord],
    steps: int | None = None,
):
    """Each setting's :class:`~icm_lib.results.RunRecord`, per seed, task and
    ``profile.ablation.variants``: from the cache or trained (load-or-compute, with its
    ``log``), or, when the cache lacks the run, the run an earlier results file ``recorded``
    (:func:`recorded_rows`; without the log). The study and notebook 03 walk the same rows."""
    for seed in seeds:
        for task in tasks:
            for variant in exp.profile.ablation.variants:
                run_dir = exp.ablation_run_dir(task, variant, seed, steps)
                row = recorded.get(run_dir.name)
                if row is None or (run_dir / "codec.pt").is_file():
                    row = exp.ablation_point(task, variant, seed, steps=steps).run
                yield row


def recorded_rows(path: Path) -> dict[str, RunRecord]:
    """The finished runs of an earlier invocation's results file, by run key (folder name).

    The results file is the record that outlives a session (the cache is not committed): a run
    whose folder name, which carries the key of everything that decides it, is in the file and
    not in the cache is taken from the file instead of being trained again, marked
    ``from_results_file``. A run in the cache is loaded from there as usual.
    """
    if not Path(path).is_file():
        return {}
    runs = AblationFile.read(path).runs
    return {r.run_key: replace(r, from_results_file=True) for r in runs}


def summarise_ablation(
    profile: Profile, rows: list[RunRecord], seeds: list[int], wall_seconds: float
) -> AblationFile:
    """The ablation's file: the runs, the table of :func:`~icm_lib.evaluate.ablation_table`
    per task, and the compute spent."""
    done = len(rows) == len(seeds) * len(profile.ablation.variants) * len({r.task for r in rows})
    return AblationFile(
        profile=profile.name,
        seeds=seeds,
        compute_hours_in_runs=round(sum(r.seconds or 0.0 for r in rows) / 3600, 3),
        wall_hours_this_invocation=round(wall_seconds / 3600, 3),
        complete=done,
        runs=rows,
        tasks=_as_json(ablation_table(rows)),
        ablation_config=_as_json(asdict(profile.ablation)),
    )


# ---------------------------------------------------------------------- seed 002
def summarise_gan(runs: list[GanRecord]) -> dict:
    """Mean and 95 % interval over seeds of before, after and the change, per preset."""
    rows = [r.plain() for r in runs]
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
) -> GanFile:
    """Every preset over ``seeds``; writes ``results/gan-<profile>.json`` after every run."""
    t_start = time.perf_counter()
    exp = Experiment.prepare(profile, data_dir, device, progress)
    rows: list[GanRecord] = []
    out_json = GanFile.path(results_dir, profile.name)
    summary = None
    for seed in seeds:
        for preset in PRESETS:
            rows.append(gan_point(exp, seed, preset).run)
            summary = GanFile(
                profile=profile.name,
                seeds=seeds,
                compute_hours_in_runs=round(sum(x.seconds or 0.0 for x in rows) / 3600, 3),
                wall_hours_this_invocation=round((time.perf_counter() - t_start) / 3600, 3),
                runs=rows,
                summary=_as_json(summarise_gan(rows)),
                gan_config=_as_json(asdict(profile.gan)),
            )
            summary.write(out_json)
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


def main(argv: list[str] | None = None) -> dict | StudyFile | AblationFile | GanFile:
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
        for task, t in summary.tasks.items():
            print(
                f"{task}: "
                + ", ".join(f"{v} {t['variants'][v]['mean']:.4f}" for v in t["order"])
                + f" (lowest first; paper: {PAPERS.iino_ablation_lowest} lowest)"
            )
        return summary
    if args.study == "gan":
        summary = run_gan_study(
            profile, args.seeds, args.data_dir, args.results_dir, device, not args.no_progress
        )
        for preset, t in summary.summary.items():
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
    for task, t in summary.tasks.items():
        for name, row in t["bd_rate"].items():
            print(
                f"{task} {name:9s} BD-rate {fmt_mean_ci(row, 1, ' %')}; on the operational fronts "
                f"{fmt_mean_ci(row.get('front'), 1, ' %')} "
                f"(paper aux-enc {PAPERS.iino_bd_rate[task]:+.1f} %)"
            )
    return summary


if __name__ == "__main__":
    main()
