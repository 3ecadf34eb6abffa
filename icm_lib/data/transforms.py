"""The paper's image geometry: random training crops; resize-shorter-edge and pad-to-64 for eval.

Boxes (COCO ``[x, y, w, h]`` in pixels, or torchvision ``[x1, y1, x2, y2]``) and label maps follow
the image through every transform.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MULTIPLE = 64


def pad_to_multiple(
    x: torch.Tensor, multiple: int = MULTIPLE, mode: str = "replicate"
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad (B, C, H, W) or (C, H, W) at the bottom/right to a multiple of ``multiple``.

    Returns:
        The padded tensor and ``(pad_h, pad_w)``; :func:`crop_padding` undoes it.
    """
    h, w = x.shape[-2:]
    pad_h = (-h) % multiple
    pad_w = (-w) % multiple
    if pad_h or pad_w:
        squeeze = x.ndim == 3
        xb = x[None] if squeeze else x
        if mode == "constant":
            xb = F.pad(xb, (0, pad_w, 0, pad_h))
        else:
            # replicate handles pads larger than the image (reflect cannot)
            xb = F.pad(xb, (0, pad_w, 0, pad_h), mode=mode)
        x = xb[0] if squeeze else xb
    return x, (pad_h, pad_w)


def crop_padding(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Undo :func:`pad_to_multiple`: keep the top-left ``height x width``."""
    return x[..., :height, :width]


def resize_short_edge(
    image: torch.Tensor,
    short_edge: int | None,
    boxes: torch.Tensor | None = None,
    label: torch.Tensor | None = None,
):
    """Resize (3, H, W) so min(H, W) == short_edge (bilinear; labels nearest; boxes scaled).

    ``short_edge=None`` returns the inputs unchanged.
    """
    if short_edge is None:
        return image, boxes, label
    h, w = image.shape[-2:]
    scale = short_edge / min(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    image = F.interpolate(
        image[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=scale < 1
    )[0].clamp(0, 1)
    if boxes is not None and boxes.numel():
        boxes = boxes * torch.tensor(
            [nw / w, nh / h, nw / w, nh / h], dtype=boxes.dtype, device=boxes.device
        )
    if label is not None:
        label = F.interpolate(label[None, None].float(), size=(nh, nw), mode="nearest")[0, 0]
        label = label.to(torch.long)
    return image, boxes, label


def random_crop(
    image: torch.Tensor,
    size: int,
    generator: torch.Generator,
    boxes: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    label_map: torch.Tensor | None = None,
    min_visible: float = 0.3,
):
    """A random ``size x size`` crop (the image is replicate-padded first if smaller).

    Boxes (x1, y1, x2, y2) are clipped to the crop; a box keeping less than ``min_visible`` of its
    area is dropped with its label.
    """
    h, w = image.shape[-2:]
    if h < size or w < size:
        ph, pw = max(0, size - h), max(0, size - w)
        image = F.pad(image[None], (0, pw, 0, ph), mode="replicate")[0]
        if label_map is not None:
            label_map = F.pad(label_map, (0, pw, 0, ph), value=0)
        h, w = image.shape[-2:]
    top = int(torch.randint(0, h - size + 1, (1,), generator=generator))
    left = int(torch.randint(0, w - size + 1, (1,), generator=generator))
    image = image[:, top : top + size, left : left + size]
    if label_map is not None:
        label_map = label_map[top : top + size, left : left + size]
    if boxes is not None:
        shifted = boxes - torch.tensor(
            [left, top, left, top], dtype=boxes.dtype, device=boxes.device
        )
        clipped = shifted.clamp(min=0, max=size)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        kept_area = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
        keep = kept_area >= min_visible * area.clamp(min=1e-6)
        keep &= (clipped[:, 2] - clipped[:, 0] >= 2) & (clipped[:, 3] - clipped[:, 1] >= 2)
        boxes = clipped[keep]
        if labels is not None:
            labels = labels[keep]
    return image, boxes, labels, label_map
