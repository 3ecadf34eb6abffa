"""Score a frozen recognizer on a dataset against ground truth: mAP (detection), mIoU and pixel
accuracy (segmentation), optionally through a transform of the images first (a codec's round
trip through real bytes: :class:`~icm_lib.evaluate.BitstreamRoundTrip`)."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from ..data.coco import CocoDetection
from ..data.context import IGNORE_INDEX, PascalContextSegmentation
from ..data.transforms import pad_to_multiple
from ..metrics import ConfusionMatrix, detection_map
from .detection import FrozenDetector
from .segmentation import FrozenSegmenter


def eval_batches(dataset: Dataset, batch_size: int = 4):
    """Evaluation batches of equal-size images at their original size (a codec pads and crops
    back internally, so bits are counted per original pixel)."""
    group: list = []
    for i in range(len(dataset)):
        item = dataset[i]
        if group and (len(group) == batch_size or item[0].shape != group[0][0].shape):
            yield torch.stack([it[0] for it in group]), [it[1] for it in group]
            group = []
        group.append(item)
    if group:
        yield torch.stack([it[0] for it in group]), [it[1] for it in group]


@torch.no_grad()
def evaluate_detection(
    machine: FrozenDetector,
    dataset: CocoDetection,
    device: torch.device,
    transform=None,
    batch_size: int = 4,
) -> dict[str, float]:
    """mAP of ``machine`` on ``dataset`` against ground truth; ``transform(images)`` (e.g. a codec
    round trip through real bitstreams) is applied to each batch first."""
    preds, gts = [], []
    for images, targets in eval_batches(dataset, batch_size):
        images = images.to(device)
        if transform is not None:
            images = transform(images)
        preds += [{k: v.cpu() for k, v in p.items()} for p in machine.predict(images)]
        gts += [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
    return detection_map(preds, gts)


@torch.no_grad()
def evaluate_segmentation(
    machine: FrozenSegmenter,
    dataset: PascalContextSegmentation,
    device: torch.device,
    transform=None,
    batch_size: int = 4,
) -> dict[str, float]:
    """mIoU and pixel accuracy against ground truth (the model sees a 64-padded image; the
    padding is cropped from its prediction)."""
    cm = ConfusionMatrix(machine.num_classes, IGNORE_INDEX)
    for images, labels in eval_batches(dataset, batch_size):
        images = images.to(device)
        if transform is not None:
            images = transform(images)
        h, w = images.shape[-2:]
        pred = machine.predict(pad_to_multiple(images)[0])[..., :h, :w].cpu()
        for p, lab in zip(pred, labels):
            cm.update(p, lab)
    return {"miou": cm.miou(), "pixel_acc": cm.pixel_accuracy()}
