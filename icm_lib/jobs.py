"""One run of a study as a job: what it computes (:class:`RunCall`), how it is identified
(:class:`LaunchJob`, :func:`plan_jobs`), what it costs (:func:`projected_hours`) and how a job
process runs it (:func:`run_job`, under ``torchrun`` over its GPUs where it has several).

A job computes its call through the very method the sequential study calls
(:func:`compute`: :meth:`~icm_lib.experiment.Experiment.point`, ``ablation_point``,
:func:`~icm_lib.gan.gan_point`), so its run key, its files and the record the study collects
are the sequential study's. Submitting, watching and collecting jobs is :mod:`icm_lib.launch`'s
job; this module is what runs on the node::

    python -m icm_lib.jobs job <spec.pkl>    # one process of a job's torchrun
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .errors import LaunchError
from .experiment import Experiment, run_config
from .files import atomic_write_bytes, atomic_write_json
from .gan import gan_point
from .profiles import Profile
from .runtime import Distributed, config_hash
from .tasks import get_task


# ---------------------------------------------------------------------- runs as calls
@dataclass(frozen=True)
class RunCall:
    """One run of a study's grid: the :class:`~icm_lib.experiment.Experiment` call that trains
    (load-or-compute) and evaluates it.

    Attributes:
        kind: ``point``: ``exp.point(**args)``; ``ablation``: ``exp.ablation_point(**args)``;
            ``gan``: ``gan_point(exp, **args)``.
        args: the call's keyword arguments, plain values (the run's grid coordinates).
        needs: runs that must be done before this one starts (a PatchGAN finetuning needs its
            baseline codec).
    """

    kind: str
    args: dict
    needs: tuple[RunCall, ...] = ()


def point_call(
    task,
    variant: str,
    lmbda: float,
    seed: int,
    eval_tasks: Sequence | None = None,
    roi: bool = False,
    steps: int | None = None,
    **extra,
) -> RunCall:
    """The :class:`RunCall` of ``exp.point(...)`` with these arguments (defaults filled in, so
    the same run asked for by two studies is one job)."""
    return RunCall(
        "point",
        {
            "task": get_task(task).name,
            "variant": variant,
            "lmbda": lmbda,
            "seed": seed,
            "eval_tasks": tuple(get_task(t).name for t in eval_tasks) if eval_tasks else None,
            "roi": roi,
            "steps": steps,
            **extra,
        },
    )


def compute(exp: Experiment, call: RunCall):
    """The record of ``call`` (a :class:`~icm_lib.results.RunRecord` or
    :class:`~icm_lib.results.GanRecord`), load-or-compute: what a job computes, and what the
    study collects once the job is done (then it only loads)."""
    if call.kind == "point":
        return exp.point(**call.args).run
    if call.kind == "ablation":
        return exp.ablation_point(**call.args).run
    if call.kind == "gan":
        return gan_point(exp, **call.args).run
    raise ValueError(f"unknown run kind {call.kind!r}; one of point, ablation, gan")


def _point_training(exp: Experiment, args: dict) -> dict:
    """The :meth:`~icm_lib.experiment.Experiment.icm_run` arguments :meth:`Experiment.point`
    trains with: the run's folder (its key), and what the other processes of a torchrun job
    train (rank 0 then loads and evaluates). Checked against the runs' own folders by the
    launcher's tests."""
    keys = ("task", "variant", "lmbda", "seed", "steps")
    every = exp.point_validation(args["variant"])
    return {**{k: args.get(k) for k in keys}, "validate_every": every}


@dataclass
class LaunchJob:
    """A run of a study as the launcher sees it.

    Attributes:
        name: unique and stable: the kind, the run key and a hash of the call.
        call: what the job computes.
        run_dir: the run's folder (its writer lock and ``codec.pt``); ``None`` where the key is
            known only once the needs are done (a finetuning keyed by its baseline's weights).
        needs: names of the jobs that must be done first.
        labels: the pseudo-labels its training reads (:func:`label_group`): jobs of one group
            share them through the cache, and the first to finish has computed them for all.
    """

    name: str
    call: RunCall
    run_dir: Path | None
    needs: tuple[str, ...] = ()
    labels: tuple | None = None


def label_group(call: RunCall) -> tuple | None:
    """The pseudo-labels a call's training computes or reads (:mod:`icm_lib.pseudo_labels`): its
    task's frozen recognizer on its seed's crops, the same for every λ and variant of a (task,
    seed) -- ``(task, seed)``; ``None`` for the MSE reference (pixels only) and a PatchGAN
    finetuning, which starts only once its seed's baseline is done (that run has labelled the
    crops they share: :func:`~icm_lib.gan.load_or_finetune` reads the same cache)."""
    a = call.args
    if call.kind == "ablation" or (call.kind == "point" and a["variant"] != "mse"):
        return (get_task(a["task"]).name, a["seed"])
    return None


