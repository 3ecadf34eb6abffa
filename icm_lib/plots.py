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


def draw_machine_output(
    ax, image: torch.Tensor, output, task, class_names: Sequence[str], title: str | None = None
) -> None:
    """``image`` with a machine's output on it: detection boxes (a dict with ``boxes``,
    ``labels``, ``scores``) or a label map (H, W) blended over the image."""
    from .tasks import DETECTION, get_task

    if get_task(task) is DETECTION:
        draw_boxes(
            ax, image, output["boxes"], output["labels"], class_names, output.get("scores"), title
        )
        return
    ax.imshow(_hwc(image))
    cmap = label_colormap(len(class_names))
    ax.imshow(
        output.detach().cpu().numpy(),
        cmap=cmap,
        vmin=-0.5,
        vmax=len(class_names) - 0.5,
        alpha=0.45,
        interpolation="nearest",
    )
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=8)


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


def pseudo_label_grid(x, det_targets, seg_targets, saliency, category_names, classes):
    """Notebook 00's figure: per image (columns) its pseudo-boxes, its pseudo-label map and the
    magnitude of the task-loss gradient at the pixels (square root, for contrast)."""
    n = len(x)
    fig, axes = plt.subplots(3, n, figsize=(2.4 * n, 7.2), squeeze=False)
    for i in range(n):
        d = det_targets[i]
        title = f"{len(d['boxes'])} pseudo-boxes"
        draw_boxes(axes[0, i], x[i], d["boxes"], d["labels"], category_names, title=title)
        draw_label_map(axes[1, i], seg_targets[i], classes, title="pseudo-label map")
        axes[2, i].imshow(saliency[i].detach().cpu().numpy() ** 0.5, cmap="inferno")
        axes[2, i].set_title("|∂E/∂x| (task-loss gradient)", fontsize=8)
        axes[2, i].set_axis_off()
    fig.tight_layout()
    return fig


def recognizer_training(reports: dict):
    """The loss curves of the recognizers trained here (``None`` when both came pretrained)."""
    logs = {f"{k} loss": r["loss_log"] for k, r in reports.items() if r["loss_log"]}
    return loss_curves(logs) if logs else None


def loss_curves(
    logs: dict[str, Sequence[float] | dict[str, Sequence[float]]],
    smooth: int = 10,
    ylog: bool = True,
):
    """One panel per named loss log, raw and moving average. A panel's value may itself be a
    dict of named logs (one λ each, say): drawn in one panel, one colour and legend entry each,
    so that runs are compared on one axis."""
    fig, axes = plt.subplots(1, len(logs), figsize=(4 * len(logs), 3), squeeze=False)
    for ax, (name, panel) in zip(axes[0], logs.items()):
        lines = panel if isinstance(panel, dict) else {None: panel}
        positive = True
        for i, (label, log) in enumerate(lines.items()):
            y = np.asarray(log, float)
            positive &= bool((y > 0).all())
            color, smoothed = f"C{i}", len(y) >= smooth  # the smoothed line carries the label
            ax.plot(y, alpha=0.3, lw=0.8, color=color, label=None if smoothed else label)
            if smoothed:
                ax.plot(
                    np.arange(smooth - 1, len(y)),
                    np.convolve(y, np.ones(smooth) / smooth, "valid"),
                    color=color,
                    label=label,
                )
        if any(label is not None for label in lines):
            ax.legend(fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
        if ylog and positive:
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


def bit_maps(rows: dict[str, tuple[torch.Tensor, dict[str, torch.Tensor]]], difference=None):
    """Bit-allocation maps side by side: per row (title → (image, name → bits map in bpp)) the
    input and each map on one colour scale, captioned with its mean (the estimated bpp);
    ``difference=(a, b)`` adds the map a − b on a diverging scale."""
    columns = 1 + max(len(maps) for _, maps in rows.values()) + (difference is not None)
    fig, axes = plt.subplots(
        len(rows), columns, figsize=(3.3 * columns, 3.3 * len(rows)), squeeze=False
    )
    for row, (title, (image, maps)) in zip(axes, rows.items()):
        row[0].imshow(_hwc(image))
        row[0].set_title(title, fontsize=9)
        vmax = max(float(m.max()) for m in maps.values())
        for ax, (name, m) in zip(row[1:], maps.items()):
            im = ax.imshow(m.cpu().numpy(), cmap="viridis", vmin=0, vmax=vmax)
            ax.set_title(f"{name}: {float(m.mean()):.3f} bpp (estimate)", fontsize=9)
        fig.colorbar(im, ax=row[len(maps)], fraction=0.046)
        if difference is not None:
            diff = (maps[difference[0]] - maps[difference[1]]).cpu()
            lim = float(diff.abs().max()) or 1.0
            row[-1].imshow(diff.numpy(), cmap="bwr", vmin=-lim, vmax=lim)
            row[-1].set_title(f"{difference[0]} − {difference[1]}", fontsize=9)
    for ax in axes.flat:
        ax.set_axis_off()
    fig.tight_layout()
    return fig


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
    "aux-task": ("aux-task", "tab:orange", "P"),
    "roi": ("ROI (Ahonen et al., QF)", "tab:green", "D"),
}


