"""What every trainer shares: device choice, seeding, cache keys, torchrun, and the
resumable-run engine (:class:`RunFiles`). Files are :mod:`icm_lib.files`' job, the writer's claim
:mod:`icm_lib.locks`'."""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import math
import os
import random
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm as _auto_tqdm

from .errors import (
    ConfigError,
    ICMError,
    NotCachedError,
)
from .files import (
    append_log,
    atomic_torch_save,
    atomic_write_json,
    load_checkpoint,
    logged_seconds,
    read_log,
    truncate_log,
)
from .locks import RunLock


def tqdm(iterable=None, **kwargs):
    """The progress bars of the library: tqdm's notebook/terminal bar, or, with the environment
    variable ``ICM_PROGRESS=log`` (set by ``make tutorial``, whose terminal shows the kernel's
    output), a plain text bar on stdout redrawn every ``ICM_PROGRESS_SECONDS`` (default 20) s."""
    if os.environ.get("ICM_PROGRESS") != "log":
        return _auto_tqdm(iterable, **kwargs)
    from tqdm.std import tqdm as plain

    seconds = float(os.environ.get("ICM_PROGRESS_SECONDS", "20"))
    return plain(iterable, file=sys.stdout, mininterval=seconds, ascii=True, ncols=110, **kwargs)


_CACHED_ONLY: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "icm_cached_only", default=None
)


@contextlib.contextmanager
def cached_only(command: str):
    """``with cached_only("make tutorial PROFILE=cpu-patterns"):`` -- inside the block, anything
    load-or-compute that is not in the cache (the embedded scenes, a recognizer, a codec run, a
    stopped run to resume) raises :class:`~icm_lib.errors.NotCachedError` naming ``command``
    instead of computing it: how a notebook offers another world's cached models without
    starting hours of training by surprise. (Evaluations of a cached codec are still computed.)"""
    token = _CACHED_ONLY.set(command)
    try:
        yield
    finally:
        _CACHED_ONLY.reset(token)


def refuse_training(what: str) -> None:
    """Raise :class:`~icm_lib.errors.NotCachedError` inside :func:`cached_only` (called where
    ``what`` would start training)."""
    command = _CACHED_ONLY.get()
    if command is not None:
        raise NotCachedError(
            f"{what} is not in the cache, and this call only reads the cache; `{command}` "
            "trains it (load-or-compute: what is cached is not trained again)"
        )


def get_device(prefer: str | torch.device | None = None) -> torch.device:
    """CUDA when present (or ``prefer``: ``cpu``, ``cuda``, ``cuda:N``), else CPU.

    Raises:
        ConfigError: ``prefer`` is not a device name, or names CUDA on a machine without it."""
    if not prefer:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(prefer)
    except RuntimeError:
        raise ConfigError(f"unknown device {prefer!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {prefer}: no CUDA device on this machine; use --device cpu")
    return device


def bf16_hardware(device: torch.device | None = None) -> str:
    """What multiplies bfloat16 natively on ``device`` (default: the CPU): the CPU's
    ``avx512_bf16`` / ``amx_bf16`` flags (Linux), or the GPU's support; elsewhere bfloat16 is
    emulated, and slower than float32."""
    if device is not None and device.type == "cuda":
        with torch.cuda.device(device):  # this GPU, not the current one; emulation is not support
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        return "CUDA bf16" if native else "none (this GPU emulates it)"
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), [])
    except OSError:
        return "unknown (no /proc/cpuinfo)"
    native = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return " + ".join(native) if native else "none (emulated: slower than float32)"


def bf16_native(device: torch.device | None = None) -> bool:
    """Whether :func:`bf16_hardware` finds bfloat16 multiplied natively on ``device``."""
    return bf16_slower(device) is None


