"""A frozen recognizer's batch norms folded into the convolutions before them, for its task loss.

A frozen recognizer's BatchNorm is a fixed per-channel affine map (running statistics, never
updated), so ``bn(conv(x))`` is one convolution with scaled weights and a bias: the same function
up to float rounding, one operator fewer forward and backward. Measured on the ``cpu`` profile's
steps with bfloat16 autocast and cached pseudo-labels (``python -m icm_lib.bench icm``, AMD EPYC
with ``avx512_bf16``): 1-4 % off each step (seg baseline 0.272 → 0.263 s, aux-enc 0.315 → 0.312
s; det 0.858 → 0.840 s, 1.044 → 1.026 s), a small lever; a paired probe of seg aux-enc alone
gave 0.319 → 0.306 s.

:func:`folded` makes the folded twin of a :class:`~.detection.FrozenDetector` /
:class:`~.segmentation.FrozenSegmenter`: its own copy of the weights (the recognizer itself, its
pseudo-labels and its evaluation are untouched), each pair found by running the model once and
folded only where a convolution's output goes to one batch norm and nowhere else; the twin's task
loss and input gradient are checked against the recognizer's before it is used
(:class:`~icm_lib.losses.ICMObjective` with ``fold_bn``; ``icm.fold_bn``, set by ``--bf16``).
"""

from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torch.utils._pytree import tree_leaves

#: a folded convolution's output may differ from its batch norm's by this much (relative norm;
#: float rounding of the folded weights: ~1e-7)
FOLD_TOLERANCE = 1e-4
#: the whole twin's task loss may differ from the recognizer's by this much, relatively, and its
#: input gradient's cosine to the recognizer's must be at least 1 - the gradient tolerance; what
#: they catch is a fold the per-convolution check cannot see (an output also read outside any
#: module). A segmenter's loss is continuous in its weights (measured: 1e-7, cosine 1 - 4e-7);
#: a detector's discrete choices (its top proposals, their sampling) may follow a rounding-sized
#: change (measured on real 96-pixel crops: losses within 1e-4, cosines above 1 - 2e-4), so its
#: tolerances are wider. (task name -> (loss, gradient); others: the segmenter's)
TOLERANCES = {"det": (1e-2, 1e-2)}
LOSS_TOLERANCE, GRADIENT_TOLERANCE = 1e-3, 1e-4
#: the probe batch the pairs are found and checked on: (images, channels, height, width)
PROBE = (2, 3, 128, 128)


class FoldError(RuntimeError):
    """Folding changed what the recognizer computes (a fault of the folding, not of the input)."""


def _frozen_norm(module: nn.Module) -> bool:
    """A batch norm that is a fixed affine map: an eval-mode batch norm with running statistics
    (``BatchNorm2d``, MMEngine's ``_BatchNormXd``), or a ``FrozenBatchNorm2d`` (torchvision's,
    detectron2's)."""
    if isinstance(module, _BatchNorm):
        return not module.training and module.running_mean is not None
    return type(module).__name__ == "FrozenBatchNorm2d" and all(
        getattr(module, a, None) is not None
        for a in ("weight", "bias", "running_mean", "running_var", "eps")
    )


def _fold_into(conv: nn.Conv2d, norm: nn.Module) -> None:
    """``conv``'s weights and bias replaced by those of ``norm(conv(x))``."""
    weight, bias = fuse_conv_bn_weights(
        conv.weight,
        conv.bias,
        norm.running_mean,
        norm.running_var,
        norm.eps,
        norm.weight,
        norm.bias,
    )
    conv.weight = nn.Parameter(weight.detach(), requires_grad=False)
    conv.bias = nn.Parameter(bias.detach(), requires_grad=False)


