"""The frozen recognition models ("machines"): detection and segmentation.

Four backends share one interface (:class:`FrozenDetector` / :class:`FrozenSegmenter` over a
model with torchvision's detection interface / the project's segmenter interface): torchvision
and segmentation_models_pytorch (the embedded default), detectron2 and MMSegmentation (seed 001's
own; optional installs). :func:`build_recognizer` builds the one a
:class:`~icm_lib.profiles.RecognitionConfig` names.
"""

from __future__ import annotations

import torch.nn as nn

from ..tasks import DETECTION, Task, get_task
from .detection import FrozenDetector, build_detector
from .segmentation import FrozenSegmenter, build_segmenter


def build_recognizer(task: Task | str, cfg, num_classes: int) -> nn.Module:
    """The task's model from ``cfg`` (a :class:`~icm_lib.profiles.RecognitionConfig`): its
    backend, architecture and, when ``cfg.pretrained``, the library's pretrained weights.

    Raises:
        BackendUnavailableError: the backend's library is not installed.
        WeightsUnavailableError: pretrained weights cannot be downloaded.
    """
    if get_task(task) is DETECTION:
        if cfg.det_backend == "detectron2":
            from .detectron2_backend import build_detectron2_detector

            return build_detectron2_detector(
                num_classes,
                cfg.det_config,
                cfg.pretrained,
                checkpoint=cfg.det_checkpoint,
                **cfg.detector_kwargs(),
            )
        return build_detector(
            num_classes,
            cfg.det_backbone,
            cfg.pretrained,
            checkpoint=cfg.det_checkpoint,
            **cfg.detector_kwargs(),
        )
    if cfg.seg_backend == "mmseg":
        from .mmseg_backend import build_mmseg_segmenter

        return build_mmseg_segmenter(
            num_classes, cfg.seg_config, cfg.pretrained, checkpoint=cfg.seg_checkpoint
        )
    return build_segmenter(
        num_classes, cfg.seg_encoder, cfg.pretrained, checkpoint=cfg.seg_checkpoint
    )


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
    "build_recognizer",
    "build_segmenter",
    "load_or_train",
]
