"""Pseudo-labels computed once: the frozen recognizer's answers on the original crops, on disk.

Every training step of Eq. 4-6 starts with ``y = machine(x)`` on the original crop batch ``x``
(no gradient). A batch is a pure function of (data, seed, step), and the recognizer never
changes, so every run of one seed -- each λ, each variant -- recomputes the same forward passes.
:class:`CachedMachine` stores each batch's pseudo-labels under the SHA-256 of the batch's exact
bytes and the recognizer's identity (its weights, class, settings, device type): a run that
meets a batch already labelled loads the labels instead of running the recognizer. The labels
are the same tensors, so training is bit-for-bit that of a run without the cache (tested).

The cache is bounded (``ICM_PSEUDO_CACHE_MB``, default 2048; the least recently used files go
first) and off with ``ICM_PSEUDO_CACHE=0``. A damaged file is recomputed; a full disk leaves the
run computing labels as before, with one warning.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import torch

from .errors import CheckpointError, DiskFullError, FileWriteError
from .files import atomic_torch_save, load_checkpoint, load_or_compute
from .runtime import state_fingerprint

#: a default bound of the cache folder, in MB
DEFAULT_MB = 2048


def enabled() -> bool:
    return os.environ.get("ICM_PSEUDO_CACHE", "1") not in ("0", "false", "no", "")


def batch_key(x: torch.Tensor) -> str:
    """SHA-256 of the batch's dtype, shape and exact bytes."""
    h = hashlib.sha256(f"{x.dtype}{tuple(x.shape)}".encode())
    h.update(x.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:32]


class CachedMachine:
    """``machine`` with its :meth:`pseudo_labels` read from / written to ``folder``; everything
    else is the machine's own.

    Args:
        machine: a frozen recognizer (:class:`~icm_lib.recognition.FrozenDetector` /
            :class:`~icm_lib.recognition.FrozenSegmenter`).
        folder: the cache root (``<data>/cache/pseudo``); the machine's own subfolder is named
            by its identity.
        max_bytes: the bound of the machine's subfolder.
    """

    def __init__(self, machine, folder: str | Path, max_bytes: int | None = None):
        self.machine = machine
        identity = hashlib.sha256(
            repr(
                (
                    type(machine).__name__,
                    _settings(machine),
                    _settings(machine.model),
                    state_fingerprint(machine.model.state_dict(), length=20),
                )
            ).encode()
        ).hexdigest()[:16]
        self.folder = Path(folder) / identity
        mb = int(os.environ.get("ICM_PSEUDO_CACHE_MB", DEFAULT_MB))
        self.max_bytes = max_bytes if max_bytes is not None else mb * 2**20
        self.hits = self.misses = 0
        self._disk_ok = True

    def __getattr__(self, name):  # the machine's task loss, aux layer, predict, ...
        return getattr(self.machine, name)

    def pseudo_labels(self, x: torch.Tensor):
        path = self.folder / f"{x.device.type}-{batch_key(x)}.pt"
        return _to(
            load_or_compute(lambda: self._stored(path), lambda: self._label(x, path)), x.device
        )

    def _stored(self, path: Path):
        """The labels stored at ``path`` (on the CPU), or ``None``: none, or damaged (removed)."""
        if not path.is_file():
            return None
        try:
            labels = load_checkpoint(path)["labels"]
        except (CheckpointError, KeyError):
            path.unlink(missing_ok=True)
            return None
        self.hits += 1
        os.utime(path)  # recently used
        return labels

    def _label(self, x: torch.Tensor, path: Path):
        """The machine's labels of ``x``, stored at ``path`` while the disk takes them."""
        labels = self.machine.pseudo_labels(x)
        self.misses += 1
        if self._disk_ok:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                atomic_torch_save({"labels": _to(labels, "cpu")}, path)
                if self.misses % 50 == 1:
                    self._trim()
            except (DiskFullError, FileWriteError, OSError) as exc:
                self._disk_ok = False
                warnings.warn(
                    f"pseudo-label cache off for this run ({exc}); labels are computed each step",
                    stacklevel=3,
                )
        return labels

    def _trim(self) -> None:
        files = [(p.stat(), p) for p in self.folder.glob("*.pt")]
        total = sum(st.st_size for st, _ in files)
        if total <= self.max_bytes:
            return
        for st, p in sorted(files, key=lambda f: f[0].st_mtime):
            p.unlink(missing_ok=True)
            total -= st.st_size
            if total <= self.max_bytes * 0.9:
                break


def _simple(v) -> bool:
    if v is None or isinstance(v, (bool, int, float, str)):
        return True
    if isinstance(v, (tuple, list)):
        return all(_simple(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _simple(x) for k, x in v.items())
    return False


#: attributes a module (or a subclass) sets itself on its first forward pass, from the shapes it
#: meets: not settings, and left out of the identity, which must not change once the recognizer
#: has run (torchvision's MultiScaleRoIAlign infers its levels' scales from the first feature
#: maps and builds its level mapper, both ``None`` before; kept in, a detector's labels went to
#: another folder after its first use, and the second run of a study computed them all again)
DERIVED = {"MultiScaleRoIAlign": ("scales", "map_levels")}


def _derived(module) -> set[str]:
    return {k for c in type(module).__mro__ for k in DERIVED.get(c.__name__, ())}


def _settings(obj) -> list:
    """Every plain setting of ``obj`` and (for a module) of its submodules -- thresholds,
    proposal counts, resize sizes: what decides the labels besides the weights (not the
    :data:`DERIVED` attributes)."""
    import torch.nn as nn

    items = obj.named_modules() if isinstance(obj, nn.Module) else [("", obj)]
    settings = []
    for name, m in items:
        skip = {"training", *_derived(m)}
        settings += [
            (name, k, repr(v)) for k, v in sorted(vars(m).items()) if k not in skip and _simple(v)
        ]
    return settings


def _to(labels, device):
    if isinstance(labels, torch.Tensor):
        return labels.to(device)
    return [{k: v.to(device) for k, v in t.items()} for t in labels]


def cached(machine, cache_dir: str | Path):
    """``machine`` behind the cache in ``<cache_dir>/pseudo`` (the machine itself when the cache
    is off)."""
    return CachedMachine(machine, Path(cache_dir) / "pseudo") if enabled() else machine