def bf16_slower(device: torch.device | None = None) -> str | None:
    """``None`` where ``device`` multiplies bfloat16 natively (:func:`bf16_hardware`); else why
    bfloat16 compute there is slower than float32, for a caller to print after what it does:
    "several times slower" where the hardware has none, "may be slower" where it is unknown."""
    hardware = bf16_hardware(device)
    if hardware.startswith("unknown"):
        return f"bfloat16 hardware {hardware}: bfloat16 may be slower than float32 here"
    if hardware.startswith("none"):
        return (
            f"bfloat16 hardware {hardware} - no avx512_bf16 / amx_bf16 (or a GPU without "
            "bfloat16), so bfloat16 runs several times slower than float32 here"
        )
    return None


_NO_FORWARD = object()  # a module without a forward of its own (the class's applies)


def _handed_on_in_float32(out):
    """``out`` with its bfloat16 / float16 tensors in float32, in the same structure (tensors,
    dicts, lists, tuples, named tuples); integer, bool and float64 tensors and anything else as
    they are."""
    if isinstance(out, torch.Tensor):
        return out.float() if out.dtype in (torch.bfloat16, torch.float16) else out
    if isinstance(out, dict):
        return type(out)((k, _handed_on_in_float32(v)) for k, v in out.items())
    if isinstance(out, tuple) and hasattr(out, "_fields"):  # a named tuple
        return type(out)(*(_handed_on_in_float32(v) for v in out))
    if isinstance(out, list | tuple):
        return type(out)(_handed_on_in_float32(v) for v in out)
    return out


@contextlib.contextmanager
def forwards_in_bfloat16(modules, device_type: str):
    """Inside, each of ``modules`` runs its forward under bfloat16 autocast and hands on float32
    (:func:`_handed_on_in_float32`), so that what comes after it computes in float32: the
    codec's transforms (``ICMCodec.transforms_in_bf16``), a detector's feature computations (a
    recognizer's mixed training precisions). The weights stay float32 and keep their names: the
    wrapper is an instance attribute, and on the way out each module gets back the forward it
    had (scopes nest; a module listed twice is wrapped once)."""

    def wrap(forward):
        def run(*args, **kwargs):
            with torch.autocast(device_type, dtype=torch.bfloat16):
                return _handed_on_in_float32(forward(*args, **kwargs))

        return run

    wrapped: list[tuple[torch.nn.Module, object]] = []
    try:
        for module in dict.fromkeys(modules):  # each once, in order
            own = vars(module).get("forward", _NO_FORWARD)
            module.forward = wrap(module.forward)
            wrapped.append((module, own))
        yield
    finally:
        for module, own in reversed(wrapped):
            if own is _NO_FORWARD:
                del module.forward  # the class's own forward again
            else:
                module.forward = own


#: the multiplier of :func:`mix_seed` (a prime above any step count a run reaches)
_SEED_PRIME = 1_000_003


def mix_seed(seed: int, *counters: int) -> int:
    """One integer seed for a random stream from a base seed and counters, e.g.
    ``mix_seed(seed, step)`` for a training batch or ``mix_seed(seed, step, shard)`` for one
    shard's forward pass: ``((seed · P + c₁) · P + c₂) ...`` modulo 2⁶³, P = 1,000,003. Every
    reproducible stream of the library is seeded through it."""
    out = seed
    for c in counters:
        out = out * _SEED_PRIME + c
    return out % (1 << 63)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch generator seeded the same way."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@contextlib.contextmanager
def rng_kept():
    """Inside, anything may draw from or reseed the random generators (torch's on the CPU and
    on every GPU, Python's, NumPy's); afterwards each is where it was. For work whose place in
    a run is not fixed (a recognizer loaded when first used), so that it cannot shift what the
    run draws after it."""
    py, np_state = random.getstate(), np.random.get_state()
    gpus = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=gpus):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(np_state)


