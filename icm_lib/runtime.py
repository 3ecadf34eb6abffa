"""What every trainer shares: device choice, seeding, atomic files and checkpoints."""
from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CheckpointError, ICMError


def get_device(prefer: str | None = None) -> torch.device:
    """CUDA when present (or ``prefer``), else CPU."""
    if prefer:
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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
            "delete it to recompute, or point to a complete icm_lib file") from None


def config_hash(obj: Any, length: int = 10) -> str:
    """A short stable hash of a JSON-able config, used to key caches."""
    import hashlib

    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


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
                    "(--nproc_per_node), or pass --device cpu to train on the CPU (gloo)")
            device = torch.device("cuda", self.local_rank)
        self.device = device
        if self.enabled and not torch.distributed.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            if device.type == "cuda":
                torch.cuda.set_device(device)
            torch.distributed.init_process_group(backend)

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
