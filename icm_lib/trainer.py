"""The codec training loop of every objective: the MSE reference and Iino et al.'s Eq. 4-6.

One loop trains the human-viewing reference codec (:func:`~icm_lib.losses.mse_objective`) and
the codecs for machines (:class:`~icm_lib.losses.ICMObjective`: the frozen recognizer's task loss
on pseudo-labels, plus the auxiliary branch's loss for the aux variants). Which run to train and
where it lives is the experiment layer's business (:mod:`icm_lib.experiment`); the command line
is ``python -m icm_lib.train``.

Determinism. Every global batch is a pure function of ``(seed, step)``
(:class:`~icm_lib.data.sampler.CropSampler`), and the random state of each shard's forward pass
(CompressAI's training noise) is reseeded from ``(seed, step, shard)``. A run stopped at any step
and resumed from its last checkpoint therefore continues bit for bit, and a batch split over
``k`` DDP processes or ``k`` accumulation steps computes the same gradient (up to float
summation order).

Multi-GPU: under ``torchrun --nproc_per_node K`` each process takes one shard of the global
batch, gradients are averaged by ``DistributedDataParallel`` (NCCL on CUDA, gloo on CPU), and
only rank 0 writes files.

Files in ``run_dir`` (:class:`~icm_lib.runtime.RunFiles`; one process at a time trains a run
key: a second one waits for the first and then loads the finished codec)::

    checkpoint.pt   latest complete training state (codec, branch, optimizers, scheduler, step, config)
    log.jsonl       one line per logged step: step, loss parts, learning rate, seconds
    codec.pt        the finished codec (weights, entropy tables and config; no branch)
    branch.pt       the finished auxiliary branch, for inspection (never needed to decode)
    config.json     the run's configuration
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn

from .codec import ICMCodec, load_codec
from .data.sampler import CropSampler
from .errors import ConfigError
from .files import load_or_compute
from .losses import Objective
from .profiles import TrainConfig
from .runtime import (
    CheckpointParts,
    Distributed,
    RunFiles,
    mix_seed,
    refuse_training,
    seed_everything,
)


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


def _mean_over_ranks(
    values: dict[str, float], dist: Distributed, device: torch.device
) -> dict[str, float]:
    if not dist.enabled:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return dict(zip(values, (t / dist.world_size).tolist()))


def step_flags(device_type: str, fast: bool | None = None) -> dict[str, bool]:
    """The step's speed settings for a device type (``fast=None``: on for CUDA only; ``True`` /
    ``False`` force them, e.g. to compare the losses with and without them on the CPU).

    ``channels_last``: the frozen recognizer's weights in NHWC layout (faster cuDNN kernels)
    where that is a pure layout change (:func:`_layout_free`); ``cudnn_benchmark``: cuDNN picks
    its fastest algorithms once per shape (CUDA only; the choice may vary between runs, as any
    CUDA run's float summation order does); ``fused_adam``: one Adam kernel for all parameters.
    """
    on = device_type == "cuda" if fast is None else fast
    return {
        "channels_last": on,
        "cudnn_benchmark": on and device_type == "cuda",
        "fused_adam": on,
    }


def _recognizers(objective: Objective) -> list[nn.Module]:
    """The frozen recognizer models an objective runs (none for the MSE objective): the
    machine's, and the folded twin's for the task loss where it has one (``fold_bn``)."""
    machines = [getattr(objective, n, None) for n in ("machine", "loss_machine")]
    models = [getattr(m, "model", None) for m in machines]
    unique = {id(m): m for m in models if m is not None}
    return list(unique.values())


def _contiguous(module: nn.Module) -> bool:
    """Whether every 4-D weight of ``module`` is in the default (NCHW) layout."""
    return all(p.is_contiguous() for p in module.parameters() if p.dim() == 4)


def _layout_free(module: nn.Module) -> bool:
    """Whether ``module``'s results do not depend on its tensors' memory layout: no element-wise
    random draws (dropout masks are drawn in memory order). The codec (CompressAI's training
    noise) and the branch keep their layout for that reason."""
    return not any(isinstance(m, nn.Dropout) and m.p > 0 for m in module.modules())


class StepValues(Mapping):
    """A step's logged values, read from the device only when first looked at (one read for all
    of them, instead of a ``.item()`` per loss part every step), then ``lr`` where given."""

    def __init__(self, tensors: dict[str, torch.Tensor], lr: float | None = None):
        self._tensors, self._values = tensors, None
        self._extra = {} if lr is None else {"lr": lr}

    def _read(self) -> dict[str, float]:
        if self._values is None:
            with torch.profiler.record_function("icm_lib::to_host"):
                values = torch.stack(list(self._tensors.values())).tolist()
            self._values = {**dict(zip(self._tensors, values)), **self._extra}
        return self._values

    def __getitem__(self, key: str) -> float:
        return self._read()[key]

    def __iter__(self):
        return iter([*self._tensors, *self._extra])

    def __len__(self) -> int:
        return len(self._tensors) + len(self._extra)


class Stepper:
    """One optimisation step of the codec (and branch) on this process's shards of a batch, and
    the optimizer state a checkpoint keeps: the codec's (and branch's) Adam with its schedule,
    and the quantile optimizer. ``fast``: :func:`step_flags` (``None``: on for CUDA)."""

    def __init__(
        self,
        codec: ICMCodec,
        branch: nn.Module | None,
        objective: Objective,
        cfg: TrainConfig,
        branch_lr: float | None,
        dist: Distributed,
        accumulate: int,
        device: torch.device,
        fast: bool | None = None,
    ):
        self.codec, self.branch, self.cfg = codec, branch, cfg
        self.dist, self.accumulate, self.device = dist, accumulate, device
        if accumulate < 1:
            raise ConfigError(f"accumulate {accumulate}: a step needs at least 1 micro-batch")
        shards, need = dist.world_size * accumulate, getattr(branch, "min_batch", 1)
        if cfg.batch_size % shards:
            raise ConfigError(
                f"batch_size {cfg.batch_size} is not divisible into {shards} shards "
                f"({dist.world_size} processes x {accumulate} accumulation steps)"
            )
        if cfg.batch_size // shards < need:
            raise ConfigError(
                f"the auxiliary branch trains on at least {need} images at a time (its "
                f"DeepLabV3+ head batch-normalises one pooled value per image), but batch_size "
                f"{cfg.batch_size} over {shards} shards ({dist.world_size} processes x "
                f"{accumulate} accumulation steps) gives {cfg.batch_size // shards}: raise "
                "batch_size or use fewer processes or accumulation steps"
            )
        self.flags = step_flags(device.type, fast)
        step_module = _TrainStep(codec, branch, objective)
        self.model = _ddp(step_module, codec, dist) if dist.enabled else step_module
        groups = [{"params": codec.main_parameters(), "lr": cfg.lr, "name": "codec"}]
        if branch is not None:
            groups.append(
                {"params": list(branch.parameters()), "lr": branch_lr or cfg.lr, "name": "branch"}
            )
        adam = {"fused": True} if self.flags["fused_adam"] else {}
        self.main = torch.optim.Adam(groups, **adam)
        self.quantiles = torch.optim.Adam(codec.quantile_parameters(), lr=cfg.quantile_lr, **adam)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.main, poly_decay(cfg))
        self.state = CheckpointParts(
            optimizer=self.main, quantile_optimizer=self.quantiles, scheduler=self.schedule
        )
        # last, once nothing above can fail: what the step changes outside itself, given back
        # by close() -- the layout of the recognizers (shared with the evaluation and the other
        # runs of the process) and cuDNN's flag
        self._relaid: list[nn.Module] = []
        self._benchmark = torch.backends.cudnn.benchmark
        if self.flags["channels_last"]:  # the recognizer, and its folded twin where there is one
            for machine in _recognizers(objective):
                if _layout_free(machine) and _contiguous(machine):
                    machine.to(memory_format=torch.channels_last)
                    self._relaid.append(machine)
        if self.flags["cudnn_benchmark"]:
            torch.backends.cudnn.benchmark = True

    def close(self) -> None:
        """Give back what the step changed outside itself: the recognizers it laid out
        channels-last are contiguous again (an exact copy), cuDNN's autotuning flag is the
        process's again -- so that what the process evaluates after a training does not depend
        on whether it trained first."""
        for machine in self._relaid:
            machine.to(memory_format=torch.contiguous_format)
        self._relaid = []
        torch.backends.cudnn.benchmark = self._benchmark

    def __call__(self, step: int, batch: torch.Tensor) -> Mapping[str, float]:
        """Train on ``batch`` (the global batch of ``step``); returns this process's loss parts
        (averaged over its micro-batches), the quantile loss and the learning rate, read from
        the device when first looked at (not at steps that are not logged)."""
        shards = batch.tensor_split(self.dist.world_size * self.accumulate)
        self.main.zero_grad(set_to_none=True)
        totals: dict[str, torch.Tensor] = {}
        for micro in range(self.accumulate):
            shard = self.dist.rank * self.accumulate + micro
            torch.manual_seed(mix_seed(self.cfg.seed, step, shard))
            sync = micro == self.accumulate - 1 or not self.dist.enabled
            with contextlib.nullcontext() if sync else self.model.no_sync():
                parts = self.model(shards[shard].to(self.device))
                (parts["loss"] / self.accumulate).backward()
            for k, v in parts.items():  # float64 on the device: the sums .item() gave before
                part = v.detach().double() / self.accumulate
                totals[k] = totals[k] + part if k in totals else part
        if self.cfg.clip_max_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.codec.main_parameters(), self.cfg.clip_max_norm)
            if self.branch is not None:
                torch.nn.utils.clip_grad_norm_(self.branch.parameters(), self.cfg.clip_max_norm)
        self.main.step()
        self.schedule.step()
        qloss = self.codec.quantile_loss()
        self.quantiles.zero_grad(set_to_none=True)
        qloss.backward()
        self.quantiles.step()
        totals["quantile_loss"] = qloss.detach().double()
        return StepValues(totals, self.main.param_groups[0]["lr"])


def train_codec(
    codec: ICMCodec,
    sampler: CropSampler,
    cfg: TrainConfig,
    objective: Objective,
    run_dir: str | Path,
    device: torch.device,
    progress: bool = True,
    stop_after: int | None = None,
    branch: nn.Module | None = None,
    branch_lr: float | None = None,
    accumulate: int = 1,
    dist: Distributed | None = None,
    desc: str | None = None,
    validate: Callable[[ICMCodec], dict[str, float]] | None = None,
    validate_every: int = 0,
) -> tuple[ICMCodec, list[dict]]:
    """Train ``codec`` (load-or-compute): finished runs are loaded, stopped runs resumed.

    Args:
        codec: the model to train (its weights are replaced by a checkpoint's on resume).
        sampler: where global batches come from (``cfg.batch_size`` crops per step).
        cfg: hyper-parameters (stored in the checkpoint).
        objective: ``objective(codec, branch, x) -> {"loss": ..., parts...}``.
        run_dir: folder of this run's files (see module docstring).
        stop_after: stop (after checkpointing) once this step is reached; for tests of resume.
        branch: a module trained jointly with the codec (Iino et al.'s auxiliary branch); it has its
            own parameter group (``branch_lr``, default ``cfg.lr``) and is saved apart.
        accumulate: split each process's share of the batch into this many micro-batches.
        dist: the torchrun job (``None``: one process).
        validate: ``validate(codec) -> {name: value}``, run every ``validate_every`` steps and at
            the last step; its values join that step's log record (which is then written even
            off the logging cadence). It must be deterministic for exact resume.

    Returns:
        The trained codec (entropy tables updated, eval mode) and the log records.
    """
    dist = dist or Distributed(device)
    run = RunFiles(run_dir, cfg.steps, cfg.log_every, cfg.checkpoint_every, dist)
    return load_or_run(
        run,
        device,
        f"the codec run {run.dir.name}",
        lambda: _train(
            codec,
            sampler,
            cfg,
            objective,
            run,
            device,
            progress=progress,
            stop_after=stop_after,
            branch=branch,
            branch_lr=branch_lr,
            accumulate=accumulate,
            dist=dist,
            desc=desc,
            validate=validate,
            validate_every=validate_every,
        ),
    )


def load_or_run(
    run: RunFiles, device: torch.device, what: str, train: Callable[[], tuple[ICMCodec, list]]
) -> tuple[ICMCodec, list[dict]]:
    """A finished run's codec (eval mode, on ``device``) and log, or ``train()``'s, under the
    run's writer lock (:func:`~icm_lib.files.load_or_compute`); ``what`` names the run when a
    cached-only session refuses to train it. Codec runs and PatchGAN finetunings share it."""

    def finished():
        if not run.finished:
            return None
        return load_codec(run.final_state()).to(device).eval(), run.read_log()

    return load_or_compute(finished, train, guard=run.claim, before=lambda: refuse_training(what))


def _train(
    codec: ICMCodec,
    sampler: CropSampler,
    cfg: TrainConfig,
    objective: Objective,
    run: RunFiles,
    device: torch.device,
    *,
    progress: bool,
    stop_after: int | None,
    branch: nn.Module | None,
    branch_lr: float | None,
    accumulate: int,
    dist: Distributed,
    desc: str | None,
    validate: Callable[[ICMCodec], dict[str, float]] | None,
    validate_every: int,
) -> tuple[ICMCodec, list[dict]]:
    """The body of :func:`train_codec` once this process holds the run's claim."""
    seed_everything(cfg.seed)
    codec.to(device).train()
    if branch is not None:
        branch.to(device).train()
    stepper = Stepper(codec, branch, objective, cfg, branch_lr, dist, accumulate, device)
    try:  # (the recognizers' layout and cuDNN's flag given back, also when stopped)
        state = run.restore(device)
        if state is not None:
            codec.model.load_state_dict(state["codec"]["state_dict"])
            if branch is not None:
                branch.load_state_dict(state["branch"])
            stepper.state.load_state_dict(state)
        for step in run.steps(stop_after, desc or f"train codec λ={cfg.lmbda:g}", progress):
            record = stepper(step, sampler.batch(step))
            done = step + 1
            validating = validate is not None and (done % validate_every == 0 or done == cfg.steps)
            if run.log_due(done) or validating:
                record = _mean_over_ranks(record, dist, device)
                run.log(done, {**record, **(validate(codec) if validating else {})})
            run.checkpoint(
                done,
                lambda: {
                    "codec": codec.codec_state(),
                    "config": asdict(cfg),
                    **stepper.state.state_dict(),
                    "branch": branch.state_dict() if branch is not None else None,
                },
            )
        extras = {"branch.pt": {"state_dict": branch.state_dict()}} if branch is not None else None
        return codec, run.close(codec, asdict(cfg), extras)
    finally:
        stepper.close()