class _ActiveClock:
    """A monotonic clock that stands still while the process is stopped (SIGSTOP, a shell's
    Ctrl-Z, a job scheduler's suspend). A daemon thread wakes every ``tick`` seconds; an
    interval longer than ``tick + gap`` in which the process used almost no CPU time (under
    half of it: a stopped process uses none, a long call that holds the GIL and starves the
    thread uses all) is counted as stopped. Whichever reads the clock first after a stop, the
    thread or a caller, accounts for it, so readings never run backwards. Contention, sleeping
    and waiting still count; only a stopped process does not. A forked child starts its own
    thread."""

    def __init__(self, tick: float = 1.0, gap: float = 5.0):
        self.tick, self.gap = tick, gap
        self._reset()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:  # the watcher and its readings start with the first call
        self._stopped, self._lock, self._thread = 0.0, threading.Lock(), None

    def _account(self) -> float:
        """Under the lock: add a stop since the last reading; return the monotonic time."""
        now, cpu = time.monotonic(), time.process_time()
        idle = now - self._last - self.tick
        if idle > self.gap and cpu - self._cpu < 0.5 * idle:
            self._stopped += idle
        self._last, self._cpu = now, cpu
        return now

    def _watch(self) -> None:
        while True:
            time.sleep(self.tick)
            with self._lock:
                self._account()

    def __call__(self) -> float:
        with self._lock:
            if self._thread is None:
                self._last, self._cpu = time.monotonic(), time.process_time()
                self._thread = threading.Thread(
                    target=self._watch, name="active-clock", daemon=True
                )
                self._thread.start()
            return self._account() - self._stopped


#: seconds of work: the training seconds every record holds (a run's, a recognizer's) are
#: differences of it, so a study stopped and continued (``kill -STOP`` / ``-CONT``) does not
#: count its pause as compute
active_seconds = _ActiveClock()


def tell(what: str, done: int, total: int, record, t0: float) -> None:
    """One line on stderr per finished run of a long command (a study, the pilot): where it is
    (``done``/``total``), the record's :meth:`describe`, and whether it trained here (seconds
    since ``t0``), came from a results file, or was loaded from the cache (it took under half
    the training seconds the record holds); a batch log with ``--no-progress`` says no more
    and no less."""
    took, trained = time.perf_counter() - t0, getattr(record, "seconds", None)
    if getattr(record, "from_results_file", False):
        source = "from the results file"
    elif trained and took < trained / 2:
        source = f"from the cache, trained in {trained:.0f} s"
    else:
        source = f"{took:.0f} s here"
    print(f"[icm_lib] {what} {done}/{total}: {record.describe()} ({source})", file=sys.stderr)


def config_hash(obj: Any, length: int = 10) -> str:
    """A short stable hash of a JSON-able config, used to key caches."""

    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def keyed_path(folder: str | Path, name: str, parts: dict, suffix: str = "") -> Path:
    """Where a cached result lives: ``<folder>/<name>-<config_hash(parts)><suffix>``.

    ``parts`` is everything that decides the result (configurations, the fingerprints of the
    weights it starts from, :func:`data_key`); ``name`` only makes the folder readable. The one
    spelling of a cache key: a codec run, the reference codec, a recognizer and a PatchGAN
    finetuning are found the same way, and :func:`~icm_lib.files.load_or_compute` decides
    whether what is there is finished."""
    return Path(folder) / f"{name}-{config_hash(parts)}{suffix}"


def data_key(root: str | Path) -> str:
    """A dataset's identity in cache keys. The embedded scenes: their path from the
    ``embedded/<tag>`` folder on (the tag carries the generator's settings and version, so every
    clone, wherever it lives, generates the same files and gets the same keys); a dataset
    elsewhere (COCO, Pascal-Context): its resolved path.
    """
    path = Path(root).resolve()
    parts = path.parts
    marks = [i for i, p in enumerate(parts[:-1]) if p == "embedded"]
    key = "/".join(parts[marks[-1] :]) if marks else str(path)
    return key


