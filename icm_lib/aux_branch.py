"""The auxiliary recognition branch of Iino et al. (Tables 1-2): backbones.

The aux-enc branch reads the quantized latent ŷ (stride 16, M channels) just before the decoder::

    ŷ ─► conv1 stem: RB,128,↑2 ─ RB,128 ─ RB,128,↑2      (stride 16 → 4, CompressAI residual blocks)
       ─► conv2: one block, width 128, stride 4
       ─► conv3: one block, width 256, stride 8
       ─► conv4: one block, width 256, stride 16
       ─► conv5: one block, width 512, stride 32 (segmentation: stride 16, dilation 2, as
                 DeepLabV3+ keeps output stride 16)

Detection blocks are ResNeXt bottlenecks (1x1, 3x3 with 32 groups, 1x1; Table 1); segmentation
blocks are two 3x3 convolutions (Table 2). ``width`` scales every channel count for small CPU
models. The branch is trained jointly with the codec but is not part of it: its parameters live
here, never in the codec's state.

:class:`AuxDetector` puts torchvision's own FPN, RPN and RoI heads on the detection backbone, and
:class:`AuxSegmenter` smp's DeepLabV3+ decoder and head on the segmentation backbone, so each loss
E(y, ŷ_aux) is the same loss as the main model's, on the same pseudo-labels.

The aux-dec position (section 4.2, Table 3) reads the input of g_s's last layer instead (stride 2,
N channels), and its stem goes down once instead of up twice: RB,128,↓2 ─ RB,128 ─ RB,128.
:class:`AuxBranch` picks the input by position and returns the branch loss E(y, ŷ_aux).
(The aux-task position, inside the recognizer, is not built here.)
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn
from compressai.layers import ResidualBlock, ResidualBlockUpsample, ResidualBlockWithStride
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from .errors import ConfigError
from .recognition.common import bfloat16_scope
from .tasks import DETECTION, Task, get_task

#: (width, stride) of conv2..conv5 in Tables 1 and 2
STAGES = ((128, 1), (256, 2), (256, 2), (512, 2))
#: where the branch reads its input, per position: the key of the codec's forward output
#: (``latent_hat``: ŷ; ``decoder_feature``: g_s's last-layer input) or of the frozen recognizer's
#: intermediate feature on x̂ (``task_feature``, added by :class:`~icm_lib.losses.ICMObjective`)
POSITIONS = {"enc": "latent_hat", "dec": "decoder_feature", "task": "task_feature"}


class ResNeXtBlock(nn.Module):
    """1x1 → 3x3 (groups) → 1x1 bottleneck with a projection shortcut (Table 1's aux blocks)."""

    def __init__(self, in_ch: int, width: int, stride: int, groups: int = 32):
        super().__init__()
        groups = max(1, min(groups, width // 4))
        while width % groups:
            groups -= 1
        self.body = nn.Sequential(
            nn.Conv2d(in_ch, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 1, bias=False),
            nn.BatchNorm2d(width),
        )
        self.shortcut = _shortcut(in_ch, width, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a projection shortcut (Table 2's aux blocks)."""

    def __init__(self, in_ch: int, width: int, stride: int, dilation: int = 1):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_ch, width, 3, stride, dilation, dilation, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, 1, dilation, dilation, bias=False),
            nn.BatchNorm2d(width),
        )
        self.shortcut = _shortcut(in_ch, width, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


def _shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    if in_ch == out_ch and stride == 1:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))


class AuxBackbone(nn.Module):
    """The branch backbone: ŷ (B, M, H/16, W/16) → features at strides 4, 8, 16, 32.

    Args:
        latent_channels: channels of the input (M of the codec for ``enc``; g_s's last-layer
            input channels, N, for ``dec``).
        task: ``"det"`` (ResNeXt blocks, Table 1) or ``"seg"`` (two 3x3 convs, Table 2).
        width: multiplier of every channel count (1.0 = the paper's).
        position: ``"enc"`` (input at stride 16, stem RB↑2-RB-RB↑2), ``"dec"`` (input at
            stride 2, stem RB↓2-RB-RB; Table 3) or ``"task"`` (the detector's conv2 output at
            stride 4: no stem, the branch "after its conv1").

    Returns (forward): ``{"conv2": (B, c2, H/4, W/4), "conv3": ..., "conv4": ..., "conv5": ...}``.
    """

    def __init__(
        self,
        latent_channels: int,
        task: Task | str = DETECTION,
        width: float = 1.0,
        position: str = "enc",
    ):
        super().__init__()
        task = get_task(task)
        if position not in POSITIONS:
            raise ConfigError(f"position must be one of {sorted(POSITIONS)}, got {position!r}")
        stem = max(8, int(round(128 * width)))
        if position == "enc":
            self.conv1 = nn.Sequential(
                ResidualBlockUpsample(latent_channels, stem, 2),
                ResidualBlock(stem, stem),
                ResidualBlockUpsample(stem, stem, 2),
            )
        elif position == "dec":
            self.conv1 = nn.Sequential(
                ResidualBlockWithStride(latent_channels, stem, 2),
                ResidualBlock(stem, stem),
                ResidualBlock(stem, stem),
            )
        else:  # aux-task: the recognizer's own stride-4 feature replaces conv1 (section 4.2)
            self.conv1, stem = nn.Identity(), latent_channels
        stages, in_ch = [], stem
        self.out_channels = []
        for i, (w, stride) in enumerate(STAGES):
            ch = max(8, int(round(w * width)))
            if task is DETECTION:
                stages.append(ResNeXtBlock(in_ch, ch, stride))
            elif i == len(STAGES) - 1:  # output stride 16: dilate instead of striding
                stages.append(BasicBlock(in_ch, ch, 1, dilation=2))
            else:
                stages.append(BasicBlock(in_ch, ch, stride))
            self.out_channels.append(ch)
            in_ch = ch
        self.stages = nn.ModuleList(stages)

    def forward(self, latent_hat: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.conv1(latent_hat)
        out = {}
        for i, stage in enumerate(self.stages):
            x = stage(x)
            out[f"conv{i + 2}"] = x
        return out


class AuxDetector(nn.Module):
    """Faster R-CNN head (FPN + RPN + RoI heads, torchvision's modules) on :class:`AuxBackbone`.

    Args:
        latent_channels: M of the codec.
        num_classes: object classes without background.
        width: channel multiplier of the backbone; the FPN has ``256 * width`` channels.
        rpn_pre_nms_top_n_train, rpn_post_nms_top_n_train, rpn_batch_size_per_image,
        box_batch_size_per_image: the same sampling settings as the main detector.
    """

    def __init__(
        self,
        latent_channels: int,
        num_classes: int,
        width: float = 1.0,
        rpn_pre_nms_top_n_train: int = 2000,
        rpn_post_nms_top_n_train: int = 2000,
        rpn_batch_size_per_image: int = 256,
        box_batch_size_per_image: int = 512,
        position: str = "enc",
    ):
        super().__init__()
        self.body = AuxBackbone(latent_channels, "det", width, position)
        fpn_ch = max(16, int(round(256 * width)))
        self.fpn = FeaturePyramidNetwork(self.body.out_channels, fpn_ch, LastLevelMaxPool())
        levels = ("0", "1", "2", "3")
        anchors = AnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5)
        self.rpn = RegionProposalNetwork(
            anchors,
            RPNHead(fpn_ch, 3),
            fg_iou_thresh=0.7,
            bg_iou_thresh=0.3,
            batch_size_per_image=rpn_batch_size_per_image,
            positive_fraction=0.5,
            pre_nms_top_n=dict(training=rpn_pre_nms_top_n_train, testing=1000),
            post_nms_top_n=dict(training=rpn_post_nms_top_n_train, testing=1000),
            nms_thresh=0.7,
        )
        rep = max(64, int(round(1024 * width)))
        self.roi_heads = RoIHeads(
            MultiScaleRoIAlign(list(levels), 7, 2),
            TwoMLPHead(fpn_ch * 49, rep),
            FastRCNNPredictor(rep, num_classes + 1),
            fg_iou_thresh=0.5,
            bg_iou_thresh=0.5,
            batch_size_per_image=box_batch_size_per_image,
            positive_fraction=0.25,
            bbox_reg_weights=None,
            score_thresh=0.05,
            nms_thresh=0.5,
            detections_per_img=100,
        )

    def forward(
        self,
        latent_hat: torch.Tensor,
        image_size: tuple[int, int],
        targets: list[dict] | None = None,
    ):
        """Losses (train mode, ``targets`` given) or detections (eval mode) in image pixels.

        Args:
            latent_hat: ŷ (B, M, H/16, W/16).
            image_size: (H, W) of the images the latent codes; boxes live in that frame.
            targets: per image ``{"boxes": (K, 4) xyxy, "labels": (K,)}`` (pseudo-labels).
        """
        feats = self.fpn(
            OrderedDict((str(i), f) for i, f in enumerate(self.body(latent_hat).values()))
        )
        batch = latent_hat.shape[0]
        # the RPN reads only the image geometry from ImageList: no pixels are needed
        images = ImageList(
            latent_hat.new_zeros(1, 1, 1, 1).expand(batch, 1, *image_size),
            [tuple(image_size)] * batch,
        )
        proposals, rpn_losses = self.rpn(images, feats, targets)
        detections, roi_losses = self.roi_heads(feats, proposals, images.image_sizes, targets)
        if self.training:
            losses = {**rpn_losses, **roi_losses}
            losses["loss"] = sum(losses.values())
            return losses
        return detections


class AuxSegmenter(nn.Module):
    """DeepLabV3+ head (smp's decoder and segmentation head) on :class:`AuxBackbone` (``seg``);
    at the ``task`` position only a head, as MMSegmentation's auxiliary ``FCNHead`` on the
    segmenter's conv3 output (3x3 conv, BN, ReLU, dropout 0.1, 1x1 conv to the classes; section
    4.2: "we only used the head model for aux-task").

    Args:
        latent_channels: channels of the input (M of the codec; the segmenter's conv3 output
            channels for ``task``).
        num_classes: segmentation classes.
        width: channel multiplier; the decoder (or FCN head) has ``256 * width`` channels.
    """

    def __init__(
        self, latent_channels: int, num_classes: int, width: float = 1.0, position: str = "enc"
    ):
        super().__init__()
        from segmentation_models_pytorch.base import SegmentationHead
        from segmentation_models_pytorch.decoders.deeplabv3.decoder import DeepLabV3PlusDecoder

        dec_ch = max(16, int(round(256 * width)))
        if position == "task":
            self.fcn = nn.Sequential(
                nn.Conv2d(latent_channels, dec_ch, 3, padding=1, bias=False),
                nn.BatchNorm2d(dec_ch),
                nn.ReLU(inplace=True),
                nn.Dropout2d(0.1),
                nn.Conv2d(dec_ch, num_classes, 1),
            )
            return
        self.body = AuxBackbone(latent_channels, "seg", width, position)
        # smp's decoder reads the stride-4 feature at index 2 and the deepest (stride 16) last
        channels = [0, 0, *self.body.out_channels]
        self.decoder = DeepLabV3PlusDecoder(channels, 5, dec_ch, (12, 24, 36), 16, True, 0.5)
        self.head = SegmentationHead(dec_ch, num_classes, kernel_size=1, upsampling=4)

    def forward(self, feature: torch.Tensor, image_size: tuple[int, int] | None = None):
        """ŷ (B, M, H/16, W/16) (or the segmenter's feature) -> logits (B, classes, H, W);
        ``image_size`` (H, W) is needed at the ``task`` position only."""
        if hasattr(self, "fcn"):
            logits = self.fcn(feature)
            return nn.functional.interpolate(
                logits, size=tuple(image_size), mode="bilinear", align_corners=False
            )
        feats = list(self.body(feature).values())
        return self.head(self.decoder([None, None, *feats]))

    @property
    def min_batch(self) -> int:
        """The fewest images a training forward pass may hold: 2 for the DeepLabV3+ head (its ASPP
        image pooling batch-normalises one value per image and channel); the ``task`` position's
        FCN head normalises over space and takes 1."""
        return 1 if hasattr(self, "fcn") else 2


class AuxBranch(nn.Module):
    """The auxiliary branch as the trainer sees it: codec output + pseudo-labels → E(y, ŷ_aux).

    Args:
        task: ``"det"`` (:class:`AuxDetector`) or ``"seg"`` (:class:`AuxSegmenter`).
        position: ``"enc"`` (ŷ, the proposed aux-enc), ``"dec"`` (g_s's last-layer input) or
            ``"task"`` (the frozen recognizer's intermediate feature on x̂, see
            :attr:`~icm_lib.recognition.FrozenDetector.aux_task_layer`).
        in_channels: channels at that position (``ICMCodec.M`` / ``ICMCodec.N`` / the feature's).
        num_classes: object classes (det, without background) or segmentation classes.
        width: channel multiplier.
        detector_kwargs: RPN/RoI sampling settings for :class:`AuxDetector`.
    """

    def __init__(
        self,
        task: Task | str,
        position: str,
        in_channels: int,
        num_classes: int,
        width: float = 1.0,
        **detector_kwargs,
    ):
        super().__init__()
        task = get_task(task)
        self.task, self.position, self.key = task, position, POSITIONS.get(position)
        if task is DETECTION:
            self.net = AuxDetector(
                in_channels, num_classes, width, position=position, **detector_kwargs
            )
        else:
            self.net = AuxSegmenter(in_channels, num_classes, width, position=position)

    @property
    def min_batch(self) -> int:
        """The fewest images a training forward pass may hold (:attr:`AuxSegmenter.min_batch`;
        1 for the detector)."""
        return getattr(self.net, "min_batch", 1)

    def bfloat16_scope(self, device_type: str, enabled: bool = True):
        """The scope its loss runs in under bfloat16 (:func:`~icm_lib.recognition.common.
        bfloat16_scope` of its head: the detector's features only, the segmenter whole)."""
        return bfloat16_scope(self.net, device_type, enabled)

    def forward(self, codec_out: dict, pseudo_labels, image_size: tuple[int, int]) -> torch.Tensor:
        """The branch loss (a scalar): Faster R-CNN's summed losses, or cross-entropy against the
        pseudo-label map (B, H, W)."""
        feature = codec_out[self.key]
        if self.task is DETECTION:
            return self.net(feature, tuple(image_size), pseudo_labels)["loss"]
        from .data.context import IGNORE_INDEX

        logits = self.net(feature, image_size)
        return nn.functional.cross_entropy(logits.float(), pseudo_labels, ignore_index=IGNORE_INDEX)


#: training variants: the MSE reference, Eq. 4 (no branch), Eq. 5/6 with the branch on ŷ
#: (proposed), on g_s's last-layer input or on the recognizer's intermediate feature (section 4.2)
VARIANTS = ("mse", "baseline", "aux-enc", "aux-dec", "aux-task")


def build_branch(
    variant: str,
    task: Task | str,
    codec,
    num_classes: int,
    width: float,
    sampling: dict | None = None,
    machine=None,
) -> AuxBranch | None:
    """The auxiliary branch of ``variant`` (``None`` for ``mse`` and ``baseline``).

    Args:
        codec: the :class:`~icm_lib.codec.ICMCodec` it reads from (its channel counts).
        width: channel multiplier (``ICMConfig.branch_width``).
        sampling: the detector's train-mode sampling (``RecognitionConfig.sampling()``).
        machine: the frozen recognizer (``aux-task`` reads its intermediate feature).
    """
    if variant not in VARIANTS:
        raise ConfigError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if not variant.startswith("aux-"):
        return None
    task = get_task(task)
    position = variant.removeprefix("aux-")
    if position == "task" and machine is None:
        raise ValueError("aux-task reads the frozen recognizer's feature: pass machine=")
    channels = {
        "enc": lambda: codec.M,
        "dec": lambda: codec.decoder_last_layer_channels,
        "task": lambda: machine.aux_task_channels,
    }[position]()
    kwargs = (sampling or {}) if task is DETECTION else {}
    return AuxBranch(task, position, channels, num_classes, width, **kwargs)
