"""Train the recognition models on a dataset, evaluate them, and cache them (load-or-compute).

In the ``paper`` profile the models come pretrained (or from a checkpoint) and training is skipped;
on the embedded default they are trained here from scratch in minutes on a CPU, then frozen for
every codec experiment.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from ..data.coco import CocoDetection
from ..data.context import PascalContextSegmentation
from ..data.sampler import KEEP_ITEMS, CachedItems
from ..data.transforms import random_crop
from ..errors import CheckpointError
from ..files import atomic_torch_save, load_checkpoint, load_or_compute
from ..locks import RunLock
from ..profiles import RecognitionConfig, for_device
from ..runtime import (
    active_seconds,
    data_key,
    forwards_in_bfloat16,
    keyed_path,
    mix_seed,
    refuse_training,
    seed_everything,
    tqdm,
)
from ..tasks import DETECTION, SEGMENTATION, get_task
from .build import build_recognizer
from .common import feature_modules, two_stage
from .detection import FrozenDetector
from .evaluation import evaluate_detection, evaluate_segmentation
from .segmentation import FrozenSegmenter


class RandomCrops(Dataset):
    """Random square crops with a horizontal flip, for detection or segmentation items.

    The items of ``base`` are read once and kept in memory (:class:`CachedItems`,
    ``cache_items`` of them): the same crops as reading them every time, without decoding
    an image file per crop.
    """

    def __init__(self, base: Dataset, crop: int, seed: int = 0, cache_items: int = KEEP_ITEMS):
        self.base, self.crop, self.seed = CachedItems(base, cache_items), crop, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, idx: int):
        g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, idx))
        image, target = self.base[idx]
        flip = bool(torch.rand((), generator=g) < 0.5)
        if isinstance(target, dict):  # detection
            image, boxes, labels, _ = random_crop(
                image, self.crop, g, target["boxes"], target["labels"]
            )
            if flip:
                image = image.flip(-1)
                boxes = torch.stack(
                    [self.crop - boxes[:, 2], boxes[:, 1], self.crop - boxes[:, 0], boxes[:, 3]], 1
                )
            return image, {"boxes": boxes.reshape(-1, 4), "labels": labels}
        image, _, _, label = random_crop(image, self.crop, g, label_map=target)
        if flip:
            image, label = image.flip(-1), label.flip(-1)
        return image, label


def collate_detection(batch):
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]


def crop_at(step: int, steps: int, crop: int, schedule: tuple[tuple[int, float], ...] = ()) -> int:
    """The crop side of training step ``step`` (from 0) of ``steps`` under a resolution schedule
    (``RecognitionConfig.crop_schedule``): each ``(side, fraction)`` for its share of the steps,
    in order (the steps before ``fraction x steps``, added up and rounded half up), then
    ``crop``."""
    end = 0.0
    for side, fraction in schedule:
        end += fraction
        if step < int(end * steps + 0.5):  # half a step up, not round()'s to even
            return side
    return crop


def training_batches(
    dataset: Dataset,
    batch_size: int,
    crop: int,
    seed: int,
    collate_fn=None,
    cache_items: int = KEEP_ITEMS,
    crop_of: Callable[[int], int] | None = None,
) -> Iterator:
    """The endless, seeded stream of training batches a recognizer sees: epochs of shuffled
    :class:`RandomCrops` of ``dataset`` (each epoch crops elsewhere). With ``crop_of``, batch
    ``i`` (from 0) is cropped to ``crop_of(i)`` pixels instead of ``crop`` (a resolution
    schedule, :func:`crop_at`); each batch is drawn when asked for, so the side in force then
    is its side."""
    crops = RandomCrops(dataset, crop, seed, cache_items)
    loader = DataLoader(
        crops,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        collate_fn=collate_fn,
        generator=torch.Generator().manual_seed(seed),
    )
    drawn = 0
    while True:
        epoch = iter(loader)  # read in this process: no worker draws a batch ahead
        while True:
            crops.crop = crop if crop_of is None else crop_of(drawn)
            batch = next(epoch, None)
            if batch is None:
                break
            drawn += 1
            yield batch
        crops.epoch += 1


def _warmup_cosine(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


#: what each mixed training precision runs under bfloat16 autocast (a torchvision Faster R-CNN's
#: modules): the feature computations; anchors, proposals, RoI pooling, box regression and the
#: losses stay float32
MIXED_MODULES = {
    "bfloat16-backbone": lambda m: [m.backbone],
    "bfloat16-features": feature_modules,  # [backbone, rpn.head, roi_heads.box_head]
}


@contextmanager
def _precision(model, precision: str, device_type: str):
    """The scope one training forward and loss run in (``RecognitionConfig.det_train_precision``):
    ``"float32"`` as is; ``"bfloat16"`` all under bfloat16 autocast; the detector's mixed ones
    (:data:`MIXED_MODULES`) only some modules, each handing on float32: ``"bfloat16-backbone"``
    the backbone (ResNet + FPN), ``"bfloat16-features"`` also the RPN's convolutions and the RoI
    box head's MLP -- so box coordinates stay float32 (under full autocast the RPN hands the RoI
    heads boxes at 0.5-1 px resolution on 128-px crops)."""
    if precision == "float32":
        yield
    elif precision == "bfloat16":
        with torch.autocast(device_type, dtype=torch.bfloat16):
            yield
    elif precision in MIXED_MODULES:
        if not two_stage(model):
            raise ValueError(
                f"train precision {precision!r} needs a torchvision Faster R-CNN, not "
                f"{type(model).__name__}: use 'bfloat16' or 'float32'"
            )
        with forwards_in_bfloat16(MIXED_MODULES[precision](model), device_type):
            yield
    else:
        raise ValueError(f"unknown train precision {precision!r}")


def _fit(
    model,
    dataset: Dataset,
    cfg: RecognitionConfig,
    steps: int,
    crop: int,
    seed: int,
    opt,
    loss_of,
    clip: float | None,
    desc: str,
    device: torch.device,
    progress: bool,
    collate_fn=None,
    state_path: Path | None = None,
    evaluate=None,
    precision: str = "float32",
) -> tuple[list[float], list[dict], float]:
    """The loop both recognizers share: seeded random crops of ``dataset`` (``crop`` pixels, or
    the sides of ``cfg.crop_schedule`` first), warm-up + cosine schedule, optional clipping,
    progress bar; returns the loss log, the val curve and the training seconds
    (:func:`~icm_lib.runtime.active_seconds`, over every resume). With ``precision`` other than
    ``"float32"`` the forward and the loss, or some of the detector's modules, run under
    bfloat16 autocast (:func:`_precision`; the weights, gradients and optimizer state stay
    float32).

    With ``state_path`` the training state is saved there every ``cfg.checkpoint_every`` steps
    and a stopped training resumes from it: the batches already seen are drawn again without a
    step, and the random state is restored (the CPU's, and on CUDA the device's: its RPN / RoI
    samplers and dropout draw there), so it ends on the weights of an uninterrupted run (on CUDA
    up to the float summation order of its non-deterministic kernels).
    ``evaluate(model)`` (a metric dict) runs every ``cfg.eval_every`` steps and at the end.
    """
    seed_everything(seed)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: _warmup_cosine(s, steps, max(1, steps // 10))
    )
    params = [p for group in opt.param_groups for p in group["params"]]
    model.to(device).train()
    log: list[float] = []
    curve: list[dict] = []
    batches = training_batches(
        dataset,
        cfg.batch_size,
        crop,
        seed,
        collate_fn,
        crop_of=lambda i: crop_at(i, steps, crop, cfg.crop_schedule),
    )
    start, t0 = 0, active_seconds()
    device_type = torch.device(device).type
    on_cuda = device_type == "cuda"
    state = _training_state(state_path, steps)
    if state is not None:
        t0 -= state.get("seconds", 0.0)  # a state saved before it recorded them: from here
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        start, log, curve = state["step"], state["log"], state["curve"]
        for _ in range(start):  # the data order of an uninterrupted run
            next(batches)
        torch.set_rng_state(state["rng"])
        if state.get("cuda_rng") is not None and on_cuda:  # (RPN/RoI sampling, dropout)
            torch.cuda.set_rng_state(state["cuda_rng"], device)
    bar = tqdm(range(start, steps), desc=desc, disable=not progress, initial=start, total=steps)
    for step in bar:
        with _precision(model, precision, device_type):
            loss = loss_of(next(batches)).float()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        sched.step()
        log.append(loss.item())
        bar.set_postfix(loss=f"{log[-1]:.3f}", refresh=False)
        done = step + 1
        if evaluate is not None and cfg.eval_every and done % cfg.eval_every == 0 and done < steps:
            curve.append({"step": done, **evaluate(model)})
            model.train()
        if state_path is not None and cfg.checkpoint_every and done % cfg.checkpoint_every == 0:
            if done < steps:
                atomic_torch_save(
                    {
                        "model": model.state_dict(),
                        "opt": opt.state_dict(),
                        "sched": sched.state_dict(),
                        "step": done,
                        "steps": steps,
                        "log": log,
                        "curve": curve,
                        "rng": torch.get_rng_state(),
                        # on CUDA the samplers and dropout draw from the device's generator
                        "cuda_rng": torch.cuda.get_rng_state(device) if on_cuda else None,
                        "seconds": active_seconds() - t0,
                    },
                    state_path,
                )
    return log, curve, active_seconds() - t0


def _training_state(path: Path | None, steps: int) -> dict | None:
    """The saved state of a stopped training at ``path`` (``None``: none, or one of another
    schedule, or damaged -- then training starts over, with a warning)."""
    if path is None or not path.is_file():
        return None
    try:
        state = load_checkpoint(path)
    except CheckpointError as exc:
        warnings.warn(f"{exc}; training the recognizer from the start", stacklevel=3)
        return None
    if state.get("steps") != steps:
        warnings.warn(
            f"{path} belongs to a {state.get('steps')}-step schedule, not {steps}; starting over",
            stacklevel=3,
        )
        return None
    return state


def train_detector(
    model,
    dataset: CocoDetection,
    cfg: RecognitionConfig,
    crop: int,
    device: torch.device,
    seed: int = 0,
    progress: bool = True,
    state_path: Path | None = None,
    evaluate=None,
) -> tuple[list[float], list[dict], float]:
    """SGD (momentum 0.9, warm-up + cosine, clipping) on random crops; returns the loss log,
    the val curve and the training seconds (see :func:`_fit` for ``state_path`` and
    ``evaluate``)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.det_lr, momentum=0.9, weight_decay=1e-4)

    def loss_of(batch):
        images, targets = batch
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        return sum(model(list(images.to(device)), targets).values())

    return _fit(
        model,
        dataset,
        cfg,
        cfg.steps_for(DETECTION),
        crop,
        seed,
        opt,
        loss_of,
        10.0,
        "train detector",
        device,
        progress,
        collate_fn=collate_detection,
        state_path=state_path,
        evaluate=evaluate,
        precision=cfg.precision_for(DETECTION),
    )


