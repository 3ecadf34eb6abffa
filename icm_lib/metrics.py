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


#: COCO's IoU thresholds (pycocotools' own float64 values) and recall points of mAP@[.5:.95]
COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10).tolist()
COCO_RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101).tolist()
#: detections per image that count (COCO's maxDets for mAP)
COCO_MAX_DETECTIONS = 100


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
        iou_thresholds=COCO_IOU_THRESHOLDS,
        rec_thresholds=COCO_RECALL_THRESHOLDS,
        max_detection_thresholds=[1, 10, COCO_MAX_DETECTIONS],
    )
    metric.update(
        [{k: p[k].detach().cpu() for k in ("boxes", "scores", "labels")} for p in predictions],
        [{k: t[k].detach().cpu() for k in ("boxes", "labels")} for t in targets],
    )
    out = metric.compute()
    return {"map": float(out["map"]), "map_50": float(out["map_50"])}


def detection_matches(
    predictions: Sequence[dict], targets: Sequence[dict]
) -> tuple[list[list[list[int]]], list[list[list[float]]]]:
    """Per image, what COCO's mAP accumulates over images: its ground-truth count per class and
    its detections matched at every IoU threshold, so that :func:`map_from_matches` gives the
    mAP of :func:`detection_map` on any subset (or resample) of the images.

    pycocotools matches each image and class as :func:`detection_map` does (the same boxes,
    scores, areas and parameters; the boxes converted to xywh in float32 as torchmetrics does).

    Args:
        predictions, targets: as for :func:`detection_map`.

    Returns:
        ``(gt, dt)``: per image ``[[label, ground-truth boxes that count], ...]`` and
        ``[[label, score, matched, ignored], ...]`` (per label, highest score first, at most
        :data:`COCO_MAX_DETECTIONS`; bit ``t`` of ``matched`` / ``ignored``: a true positive /
        ignored at threshold ``t`` of :data:`COCO_IOU_THRESHOLDS`), less the detections scored
        below every true positive of their class over all images (they rank after every true
        positive of any subset, where they cannot change a precision the mAP reads).
    """
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    from torchvision.ops import box_convert

    def xywh(boxes: torch.Tensor) -> list:
        boxes = boxes.detach().cpu()
        return box_convert(boxes, "xyxy", "xywh").tolist() if boxes.numel() else []

    gts, dts = [], []
    for i, (p, t) in enumerate(zip(predictions, targets, strict=True)):
        for box, label in zip(xywh(t["boxes"]), t["labels"].tolist()):
            gts.append({"image_id": i, "bbox": box, "category_id": label, "iscrowd": 0})
        for box, label, score in zip(xywh(p["boxes"]), p["labels"].tolist(), p["scores"].tolist()):
            dts.append({"image_id": i, "bbox": box, "category_id": label, "score": score})
    labels = sorted({a["category_id"] for a in gts + dts})
    n = len(targets)
    coco_gt, coco_dt = COCO(), COCO()
    for coco, anns in ((coco_gt, gts), (coco_dt, dts)):
        for k, a in enumerate(anns, start=1):  # ids from 1: COCOeval reads 0 as "unmatched"
            a.update(id=k, area=a["bbox"][2] * a["bbox"][3])
        coco.dataset = {
            "images": [{"id": i} for i in range(n)],
            "annotations": anns,
            "categories": [{"id": c} for c in labels],
        }
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt.createIndex()
        coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.params.iouThrs = np.array(COCO_IOU_THRESHOLDS, dtype=np.float64)
        ev.params.recThrs = np.array(COCO_RECALL_THRESHOLDS, dtype=np.float64)
        ev.params.maxDets = [1, 10, COCO_MAX_DETECTIONS]
        ev.evaluate()
    gt_out: list[list] = [[] for _ in range(n)]
    dt_out: list[list] = [[] for _ in range(n)]
    areas, images = len(ev.params.areaRng), len(ev.params.imgIds)
    for k, label in enumerate(map(int, ev.params.catIds)):
        for i, image in enumerate(ev.params.imgIds):
            e = ev.evalImgs[k * areas * images + i]  # area range 0: "all"
            if e is None:
                continue
            counted = int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0))
            if counted:
                gt_out[image].append([label, counted])
            for d, score in enumerate(e["dtScores"][:COCO_MAX_DETECTIONS]):
                matched = sum(
                    1 << t for t in range(len(COCO_IOU_THRESHOLDS)) if e["dtMatches"][t, d]
                )
                ignored = sum(
                    1 << t for t in range(len(COCO_IOU_THRESHOLDS)) if e["dtIgnore"][t, d]
                )
                dt_out[image].append([label, _shortest(score), matched, ignored])
    # a detection scored below every true positive of its class sorts after all of them in any
    # subset of the images: it cannot change any precision the mAP reads, so it is not kept
    lowest_tp: dict[int, float] = {}
    for d in (d for image in dt_out for d in image if d[2]):
        lowest_tp[d[0]] = min(d[1], lowest_tp.get(d[0], math.inf))
    dt_out = [[d for d in image if d[1] >= lowest_tp.get(d[0], math.inf)] for image in dt_out]
    return gt_out, dt_out


