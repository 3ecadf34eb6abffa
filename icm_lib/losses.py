"""Seed 001's objectives, Eq. 4-6, as one function that returns every part.

    Eq. 4   L = R + λ·E(y, ŷ)                                 (baseline: no branch, α = 0)
    Eq. 5   L = R + λ·{E(y, ŷ) + α·E(y, ŷ_aux)}               (detection)
    Eq. 6   L = R + λ·{E(y, ŷ) + α·E(y, ŷ_aux) + MSE(x, x̂)}   (segmentation)

R is the estimated rate in bits per pixel, E the frozen recognizer's task loss on the decoded image
against pseudo-labels y, E(y, ŷ_aux) the auxiliary branch's loss (``branch_loss``; not CompressAI's
``aux_loss``, which is the quantile loss of the entropy bottleneck).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .metrics import bpp_from_likelihoods


def icm_loss(out: dict, x: torch.Tensor, task_loss: torch.Tensor, lmbda: float,
             branch_loss: torch.Tensor | None = None, alpha: float = 0.5,
             mse_weight: float = 0.0) -> dict[str, torch.Tensor]:
    """Eq. 4-6.

    Args:
        out: the codec's forward output (``x_hat``, ``likelihoods``).
        x: (B, 3, H, W) originals in [0, 1].
        task_loss: E(y, ŷ), the frozen recognizer's loss on ``out["x_hat"]``.
        lmbda: λ.
        branch_loss: E(y, ŷ_aux) or ``None`` (Eq. 4).
        alpha: α, the weight of the branch loss (0.5 in the paper).
        mse_weight: weight of MSE(x, x̂) inside the braces (1 for Eq. 6, 0 otherwise).

    Returns:
        ``{"loss", "bpp_loss", "task_loss", "branch_loss", "mse_loss"}`` (absent parts are 0).
    """
    bpp = bpp_from_likelihoods(out["likelihoods"], x.shape[-2] * x.shape[-1])
    mse = F.mse_loss(out["x_hat"], x)
    zero = bpp.new_zeros(())
    branch = branch_loss if branch_loss is not None else zero
    distortion = task_loss + alpha * branch + mse_weight * mse
    return {"loss": bpp + lmbda * distortion, "bpp_loss": bpp, "task_loss": task_loss,
            "branch_loss": branch, "mse_loss": mse}