def rd_curves(
    curves: dict[str, dict[int, list[dict]]],
    metric: str,
    title: str = "",
    fidelity: str = "psnr",
    trained: dict[str, list[dict]] | None = None,
):
    """R-D curves: task metric vs bpp (left) and ``fidelity`` vs bpp (right).

    Args:
        curves: ``{curve name: {seed: [points with "bpp", metric, fidelity]}}``; each seed is a
            faint line, the mean over seeds (per λ index) a bold one with the seeds' standard
            deviation in both coordinates as error bars (the seed band).
        trained: ``{curve name: [points]}`` drawn on top as large open markers: the points a
            notebook trained itself, over the study's curves.
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
            if len(by_seed) > 1:
                n = len(mean)
                spread = {
                    k: np.std([[pts[i][k] for i in range(n)] for pts in by_seed.values()], axis=0)
                    for k in ("bpp", key)
                }
                ax.errorbar(
                    [p["bpp"] for p in mean],
                    [p[key] for p in mean],
                    xerr=spread["bpp"],
                    yerr=spread[key],
                    fmt="none",
                    ecolor=color,
                    alpha=0.6,
                    capsize=2,
                )
    for name, pts in (trained or {}).items():
        label, color, marker = CURVE_STYLE.get(name, (name, None, "o"))
        for ax, key in zip(axes, (metric, fidelity)):
            ax.scatter(
                [p["bpp"] for p in pts],
                [p[key] for p in pts],
                s=120,
                facecolors="none",
                edgecolors=color or "k",
                linewidths=1.5,
                marker=marker,
                label=f"{label}: trained here",
                zorder=5,
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


def before_after_spectra(x: torch.Tensor, decoded: dict[str, torch.Tensor], zoom: int = 48):
    """Le et al.'s before/after: zoomed crops of the original and of each decoding (top) and the
    log power spectrum of each residual x̂ − x (bottom), whose periodic peaks are the
    checkerboard. Returns ``(figure, {name: checkerboard score})``.

    Args:
        x: the original (3, H, W); decoded: ``{name: (3, H, W)}`` decodings of the same bytes.
    """
    from .metrics import checkerboard_score

    h, w = (x.shape[1] // 16) * 16, (x.shape[2] // 16) * 16
    z = min(zoom, h, w)
    top, left = (h - z) // 2, (w - z) // 2
    fig, axes = plt.subplots(2, 1 + len(decoded), figsize=(3.2 * (1 + len(decoded)), 6.6))
    axes[0, 0].imshow(_hwc(x[:, top : top + z, left : left + z]), interpolation="nearest")
    axes[0, 0].set_title("original (zoom)", fontsize=9)
    axes[1, 0].imshow(_hwc(x))
    axes[1, 0].set_title("original", fontsize=9)
    scores = {}
    for i, (name, xh) in enumerate(decoded.items(), start=1):
        xh = xh.detach().cpu()
        scores[name] = checkerboard_score(xh[:, :h, :w][None], x[:, :h, :w][None])
        axes[0, i].imshow(_hwc(xh[:, top : top + z, left : left + z]), interpolation="nearest")
        axes[0, i].set_title(f"{name}\ncheckerboard {scores[name]:.3f}", fontsize=9)
        r = (xh[:, :h, :w] - x[:, :h, :w]).mean(0).numpy()
        spec = np.fft.fftshift(np.log10(np.abs(np.fft.fft2(r - r.mean())) ** 2 + 1e-8))
        axes[1, i].imshow(spec, cmap="magma")
        axes[1, i].set_title("log |FFT(x̂ − x)|²", fontsize=9)
    for ax in axes.flat:
        ax.set_axis_off()
    fig.tight_layout()
    return fig, scores


def bit_allocation_comparison(
    image: torch.Tensor, panels: dict, task, class_names, reference: str, compared: tuple[str, str]
):
    """Iino et al.'s Fig. 5-6 for one image: the input and each codec's decoding with the
    machine's output on it (top), each codec's bits per pixel and the difference of two of them
    (bottom; red: the first spends more there).

    Args:
        panels: ``{name: {"x_hat", "output", "bits", "bpp"}}`` per codec (input first is
            added here; ``reference`` names the codec whose decoding the input row omits).
        compared: the two codecs whose bit maps are subtracted, e.g. ``("w/o aux", "w/ aux")``.
    """
    n = len(panels) + 1
    fig, axes = plt.subplots(2, n + 1, figsize=(2.8 * (n + 1), 5.8))
    draw_machine_output(
        axes[0, 0], image, panels[reference]["on_input"], task, class_names, "input + machine"
    )
    vmax = max(float(p["bits"].max()) for p in panels.values())
    for i, (name, p) in enumerate(panels.items(), start=1):
        draw_machine_output(
            axes[0, i], p["x_hat"], p["output"], task, class_names, f"{name}: decoded + machine"
        )
        axes[1, i].imshow(p["bits"].numpy(), cmap="viridis", vmin=0, vmax=vmax)
        axes[1, i].set_title(f"{name}: {p['bpp']:.3f} bpp", fontsize=8)
    a, b = compared
    diff = panels[a]["bits"] - panels[b]["bits"]
    lim = float(diff.abs().max()) or 1.0
    axes[1, n].imshow(diff.numpy(), cmap="bwr", vmin=-lim, vmax=lim)
    axes[1, n].set_title(f"{a} − {b} (bits per pixel)", fontsize=8)
    for ax in axes.flat:
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def validation_curves(table: dict, title: str = ""):
    """Validation main loss vs training step per ablation setting: the mean over seeds (bold)
    and the band between the seeds' lowest and highest (``evaluate.ablation_table``'s task
    entry)."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for name, v in table["variants"].items():
        label, color, marker = CURVE_STYLE.get(name, (name, None, "o"))
        c = v["curve"]
        ax.plot(
            c["step"],
            c["mean"],
            color=color,
            marker=marker,
            ms=3,
            lw=2,
            label=f"{label} (n={v['n']})",
        )
        if v["n"] > 1:
            ax.fill_between(c["step"], c["min"], c["max"], color=color, alpha=0.15)
    ax.set_xlabel("training step")
    ax.set_ylabel("validation main loss (Eq. 4, no branch term)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def branch_positions_diagram():
    """Iino et al.'s Fig. 7 redrawn: where aux-enc, aux-dec and aux-task read their input, and
    which parts of the codec each branch loss reaches."""
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    fig, ax = plt.subplots(figsize=(10, 3.2))
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 3.2)
    ax.set_axis_off()
    boxes = {
        "x": (0.1, "x"),
        "g_a": (1.0, "encoder\ng_a + hyperprior"),
        "y": (2.9, "ŷ"),
        "g_s": (3.8, "decoder g_s\n(all but last layer)"),
        "last": (5.7, "g_s last\nlayer"),
        "xh": (6.9, "x̂"),
        "rec": (7.8, "frozen recognizer\n(conv1-2 | conv3-5, head)"),
    }
    widths = {"x": 0.6, "y": 0.6, "xh": 0.6, "rec": 2.1, "g_a": 1.6, "g_s": 1.6, "last": 0.9}
    for key, (x0, text) in boxes.items():
        ax.add_patch(
            FancyBboxPatch(
                (x0, 1.9), widths[key], 0.8, boxstyle="round,pad=0.05", fc="#e8eef7", ec="#34495e"
            )
        )
        ax.text(x0 + widths[key] / 2, 2.3, text, ha="center", va="center", fontsize=8)
    order = ["x", "g_a", "y", "g_s", "last", "xh", "rec"]
    for a, b in zip(order, order[1:]):
        ax.add_patch(
            FancyArrowPatch(
                (boxes[a][0] + widths[a] + 0.05, 2.3),
                (boxes[b][0] - 0.05, 2.3),
                arrowstyle="-|>",
                mutation_scale=10,
                color="#34495e",
            )
        )
    branches = [
        ("aux-enc (proposed)", 3.2, "tab:red", "reaches g_a only"),
        ("aux-dec", 5.55, "tab:purple", "reaches g_a and g_s (not its last layer)"),
        ("aux-task", 8.6, "tab:orange", "reaches g_a and all of g_s, through the recognizer"),
    ]
    for name, x, color, note in branches:
        ax.add_patch(
            FancyArrowPatch(
                (x, 1.85), (x, 0.95), arrowstyle="-|>", mutation_scale=10, color=color, lw=1.6
            )
        )
        ax.text(
            x, 0.75, f"{name}\nbranch → E(y, ŷ_aux)", ha="center", va="top", fontsize=8, color=color
        )
        ax.text(x, 0.18, note, ha="center", va="top", fontsize=6.5, color=color)
    ax.set_title("Where the auxiliary loss enters (Iino et al., Fig. 7)", fontsize=10)
    return fig


