"""The frozen recognition models ("machines"): detection and segmentation.

Four backends share one interface (:class:`FrozenDetector` / :class:`FrozenSegmenter` over a
model with torchvision's detection interface / the project's segmenter interface): torchvision
and segmentation_models_pytorch (the embedded default), detectron2 and MMSegmentation (Iino et al.'s
own; optional installs). This package only re-exports its modules: ``build`` (a recognizer
from a :class:`~icm_lib.profiles.RecognitionConfig`), ``detection`` / ``segmentation`` (the
models and their frozen wrappers), ``training`` (load-or-train, cached), ``evaluation`` (mAP,
mIoU against ground truth).
"""

from __future__ import annotations

from .build import build_recognizer
from .detection import FrozenDetector, build_detector
from .evaluation import evaluate_detection, evaluate_segmentation
from .segmentation import FrozenSegmenter, build_segmenter
from .training import load_or_train, load_or_train_task

__all__ = [
    "FrozenDetector",
    "FrozenSegmenter",
    "build_detector",
    "build_recognizer",
    "build_segmenter",
    "evaluate_detection",
    "evaluate_segmentation",
    "load_or_train",
    "load_or_train_task",
]
