"""Figures: annotated images, label maps, training curves, decoded images and bit allocation."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import ListedColormap

from .data.context import IGNORE_INDEX
from .evaluate import mean_curve


def _hwc(image: torch.Tensor) -> np.ndarray:
    return image.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy()


def label_colormap(num_classes: int) -> ListedColormap:
    base = matplotlib.colormaps["tab20"].colors
    return ListedColormap([base[i % len(base)] for i in range(num_classes)])


def draw_boxes(
    ax,
    image: torch.Tensor,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    class_names: Sequence[str],
    scores: torch.Tensor | None = None,
    title: str | None = None,
) -> None:
    """Image with xyxy boxes; labels are 1-based indices into ``class_names``."""
    ax.imshow(_hwc(image))
    cmap = label_colormap(len(class_names))
    for i, (box, label) in enumerate(zip(boxes.tolist(), labels.tolist())):
        x0, y0, x1, y1 = box
        color = cmap(label - 1)
        ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=1.5, color=color))
        text = class_names[label - 1] + (f" {float(scores[i]):.2f}" if scores is not None else "")
        ax.text(
            x0,
            y0,
            text,
            fontsize=6,
            color="white",
            va="bottom",
            bbox=dict(facecolor=color, alpha=0.8, pad=0.5, lw=0),
        )
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=8)


def draw_label_map(
    ax,
    label: torch.Tensor,
    class_names: Sequence[str],
    title: str | None = None,
    legend: bool = False,
) -> None:
    """Dense labels (H, W) in 0..C-1; IGNORE_INDEX is shown black."""
    lab = label.detach().cpu().numpy().astype(float)
    lab[lab == IGNORE_INDEX] = np.nan
    cmap = label_colormap(len(class_names))
    cmap.set_bad("black")
    ax.imshow(lab, cmap=cmap, vmin=-0.5, vmax=len(class_names) - 0.5, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=8)
    if legend:
        handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(i)) for i in range(len(class_names))]
        ax.legend(handles, class_names, fontsize=6, loc="center left", bbox_to_anchor=(1, 0.5))


def dataset_examples(det_set, seg_set, n: int = 4):
    """n images with ground-truth boxes (top) and ground-truth label maps (bottom)."""
    fig, axes = plt.subplots(2, n, figsize=(2.4 * n, 5))
    for i in range(n):
        image, target = det_set[i]
        draw_boxes(
            axes[0, i],
            image,
            target["boxes"],
            target["labels"],
            det_set.category_names,
            title=f"COCO-format #{i}: {len(target['boxes'])} boxes",
        )
        _, label = seg_set[i]
        draw_label_map(
            axes[1, i],
            label,
            seg_set.classes,
            title="Pascal-Context-format labels",
            legend=i == n - 1,
        )
    fig.tight_layout()
    return fig


def loss_curves(logs: dict[str, Sequence[float]], smooth: int = 10, ylog: bool = True):
    """One panel per named loss log, raw and moving average."""
    fig, axes = plt.subplots(1, len(logs), figsize=(4 * len(logs), 3), squeeze=False)
    for ax, (name, log) in zip(axes[0], logs.items()):
        y = np.asarray(log, float)
        ax.plot(y, alpha=0.3, lw=0.8)
        if len(y) >= smooth:
            ax.plot(
                np.arange(smooth - 1, len(y)), np.convolve(y, np.ones(smooth) / smooth, "valid")
            )
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
        if ylog and (y > 0).all():
            ax.set_yscale("log")
    fig.tight_layout()
    return fig


def bit_allocation(
    likelihoods: dict[str, torch.Tensor], size: tuple[int, int], key: str = "y"
) -> torch.Tensor:
    """Bits per latent position of ``likelihoods[key]`` (1, C, h, w), summed over channels and
    spread over the image pixels it covers: (H, W) in bits per pixel; it sums to the latent's bits
    divided by nothing (total bits = map.sum())."""
    bits = (-torch.log2(likelihoods[key][0])).sum(0)
    h, w = bits.shape
    per_pixel = bits / ((size[0] / h) * (size[1] / w))
    return torch.nn.functional.interpolate(per_pixel[None, None], size=size, mode="nearest")[0, 0]


def roundtrip_figure(
    x: torch.Tensor, x_hat: torch.Tensor, bit_map: torch.Tensor | None, caption: str
):
    """Original, decoded, |error| and (optionally) the bit-allocation map side by side."""
    n = 3 + (bit_map is not None)
    fig, axes = plt.subplots(1, n, figsize=(3 * n, 3.2))
    axes[0].imshow(_hwc(x))
    axes[0].set_title("original", fontsize=9)
    axes[1].imshow(_hwc(x_hat))
    axes[1].set_title("decoded from bytes", fontsize=9)
    err = (x_hat.cpu() - x.cpu()).abs().mean(0)
    axes[2].imshow(err.numpy(), cmap="magma")
    axes[2].set_title("|error|", fontsize=9)
    if bit_map is not None:
        im = axes[3].imshow(bit_map.cpu().numpy(), cmap="viridis")
        axes[3].set_title("bits per pixel of ŷ", fontsize=9)
        fig.colorbar(im, ax=axes[3], fraction=0.046)
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle(caption, fontsize=9)
    fig.tight_layout()
    return fig


CURVE_STYLE = {
    "mse": ("MSE codec (human viewing)", "tab:gray", "s"),
    "baseline": ("w/o aux (Eq. 4)", "tab:blue", "o"),
    "aux-enc": ("w/ aux, aux-enc (Eq. 5/6)", "tab:red", "^"),
    "aux-dec": ("aux-dec", "tab:purple", "v"),
    "roi": ("ROI (Ahonen et al., QF)", "tab:green", "D"),
}


def rd_curves(
    curves: dict[str, dict[int, list[dict]]], metric: str, title: str = "", fidelity: str = "psnr"
):
    """R-D curves: task metric vs bpp (left) and ``fidelity`` vs bpp (right).

    Args:
        curves: ``{curve name: {seed: [points with "bpp", metric, fidelity]}}``; each seed is a
            faint line, the mean over seeds (per λ index) a bold one.
    """
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, by_seed in curves.items():
        label, color, marker = CURVE_STYLE.get(name, (name, None, "o"))
        for ax, key in zip(axes, (metric, fidelity)):
            for pts in by_seed.values():
                if len(by_seed) > 1:
                    ax.plot(
                        [p["bpp"] for p in pts],
                        [p[key] for p in pts],
                        color=color,
                        alpha=0.25,
                        lw=0.8,
                        marker=marker,
                        ms=3,
                    )
            mean = mean_curve(by_seed)
            ax.plot(
                [p["bpp"] for p in mean],
                [p[key] for p in mean],
                color=color,
                marker=marker,
                lw=2,
                label=f"{label} (n={len(by_seed)})",
            )
    axes[0].set_ylabel({"map": "mAP@[.5:.95]", "miou": "mIoU"}.get(metric, metric))
    axes[1].set_ylabel({"psnr": "PSNR (dB)", "ms_ssim": "MS-SSIM"}.get(fidelity, fidelity))
    for ax in axes:
        ax.set_xlabel("bits per pixel (real bitstreams)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def save(fig, output_dir: str | Path, name: str) -> Path:
    path = Path(output_dir) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path
