"""Semantic segmentation: segmentation_models_pytorch DeepLabV3+, its task loss, pseudo-labels.

Iino et al. uses MMSegmentation's DeepLabV3+ with a ResNet-101; mmsegmentation needs mmcv built from
source, so this wraps smp's DeepLabV3+ (encoder chosen by name, ``resnet18`` ... ``resnet101``).
``pretrained=True`` loads smp's ImageNet encoder weights (from the Hugging Face hub, or from a
local copy of its ``model.safetensors``: the profile's ``recognition.seg_checkpoint``); the
segmentation head is trained on the dataset (or loaded from a checkpoint).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.context import IGNORE_INDEX
from ..errors import CheckpointError, WeightsUnavailableError
from ..tasks import SEGMENTATION
from ..weights import hf_offline_unless_reachable, load_state_file, offline_message
from .common import freeze, loss_mode, output_channels
from .folding import folded, move_twin

#: the profile field that takes a local copy of the segmenter's pretrained weights
FIELD = "recognition.seg_checkpoint"
HF_FOLDER = (
    "$HF_HUB_CACHE; it defaults to $HF_HOME/hub, i.e. ~/.cache/huggingface/hub, and is read once "
    "when huggingface_hub is imported"
)

#: ImageNet normalisation (smp encoders expect normalised input; the wrapper takes [0, 1])
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


class NormalizedSegmenter(nn.Module):
    """An smp model that takes images in [0, 1] and normalises them itself.

    The project's segmenter interface (which :class:`~.mmseg_backend.MMSegSegmenter` shares):
    ``model(x)`` logits at the input size, ``model.loss(x, labels)`` the training loss (a dict
    with ``"loss"``), ``model.aux_task_layer`` the aux-task feature.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) in [0, 1], H and W multiples of 16 -> logits (B, C, H, W)."""
        return self.net((x - self.mean) / self.std)

    def loss(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Cross-entropy of the logits against ``labels`` (B, H, W), ``IGNORE_INDEX`` ignored."""
        ce = F.cross_entropy(self(x), labels, ignore_index=IGNORE_INDEX)
        return {"loss_ce": ce, "loss": ce}

    @property
    def aux_task_layer(self) -> nn.Module:
        """Iino et al.'s aux-task feature: the encoder's ``layer3`` (conv4 stage, stride 16), the
        input of MMSegmentation's auxiliary FCN head."""
        return self.net.encoder.layer3


def smp_weight_files(encoder: str) -> list[tuple[str, Path]] | None:
    """The files smp reads for ``encoder``'s ImageNet weights, as ``(url, path in the Hugging
    Face cache)``: the repository's ``config.json`` and ``model.safetensors`` at the revision smp
    pins (``None`` for an encoder whose weights smp does not fetch from the hub)."""
    try:
        from huggingface_hub import constants
        from segmentation_models_pytorch.encoders import encoders

        settings = encoders[encoder]["pretrained_settings"]["imagenet"]
        repo, revision = settings["repo_id"], settings["revision"]
    except (ImportError, KeyError, TypeError):
        return None
    folder = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}" / "snapshots"
    return [
        (f"https://huggingface.co/{repo}/resolve/{revision}/{name}", folder / revision / name)
        for name in ("config.json", "model.safetensors")
    ]


def build_segmenter(
    num_classes: int,
    encoder: str = "resnet18",
    pretrained: bool = False,
    checkpoint: str | None = None,
) -> NormalizedSegmenter:
    """DeepLabV3+ (smp) with ``encoder``; ImageNet encoder weights when ``pretrained``.

    Args:
        checkpoint: with ``pretrained``, a local copy of the encoder's weights
            (smp's ``model.safetensors`` from the hub, or a ``.pth`` state dict of the encoder),
            read instead of the Hugging Face cache.

    Raises:
        WeightsUnavailableError: ``pretrained`` and the weights cannot be downloaded (the message
            names the files the hub's cache must hold and their URLs), or ``checkpoint`` is
            missing.
        CheckpointError: ``checkpoint`` does not hold the encoder's weights.
    """
    import segmentation_models_pytorch as smp

    what = f"smp {encoder} ImageNet encoder"
    if pretrained and checkpoint is not None:
        net = smp.DeepLabV3Plus(encoder_name=encoder, encoder_weights=None, classes=num_classes)
        state = load_state_file(checkpoint, what, FIELD)
        try:
            net.encoder.load_state_dict(dict(state))  # smp's ResNet encoders drop fc.* here
        except (RuntimeError, TypeError, AttributeError) as exc:
            first = str(exc).strip().splitlines()[0]
            raise CheckpointError(
                f"{what}: {FIELD}={checkpoint!r} does not hold its weights ({first})"
            ) from None
        return NormalizedSegmenter(net)
    weights = "imagenet" if pretrained else None
    try:
        with hf_offline_unless_reachable():
            net = smp.DeepLabV3Plus(
                encoder_name=encoder, encoder_weights=weights, classes=num_classes
            )
    except (OSError, ValueError, RuntimeError) as exc:
        if not pretrained:
            raise
        files = smp_weight_files(encoder)
        reason = f"the Hugging Face hub cannot be reached ({type(exc).__name__})"
        if files is None:
            raise WeightsUnavailableError(
                f"{what}: the weights cannot be downloaded ({type(exc).__name__}); run once "
                f"with internet (huggingface_hub caches them in {HF_FOLDER}), set {FIELD} to a "
                "local copy, or use pretrained=False"
            ) from exc
        raise WeightsUnavailableError(
            offline_message(what, files, HF_FOLDER, FIELD, reason)
        ) from exc
    return NormalizedSegmenter(net)


class FrozenSegmenter:
    """A frozen segmenter seen as a machine: pseudo-labels and a differentiable task loss.

    Args:
        model: a segmenter with the project's interface (:class:`NormalizedSegmenter`, smp;
            :class:`~.mmseg_backend.MMSegSegmenter`, MMSegmentation), frozen here.
        num_classes: classes of its output.
    """

    task = SEGMENTATION

    def __init__(self, model: nn.Module, num_classes: int):
        self.model = freeze(model)
        self.num_classes = num_classes

    def to(self, device) -> FrozenSegmenter:
        self.model.to(device)
        move_twin(self, device)
        return self

    @property
    def aux_task_layer(self) -> nn.Module:
        """Where Iino et al.'s aux-task branch reads the segmenter (section 4.2): the backbone's
        conv4 stage (ResNet ``layer3``), as MMSegmentation's auxiliary FCN head."""
        return self.model.aux_task_layer

    @property
    def aux_task_channels(self) -> int:
        return output_channels(self.aux_task_layer)

    def folded(self) -> FrozenSegmenter:
        """Its twin with the batch norms folded into the convolutions, for the task loss
        (:func:`~.folding.folded`; ``icm.fold_bn``); this machine where nothing folds."""
        return folded(self)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Label map (B, H, W) for images (B, 3, H, W) in [0, 1]."""
        self.model.eval()
        return self.model(images.clamp(0, 1)).argmax(1)

    def pseudo_labels(self, images: torch.Tensor) -> torch.Tensor:
        """argmax of the model on the original images: the targets y of Eq. 4-6."""
        return self.predict(images)

    def task_loss(self, images: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """The frozen model's own training loss (cross-entropy) of ``images`` against
        ``targets`` (B, H, W), differentiable with respect to ``images``; ignores
        ``IGNORE_INDEX``. Returns the loss terms and their sum under ``"loss"``."""
        with loss_mode(self.model):
            return self.model.loss(images, targets)


__all__ = ["build_segmenter", "FrozenSegmenter", "NormalizedSegmenter"]