def identity(exp: Experiment, call: RunCall) -> tuple[str, Path | None]:
    """A job's name and its run's folder (:class:`LaunchJob`), from the call alone."""
    digest = config_hash({"kind": call.kind, "args": call.args}, 6)
    if call.kind == "point":
        a = call.args
        run_dir = exp.point_run_dir(a["task"], a["variant"], a["lmbda"], a["seed"], a.get("steps"))
        return f"point-{run_dir.name}-{digest}", run_dir
    if call.kind == "ablation":
        a = call.args
        run_dir = exp.ablation_run_dir(a["task"], a["variant"], a["seed"], a.get("steps"))
        return f"ablation-{run_dir.name}-{digest}", run_dir
    if call.kind == "gan":
        needs = [identity(exp, n)[0] for n in call.needs]
        key = config_hash({"gan": asdict(exp.profile.gan), "args": call.args, "needs": needs})
        return f"gan-{call.args['preset']}-seed{call.args['seed']}-{key}", None
    raise ValueError(f"unknown run kind {call.kind!r}; one of point, ablation, gan")


def plan_jobs(exp: Experiment, calls: Sequence[RunCall]) -> list[LaunchJob]:
    """The jobs of ``calls``: their needs first, each run once."""
    jobs: dict[str, LaunchJob] = {}

    def add(call: RunCall) -> str:
        needs = tuple(add(n) for n in call.needs)
        name, run_dir = identity(exp, call)
        jobs.setdefault(name, LaunchJob(name, call, run_dir, needs, label_group(call)))
        return name

    for call in calls:
        add(call)
    return list(jobs.values())


def call_tasks(profile: Profile, call: RunCall) -> tuple[str, ...]:
    """The tasks whose frozen recognizers ``call`` uses: a point's task (not for the MSE
    reference, which only its scoring tasks see) and its scoring tasks; an ablation run's task;
    a finetuning's :func:`~icm_lib.gan.gan_base` task."""
    a = call.args
    if call.kind == "gan":
        return (get_task(profile.gan.task).name,)
    if call.kind == "ablation":
        return (get_task(a["task"]).name,)
    used = [] if a["variant"] == "mse" else [a["task"]]
    used += list(a.get("eval_tasks") or (a["task"],))
    return tuple(dict.fromkeys(get_task(t).name for t in used))


# ---------------------------------------------------------------------- projected compute
def call_steps(profile: Profile, call: RunCall) -> tuple[str, str, int]:
    """``(task, variant, training steps)`` of a call under ``profile`` (the finetuning of a
    ``gan`` call as variant ``gan``)."""
    a = call.args
    if call.kind == "gan":
        return profile.gan.task, "gan", profile.gan.steps
    if call.kind == "ablation":
        ab = profile.ablation
        cfg = run_config(profile, a["task"], a["variant"], ab.lmbda(a["task"]), a["seed"])
        return a["task"], a["variant"], a.get("steps") or ab.steps or cfg.steps
    cfg = run_config(profile, a["task"], a["variant"], a["lmbda"], a["seed"], a.get("steps"))
    return a["task"], a["variant"], cfg.steps


def projected_hours(
    profile: Profile, calls: Sequence[RunCall], s_per_step: dict[str, float]
) -> list[dict]:
    """Runs, steps and projected device-hours of a study, per task and variant: the calls and
    their needs (each run once), times the seconds per step of ``s_per_step`` (keys
    ``task/variant`` or ``task``; a run without a figure gets ``hours: None``). Training only:
    evaluation, data loading between runs and queueing are not in it. A run of N GPUs costs N
    times its wall time: with linear scaling, the GPU-hours of one GPU."""
    seen: list[RunCall] = []

    def add(call: RunCall) -> None:
        for n in call.needs:
            add(n)
        if call not in seen:
            seen.append(call)

    for call in calls:
        add(call)
    rows: dict[tuple[str, str], dict] = {}
    for call in seen:
        task, variant, steps = call_steps(profile, call)
        s = s_per_step.get(f"{task}/{variant}", s_per_step.get(task))
        row = rows.setdefault(
            (task, variant),
            {"task": task, "variant": variant, "runs": 0, "steps": 0, "s_per_step": s, "hours": 0},
        )
        row["runs"] += 1
        row["steps"] += steps
        row["hours"] = None if s is None else row["steps"] * s / 3600
    return list(rows.values())


