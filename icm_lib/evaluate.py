"""R-D points from real bitstreams, R-D curves of runs, and BD-rate tables.

Every val image is compressed to bytes and decoded from them; the bpp is counted from the bytes
(container included) per original pixel, and the decoded images are scored by the frozen
recognizer against ground truth (mAP for detection, mIoU for segmentation) and by PSNR / MS-SSIM.

For sweeps with a slow coder (cheng2020-attn on 5,000 COCO images) a point can instead use the
**estimated rate** (``real_images=k``): every image goes through the codec's forward pass in
eval mode (x̂ = g_s(ŷ) and bpp = -Σ log₂ p / pixels), and only the first ``k`` images are also
coded to bytes, to report actual / estimated bits (``real_check``) and how far the forward pass's
x̂ is from the decoded one. The point says which it used (``rate``).

Every point keeps per-image data (:class:`~icm_lib.results.ImageRecords`): each image's bits,
fidelity and metric contribution (per-class intersection / union counts; COCO-matched
detections), so statistics can resample images as well as seeds.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .codec import ICMCodec
from .data.context import IGNORE_INDEX
from .data.transforms import pad_to_multiple
from .errors import BDRateError
from .files import load_or_compute
from .metrics import (
    ConfusionMatrix,
    bd_rate,
    checkerboard_score,
    detection_map,
    detection_matches,
    ms_ssim,
    psnr,
)
from .recognition.evaluation import eval_batches
from .results import (
    ImageRecords,
    RDPoint,
    RunRecord,
    finite_or_none,
    read_evaluation,
    write_evaluation,
)
from .roi import latent_roi_mask, roi_scaling
from .tasks import DETECTION, Task, get_task

#: what every R-D point holds besides the task metric (:func:`summary_point`)
POINT_KEYS = ("bpp", "psnr", "ms_ssim", "checkerboard")


class BitstreamRoundTrip:
    """A batch transform (B, 3, H, W) -> decoded images through real bytes; it accumulates the
    actual bits, the estimated bits and the fidelity of everything it coded.

    Args:
        codec: the codec.
        roi_dataset: with ``roi_qf``, apply the ROI baseline (:mod:`icm_lib.roi`) using
            ``roi_dataset.roi_mask(i)`` for the i-th image coded; images must then arrive in the
            dataset's order (as :func:`~icm_lib.recognition.evaluation.eval_batches` yields them).
        roi_qf: the quantization factor outside the ROI.
    """

    def __init__(
        self,
        codec: ICMCodec,
        roi_dataset=None,
        roi_qf: float | None = None,
        real_images: int | None = None,
    ):
        self.codec = codec.eval()
        self.roi_dataset, self.roi_qf = roi_dataset, roi_qf
        if real_images is not None and roi_qf is not None:
            raise ValueError("the ROI baseline is evaluated through real bitstreams only")
        self.real_images = real_images
        self.bits = self.estimate_bits = self.pixels = 0.0
        self.psnr_sum = self.msssim_sum = self.checkerboard_sum = 0.0
        self.images = 0
        #: per image, in coding order: pixels, bits, PSNR, MS-SSIM, checkerboard score
        self.per_image: dict[str, list] = {
            k: [] for k in ("pixels", "bits", "psnr", "ms_ssim", "checkerboard")
        }
        self.check = {"images": 0, "bits": 0.0, "estimate_bits": 0.0, "x_hat_max_abs_diff": 0.0}

    def _code(self, x: torch.Tensor):
        if self.roi_qf is None:
            return self.codec.roundtrip(x[None])
        mask = latent_roi_mask(self.roi_dataset.roi_mask(self.images), tuple(x.shape[-2:]))
        with roi_scaling(self.codec, mask, self.roi_qf):
            return self.codec.roundtrip(x[None])

    def _estimate(self, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        """x̂ of the forward pass (eval mode: ŷ rounded around the means) and its estimated
        bpp; the first ``real_images`` images are also coded to bytes for the check."""
        h, w = x.shape[-2:]
        padded, _ = pad_to_multiple(x[None])
        out = self.codec(padded)
        x_hat = out["x_hat"][..., :h, :w].clamp(0, 1)
        bpp = float(self.codec.bpp_estimate(out["likelihoods"], h * w))
        if self.check["images"] < self.real_images:
            coded = self._code(x)
            c = self.check
            c["images"] += 1
            c["bits"] += coded.bpp * h * w
            c["estimate_bits"] += bpp * h * w
            diff = float((coded.x_hat.to(x_hat) - x_hat).abs().max())
            c["x_hat_max_abs_diff"] = max(c["x_hat_max_abs_diff"], diff)
        return x_hat, bpp

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        decoded = []
        for x in images:
            pixels = x.shape[-1] * x.shape[-2]
            if self.real_images is None:
                coded = self._code(x)
                x_hat, bpp, estimate = coded.x_hat, coded.bpp, coded.bpp_estimate
            else:
                x_hat, bpp = self._estimate(x)
                estimate = bpp
            self.bits += bpp * pixels
            self.estimate_bits += estimate * pixels
            self.pixels += pixels
            h, w = (x.shape[-2] // 16) * 16, (x.shape[-1] // 16) * 16  # whole periods only
            image = {
                "pixels": pixels,
                "bits": bpp * pixels,
                "psnr": psnr(x_hat, x[None].to(x_hat)),
                "ms_ssim": ms_ssim(x_hat, x[None].to(x_hat)),
                "checkerboard": checkerboard_score(
                    x_hat[..., :h, :w], x[None, :, :h, :w].to(x_hat)
                ),
            }
            for k, v in image.items():
                self.per_image[k].append(v)
            self.psnr_sum += image["psnr"]
            self.msssim_sum += image["ms_ssim"]
            self.checkerboard_sum += image["checkerboard"]
            self.images += 1
            decoded.append(x_hat[0])
        return torch.stack(decoded).to(images.device)

    def summary(self) -> dict[str, float]:
        out = {
            "bpp": self.bits / self.pixels,
            "bpp_estimate": self.estimate_bits / self.pixels,
            "psnr": self.psnr_sum / self.images,
            "ms_ssim": self.msssim_sum / self.images,
            "checkerboard": self.checkerboard_sum / self.images,
            "images": self.images,
            "rate": "real" if self.real_images is None else "estimate",
        }
        if self.real_images is not None:
            c = self.check
            out["real_check"] = {
                "images": c["images"],
                "actual_over_estimated_bits": c["bits"] / c["estimate_bits"]
                if c["estimate_bits"]
                else None,
                "x_hat_max_abs_diff": c["x_hat_max_abs_diff"],
            }
        return out


@torch.no_grad()
def score_images(machine, dataset, device: torch.device, transform=None, batch_size: int = 4):
    """The task metric of ``machine`` on ``dataset`` (each batch through ``transform`` first)
    and each image's contribution to it: the loop of
    :func:`~icm_lib.recognition.evaluation.evaluate_detection` / ``evaluate_segmentation`` (the
    same batches, so the same numbers) keeping per-image data.

    Returns:
        ``(scores, per_image)``: ``{"map", "map_50"}`` or ``{"miou", "pixel_acc"}``, and the
        per-image fields of :class:`~icm_lib.results.ImageRecords` for the task (``gt`` and
        ``dt``, or ``intersection``, ``union`` and ``labelled``).
    """
    detection = machine.task is DETECTION
    preds, gts = [], []
    total = None if detection else ConfusionMatrix(machine.num_classes, IGNORE_INDEX)
    seg: dict[str, list] = {"intersection": [], "union": [], "labelled": []}
    for images, targets in eval_batches(dataset, batch_size):
        images = images.to(device)
        if transform is not None:
            images = transform(images)
        if detection:
            preds += [{k: v.cpu() for k, v in p.items()} for p in machine.predict(images)]
            gts += [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
            continue
        h, w = images.shape[-2:]
        pred = machine.predict(pad_to_multiple(images)[0])[..., :h, :w].cpu()
        for p, label in zip(pred, targets):
            total.update(p, label)
            one = ConfusionMatrix(machine.num_classes, IGNORE_INDEX)
            one.update(p, label)
            for k, v in zip(seg, one.counts()):
                seg[k].append(v)
    if detection:
        gt, dt = detection_matches(preds, gts)
        return detection_map(preds, gts), {"gt": gt, "dt": dt}
    return {"miou": total.miou(), "pixel_acc": total.pixel_accuracy()}, seg


def rd_point(
    codec: ICMCodec,
    machine,
    dataset,
    device: torch.device,
    roi_qf: float | None = None,
    real_images: int | None = None,
) -> RDPoint:
    """One R-D point: real bitstreams over ``dataset`` -> bpp, PSNR, MS-SSIM and the task metric
    of ``machine`` (a frozen recognizer; its ``task`` picks the metric) on the decoded images
    against ground truth, with per-image data (``roi_qf``: the ROI baseline; ``real_images``:
    the estimated rate, checked on that many images through real bytes, see the module
    docstring). The point is not yet placed on a curve (:meth:`RDPoint.placed`)."""
    t0 = time.perf_counter()
    rt = BitstreamRoundTrip(codec, dataset if roi_qf is not None else None, roi_qf, real_images)
    scores, per_image = score_images(machine, dataset, device, transform=rt)
    s = rt.summary()
    ids = getattr(dataset, "ids", None)
    images = ImageRecords(
        ids=list(ids[: rt.images]) if ids is not None else list(range(rt.images)),
        **rt.per_image,
        **per_image,
    )
    task = machine.task
    undefined: dict[str, str] = {}
    scores = finite_or_none(scores, undefined, "no class present in targets or predictions")
    return RDPoint(
        task=task.name,
        curve="",
        lmbda=None,
        seed=None,
        bpp=s["bpp"],
        metric=scores.pop(task.metric),
        psnr=s["psnr"],
        ms_ssim=s["ms_ssim"],
        checkerboard=s["checkerboard"],
        bpp_estimate=s["bpp_estimate"],
        rate=s["rate"],
        n_images=s["images"],
        scores=scores,
        seconds=round(time.perf_counter() - t0, 2),
        real_check=s.get("real_check"),
        images=images,
        undefined={("metric" if k == task.metric else k): v for k, v in undefined.items()},
    )


def summary_point(point: RDPoint | dict, task: Task | str) -> dict[str, float]:
    """The numbers a notebook records of an R-D point: bpp, the task metric (as ``metric``),
    PSNR, MS-SSIM and the checkerboard score."""
    point = point.plain() if isinstance(point, RDPoint) else point
    return {"metric": point[get_task(task).metric], **{k: point[k] for k in POINT_KEYS}}


def load_or_evaluate(path: str | Path, compute) -> RDPoint:
    """The R-D point stored at ``path``, or ``compute()`` stored there (atomically) and
    returned; a stored point of another schema (e.g. before per-image data) or a damaged one is
    recomputed (:func:`~icm_lib.results.read_evaluation`)."""

    def compute_and_store() -> RDPoint:
        point = compute()
        write_evaluation(path, point)
        return point

    return load_or_compute(lambda: read_evaluation(path), compute_and_store)


def bd_rate_or_reason(
    anchor: list[dict], test: list[dict], metric: str, front: bool = False
) -> dict:
    """BD-rate (%) of ``test`` against ``anchor`` (lists of R-D points), or why it is undefined;
    ``front``: on the curves' operational fronts (see :func:`icm_lib.metrics.bd_rate`).

    Returns:
        ``{"bd_rate": float | None, "error": str | None}``.
    """
    try:
        value = bd_rate(
            [p["bpp"] for p in anchor],
            [p[metric] for p in anchor],
            [p["bpp"] for p in test],
            [p[metric] for p in test],
            front=front,
        )
        return {"bd_rate": value, "error": None}
    except BDRateError as exc:
        return {"bd_rate": None, "error": str(exc)}


def study_agreement(runs: list[dict], study_curves: dict, task: str) -> list[dict]:
    """This session's runs against the study's R-D points of the same (curve, seed, λ): the
    same run keys, so the numbers should agree (exactly on the kind of machine and thread count
    that ran the study; elsewhere training amplifies float noise, for detection up to the
    seed-to-seed spread). One row per run scored on ``task`` that the study holds."""
    metric = get_task(task).metric
    rows = []
    for r in runs:
        mine = r["eval"].get(task)
        theirs = [
            p
            for p in study_curves.get(task, {}).get(r["variant"], {}).get(r["seed"], [])
            if p.get("lmbda") == r["lmbda"]
        ]
        if mine is None or not theirs:
            continue
        rows.append(
            {
                "curve": r["variant"],
                "lmbda": r["lmbda"],
                "seed": r["seed"],
                "bpp": mine["bpp"],
                "bpp_study": theirs[0]["bpp"],
                metric: mine[metric],
                f"{metric}_study": theirs[0][metric],
                "max_abs_difference": max(
                    abs(mine[k] - theirs[0][k]) for k in ("bpp", metric, "psnr")
                ),
            }
        )
    return rows


def gan_agreement(runs: list, recorded: dict) -> list[dict]:
    """This session's PatchGAN finetunings (:class:`~icm_lib.results.GanRecord`) against the
    PatchGAN study's of the same baseline run, preset and seed (``recorded``:
    :func:`~icm_lib.study.recorded_finetunings`, empty where the file was made with other
    finetuning settings): equal on the machine that ran the study, float noise (amplified by
    training) elsewhere. One
    row per run the study holds, the codec after finetuning compared."""
    rows = []
    for r in runs:
        theirs = recorded.get((r.base_run_key, r.preset, r.seed))
        if theirs is None:
            continue
        mine, study = r.after, theirs.after
        keys = ("bpp", "psnr", "checkerboard", "metric")
        rows.append(
            {
                "preset": r.preset,
                "seed": r.seed,
                **{k: getattr(mine, k) for k in keys},
                **{f"{k}_study": getattr(study, k) for k in keys},
                "max_abs_difference": max(
                    abs(getattr(mine, k) - getattr(study, k))
                    for k in keys
                    if getattr(mine, k) is not None and getattr(study, k) is not None
                ),
            }
        )
    return rows


def mean_ci(values: list[float], confidence: float = 0.95) -> dict:
    """Mean and the half-width of its Student-t confidence interval over the finite values;
    an undefined one (no value; one value's interval) is ``None`` with the reason in
    ``undefined``."""
    from .statistics import t_interval

    t = t_interval(values, confidence)
    if t["n"] == 0:
        reason = "no finite value to average (n=0)"
        return {"mean": None, "ci95": None, "n": 0, "undefined": {"mean": reason, "ci95": reason}}
    if t["n"] == 1:
        why = {"ci95": "one value has no interval (n=1)"}
        return {"mean": t["mean"], "ci95": None, "n": 1, "undefined": why}
    return {"mean": t["mean"], "ci95": t["half"], "n": t["n"]}


def mean_curve(by_seed: dict[int, list[dict]]) -> list[dict]:
    """The seeds' curves averaged point by point (each sorted by λ; as long as the shortest)."""
    n = min(len(pts) for pts in by_seed.values())
    keys = [k for k, v in next(iter(by_seed.values()))[0].items() if isinstance(v, (int, float))]
    return [
        {k: sum(pts[i][k] for pts in by_seed.values()) / len(by_seed) for k in keys}
        for i in range(n)
    ]


def _plain(run: RunRecord | dict) -> dict:
    return run.plain() if isinstance(run, RunRecord) else run


def curves(runs: Sequence[RunRecord | dict], task: str) -> dict[str, dict[int, list[dict]]]:
    """``{curve name: {seed: [R-D points sorted by λ]}}`` for one task from run records
    (:class:`~icm_lib.results.RunRecord` or its plain view; the ROI curve comes from the
    baseline runs' ROI evaluations)."""
    out: dict[str, dict[int, list[dict]]] = {}
    for r in sorted(map(_plain, runs), key=lambda r: r["lmbda"]):
        if task in r["eval"] and (r["task"] == task or r["variant"] == "mse"):
            point = {**r["eval"][task], "lmbda": r["lmbda"]}
            out.setdefault(r["variant"], {}).setdefault(r["seed"], []).append(point)
        if task in r["roi"] and r["task"] == task:
            out.setdefault("roi", {}).setdefault(r["seed"], []).append(
                {**r["roi"][task], "lmbda": r["lmbda"]}
            )
    return out


def bd_rates(task_curves: dict[str, dict[int, list[dict]]], task: str) -> dict[str, dict]:
    """Per-seed BD-rates of every curve against the same seed's baseline (the seed-0 MSE curve
    is compared with every seed's baseline), with their mean and 95 % interval. ``front`` holds
    the same on the operational R-D fronts (dominated points dropped, pchip): the fallback
    estimate where a saturating metric leaves the strict BD-rate undefined."""
    metric = get_task(task).metric
    anchors = task_curves.get("baseline", {})
    table = {}
    for name, by_seed in task_curves.items():
        if name == "baseline":
            continue
        pairs = {
            seed: (
                anchor,
                by_seed.get(seed, by_seed.get(0)) if name == "mse" else by_seed.get(seed),
            )
            for seed, anchor in anchors.items()
        }
        pairs = {seed: pair for seed, pair in pairs.items() if pair[1]}
        per_seed = {seed: bd_rate_or_reason(a, t, metric) for seed, (a, t) in pairs.items()}
        on_front = {
            seed: bd_rate_or_reason(a, t, metric, front=True) for seed, (a, t) in pairs.items()
        }
        table[name] = {
            "per_seed": per_seed,
            **mean_ci([v["bd_rate"] for v in per_seed.values()]),
            # the seed-averaged curves: less noisy, defined more often
            "of_mean_curves": bd_rate_or_reason(mean_curve(anchors), mean_curve(by_seed), metric)
            if anchors
            else None,
            "front": {"per_seed": on_front, **mean_ci([v["bd_rate"] for v in on_front.values()])},
        }
    return table


def ablation_table(rows: Sequence[RunRecord | dict]) -> dict:
    """Section 4.2's comparison from ablation records
    (:meth:`~icm_lib.experiment.Experiment.ablation_point`): per task and variant, the final
    validation main loss per seed with its mean and 95 % interval, the paired difference to the
    baseline of the same seed (same data order and initial codec, so seed-to-seed spread cancels),
    the validation curves over seeds (mean, min, max per step), and the variants ordered by mean
    final main loss.

    Returns:
        ``{task: {"variants": {variant: {"final": {seed: loss}, "mean", "ci95", "n",
        "vs_baseline": {"mean", "ci95", "n"} (not for the baseline), "curve": {"step", "mean",
        "min", "max"}}}, "order": [variants, lowest final loss first]}}``.
    """
    runs: dict = {}
    for r in map(_plain, rows):
        if r["val"].get("main_loss"):
            runs.setdefault(r["task"], {}).setdefault(r["variant"], []).append(r)
    out = {}
    for task, by_variant in runs.items():
        variants = {}
        for variant, rs in by_variant.items():
            steps = min((r["val"]["step"] for r in rs), key=len)
            losses = np.asarray([r["val"]["main_loss"][: len(steps)] for r in rs])
            final = {r["seed"]: r["val"]["main_loss"][-1] for r in rs}
            variants[variant] = {
                "final": final,
                **mean_ci(list(final.values())),
                "curve": {
                    "step": list(steps),
                    "mean": losses.mean(0).tolist(),
                    "min": losses.min(0).tolist(),
                    "max": losses.max(0).tolist(),
                },
            }
        base = variants.get("baseline", {}).get("final", {})
        for variant, v in variants.items():
            if variant != "baseline" and base:
                paired = [loss - base[seed] for seed, loss in v["final"].items() if seed in base]
                v["vs_baseline"] = mean_ci(paired)
        out[task] = {
            "variants": variants,
            "order": sorted(variants, key=lambda k: variants[k]["mean"]),
        }
    return out