def _shortest(score: float) -> float:
    """A detector's float32 score as the shortest decimal that reads back as the same float32
    (``0.25882533``, not ``0.2588253319263458``): distinct float32 scores keep their order and
    ties, which is all :func:`map_from_matches` reads, in 40 % fewer bytes of a results file."""
    return float(str(np.float32(score)))


def map_from_matches(gt: Sequence[list], dt: Sequence[list]) -> dict[str, float]:
    """COCO mAP@[.5:.95] and mAP@.5 of the images whose :func:`detection_matches` are ``gt``
    and ``dt`` (any subset, in any order, repeats allowed), accumulated as pycocotools does
    (detections of a class over the images in the given order, stably sorted by score), and
    rounded to float32 as :func:`detection_map` reports it.
    """
    thresholds, recall_points = len(COCO_IOU_THRESHOLDS), np.asarray(COCO_RECALL_THRESHOLDS)
    labels = sorted({c for image in gt for c, _ in image} | {d[0] for image in dt for d in image})
    precision = -np.ones((thresholds, len(recall_points), len(labels)))
    for k, label in enumerate(labels):
        counted = sum(n for image in gt for c, n in image if c == label)
        if counted == 0:
            continue
        rows = [d for image in dt for d in image if d[0] == label]
        order = np.argsort(-np.asarray([d[1] for d in rows], dtype=np.float64), kind="mergesort")
        bits = np.arange(thresholds)[:, None]
        matched = (np.asarray([d[2] for d in rows], dtype=np.int64)[None] >> bits) & 1
        ignored = (np.asarray([d[3] for d in rows], dtype=np.int64)[None] >> bits) & 1
        matched, ignored = matched[:, order].astype(bool), ignored[:, order].astype(bool)
        tp_sum = np.cumsum(matched & ~ignored, axis=1).astype(dtype=float)
        fp_sum = np.cumsum(~matched & ~ignored, axis=1).astype(dtype=float)
        for t, (tp, fp) in enumerate(zip(tp_sum, fp_sum)):
            recall = tp / counted
            pr = (tp / (fp + tp + np.spacing(1))).tolist()
            for i in range(len(tp) - 1, 0, -1):  # the precision envelope
                if pr[i] > pr[i - 1]:
                    pr[i - 1] = pr[i]
            q = np.zeros(len(recall_points))
            for r, i in enumerate(np.searchsorted(recall, recall_points, side="left")):
                if i >= len(pr):
                    break
                q[r] = pr[i]
            precision[t, :, k] = q

    def mean(s: np.ndarray) -> float:
        return float(np.float32(np.mean(s[s > -1]) if (s > -1).any() else -1.0))

    return {"map": mean(precision), "map_50": mean(precision[:1])}


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

    def counts(self) -> tuple[list[int], list[int], int]:
        """Per class the pixels labelled that class by both prediction and target
        (intersection) and by either (union), and the labelled pixels: sums over images give
        the counts of their union, so the mIoU of any set of images follows
        (:func:`miou_from_counts`)."""
        inter = self.matrix.diag()
        union = self.matrix.sum(0) + self.matrix.sum(1) - inter
        return inter.tolist(), union.tolist(), int(self.matrix.sum())

    def miou(self) -> float:
        """Mean IoU over the classes present in the targets or predictions."""
        inter, union, _ = self.counts()
        return miou_from_counts(inter, union)

    def pixel_accuracy(self) -> float:
        total = self.matrix.sum()
        return float(self.matrix.diag().sum() / total) if total else float("nan")


def miou_from_counts(intersection: Sequence[int], union: Sequence[int]) -> float:
    """Mean IoU over the classes with a non-empty union, from per-class pixel counts
    (:meth:`ConfusionMatrix.counts`, or their sums over images); ``nan`` when none is present."""
    inter = torch.as_tensor(intersection, dtype=torch.float64)
    union = torch.as_tensor(union, dtype=torch.float64)
    present = union > 0
    return float((inter[present] / union[present]).mean()) if present.any() else float("nan")


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
