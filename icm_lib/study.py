"""The resumable studies, written to ``results/`` as typed files (:mod:`icm_lib.results`): seed
001's runs with their R-D points (per-image data included) of every (task, variant, λ, seed),
with BD-rates and confidence intervals, and Le et al.'s PatchGAN presets.

Every run is load-or-compute (a trained codec in its run folder, its evaluation in a JSON beside
it; :meth:`icm_lib.experiment.Experiment.grid`), so a stopped study resumes where it stopped, and
notebooks 01-02 reuse the seed-0 runs. A run the cache lacks but the study's own results file
(or the pilot's) already holds under the same run key -- a machine that lost its cache -- is
taken from the file, not trained again::

    python -m icm_lib.study --profile cpu --seeds 0 1 2        # or: make study
    python -m icm_lib.study --study ablation --seeds 0 1 2     # section 4.2: branch position
    python -m icm_lib.study --study gan --seeds 0 1 2          # Le et al.: PatchGAN presets

Each study can run its runs as jobs (:mod:`icm_lib.launch`): ``--launcher pool --workers 2`` on
this machine, ``--launcher slurm --partition ... --gpus-per-run N --time ...`` on a cluster; the
study then collects the finished runs into the same file (README "Studies on a cluster").
``--plan --s-per-step det=0.26 seg=0.63`` prints a study's runs and projected GPU-hours.

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
import contextlib
import functools
import inspect
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from .aux_branch import VARIANTS
from .cli import at_least
from .errors import ConfigError, RunLockedError
from .evaluate import ablation_table, bd_rates, curves, mean_ci
from .experiment import Experiment
from .gan import gan_base
from .jobs import RunCall, compute, point_call, projected_hours
from .launch import LaunchOptions, LaunchReport, add_arguments, launch_study
from .locks import RunLock
from .profiles import (
    BF16_HELP,
    NO_FOLD_HELP,
    OVERRIDES_HELP,
    Profile,
    from_precision_flags,
    get_profile,
    parse_overrides,
)
from .report import fmt_mean_ci, report, write_between_markers
from .results import (
    PAPERS,
    AblationFile,
    GanFile,
    GanRecord,
    PilotFile,
    RunRecord,
    StudyFile,
    as_json,
    figure_name,
    warn_other_environment,
)
from .runtime import get_device, tell
from .tasks import TASKS, get_task

_HELD: dict[Path, RunLock] = {}  # the results files this process holds (sole_writer)


@contextlib.contextmanager
def sole_writer(path: Path, together: str = "e.g. --seeds 0 1 2"):
    """Hold the results file ``path`` for one invocation: each invocation keeps the file's
    earlier runs as it found them at its start (:func:`earlier_runs`), so a second one writing
    the same file at the same time would drop the runs the first adds. A second invocation
    raises :class:`~icm_lib.errors.RunLockedError` at once, naming the first and how to run
    both sets of runs in one (``together``: the options that would); the lock (``.<file>.lock``
    beside it, :class:`~icm_lib.locks.RunLock`) left by a killed process is removed by the next
    invocation (at once on its machine; from another host once it has not been refreshed for
    ``ICM_LOCK_STALE_SECONDS``). Every write goes through :func:`_write_held`."""
    path = Path(path)
    lock = RunLock(path.with_name(f".{path.name}.lock"), timeout=0, what=str(path))
    for attempt in range(2):
        try:
            lock.acquire()
            break
        except RunLockedError as exc:
            holder, _, _ = RunLock.read(lock.path)
            if holder is None and attempt == 0:  # released (or being created) just now
                time.sleep(lock.poll)
                continue
            raise RunLockedError(
                f"{path} is being written by another study invocation "
                f"({RunLock.describe(holder)}; lock file {lock.path}): a second one at the same "
                "time would drop the runs the first adds. Wait for it to finish and run again "
                "(the runs it trained load from the cache), or let one invocation run them all "
                f"({together}), in parallel with --launcher pool --workers N. If that process "
                "is gone on another host, its lock counts as stale after ICM_LOCK_STALE_SECONDS "
                "without a refresh; or delete the lock file"
            ) from exc
    _HELD[path] = lock
    try:
        yield lock
    finally:
        _HELD.pop(path, None)
        lock.release()


def _write_held(file, path: Path) -> None:
    """``file.write(path)`` if this process still holds ``path`` (:func:`sole_writer`), else
    :class:`~icm_lib.errors.RunLockedError`: another host judged the lock stale and took it."""
    lock = _HELD.get(Path(path))
    if lock is not None:
        lock.check()
    file.write(path)


def _one_invocation_per_file(file_cls: type, together: str):
    """Decorate a ``run_*`` study with :func:`sole_writer` on its results file (of
    ``file_cls``, in its ``results_dir`` for its ``profile``); asking the jobs' states only
    (``launch.status_only``) writes nothing and takes no lock."""

    def decorate(fn: Callable) -> Callable:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def run(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            launch = bound.arguments["launch"]
            if launch is not None and launch.status_only:
                return fn(*args, **kwargs)
            path = file_cls.path(bound.arguments["results_dir"], bound.arguments["profile"].name)
            with sole_writer(path, together):
                return fn(*args, **kwargs)

        return run

    return decorate


@_one_invocation_per_file(StudyFile, "e.g. --tasks det seg --seeds 0 1 2")
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
    launch: LaunchOptions | None = None,
) -> StudyFile | LaunchReport:
    """Run (or resume) the whole grid and write ``results/study-<profile>.json`` after every run
    and the R-D figure at the end. Returns the study file.

    ``launch``: run each run as a job (:mod:`icm_lib.launch`); the file is written as runs
    finish, in grid order, the same file as this process's. Without waiting for the jobs
    (``launch.wait`` false) returns the jobs' :class:`~icm_lib.launch.LaunchReport` unless
    every run is in."""
    from . import plots

    t_start = time.perf_counter()
    exp = Experiment.prepare(profile, data_dir, device, progress, tasks=tasks)
    out_json = StudyFile.path(results_dir, profile.name)
    # what an earlier invocation recorded: this file's runs, and the pilot's (its runs are
    # the study's seed-0 baselines)
    recorded = {
        **PilotFile.recorded(PilotFile.path(results_dir, profile.name)),
        **StudyFile.recorded(out_json),
    }
    calls = study_calls("rd", profile, seeds, tasks, variants, reference_curve)
    # what the file holds outside this invocation's grid (another task, seed or variant) stays
    asked = {(t, v, s) for t in tasks for v in variants for s in seeds}
    icm = profile.icm
    kept = earlier_runs(
        out_json,
        StudyFile,
        redone=lambda r: r.variant != "mse" and (r.task, r.variant, r.seed) in asked,
        chosen=lambda r: (
            r.lmbda in (icm.mse_lambdas if r.variant == "mse" else icm.lambdas(r.task))
        ),
        current=lambda r: _current_point(exp, r),
    )

    def record(exp: Experiment, call: RunCall) -> RunRecord:
        found = _recorded_point(exp, call, recorded)
        return found if found is not None else compute(exp, call)

    def write(runs: list[RunRecord], done: bool) -> StudyFile:
        # (the kept runs were read when this invocation started: sole_writer holds the file)
        study = summarise_with_earlier(
            profile,
            runs,
            kept,
            tasks,
            seeds,
            variants,
            done,
            time.perf_counter() - t_start,
            reference_curve,
        )
        _write_held(study, out_json)
        return study

    if _launched(launch):
        files: list[StudyFile] = []
        report = launch_study(
            exp,
            calls,
            launch,
            f"study-{profile.name}",
            lambda got_calls, runs: files.append(write(runs, len(runs) == len(calls))),
            settled=lambda call: _recorded_point(exp, call, recorded) is not None,
            record=record,
        )
        if not files or not report.complete:  # still running, or --status
            return report
        study = files[-1]
    else:
        runs = []
        for call in calls:  # Experiment.grid's runs, in its order
            t0 = time.perf_counter()
            runs.append(record(exp, call))  # the weights stay on disk
            write(runs, False)
            tell(f"study-{profile.name}", len(runs), len(calls), runs[-1], t0)
        study = write(runs, True)
    for task in map(get_task, study.tasks):  # the file's: this invocation's runs and the kept
        n = len({r.seed for r in study.runs if r.task == task.name and r.variant != "mse"})
        fig = plots.rd_curves(
            curves(study.runs, task.name),
            task.metric,
            title=f"{task.name}: R-D on the {profile.name} profile ({n} seeds)",
        )
        plots.save(fig, results_dir, figure_name("study", profile.name, task.name, "rd"))
    return study


def _current_point(exp: Experiment, run: RunRecord) -> bool:
    """Whether a recorded R-D run is the one ``exp`` would train and score now: the same run
    key (what trains it), its points' rates of the kind the profile's evaluation gives (real
    bytes for every image, or the estimate)."""
    rate = "real" if exp.profile.evaluation.real_images is None else "estimate"
    key = exp.point_run_dir(run.task, run.variant, run.lmbda, run.seed).name
    return run.run_key == key and all(p.rate == rate for p in run.points)


def _recorded_point(exp: Experiment, call: RunCall, recorded: dict) -> RunRecord | None:
    """The run a results file recorded for an R-D ``call`` where the cache lacks it
    (:meth:`~icm_lib.experiment.Experiment.recorded_point`), if it holds a point on every task
    the call scores (an MSE reference run recorded by a study of other tasks is scored again)."""
    found = exp.recorded_point(recorded, **call.args)
    scores = call.args.get("eval_tasks") or ()
    if found is not None and any(found.point(t, found.variant) is None for t in scores):
        return None
    return found


def _launched(launch: LaunchOptions | None) -> bool:
    """Whether the study's runs are jobs (or only their states are asked for)."""
    return launch is not None and (launch.launcher != "local" or launch.status_only)


