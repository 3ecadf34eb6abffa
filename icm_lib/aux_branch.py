"""The auxiliary recognition branch of Iino et al. (seed 001, Tables 1-2): backbones.

The aux-enc branch reads the quantized latent ŷ (stride 16, M channels) just before the decoder::

    ŷ ─► conv1 stem: RB,128,↑2 ─ RB,128 ─ RB,128,↑2      (stride 16 → 4, CompressAI residual blocks)
       ─► conv2: one block, width 128, stride 4
       ─► conv3: one block, width 256, stride 8
       ─► conv4: one block, width 256, stride 16
       ─► conv5: one block, width 512, stride 32

Detection blocks are ResNeXt bottlenecks (1x1, 3x3 with 32 groups, 1x1; Table 1); segmentation
blocks are two 3x3 convolutions (Table 2). ``width`` scales every channel count for small CPU
models. The branch is trained jointly with the codec but is not part of it: its parameters live
here, never in the codec's state.

Status: backbones only; the detection (RPN + RoI over an FPN) and DeepLabV3+ heads, the aux-dec
and aux-task positions and the training loop are the work of the seed-001 issue.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from compressai.layers import ResidualBlock, ResidualBlockUpsample

#: (width, stride) of conv2..conv5 in Tables 1 and 2
STAGES = ((128, 1), (256, 2), (256, 2), (512, 2))


class ResNeXtBlock(nn.Module):
    """1x1 → 3x3 (groups) → 1x1 bottleneck with a projection shortcut (Table 1's aux blocks)."""

    def __init__(self, in_ch: int, width: int, stride: int, groups: int = 32):
        super().__init__()
        groups = max(1, min(groups, width // 4))
        while width % groups:
            groups -= 1
        self.body = nn.Sequential(
            nn.Conv2d(in_ch, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False),
            nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 1, bias=False), nn.BatchNorm2d(width))
        self.shortcut = _shortcut(in_ch, width, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a projection shortcut (Table 2's aux blocks)."""

    def __init__(self, in_ch: int, width: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_ch, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width),
            nn.ReLU(inplace=True), nn.Conv2d(width, width, 3, 1, 1, bias=False),
            nn.BatchNorm2d(width))
        self.shortcut = _shortcut(in_ch, width, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


def _shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    if in_ch == out_ch and stride == 1:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))


class AuxBackbone(nn.Module):
    """The aux-enc backbone: ŷ (B, M, H/16, W/16) → features at strides 4, 8, 16, 32.

    Args:
        latent_channels: M of the codec.
        kind: ``"det"`` (ResNeXt blocks, Table 1) or ``"seg"`` (two 3x3 convs, Table 2).
        width: multiplier of every channel count (1.0 = the paper's).

    Returns (forward): ``{"conv2": (B, c2, H/4, W/4), "conv3": ..., "conv4": ..., "conv5": ...}``.
    """

    def __init__(self, latent_channels: int, kind: str = "det", width: float = 1.0):
        super().__init__()
        if kind not in ("det", "seg"):
            raise ValueError(f"kind must be 'det' or 'seg', got {kind!r}")
        stem = max(8, int(round(128 * width)))
        self.conv1 = nn.Sequential(ResidualBlockUpsample(latent_channels, stem, 2),
                                   ResidualBlock(stem, stem),
                                   ResidualBlockUpsample(stem, stem, 2))
        block = ResNeXtBlock if kind == "det" else BasicBlock
        stages, in_ch = [], stem
        self.out_channels = []
        for w, stride in STAGES:
            ch = max(8, int(round(w * width)))
            stages.append(block(in_ch, ch, stride))
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
