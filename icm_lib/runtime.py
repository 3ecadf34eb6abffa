"""What every trainer shares: device choice, seeding, atomic files and checkpoints."""

from __future__ import annotations

import contextlib
import contextvars
import copy
import errno
import hashlib
import json
import math
import os
import random
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm as _auto_tqdm

from .errors import (
    CheckpointError,
    DamagedFileError,
    DiskFullError,
    FileWriteError,
    ICMError,
    NotCachedError,
    RunLockedError,
)


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


def get_device(prefer: str | None = None) -> torch.device:
    """CUDA when present (or ``prefer``), else CPU."""
    if prefer:
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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


class _Sink:
    """The file object a writer gets: the real file, remembering the first ``OSError`` of a
    write (torch's serializer turns it into a ``RuntimeError`` without the reason)."""

    def __init__(self, f):
        self._f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self._f.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        self._f.flush()


class _CountingSink:
    """A file object that only counts the bytes written to it (the size a failed write needed)."""

    def __init__(self):
        self.size = 0

    def write(self, data) -> int:
        n = memoryview(data).nbytes
        self.size += n
        return n

    def flush(self) -> None:
        pass


def _size(n: int | None) -> str:
    if n is None:
        return "an unknown number of bytes"
    unit = next((u for u, k in (("GiB", 30), ("MiB", 20)) if n >= 2**k), "KiB")
    scale = {"GiB": 2**30, "MiB": 2**20, "KiB": 2**10}[unit]
    return f"{n:,} bytes ({n / scale:.1f} {unit})"


def _write_error(path: Path, exc: OSError, needed: int | None) -> FileWriteError:
    """The project's error for a failed write of ``path``: the reason, the bytes the file needed
    and the space left on its file system."""
    try:
        free = shutil.disk_usage(path.parent if path.parent.exists() else Path.cwd()).free
    except OSError:
        free = None
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    reason = "the disk (or your quota) is full" if full else (exc.strerror or str(exc))
    advice = (
        "Free some space or point the output / cache folder elsewhere, then run again"
        if full
        else "Check that the folder is writable and its device healthy, then run again"
    )
    return (DiskFullError if full else FileWriteError)(
        f"cannot write {path}: {reason} ({type(exc).__name__} errno {exc.errno}); the file needs "
        f"{_size(needed)}, {_size(free)} are free on its file system. {advice}: the previous "
        "version of the file, if any, is intact"
    )


def _atomic_write(path: Path, write: Callable[[Any], Any], size: int | None = None) -> Path:
    """Write through a temporary file in the same folder, then rename: never half-written.

    ``write(f)`` writes the content to the file object ``f``; ``size``: the content's length if
    known. Any failed write (a full disk, a quota, permissions) raises :class:`DiskFullError` /
    :class:`FileWriteError` with the path, the bytes needed (measured by writing to nowhere
    when not given) and the free space; the temporary file is removed and ``path`` keeps its
    previous content.
    """
    path = Path(path)
    tmp = None
    sink = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            sink = _Sink(f)
            write(sink)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        cause = exc if isinstance(exc, OSError) else getattr(sink, "error", None)
        if cause is None or isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        if size is None:
            try:
                counter = _CountingSink()
                write(counter)
                size = counter.size
            except Exception:
                size = None
        raise _write_error(path, cause, size) from exc
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`_atomic_write` for a failed write)."""
    return _atomic_write(Path(path), lambda f: f.write(data), len(data))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically, as standard JSON: a non-finite float (NaN,
    ±inf: an undefined statistic such as the interval of one seed) is written as ``null``,
    never as the ``NaN`` token that only Python reads. Whether a measurement may be ``null``
    is the results schema's business (:func:`read_json` refuses a ``NaN`` token outright).
    NumPy scalars, one-element tensors and paths are written as their values."""
    text = json.dumps(_plain(obj), indent=2, sort_keys=True, default=_json_default, allow_nan=False)
    data = text.encode()
    return _atomic_write(Path(path), lambda f: f.write(data), len(data))


