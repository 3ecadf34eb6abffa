"""Pretrained weights: the real download path, failing fast and clearly when offline.

CompressAI's zoo, torchvision and timm/smp all download through ``torch.hub`` or the Hugging Face
hub. Offline, those calls can hang for minutes on DNS or TCP time-outs. :func:`require_download`
checks the local cache first, then probes the host for a few seconds, and raises
:class:`~icm_lib.errors.WeightsUnavailableError` with what to do instead.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch

from .errors import WeightsUnavailableError

PROBE_TIMEOUT_S = 3.0


def hub_cached(url: str) -> Path | None:
    """The torch.hub cache file for ``url`` if it was downloaded before."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
    return path if path.is_file() else None


def host_reachable(host: str, port: int = 443, timeout: float = PROBE_TIMEOUT_S) -> bool:
    if os.environ.get("ICM_OFFLINE") == "1":
        return False
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_download(url: str, what: str) -> None:
    """Return if ``url`` is cached or its host answers; else raise WeightsUnavailableError."""
    if hub_cached(url):
        return
    host = urlparse(url).hostname or url
    if not host_reachable(host):
        raise WeightsUnavailableError(
            f"{what}: pretrained weights need a download from {host}, which cannot be reached "
            f"(offline?). Run once with internet (they are cached in {torch.hub.get_dir()}), "
            "pass a local checkpoint path, or use pretrained=False (the 'cpu' profile trains its "
            "own models on the embedded data)."
        )


@contextlib.contextmanager
def hf_offline_unless_reachable(host: str = "huggingface.co"):
    """Set ``HF_HUB_OFFLINE=1`` while building smp/timm models when the hub cannot be reached,
    so a missing file fails at once instead of retrying for minutes."""
    try:
        from huggingface_hub import constants
    except ImportError:  # smp without the hub: nothing to guard
        yield
        return
    old_env, old_const = os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE
    offline = old_const or not host_reachable(host)
    # huggingface_hub reads the variable once at import; its constant is what calls consult
    os.environ["HF_HUB_OFFLINE"] = "1" if offline else (old_env or "0")
    constants.HF_HUB_OFFLINE = offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old_const
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env
