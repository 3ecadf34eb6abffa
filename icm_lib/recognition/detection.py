"""Object detection: torchvision Faster R-CNN + FPN, its task loss and pseudo-labels.

Iino et al. uses detectron2's Faster R-CNN X101-FPN. detectron2 has no PyPI release, so this wraps
torchvision's Faster R-CNN with a ResNet/ResNeXt FPN backbone chosen by name (``resnet18``,
``resnet50``, ``resnext101_32x8d``, ...). Pretrained weights come through torchvision's weight API:
COCO weights for the whole detector exist only for ``resnet50``; other backbones get ImageNet
weights and are trained on the dataset. ``checkpoint`` (the profile's
``recognition.det_checkpoint``) is a local copy of the file torchvision would download.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from torchvision.models import detection as tvdet
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

from ..errors import CheckpointError, ConfigError, WeightsUnavailableError
from ..tasks import DETECTION
from ..weights import load_state_file, require_download
from .common import freeze, loss_mode, output_channels
from .folding import folded, move_twin

#: the profile field that takes a local copy of the detector's pretrained weights
FIELD = "recognition.det_checkpoint"


def _imagenet_weights(backbone: str):
    from torchvision.models import get_model_weights

    try:
        return get_model_weights(backbone).DEFAULT
    except (ValueError, AttributeError) as exc:
        raise ConfigError(f"torchvision has no backbone named {backbone!r}") from exc


#: the ``record_function`` label of the library's explicit device-to-host reads (counted as host
#: synchronisations by ``python -m icm_lib.bench paper-step --profile-ops``)
TO_HOST = "icm_lib::to_host"


def to_host(t: torch.Tensor) -> torch.Tensor:
    """``t`` on the CPU: one device-to-host read (a synchronisation on CUDA), labelled for the
    profiler as :data:`TO_HOST`."""
    with torch.profiler.record_function(TO_HOST):
        return t.cpu()


def _no_resize(image, target=None):
    return image, target


def build_detector(
    num_classes: int,
    backbone: str = "resnet18",
    pretrained: bool = False,
    rpn_pre_nms_top_n_train: int = 2000,
    rpn_post_nms_top_n_train: int = 2000,
    rpn_pre_nms_top_n_test: int = 1000,
    rpn_post_nms_top_n_test: int = 1000,
    rpn_batch_size_per_image: int = 256,
    box_batch_size_per_image: int = 512,
    box_score_thresh: float = 0.05,
    box_head_dim: int | None = None,
    anchor_sizes: tuple[int, ...] | None = None,
    checkpoint: str | None = None,
) -> nn.Module:
    """A torchvision Faster R-CNN with an FPN over ``backbone``.

    Args:
        num_classes: object classes *excluding* background (the model gets ``num_classes + 1``).
        backbone: a torchvision ResNet/ResNeXt name.
        pretrained: ``resnet50`` -> torchvision's COCO Faster R-CNN (then ``num_classes`` must be
            90, COCO category ids as labels); other backbones -> ImageNet backbone weights.

    The detector's internal resize is switched off: images arrive already at the geometry of the
    experiment (256 crops for training, shorter edge 800 + pad-to-64 for evaluation in the paper),
    which is what the codec codes, so the machine sees exactly the decoded pixels.
        rpn_*, box_batch_size_per_image: train-mode sampling; smaller is much cheaper on a CPU.
        box_head_dim: width of the two-layer RoI box head (torchvision: 1024); 256 is ~4x cheaper
            and enough for the embedded scenes.
        anchor_sizes: one anchor size per FPN level (torchvision: 32, 64, 128, 256, 512).
        checkpoint: with ``pretrained``, a local copy of the file torchvision would download
            (``resnet50``: the COCO detector's; else the ImageNet backbone's), read instead of
            torch.hub's cache.

    Raises:
        WeightsUnavailableError: ``pretrained`` and the weights cannot be downloaded (the
            message names the file torch.hub reads and the URL), or ``checkpoint`` is missing.
        CheckpointError: ``checkpoint`` does not hold that model's weights.
    """
    kwargs = dict(
        rpn_pre_nms_top_n_train=rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
        rpn_batch_size_per_image=rpn_batch_size_per_image,
        box_batch_size_per_image=box_batch_size_per_image,
        box_score_thresh=box_score_thresh,
    )
    if pretrained and backbone == "resnet50":
        weights = tvdet.FasterRCNN_ResNet50_FPN_V2_Weights.COCO_V1
        what = "torchvision Faster R-CNN R50-FPN v2 (COCO)"
        if num_classes + 1 != len(weights.meta["categories"]):
            raise ConfigError(
                "torchvision's COCO detector predicts 91 category ids; use "
                "num_classes=90 with CocoDetection(..., contiguous=False)"
            )
        if checkpoint is None:
            require_download(weights.url, what, field=FIELD)
            model = tvdet.fasterrcnn_resnet50_fpn_v2(weights=weights, **kwargs)
        else:
            model = tvdet.fasterrcnn_resnet50_fpn_v2(
                weights=None, weights_backbone=None, num_classes=num_classes + 1, **kwargs
            )
            _load_local(model, checkpoint, what)
            # what torchvision does for a trained model: conv1 and layer1 frozen
            for name, param in model.backbone.body.named_parameters():
                if not name.startswith(("layer2", "layer3", "layer4")):
                    param.requires_grad_(False)
        model.transform.resize = _no_resize
        return model
    weights = None
    if pretrained:
        weights = _imagenet_weights(backbone)
        if checkpoint is None:
            require_download(weights.url, f"torchvision {backbone} (ImageNet)", field=FIELD)
    # Trained from scratch, the backbone needs real BatchNorm; with ImageNet weights torchvision's
    # FrozenBatchNorm2d is the standard choice.
    norm = None if weights is not None else nn.BatchNorm2d
    extra = {} if norm is None else {"norm_layer": norm}
    if weights is not None and checkpoint is not None:
        fpn = _local_backbone_fpn(backbone, checkpoint)
    else:
        fpn = resnet_fpn_backbone(
            backbone_name=backbone,
            weights=weights,
            trainable_layers=5 if weights is None else 3,
            **extra,
        )
    if anchor_sizes is not None:
        from torchvision.models.detection.anchor_utils import AnchorGenerator

        kwargs["rpn_anchor_generator"] = AnchorGenerator(
            tuple((s,) for s in anchor_sizes), ((0.5, 1.0, 2.0),) * len(anchor_sizes)
        )
    if box_head_dim is not None:
        from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

        kwargs["box_head"] = TwoMLPHead(fpn.out_channels * 7 * 7, box_head_dim)
        kwargs["box_predictor"] = FastRCNNPredictor(box_head_dim, num_classes + 1)
        num_classes_arg = None
    else:
        num_classes_arg = num_classes + 1
    model = tvdet.FasterRCNN(fpn, num_classes=num_classes_arg, **kwargs)
    model.transform.resize = _no_resize
    return model


def _load_local(model: nn.Module, checkpoint: str, what: str) -> None:
    """Load a local weights file into ``model`` strictly (CheckpointError if it does not fit)."""
    state = load_state_file(checkpoint, what, FIELD)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(
            f"{what}: {FIELD}={checkpoint!r} does not hold this model's weights ({first})"
        ) from None


def _local_backbone_fpn(backbone: str, checkpoint: str) -> nn.Module:
    """``resnet_fpn_backbone(weights=<ImageNet>)`` with the ImageNet file read from
    ``checkpoint``: the same network (FrozenBatchNorm2d, three trainable stages), the same
    weights."""
    from torchvision.models import get_model
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import misc as misc_nn_ops

    net = get_model(backbone, weights=None, norm_layer=misc_nn_ops.FrozenBatchNorm2d)
    _load_local(net, checkpoint, f"torchvision {backbone} (ImageNet)")
    return _resnet_fpn_extractor(net, 3)


class FrozenDetector:
    """A frozen detector seen as a machine: pseudo-labels and a differentiable task loss.

    Args:
        model: a detector with torchvision's detection interface (a torchvision Faster R-CNN,
            or :class:`~.detectron2_backend.Detectron2Detector`), frozen here.
        score_threshold: detections above it are pseudo-labels.
    """

    task = DETECTION

    def __init__(self, model: nn.Module, score_threshold: float = 0.5):
        self.model = freeze(model)
        self.score_threshold = score_threshold

    def to(self, device) -> FrozenDetector:
        self.model.to(device)
        move_twin(self, device)
        return self

    @property
    def aux_task_layer(self) -> nn.Module:
        """Where Iino et al.'s aux-task branch reads the detector (section 4.2): the output of the
        backbone's conv2 stage (ResNet ``layer1``, stride 4), "between conv2 and conv3".
        Adapters of other libraries name theirs (``model.aux_task_layer``)."""
        layer = getattr(self.model, "aux_task_layer", None)
        return layer if layer is not None else self.model.backbone.body.layer1

    @property
    def aux_task_channels(self) -> int:
        return output_channels(self.aux_task_layer)

    def folded(self) -> FrozenDetector:
        """Its twin with the batch norms folded into the convolutions, for the task loss
        (:func:`~.folding.folded`; ``icm.fold_bn``); this machine where nothing folds."""
        return folded(self)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Detections on (B, 3, H, W) in [0, 1]: per image boxes (xyxy), scores, labels."""
        self.model.eval()
        return self.model(list(images.clamp(0, 1)))

    @torch.no_grad()
    def pseudo_labels(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """The model's output on the original images, kept above the score threshold: the
        targets y of Iino et al.'s Eq. 4-5 (after Yamazaki et al.)."""
        dets = self.predict(images)
        if not dets:
            return []
        # The kept boxes of the whole batch with one device-to-host read (boolean indexing per
        # image would wait for the device twice per image): the same boxes, in the same order.
        keep = to_host(torch.cat([d["scores"] for d in dets]) >= self.score_threshold).numpy()
        ends = np.cumsum([len(d["scores"]) for d in dets])
        counts = [int(keep[e - len(d["scores"]) : e].sum()) for d, e in zip(dets, ends)]
        index = torch.from_numpy(np.flatnonzero(keep))
        index = index.to(dets[0]["boxes"].device, non_blocking=True)
        boxes = torch.cat([d["boxes"] for d in dets]).index_select(0, index).split(counts)
        labels = torch.cat([d["labels"] for d in dets]).index_select(0, index).split(counts)
        return [{"boxes": b, "labels": lab} for b, lab in zip(boxes, labels)]

    def task_loss(self, images: torch.Tensor, targets: list[dict]) -> dict[str, torch.Tensor]:
        """Faster R-CNN's own training losses of decoded images against ``targets``.

        Differentiable with respect to ``images`` (B, 3, H, W); the weights stay frozen and
        BatchNorm uses its running statistics. Returns the four torchvision losses and their sum
        under ``"loss"``.
        """
        with loss_mode(self.model):
            losses = self.model(
                list(images), [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
            )
        losses = dict(losses)
        losses["loss"] = sum(losses.values())
        return losses


__all__ = ["build_detector", "FrozenDetector", "WeightsUnavailableError"]
