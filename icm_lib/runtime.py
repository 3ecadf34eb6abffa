"""What every trainer shares: device choice, seeding, atomic files and checkpoints."""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm as _auto_tqdm

from .errors import CheckpointError, DamagedFileError, ICMError


def tqdm(iterable=None, **kwargs):
    """The progress bars of the library: tqdm's notebook/terminal bar, or, with the environment
    variable ``ICM_PROGRESS=log`` (set by ``make tutorial``, whose terminal shows the kernel's
    output), a plain text bar on stdout redrawn every ``ICM_PROGRESS_SECONDS`` (default 20) s."""
    if os.environ.get("ICM_PROGRESS") != "log":
        return _auto_tqdm(iterable, **kwargs)
    from tqdm.std import tqdm as plain

    seconds = float(os.environ.get("ICM_PROGRESS_SECONDS", "20"))
    return plain(iterable, file=sys.stdout, mininterval=seconds, ascii=True, ncols=110, **kwargs)


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


def _atomic_write(path: Path, write) -> Path:
    """Write through a temporary file in the same folder, then rename: never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return _atomic_write(Path(path), lambda f: f.write(data))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    text = json.dumps(obj, indent=2, sort_keys=True, default=_json_default)
    return _atomic_write(Path(path), lambda f: f.write(text.encode()))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def read_json(path: str | Path, *, what: str, fix: str) -> Any:
    """Read a JSON file the project wrote, turning any damage into one clear error.

    The single reader for every JSON file (results, evaluations, run configs, dataset metadata):
    a cut or corrupt file, or one holding NaN / infinity (which :func:`atomic_write_json` never
    writes as a measurement), raises :class:`DamagedFileError` naming the file and what to do.

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

    try:
        text = path.read_bytes().decode("utf-8")
        return json.loads(text, parse_constant=refuse)
    except FileNotFoundError:
        raise DamagedFileError(f"{what} {path} does not exist: {fix}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise DamagedFileError(
            f"{what} {path} is damaged ({type(exc).__name__}: {exc}); it was cut by a stopped "
            f"process or a full disk, or edited by hand: {fix}"
        ) from None


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` through a temporary file and a rename."""
    return _atomic_write(Path(path), lambda f: torch.save(obj, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by :func:`atomic_torch_save` with ``weights_only=True``.

    Raises:
        CheckpointError: the file is missing, truncated or not a weights-only checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; train first or check the path")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
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

    A trainer asks :attr:`finished`; else builds its state, calls :meth:`restore`, iterates
    :meth:`steps`, calls :meth:`log` and :meth:`checkpoint` after each step and :meth:`close`
    at the end. Under ``torchrun`` only the main process writes (``dist``).

    Args:
        run_dir: the folder.
        steps, log_every, checkpoint_every: the schedule (``log_every`` and
            ``checkpoint_every`` count steps; the last step is always logged and saved).
        dist: the process group (``None``: a single process).
    """

    FINAL, CHECKPOINT, LOG, CONFIG = "codec.pt", "checkpoint.pt", "log.jsonl", "config.json"

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

    @property
    def finished(self) -> bool:
        return (self.dir / self.FINAL).is_file()

    def final_state(self, map_location: str | torch.device = "cpu") -> dict:
        return load_checkpoint(self.dir / self.FINAL, map_location)

    def read_log(self) -> list[dict]:
        return read_log(self.dir / self.LOG)

    def restore(self, map_location: str | torch.device) -> dict | None:
        """The latest checkpoint (``None``: start from step 0); the log is cut back to it. A
        checkpoint of another :data:`RUN_FORMAT` (written by a version of the library that
        seeded its random streams differently) is not resumed: the run starts over, so that a
        finished run is always the product of one version."""
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
            for name, state in (extras or {}).items():
                atomic_torch_save(state, self.dir / name)
            atomic_torch_save(final, self.dir / self.FINAL)
            atomic_write_json(self.dir / self.CONFIG, config)
        self._barrier()

    def _barrier(self) -> None:
        if self.dist is not None:
            self.dist.barrier()


# ---------------------------------------------------------------------- JSON-lines run logs
def read_log(path: str | Path) -> list[dict]:
    """The records of a JSON-lines log (empty if there is none)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_log(path: str | Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def truncate_log(path: str | Path, step: int) -> None:
    """Drop the records written after ``step`` (those of a run resumed from that step)."""
    records = [r for r in read_log(path) if r["step"] <= step]
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in records).encode())


def logged_seconds(path: str | Path, step: int) -> float:
    """Training seconds the log had counted up to ``step``, so a resumed run keeps counting."""
    return next((r["seconds"] for r in reversed(read_log(path)) if r["step"] <= step), 0.0)
