"""Reading any image a user hands us into an RGB tensor in [0, 1]: one function, explicit rules.

:func:`to_rgb_tensor` is the single door every image goes through (the datasets, the benchmarks,
:meth:`icm_lib.codec.ICMCodec.compress` and the ``encode`` command). Its rules depend only on the
image's *type* (dtype, Pillow mode), never on its values: an integer image is never rescaled
because of its maximum. Values the rules cannot map to [0, 1] -- non-finite, out of range, an
integer type of unknown bit depth -- raise :class:`~icm_lib.errors.ImageError` saying what to
convert to.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import ImageError

ImageLike = str | os.PathLike | np.ndarray | torch.Tensor | Image.Image

#: Pillow modes read with a premultiplied alpha channel (colour already multiplied by alpha)
_PREMULTIPLIED = ("La", "RGBa")
#: Pillow modes whose values are 16-bit integers (``I``: see :func:`to_rgb_tensor`)
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
#: Pillow modes read as they are (their arrays are (H, W[, C]) of a dtype the rules cover)
_DIRECT = ("1", "L", "LA", "RGB", "RGBA", "F", *_PREMULTIPLIED)

_REFUSED_INT = (
    "{where} has an integer type of unknown bit depth ({dtype}), so its values cannot be "
    "mapped to [0, 1]; convert it to uint8 (0..255), uint16 (0..65535) or float in [0, 1] first "
    "(e.g. x.astype(np.uint8), x.to(torch.uint8), or x / 255.0 as float)"
)


def _dtype_rule(dtype) -> str:
    """``"bool"``, ``"uint8"``, ``"uint16"``, ``"float"`` or ``"int"`` (refused) for a numpy
    or torch dtype; anything else raises."""
    if isinstance(dtype, torch.dtype):
        if dtype == torch.bool:
            return "bool"
        if dtype == torch.uint8:
            return "uint8"
        if dtype == getattr(torch, "uint16", None):
            return "uint16"
        if dtype.is_floating_point:
            return "float"
        if dtype.is_complex:
            raise ImageError(f"{dtype} image: complex values are not pixels")
        return "int"
    dtype = np.dtype(dtype)
    if not dtype.isnative:  # big-endian uint16 (TIFF, PNM) is uint16
        dtype = dtype.newbyteorder("=")
    if dtype == np.bool_:
        return "bool"
    if dtype == np.uint8:
        return "uint8"
    if dtype == np.uint16:
        return "uint16"
    if np.issubdtype(dtype, np.floating):
        return "float"
    if np.issubdtype(dtype, np.integer):
        return "int"
    raise ImageError(f"unsupported image dtype {dtype}; use uint8, uint16 or float in [0, 1]")


def _check_float(t: torch.Tensor, where: str) -> None:
    """Float values must be finite and lie in [0, 1]."""
    finite = torch.isfinite(t)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise ImageError(
            f"{where} holds {bad} NaN or infinite value{'s' * (bad > 1)} (of {t.numel()}): "
            "it cannot be coded; find where they come from (or replace them, e.g. "
            "torch.nan_to_num(x, 0.0) / np.nan_to_num)"
        )
    lo, hi = float(t.min()), float(t.max())
    if lo < 0.0 or hi > 1.0:
        raise ImageError(
            f"{where} is float with values in [{lo:.4g}, {hi:.4g}]; float images must lie in "
            "[0, 1]: divide 8-bit values by 255, 16-bit values by 65535 (or clamp an "
            "overshoot with x.clamp(0, 1))"
        )


def _to_float(t: torch.Tensor, rule: str, where: str) -> torch.Tensor:
    """Apply one dtype rule of :func:`to_rgb_tensor`; returns float32 in [0, 1]."""
    if rule == "bool":
        return t.to(torch.float32)
    if rule == "uint8":
        return t.to(torch.float32) / 255.0
    if rule == "uint16":
        return t.to(torch.float32) / 65535.0
    if rule == "float":
        _check_float(t, where)
        return t.to(torch.float32, copy=True)  # never the caller's own storage
    raise ImageError(_REFUSED_INT.format(where=where, dtype=t.dtype))


def _from_array(arr: np.ndarray, where: str) -> tuple[torch.Tensor, str]:
    """An (H, W[, C]) array as a (C, H, W) tensor of a dtype torch holds, and its rule."""
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 2, 3, 4):
        hint = (
            "; a (C, H, W) array? transpose it with x.transpose(1, 2, 0)"
            if arr.ndim == 3 and arr.shape[0] in (1, 2, 3, 4)
            else ""
        )
        raise ImageError(
            f"{where} must be (H, W) or (H, W, C) with C in 1..4, got {arr.shape}{hint}"
        )
    _check_size(arr.shape[:2], where)
    rule = _dtype_rule(arr.dtype)
    if rule == "int":
        raise ImageError(_REFUSED_INT.format(where=where, dtype=arr.dtype))
    if rule == "uint16":  # torch's uint16 supports little: widen exactly
        arr = arr.astype(np.int32)
    elif not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    arr = np.ascontiguousarray(arr)
    if not arr.flags.writeable:  # Pillow's arrays are read-only; torch wants its own
        arr = arr.copy()
    t = torch.from_numpy(arr).permute(2, 0, 1)
    return t, rule


def _check_size(hw, where: str) -> None:
    if 0 in tuple(hw):
        raise ImageError(f"{where} is empty ({tuple(hw)[0]}x{tuple(hw)[1]} pixels)")


def _open(path: Path) -> Image.Image:
    if not path.exists():
        raise ImageError(f"no image file at {path}")
    if not path.is_file():
        raise ImageError(f"{path} is not a file")
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except Image.DecompressionBombError as exc:
        raise ImageError(
            f"{path} claims more pixels than Pillow opens ({exc}); if the image is real, "
            "downscale it first, or raise PIL.Image.MAX_IMAGE_PIXELS (None: no limit) "
            "before calling"
        ) from None
    except Exception as exc:  # Pillow's plugins raise OSError, ValueError, SyntaxError, ...
        raise ImageError(
            f"cannot read image {path} ({type(exc).__name__}: {exc}); is it a complete image "
            "file in a format Pillow reads (PNG, JPEG, TIFF, BMP, WebP, ...)?"
        ) from None


def _from_pil(im: Image.Image, where: str) -> tuple[torch.Tensor, str, bool]:
    """A PIL image as (C, H, W), its dtype rule, and whether its alpha is premultiplied."""
    _check_size((im.height, im.width), where)
    mode = im.mode
    try:
        if mode in _SIXTEEN_BIT:
            arr = np.asarray(im)
            if mode == "I":
                lo, hi = int(arr.min()), int(arr.max())
                if lo < 0 or hi > 65535:
                    raise ImageError(
                        f"{where} has Pillow mode 'I' (read as 16-bit) with values in "
                        f"[{lo}, {hi}], outside 0..65535; convert it to uint16 (0..65535) or "
                        "float in [0, 1] first"
                    )
            arr = arr.astype(np.uint16)  # also makes the byte order native
        elif mode in _DIRECT:
            arr = np.asarray(im)
        elif mode in ("P", "PA"):
            has_alpha = mode == "PA" or "transparency" in im.info
            arr = np.asarray(im.convert("RGBA" if has_alpha else "RGB"))
        else:  # CMYK, YCbCr, LAB, HSV, RGBX, ...: Pillow's own conversion
            arr = np.asarray(im.convert("RGB"))
    except ImageError:
        raise
    except Exception as exc:  # a lazily loaded, cut file; a conversion Pillow lacks
        raise ImageError(
            f"cannot convert {where} (Pillow mode {mode!r}) to RGB ({type(exc).__name__}: "
            f"{exc}); convert it to 'RGB' or 'L' first"
        ) from None
    t, rule = _from_array(arr, where)
    return t, rule, mode in _PREMULTIPLIED


def _from_tensor(image: torch.Tensor, where: str) -> torch.Tensor:
    t = image.detach()
    if t.ndim == 4:
        if t.shape[0] != 1:
            raise ImageError(f"{where} must hold one image (1, C, H, W), got {tuple(t.shape)}")
        t = t[0]
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3 or t.shape[0] not in (1, 2, 3, 4):
        hint = (
            "; an (H, W, C) tensor? permute it with x.permute(2, 0, 1)"
            if t.ndim == 3 and t.shape[-1] in (1, 2, 3, 4)
            else ""
        )
        raise ImageError(
            f"{where} must be (C, H, W) or (1, C, H, W) with C in 1..4, got "
            f"{tuple(image.shape)}{hint}"
        )
    return t


def to_rgb_tensor(image: ImageLike, batch: bool = False) -> torch.Tensor:
    """Convert any image to float32 RGB in [0, 1]: (3, H, W), or (1, 3, H, W) with ``batch``.

    The forms and their layouts:

    ==========================  ===========================================================
    form                        layout
    ==========================  ===========================================================
    path (``str``, ``Path``)    opened with Pillow, then read as its PIL image
    PIL image                   by mode, see the second table
    numpy array                 (H, W) or (H, W, C), C in 1..4
    torch tensor                (H, W), (C, H, W) or (1, C, H, W), C in 1..4; the result
                                stays on the tensor's device
    ==========================  ===========================================================

    C = 1 is grayscale (replicated to RGB), 2 grayscale + alpha, 3 RGB, 4 RGBA; alpha is
    composited over white. The values, by dtype (arrays and tensors alike):

    =======================================  ================================================
    dtype                                    value in [0, 1]
    =======================================  ================================================
    bool                                     False → 0, True → 1
    uint8                                    v / 255
    uint16                                   v / 65535
    float16, bfloat16, float32, float64      v as it is; must be finite and lie in [0, 1]
                                             (else ImageError: divide by 255 / 65535)
    int8, int16, int32, int64, uint32,       refused (ImageError): the bit depth is unknown;
    uint64                                   convert to uint8 / uint16 or float first
    =======================================  ================================================

    The rules never look at the image's maximum: an int64 image whose maximum is 300 is
    refused, not scaled by 255 or by 65535 depending on it. By Pillow mode:

    ====================================  ======================================================
    mode                                  read as
    ====================================  ======================================================
    ``1``                                 bool
    ``L``, ``RGB``                        uint8
    ``LA``, ``RGBA``                      uint8, alpha composited over white
    ``La``, ``RGBa`` (premultiplied)      uint8, composited over white as c + (1 - alpha)
    ``P``, ``PA``                         the palette's RGB (RGBA if it has transparency)
    ``I;16``, ``I;16L``, ``I;16B``        uint16 (v / 65535)
    ``I`` (32-bit signed)                 16-bit, v / 65535 (Pillow opens 16-bit grayscale
                                          files as ``I``); values outside 0..65535 refused
    ``F`` (32-bit float)                  float: must lie in [0, 1] (a float TIFF in [0, 1]
                                          keeps its values)
    ``CMYK``, ``YCbCr``, ``HSV``, ...     Pillow's conversion to RGB (refused where Pillow
                                          has none)
    ====================================  ======================================================

    Raises:
        ImageError: a missing, unreadable or cut file; a file claiming more pixels than
            ``PIL.Image.MAX_IMAGE_PIXELS`` allows (Pillow's decompression-bomb guard); an empty
            image (a side of 0); another layout; NaN or infinite values; float values outside
            [0, 1]; an integer dtype other than uint8 / uint16; an object that is no image.
    """
    premultiplied = False
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        where = f"image {path}"
        image = _open(path)
    elif isinstance(image, Image.Image):
        where = f"PIL image ({image.mode})"
    elif isinstance(image, np.ndarray):
        where = f"{image.dtype} array image"
    else:
        where = f"{getattr(image, 'dtype', '')} tensor image".lstrip()
    if isinstance(image, Image.Image):
        t, rule, premultiplied = _from_pil(image, where)
    elif isinstance(image, np.ndarray):
        t, rule = _from_array(image, where)
    elif isinstance(image, torch.Tensor):
        t = _from_tensor(image, where)
        _check_size(t.shape[-2:], where)
        rule = _dtype_rule(t.dtype)
    else:
        raise ImageError(
            f"cannot make an image from {type(image).__name__}; pass a path, a PIL image, "
            "a numpy array (H, W[, C]) or a tensor (C, H, W)"
        )
    x = _to_float(t, rule, where)
    if x.shape[0] in (2, 4):  # alpha: composite over white
        alpha, colour = x[-1:], x[:-1]
        x = colour + (1.0 - alpha) if premultiplied else colour * alpha + (1.0 - alpha)
        x = x.clamp_(0.0, 1.0) if premultiplied else x
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    x = x.contiguous()
    return x[None] if batch else x


__all__ = ["ImageLike", "to_rgb_tensor"]