def fold_batch_norms(model: nn.Module, run) -> int:
    """Fold ``model``'s frozen batch norms into the convolutions that feed them, in place.

    ``run()`` runs the model once (no gradient needed); the pairs are read from that run: a
    ``Conv2d`` whose output tensor is the input of a frozen batch norm and of no other module,
    each called once. A convolution that applies its own ``norm`` (detectron2's ``Conv2d``) is
    folded too. Each folded batch norm becomes ``nn.Identity``, and each folded convolution is
    checked on the input it had in that run: its output must be what the batch norm gave, within
    :data:`FOLD_TOLERANCE`. Returns the number folded.

    Raises:
        FoldError: a folded convolution does not give what its batch norm gave.
    """
    seen: dict[int, list] = {}  # id(conv output) -> [conv, module consumers, output]
    recorded: dict[int, tuple] = {}  # id(conv) -> copies of its input and output in the run
    calls: dict[int, int] = {}
    pairs: list[tuple[nn.Conv2d, nn.Module, int, torch.Tensor]] = []

    def conv_out(m, args, out):
        calls[id(m)] = calls.get(id(m), 0) + 1
        if args:  # (a convolution given its input by keyword is left alone: nothing recorded)
            recorded[id(m)] = args[0].clone(), out.clone()  # a later in-place ReLU changes them
        seen[id(out)] = [m, 0, out]  # out kept alive: its id stays its own

    def consumer(m, args, kwargs):
        for a in tree_leaves((args, kwargs)):  # positional, keyword, inside lists and dicts
            if isinstance(a, torch.Tensor) and id(a) in seen:
                seen[id(a)][1] += 1

    def norm_in(m, args, out):
        calls[id(m)] = calls.get(id(m), 0) + 1
        entry = seen.get(id(args[0])) if args else None
        if entry is not None:
            pairs.append((entry[0], m, id(args[0]), out.clone()))

    modules = list(model.modules())
    handles = [m.register_forward_pre_hook(consumer, with_kwargs=True) for m in modules]
    for m in modules:
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_out))
        elif _frozen_norm(m):
            handles.append(m.register_forward_hook(norm_in))
    try:
        with torch.no_grad(), _exact():
            run()
    finally:
        for h in handles:
            h.remove()
    parents = {id(c): (m, name) for m in modules for name, c in m.named_children()}
    done: list[tuple[nn.Conv2d, torch.Tensor]] = []  # (folded conv, what it must give)
    for conv, norm, tensor, out in pairs:
        if seen[tensor][1] != 1 or calls[id(conv)] != 1 or calls[id(norm)] != 1:
            continue  # the output read elsewhere too, or a module used twice: left as it is
        if id(conv) not in recorded:
            continue
        _fold_into(conv, norm)
        parent, name = parents[id(norm)]
        setattr(parent, name, nn.Identity())
        done.append((conv, out))
    for m in modules:  # detectron2's Conv2d normalises inside its own forward
        norm = getattr(m, "norm", None)
        if isinstance(m, nn.Conv2d) and norm is not None and _frozen_norm(norm):
            if calls.get(id(m)) == 1 and id(m) in recorded:
                _fold_into(m, norm)
                m.norm = None
                done.append((m, recorded[id(m)][1]))
    with torch.no_grad(), _exact():
        for conv, out in done:
            got = conv(recorded[id(conv)][0])
            error = float((got.float() - out.float()).norm() / out.float().norm().clamp_min(1e-12))
            if not error <= FOLD_TOLERANCE:  # (a NaN is not within it either)
                raise FoldError(
                    f"a folded convolution of {type(model).__name__} gives {error:.2g} off what "
                    f"its batch norm gave; {WITHOUT}"
                )
    return len(done)


def _device(model: nn.Module) -> torch.device:
    return next(iter(model.parameters())).device


