"""R-D points from real bitstreams: every image is compressed to bytes and decoded from them."""
from __future__ import annotations

import torch

from .codec import ICMCodec
from .metrics import ms_ssim, psnr


class BitstreamRoundTrip:
    """A batch transform (B, 3, H, W) -> decoded images through real bytes; it accumulates the
    actual bits, the estimated bits and the fidelity of everything it coded."""

    def __init__(self, codec: ICMCodec):
        self.codec = codec.eval()
        self.bits = self.estimate_bits = self.pixels = 0.0
        self.psnr_sum = self.msssim_sum = 0.0
        self.images = 0

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        decoded = []
        for x in images:
            coded = self.codec.roundtrip(x[None])
            pixels = x.shape[-1] * x.shape[-2]
            self.bits += coded.bpp * pixels
            self.estimate_bits += coded.bpp_estimate * pixels
            self.pixels += pixels
            self.psnr_sum += psnr(coded.x_hat, x[None].to(coded.x_hat))
            self.msssim_sum += ms_ssim(coded.x_hat, x[None].to(coded.x_hat))
            self.images += 1
            decoded.append(coded.x_hat[0])
        return torch.stack(decoded).to(images.device)

    def summary(self) -> dict[str, float]:
        return {"bpp": self.bits / self.pixels, "bpp_estimate": self.estimate_bits / self.pixels,
                "psnr": self.psnr_sum / self.images, "ms_ssim": self.msssim_sum / self.images,
                "images": self.images}
