"""The codec training loop of every objective: MSE (human viewing) and seed 001's Eq. 4-6; CLI.

One loop trains the human-viewing reference codec (L = R + λ·255²·MSE, CompressAI's
``RateDistortionLoss``) and the codecs for machines (:class:`ICMObjective`: the frozen recognizer's
task loss on pseudo-labels, plus the auxiliary branch's loss on ŷ for the aux variants).

Determinism. Every global batch is a pure function of ``(seed, step)`` (:class:`CropSampler`), and
the random state of each shard's forward pass (CompressAI's training noise) is reseeded from
``(seed, step, shard)``. A run stopped at any step and resumed from its last checkpoint therefore
continues bit for bit, and a batch split over ``k`` DDP processes or ``k`` accumulation steps
computes the same gradient (up to float summation order).

Multi-GPU: launch with ``torchrun --nproc_per_node K -m icm_lib.train ...``; each process takes one
shard of the global batch, gradients are averaged by ``DistributedDataParallel`` (NCCL on CUDA,
gloo on CPU), and only rank 0 writes files.

Files in ``run_dir``::

    checkpoint.pt   latest complete training state (codec, branch, optimizers, scheduler, step, config)
    log.jsonl       one line per logged step: step, loss parts, learning rate, seconds
    codec.pt        the finished codec (weights + config only; no branch; tables rebuilt on load)
    branch.pt       the finished auxiliary branch, for inspection (never needed to decode)
    config.json     the run's configuration
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .aux_branch import AuxBranch
from .codec import ICMCodec, codec_from_config, load_codec
from .data.sampler import CropSampler
from .losses import icm_loss
from .profiles import Profile, TrainConfig, get_profile
from .runtime import (Distributed, append_log, atomic_torch_save, atomic_write_json,
                      config_hash, load_checkpoint, logged_seconds, read_log, seed_everything,
                      state_fingerprint, truncate_log)

#: training variants: the MSE reference, Eq. 4 (no branch), Eq. 5/6 with the branch on ŷ
#: (proposed) or on g_s's last-layer input (section 4.2)
VARIANTS = ("mse", "baseline", "aux-enc", "aux-dec")
TASKS = ("det", "seg")


#: an objective maps ``(codec, branch or None, x)`` to ``{"loss": ..., parts...}``
Objective = Callable[[ICMCodec, "nn.Module | None", torch.Tensor], dict]


def mse_objective(lmbda: float) -> Objective:
    """CompressAI's ``RateDistortionLoss``: bpp + λ·255²·MSE, returned as a dict of parts."""
    from compressai.losses import RateDistortionLoss

    criterion = RateDistortionLoss(lmbda=lmbda, metric="mse")

    def objective(codec: ICMCodec, branch, x: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = criterion(codec(x), x)
        return {"loss": parts["loss"], "bpp_loss": parts["bpp_loss"], "mse_loss": parts["mse_loss"]}

    return objective


class ICMObjective:
    """Seed 001's Eq. 4-6 for one frozen recognizer.

    ``y`` = the recognizer on the original crop (pseudo-labels, no gradient); ``E(y, ŷ)`` = its
    training loss on the decoded crop; ``E(y, ŷ_aux)`` = the branch's loss on the codec's ŷ (or
    g_s's last-layer input for aux-dec). With ``amp`` (CUDA), the recognizer and the branch run
    under bfloat16 autocast; the codec and its likelihoods stay in float32.

    Args:
        task: a :class:`~icm_lib.recognition.DetectionTask` or ``SegmentationTask``.
        lmbda, alpha, mse_weight: λ, α and the MSE weight of :func:`~icm_lib.losses.icm_loss`.
    """

    def __init__(self, task, lmbda: float, alpha: float = 0.5, mse_weight: float = 0.0,
                 amp: bool = False):
        self.task, self.lmbda, self.alpha, self.mse_weight, self.amp = (
            task, lmbda, alpha, mse_weight, amp)

    def __call__(self, codec: ICMCodec, branch: nn.Module | None,
                 x: torch.Tensor) -> dict[str, torch.Tensor]:
        pseudo_labels = self.task.pseudo_labels(x)
        out = codec(x)
        amp = self.amp and x.device.type == "cuda"
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            task_loss = self.task.task_loss(out["x_hat"], pseudo_labels)["loss"].float()
            branch_loss = (branch(out, pseudo_labels, x.shape[-2:]).float()
                           if branch is not None else None)
        return icm_loss(out, x, task_loss, self.lmbda, branch_loss, self.alpha, self.mse_weight)


class _TrainStep(nn.Module):
    """What DDP wraps: the trained modules and one forward pass of the objective."""

    def __init__(self, codec: ICMCodec, branch: nn.Module | None, objective: Objective):
        super().__init__()
        self.codec, self.branch = codec, branch
        self._objective = objective

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self._objective(self.codec, self.branch, x)


def poly_decay(cfg: TrainConfig) -> Callable[[int], float]:
    """Learning-rate factor: 1 until ``decay_start · steps``, then (1 - t)^power down to 0."""
    start = int(cfg.decay_start * cfg.steps)

    def factor(step: int) -> float:
        if step < start or cfg.steps <= start:
            return 1.0
        return max(0.0, 1.0 - (step - start) / (cfg.steps - start)) ** cfg.decay_power

    return factor


def _shard_seed(seed: int, step: int, shard: int) -> int:
    return (seed * 1_000_003 + step) * 4099 + shard


def _ddp(step_module: _TrainStep, codec: ICMCodec, dist: Distributed) -> nn.Module:
    """Wrap for DDP. The quantiles are left out of it: their loss does not depend on the data,
    so every rank computes the same quantile gradient without communication."""
    from torch.nn.parallel import DistributedDataParallel

    quantiles = codec.quantile_parameters()
    for p in quantiles:
        p.requires_grad_(False)
    try:
        ids = [dist.device.index] if dist.device.type == "cuda" else None
        return DistributedDataParallel(step_module, device_ids=ids, broadcast_buffers=False)
    finally:
        for p in quantiles:
            p.requires_grad_(True)


def train_codec(codec: ICMCodec, sampler: "CropSampler", cfg: TrainConfig, objective: Objective,
                run_dir: str | Path, device: torch.device, progress: bool = True,
                stop_after: int | None = None, branch: nn.Module | None = None,
                branch_lr: float | None = None, accumulate: int = 1,
                dist: Distributed | None = None, desc: str | None = None,
                ) -> tuple[ICMCodec, list[dict]]:
    """Train ``codec`` (load-or-compute): finished runs are loaded, stopped runs resumed.

    Args:
        codec: the model to train (its weights are replaced by a checkpoint's on resume).
        sampler: where global batches come from (``cfg.batch_size`` crops per step).
        cfg: hyper-parameters (stored in the checkpoint).
        objective: ``objective(codec, branch, x) -> {"loss": ..., parts...}``.
        run_dir: folder of this run's files (see module docstring).
        stop_after: stop (after checkpointing) once this step is reached; for tests of resume.
        branch: a module trained jointly with the codec (seed 001's auxiliary branch); it has its
            own parameter group (``branch_lr``, default ``cfg.lr``) and is saved apart.
        accumulate: split each process's share of the batch into this many micro-batches.
        dist: the torchrun job (``None``: one process).

    Returns:
        The trained codec (entropy tables updated, eval mode) and the log records.
    """
    run_dir = Path(run_dir)
    dist = dist or Distributed(device)
    final, ckpt_path, log_path = run_dir / "codec.pt", run_dir / "checkpoint.pt", run_dir / "log.jsonl"
    if final.is_file():
        return load_codec(load_checkpoint(final)).to(device).eval(), read_log(log_path)
    shards = dist.world_size * accumulate
    if cfg.batch_size % shards:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible into {shards} shards "
                         f"({dist.world_size} processes x {accumulate} accumulation steps)")
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    codec.to(device).train()
    if branch is not None:
        branch.to(device).train()
    groups = [{"params": codec.main_parameters(), "lr": cfg.lr, "name": "codec"}]
    if branch is not None:
        groups.append({"params": list(branch.parameters()), "lr": branch_lr or cfg.lr,
                       "name": "branch"})
    opt = torch.optim.Adam(groups)
    qopt = torch.optim.Adam(codec.quantile_parameters(), lr=cfg.quantile_lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, poly_decay(cfg))
    start = 0
    if ckpt_path.is_file():
        state = load_checkpoint(ckpt_path, map_location=device)
        codec.model.load_state_dict(state["codec"]["state_dict"])
        if branch is not None:
            branch.load_state_dict(state["branch"])
        opt.load_state_dict(state["optimizer"])
        qopt.load_state_dict(state["quantile_optimizer"])
        sched.load_state_dict(state["scheduler"])
        start = state["step"]
        if dist.is_main:
            truncate_log(log_path, start)
    step_module = _TrainStep(codec, branch, objective)
    model = _ddp(step_module, codec, dist) if dist.enabled else step_module
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    bar = tqdm(range(start, end), desc=desc or f"train codec λ={cfg.lmbda:g}",
               disable=not (progress and dist.is_main), initial=start, total=cfg.steps)
    t0 = time.perf_counter() - logged_seconds(log_path, start)  # counts across resumes
    for step in bar:
        shares = sampler.batch(step).tensor_split(shards)
        opt.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        for micro in range(accumulate):
            shard = dist.rank * accumulate + micro
            torch.manual_seed(_shard_seed(cfg.seed, step, shard))
            x = shares[shard].to(device)
            sync = micro == accumulate - 1 or not dist.enabled
            with contextlib.nullcontext() if sync else model.no_sync():
                parts = model(x)
                (parts["loss"] / accumulate).backward()
            for k, v in parts.items():
                totals[k] = totals.get(k, 0.0) + v.detach().item() / accumulate
        if cfg.clip_max_norm > 0:
            torch.nn.utils.clip_grad_norm_(codec.main_parameters(), cfg.clip_max_norm)
            if branch is not None:
                torch.nn.utils.clip_grad_norm_(branch.parameters(), cfg.clip_max_norm)
        opt.step()
        sched.step()
        qloss = codec.quantile_loss()
        qopt.zero_grad(set_to_none=True)
        qloss.backward()
        qopt.step()
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            totals = _mean_over_ranks(totals, dist, device)
            record = {"step": done, **totals, "quantile_loss": qloss.item(),
                      "lr": opt.param_groups[0]["lr"],
                      "seconds": round(time.perf_counter() - t0, 3)}
            if dist.is_main:
                append_log(log_path, record)
            bar.set_postfix({k.removesuffix("_loss"): f"{v:.4g}" for k, v in record.items()
                             if k.endswith("loss")})
        if done % cfg.checkpoint_every == 0 or done == end:
            if dist.is_main:
                atomic_torch_save(_state(codec, branch, opt, qopt, sched, done, cfg), ckpt_path)
            dist.barrier()
    if end < cfg.steps:
        return codec, read_log(log_path)
    codec.eval()
    codec.update(force=True)
    if dist.is_main:
        if branch is not None:
            atomic_torch_save({"state_dict": branch.state_dict()}, run_dir / "branch.pt")
        atomic_torch_save(codec.codec_state(), final)
        atomic_write_json(run_dir / "config.json", asdict(cfg))
    dist.barrier()
    return codec, read_log(log_path)