def train_segmenter(
    model,
    dataset: PascalContextSegmentation,
    cfg: RecognitionConfig,
    crop: int,
    device: torch.device,
    seed: int = 0,
    progress: bool = True,
    state_path: Path | None = None,
    evaluate=None,
) -> tuple[list[float], list[dict], float]:
    """Adam (warm-up + cosine) with the model's own loss (cross-entropy) on random crops;
    returns the loss log, the val curve and the training seconds (see :func:`_fit`)."""
    opt = torch.optim.Adam(model.parameters(), lr=cfg.seg_lr)

    def loss_of(batch):
        images, labels = batch
        return model.loss(images.to(device), labels.to(device))["loss"]

    return _fit(
        model,
        dataset,
        cfg,
        cfg.steps_for(SEGMENTATION),
        crop,
        seed,
        opt,
        loss_of,
        None,
        "train segmenter",
        device,
        progress,
        state_path=state_path,
        evaluate=evaluate,
        precision=cfg.precision_for(SEGMENTATION),
    )


#: settings that change inference but not the trained weights; they do not key the cache
INFERENCE_ONLY = ("score_threshold", "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_test")


def _load_or_train(
    name: str,
    task,
    model,
    make_machine,
    train_fn,
    eval_fn,
    cfg: RecognitionConfig,
    train_set,
    val_set,
    crop: int,
    cache_dir: str | Path,
    device: torch.device,
    seed: int,
    progress: bool,
):
    """Load ``model``'s weights and report from the cache, or train, evaluate and cache them.

    The cache file is keyed by the recognition config, the dataset, the crop and the seed; it holds
    the weights and a report (val metric, training seconds, loss log).
    """
    other = SEGMENTATION if task is DETECTION else DETECTION
    not_ours = set(INFERENCE_ONLY) | {f"{other.name}_train_steps", f"{other.name}_train_precision"}
    trained_by = {k: v for k, v in cfg.key().items() if k not in not_ours}
    path = keyed_path(
        cache_dir,
        name,
        {
            "cfg": trained_by,
            "data": data_key(train_set.root),
            "classes": train_set.num_classes,
            "crop": crop,
            "seed": seed,
        },
        ".pt",
    )

    def train() -> dict:
        steps = cfg.steps_for(task)
        state_path = path.with_name(path.name + ".partial")

        def evaluate(trained):
            return eval_fn(make_machine(copy.deepcopy(trained)), val_set, device)

        log, curve, seconds = (
            train_fn(model, train_set, cfg, crop, device, seed, progress, state_path, evaluate)
            if steps
            else ([], [], 0.0)
        )
        val = eval_fn(make_machine(model), val_set, device)
        report = {
            "val": val,
            "val_curve": curve + ([{"step": steps, **val}] if steps else []),
            "train_seconds": seconds,
            "train_steps": steps,
            "loss_log": log,
            "cached": False,
        }
        atomic_torch_save({"state_dict": model.state_dict(), "report": report}, path)
        state_path.unlink(missing_ok=True)
        return {"report": report}  # the weights are the model's own already

    ckpt = load_or_compute(
        lambda: _cached(path),
        train,
        # one writer per cache file: a second process waits, then loads what the first wrote
        guard=lambda: RunLock(
            path.with_name(path.name + ".lock"), what=f"the recognizer cache {path}"
        ),
        before=lambda: refuse_training(f"the {task.name} recognizer {path.name}"),
    )
    report = ckpt["report"]
    if "state_dict" in ckpt:  # loaded from the cache
        model.load_state_dict(ckpt["state_dict"])
        report["cached"] = True
    report["path"] = str(path)
    return make_machine(model), report