@contextlib.contextmanager
def _exact():
    """Float32 convolutions and matmuls as written, whatever the caller runs under: no autocast
    (a twin first needed inside the objective's bfloat16 autocast: 3.7e-3 off, measured) and
    no TF32 (on by default for CUDA's cuDNN convolutions: the folded and the unfolded weights
    round apart by ~2.5e-4, against ~2e-7 in float32) -- both more than the checks allow. The
    TF32 switches are the ones the process uses: the legacy ``allow_tf32`` flags, or, where
    TF32 was set with the newer ``fp32_precision`` API (the legacy flags then cannot be read),
    those."""
    b = torch.backends
    try:
        saved = [(b.cuda.matmul, "allow_tf32"), (b.cudnn, "allow_tf32")]
        saved = [(o, n, getattr(o, n)) for o, n in saved]
        off: bool | str = False
    except RuntimeError:  # "a mix of the legacy and new APIs"
        saved = [(b.cuda.matmul, "fp32_precision"), (b.cudnn.conv, "fp32_precision")]
        saved = [(o, n, getattr(o, n)) for o, n in saved]
        off = "ieee"
    for obj, name, _ in saved:
        setattr(obj, name, off)
    try:
        with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
            with torch.inference_mode(False):
                yield
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)


def _loss_and_gradient(machine, images, targets) -> tuple[float, torch.Tensor]:
    x = images.clone().requires_grad_(True)
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.enable_grad(), torch.random.fork_rng(devices=devices):  # the same draws
        torch.manual_seed(0)  # (dropout, RoI sampling)
        loss = machine.task_loss(x, targets)["loss"]
        (grad,) = torch.autograd.grad(loss, x)
    return float(loss.detach()), grad.flatten()


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine of two gradients; 1 when both are zero (nothing to compare, nothing changed)."""
    if not a.any() and not b.any():
        return 1.0
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


#: what a :class:`FoldError` says to do
WITHOUT = (
    "train without the folding (--bf16 --no-fold-bn; in Python icm.fold_bn=False) and report "
    "the model"
)


def folded(machine):
    """The twin of a frozen recognizer whose model has its batch norms folded
    (:func:`fold_batch_norms`), for :meth:`task_loss` only: its own copy of the weights, the
    recognizer untouched. Where nothing folds, ``machine`` itself. Made once per machine (a
    run's objective and its validator share it; a frozen machine's weights never change; its
    ``to`` moves the twin along).

    Raises:
        FoldError: the twin's task loss or input gradient on a probe batch is not the
            recognizer's within the tolerances of its task (:data:`TOLERANCES`).
    """
    twin = machine.__dict__.get("_folded_twin")
    if twin is None:
        with _exact():
            twin = machine._folded_twin = _twin(machine)
    return twin


def move_twin(machine, device) -> None:
    """Move ``machine``'s twin, where :func:`folded` made one, to ``device`` (the machine's
    ``to``: the objectives holding the twin follow the machine)."""
    twin = machine.__dict__.get("_folded_twin")
    if twin is not None and twin is not machine:
        twin.model.to(device)


def _twin(machine):
    """:func:`folded`, made."""
    twin = copy.copy(machine)
    twin.model = copy.deepcopy(machine.model)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(PROBE, generator=generator).to(_device(machine.model))
    if not fold_batch_norms(twin.model, lambda: twin.predict(images)):
        return machine
    targets = machine.pseudo_labels(images)
    loss, grad = _loss_and_gradient(machine, images, targets)
    twin_loss, twin_grad = _loss_and_gradient(twin, images, targets)
    cosine = _cosine(grad, twin_grad)
    task = getattr(getattr(machine, "task", None), "name", None)
    loss_tol, grad_tol = TOLERANCES.get(task, (LOSS_TOLERANCE, GRADIENT_TOLERANCE))
    if not (abs(twin_loss - loss) <= loss_tol * abs(loss) and cosine >= 1 - grad_tol):
        raise FoldError(
            f"folding the batch norms of {type(machine.model).__name__} changed its task loss "
            f"({loss:.6g} -> {twin_loss:.6g}) or its input gradient (cosine {cosine:.6f}); "
            + WITHOUT
        )
    return twin


__all__ = ["FoldError", "fold_batch_norms", "folded", "move_twin"]