class _GridCalls:
    """Stands in for an :class:`~icm_lib.experiment.Experiment` in
    :meth:`~icm_lib.experiment.Experiment.grid`: each point becomes the
    :class:`~icm_lib.jobs.RunCall` that computes it, so a launcher runs the sequential
    study's very runs, in its order."""

    def __init__(self, profile: Profile):
        self.profile = profile

    def point(self, task, variant, lmbda, seed, **kwargs) -> RunCall:
        return point_call(task, variant, lmbda, seed, **kwargs)


def study_calls(
    study: str,
    profile: Profile,
    seeds: list[int],
    tasks: list[str] | None = None,
    variants: list[str] | None = None,
    reference_curve: bool = True,
) -> list[RunCall]:
    """The runs of a study as :class:`~icm_lib.jobs.RunCall` s, in its results file's order.

    Args:
        study: ``rd`` (Iino et al.'s grid: :meth:`~icm_lib.experiment.Experiment.grid`),
            ``ablation`` (:func:`ablation_rows`' order) or ``gan`` (each seed's presets, each
            needing the seed's baseline codec, which :func:`~icm_lib.gan.gan_point` trains).
    """
    tasks = tasks or ["det", "seg"]
    if study == "rd":
        grid = Experiment.grid(_GridCalls(profile), seeds, tasks, variants, reference_curve)
        return list(grid)
    if study == "ablation":
        return [
            RunCall("ablation", {"task": task, "variant": variant, "seed": seed, "steps": None})
            for seed, task, variant in _ablation_coordinates(profile, seeds, tasks)
        ]
    if study == "gan":
        task, lmbda = gan_base(profile)
        return [
            RunCall(
                "gan",
                {"seed": seed, "preset": preset},
                needs=(point_call(task, "baseline", lmbda, seed),),
            )
            for seed in seeds
            for preset in profile.gan.presets
        ]
    raise ValueError(f"study must be rd, ablation or gan, got {study!r}")


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
            "bd_rate": as_json(bd_rates(curves(runs, task.name), task.name)),
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
        icm_config=as_json(profile.icm.recorded()),
    )


