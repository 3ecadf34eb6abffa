"""Iino et al.'s objectives, Eq. 4-6, as one function that returns every part, and the training
objectives built from it (and from CompressAI's rate-distortion loss for the MSE reference).

    Eq. 4   L = R + λ·E(y, ŷ)                                 (baseline: no branch, α = 0)
    Eq. 5   L = R + λ·{E(y, ŷ) + α·E(y, ŷ_aux)}               (detection)
    Eq. 6   L = R + λ·{E(y, ŷ) + α·E(y, ŷ_aux) + MSE(x, x̂)}   (segmentation)

R is the estimated rate in bits per pixel, E the frozen recognizer's task loss on the decoded image
against pseudo-labels y, E(y, ŷ_aux) the auxiliary branch's loss (``branch_loss``; not CompressAI's
``aux_loss``, which is the quantile loss of the entropy bottleneck).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from .metrics import bpp_from_likelihoods
from .recognition.common import bfloat16_scope, captured_output

if TYPE_CHECKING:
    from .codec import ICMCodec


def icm_loss(
    out: dict,
    x: torch.Tensor,
    task_loss: torch.Tensor,
    lmbda: float,
    branch_loss: torch.Tensor | None = None,
    alpha: float = 0.5,
    mse_weight: float = 0.0,
) -> dict[str, torch.Tensor]:
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
        ``{"loss", "bpp_loss", "task_loss", "branch_loss", "mse_loss", "main_loss"}`` (absent
        parts are 0); ``main_loss`` is the loss without the branch term (Eq. 4, or Eq. 6 without
        it): what section 4.2 compares between branch positions.
    """
    bpp = bpp_from_likelihoods(out["likelihoods"], x.shape[-2] * x.shape[-1])
    mse = F.mse_loss(out["x_hat"], x)
    zero = bpp.new_zeros(())
    branch = branch_loss if branch_loss is not None else zero
    distortion = task_loss + alpha * branch + mse_weight * mse
    return {
        "loss": bpp + lmbda * distortion,
        "bpp_loss": bpp,
        "task_loss": task_loss,
        "branch_loss": branch,
        "mse_loss": mse,
        "main_loss": bpp + lmbda * (task_loss + mse_weight * mse),
    }


#: an objective maps ``(codec, branch or None, x)`` to ``{"loss": ..., parts...}``
Objective = Callable[["ICMCodec", "nn.Module | None", torch.Tensor], dict]


def mse_objective(lmbda: float, bf16: bool = False) -> Objective:
    """CompressAI's ``RateDistortionLoss``: bpp + λ·255²·MSE, returned as a dict of parts. With
    ``bf16`` the codec's transforms run under bfloat16 autocast (the reference codec's
    ``precision``; the likelihoods and the loss stay float32)."""
    from compressai.losses import RateDistortionLoss

    criterion = RateDistortionLoss(lmbda=lmbda, metric="mse")

    def objective(codec: ICMCodec, branch, x: torch.Tensor) -> dict[str, torch.Tensor]:
        with codec.transforms_in_bf16(x.device.type, enabled=bf16):
            out = codec(x)
        parts = criterion(out, x)
        return {"loss": parts["loss"], "bpp_loss": parts["bpp_loss"], "mse_loss": parts["mse_loss"]}

    return objective


class ICMObjective:
    """Iino et al.'s Eq. 4-6 for one frozen recognizer.

    ``y`` = the recognizer on the original crop (pseudo-labels, no gradient); ``E(y, ŷ)`` = its
    training loss on the decoded crop; ``E(y, ŷ_aux)`` = the branch's loss on the codec's ŷ
    (aux-enc), g_s's last-layer input (aux-dec) or the recognizer's own intermediate feature of
    the decoded crop, captured during ``E(y, ŷ)`` (aux-task). With ``amp`` (CUDA), the recognizer
    and the branch run under bfloat16 autocast -- a torchvision detector its feature computations
    only, its box geometry in float32 (:func:`~icm_lib.recognition.common.bfloat16_scope`); the
    codec and its likelihoods stay in float32.

    Args:
        machine: the frozen recognizer (:class:`~icm_lib.recognition.FrozenDetector` or
            :class:`~icm_lib.recognition.FrozenSegmenter`).
        lmbda, alpha, mse_weight: λ, α and the MSE weight of :func:`icm_loss`.
        amp_device_types: where ``amp`` applies (CUDA only by default; ``("cuda", "cpu")`` for
            the CPU's bfloat16 autocast, e.g. in ``python -m icm_lib.bench paper-step``).
        codec_amp: where ``amp`` applies, the codec's transforms run in bfloat16 too
            (:meth:`~icm_lib.codec.ICMCodec.transforms_in_bf16`; the entropy models stay
            float32). Off by default: the studies' numbers are float32's.
        fold_bn: the task loss runs on the recognizer's twin with its batch norms folded into
            its convolutions (``machine.folded()``, :mod:`~icm_lib.recognition.folding`): the
            same function up to float rounding, a little faster; the pseudo-labels stay the
            recognizer's own. Off by default, as ``codec_amp``.
    """

    def __init__(
        self,
        machine,
        lmbda: float,
        alpha: float = 0.5,
        mse_weight: float = 0.0,
        amp: bool = False,
        amp_device_types: tuple[str, ...] = ("cuda",),
        codec_amp: bool = False,
        fold_bn: bool = False,
    ):
        self.machine, self.lmbda, self.alpha, self.mse_weight, self.amp = (
            machine,
            lmbda,
            alpha,
            mse_weight,
            amp,
        )
        self.amp_device_types = tuple(amp_device_types)
        self.codec_amp = codec_amp
        self._loss_machine = None if fold_bn else machine  # None: the twin, when first needed

    @property
    def loss_machine(self):
        """What the task loss runs on: ``machine``, or with ``fold_bn`` its folded twin, made
        when first needed (an objective of a run already trained never makes it)."""
        if self._loss_machine is None:
            self._loss_machine = self.machine.folded()
        return self._loss_machine

    def __call__(
        self, codec: ICMCodec, branch: nn.Module | None, x: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        pseudo_labels = self.machine.pseudo_labels(x)
        loss_machine = self.loss_machine  # (made here on the first call: outside autocast)
        amp = self.amp and x.device.type in self.amp_device_types
        with codec.transforms_in_bf16(x.device.type, enabled=amp and self.codec_amp):
            out = codec(x)
        reads_machine = branch is not None and branch.position == "task"
        capture = captured_output(loss_machine.aux_task_layer) if reads_machine else nullcontext({})
        # under bfloat16 a torchvision detector (recognizer or branch) keeps its box geometry in
        # float32 (bfloat16_scope); every other model runs under autocast as a whole
        model = getattr(loss_machine, "model", None)  # (None: no torchvision detector to split)
        with bfloat16_scope(model, x.device.type, amp), capture as feature:
            task_loss = loss_machine.task_loss(out["x_hat"], pseudo_labels)["loss"].float()
        if reads_machine:  # aux-task: the recognizer's own intermediate feature on x̂
            out = {**out, "task_feature": feature["out"]}
        branch_loss = None
        if branch is not None:
            with branch.bfloat16_scope(x.device.type, amp):
                branch_loss = branch(out, pseudo_labels, x.shape[-2:]).float()
        return icm_loss(out, x, task_loss, self.lmbda, branch_loss, self.alpha, self.mse_weight)
