"""Reading any image a user hands us into an RGB tensor in [0, 1].

Grayscale is replicated to three channels, RGBA is composited over white, 16-bit and float images
are rescaled. What cannot be converted raises :class:`~icm_lib.errors.ImageError`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import ImageError

ImageLike = str | Path | np.ndarray | torch.Tensor | Image.Image


def _array_to_float(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    if arr.dtype == bool:
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ImageError("image has NaN or infinite values")
        if arr.min() < 0 or arr.max() > 1:
            raise ImageError(
                f"float image values must lie in [0, 1], got "
                f"[{arr.min():.3g}, {arr.max():.3g}]; divide by 255 first?"
            )
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.integer):
        if arr.min() < 0 or arr.max() > 65535:
            raise ImageError(f"integer image values outside 0..65535 ({arr.dtype})")
        return arr.astype(np.float32) / (255.0 if arr.max() <= 255 else 65535.0)
    raise ImageError(f"unsupported image dtype {arr.dtype}")


def to_rgb_tensor(image: ImageLike) -> torch.Tensor:
    """Convert a path, PIL image, array (H, W[, C]) or tensor (C, H, W) to (3, H, W) in [0, 1].

    Raises:
        ImageError: unreadable file, empty image, or a channel count other than 1, 2, 3, 4.
    """
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise ImageError(f"no image file at {path}")
        try:
            with Image.open(path) as im:
                im.load()
                image = im.copy()
        except (UnidentifiedImageError, OSError) as exc:
            raise ImageError(f"cannot read image {path}: {exc}") from exc
    if isinstance(image, Image.Image):
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(image).astype(np.uint16 if image.mode.startswith("I;16") else np.int64)
        elif image.mode in ("RGB", "RGBA", "L", "LA"):
            arr = np.asarray(image)
        else:
            arr = np.asarray(image.convert("RGBA" if "A" in image.mode else "RGB"))
    elif isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.ndim == 4 and t.shape[0] == 1:
            t = t[0]
        if t.ndim == 3 and t.shape[0] in (1, 2, 3, 4):
            t = t.permute(1, 2, 0)
        arr = t.numpy()
    elif isinstance(image, np.ndarray):
        arr = image
    else:
        raise ImageError(f"cannot make an image from {type(image).__name__}")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 2, 3, 4):
        raise ImageError(f"image must be (H, W) or (H, W, C) with C in 1..4, got {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageError(f"image is empty: {arr.shape}")
    x = _array_to_float(np.ascontiguousarray(arr))
    if x.shape[-1] in (2, 4):  # alpha: composite over white
        alpha = x[..., -1:]
        x = x[..., :-1] * alpha + (1.0 - alpha)
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1).contiguous()