def _cached(path: Path) -> dict | None:
    """The cached recognizer at ``path``, or ``None`` when there is none or it is damaged (cut,
    corrupt, a content hash that does not match): a cache is recomputed, with a warning."""
    if not path.is_file():
        return None
    try:
        ckpt = load_checkpoint(path)
        if not isinstance(ckpt.get("state_dict"), dict) or not isinstance(ckpt.get("report"), dict):
            raise CheckpointError(f"{path} is not a recognizer cache (no state_dict / report)")
        return ckpt
    except CheckpointError as exc:
        warnings.warn(f"{exc}; training the recognizer again", stacklevel=3)
        return None


def load_or_train_detector(
    cfg: RecognitionConfig,
    train_set: CocoDetection,
    val_set: CocoDetection,
    crop: int,
    cache_dir: str | Path,
    device: torch.device,
    seed: int = 0,
    progress: bool = True,
) -> tuple[FrozenDetector, dict]:
    """A frozen :class:`FrozenDetector`, trained and evaluated once (val mAP), then cached."""
    seed_everything(seed)  # the initial weights are a function of the seed alone
    model = build_recognizer(DETECTION, cfg, train_set.num_classes)
    return _load_or_train(
        f"detector-{cfg.model_name(DETECTION)}",
        DETECTION,
        model,
        lambda m: FrozenDetector(m, cfg.score_threshold).to(device),
        train_detector,
        evaluate_detection,
        cfg,
        train_set,
        val_set,
        crop,
        cache_dir,
        device,
        seed,
        progress,
    )


