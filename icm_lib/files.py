"""Complete files or none: atomic writes, damage-checked reads, content-hashed checkpoints, logs.

Every file the project writes goes through a temporary file in the same folder and a rename
(:func:`atomic_write_bytes`, :func:`atomic_write_json`, :func:`atomic_torch_save`), so a kill or
a full disk leaves the previous file whole; a failed write is a
:class:`~icm_lib.errors.DiskFullError` / :class:`~icm_lib.errors.FileWriteError` naming the path
and the space. Every JSON file is read through :func:`read_json` (damage →
:class:`~icm_lib.errors.DamagedFileError` saying what to do), every ``.pt`` file through
:func:`load_checkpoint` (``weights_only``, its content hash checked). The JSON-lines training logs
are the one file appended in place; their readers and repair follow. Last,
:func:`load_or_compute`: the one place that decides "finished → load" for every cached result
(a codec run, a finetuning, a recognizer, an evaluation, a batch's pseudo-labels).
"""

from __future__ import annotations

import contextlib
import copy
import errno
import hashlib
import json
import math
import os
import shutil
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import (
    CheckpointError,
    DamagedFileError,
    DiskFullError,
    FileWriteError,
)


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


def write_error(path: Path, exc: OSError, needed: int | None) -> FileWriteError:
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


def _temporary_file(path: Path) -> tuple[int, str]:
    """A new, empty temporary file beside ``path`` (``.<name>.<random>.tmp``), opened for
    writing: created with mode 0o666 so that the kernel applies the umask and the folder's
    default ACLs, as for any file the user writes (``tempfile.mkstemp`` would make it
    owner-only, leaving a results file or a codec unreadable to a shared group). Replacing a
    file, it takes that file's permission bits (best effort: a file system that refuses a mode
    change, such as vfat, keeps the new file's)."""
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = str(path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp"))
        try:
            fd = os.open(tmp, flags, 0o666)
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover - 100 collisions of 48 random bits
        raise FileExistsError(errno.EEXIST, "no free temporary file name", str(path))
    with contextlib.suppress(OSError):  # no file to replace, or a mode the file system refuses
        os.fchmod(fd, path.stat().st_mode & 0o777)
    return fd, tmp


def _atomic_write(path: Path, write: Callable[[Any], Any], size: int | None = None) -> Path:
    """Write through a temporary file in the same folder, then rename: never half-written.

    ``write(f)`` writes the content to the file object ``f``; ``size``: the content's length if
    known. Any failed write (a full disk, a quota, permissions) raises :class:`DiskFullError` /
    :class:`FileWriteError` with the path, the bytes needed (measured by writing to nowhere
    when not given) and the free space; the temporary file is removed and ``path`` keeps its
    previous content. The file keeps the permissions of the one it replaces (a new one: the
    umask's; :func:`_temporary_file`).
    """
    path = Path(path)
    tmp = None
    sink = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _temporary_file(path)
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
        raise write_error(path, cause, size) from exc
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`_atomic_write` for a failed write)."""
    return _atomic_write(Path(path), lambda f: f.write(data), len(data))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically, as standard JSON: a non-finite float (NaN,
    ±inf: an undefined statistic such as the interval of one seed) is written as ``null``,
    never as the ``NaN`` token that only Python reads. Whether a measurement may be ``null``
    is the results schema's business (:func:`read_json` refuses a ``NaN`` token outright).
    NumPy scalars, one-element tensors and paths are written as their values. The layout is
    :func:`json_text`'s."""
    data = json_text(obj).encode()
    return _atomic_write(Path(path), lambda f: f.write(data), len(data))


def json_text(obj: Any) -> str:
    """``obj`` as the JSON text every project file holds: keys sorted, an object with a
    container inside broken over indented lines, and everything else on one line: an object of
    plain values (a log entry), a list with no object in it (a curve, per-image bits,
    detections). A study file with per-image records is then a few lines per run, not one line
    per number (a third of the bytes), and reads and diffs as a run per block."""
    return _layout(_plain(obj), "") + "\n"


def _layout(obj: Any, indent: str) -> str:
    def compact(x: Any) -> str:
        return json.dumps(
            x, sort_keys=True, separators=(", ", ": "), default=_json_default, allow_nan=False
        )

    def holds_object(x: Any) -> bool:
        return isinstance(x, dict) or (isinstance(x, list) and any(map(holds_object, x)))

    inner = indent + "  "
    if isinstance(obj, dict) and any(isinstance(v, (dict, list)) for v in obj.values()):
        items = [f"{inner}{compact(str(k))}: {_layout(obj[k], inner)}" for k in sorted(obj)]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(obj, list) and obj and any(map(holds_object, obj)):
        items = [inner + _layout(v, inner) for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + indent + "]"
    return compact(obj)


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
            # a contiguous tensor's elements lie densely in order, whatever strides its size-1
            # dimensions carry -- and a damaged file can give them any (found by the fuzzer),
            # which ``reshape`` keeps; a view of stride 1 reads them (no kernel: safe after fork)
            flat = t.cpu().contiguous()
            h.update(flat.as_strided((flat.numel(),), (1,)).view(torch.uint8).numpy())
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
        raise write_error(path, exc, len(line)) from exc


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


# -- load or compute ------------------------------------------------------------------------------


def load_or_compute(
    load: Callable[[], Any],
    compute: Callable[[], Any],
    *,
    guard: Callable[[], contextlib.AbstractContextManager] | None = None,
    before: Callable[[], None] | None = None,
) -> Any:
    """The stored result, or the result computed (and stored) now: the one decision "finished →
    load" of every cached result in the project.

    Args:
        load: the stored result, or ``None`` when there is none -- or it is damaged, cut or of
            another schema: a cache is recomputed, never misread (the loaders of
            :func:`read_json` / :func:`load_checkpoint` say so with a warning).
        compute: computes the result, stores it atomically (a training run stores its own
            checkpoints and its finished file) and returns it.
        guard: the result's one writer (a :class:`~icm_lib.locks.RunLock` or
            :meth:`~icm_lib.runtime.RunFiles.claim`): held while computing, after which ``load``
            is asked again, since the process that held it may have finished the result.
            ``None``: no lock (a result any process may compute again, to the same bytes).
        before: called once before computing (a ``cached_only`` session refuses training here).
    """
    value = load()
    if value is not None:
        return value
    if before is not None:
        before()
    if guard is None:
        return compute()
    with guard():
        value = load()
        return value if value is not None else compute()