def earlier_runs(
    path: Path,
    cls: type,
    redone: Callable[[Any], bool],
    chosen: Callable[[Any], bool],
    current: Callable[[Any], bool],
) -> list:
    """The runs of the results file (of ``cls``) at ``path`` that an invocation keeps beside
    its own, so that a study of some tasks, seeds or variants adds to the file instead of
    dropping the rest: those it does not redo (``redone``), that the profile still chooses
    (``chosen``: e.g. their λ is in its grid) and that are what this code and this machine
    would train for them now (``current``: the run key computed here). A run dropped for its
    key -- other settings, or another machine's reference codec -- is named in a warning."""
    if not Path(path).is_file():
        return []
    kept, dropped = [], []
    for r in cls.read(path).runs:
        if not redone(r) and chosen(r):
            (kept if current(r) else dropped).append(r)
    if dropped:
        names = sorted(
            {f"{r.task} {getattr(r, 'variant', None) or r.preset} seed {r.seed}" for r in dropped}
        )
        warnings.warn(
            f"{path}: {len(dropped)} recorded run(s) were made with other settings or another "
            f"reference codec than this machine's ({', '.join(names)}): they are not kept in "
            "the file (run them again here to have them)",
            stacklevel=3,
        )
    return kept


def summarise_with_earlier(
    profile: Profile,
    runs: list[RunRecord],
    kept: list[RunRecord],
    tasks: list[str],
    seeds: list[int],
    variants: list[str],
    done: bool,
    wall_seconds: float,
    reference_curve: bool = True,
) -> StudyFile:
    """:func:`summarise` of this invocation's ``runs`` together with the earlier file's runs it
    ``kept`` (:func:`earlier_runs`): a kept MSE reference run that this invocation has scored
    again (on its ``tasks`` only) lends it its points on the other tasks; one it has not (yet)
    stays whole. The file's tasks, seeds and variants are the union; it is complete when this
    invocation is ``done`` and every run of the union's grid is in, the MSE reference scored on
    every task where the file has one."""
    merged = list(runs)
    mine = {r.run_key: i for i, r in enumerate(runs)}
    for old in kept:
        if old.run_key not in mine:
            merged.append(old)
        elif old.variant == "mse":
            new = merged[mine[old.run_key]]
            other = [p for p in old.points if new.point(p.task, p.curve) is None]
            merged[mine[old.run_key]] = replace(
                new,
                points=new.points + other,  # and what the lent points stood on
                foundations={**(old.foundations or {}), **(new.foundations or {})} or None,
            )
    trained = [r for r in merged if r.variant != "mse"]
    tasks = [t for t in TASKS if t in {*tasks, *(r.task for r in trained)}]
    seeds = sorted({*seeds, *(r.seed for r in trained)})
    variants = [v for v in VARIANTS if v in {*variants, *(r.variant for r in trained)}]
    reference = reference_curve or any(r.variant == "mse" for r in merged)
    calls = study_calls("rd", profile, seeds, tasks, variants, reference)
    order = {_coordinates(c.args): i for i, c in enumerate(calls)}
    merged.sort(key=lambda r: order.get((r.task, r.variant, r.lmbda, r.seed), len(order)))
    merged = [  # the MSE points in the file's task order, whichever invocation scored them
        replace(r, points=sorted(r.points, key=lambda p: list(TASKS).index(p.task)))
        if r.variant == "mse"
        else r
        for r in merged
    ]
    have = {(r.task, r.variant, r.lmbda, r.seed) for r in merged}
    scored = {(r.lmbda, p.task) for r in merged if r.variant == "mse" for p in r.points}
    complete = done and all(
        _coordinates(c.args) in have
        and all((c.args["lmbda"], t) in scored for t in c.args["eval_tasks"] or ())
        for c in calls
    )
    return summarise(profile, merged, tasks, seeds, variants, complete, wall_seconds)


