"""One image as a codec and a machine see it: any image in, answers at its own size out.

The models work on batches padded to a multiple of 64 (CompressAI's transforms need it); these
functions take one image as a user has it — a (3, H, W) or (1, 3, H, W) tensor, an array, a PIL
image, a path, converted by :func:`~icm_lib.data.images.to_rgb_tensor` — pad it, run the model on
the model's device and return the answer cropped back to H x W, on the CPU::

    bits_of(codec, image)              (H, W) bits per pixel of ŷ as the coder prices them
    machine_output(machine, image)     the machine's output as it is used (its pseudo-label
                                       threshold for detections; a label map for segmentation)
    decoded(codec, image, machine)     real bytes → x̂, its bpp, the bits map, the machine on x̂
    class_names(dataset)               the names a plot labels classes with

Notebooks 00-02 and 05 and the explorer (:mod:`icm_lib.widgets`) draw paper Fig. 5-6 from these.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .data.images import ImageLike, to_rgb_tensor
from .data.transforms import pad_to_multiple
from .metrics import bpp_from_bytes
from .plots import bit_allocation
from .tasks import DETECTION


def _on(model: torch.nn.Module, image: ImageLike) -> tuple[torch.Tensor, int, int]:
    """``image`` as (1, 3, H', W') padded to 64 on ``model``'s device, and its own H, W."""
    x = to_rgb_tensor(image, batch=True)
    h, w = x.shape[-2:]
    device = next(model.parameters()).device
    return pad_to_multiple(x.to(device))[0], h, w


@torch.no_grad()
def bits_of(codec, image: ImageLike, key: str = "y") -> torch.Tensor:
    """Estimated bits per pixel of ``codec``'s latent ``key`` for one image, (H, W) on the CPU.

    Each latent position's bits (−log2 of its likelihood, with the Gaussian scales rounded to
    the coder's table as ``compress`` rounds them: :meth:`~icm_lib.codec.ICMCodec.coder_likelihoods`),
    summed over channels and spread over the 16 x 16 pixels it covers; its mean over the padded
    image is the estimated bpp of ŷ (the map here is cropped to the image)."""
    was_training = codec.training
    codec.eval()
    try:
        x, h, w = _on(codec, image)
        bits = bit_allocation(codec.coder_likelihoods(x), tuple(x.shape[-2:]), key)
    finally:
        codec.train(was_training)
    return bits[:h, :w].cpu()


@torch.no_grad()
def machine_output(machine, image: ImageLike, thresholded: bool = True):
    """The frozen recognizer's output on one image, on the CPU: for detection a dict of
    ``boxes`` (xyxy), ``labels`` and ``scores`` (only those at or above the machine's
    pseudo-label threshold unless ``thresholded`` is False), for segmentation the (H, W) label
    map."""
    x, h, w = _on(machine.model, image)  # a frozen machine wraps its model
    out = machine.predict(x)[0]
    if machine.task is DETECTION:
        keep = out["scores"] >= machine.score_threshold if thresholded else slice(None)
        return {k: v[keep].cpu() for k, v in out.items()}
    return out[:h, :w].cpu()


@dataclass
class Decoded:
    """One image through real bytes (:func:`decoded`)."""

    x_hat: torch.Tensor  # (3, H, W) on the CPU
    data: bytes
    bpp: float  # real bytes, container included
    bits: torch.Tensor  # (H, W) bits per pixel of ŷ, :func:`bits_of`
    output: object = None  # the machine on x̂ (machine_output), when a machine was given

    def as_panel(self) -> dict:
        """The ``{"x_hat", "bits", "bpp", "output"}`` of one column of
        :func:`~icm_lib.plots.bit_allocation_comparison`."""
        return {"x_hat": self.x_hat, "bits": self.bits, "bpp": self.bpp, "output": self.output}


def decoded(codec, image: ImageLike, machine=None, decoder=None) -> Decoded:
    """Compress ``image`` with ``codec``, decode the bytes (with ``decoder``, e.g. a PatchGAN
    finetuned one, when given: it reads the same bytes), and return x̂, the real bpp, ``codec``'s
    bits map and, with a ``machine``, its output on x̂."""
    x = to_rgb_tensor(image)
    data = codec.compress(x)
    x_hat = (decoder or codec).decompress(data)[0].cpu()
    return Decoded(
        x_hat=x_hat,
        data=data,
        bpp=bpp_from_bytes(len(data), *x.shape[-2:]),
        bits=bits_of(codec, x),
        output=None if machine is None else machine_output(machine, x_hat),
    )


def class_names(dataset) -> list[str]:
    """The class names of a detection (``category_names``) or segmentation (``classes``) set."""
    names = getattr(dataset, "category_names", None) or getattr(dataset, "classes", None)
    if names is None:
        raise TypeError(f"{type(dataset).__name__} has neither category_names nor classes")
    return list(names)


__all__ = ["Decoded", "bits_of", "class_names", "decoded", "machine_output"]


def with_and_without_branch(codecs: dict, task: str, image: ImageLike, machine) -> dict:
    """Iino et al.'s Figs. 5-6 on one image: the baseline ("w/o aux") and aux-enc ("w/ aux")
    codecs at the middle λ of ``codecs`` (``(task, variant, λ) → codec``), and the MSE codec whose
    rate on this image is closest to the baseline's. Returns ``{"panels": name → panel
    (:meth:`Decoded.as_panel`; the baseline's with the machine on the input), "lmbda",
    "mse_lmbda", "bpp": name → bpp, "difference_mean" / "difference_abs_max": the bits map of
    w/o aux minus w/ aux}``."""
    lambdas = sorted(k[2] for k in codecs if k[:2] == (task, "aux-enc"))
    lm = lambdas[len(lambdas) // 2]
    panels = {
        name: decoded(codecs[(task, variant, lm)], image, machine).as_panel()
        for name, variant in (("w/o aux", "baseline"), ("w/ aux", "aux-enc"))
    }
    mse = {
        k[2]: decoded(codecs[k], image, machine).as_panel()
        for k in codecs
        if k[:2] == (task, "mse")
    }
    mse_lm = min(mse, key=lambda m: abs(mse[m]["bpp"] - panels["w/o aux"]["bpp"]))
    panels = {"MSE codec": mse[mse_lm], **panels}
    panels["w/o aux"]["on_input"] = machine_output(machine, image)
    diff = panels["w/o aux"]["bits"] - panels["w/ aux"]["bits"]
    return {
        "panels": panels,
        "lmbda": lm,
        "mse_lmbda": mse_lm,
        "bpp": {k: v["bpp"] for k, v in panels.items()},
        "difference_mean": float(diff.mean()),
        "difference_abs_max": float(diff.abs().max()),
    }


def million_parameters(module: torch.nn.Module) -> float:
    """A model's size as the notebooks print it: parameters in millions."""
    return sum(p.numel() for p in module.parameters()) / 1e6
