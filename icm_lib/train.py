"""The codec training loop: load-or-compute, exact resume, atomic checkpoints, a JSONL log.

This module trains the rate-distortion codec (L = R + λ·255²·MSE, CompressAI's
``RateDistortionLoss``) used as the human-viewing reference. The task-loss objectives of seed 001
plug into the same loop through ``loss_fn``.

Every batch is a pure function of ``(seed, step)`` (:class:`CropSampler`), so a run stopped at any
step and resumed from its last checkpoint continues bit for bit like an uninterrupted one.

Files in ``run_dir``::

    checkpoint.pt   latest complete training state (codec, both optimizers, step, config, RNG)
    log.jsonl       one line per logged step: step, loss parts, seconds
    codec.pt        the finished codec (weights + config only; entropy tables rebuilt on load)
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .codec import ICMCodec, codec_from_config, load_codec
from .data.transforms import random_crop
from .profiles import TrainConfig
from .runtime import (atomic_torch_save, atomic_write_json, config_hash, load_checkpoint,
                      rng_state, seed_everything, set_rng_state)


class CropSampler:
    """Batches of random crops that depend only on ``(seed, step)``.

    Args:
        dataset: items ``(image (3, H, W), target)``; only images are used.
        crop: crop side.
    """

    def __init__(self, dataset: Dataset, crop: int, batch_size: int, seed: int):
        self.dataset, self.crop, self.batch_size, self.seed = dataset, crop, batch_size, seed
        self._cache: dict[int, torch.Tensor] = {}

    def _image(self, idx: int) -> torch.Tensor:
        if idx not in self._cache:
            self._cache[idx] = self.dataset[idx][0]
        return self._cache[idx]

    def batch(self, step: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        idx = torch.randint(0, len(self.dataset), (self.batch_size,), generator=g).tolist()
        crops = []
        for i in idx:
            image = self._image(i)
            crop = random_crop(image, self.crop, g)[0]
            if bool(torch.rand((), generator=g) < 0.5):
                crop = crop.flip(-1)
            crops.append(crop)
        return torch.stack(crops)


def mse_rd_loss(lmbda: float) -> Callable:
    """CompressAI's ``RateDistortionLoss``: bpp + λ·255²·MSE, returned as a dict of parts."""
    from compressai.losses import RateDistortionLoss

    criterion = RateDistortionLoss(lmbda=lmbda, metric="mse")

    def loss_fn(codec: ICMCodec, out: dict, x: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = criterion(out, x)
        return {"loss": parts["loss"], "bpp_loss": parts["bpp_loss"], "mse_loss": parts["mse_loss"]}

    return loss_fn


def _state(codec, opt, qopt, step, cfg) -> dict:
    return {"codec": codec.codec_state(), "optimizer": opt.state_dict(),
            "quantile_optimizer": qopt.state_dict(), "step": step, "config": asdict(cfg),
            "rng": rng_state()}


def train_codec(codec: ICMCodec, sampler: CropSampler, cfg: TrainConfig, loss_fn: Callable,
                run_dir: str | Path, device: torch.device, progress: bool = True,
                stop_after: int | None = None) -> tuple[ICMCodec, list[dict]]:
    """Train ``codec`` (load-or-compute): finished runs are loaded, stopped runs resumed.

    Args:
        codec: the model to train (its weights are replaced by a checkpoint's on resume).
        sampler: where batches come from.
        cfg: hyper-parameters (stored in the checkpoint).
        loss_fn: ``loss_fn(codec, out, x) -> {"loss": ..., parts...}``.
        run_dir: folder of this run's files (see module docstring).
        stop_after: stop (after checkpointing) once this step is reached; for tests of resume.

    Returns:
        The trained codec (entropy tables updated, eval mode) and the log records.
    """
    run_dir = Path(run_dir)
    final, ckpt_path, log_path = run_dir / "codec.pt", run_dir / "checkpoint.pt", run_dir / "log.jsonl"
    if final.is_file():
        return load_codec(load_checkpoint(final)).to(device).eval(), _read_log(log_path)
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    codec.to(device).train()
    opt = torch.optim.Adam(codec.main_parameters(), lr=cfg.lr)
    qopt = torch.optim.Adam(codec.quantile_parameters(), lr=cfg.quantile_lr)
    start = 0
    if ckpt_path.is_file():
        state = load_checkpoint(ckpt_path, map_location=device)
        codec.model.load_state_dict(state["codec"]["state_dict"])
        opt.load_state_dict(state["optimizer"])
        qopt.load_state_dict(state["quantile_optimizer"])
        set_rng_state(state["rng"])
        start = state["step"]
        _truncate_log(log_path, start)
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    bar = tqdm(range(start, end), desc=f"train codec λ={cfg.lmbda:g}", disable=not progress,
               initial=start, total=cfg.steps)
    t0 = time.perf_counter()
    for step in bar:
        x = sampler.batch(step).to(device)
        out = codec(x)
        parts = loss_fn(codec, out, x)
        opt.zero_grad(set_to_none=True)
        parts["loss"].backward()
        if cfg.clip_max_norm > 0:
            torch.nn.utils.clip_grad_norm_(codec.main_parameters(), cfg.clip_max_norm)
        opt.step()
        qloss = codec.quantile_loss()
        qopt.zero_grad(set_to_none=True)
        qloss.backward()
        qopt.step()
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            record = {"step": done, **{k: v.item() for k, v in parts.items()},
                      "quantile_loss": qloss.item(), "seconds": round(time.perf_counter() - t0, 3)}
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k.endswith("loss")})
        if done % cfg.checkpoint_every == 0 or done == end:
            atomic_torch_save(_state(codec, opt, qopt, done, cfg), ckpt_path)
    if end < cfg.steps:
        return codec, _read_log(log_path)
    codec.eval()
    codec.update(force=True)
    atomic_torch_save(codec.codec_state(), final)
    atomic_write_json(run_dir / "config.json", asdict(cfg))
    return codec, _read_log(log_path)


def _read_log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint a run resumes from."""
    records = [r for r in _read_log(path) if r["step"] <= step]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def load_or_train_reference_codec(profile, datasets, cache_dir: str | Path, device: torch.device,
                                  progress: bool = True) -> tuple[ICMCodec, list[dict]]:
    """The human-viewing reference codec of a profile: CompressAI's pretrained weights when the
    profile asks for them, else trained for MSE on the training images (load-or-compute)."""
    codec = codec_from_config(profile.codec)
    if profile.codec.pretrained or profile.mse.steps == 0:
        codec.update(force=True)
        return codec.to(device).eval(), []
    key = config_hash({"codec": asdict(profile.codec), "train": asdict(profile.mse),
                       "data": str(Path(datasets.det_train.root).resolve())})
    sampler = CropSampler(datasets.det_train, profile.mse.crop, profile.mse.batch_size,
                          profile.mse.seed)
    return train_codec(codec, sampler, profile.mse, mse_rd_loss(profile.mse.lmbda),
                       Path(cache_dir) / f"mse-codec-{profile.codec.name}-{key}", device, progress)