def _coordinates(args: dict) -> tuple:
    """A point call's (task, variant, λ, seed), as its run record names them."""
    return args["task"], args["variant"], args["lmbda"], args["seed"]


# ---------------------------------------------------------------------- Iino et al. section 4.2
@_one_invocation_per_file(AblationFile, "e.g. --tasks det seg --seeds 0 1 2")
def run_ablation_study(
    profile: Profile,
    seeds: list[int],
    tasks: list[str],
    data_dir: str | Path,
    results_dir: str | Path,
    device: torch.device,
    progress: bool = True,
    launch: LaunchOptions | None = None,
) -> AblationFile | LaunchReport:
    """The branch-position ablation: every setting of ``profile.ablation.variants`` per task
    and seed, trained with validation (load-or-compute); writes
    ``results/ablation-<profile>.json`` after every run and the curves at the end (``launch``:
    as :func:`run_study`)."""
    from . import plots

    t_start = time.perf_counter()
    exp = Experiment.prepare(profile, data_dir, device, progress, tasks=tasks)
    out_json = AblationFile.path(results_dir, profile.name)
    recorded = recorded_rows(out_json)
    # the file's rows of other tasks and seeds stay (as run_study's)
    ab = profile.ablation
    kept = earlier_runs(
        out_json,
        AblationFile,
        redone=lambda r: r.task in tasks and r.seed in seeds,
        chosen=lambda r: r.variant in ab.variants and r.lmbda == ab.lmbda(r.task),
        current=lambda r: r.run_key == exp.ablation_run_dir(r.task, r.variant, r.seed).name,
    )

    def write(rows: list[RunRecord]) -> AblationFile:
        summary = summarise_ablation(
            profile, rows, seeds, time.perf_counter() - t_start, kept, tasks
        )
        _write_held(summary, out_json)
        return summary

    summary = None
    if _launched(launch):
        calls = study_calls("ablation", profile, seeds, tasks)
        files: list[AblationFile] = []
        report = launch_study(
            exp,
            calls,
            launch,
            f"ablation-{profile.name}",
            lambda got_calls, rows: files.append(write(rows)),
            settled=lambda call: _from_results_file(exp, call.args, recorded),
            record=lambda exp, call: replace(ablation_row(exp, recorded, **call.args), log=[]),
        )
        if not files or not report.complete:  # still running, or --status
            return report
        summary = files[-1]
    else:
        rows: list[RunRecord] = []
        total, t0 = len(list(_ablation_coordinates(profile, seeds, tasks))), time.perf_counter()
        for row in ablation_rows(exp, seeds, tasks, recorded):
            rows.append(replace(row, log=[]))  # the log stays in the run folder
            summary = write(rows)
            tell(f"ablation-{profile.name}", len(rows), total, row, t0)
            t0 = time.perf_counter()
    for task, table in summary.tasks.items():
        fig = plots.validation_curves(
            table,
            f"{task}: validation main loss by branch position "
            f"({profile.name}, λ={profile.ablation.lmbda(task):g})",
        )
        plots.save(fig, results_dir, figure_name("ablation", profile.name, task))
    return summary