def env_path(name: str, default: str | Path) -> Path:
    """A path from environment variable ``name`` if set, else ``default``."""
    return Path(os.environ.get(name) or default).expanduser().resolve()


# ---------------------------------------------------------------------- distributed (torchrun)
#: hours a process of a torchrun job waits in a collective before it fails (``ICM_DIST_TIMEOUT_H``
#: sets another): the other ranks wait in a barrier while rank 0 prepares what a fresh cache
#: lacks (data, recognizers, the reference codec: minutes to hours) or waits for another
#: process's writer lock on the run; NCCL's own default, 10 minutes, would abort them
DIST_TIMEOUT_H = 24.0


def dist_timeout():
    """The process group's timeout (:data:`DIST_TIMEOUT_H`, or ``ICM_DIST_TIMEOUT_H``)."""
    from datetime import timedelta

    text = os.environ.get("ICM_DIST_TIMEOUT_H", "")
    try:
        hours = float(text) if text else DIST_TIMEOUT_H
    except ValueError:
        hours = -1.0
    if not (math.isfinite(hours) and hours > 0):
        raise ConfigError(f"ICM_DIST_TIMEOUT_H={text!r}: give a positive number of hours")
    return timedelta(hours=hours)


class Distributed:
    """This process's place in a ``torchrun`` job (a single process when not launched by it).

    Attributes:
        rank, world_size, local_rank: from torchrun's environment (0, 1, 0 otherwise).
        device: ``cuda:<local_rank>`` when CUDA is present (or asked for without an index), else
            the CPU (gloo backend); more local processes than GPUs raise :class:`ICMError`.
    """

    def __init__(self, device: torch.device | None = None):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device is None:
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if device.type == "cuda" and device.index is None:  # one GPU per local process
            gpus = torch.cuda.device_count()
            if self.local_rank >= gpus:
                raise ICMError(
                    f"this is local process {self.local_rank} of a torchrun job, but the node "
                    f"has {gpus} GPU(s): start at most {gpus} processes per node "
                    "(--nproc_per_node), or pass --device cpu to train on the CPU (gloo)"
                )
            device = torch.device("cuda", self.local_rank)
        self.device = device
        if self.enabled and not torch.distributed.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            if device.type == "cuda":
                torch.cuda.set_device(device)
            torch.distributed.init_process_group(backend, timeout=dist_timeout())

    @classmethod
    def local(cls, device: torch.device) -> Distributed:
        """This process alone, even inside a torchrun job (e.g. rank 0 building a cache)."""
        out = cls.__new__(cls)
        out.world_size, out.rank, out.local_rank, out.device = 1, 0, 0, device
        return out

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def state_fingerprint(state_dict: dict[str, torch.Tensor], length: int = 10) -> str:
    """A short hash of a state dict's names and exact tensor values (keys caches of runs that
    start from given weights)."""

    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name]
        h.update(name.encode())
        if isinstance(t, torch.Tensor):
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:length]


# ---------------------------------------------------------------------- the resumable-run engine
#: what a checkpoint must have been written with to be resumed (2: streams seeded by mix_seed)
RUN_FORMAT = 2


class CheckpointParts:
    """Named parts of a training state (optimizers, schedulers, modules) saved and restored
    together under their names: ``state_dict()`` / ``load_state_dict()`` of them all."""

    def __init__(self, **parts):
        self.parts = parts

    def state_dict(self) -> dict:
        return {name: part.state_dict() for name, part in self.parts.items()}

    def load_state_dict(self, state: dict) -> None:
        """Restore every part. An optimizer keeps this process's implementation (fused,
        foreach, capturable: the trainer's flags for this device), not the one the state was
        saved with -- a state saved on the CPU and resumed on CUDA runs CUDA's fused Adam, its
        step counts moved to the device as that implementation needs."""
        for name, part in self.parts.items():
            saved = state[name]
            mine = getattr(part, "param_groups", None)
            if isinstance(part, torch.optim.Optimizer) and len(mine) == len(saved["param_groups"]):
                groups = [
                    {**group, **{k: now[k] for k in OPTIMIZER_IMPLEMENTATION if k in now}}
                    for group, now in zip(saved["param_groups"], mine)
                ]
                saved = {**saved, "param_groups": groups}
            part.load_state_dict(saved)