def _mean_over_ranks(values: dict[str, float], dist: Distributed,
                     device: torch.device) -> dict[str, float]:
    if not dist.enabled:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return dict(zip(values, (t / dist.world_size).tolist()))


def _state(codec, branch, opt, qopt, sched, step, cfg) -> dict:
    return {"codec": codec.codec_state(),
            "branch": branch.state_dict() if branch is not None else None,
            "optimizer": opt.state_dict(), "quantile_optimizer": qopt.state_dict(),
            "scheduler": sched.state_dict(), "step": step, "config": asdict(cfg)}


def load_or_train_reference_codec(profile, datasets, cache_dir: str | Path, device: torch.device,
                                  progress: bool = True) -> tuple[ICMCodec, list[dict]]:
    """The human-viewing reference codec of a profile: CompressAI's pretrained weights when the
    profile asks for them, else trained for MSE on the training images (load-or-compute)."""
    seed_everything(profile.mse.seed)  # the initial weights are a function of the seed alone
    codec = codec_from_config(profile.codec)
    if profile.codec.pretrained or profile.mse.steps == 0:
        codec.update(force=True)
        return codec.to(device).eval(), []
    key = config_hash({"codec": asdict(profile.codec), "train": asdict(profile.mse),
                       "data": str(Path(datasets.det_train.root).resolve())})
    sampler = CropSampler(datasets.det_train, profile.mse.crop, profile.mse.batch_size,
                          profile.mse.seed)
    return train_codec(codec, sampler, profile.mse, mse_objective(profile.mse.lmbda),
                       Path(cache_dir) / f"mse-codec-{profile.codec.name}-{key}", device, progress,
                       desc=f"MSE reference codec λ={profile.mse.lmbda:g}")


