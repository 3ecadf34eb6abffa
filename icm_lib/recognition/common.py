"""What both recognition models share: freezing, and train-mode losses with frozen statistics."""

from __future__ import annotations

import contextlib

import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm


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
