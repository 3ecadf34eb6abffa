"""The frozen recognition models ("machines"): detection and segmentation."""

from __future__ import annotations

from .detection import FrozenDetector, build_detector
from .segmentation import FrozenSegmenter, build_segmenter


def load_or_train(profile, datasets, cache_dir, device, progress: bool = True):
    """Both frozen tasks for a profile, trained once on ``datasets`` and cached in ``cache_dir``.

    Returns:
        ``(FrozenDetector, FrozenSegmenter, {"det": report, "seg": report})``; each report has the
        val metric, training seconds and loss log.
    """
    from .training import load_or_train_detector, load_or_train_segmenter

    crop = profile.data.train_crop
    det, det_report = load_or_train_detector(
        profile.recognition,
        datasets.det_train,
        datasets.det_val,
        crop,
        cache_dir,
        device,
        seed=profile.data.seed,
        progress=progress,
    )
    seg, seg_report = load_or_train_segmenter(
        profile.recognition,
        datasets.seg_train,
        datasets.seg_val,
        crop,
        cache_dir,
        device,
        seed=profile.data.seed,
        progress=progress,
    )
    return det, seg, {"det": det_report, "seg": seg_report}


__all__ = [
    "FrozenDetector",
    "FrozenSegmenter",
    "build_detector",
    "build_segmenter",
    "load_or_train",
]
