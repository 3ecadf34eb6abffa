"""Metrics: rate (bpp), fidelity (PSNR, MS-SSIM), machine accuracy (mAP, mIoU) and BD-rate."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from .errors import BDRateError


def bpp_from_likelihoods(likelihoods: dict[str, torch.Tensor], num_pixels: int) -> torch.Tensor:
    """Estimated bits per pixel: -sum(log2 p) over all latents / (B * pixels)."""
    batch = next(iter(likelihoods.values())).shape[0]
    bits = sum(torch.log(lk).sum() for lk in likelihoods.values()) / -math.log(2)
    return bits / (batch * num_pixels)


def bpp_from_bytes(num_bytes: int, height: int, width: int) -> float:
    """Actual bits per pixel of a bitstream of ``num_bytes`` for an image of height x width."""
    return num_bytes * 8 / (height * width)


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> float:
    """Mean PSNR in dB over a batch of images (B, C, H, W) in [0, data_range]."""
    mse = ((x.float() - y.float()) ** 2).flatten(1).mean(1).clamp(min=1e-10)
    return float((10 * torch.log10(data_range**2 / mse)).mean())


def ms_ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> float:
    """Mean MS-SSIM (pytorch_msssim, 5 scales) over a batch (B, 3, H, W).

    The standard 11-px window needs images larger than 160 px; for smaller images the window
    shrinks to the largest odd size that fits (7 px at 128 px, 3 px at 64 px), a documented
    deviation that keeps all five scales. Images under 48 px raise ``ValueError``.
    """
    from pytorch_msssim import ms_ssim as _ms_ssim

    side = min(x.shape[-2:])
    win = 11
    while win > 3 and side <= (win - 1) * 16:
        win -= 2
    if side <= (win - 1) * 16:
        raise ValueError(f"MS-SSIM needs images of at least 48 px, got {side}")
    return float(_ms_ssim(x.float(), y.float(), data_range=data_range, win_size=win))


def detection_map(predictions: Sequence[dict], targets: Sequence[dict]) -> dict[str, float]:
    """COCO mAP@[.5:.95] and mAP@.5 (torchmetrics, pycocotools backend).

    Args:
        predictions: per image ``{"boxes": (K, 4) xyxy, "scores": (K,), "labels": (K,)}``.
        targets: per image ``{"boxes": (G, 4) xyxy, "labels": (G,)}`` (ground truth).
    """
    from torchmetrics.detection import MeanAveragePrecision

    # pycocotools' own float64 thresholds: torchmetrics' float32 defaults (0.6499999762...)
    # move mAP by up to ~1e-3 on small sets
    metric = MeanAveragePrecision(
        box_format="xyxy",
        iou_type="bbox",
        backend="pycocotools",
        iou_thresholds=np.linspace(0.5, 0.95, 10).tolist(),
        rec_thresholds=np.linspace(0.0, 1.0, 101).tolist(),
    )
    metric.update(
        [{k: p[k].detach().cpu() for k in ("boxes", "scores", "labels")} for p in predictions],
        [{k: t[k].detach().cpu() for k in ("boxes", "labels")} for t in targets],
    )
    out = metric.compute()
    return {"map": float(out["map"]), "map_50": float(out["map_50"])}


class ConfusionMatrix:
    """Accumulates a C x C confusion matrix for mIoU; labels equal to ``ignore_index`` are skipped."""

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """pred, target: (B, H, W) or (H, W) integer labels."""
        valid = target != self.ignore_index
        idx = target[valid].cpu().long() * self.num_classes + pred[valid].cpu().long()
        self.matrix += torch.bincount(idx, minlength=self.num_classes**2).reshape(
            self.num_classes, self.num_classes
        )

    def miou(self) -> float:
        """Mean IoU over the classes present in the targets or predictions."""
        m = self.matrix.double()
        inter = m.diag()
        union = m.sum(0) + m.sum(1) - inter
        present = union > 0
        return float((inter[present] / union[present]).mean()) if present.any() else float("nan")

    def pixel_accuracy(self) -> float:
        total = self.matrix.sum()
        return float(self.matrix.diag().sum() / total) if total else float("nan")


def rd_front(rates: Sequence[float], metric: Sequence[float]) -> list[int]:
    """Indices (by increasing rate) of the operating points that no cheaper point matches or
    beats in quality: the operational R-D front. A point left out is one an encoder choosing
    among these λ would never pick, because a lower rate already gives the same or better
    metric (a saturated or noisy tail)."""
    keep, best = [], -math.inf
    for i in np.argsort(np.asarray(rates, float), kind="stable"):
        if metric[i] > best:
            keep.append(int(i))
            best = metric[i]
    return keep


def bd_rate(
    rate_anchor: Sequence[float],
    metric_anchor: Sequence[float],
    rate_test: Sequence[float],
    metric_test: Sequence[float],
    method: str = "akima",
    front: bool = False,
) -> float:
    """Bjøntegaard delta rate of the test curve against the anchor, in percent (negative = saves
    bits), through the maintained ``bjontegaard`` package (``method``: ``akima`` or ``pchip``).

    ``front=True`` is the fallback for saturating task metrics: each curve is first reduced to
    its operational front (:func:`rd_front`) and interpolated with ``pchip`` (which needs only
    2 points). It is a different estimator from the strict one; report it as such.

    Raises:
        BDRateError: fewer than 4 points (2 on the front), rates that are not positive, a metric
            that is not strictly increasing with rate (strict mode), or curves that do not
            overlap in quality.
    """
    import bjontegaard

    if front:
        if not np.isfinite(np.asarray([*metric_anchor, *metric_test], float)).all():
            raise BDRateError("a curve has non-finite metric values; re-evaluate those points")
        ia, it = rd_front(rate_anchor, metric_anchor), rd_front(rate_test, metric_test)
        rate_anchor, metric_anchor = [rate_anchor[i] for i in ia], [metric_anchor[i] for i in ia]
        rate_test, metric_test = [rate_test[i] for i in it], [metric_test[i] for i in it]
        method = "pchip"
    min_points = 2 if front else 4
    curves = {"anchor": (rate_anchor, metric_anchor), "test": (rate_test, metric_test)}
    for name, (r, d) in curves.items():
        r, d = np.asarray(r, float), np.asarray(d, float)
        if len(r) != len(d) or len(r) < min_points:
            raise BDRateError(
                f"{name} curve needs at least {min_points} (rate, metric) points"
                f"{' on its front' if front else ''}, got {len(r)}"
            )
        if not (np.isfinite(r).all() and np.isfinite(d).all()) or (r <= 0).any():
            raise BDRateError(f"{name} curve has non-finite values or non-positive rates: {r}, {d}")
        order = np.argsort(r)
        if not (np.diff(d[order]) > 0).all():
            raise BDRateError(
                f"{name} curve's metric does not increase with rate "
                f"(rates {r[order].round(4).tolist()}, metric "
                f"{d[order].round(4).tolist()}); BD-rate needs monotonic curves: "
                "train longer or spread the lambdas"
            )
    lo = max(min(metric_anchor), min(metric_test))
    hi = min(max(metric_anchor), max(metric_test))
    if hi <= lo:
        raise BDRateError(
            f"the curves do not overlap in quality (anchor {min(metric_anchor):.4g}.."
            f"{max(metric_anchor):.4g}, test {min(metric_test):.4g}.."
            f"{max(metric_test):.4g}); choose lambdas that cover a common range"
        )
    try:
        return float(
            bjontegaard.bd_rate(
                list(map(float, rate_anchor)),
                list(map(float, metric_anchor)),
                list(map(float, rate_test)),
                list(map(float, metric_test)),
                method=method,
                require_matching_points=False,
                min_overlap=0.0,
            )
        )
    except Exception as exc:  # the package raises assertion/value errors on bad curves
        raise BDRateError(f"BD-rate failed: {exc}") from exc


#: periods of the checkerboard pattern of 1..4 stride-2 upsamplings
CHECKERBOARD_PERIODS = (2, 4, 8, 16)


def checkerboard_score(
    decoded: torch.Tensor, original: torch.Tensor, periods: Sequence[int] = CHECKERBOARD_PERIODS
) -> float:
    """Share of the residual's spectral energy in peaks at the periodic frequencies of stride-2
    upsamplings: 0 means no checkerboard artifact, 1 a residual that is nothing but one.

    The residual r = decoded − original (mean-free, per channel) is Fourier-transformed. A pattern
    of period p puts its energy at the bins whose frequencies are multiples of 1/p cycles per
    pixel along either axis (all of which are multiples of 1/max(periods)). At each such bin the
    *excess* over the mean of its 8 neighbouring bins is counted (natural residuals have smooth
    spectra, so their excess is ~0), and the sum is divided by the residual's total energy.

    Args:
        decoded, original: (B, 3, H, W) or (3, H, W) in [0, 1], same shape; H and W multiples of
            ``max(periods)`` (pad or crop first) so that the periodic bins are exact.

    Returns:
        The score averaged over the batch, in [0, 1].
    """
    if decoded.shape != original.shape:
        raise ValueError(f"shapes differ: {tuple(decoded.shape)} vs {tuple(original.shape)}")
    r = (decoded - original).double()
    if r.ndim == 3:
        r = r[None]
    h, w = r.shape[-2:]
    step = max(periods)
    if h % step or w % step:
        raise ValueError(f"H and W must be multiples of {step}, got {h}x{w}")
    r = r - r.mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.fft2(r).abs().pow(2).sum(1)  # (B, H, W), channels summed
    grid_u = torch.zeros(h, dtype=torch.bool, device=power.device)
    grid_v = torch.zeros(w, dtype=torch.bool, device=power.device)
    for p in periods:
        grid_u[:: h // p] = True
        grid_v[:: w // p] = True
    # a peak sits where both coordinates are on the grid (including the axes), DC excluded
    peaks = grid_u[:, None] & grid_v[None, :]
    peaks[0, 0] = False
    neighbours = (
        sum(
            torch.roll(power, (du, dv), dims=(-2, -1))
            for du in (-1, 0, 1)
            for dv in (-1, 0, 1)
            if du or dv
        )
        / 8
    )
    excess = (power - neighbours).clamp(min=0) * peaks
    total = power.sum(dim=(-2, -1)).clamp(min=1e-20)
    return float((excess.sum(dim=(-2, -1)) / total).clamp(0, 1).mean())