# ---------------------------------------------------------------------- codecs for machines
def build_branch(profile: Profile, task: str, variant: str, codec: ICMCodec,
                 num_classes: int) -> AuxBranch | None:
    """The auxiliary branch of ``variant`` (``None`` for ``mse`` and ``baseline``)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if not variant.startswith("aux-"):
        return None
    position = variant.removeprefix("aux-")
    channels = codec.M if position == "enc" else codec.decoder_last_layer_channels
    rec = profile.recognition
    det_kwargs = dict(rpn_pre_nms_top_n_train=rec.rpn_pre_nms_top_n_train,
                      rpn_post_nms_top_n_train=rec.rpn_post_nms_top_n_train,
                      rpn_batch_size_per_image=rec.rpn_batch_size_per_image,
                      box_batch_size_per_image=rec.box_batch_size_per_image) if task == "det" else {}
    return AuxBranch(task, position, channels, num_classes, profile.icm.branch_width, **det_kwargs)


def run_config(profile: Profile, task: str, variant: str, lmbda: float, seed: int,
               steps: int | None = None) -> TrainConfig:
    """The training schedule of one run: the task's (or, for ``mse``, the reference's
    finetuning) schedule with this run's λ and seed."""
    base = profile.icm.train(task)
    if variant == "mse":
        base = replace(base, steps=profile.icm.mse_steps, lr=profile.mse.lr)
    return replace(base, lmbda=lmbda, seed=seed, steps=base.steps if steps is None else steps)