VERDICT_COLORS = {"effect": "#1b7837", "equivalent": "#2166ac", "unresolved": "#b2182b"}


def forest(claims: Sequence, paper: dict[str, float] | None = None, title: str = ""):
    """A forest plot, one panel per estimator: per claim its paired per-seed effects (dots), the
    verdict's interval (bar) around the estimate (square), coloured by verdict, the margin of
    equivalence shaded, 0 as a line, and the paper's number (``paper``: claim name -> value) as
    a red diamond where it is on the same scale."""
    paper = paper or {}
    estimators = list(dict.fromkeys(c.estimator for c in claims))
    counts = [sum(c.estimator == e for c in claims) for e in estimators]
    fig, axes = plt.subplots(
        len(estimators),
        1,
        figsize=(7.5, 0.4 * len(claims) + 1.1 * len(estimators)),
        squeeze=False,
        gridspec_kw={"height_ratios": [n + 1.5 for n in counts]},
    )
    for ax, est in zip(axes[:, 0], estimators):
        rows = [c for c in claims if c.estimator == est]
        margin = rows[0].verdict.get("margin")
        if margin:
            ax.axvspan(-margin, margin, color="0.9", zorder=0, label="margin (declared)")
        ax.axvline(0, color="0.4", lw=0.8)
        for i, c in enumerate(rows):
            y = len(rows) - 1 - i
            color = VERDICT_COLORS[c.verdict["verdict"]]
            seeds = [v for v in c.per_seed.values() if v is not None]
            ax.plot(seeds, [y + 0.18] * len(seeds), "o", ms=3, color=color, alpha=0.6)
            iv = c.interval
            if iv["lo"] is not None:
                ax.plot([iv["lo"], iv["hi"]], [y, y], "-", lw=2.2, color=color)
            if iv["estimate"] is not None:
                ax.plot(iv["estimate"], y, "s", ms=6, color=color)
            if c.name in paper:
                ax.plot(paper[c.name], y, "D", ms=6, color="#d6604d", mfc="none", mew=1.5)
            ax.text(1.01, y, c.verdict["verdict"], transform=ax.get_yaxis_transform(),
                    va="center", fontsize=8, color=color)  # fmt: skip
        ax.set_yticks(range(len(rows)))
        ax.set_ylim(-0.6, len(rows) - 0.3)
        ax.set_yticklabels([c.title for c in reversed(rows)], fontsize=7.5)
        ax.set_xlabel(
            {
                "bd_rate": "BD-rate (%), negative = fewer bits",
                "delta_equal_rate": "metric difference at equal rate",
                "val_main_loss": "late validation main loss difference (lower = better)",
                "checkerboard_vs_control": "checkerboard-score change minus the no-adv control",
                "task_change_percent": "task metric change over finetuning (%)",
            }.get(est, est),
            fontsize=8,
        )
    axes[0, 0].set_title(
        title or "paired effects: seeds (dots), 95 % interval, verdict", fontsize=9
    )
    if paper:
        axes[0, 0].plot([], [], "D", color="#d6604d", mfc="none", label="paper")
    axes[0, 0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


def along_or_off(panels: dict[str, tuple[list[dict], float | None]], title: str = ""):
    """Along the anchor curve or off it (:func:`~icm_lib.claims.along_or_off`): one panel per
    task (``panels``: title -> (rows, margin)), each test run a dot at its bits against the
    same seed's anchor run at the same λ (x, %) and its metric above the anchor curve at its own
    rate (y), coloured by λ; the declared margin shaded, and the offset a curve as much cheaper
    as the paper reports would have at these runs' rates (dashed). Runs outside the anchor
    curve's rates have no offset and are counted in the panel's title."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (name, (rows, margin)) in zip(axes[0], panels.items()):
        shown = [r for r in rows if r["offset"] is not None and r["bits_change"] is not None]
        lambdas = sorted({r["lmbda"] for r in rows})
        colors = plt.cm.viridis(np.linspace(0.1, 0.85, max(1, len(lambdas))))
        if margin:
            ax.axhspan(-margin, margin, color="0.9", zorder=0, label="margin (declared)")
        ax.axhline(0, color="0.4", lw=0.8)
        ax.axvline(0, color="0.4", lw=0.8)
        for lmbda, color in zip(lambdas, colors):
            pts = [r for r in shown if r["lmbda"] == lmbda]
            ax.plot([r["bits_change"] for r in pts], [r["offset"] for r in pts], "o", ms=5,
                    color=color, alpha=0.85, label=f"λ {lmbda:g}")  # fmt: skip
        paper = [r["paper_offset"] for r in shown if r["paper_offset"] is not None]
        if paper:
            ax.axhline(float(np.mean(paper)), color="#d6604d", ls="--", lw=1.2,
                       label="the paper's curve (mean)")  # fmt: skip
        ax.set_title(f"{name}\n{len(shown)} of {len(rows)} runs inside the anchor's rates",
                     fontsize=8.5)  # fmt: skip
        ax.set_xlabel("bits against the same λ and seed's anchor run (%)", fontsize=8)
        ax.set_ylabel("metric above the anchor curve at equal rate", fontsize=8)
        ax.legend(fontsize=6.5, loc="best")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def save(fig, output_dir: str | Path, name: str) -> Path:
    path = Path(output_dir) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path