def _plain(obj: Any) -> Any:
    """``obj`` with every number a finite Python number or ``None`` (see atomic_write_json)."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer, np.bool_)) or (
        isinstance(obj, torch.Tensor) and obj.numel() == 1
    ):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def read_json(path: str | Path, *, what: str, fix: str) -> Any:
    """Read a JSON file the project wrote, turning any damage into one clear error.

    The single reader for every JSON file (results, evaluations, run configs, dataset metadata):
    a cut or corrupt file, or one holding NaN / infinity (a ``NaN`` token, or a number too
    large for a float, which :func:`atomic_write_json` never writes), raises
    :class:`DamagedFileError` naming the file and what to do.

    Args:
        path: the file.
        what: what the file is, for the message (``"the evaluation cache"``).
        fix: what to do about it (``"delete it to recompute"``).

    Raises:
        DamagedFileError: missing, unreadable, not JSON, or holding a non-finite number.
    """
    path = Path(path)

    def refuse(_: str) -> Any:
        raise ValueError("NaN or infinity is not a measurement")

    def finite(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):  # 1e999
            raise ValueError(f"{text} is not a finite number")
        return value

    try:
        text = path.read_bytes().decode("utf-8")
        return json.loads(text, parse_constant=refuse, parse_float=finite)
    except FileNotFoundError:
        raise DamagedFileError(f"{what} {path} does not exist: {fix}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise DamagedFileError(
            f"{what} {path} is damaged ({type(exc).__name__}: {exc}); it was cut by a stopped "
            f"process or a full disk, or edited by hand: {fix}"
        ) from None


#: the key under which :func:`atomic_torch_save` stores a saved dict's :func:`content_hash`
CONTENT_HASH_KEY = "content_sha256"


def content_hash(obj: Any) -> str:
    """SHA-256 of what a checkpoint holds, independent of how torch serializes it: every
    tensor's dtype, shape and raw bytes, every plain value's type and ``repr``, dicts by sorted
    key, lists and tuples in order. The same after a save / load round trip (on any device,
    with any torch version), different as soon as one bit of one value is."""
    h = hashlib.sha256()
    _hash_into(h, obj)
    return h.hexdigest()


def _hash_into(h, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        h.update(f"T{t.dtype}{tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, Mapping):
        h.update(f"D{len(obj)};".encode())
        for key in sorted(obj, key=lambda k: (type(k).__name__, repr(k))):
            _hash_into(h, key)
            _hash_into(h, obj[key])
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)};".encode())
        for value in obj:
            _hash_into(h, value)
    else:
        text = repr(obj)
        h.update(f"{type(obj).__name__}{len(text)}:{text};".encode())


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` through a temporary file and a rename; a dict is saved with its
    :func:`content_hash` under :data:`CONTENT_HASH_KEY`, which :func:`load_checkpoint` checks.

    Raises:
        DiskFullError / FileWriteError: the write failed (the previous file is intact).
    """
    if isinstance(obj, Mapping):
        body = {k: v for k, v in obj.items() if k != CONTENT_HASH_KEY}
        obj = copy.copy(obj)  # an OrderedDict state dict keeps its _metadata
        obj[CONTENT_HASH_KEY] = content_hash(body)
    return _atomic_write(Path(path), lambda f: torch.save(obj, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by :func:`atomic_torch_save` with ``weights_only=True`` and
    check its content hash (returned without it).

    A file without a hash (written by an icm_lib before hashes, or by hand) is loaded as before:
    caches and finished runs on disk stay usable; the hash guards every file written since.

    Raises:
        CheckpointError: the file is missing, truncated, not a weights-only checkpoint, or its
            content differs from the hash it was saved with (a flipped bit on disk).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; train first or check the path")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for a broken file
        # torch's own advice for a refused file is to retry with weights_only=False, which runs
        # arbitrary code from the file: never pass that on
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        detail = "" if "weights_only" in str(exc) else f": {first}"
        raise CheckpointError(
            f"cannot load checkpoint {path} ({type(exc).__name__}{detail}); it is truncated, "
            "corrupt, or holds more than tensors and plain data (icm_lib writes only those): "
            "delete it to recompute, or point to a complete icm_lib file"
        ) from None
    if isinstance(state, dict) and CONTENT_HASH_KEY in state:
        stored = state.pop(CONTENT_HASH_KEY)
        if stored != content_hash(state):
            raise CheckpointError(
                f"checkpoint {path} is damaged: its content does not match the hash it was "
                "saved with (a bit changed on disk, or the file was edited); delete it and "
                "train again (a run's codec.pt / checkpoint.pt) or recompute the cache"
            )
    return state


def config_hash(obj: Any, length: int = 10) -> str:
    """A short stable hash of a JSON-able config, used to key caches."""
    import hashlib

    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def data_key(root: str | Path, data_dir_as: str | Path | None = None) -> str:
    """A dataset's identity in cache keys. The embedded scenes: their path from the
    ``embedded/<tag>`` folder on (the tag carries the generator's settings and version, so every
    clone, wherever it lives, generates the same files and gets the same keys); a dataset
    elsewhere (COCO, Pascal-Context): its resolved path.

    ``data_dir_as``: the identity as keys had it before they were path-free (the absolute path,
    under that data folder), to find runs an older results file recorded on another machine.
    """
    path = Path(root).resolve()
    parts = path.parts
    marks = [i for i, p in enumerate(parts[:-1]) if p == "embedded"]
    key = "/".join(parts[marks[-1] :]) if marks else str(path)
    return key if data_dir_as is None else str(Path(data_dir_as) / key)


def env_path(name: str, default: str | Path) -> Path:
    """A path from environment variable ``name`` if set, else ``default``."""
    return Path(os.environ.get(name) or default).expanduser().resolve()


# ---------------------------------------------------------------------- distributed (torchrun)
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
            torch.distributed.init_process_group(backend)

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
    import hashlib

    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name]
        h.update(name.encode())
        if isinstance(t, torch.Tensor):
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:length]