def load_or_train_icm(profile: Profile, task: str, variant: str, lmbda: float, seed: int,
                      datasets, machine, reference: ICMCodec, cache_dir: str | Path,
                      device: torch.device, progress: bool = True, steps: int | None = None,
                      accumulate: int = 1, dist: Distributed | None = None,
                      stop_after: int | None = None) -> tuple[ICMCodec, list[dict], Path]:
    """One codec of the study (load-or-compute), initialised from ``reference``.

    Args:
        task: ``det`` or ``seg``; ``machine`` is the frozen recognizer of that task.
        variant: one of :data:`VARIANTS` (``mse`` ignores ``machine``; ``lmbda`` is then the MSE λ).
        reference: the human-viewing codec every run starts from (CompressAI's pretrained
            cheng2020-attn in ``paper``; notebook 00's MSE codec in ``cpu``).
        steps: override the profile's step count (tests, quick looks).

    Returns:
        ``(codec, log, run_dir)``.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    cfg = run_config(profile, task, variant, lmbda, seed, steps)
    icm = profile.icm
    train_set = datasets.det_train if task == "det" else datasets.seg_train
    key = config_hash({"train": asdict(cfg), "variant": variant, "task": task,
                       "codec": asdict(profile.codec), "recognition": asdict(profile.recognition),
                       "icm": {k: v for k, v in asdict(icm).items() if k not in ("det", "seg")},
                       "reference": state_fingerprint(reference.codec_state()["state_dict"]),
                       "data": str(Path(train_set.root).resolve())})
    run_dir = Path(cache_dir) / "icm" / f"{task}-{variant}-lmbda{lmbda:g}-seed{seed}-{key}"
    codec = load_codec(reference.codec_state())
    seed_everything(seed)  # the branch's initial weights depend on the seed only
    branch = build_branch(profile, task, variant, codec, train_set.num_classes)
    if variant == "mse":
        objective = mse_objective(lmbda)
    else:
        objective = ICMObjective(machine, lmbda, icm.alpha, icm.mse_weight(task), icm.amp)
    sampler = CropSampler(train_set, cfg.crop, cfg.batch_size, seed)
    codec, log = train_codec(codec, sampler, cfg, objective, run_dir, device, progress,
                             stop_after=stop_after, branch=branch, branch_lr=icm.branch_lr,
                             accumulate=accumulate, dist=dist,
                             desc=f"{task} {variant} λ={lmbda:g} seed {seed}")
    return codec, log, run_dir


def prepare(profile: Profile, data_dir: str | Path, device: torch.device,
            progress: bool = True, dist: Distributed | None = None):
    """Datasets, both frozen recognizers and the reference codec of a profile (load-or-compute).
    Under torchrun, rank 0 builds what is missing while the others wait, then all load it."""
    from .data import get_datasets
    from .recognition import load_or_train

    dist = dist or Distributed(device)
    cache_dir = Path(data_dir) / "cache"
    if not dist.is_main:
        dist.barrier()
    datasets = get_datasets(profile.data, data_dir, progress=progress and dist.is_main)
    det, seg, _ = load_or_train(profile, datasets, cache_dir, device, progress and dist.is_main)
    reference, _ = load_or_train_reference_codec(profile, datasets, cache_dir, device,
                                                 progress and dist.is_main)
    if dist.is_main:
        dist.barrier()
    return datasets, {"det": det, "seg": seg}, reference, cache_dir


def main(argv: list[str] | None = None) -> dict:
    """``python -m icm_lib.train --task det --variant aux-enc --lmbda 0.8`` (see ``--help``).

    Trains (or loads, or resumes) one codec and prints a JSON summary; under
    ``torchrun --nproc_per_node K`` the batch is split over K processes.
    """
    parser = argparse.ArgumentParser(prog="python -m icm_lib.train", description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="cpu", help="smoke | cpu | paper")
    parser.add_argument("--task", choices=TASKS, required=True)
    parser.add_argument("--variant", choices=VARIANTS, default="aux-enc")
    parser.add_argument("--lmbda", type=float, required=True, help="λ of Eq. 4-6 (MSE λ for mse)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="override the profile's steps")
    parser.add_argument("--accumulate", type=int, default=1, help="micro-batches per step")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--device", default="", help="default: cuda if available, else cpu")
    parser.add_argument("--stop-after", type=int, default=None, help="stop at this step (resumable)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    profile = get_profile(args.profile)
    dist = Distributed(torch.device(args.device) if args.device else None)
    try:
        device = dist.device
        datasets, machines, reference, cache_dir = prepare(profile, args.data_dir, device,
                                                           not args.no_progress, dist)
        codec, log, run_dir = load_or_train_icm(
            profile, args.task, args.variant, args.lmbda, args.seed, datasets,
            machines[args.task], reference, cache_dir, device, not args.no_progress,
            steps=args.steps, accumulate=args.accumulate, dist=dist, stop_after=args.stop_after)
        summary = {"run_dir": str(run_dir), "steps_logged": len(log),
                   "last": log[-1] if log else None, "world_size": dist.world_size,
                   "finished": (run_dir / "codec.pt").is_file()}
        if dist.is_main:
            print(json.dumps(summary, indent=2))
        return summary
    finally:
        dist.close()


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