def load_or_train_segmenter(
    cfg: RecognitionConfig,
    train_set: PascalContextSegmentation,
    val_set: PascalContextSegmentation,
    crop: int,
    cache_dir: str | Path,
    device: torch.device,
    seed: int = 0,
    progress: bool = True,
) -> tuple[FrozenSegmenter, dict]:
    """A frozen :class:`FrozenSegmenter`, trained and evaluated once (val mIoU), then cached."""
    seed_everything(seed)  # the initial weights are a function of the seed alone
    model = build_recognizer(SEGMENTATION, cfg, train_set.num_classes)
    return _load_or_train(
        f"segmenter-{cfg.model_name(SEGMENTATION)}",
        SEGMENTATION,
        model,
        lambda m: FrozenSegmenter(m, train_set.num_classes).to(device),
        train_segmenter,
        evaluate_segmentation,
        cfg,
        train_set,
        val_set,
        crop,
        cache_dir,
        device,
        seed,
        progress,
    )


def load_or_train_task(task, profile, datasets, cache_dir, device, progress: bool = True):
    """The frozen recognizer of one task (``det``: the detector, ``seg``: the segmenter) and its
    report, trained once on ``datasets`` and cached in ``cache_dir``, in the precision
    :func:`~icm_lib.profiles.for_device` gives ``profile`` on ``device``."""
    task = get_task(task)
    train = load_or_train_detector if task is DETECTION else load_or_train_segmenter
    return train(
        for_device(profile, device).recognition,
        datasets.train(task),
        datasets.val(task),
        profile.data.train_crop,
        cache_dir,
        device,
        seed=profile.data.seed,
        progress=progress,
    )


def load_or_train(profile, datasets, cache_dir, device, progress: bool = True):
    """Both frozen tasks for a profile, trained once on ``datasets`` and cached in ``cache_dir``.

    Returns:
        ``(FrozenDetector, FrozenSegmenter, {"det": report, "seg": report})``; each report has the
        val metric, training seconds and loss log.
    """
    profile = for_device(profile, device)  # once for both tasks (said once)
    det, det_report = load_or_train_task(DETECTION, profile, datasets, cache_dir, device, progress)
    seg, seg_report = load_or_train_task(
        SEGMENTATION, profile, datasets, cache_dir, device, progress
    )
    return det, seg, {"det": det_report, "seg": seg_report}