#: an optimizer's param-group settings that choose how it computes, not what
OPTIMIZER_IMPLEMENTATION = ("fused", "foreach", "capturable")


class RunFiles:
    """The folder of one resumable training run, and the bookkeeping every trainer shares::

        codec.pt        the finished codec: its presence means the run is done (load, don't train)
        checkpoint.pt   the latest complete training state (written atomically)
        log.jsonl       one record per logged step, with the training seconds so far
        config.json     the run's configuration
        <extras>.pt     what else the finished run keeps (a branch, a discriminator)
        writer.lock     while a process trains the run (:class:`RunLock`)

    A trainer asks :attr:`finished`; else enters :meth:`claim` (one writer per run key: a
    second process waits, then finds the run finished), asks :attr:`finished` again, builds its
    state, calls :meth:`restore`, iterates :meth:`steps`, calls :meth:`log` and
    :meth:`checkpoint` after each step and :meth:`close` at the end. Under ``torchrun`` only the
    main process writes (``dist``). Every ``.pt`` file carries a content hash
    (:func:`atomic_torch_save`), checked on load.

    Args:
        run_dir: the folder.
        steps, log_every, checkpoint_every: the schedule (``log_every`` and
            ``checkpoint_every`` count steps; the last step is always logged and saved).
        dist: the process group (``None``: a single process).
    """

    FINAL, CHECKPOINT, LOG, CONFIG = "codec.pt", "checkpoint.pt", "log.jsonl", "config.json"
    LOCK = "writer.lock"

    def __init__(
        self,
        run_dir: str | Path,
        steps: int,
        log_every: int,
        checkpoint_every: int,
        dist: Distributed | None = None,
    ):
        self.dir = Path(run_dir)
        self.total, self.log_every, self.checkpoint_every = steps, log_every, checkpoint_every
        self.dist = dist
        self.is_main = dist is None or dist.is_main
        self.start = 0
        self._t0 = 0.0
        self._bar = None
        self._lock: RunLock | None = None

    @property
    def finished(self) -> bool:
        return (self.dir / self.FINAL).is_file()

    @property
    def running(self) -> dict | None:
        """The live holder of this run key's writer lock (pid, host, started, ...), ``None``
        when no process is training it (a launcher skips a run that is finished or running)."""
        return RunLock(self.dir / self.LOCK).holder()

    @contextlib.contextmanager
    def claim(self, timeout: float | None = None):
        """Hold this run key's writer lock (:class:`RunLock`, ``<run_dir>/writer.lock``) for the
        block: the main process claims it, waiting for another holder up to ``timeout``
        seconds; released on leaving, also on an exception. Ask :attr:`finished` again inside:
        the process that held it may have finished the run."""
        lock = None
        if self.is_main:
            lock = RunLock(self.dir / self.LOCK, timeout=timeout, what=f"run {self.dir}")
            lock.acquire()
        self._lock = lock
        try:
            self._barrier()
            yield self
        finally:
            self._lock = None
            if lock is not None:
                lock.release()

    def _check_lock(self) -> None:
        if self._lock is not None:
            self._lock.check()

    def final_state(self, map_location: str | torch.device = "cpu") -> dict:
        return load_checkpoint(self.dir / self.FINAL, map_location)

    def read_log(self) -> list[dict]:
        return read_log(self.dir / self.LOG)

    def restore(self, map_location: str | torch.device) -> dict | None:
        """The latest checkpoint (``None``: start from step 0); the log is cut back to it. A
        checkpoint of another :data:`RUN_FORMAT` (written by a version of the library that
        seeded its random streams differently) is not resumed: the run starts over, so that a
        finished run is always the product of one version. A log whose last record was cut (a
        kill, a full disk) is rewritten to its complete records: the run carries on.

        Raises:
            CheckpointError: ``checkpoint.pt`` is damaged (delete it: the run starts over).
        """
        if self.is_main:
            self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / self.CHECKPOINT
        state = load_checkpoint(path, map_location=map_location) if path.is_file() else None
        if state is not None and state.get("run_format") != RUN_FORMAT:
            warnings.warn(
                f"{path} was written by an older icm_lib (another seeding of the "
                "training noise); the run starts over",
                stacklevel=2,
            )
            state = None
        self.start = state["step"] if state is not None else 0
        if self.is_main and (self.dir / self.LOG).is_file():
            truncate_log(self.dir / self.LOG, self.start)
        return state

    def steps(self, stop_after: int | None = None, desc: str = "", progress: bool = True):
        """The steps still to run (to ``stop_after`` if given), with a progress bar; the
        training seconds keep counting across resumes."""
        self.stop_at = self.total if stop_after is None else min(self.total, stop_after)
        self._bar = tqdm(
            range(self.start, self.stop_at),
            desc=desc,
            initial=self.start,
            total=self.total,
            disable=not (progress and self.is_main),
        )
        self._t0 = active_seconds() - logged_seconds(self.dir / self.LOG, self.start)
        return self._bar

    def log_due(self, done: int) -> bool:
        return done % self.log_every == 0 or done == self.total

    def log(self, done: int, record: dict) -> None:
        """Append ``record`` (losses, ...) for step ``done``, with the seconds so far."""
        record = {"step": done, **record, "seconds": round(active_seconds() - self._t0, 3)}
        if self.is_main:
            self._check_lock()
            append_log(self.dir / self.LOG, record)
        if self._bar is not None:
            self._bar.set_postfix(
                {
                    k.removesuffix("_loss"): f"{v:.4g}"
                    for k, v in record.items()
                    if k.endswith("loss")
                },
                refresh=False,
            )

    def checkpoint(self, done: int, state: Callable[[], dict]) -> None:
        """Save ``state()`` (with ``step``) when due, and at the last step of this call."""
        if done % self.checkpoint_every == 0 or done == self.stop_at:
            if self.is_main:
                self._check_lock()
                atomic_torch_save(
                    {**state(), "step": done, "run_format": RUN_FORMAT}, self.dir / self.CHECKPOINT
                )
            self._barrier()

    @property
    def complete(self) -> bool:
        """Whether the steps just run reached the schedule's end (not a ``stop_after``)."""
        return self.stop_at >= self.total

    def close(
        self, codec, config: dict, extras: dict[str, dict] | None = None, update_tables: bool = True
    ) -> list[dict]:
        """After the steps: if the schedule is complete, put ``codec`` (an ICMCodec) in eval mode,
        build its entropy tables (unless ``update_tables`` is false: a run that trained the
        decoder only keeps the tables it started with) and :meth:`finish` the run with it;
        return the log."""
        if self.complete:
            codec.eval()
            if update_tables:
                codec.update()
            self.finish(codec.codec_state(), config, extras)
        return self.read_log()

    def finish(self, final: dict, config: dict, extras: dict[str, dict] | None = None) -> None:
        """Write the finished run: the extras first, ``codec.pt`` last (its presence is the
        "done" mark), then ``config.json``."""
        if self.is_main:
            self._check_lock()
            for name, state in (extras or {}).items():
                atomic_torch_save(state, self.dir / name)
            atomic_torch_save(final, self.dir / self.FINAL)
            atomic_write_json(self.dir / self.CONFIG, config)
        self._barrier()

    def _barrier(self) -> None:
        if self.dist is not None:
            self.dist.barrier()