# ---------------------------------------------------------------------- the job
@dataclass(frozen=True)
class JobSpec:
    """Everything a job needs, pickled with it: the call, the profile, the folders.

    Attributes:
        processes: torchrun processes (one per GPU) of the job; 1: the job's own process.
        threads: torch's CPU threads per process (``None``: torch's default).
        device: ``cuda`` / ``cpu`` / ``""`` (CUDA when present).
    """

    name: str
    call: RunCall
    profile: Profile
    data_dir: str
    launch_dir: str
    device: str = ""
    processes: int = 1
    threads: int | None = None

    @property
    def marker(self) -> Path:
        return done_marker(self.launch_dir, self.name)


def done_marker(launch_dir: str | Path, name: str) -> Path:
    """Where the job ``name`` writes that its run is done."""
    return Path(launch_dir) / "done" / f"{name}.json"


def run_job(spec: JobSpec) -> dict:
    """Compute one run (load-or-compute on its run key: a restarted job resumes the run from its
    last checkpoint) and write the done marker. With ``spec.processes > 1`` the job is
    ``torchrun`` over that many processes: all train, rank 0 evaluates and writes the marker.

    Returns:
        The marker's content: ``name``, ``run_dir``, ``seconds``, ``host``, ``finished``.
    """
    if spec.processes > 1 and "LOCAL_RANK" not in os.environ:
        return _torchrun(spec)
    if spec.threads:
        torch.set_num_threads(spec.threads)
    t0 = time.perf_counter()
    dist = Distributed(torch.device(spec.device) if spec.device else None)
    try:
        print(
            f"[icm_lib] job {spec.name} on {socket.gethostname()} (pid {os.getpid()}, "
            f"{dist.device}, process {dist.rank + 1} of {dist.world_size})",
            flush=True,
        )
        tasks = call_tasks(spec.profile, spec.call)  # only the recognizers this run uses
        exp = Experiment.prepare(spec.profile, spec.data_dir, dist.device, False, dist, tasks=tasks)
        if not dist.is_main:  # the other processes train with rank 0, which then evaluates
            if spec.call.kind == "point":
                exp.icm_run(**_point_training(exp, spec.call.args))
            else:
                compute(exp, spec.call)
            return {}
        record = compute(exp, spec.call)
        done = {
            "name": spec.name,
            "run_dir": record.run_dir,
            "seconds": round(time.perf_counter() - t0, 3),
            "host": socket.gethostname(),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        atomic_write_json(spec.marker, done)
        print(f"[icm_lib] job {spec.name} done in {done['seconds']:.0f} s", flush=True)
        return done
    finally:
        dist.close()


def torchrun_command(spec_path: str | Path, processes: int) -> list[str]:
    """The command of a job of ``processes`` processes: ``torchrun --standalone`` on this node
    running ``python -m icm_lib.jobs job <spec>``."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={processes}",
        "-m",
        "icm_lib.jobs",
        "job",
        str(spec_path),
    ]


def _torchrun(spec: JobSpec) -> dict:
    path = Path(spec.launch_dir) / "specs" / f"{spec.name}.pkl"
    atomic_write_bytes(path, pickle.dumps(spec))
    command = torchrun_command(path, spec.processes)
    print(f"[icm_lib] {' '.join(command)}", flush=True)
    code = subprocess.run(command).returncode
    if code != 0 or not spec.marker.is_file():
        raise LaunchError(
            f"torchrun of job {spec.name} exited with status {code} without finishing its run; "
            "the processes' errors are above in this log"
        )
    return json.loads(spec.marker.read_text())


class StudyJob:
    """The callable a launcher submits for a run (submitit pickles it with its
    :class:`JobSpec`). At the time limit or on preemption submitit calls :meth:`checkpoint` and
    requeues the job with the same spec: the run resumes from its last checkpoint."""

    def __call__(self, spec: JobSpec) -> dict:
        return run_job(spec)

    def checkpoint(self, spec: JobSpec):
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, spec)


def main(argv: list[str] | None = None) -> int:
    """``python -m icm_lib.jobs job <spec.pkl>``: one process of a job's torchrun (the
    launcher writes the spec; see :func:`run_job`)."""
    parser = argparse.ArgumentParser(
        prog="python -m icm_lib.jobs", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    job = sub.add_parser("job", help="run one job from its pickled JobSpec (under torchrun)")
    job.add_argument("spec")
    args = parser.parse_args(argv)
    path = Path(args.spec)
    if not path.is_file():
        raise LaunchError(f"no job spec at {path}: the launcher writes it before torchrun starts")
    spec = pickle.loads(path.read_bytes())  # the launcher's own file, in its launch folder
    run_job(spec)
    return 0


if __name__ == "__main__":
    from .cli import command_status

    raise SystemExit(command_status(main))
