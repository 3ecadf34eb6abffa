"""Pretrained weights: the real download path, failing fast and clearly when offline, and local
files instead of a download.

CompressAI's zoo, torchvision and MMSegmentation (mmengine) download through ``torch.hub``'s
cache, detectron2 through iopath's (fvcore's) cache, smp through the Hugging Face hub's. Offline,
those calls can hang for minutes on DNS or TCP time-outs. :func:`require_download` checks the
file the library would read first, then probes the host for a few seconds, and raises
:class:`~icm_lib.errors.WeightsUnavailableError` naming that exact file, the URL to fetch it from
and the profile field that takes a local path instead (:func:`offline_message`).

Where each library reads a hand-downloaded file (README "Weights on a machine without
internet")::

    torchvision, CompressAI, MMSegmentation   $TORCH_HOME/hub/checkpoints/<file name of the URL>
                                              (TORCH_HOME defaults to $XDG_CACHE_HOME/torch,
                                              i.e. ~/.cache/torch)
    detectron2                                $FVCORE_CACHE/<path of the URL after the host>
                                              (FVCORE_CACHE defaults to ~/.torch/iopath_cache)
    smp (Hugging Face)                        $HF_HUB_CACHE/models--<org>--<repo>/snapshots/
                                              <revision>/{config.json, model.safetensors}

A local file given in the profile (``codec.checkpoint``, ``recognition.det_checkpoint``,
``recognition.seg_checkpoint``) is read with :func:`load_state_file`; its identity in cache keys
is its content hash (:func:`file_identity`), never its path.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch

from .errors import CheckpointError, ConfigError, WeightsUnavailableError

PROBE_TIMEOUT_S = 3.0

#: where torch.hub's cache lives, in words (torchvision, CompressAI, mmengine read it)
TORCH_HUB_FOLDER = (
    "$TORCH_HOME/hub/checkpoints; TORCH_HOME defaults to $XDG_CACHE_HOME/torch, i.e. ~/.cache/torch"
)
PRETRAINED_FALSE = (
    "or use pretrained=False (the 'cpu' profile trains its own models on the embedded data)"
)


def torch_hub_file(url: str) -> Path:
    """The file ``torch.hub.load_state_dict_from_url(url)`` reads (and downloads to):
    ``<torch.hub.get_dir()>/checkpoints/<file name of the URL>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def hub_cached(url: str) -> Path | None:
    """The torch.hub cache file for ``url`` if it was downloaded (or placed there) before."""
    path = torch_hub_file(url)
    return path if path.is_file() else None


def host_reachable(host: str, port: int = 443, timeout: float = PROBE_TIMEOUT_S) -> bool:
    if os.environ.get("ICM_OFFLINE") == "1":
        return False
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def offline_message(
    what: str,
    files: list[tuple[str, Path]],
    folder: str,
    field: str | None,
    reason: str = "",
) -> str:
    """The text of a :class:`WeightsUnavailableError`: what is missing, each ``(url, path)`` to
    download and where the library reads it, the folder's environment variable, and the profile
    field that takes a local file instead."""
    host = urlparse(files[0][0]).hostname or files[0][0]
    reason = reason or f"{host} cannot be reached (offline?)"
    places = "; ".join(f"{url} -> {path}" for url, path in files)
    text = (
        f"{what}: the pretrained weights are not on this machine and {reason}. Download on a "
        f"machine with internet and put the file where the library reads it: {places} (the "
        f"folder is {folder})"
    )
    if field:
        name = Path(urlparse(files[-1][0]).path).name
        section, _, fld = field.partition(".")
        text += (
            f", or set the profile field {field} to the downloaded file "
            f"(get_profile(..., {section}__{fld}='/path/to/{name}'))"
        )
    return f"{text}, {PRETRAINED_FALSE}."


def require_download(
    url: str,
    what: str,
    *,
    cached: Path | None = None,
    folder: str = TORCH_HUB_FOLDER,
    field: str | None = None,
) -> None:
    """Return if the file the library reads for ``url`` exists or ``url``'s host answers; else
    raise :class:`WeightsUnavailableError` (:func:`offline_message`).

    Args:
        cached: that file (default: torch.hub's, :func:`torch_hub_file`).
        folder: its folder and environment variable, in words.
        field: the profile field that takes a local file instead (``"recognition.det_checkpoint"``).
    """
    cached = cached if cached is not None else torch_hub_file(url)
    if cached.is_file():
        return
    host = urlparse(url).hostname or url
    if not host_reachable(host):
        raise WeightsUnavailableError(offline_message(what, [(url, cached)], folder, field))