def _ablation_coordinates(profile: Profile, seeds: list[int], tasks: list[str]):
    """``(seed, task, variant)`` of every ablation setting, in the results file's order."""
    for seed in seeds:
        for task in tasks:
            for variant in profile.ablation.variants:
                yield seed, task, variant


def ablation_rows(
    exp: Experiment,
    seeds: list[int],
    tasks: list[str],
    recorded: dict[str, RunRecord],
    steps: int | None = None,
    same_settings: bool = False,
):
    """Each setting's :class:`~icm_lib.results.RunRecord`, per seed, task and
    ``profile.ablation.variants``: from the cache or trained (load-or-compute, with its
    ``log``), or, when the cache lacks the run, the run an earlier results file ``recorded``
    (:func:`recorded_rows`; without the log) under the same run key -- or, with
    ``same_settings`` (notebook 03: a reader of the recorded study), under the same
    :attr:`~icm_lib.results.RunRecord.settings_key`: the run another machine made with the
    same settings. The study and notebook 03 walk the same rows."""
    for seed, task, variant in _ablation_coordinates(exp.profile, seeds, tasks):
        yield ablation_row(exp, recorded, task, variant, seed, steps, same_settings)


def ablation_row(
    exp: Experiment,
    recorded: dict[str, RunRecord],
    task: str,
    variant: str,
    seed: int,
    steps: int | None = None,
    same_settings: bool = False,
) -> RunRecord:
    """One row of :func:`ablation_rows`."""
    coordinates = {"task": task, "variant": variant, "seed": seed, "steps": steps}
    found = _recorded_run(exp, coordinates, recorded, same_settings)
    return found if found is not None else exp.ablation_point(task, variant, seed, steps).run


def _recorded_run(
    exp: Experiment, coordinates: dict, recorded: dict, same_settings: bool = False
) -> RunRecord | None:
    """The run an earlier results file recorded for an ablation setting that the cache lacks
    (see :func:`ablation_rows`), else ``None``."""
    c = coordinates
    run_dir = exp.ablation_run_dir(c["task"], c["variant"], c["seed"], c.get("steps"))
    if (run_dir / "codec.pt").is_file():
        return None  # in the cache: loaded from there
    key = exp.ablation_settings_key(c["task"], c["variant"], c["seed"], c.get("steps"))
    if run_dir.name in recorded:  # the same run key: the same settings too
        found = recorded[run_dir.name]
        if not same_settings and not exp.stands_on_ours(found, [c["task"]]):
            return None  # a reader shows another machine's runs; a study trains them here
        return found if found.settings_key else replace(found, settings_key=key)
    if not same_settings:
        return None
    return next((r for r in recorded.values() if r.settings_key == key), None)


def _from_results_file(exp: Experiment, coordinates: dict, recorded: dict) -> bool:
    """Whether an ablation setting is taken from an earlier results file (not in the cache)."""
    return _recorded_run(exp, coordinates, recorded) is not None