# ---------------------------------------------------------------------- one writer per run key
def _env_seconds(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


def _machine_id() -> str:
    """Which processes can see each other's pids: the host name, its boot id and this pid
    namespace (two containers on one host share the boot id, not the pid namespace)."""
    parts = [socket.gethostname()]
    with contextlib.suppress(OSError):
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
    with contextlib.suppress(OSError):
        parts.append(os.readlink("/proc/self/ns/pid"))
    return "/".join(parts)


def _proc_stat(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` after the command name (Linux): state, ppid, ..., start time."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot; Linux), to tell a reused pid."""
    stat = _proc_stat(pid)
    return stat[19] if stat is not None and len(stat) > 19 else None


def _pid_alive(pid: int, started: str | None) -> bool:
    """Whether process ``pid`` of this machine is still the one that started at ``started``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        pass
    except OSError:
        return False
    stat = _proc_stat(pid)
    if stat is not None and stat[0] in ("Z", "X"):  # exited, not yet reaped
        return False
    now = _process_start(pid)
    return started is None or now is None or now == started


class RunLock:
    """One writer per run key: a lock file claimed atomically (``O_CREAT | O_EXCL``).

    The file holds the holder's pid, host, start time and a random token (JSON). While held, a
    thread refreshes its modification time every ``heartbeat`` seconds. Another process that
    finds the lock waits (saying who holds it) up to ``timeout`` seconds, then raises
    :class:`RunLockedError`; ``timeout=0`` fails at once (a launcher asking "is it running?").

    A lock is stale, and is removed by the next process that wants it, when:

    * its holder ran on this machine (same host, boot and pid namespace) and that process is
      gone (its pid is dead, a zombie, or now another process: Linux start times differ);
    * its holder ran elsewhere (another node of a cluster sharing the folder) and the file has
      not been refreshed for ``stale_after`` seconds (default 600, ``ICM_LOCK_STALE_SECONDS``):
      the holder was killed or its node lost. The nodes' clocks must agree to well within it.

    Removing a stale lock renames it aside and checks that it is still the one judged stale (a
    fresh claim that slipped in between is put back). Released on leaving the ``with`` block,
    also on an exception; a process killed by a signal leaves its lock, which is stale at once
    on its machine and after ``stale_after`` elsewhere.

    Args:
        path: the lock file (``<run_dir>/writer.lock`` for a run).
        timeout: seconds to wait for a held lock (default 3600, ``ICM_LOCK_TIMEOUT``).
        stale_after: see above.
        poll: seconds between tries while waiting.
        what: what the lock guards, for messages.
    """

    def __init__(
        self,
        path: str | Path,
        timeout: float | None = None,
        stale_after: float | None = None,
        poll: float = 1.0,
        what: str | None = None,
    ):
        self.path = Path(path)
        self.timeout = _env_seconds("ICM_LOCK_TIMEOUT", 3600.0) if timeout is None else timeout
        self.stale_after = (
            _env_seconds("ICM_LOCK_STALE_SECONDS", 600.0) if stale_after is None else stale_after
        )
        self.heartbeat = max(0.5, min(60.0, self.stale_after / 5))
        self.poll = poll
        self.what = what or str(self.path.parent)
        self.token: str | None = None
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- reading a lock file
    @staticmethod
    def read(path: str | Path) -> tuple[dict | None, bytes | None, float | None]:
        """``(holder, raw bytes, modification time)`` of a lock file; ``holder`` is ``None``
        when the file is being written or damaged, all three ``None`` when there is none."""
        path = Path(path)
        try:
            raw = path.read_bytes()
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return None, None, None
        try:
            holder = json.loads(raw.decode("utf-8"))
        except ValueError:
            holder = None
        return (holder if isinstance(holder, dict) else None), raw, mtime

    def stale_reason(self, holder: dict | None, mtime: float) -> str | None:
        """Why a lock file is stale (see the class), or ``None`` if it is held."""
        age = time.time() - mtime
        if holder is None:  # created but never written: its creator died at once
            return f"unreadable and untouched for {age:.0f} s" if age > 60 else None
        if holder.get("machine") == _machine_id():
            pid = holder.get("pid")
            if not isinstance(pid, int) or not _pid_alive(pid, holder.get("pid_start")):
                return f"its process {pid} on this machine is gone"
            return None
        if age > self.stale_after:
            return (
                f"its holder on {holder.get('host')} has not refreshed it for {age:.0f} s "
                f"(> {self.stale_after:.0f} s)"
            )
        return None

    @staticmethod
    def describe(holder: dict | None) -> str:
        if holder is None:
            return "a process that is creating the lock"
        since = holder.get("started")
        if not isinstance(since, (int, float)):
            return f"pid {holder.get('pid')} on host {holder.get('host')}"
        return (
            f"pid {holder.get('pid')} on host {holder.get('host')} since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))} "
            f"({(time.time() - since) / 60:.1f} min ago)"
        )

    def holder(self) -> dict | None:
        """The live holder of the lock (``None``: free, or stale)."""
        holder, raw, mtime = self.read(self.path)
        if raw is None or self.stale_reason(holder, mtime) is not None:
            return None
        return holder or {}

    # -- claiming and releasing
    def _try_create(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as exc:  # a read-only folder, a full disk (no inode left)
            raise _write_error(self.path, exc, None) from exc
        started = time.time()
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "machine": _machine_id(),
            "pid_start": _process_start(os.getpid()),
            "started": started,
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "argv": sys.argv[:8],
            "token": token,
        }
        try:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(holder))
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            raise _write_error(self.path, exc, None) from exc
        self.token = token
        return True

    def _break(self, raw: bytes, reason: str) -> None:
        """Remove the stale lock whose content was ``raw``, unless another claim replaced it."""
        aside = self.path.with_name(f"{self.path.name}.stale-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        try:
            if aside.read_bytes() != raw:  # a fresh claim came in between: put it back
                with contextlib.suppress(FileExistsError):
                    os.link(aside, self.path)
                return
        finally:
            aside.unlink(missing_ok=True)
        warnings.warn(f"removed the stale writer lock {self.path} ({reason})", stacklevel=4)

    def acquire(self) -> RunLock:
        """Claim the lock, waiting for a live holder up to ``timeout`` seconds.

        Raises:
            RunLockedError: still held by a live process after ``timeout`` seconds.
        """
        deadline = time.monotonic() + self.timeout
        told = False
        while not self._try_create():
            holder, raw, mtime = self.read(self.path)
            if raw is None:
                continue  # released in between
            reason = self.stale_reason(holder, mtime)
            if reason is not None:
                self._break(raw, reason)
                continue
            if time.monotonic() >= deadline:
                raise RunLockedError(
                    f"{self.what} is being written by {self.describe(holder)} (lock file "
                    f"{self.path}); waited {self.timeout:.0f} s. Let that process finish and run "
                    "again (the run then loads its result), or, if that process is gone without "
                    "this machine being able to tell (another node), delete the lock file"
                )
            if not told:
                print(
                    f"[icm_lib] {self.what} is being written by {self.describe(holder)}; "
                    f"waiting up to {self.timeout / 60:.0f} min for it (lock file {self.path})",
                    file=sys.stderr,
                    flush=True,
                )
                told = True
            time.sleep(self.poll)
        self.lost = False
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="icm-run-lock", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            holder, _, _ = self.read(self.path)
            if holder is None or holder.get("token") != self.token:
                self.lost = True
                return
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def check(self) -> None:
        """Raise :class:`RunLockedError` if the lock was taken from this process (judged stale:
        e.g. its heartbeat stopped for longer than ``stale_after``)."""
        holder, _, _ = self.read(self.path)
        if self.token is None or holder is None or holder.get("token") != self.token:
            self.lost = True
        if self.lost:
            raise RunLockedError(
                f"this process no longer holds the writer lock {self.path} of {self.what} (now "
                f"{self.describe(holder) if holder else 'nobody'}); it stops writing. Raise "
                "ICM_LOCK_STALE_SECONDS if this process was only slow"
            )

    def release(self) -> None:
        """Give the lock up (only if it is still this process's)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        holder, _, _ = self.read(self.path)
        if self.token is not None and holder is not None and holder.get("token") == self.token:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        self.token = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


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
        for name, part in self.parts.items():
            part.load_state_dict(state[name])


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
        self._t0 = time.perf_counter() - logged_seconds(self.dir / self.LOG, self.start)
        return self._bar

    def log_due(self, done: int) -> bool:
        return done % self.log_every == 0 or done == self.total

    def log(self, done: int, record: dict) -> None:
        """Append ``record`` (losses, ...) for step ``done``, with the seconds so far."""
        record = {"step": done, **record, "seconds": round(time.perf_counter() - self._t0, 3)}
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


# ---------------------------------------------------------------------- JSON-lines run logs
# A log is a diagnostic record, appended one line per logged step (not atomically: a kill or a
# full disk can cut its last line). Readers skip an unfinished last line (a running process may
# be writing it); a resumed run rewrites the log (atomically) to its complete records. A
# diverged run's NaN loss is kept as Python's ``NaN`` token here (the log records what
# happened); results files never hold it (:func:`atomic_write_json`).


def _log_record(line: bytes) -> dict | None:
    """One log line's record, or ``None`` when it is damaged (cut, garbled, not a record)."""
    try:
        record = json.loads(line.decode("utf-8"))
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        return None
    if not isinstance(record, dict) or not isinstance(record.get("step"), int):
        return None
    return record


def _parse_log(path: Path) -> tuple[list[dict], int, bool, bool]:
    """``(records, damaged, cut, clean)``: the complete records, how many damaged lines were
    left out before the last line, whether the last line is unfinished (cut), and whether the
    file is exactly its records, one per line."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], 0, False, True
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline, else an unfinished line
    records, damaged = [], 0
    for line in lines:
        if line.strip():
            record = _log_record(line)
            if record is None:
                damaged += 1
            else:
                records.append(record)
    cut = False
    if tail.strip():  # complete only if the newline alone was lost
        record = _log_record(tail)
        cut = record is None
        if record is not None:
            records.append(record)
    return records, damaged, cut, damaged == 0 and not tail


def _dropped_warning(path: Path, dropped: int) -> None:
    if dropped:
        warnings.warn(
            f"log {path}: dropped {dropped} damaged record(s) (cut by a stopped process or a "
            "full disk); the run carries on from its checkpoint",
            stacklevel=3,
        )


def read_log(path: str | Path) -> list[dict]:
    """The records of a JSON-lines log (empty if there is none). An unfinished last line (a
    run being written, or one cut by a kill or a full disk) is skipped; a damaged line inside
    the file is skipped with a warning (resuming the run rewrites the log without it)."""
    records, damaged, _, _ = _parse_log(Path(path))
    if damaged:
        warnings.warn(f"log {path}: skipped {damaged} damaged line(s)", stacklevel=2)
    return records


def repair_log(path: str | Path) -> int:
    """Rewrite a log (atomically) to its complete records when it holds anything else (a cut
    last line, a damaged line); returns how many damaged lines were dropped."""
    path = Path(path)
    records, damaged, cut, clean = _parse_log(path)
    if not clean:
        _write_log(path, records)
        _dropped_warning(path, damaged + cut)
    return damaged + cut


def _write_log(path: Path, records: list[dict]) -> None:
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in records).encode())


def append_log(path: str | Path, record: dict) -> None:
    """Append one record (one line, one write). A log whose last line was cut is repaired
    first, so a record never joins a cut one.

    Raises:
        DiskFullError / FileWriteError: the write failed (the log is repaired on resume).
    """
    path = Path(path)
    line = (json.dumps(record) + "\n").encode()
    try:
        if path.is_file() and path.stat().st_size > 0:
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    repair_log(path)
        with open(path, "ab") as f:
            f.write(line)
    except OSError as exc:
        raise _write_error(path, exc, len(line)) from exc


def truncate_log(path: str | Path, step: int) -> None:
    """Drop the records written after ``step`` (those of a run resumed from that step) and any
    damaged line (a cut last record), atomically."""
    path = Path(path)
    records, damaged, cut, _ = _parse_log(path)
    _write_log(path, [r for r in records if r["step"] <= step])
    _dropped_warning(path, damaged + cut)


def logged_seconds(path: str | Path, step: int) -> float:
    """Training seconds the log had counted up to ``step``, so a resumed run keeps counting."""
    return next((r["seconds"] for r in reversed(read_log(path)) if r["step"] <= step), 0.0)
