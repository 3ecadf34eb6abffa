"""Tiled synthesis: ``g_s`` run on overlapping tiles of ŷ, so decoding memory stays bounded.

A decoder's memory is set by ``g_s``'s activations at the full image size (tens to hundreds of
bytes per pixel, far more than the ŷ the entropy decoder holds). :func:`synthesize_tiled` runs
``g_s`` on ``tile x tile`` latent tiles, each widened by ``overlap`` latents on every side that
stays inside ŷ, keeps each output tile's centre and stitches them into the image::

    ŷ (1, M, h, w) ──► tiles of (tile + 2·overlap)² latents ──► g_s ──► crop the centre
                                                                            │
    x̂ (1, C, s·h, s·w) ◄── written in place, tile by tile ◄─────────────────┘

Every layer of CompressAI's synthesis transforms is local (convolutions, transposed
convolutions, sub-pixel convolutions, GDN across channels, the local attention blocks of
cheng2020-attn), so a pixel depends on a bounded neighbourhood of ŷ; with ``overlap`` at least
that radius the stitched image equals the full one up to float rounding, and smaller overlaps
trade an error at the seams for speed (:func:`seam_error` measures it). Peak memory becomes the
output image plus one tile's activations, instead of every activation at the full size.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .errors import ConfigError

#: pixels per latent of CompressAI's image codecs (four stride-2 stages)
SCALE = 16
#: overlap (latents) from which tiled synthesis equals the full one to float rounding (< 1e-5),
#: measured on random and briefly trained codecs (tests/test_tiling.py): the hyperprior
#: families' g_s is four 5x5 transposed convolutions (a radius of 2 latents); cheng2020's
#: residual and attention blocks at every scale reach about 11 latents, of which the last
#: three change pixels by less than 1e-5
EXACT_OVERLAP = {
    "bmshj2018-factorized": 2,
    "bmshj2018-hyperprior": 2,
    "mbt2018-mean": 2,
    "mbt2018": 2,
    "cheng2020-anchor": 8,
    "cheng2020-attn": 8,
}


def exact_overlap(codec_name: str) -> int:
    """:data:`EXACT_OVERLAP` of a CompressAI codec name (the widest, 8, for any other)."""
    return EXACT_OVERLAP.get(codec_name, max(EXACT_OVERLAP.values()))


@torch.no_grad()
def synthesize_tiled(
    g_s: nn.Module, y_hat: torch.Tensor, tile: int = 32, overlap: int = 8, scale: int = SCALE
) -> torch.Tensor:
    """``g_s(y_hat)`` computed tile by tile.

    Args:
        g_s: the synthesis transform (eval mode); any local network mapping (1, M, h, w) to
            (1, C, scale·h, scale·w).
        y_hat: ŷ (1, M, h, w) on ``g_s``'s device.
        tile: side of the latent tiles whose centres are kept (``scale·tile`` pixels).
        overlap: latents of context added on each side of a tile (inside ŷ only).
        scale: pixels per latent.

    Returns:
        x̂ (1, C, scale·h, scale·w) on ``y_hat``'s device, the dtype of ``g_s``'s output.
    """
    if y_hat.ndim != 4 or y_hat.shape[0] != 1:
        raise ValueError(f"y_hat must be (1, M, h, w), got {tuple(y_hat.shape)}")
    if tile < 1 or overlap < 0:
        raise ConfigError(f"tile must be >= 1 and overlap >= 0, got {tile}, {overlap}")
    h, w = y_hat.shape[-2:]
    if h <= tile and w <= tile:
        return g_s(y_hat)
    out = None
    for i in range(0, h, tile):
        for j in range(0, w, tile):
            a, b = max(i - overlap, 0), min(i + tile + overlap, h)
            c, d = max(j - overlap, 0), min(j + tile + overlap, w)
            part = g_s(y_hat[..., a:b, c:d])
            if part.shape[-2:] != ((b - a) * scale, (d - c) * scale):
                raise ValueError(
                    f"g_s maps {b - a}x{d - c} latents to {tuple(part.shape[-2:])} pixels, not "
                    f"x{scale}: pass its scale"
                )
            if out is None:
                out = torch.empty(
                    (1, part.shape[1], h * scale, w * scale), dtype=part.dtype, device=part.device
                )
            th, tw = min(tile, h - i), min(tile, w - j)
            out[..., i * scale : (i + th) * scale, j * scale : (j + tw) * scale] = part[
                ...,
                (i - a) * scale : (i - a + th) * scale,
                (j - c) * scale : (j - c + tw) * scale,
            ]
            del part
    return out


@torch.no_grad()
def seam_error(
    g_s: nn.Module, y_hat: torch.Tensor, tile: int, overlap: int, scale: int = SCALE
) -> float:
    """Largest absolute difference between tiled and full synthesis of ``y_hat`` (pixels in the
    codec's [0, 1] scale, before clamping)."""
    full = g_s(y_hat)
    return float((synthesize_tiled(g_s, y_hat, tile, overlap, scale) - full).abs().max())


__all__ = ["EXACT_OVERLAP", "SCALE", "exact_overlap", "seam_error", "synthesize_tiled"]