def recorded_elsewhere(exp: Experiment, rows: list[RunRecord], steps: int | None = None) -> int:
    """How many of ``rows`` were read from a results file that another machine's weights made:
    a run key that is not this machine's (the same settings, another reference codec's weights:
    see :meth:`Experiment.settings_key`), or recorded recognizer weights that are not
    (:meth:`Experiment.stands_on_ours`)."""
    return sum(
        r.from_results_file
        and (
            r.run_key != exp.ablation_run_dir(r.task, r.variant, r.seed, steps).name
            or not exp.stands_on_ours(r, [r.task], warn=False)
        )
        for r in rows
    )


def recorded_rows(path: Path) -> dict[str, RunRecord]:
    """The finished runs of an earlier invocation's ablation file, by run key (folder name),
    marked ``from_results_file`` (:meth:`~icm_lib.results.AblationFile.recorded`): a run in
    the file but not in the cache is taken from the file; a run in the cache is loaded from
    there as usual."""
    return AblationFile.recorded(path)


def summarise_ablation(
    profile: Profile,
    rows: list[RunRecord],
    seeds: list[int],
    wall_seconds: float,
    kept: list[RunRecord] = (),
    tasks: list[str] | None = None,
) -> AblationFile:
    """The ablation's file: the runs, the table of :func:`~icm_lib.evaluate.ablation_table`
    per task, and the compute spent. ``kept``: the earlier file's rows of the tasks and seeds
    this invocation does not redo (:func:`earlier_runs`); the file's tasks and seeds are the
    union, and it is complete when every row of the union is in."""
    rows = [*rows, *kept]
    seeds = sorted({*seeds, *(r.seed for r in rows)})
    tasks = [t for t in TASKS if t in {*(tasks or ()), *(r.task for r in rows)}]
    order = {c: i for i, c in enumerate(_ablation_coordinates(profile, seeds, tasks))}
    rows.sort(key=lambda r: order.get((r.seed, r.task, r.variant), len(order)))
    done = {(r.seed, r.task, r.variant) for r in rows} >= set(order)
    return AblationFile(
        profile=profile.name,
        seeds=seeds,
        compute_hours_in_runs=round(sum(r.seconds or 0.0 for r in rows) / 3600, 3),
        wall_hours_this_invocation=round(wall_seconds / 3600, 3),
        complete=done,
        runs=rows,
        tasks=as_json(ablation_table(rows)),
        **_ablation_configs(profile),
    )


def _ablation_configs(profile: Profile) -> dict[str, dict]:
    """The profile's settings an ablation file records (its runs are trained by both)."""
    return {
        "ablation_config": as_json(asdict(profile.ablation)),
        "icm_config": as_json(profile.icm.recorded()),
    }


# ---------------------------------------------------------------------- Le et al.
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


@_one_invocation_per_file(GanFile, "e.g. --seeds 0 1 2")
def run_gan_study(
    profile: Profile,
    seeds: list[int],
    data_dir: str | Path,
    results_dir: str | Path,
    device: torch.device,
    progress: bool = True,
    launch: LaunchOptions | None = None,
) -> GanFile | LaunchReport:
    """Every preset over ``seeds``; writes ``results/gan-<profile>.json`` after every run
    (``launch``: as :func:`run_study`; each seed's baseline codec is a job of its own that its
    finetunings wait for)."""
    t_start = time.perf_counter()
    exp = Experiment.prepare(profile, data_dir, device, progress, tasks=[gan_base(profile)[0]])
    out_json = GanFile.path(results_dir, profile.name)
    calls = study_calls("gan", profile, seeds)
    recorded = recorded_finetunings(out_json, profile)
    # the file's finetunings of other seeds stay (as run_study's runs of other seeds)
    task, lmbda = gan_base(profile)
    same = out_json.is_file() and _finetuning_settings(
        GanFile.read(out_json).gan_config
    ) == _finetuning_settings(asdict(profile.gan))
    kept = earlier_runs(
        out_json,
        GanFile,
        redone=lambda r: r.seed in seeds,
        chosen=lambda r: r.preset in profile.gan.presets,
        current=lambda r: (
            same and r.base_run_key == exp.point_run_dir(task, "baseline", lmbda, r.seed).name
        ),
    )
    presets = list(profile.gan.presets)

    def record(exp: Experiment, call: RunCall) -> GanRecord:
        found = _recorded_gan(exp, call, recorded)
        return found if found is not None else compute(exp, call)

    def write(rows: list[GanRecord]) -> GanFile:
        rows = sorted([*rows, *kept], key=lambda r: (r.seed, presets.index(r.preset)))
        summary = GanFile(
            profile=profile.name,
            seeds=sorted({*seeds, *(r.seed for r in rows)}),
            compute_hours_in_runs=round(sum(x.seconds or 0.0 for x in rows) / 3600, 3),
            wall_hours_this_invocation=round((time.perf_counter() - t_start) / 3600, 3),
            runs=rows,
            summary=as_json(summarise_gan(rows)),
            gan_config=as_json(asdict(profile.gan)),
        )
        _write_held(summary, out_json)
        return summary

    if _launched(launch):
        files: list[GanFile] = []
        report = launch_study(
            exp,
            calls,
            launch,
            f"gan-{profile.name}",
            lambda got_calls, rows: files.append(write(list(rows))),
            settled=lambda call: _recorded_gan(exp, call, recorded) is not None,
            record=record,
        )
        return files[-1] if files and report.complete else report
    rows: list[GanRecord] = []
    summary = None
    for call in calls:  # each seed's presets
        t0 = time.perf_counter()
        rows.append(record(exp, call))
        summary = write(rows)
        tell(f"gan-{profile.name}", len(rows), len(calls), rows[-1], t0)
    return summary


