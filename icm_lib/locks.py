"""One writer per run key: :class:`RunLock`, an atomic claim on a run folder or cache file.

The lock file holds the holder's pid, host and start time; a second process waits (saying who
holds it) or gives up with :class:`~icm_lib.errors.RunLockedError`; a lock left by a killed
process is recovered (at once when its pid is gone on this machine, from another host once it
is no longer refreshed).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
import uuid
import warnings
from pathlib import Path

from .errors import (
    RunLockedError,
)
from .files import write_error


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


def process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot; Linux), to tell a reused pid."""
    stat = _proc_stat(pid)
    return stat[19] if stat is not None and len(stat) > 19 else None


def pid_alive(pid: int, started: str | None) -> bool:
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
    now = process_start(pid)
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
            if not isinstance(pid, int) or not pid_alive(pid, holder.get("pid_start")):
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
            raise write_error(self.path, exc, None) from exc
        started = time.time()
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "machine": _machine_id(),
            "pid_start": process_start(os.getpid()),
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
            raise write_error(self.path, exc, None) from exc
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
        start = time.monotonic()
        deadline = start + self.timeout
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
            # A lock file caught between its creation and its first write names nobody yet:
            # the message waits for the holder's name (unless it stays unreadable for seconds).
            if not told and (holder is not None or time.monotonic() - start > 5 * self.poll):
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