# ---------------------------------------------------------------------- local files
def local_file(path: str | os.PathLike, what: str, field: str) -> Path:
    """``path`` (a profile field's value) as an existing file, or WeightsUnavailableError."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightsUnavailableError(
            f"{what}: {field}={str(path)!r} is not a file; point it to the downloaded weights "
            f"or set {field}=None to use the library's download cache"
        )
    return p


def load_state_file(path: str | os.PathLike, what: str, field: str) -> dict:
    """The tensors of a local weights file: ``.safetensors``, or anything ``torch.load`` reads
    with ``weights_only=True`` (the zoos' ``.pth`` / ``.pth.tar``).

    Raises:
        WeightsUnavailableError: no such file.
        CheckpointError: the file is not a weights file (truncated, or not tensors).
    """
    p = local_file(path, what, field)
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(p), device="cpu")
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- any reader failure is a bad file
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(
            f"{what}: cannot read {field}={str(path)!r} ({type(exc).__name__}: {first}); it must "
            "be the weights file the library publishes (truncated or another format?)"
        ) from None


_IDENTITY: dict[tuple, str] = {}


def file_identity(path: str | os.PathLike, length: int = 16) -> str:
    """The identity of a weights file in cache keys: the first ``length`` hex digits of its
    SHA-256 (two clones with the same file get the same keys wherever it lies; other weights,
    other keys). Cached per (path, size, modification time).

    Raises:
        WeightsUnavailableError: no such file.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightsUnavailableError(
            f"weights file {str(path)!r} (a profile's checkpoint field) does not exist; its "
            "content decides the run keys, so it must be present"
        )
    st = p.stat()
    stamp = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if stamp not in _IDENTITY:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _IDENTITY[stamp] = h.hexdigest()
    return _IDENTITY[stamp][:length]


# ---------------------------------------------------------------------- CompressAI's zoo
def compressai_zoo_model(
    name: str, quality: int, metric: str = "mse", checkpoint: str | os.PathLike | None = None
) -> torch.nn.Module:
    """CompressAI's pretrained ``name`` at ``quality``: from ``checkpoint`` (a local copy of the
    zoo's file, the profile's ``codec.checkpoint``) when given, else through the zoo (torch.hub's
    cache, then a download; offline: :class:`WeightsUnavailableError` naming the file).

    Raises:
        ValueError: no such zoo model.
        WeightsUnavailableError: offline and not cached, or ``checkpoint`` missing.
        CheckpointError: ``checkpoint`` is not that model's weights.
    """
    from compressai import zoo
    from compressai.zoo import image as zoo_image
    from compressai.zoo.pretrained import load_pretrained

    try:
        url = zoo_image.model_urls[name][metric][quality]
    except KeyError:
        raise ConfigError(
            f"CompressAI has no pretrained {name} for metric={metric}, quality={quality}"
        ) from None
    what, field = f"CompressAI {name} q{quality} ({metric})", "codec.checkpoint"
    if checkpoint is None:
        require_download(url, what, field=field)
        return getattr(zoo, name.replace("-", "_"))(quality, metric=metric, pretrained=True)
    state = load_state_file(checkpoint, what, field)
    try:
        model = zoo_image.model_architectures[name].from_state_dict(load_pretrained(state))
    except (KeyError, RuntimeError, TypeError, AttributeError) as exc:
        raise CheckpointError(
            f"{what}: {field}={str(checkpoint)!r} does not hold {name} weights ({exc})"
        ) from None
    expected = tuple(zoo_image.cfgs[name][quality])
    got = (model.N, model.M)[: len(expected)]
    if got != expected:
        raise CheckpointError(
            f"{what}: {field}={str(checkpoint)!r} holds a {name} with N, M = {got}; quality "
            f"{quality} has {tuple(expected)}: pick the file of that quality ({url})"
        )
    return model


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