def _finetuning_settings(gan_config: dict) -> dict:
    """What decides a finetuning besides its preset, seed and baseline codec: the profile's
    GAN settings as JSON, without the study's list of presets (as its run key)."""
    return {k: v for k, v in as_json(gan_config).items() if k != "presets"}


def recorded_finetunings(path: Path, profile: Profile) -> dict[tuple, GanRecord]:
    """The finetunings of an earlier invocation's GAN file by (baseline run key, preset, seed),
    marked ``from_results_file``; none where the file was made with other finetuning settings,
    or its records predate :attr:`~icm_lib.results.GanRecord.base_run_key`."""
    earlier = GanFile.read(path) if Path(path).is_file() else None
    if earlier is not None:
        warn_other_environment(earlier, path)
    if earlier is None or _finetuning_settings(earlier.gan_config) != _finetuning_settings(
        asdict(profile.gan)
    ):
        return {}
    return {
        (r.base_run_key, r.preset, r.seed): replace(r, from_results_file=True)
        for r in earlier.runs
        if r.base_run_key
    }


def _recorded_gan(exp: Experiment, call: RunCall, recorded: dict) -> GanRecord | None:
    """The finetuning ``recorded`` holds for a GAN ``call`` where the cache lacks its baseline
    codec -- a machine that lost its cache, which would otherwise train the baseline again only
    to compute the finetuning's key (that key hashes the codec's weights) -- else ``None``."""
    task, lmbda = gan_base(exp.profile)
    base = exp.point_run_dir(task, "baseline", lmbda, call.args["seed"])
    if (base / "codec.pt").is_file():
        return None
    found = recorded.get((base.name, call.args["preset"], call.args["seed"]))
    return found if found is None or exp.stands_on_ours(found, [task]) else None


def print_plan(
    study: str,
    profile: Profile,
    seeds: list[int],
    tasks: list[str],
    variants: list[str],
    reference_curve: bool,
    s_per_step: dict[str, float],
) -> list[dict]:
    """Print (and return) a study's runs, training steps and projected GPU-hours per task and
    variant (:func:`~icm_lib.jobs.projected_hours`); submits nothing."""
    calls = study_calls(study, profile, seeds, tasks, variants, reference_curve)
    rows = projected_hours(profile, calls, s_per_step)
    print(f"{study} study, {profile.name} profile, seeds {seeds}: training only")
    print(f"{'task':<5}{'variant':<10}{'runs':>6}{'steps':>14}{'s/step':>9}{'GPU-hours':>11}")
    for r in rows:
        s = "-" if r["s_per_step"] is None else f"{r['s_per_step']:.3f}"
        h = "-" if r["hours"] is None else f"{r['hours']:,.1f}"
        print(f"{r['task']:<5}{r['variant']:<10}{r['runs']:>6}{r['steps']:>14,}{s:>9}{h:>11}")
    known = [r["hours"] for r in rows if r["hours"] is not None]
    total = f"{sum(known):,.1f}" if len(known) == len(rows) else "- (a task lacks --s-per-step)"
    print(f"{'total':<15}{sum(r['runs'] for r in rows):>6}{'':>23}{total:>11}")
    return rows


