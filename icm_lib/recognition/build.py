"""Build a recognizer from a profile's :class:`~icm_lib.profiles.RecognitionConfig`: its backend
(torchvision / smp, the embedded default; detectron2 / MMSegmentation, Iino et al.'s own, imported
only when named: they are optional installs), architecture and pretrained weights."""

from __future__ import annotations

import torch.nn as nn

from ..tasks import DETECTION, Task, get_task
from .detection import build_detector
from .segmentation import build_segmenter


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
