"""What both recognition models share: freezing, train-mode losses with frozen statistics, and
the scope their differentiable forward runs in under bfloat16."""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork

from ..runtime import forwards_in_bfloat16


def freeze(model: nn.Module) -> nn.Module:
    """No parameter of ``model`` receives gradients; BatchNorm statistics stay fixed."""
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    return model


@contextlib.contextmanager
def loss_mode(model: nn.Module):
    """Train mode for the model's loss computation (RPN/RoI sampling, losses) with every
    BatchNorm kept in eval mode, so running statistics are used and never updated."""
    was_training = model.training
    model.train()
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            m.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def output_channels(layer: nn.Module) -> int:
    """Channels of a torchvision ResNet stage's output (its last block's last convolution)."""
    return [m for m in layer[-1].modules() if isinstance(m, nn.Conv2d)][-1].out_channels


@contextlib.contextmanager
def captured_output(module: nn.Module):
    """``with captured_output(layer) as store:`` -- ``store["out"]`` is ``layer``'s output of
    the forward passes run inside the block (the last one)."""
    store: dict = {}
    handle = module.register_forward_hook(lambda m, args, out: store.__setitem__("out", out))
    try:
        yield store
    finally:
        handle.remove()


def two_stage(model: nn.Module) -> bool:
    """Whether ``model`` is a torchvision two-stage detector: its own ``rpn`` and ``roi_heads``
    are torchvision's (a Faster R-CNN; the auxiliary branch's ``AuxDetector``)."""
    return isinstance(getattr(model, "rpn", None), RegionProposalNetwork) and isinstance(
        getattr(model, "roi_heads", None), RoIHeads
    )


def feature_modules(model: nn.Module) -> list[nn.Module]:
    """A torchvision two-stage detector's feature computations: every child but its input
    transform, RPN and RoI heads (the backbone; an FPN of its own), and the RPN's convolutions
    and the RoI box head's MLP -- not the anchors, proposals, RoI pooling, box coding or losses."""
    skip = ("transform", "rpn", "roi_heads")
    children = [m for name, m in model.named_children() if name not in skip]
    return [*children, model.rpn.head, model.roi_heads.box_head]


def bfloat16_scope(model: nn.Module, device_type: str, enabled: bool = True):
    """The scope ``model``'s differentiable forward (a recognizer's task loss, a branch's loss)
    runs in under bfloat16: a torchvision two-stage detector (:func:`two_stage`) runs only its
    :func:`feature_modules` under bfloat16 autocast, each handing on float32, so that its box
    geometry stays float32 (under full autocast its anchors, proposals and regression targets
    are bfloat16: 0.5-2 px steps on 128-512 px images); any other model runs under bfloat16
    autocast as a whole. ``enabled=False``: float32."""
    if not enabled:
        return contextlib.nullcontext()
    if two_stage(model):
        return forwards_in_bfloat16(feature_modules(model), device_type)
    return torch.autocast(device_type, dtype=torch.bfloat16)