def _s_per_step(items: list[str] | None) -> dict[str, float]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        try:
            out[key] = float(value)
        except ValueError:
            sep = ""
        if not sep or not key:
            raise ConfigError(
                f"--s-per-step {item!r} must look like det=0.26 or det/aux-enc=0.27 (seconds per "
                "training step, e.g. from `python -m icm_lib.bench paper-step`)"
            )
    return out


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m icm_lib.study", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--profile", default="cpu")
    parser.add_argument(
        "--study",
        choices=["rd", "ablation", "gan", "aux"],
        default="rd",
        help="rd: Iino et al.'s R-D study (BD-rate); ablation: Iino et al. section 4.2 (branch "
        "position); gan: Le et al. (PatchGAN finetuning); aux: the old name of rd",
    )
    parser.add_argument("--seeds", type=at_least(0), nargs="+", default=[0, 1, 2])
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
    parser.add_argument("--bf16", action="store_true", help=BF16_HELP)
    parser.add_argument("--no-fold-bn", action="store_true", help=NO_FOLD_HELP)
    parser.add_argument("--overrides", default="", help=OVERRIDES_HELP)
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
    parser.add_argument(
        "--plan",
        action="store_true",
        help="print the study's runs and projected GPU-hours (with --s-per-step) and exit",
    )
    parser.add_argument(
        "--s-per-step",
        nargs="+",
        metavar="TASK[/VARIANT]=S",
        help="with --plan: seconds per training step, e.g. det=0.26 seg=0.63",
    )
    add_arguments(parser)
    return parser


def main(
    argv: list[str] | None = None,
) -> dict | StudyFile | AblationFile | GanFile | LaunchReport:
    """``python -m icm_lib.study --profile cpu --seeds 0 1 2`` (see ``--help``)."""
    args = _parser().parse_args(argv)
    if args.study == "aux":  # its name until 2026-11: the R-D study, not the aux-* variants
        print("note: --study aux is now --study rd (Iino et al.'s R-D study)", file=sys.stderr)
        args.study = "rd"
    if args.report:
        # the README holds every profile's tables; printed, the one profile's
        text = report(args.results_dir, None if args.readme else args.profile)
        print(text)
        if args.readme:
            write_between_markers(Path(args.readme), text)
        return {"report": text}
    profile = get_profile(args.profile, **parse_overrides(args.overrides))
    if args.plan:
        rows = print_plan(
            args.study,
            profile,
            args.seeds,
            args.tasks,
            args.variants,
            not args.no_reference_curve,
            _s_per_step(args.s_per_step),
        )
        return {"plan": rows}
    launch = LaunchOptions.from_args(args)  # jobs: --device, else CUDA where the job runs
    device = get_device(args.device or None)
    profile = from_precision_flags(profile, args.bf16, args.no_fold_bn, device)
    common = (args.data_dir, args.results_dir, device, not args.no_progress)
    if args.study == "ablation":
        summary = run_ablation_study(profile, args.seeds, args.tasks, *common, launch)
    elif args.study == "gan":
        summary = run_gan_study(profile, args.seeds, *common, launch)
    else:
        summary = run_study(
            profile,
            args.seeds,
            args.tasks,
            args.variants,
            *common,
            not args.no_reference_curve,
            launch,
        )
    if not isinstance(summary, LaunchReport):
        for line in _summary_lines(args.study, summary):
            print(line)
    return summary


def _summary_lines(study: str, summary) -> list[str]:
    """What a finished study prints: its headline numbers beside the paper's."""
    if study == "ablation":
        return [
            f"{task}: "
            + ", ".join(f"{v} {t['variants'][v]['mean']:.4f}" for v in t["order"])
            + f" (lowest first; paper: {PAPERS.iino_ablation_lowest} lowest)"
            for task, t in summary.tasks.items()
        ]
    if study == "gan":
        return [
            f"{preset}: "
            + ", ".join(
                f"{k} {v['before']['mean']:.4g} → {v['after']['mean']:.4g}"
                for k, v in t.items()
                if "before" in v
            )
            for preset, t in summary.summary.items()
        ]
    return [
        f"{task} {name:9s} BD-rate {fmt_mean_ci(row, 1, ' %')}; on the operational fronts "
        f"{fmt_mean_ci(row.get('front'), 1, ' %')} "
        f"(paper aux-enc {PAPERS.iino_bd_rate[task]:+.1f} %)"
        for task, t in summary.tasks.items()
        for name, row in t["bd_rate"].items()
    ]


if __name__ == "__main__":
    from .cli import command_status

    raise SystemExit(command_status(main))
