"""The ROI-based bit-allocation baseline of Ahonen et al., as Iino et al. evaluates it (section 4.1).

At encoding time a binary ROI mask (here the union of the ground-truth instance masks, as in the
paper) is resized to the latent's resolution, and every latent value *outside* the ROI is divided
by a quantization factor QF > 1 (1.4 in the paper) before quantization::

    x ──► g_a ──► y ──► y / QF outside the ROI ──► quantize, entropy-code ──► ŷ ──► g_s ──► x̂

Smaller values outside the ROI mean lower variance there, so fewer bits; the decoder is unchanged
and decodes the scaled latent as it is (the background comes out degraded). It needs no training:
it is applied to the baseline codec (Eq. 4) for detection only, since Pascal-Context labels every
pixel and has no ROI.

Use :func:`roi_scaling` around any call that runs ``g_a`` (``compress``, ``roundtrip``, ``forward``).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from .codec import ICMCodec
from .data.transforms import pad_to_multiple
from .errors import ConfigError


def latent_roi_mask(
    mask: torch.Tensor, image_size: tuple[int, int], stride: int = 16
) -> torch.Tensor:
    """The ROI at the latent's resolution.

    Args:
        mask: (H0, W0) bool, the ROI at the dataset's original size.
        image_size: (H, W) of the image the codec receives (before its pad-to-64); the mask is
            resized to it (nearest) when the dataset resized the image.
        stride: the codec's total downsampling (16 for the CompressAI models here).

    Returns:
        (1, 1, Hp/stride, Wp/stride) bool over the padded image: a latent cell belongs to the ROI
        when any pixel it covers does (so object borders keep their bits).
    """
    m = mask.to(torch.float32)[None, None]
    if tuple(m.shape[-2:]) != tuple(image_size):
        m = F.interpolate(m, size=tuple(image_size), mode="nearest")
    m, _ = pad_to_multiple(m, mode="constant")  # padding is background
    return F.max_pool2d(m, stride) > 0


@contextlib.contextmanager
def roi_scaling(codec: ICMCodec, latent_mask: torch.Tensor, qf: float = 1.4):
    """Divide g_a's output outside ``latent_mask`` by ``qf`` while the block runs.

    Args:
        latent_mask: from :func:`latent_roi_mask`, matching the latent's spatial size.
        qf: the quantization factor (> 1 saves bits outside the ROI; 1 changes nothing).

    Raises:
        ValueError: ``qf`` < 1, or a latent whose size does not match the mask.
    """
    if qf < 1:
        raise ConfigError(f"QF must be >= 1 (it divides the background latent), got {qf}")

    def hook(module, args, output):
        if output.shape[-2:] != latent_mask.shape[-2:]:
            raise ValueError(
                f"ROI mask {tuple(latent_mask.shape[-2:])} does not match the "
                f"latent {tuple(output.shape[-2:])}"
            )
        scale = torch.where(latent_mask.to(output.device), 1.0, 1.0 / qf).to(output.dtype)
        return output * scale

    handle = codec.model.g_a.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def latent_bits(codec: ICMCodec, x: torch.Tensor) -> torch.Tensor:
    """Estimated bits of ŷ per latent position (B, H/16, W/16), as the range coder sees them."""
    with torch.no_grad():
        lik = codec.coder_likelihoods(x)["y"]
    return -torch.log2(lik).sum(1)


def bits_on_objects(codec: ICMCodec, dataset, n: int, device: torch.device) -> dict[str, float]:
    """Where a codec spends its bits, over the first ``n`` images of a detection dataset: the
    share of ŷ's estimated bits (:func:`latent_bits`) in the latent cells that cover a
    ground-truth object (:func:`latent_roi_mask`), the share of such cells, and their ratio
    (``concentration``: 1 = bits spread like the area; above 1 = bits on the objects).

    A codec trained for a machine that needs the objects should concentrate its bits there; the
    difference between two codecs' shares says where the extra bits of one of them landed."""
    bits_in = bits_all = cells_in = cells_all = 0.0
    codec = codec.to(device).eval()
    for i in range(min(n, len(dataset))):
        image = dataset[i][0]
        x, _ = pad_to_multiple(image[None].to(device))
        bits = latent_bits(codec, x)[0].cpu()
        mask = latent_roi_mask(dataset.roi_mask(i), tuple(image.shape[-2:]))[0, 0]
        bits_in += float(bits[mask].sum())
        bits_all += float(bits.sum())
        cells_in += float(mask.sum())
        cells_all += mask.numel()
    bits_share, area_share = bits_in / bits_all, cells_in / cells_all
    return {
        "bits_share": bits_share,
        "area_share": area_share,
        "concentration": bits_share / area_share if area_share else float("nan"),
        "images": min(n, len(dataset)),
    }
