"""A study's runs as jobs: a local process pool or SLURM (through submitit), the study collecting.

A study (:mod:`icm_lib.study`) is a grid of independent runs. ``--launcher local`` (the default)
walks it in the study's own process, one run after another. ``--launcher pool`` and ``--launcher
slurm`` make each run a job::

    python -m icm_lib.study --profile cpu --launcher pool --workers 2
    python -m icm_lib.study --profile paper --launcher slurm --partition gpu \\
        --gpus-per-run 4 --time 2-00:00:00 --cpus-per-run 32 --mem 256G

      the study (this process)                     a job (one per run)
      ─────────────────────────                    ─────────────────────────────────────────
      Experiment.prepare: its tasks' caches, keys
      each run: done? running? else submit ──────► Experiment.prepare (loads what it uses)
        (at most --workers at once: pool)          compute(exp, call): Experiment.point /
      status line: done / running / failed           ablation_point / gan_point, load-or-
        (a failed run with its log's path)           compute on the run key, like the
      collect every finished run (load) ◄─────────   sequential study (torchrun over its
        → the same results file, in grid order       GPUs when --gpus-per-run > 1)
                                                   → <launch dir>/done/<job>.json

A job computes one :class:`RunCall` (the grid coordinates of a run) through the very method the
sequential study calls, so its run key, its files and the record the study collects are the
sequential study's. A requeued, preempted or resubmitted job resumes its run from the run's last
checkpoint (:class:`~icm_lib.runtime.RunFiles`).

No double work: one process at a time trains a run key (the run's writer lock,
:class:`~icm_lib.locks.RunLock`); and a study submitted again submits only the runs that are
neither done (a done marker, and the run's ``codec.pt``) nor running (a job of the study that the
launcher reports queued or running, or a live holder of the run's writer lock).

The launch folder (``<data_dir>/launch/<profile>``, ``--launch-dir``; on a cluster a file system
every node shares, like the data folder)::

    jobs.json       the latest job of every run: launcher, job id, log paths, attempts
    done/<job>.json written by a job when its run is done (the run folder, seconds, host)
    logs/           submitit's job files: the pickled call, the sbatch script (SLURM), logs
    submit.lock     one study process at a time submits (RunLock)

Why submitit, not Ray: submitit makes a Python call an ordinary ``sbatch`` job (one job per
run, the cluster's own queue, priorities, accounts and preemption; requeued at the time limit or on
preemption through :meth:`StudyJob.checkpoint`; a log per job), needs nothing running on the
cluster besides SLURM, and its ``LocalExecutor`` runs the same job files as local processes (the
pool, and the tests). Ray would need a Ray cluster started inside an allocation and schedule on
top of SLURM; for a grid of independent multi-hour runs SLURM's own queue is the scheduler.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import LaunchError
from .experiment import Experiment
from .files import atomic_write_json, read_json
from .jobs import JobSpec, LaunchJob, RunCall, StudyJob, compute, done_marker, identity, plan_jobs
from .locks import RunLock, pid_alive, process_start
from .profiles import Profile
from .runtime import RunFiles

LAUNCHERS = ("local", "pool", "slurm")
#: ``squeue`` states of a job waiting to start (any other state it lists: running)
SLURM_QUEUED = frozenset({"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "CONFIGURING"})


# ---------------------------------------------------------------------- options
def parse_time(text: str) -> int:
    """Minutes of a SLURM time limit: ``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``,
    ``D-H:M:S`` (seconds round up).

    Raises:
        LaunchError: not one of these forms.
    """
    m = re.fullmatch(r"\s*(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?\s*", str(text))
    if m is None:
        raise LaunchError(
            f"--time {text!r} is not a SLURM time limit: give minutes, H:MM:SS or D-HH:MM:SS "
            "(e.g. --time 48:00:00)"
        )
    days, parts = m[1], [int(p) for p in m.groups()[1:] if p is not None]
    if days is not None:
        h, mi, s = (parts + [0, 0])[:3]
        seconds = ((int(days) * 24 + h) * 60 + mi) * 60 + s
    elif len(parts) == 1:
        seconds = parts[0] * 60
    elif len(parts) == 2:
        seconds = parts[0] * 60 + parts[1]
    else:
        seconds = (parts[0] * 60 + parts[1]) * 60 + parts[2]
    minutes = math.ceil(seconds / 60)
    if minutes <= 0:
        raise LaunchError(f"--time {text!r} is no time at all: give the wall time of one run")
    return minutes


@dataclass
class LaunchOptions:
    """How a study's runs are run (the ``--launcher`` options of ``python -m icm_lib.study``).

    Attributes:
        launcher: ``local`` (in the study's process, one run after another), ``pool`` (jobs as
            local processes, ``workers`` at once) or ``slurm`` (a SLURM job per run).
        workers: jobs at once: pool (default: the GPUs // ``gpus_per_run``, else the cores);
            slurm: at most this many queued or running (default: all).
        gpus_per_run: GPUs of one run's job, ``torchrun`` over them when > 1 (on the CPU:
            processes). A PatchGAN finetuning runs in one process.
        cpus_per_run: slurm: ``--cpus-per-task``; both: torch threads per process.
        partition, time, mem, account, qos: slurm: ``sbatch`` options (``time``: the wall time
            of one run's job; a run that outlives it is requeued and resumes).
        slurm_args: further ``sbatch`` options (``constraint=h100``).
        setup: slurm: shell lines run before the job (``module load cuda``, ``source .venv/...``).
        launch_dir: the launch folder (default ``<data_dir>/launch/<profile>``).
        wait: wait for the jobs and collect them; else submit, collect what is done, return.
        poll: seconds between looks at the jobs (default: 1 pool, 60 slurm).
        device: the jobs' device (``""``: CUDA when present).
        status_only: print each run's state and submit nothing.
    """

    launcher: str = "local"
    workers: int | None = None
    gpus_per_run: int = 1
    cpus_per_run: int | None = None
    partition: str | None = None
    time: str | None = None
    mem: str | None = None
    account: str | None = None
    qos: str | None = None
    slurm_args: dict[str, str] = field(default_factory=dict)
    setup: list[str] = field(default_factory=list)
    launch_dir: str | None = None
    wait: bool = True
    poll: float | None = None
    device: str = ""
    status_only: bool = False

    def check(self) -> LaunchOptions:
        """Raise :class:`LaunchError` for options that do not fit together."""
        if self.launcher not in LAUNCHERS:
            raise LaunchError(f"--launcher must be one of {LAUNCHERS}, got {self.launcher!r}")
        slurm_only = {
            "--partition": self.partition,
            "--time": self.time,
            "--mem": self.mem,
            "--account": self.account,
            "--qos": self.qos,
            "--slurm-arg": self.slurm_args or None,
            "--setup": self.setup or None,
        }
        given = [k for k, v in slurm_only.items() if v is not None]
        if given and self.launcher != "slurm":
            raise LaunchError(
                f"{', '.join(given)} {'is an option' if len(given) == 1 else 'are options'} of "
                f"--launcher slurm, not of --launcher {self.launcher}: add --launcher slurm"
            )
        if self.launcher == "local" and (self.workers is not None or not self.wait):
            raise LaunchError(
                "--workers and --no-wait are options of --launcher pool or slurm: --launcher "
                "local runs the study in this process"
            )
        if self.gpus_per_run < 1:
            raise LaunchError(f"--gpus-per-run must be at least 1, got {self.gpus_per_run}")
        if self.workers is not None and self.workers < 1:
            raise LaunchError(f"--workers must be at least 1, got {self.workers}")
        if self.launcher == "slurm" and not self.status_only:
            if self.time is None:
                raise LaunchError(
                    "--launcher slurm needs --time, the wall time of one run's job (e.g. "
                    "--time 48:00:00); a run that outlives it is requeued and resumes from its "
                    "checkpoint"
                )
            parse_time(self.time)
        return self

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> LaunchOptions:
        extra = {}
        for item in args.slurm_arg or []:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise LaunchError(f"--slurm-arg {item!r} must look like KEY=VALUE")
            extra[key.removeprefix("--")] = value
        return cls(
            launcher=args.launcher,
            workers=args.workers,
            gpus_per_run=args.gpus_per_run,
            cpus_per_run=args.cpus_per_run,
            partition=args.partition,
            time=args.time,
            mem=args.mem,
            account=args.account,
            qos=args.qos,
            slurm_args=extra,
            setup=list(args.setup or []),
            launch_dir=args.launch_dir,
            wait=not args.no_wait,
            poll=args.poll,
            device=args.device or "",
            status_only=args.status,
        ).check()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The launcher's options on a study's command line (:class:`LaunchOptions`)."""
    g = parser.add_argument_group(
        "launcher",
        "run each run of the study as a job (icm_lib.launch); README 'Studies on a cluster'",
    )
    g.add_argument(
        "--launcher",
        choices=LAUNCHERS,
        default="local",
        help="local: one run after another in this process (default); pool: jobs as local "
        "processes; slurm: a SLURM job per run (submitit)",
    )
    g.add_argument(
        "--workers",
        type=int,
        default=None,
        help="jobs at once (pool: default one per GPU, else per core; slurm: default all)",
    )
    g.add_argument(
        "--gpus-per-run", type=int, default=1, help="GPUs per job, torchrun over them when > 1"
    )
    g.add_argument("--cpus-per-run", type=int, default=None, help="CPU cores per job")
    g.add_argument("--partition", default=None, help="slurm: the partition")
    g.add_argument("--time", default=None, help="slurm: wall time of one job, e.g. 48:00:00")
    g.add_argument("--mem", default=None, help="slurm: memory per job, e.g. 128G")
    g.add_argument("--account", default=None, help="slurm: the account to charge")
    g.add_argument("--qos", default=None, help="slurm: the quality of service")
    g.add_argument(
        "--slurm-arg",
        action="append",
        metavar="KEY=VALUE",
        help="slurm: any other sbatch option (repeatable), e.g. constraint=h100",
    )
    g.add_argument(
        "--setup",
        action="append",
        metavar="LINE",
        help="slurm: a shell line run before each job (repeatable), e.g. 'module load cuda'",
    )
    g.add_argument(
        "--launch-dir", default=None, help="job files (default: <data-dir>/launch/<profile>)"
    )
    g.add_argument(
        "--no-wait",
        action="store_true",
        help="submit, collect what is done, and return (run the command again to collect)",
    )
    g.add_argument("--status", action="store_true", help="print each run's state, submit nothing")
    g.add_argument("--poll", type=float, default=None, help="seconds between looks at the jobs")


# ---------------------------------------------------------------------- job records and states
@dataclass
class JobRecord:
    """The latest job of a run (``jobs.json``): which launcher, its id and logs, attempts."""

    name: str
    launcher: str
    job_id: str
    submitted: float
    stdout: str
    stderr: str
    host: str = ""
    pid_start: str | None = None  # pool: the job's controller process start (a reused pid)
    gpus: list[int] = field(default_factory=list)  # pool: the GPUs it was given
    attempts: int = 1

    @classmethod
    def of(cls, spec: JobSpec, launcher: str, job, **extra) -> JobRecord:
        """The record of ``job``, a submitit job just submitted for ``spec``."""
        return cls(
            name=spec.name,
            launcher=launcher,
            job_id=str(job.job_id),
            submitted=time.time(),
            stdout=str(job.paths.stdout),
            stderr=str(job.paths.stderr),
            host=socket.gethostname(),
            **extra,
        )


@dataclass
class JobStatus:
    """A run's state: ``done``, ``running``, ``queued``, ``failed``, ``todo`` (to submit),
    ``waiting`` (for a run it needs) or ``blocked`` (a run it needs failed)."""

    name: str
    state: str
    job_id: str | None = None
    log: str | None = None
    detail: str = ""


STATES = ("done", "running", "queued", "failed", "todo", "waiting", "blocked")


@dataclass
class LaunchReport:
    """Where a launched study stands: every run's :class:`JobStatus`, what this invocation
    submitted, the most jobs seen running at once and the wall time."""

    study: str
    launcher: str
    statuses: list[JobStatus]
    submitted: list[str] = field(default_factory=list)
    peak_running: int = 0
    seconds: float = 0.0

    @property
    def counts(self) -> Counter:
        return Counter(s.state for s in self.statuses)

    @property
    def complete(self) -> bool:
        return all(s.state == "done" for s in self.statuses)

    @property
    def failed(self) -> list[JobStatus]:
        return [s for s in self.statuses if s.state in ("failed", "blocked")]

    def line(self) -> str:
        """``aux-smoke (pool): 3/8 done, 2 running, 1 queued, 1 failed, 1 to submit``."""
        c = self.counts
        words = {"todo": "to submit", "waiting": "waiting for a run", "blocked": "blocked"}
        parts = [f"{c['done']}/{len(self.statuses)} done"]
        parts += [f"{c[s]} {words.get(s, s)}" for s in STATES[1:] if c[s] or s in STATES[1:4]]
        return f"{self.study} ({self.launcher}): " + ", ".join(parts)

    def table(self) -> str:
        """One line per run: state, job id, detail, log."""
        rows = []
        for s in self.statuses:
            row = f"  {s.state:8s} {s.name}"
            if s.job_id:
                row += f"  (job {s.job_id})"
            if s.detail:
                row += f"  {s.detail}"
            if s.log and s.state in ("failed", "running", "queued"):
                row += f"\n           log: {s.log}"
            rows.append(row)
        return "\n".join(rows)


def _failure(record: JobRecord) -> str:
    """What the end of a failed job's log says."""
    try:
        lines = Path(record.stderr).read_text(errors="replace").splitlines()
    except OSError:
        return "its job ended without a log"
    for line in reversed(lines):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b", line.strip()):
            return line.strip()[:400]
    return (
        "its job ended without finishing the run and without an error in its log: the process "
        "was killed (a signal, out of memory, the wall time)"
    )


# ---------------------------------------------------------------------- launchers
def _submitit():
    try:
        import submitit
    except ImportError:
        raise LaunchError(
            "--launcher pool and --launcher slurm run jobs through submitit, which is not "
            "installed: `pip install submitit` (or `pip install -e .` in this repository), or "
            "run the study with --launcher local"
        ) from None
    return submitit


class _Backend:
    """What a launcher does with jobs: submit one, and tell each job's state."""

    name = ""
    capacity: int | None = None  # jobs at once (None: the scheduler queues them)
    threads: int | None = None

    def submit(self, spec: JobSpec) -> JobRecord:
        raise NotImplementedError

    def states(self, records: list[JobRecord]) -> dict[str, str]:
        """``{job name: queued | running | ended}`` of each record (of any launcher)."""
        out = {}
        slurm = [r for r in records if r.launcher == "slurm"]
        if slurm:
            out.update(_slurm_states(slurm))
        for r in records:
            if r.launcher == "pool":
                out[r.name] = self._pool_state(r)
        return out

    def _pool_state(self, record: JobRecord) -> str:
        if record.host != socket.gethostname():
            return "ended"  # another machine's pool: its runs' writer locks tell
        alive = pid_alive(int(record.job_id), record.pid_start)
        return "running" if alive else "ended"

    def release(self, name: str) -> None:
        """The job of ``name`` is over (frees its place in a pool)."""


class _PoolBackend(_Backend):
    """Jobs as processes of this machine (submitit's ``LocalExecutor``): at most ``workers`` at
    once, each with its own GPUs (``CUDA_VISIBLE_DEVICES``) where there are GPUs."""

    name = "pool"

    def __init__(self, folder: Path, options: LaunchOptions):
        submitit = _submitit()
        n = options.gpus_per_run
        gpus = 0 if options.device.startswith("cpu") else torch.cuda.device_count()
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").replace(" ", "")
        if gpus and visible and not re.fullmatch(r"\d+(,\d+)*", visible):
            raise LaunchError(
                f"--launcher pool gives each job GPUs by index, but CUDA_VISIBLE_DEVICES is "
                f"{visible!r}: set it to indices (e.g. 0,1,2,3) or unset it"
            )
        self.physical = [int(i) for i in visible.split(",")] if gpus and visible else None
        if gpus and n > gpus:
            raise LaunchError(
                f"--gpus-per-run {n} but this machine has {gpus} GPU(s): ask for at most {gpus}"
            )
        slots = [tuple(range(i, i + n)) for i in range(0, gpus - n + 1, n)] if gpus else []
        workers = options.workers or (len(slots) if slots else os.cpu_count() or 1)
        if slots and workers > len(slots):
            raise LaunchError(
                f"--workers {workers} with --gpus-per-run {n} needs {workers * n} GPUs; this "
                f"machine has {gpus}: use --workers {len(slots)} or fewer"
            )
        self.slots: list[tuple[int, ...]] = slots[:workers]
        self.capacity = workers
        cores = os.cpu_count() or 1
        self.threads = options.cpus_per_run or max(1, cores // (workers * n))
        self.in_use: dict[str, tuple[int, ...]] = {}
        self.handles: dict[str, Any] = {}
        minutes = parse_time(options.time) if options.time else 7 * 24 * 60
        self.executor = submitit.LocalExecutor(folder=str(folder))
        self.executor.update_parameters(timeout_min=minutes, gpus_per_node=0)

    def submit(self, spec: JobSpec) -> JobRecord:
        slot: tuple[int, ...] = ()
        if self.slots:
            slot = next(s for s in self.slots if s not in self.in_use.values())
            devices = tuple(self.physical[i] for i in slot) if self.physical else slot
            self.executor.update_parameters(visible_gpus=devices, gpus_per_node=len(slot))
            self.in_use[spec.name] = slot
        job = self.executor.submit(StudyJob(), spec)
        self.handles[spec.name] = job
        return JobRecord.of(
            spec, self.name, job, pid_start=process_start(int(job.job_id)), gpus=list(slot)
        )

    def _pool_state(self, record: JobRecord) -> str:
        job = self.handles.get(record.name)
        if job is not None and str(job.job_id) == record.job_id:
            return "running" if job.state == "RUNNING" else "ended"
        state = super()._pool_state(record)
        if state == "running" and record.gpus:  # an earlier study's job: its GPUs are taken
            self.in_use[record.name] = tuple(record.gpus)
        return state

    def release(self, name: str) -> None:
        self.in_use.pop(name, None)
        self.handles.pop(name, None)


def submission_order(
    jobs: Sequence[LaunchJob], ready: Sequence[LaunchJob], states: dict[str, JobStatus]
) -> list[LaunchJob]:
    """The ``ready`` jobs in the order a launcher with few places (a pool) starts them: the
    study's order, except that a job whose pseudo-labels (:attr:`LaunchJob.labels`) are being
    computed by a job still running -- none of its group done yet -- waits behind the others.
    Two runs of one seed started together would compute the same labels side by side; started
    with another group's run, each computes its own, and the group's later runs read them."""
    done = {j.labels for j in jobs if states[j.name].state == "done"}
    started = {j.labels for j in jobs if states[j.name].state in ("running", "queued")}
    first, later = [], []
    for job in ready:
        group = job.labels
        if group is None or group in done or group not in started:
            first.append(job)
            started.add(group)
        else:
            later.append(job)
    return first + later


def _slurm_states(records: list[JobRecord]) -> dict[str, str]:
    """States of SLURM jobs from one ``squeue`` of this user's jobs: a job it lists is queued
    or running (a requeued job keeps its id), one it does not list has ended. Where ``squeue``
    fails, every job counts as queued this time (never resubmitted on a hiccup)."""
    if shutil.which("squeue") is None:
        return {r.name: "ended" for r in records}  # no SLURM here: the writer locks tell
    user = os.environ.get("USER") or getpass.getuser()
    command = ["squeue", "--noheader", "--user", user, "--format", "%i|%T"]
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        _say(f"`{' '.join(command)}` failed ({exc}); the jobs count as queued this time")
        return {r.name: "queued" for r in records}
    listed = {}
    for line in out.stdout.splitlines():
        job_id, _, state = line.strip().partition("|")
        listed[job_id] = state.strip().upper()
    states = {}
    for r in records:
        state = listed.get(r.job_id)
        if state is None:
            states[r.name] = "ended"
        else:
            states[r.name] = "queued" if state in SLURM_QUEUED else "running"
    return states


class _SlurmBackend(_Backend):
    """A SLURM job per run (submitit's ``SlurmExecutor``): ``sbatch`` with the options given, one
    task with ``gpus_per_run`` GPUs, ``--signal`` before the time limit (requeue)."""

    name = "slurm"

    def __init__(self, folder: Path, options: LaunchOptions):
        missing = [t for t in ("sbatch", "squeue", "srun") if shutil.which(t) is None]
        if missing:
            raise LaunchError(
                f"--launcher slurm needs SLURM's {', '.join(missing)} on PATH, and "
                f"{'it is' if len(missing) == 1 else 'they are'} not there: run the study on the "
                "cluster's login node (after its `module load slurm`, if it has one), or use "
                "--launcher pool to run the jobs on this machine"
            )
        submitit = _submitit()
        self.capacity = options.workers
        self.cpus, self.gpus = options.cpus_per_run, options.gpus_per_run
        self.threads = max(1, self.cpus // self.gpus) if self.cpus else None
        params = {
            "time": parse_time(options.time),
            "partition": options.partition,
            "gpus_per_node": options.gpus_per_run,
            "ntasks_per_node": 1,
            "cpus_per_task": options.cpus_per_run,
            "mem": options.mem,
            "account": options.account,
            "qos": options.qos,
            "setup": options.setup or None,
            "additional_parameters": options.slurm_args or None,
        }
        # a run longer than --time is requeued up to 30 times (preemptions do not count)
        self.executor = submitit.SlurmExecutor(folder=str(folder / "%j"), max_num_timeout=30)
        try:
            self.executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
        except ValueError as exc:
            raise LaunchError(f"bad SLURM options: {exc}") from None

    def submit(self, spec: JobSpec) -> JobRecord:
        per_job = {"job_name": f"icm-{spec.name}"[:64], "gpus_per_node": spec.processes}
        if self.cpus:  # a one-process job (a finetuning) asks for its share of the cores
            per_job["cpus_per_task"] = max(1, self.cpus * spec.processes // self.gpus)
        self.executor.update_parameters(**per_job)
        try:
            job = self.executor.submit(StudyJob(), spec)
        except Exception as exc:  # submitit raises several types for a refused sbatch
            raise LaunchError(
                f"sbatch refused the job of run {spec.name}: {str(exc).strip()[:800]}\nCheck "
                "--partition, --time, --gpus-per-run, --mem, --account, --qos and --slurm-arg "
                "against this cluster's limits (`sinfo`, `sacctmgr show qos`)"
            ) from None
        return JobRecord.of(spec, self.name, job)


class _StatusBackend(_Backend):
    """Submits nothing: states only (``--status``)."""

    name = "status"

    def submit(self, spec: JobSpec) -> JobRecord:
        raise AssertionError("the status launcher submits nothing")


# ---------------------------------------------------------------------- the launcher
class Launcher:
    """Submits a study's runs as jobs, follows them and hands the finished ones to the study.

    Args:
        options: :class:`LaunchOptions` (``pool`` or ``slurm``).
        profile: the study's profile (pickled into every job).
        data_dir: the data folder (the jobs' caches; absolute in the jobs).
        study: the study's name in messages (``aux-smoke``).
    """

    def __init__(self, options: LaunchOptions, profile: Profile, data_dir: str | Path, study: str):
        options.check()
        if options.launcher == "local" and not options.status_only:
            raise LaunchError("--launcher local runs the study in its own process, not as jobs")
        self.options, self.profile, self.study = options, profile, study
        self.data_dir = Path(data_dir).resolve()
        self.dir = Path(options.launch_dir or self.data_dir / "launch" / profile.name).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        if options.status_only:
            self.backend: _Backend = _StatusBackend()
        elif options.launcher == "pool":
            self.backend = _PoolBackend(self.dir / "logs", options)
        else:
            self.backend = _SlurmBackend(self.dir / "logs", options)
        self.poll = options.poll or (1.0 if options.launcher == "pool" else 60.0)

    # -- the registry of jobs
    @property
    def registry_path(self) -> Path:
        return self.dir / "jobs.json"

    def read_registry(self) -> dict[str, JobRecord]:
        if not self.registry_path.is_file():
            return {}
        data = read_json(
            self.registry_path,
            what="the launcher's job registry",
            fix="delete it (runs that are still training are then known by their writer locks)",
        )
        return {name: JobRecord(**d) for name, d in data.items()}

    def _write_registry(self, registry: dict[str, JobRecord]) -> None:
        atomic_write_json(self.registry_path, {n: asdict(r) for n, r in registry.items()})

    @contextlib.contextmanager
    def _submitting(self):
        with RunLock(self.dir / "submit.lock", timeout=600, what=f"job submission in {self.dir}"):
            yield

    # -- states
    def done(self, job: LaunchJob) -> bool:
        """The job's marker is there and the run's ``codec.pt`` too (a cleared cache is not
        done)."""
        path = done_marker(self.dir, job.name)
        if not path.is_file():
            return False
        marker = read_json(
            path,
            what="the done marker of a launched run",
            fix="delete it (the launcher then runs a job that loads or computes the run)",
        )
        run_dir = marker.get("run_dir")
        return run_dir is None or (Path(run_dir) / RunFiles.FINAL).is_file()

    def statuses(
        self,
        jobs: Sequence[LaunchJob],
        registry: dict[str, JobRecord],
        failed_here: set[str] = frozenset(),
    ) -> dict[str, JobStatus]:
        """Each job's :class:`JobStatus` (the scheduler is asked before the markers are read:
        a job writes its marker before it ends)."""
        live = self.backend.states([registry[j.name] for j in jobs if j.name in registry])
        out: dict[str, JobStatus] = {}
        for job in jobs:
            record = registry.get(job.name)
            job_id, log = (record.job_id, record.stderr) if record else (None, None)
            state = live.get(job.name)
            if self.done(job):
                out[job.name] = JobStatus(job.name, "done", job_id)
                continue
            if state in ("queued", "running"):
                out[job.name] = JobStatus(job.name, state, job_id, log)
                continue
            holder = RunFiles(job.run_dir, 0, 1, 1).running if job.run_dir else None
            if holder is not None:
                out[job.name] = JobStatus(
                    job.name,
                    "running",
                    detail=f"its run is being trained by {RunLock.describe(holder)}",
                )
                continue
            if record is not None:
                out[job.name] = JobStatus(job.name, "failed", job_id, log, _failure(record))
                continue
            out[job.name] = JobStatus(job.name, "todo")
        for job in jobs:  # needs: after every job's own state is known
            s = out[job.name]
            if s.state not in ("todo", "failed") or not job.needs:
                continue
            needs = [out[n] for n in job.needs]
            if any(n.state in ("failed", "blocked") and n.name in failed_here for n in needs):
                out[job.name] = JobStatus(job.name, "blocked", detail="a run it needs failed")
            elif any(n.state != "done" for n in needs):
                out[job.name] = JobStatus(job.name, "waiting", detail="for the run it needs")
        return out

    def _spec(self, job: LaunchJob) -> JobSpec:
        return JobSpec(
            name=job.name,
            call=job.call,
            profile=self.profile,
            data_dir=str(self.data_dir),
            launch_dir=str(self.dir),
            device=self.options.device,
            processes=1 if job.call.kind == "gan" else self.options.gpus_per_run,
            threads=self.backend.threads,
        )

    # -- the loop
    def run(
        self, jobs: Sequence[LaunchJob], collect: Callable[[set[str]], Any] | None = None
    ) -> LaunchReport:
        """Submit what is neither done nor running (needs first; at most ``workers`` at once in a
        pool), print a status line whenever it changes and each failure with its log, call
        ``collect(done names)`` whenever more runs are done, until every job is over (or once,
        without ``wait``).

        Raises:
            LaunchError: runs failed in this invocation (after collecting the others): each
                with its job id, the end of its log and the log's path.
        """
        t0 = time.monotonic()
        report = LaunchReport(self.study, self._label(), [])
        failed_here: set[str] = set()
        told: set[str] = set()
        collected: set[str] | None = None
        last = ""
        try:
            while True:
                with self._submitting():
                    registry = self.read_registry()
                    states = self.statuses(jobs, registry, failed_here)
                    for name, s in states.items():
                        if s.state != "running" and s.state != "queued":
                            self.backend.release(name)
                        if s.state == "failed" and name in report.submitted:
                            failed_here.add(name)
                    if not self.options.status_only:
                        self._submit_ready(jobs, states, registry, failed_here, report)
                report.statuses = [states[j.name] for j in jobs]
                report.seconds = time.monotonic() - t0
                c = report.counts
                report.peak_running = max(report.peak_running, c["running"])
                for s in report.statuses:
                    if s.state == "failed" and s.name in failed_here and s.name not in told:
                        told.add(s.name)
                        _say(f"run {s.name} failed (job {s.job_id}): {s.detail}\n  log: {s.log}")
                if report.line() != last:
                    last = report.line()
                    _say(f"{last}  [{_clock(report.seconds)}]")
                done = {s.name for s in report.statuses if s.state == "done"}
                if collect is not None and done != collected:
                    collect(done)
                    collected = done
                if not self.options.wait or self.options.status_only:
                    break
                if not (c["running"] or c["queued"] or c["todo"] or c["waiting"]):
                    break
                time.sleep(self.poll)
        except KeyboardInterrupt:
            _say(
                "stopped waiting; jobs already submitted go on (pool jobs stop with this "
                "terminal's Ctrl-C). Run the same command again: it submits only the runs "
                "neither done nor running and collects the finished ones"
            )
            raise
        if not self.options.wait and not report.complete:
            _say(
                f"not waiting (--no-wait): {len(report.statuses) - report.counts['done']} runs "
                "are not done yet; run the same command again to follow them and collect the "
                "finished ones (it submits only what is neither done nor running)"
            )
        if failed_here or report.counts["blocked"]:
            error = LaunchError(self._failures(report))
            error.report = report
            raise error
        return report

    def _submit_ready(self, jobs, states, registry, failed_here, report) -> None:
        in_flight = sum(s.state in ("running", "queued") for s in states.values())
        ready = [
            job
            for job in jobs
            if states[job.name].state in ("todo", "failed") and job.name not in failed_here
        ]
        for job in submission_order(jobs, ready, states):
            s = states[job.name]
            cap = self.backend.capacity
            if cap is not None and in_flight >= cap:
                break
            if s.state == "failed":
                _say(
                    f"resubmitting {job.name}: its job {s.job_id} failed ({s.detail}); log {s.log}"
                )
            before = registry.get(job.name)
            record = self.backend.submit(self._spec(job))
            record.attempts = before.attempts + 1 if before else 1
            registry[job.name] = record
            self._write_registry(registry)  # at once: a crash must not forget a submitted job
            report.submitted.append(job.name)
            queued = "running" if self.backend.name == "pool" else "queued"
            states[job.name] = JobStatus(job.name, queued, record.job_id, record.stderr)
            in_flight += 1

    def _label(self) -> str:
        if self.options.status_only:
            return "status"
        if isinstance(self.backend, _PoolBackend):
            return f"pool, {self.backend.capacity} at once"
        return self.options.launcher

    def _failures(self, report: LaunchReport) -> str:
        lines = [f"{len(report.failed)} run(s) of {self.study} did not finish:"]
        for s in report.failed:
            lines.append(f"  {s.name}: {s.detail}" + (f" (job {s.job_id})" if s.job_id else ""))
            if s.log:
                lines.append(f"    log: {s.log}")
        lines.append(
            f"{report.counts['done']} of {len(report.statuses)} runs are done and collected. Fix "
            "the cause (the log says it) and run the same command again: it keeps every "
            "finished run and submits only the failed and never-run ones"
        )
        return "\n".join(lines)

    def status(self, jobs: Sequence[LaunchJob]) -> LaunchReport:
        """Every job's state, submitting nothing."""
        registry = self.read_registry()
        states = self.statuses(jobs, registry)
        return LaunchReport(self.study, self._label(), [states[j.name] for j in jobs])


def _say(text: str) -> None:
    print(f"[icm_lib] {text}", file=sys.stderr, flush=True)


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


# ---------------------------------------------------------------------- the study's side
def launch_study(
    exp: Experiment,
    calls: Sequence[RunCall],
    options: LaunchOptions,
    study: str,
    collect: Callable[[list[RunCall], list[Any]], Any],
    settled: Callable[[RunCall], bool] = lambda call: False,
    record: Callable[[Experiment, RunCall], Any] = compute,
) -> LaunchReport:
    """Run a study's ``calls`` as jobs and collect them in their order.

    Args:
        exp: the prepared experiment (its tasks' recognizers and the reference codec built, run
            keys known).
        calls: the study's runs in the order of its results file.
        options: the launcher.
        study: its name in messages.
        collect: ``collect(calls, records)`` with the done runs' calls and records in grid order,
            each time more are done (the study writes its results file).
        settled: calls that are done without a job (a run an earlier results file holds).
        record: a done call's record in this process (load-or-compute: it loads).

    Returns:
        The :class:`LaunchReport` (``complete`` when every run is in).
    """
    jobs = plan_jobs(exp, [c for c in calls if not settled(c)])
    names = {id(c): identity(exp, c)[0] for c in calls}
    launcher = Launcher(options, exp.profile, exp.cache_dir.parent, study)
    if options.status_only:
        report = launcher.status(jobs)
        print(report.table())
        _say(report.line())
        return report
    records: dict[str, Any] = {}

    def gather(done: set[str]) -> None:
        got_calls, got = [], []
        for call in calls:
            name = names[id(call)]
            if settled(call) or name in done:
                if name not in records:
                    records[name] = record(exp, call)
                got_calls.append(call)
                got.append(records[name])
        if got:
            collect(got_calls, got)

    return launcher.run(jobs, gather)
