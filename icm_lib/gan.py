"""Decoder-only PatchGAN finetuning of a codec for machines (Le et al.); CLI.

Codecs trained for machines at low rates decode images with checkerboard artifacts. Le et al.
finetune only the **decoder** against a PatchGAN discriminator while the encoder side (analysis
transform, hyperprior, entropy models) stays frozen, so every bitstream stays byte-identical and
the rate does not change::

    x ──► encoder (frozen) ──► ŷ (rounded, as in the bitstream) ──► g_s (trained) ──► x̂
                                                                                      │
          D(patches of x) vs D(patches of x̂)  ◄── PatchGAN (pix2pix, 70x70) ◄──────────┤
          E(y, ŷ): the frozen recognizer on x̂ vs pseudo-labels y = recognizer(x) ◄──────┤
          MSE(x, x̂) ◄─────────────────────────────────────────────────────────────────┘

    L_D = adv_D(D(x), D(x̂))          L_g_s = w_adv·adv_G(D(x̂)) + w_task·E(y, ŷ) + w_pix·MSE(x, x̂)

Presets: ``full`` (``adv_weight``), ``limited`` (``limited_adv_weight``: attenuated adversarial
dynamics, the poster's "limited impact" variant) and ``no-adv`` (weight 0: the control that
finetunes the decoder the same way without the discriminator; not in the poster).

Files in ``run_dir`` (:class:`~icm_lib.runtime.RunFiles`): ``checkpoint.pt`` (codec,
discriminator, both optimizers, step, config), ``log.jsonl``, and at the end ``codec.pt`` (the
finetuned codec alone), ``discriminator.pt`` and ``config.json``; ``writer.lock`` while a
process finetunes (one at a time per run key).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cli import at_least
from .codec import ICMCodec, load_codec
from .data.sampler import CropSampler
from .errors import ConfigError
from .experiment import Experiment
from .files import load_checkpoint
from .profiles import GANConfig, get_profile
from .pseudo_labels import cached
from .results import GanRecord
from .runtime import (
    CheckpointParts,
    RunFiles,
    data_key,
    get_device,
    keyed_path,
    mix_seed,
    seed_everything,
    state_fingerprint,
)
from .tasks import TASKS, Task, get_task
from .trainer import StepValues, load_or_run

PRESETS = ("full", "limited", "no-adv")


class PatchDiscriminator(nn.Module):
    """pix2pix's N-layer PatchGAN: 4x4 convolutions, the first ``n_layers`` with stride 2,
    channels 64-128-256-512, BatchNorm and LeakyReLU(0.2); one logit per overlapping patch.

    Args:
        channels: width of the first layer (64 in pix2pix).
        n_layers: strided layers (3 → a 70 x 70 receptive field).
    """

    def __init__(self, in_channels: int = 3, channels: int = 64, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, channels, 4, 2, 1),
            nn.LeakyReLU(0.2, True),
        ]
        ch = channels
        for i in range(1, n_layers + 1):
            out = channels * min(2**i, 8)
            stride = 2 if i < n_layers else 1
            layers += [
                nn.Conv2d(ch, out, 4, stride, 1, bias=False),
                nn.BatchNorm2d(out),
                nn.LeakyReLU(0.2, True),
            ]
            ch = out
        layers.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    @property
    def receptive_field(self) -> int:
        """Side of the input region one output logit sees: r ← (r − 1)·stride + kernel, from the
        last convolution back to the first."""
        r = 1
        for m in reversed([m for m in self.net if isinstance(m, nn.Conv2d)]):
            r = (r - 1) * m.stride[0] + m.kernel_size[0]
        return r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] → logits (B, 1, h, w), one per patch."""
        return self.net(x * 2 - 1)


def discriminator_loss(real: torch.Tensor, fake: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "lsgan":
        return 0.5 * ((real - 1).pow(2).mean() + fake.pow(2).mean())
    if kind == "ns":
        return 0.5 * (
            F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
            + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
        )
    raise ConfigError(f"adv_loss must be 'lsgan' or 'ns', got {kind!r}")


def generator_loss(fake: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "lsgan":
        return (fake - 1).pow(2).mean()
    if kind == "ns":
        return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
    raise ConfigError(f"adv_loss must be 'lsgan' or 'ns', got {kind!r}")


def random_patches(images: list[torch.Tensor], patch: int, generator: torch.Generator):
    """The same random ``patch`` x ``patch`` window from each image of every tensor in ``images``."""
    h, w = images[0].shape[-2:]
    if patch > min(h, w):
        raise ConfigError(f"patch {patch} is larger than the crops ({h}x{w})")
    b = images[0].shape[0]
    tops = torch.randint(0, h - patch + 1, (b,), generator=generator).tolist()
    lefts = torch.randint(0, w - patch + 1, (b,), generator=generator).tolist()
    return [
        torch.stack(
            [t[i, :, y : y + patch, x : x + patch] for i, (y, x) in enumerate(zip(tops, lefts))]
        )
        for t in images
    ]


def trainable_decoder_parameters(codec: ICMCodec, layers: int | None) -> list[nn.Parameter]:
    """Freeze everything, then unfreeze the first ``layers`` children of g_s (all if ``None``)."""
    for p in codec.parameters():
        p.requires_grad_(False)
    children = list(codec.decoder.children())
    chosen = children if layers is None else children[:layers]
    if not chosen or layers is not None and not 0 < layers <= len(children):
        raise ConfigError(f"decoder_layers must be in 1..{len(children)} or None, got {layers}")
    params = [p for m in chosen for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    return params


def preset_config(cfg: GANConfig, preset: str) -> GANConfig:
    """``full``: as configured; ``limited``: the attenuated adversarial weight; ``no-adv``: the
    control, adversarial weight 0: the same decoder finetuning on the task and pixel terms
    alone, so that what the PatchGAN itself adds can be told from what more decoder steps do.

    A preset may carry another pixel weight, ``<preset>-px<w>`` (``full-px1``: the adversarial
    weight of ``full`` with pixel weight 1): the cells of Le et al.'s factorial
    (``GANConfig.presets``), where at a small pixel weight only the discriminator can remove
    periodic energy."""
    name, _, pixel = preset.partition("-px")
    if name not in PRESETS:
        raise ConfigError(
            f"preset must be one of {PRESETS}, optionally with -px<pixel weight> "
            f"(e.g. full-px1), got {preset!r}"
        )
    weight = {"full": cfg.adv_weight, "limited": cfg.limited_adv_weight, "no-adv": 0.0}[name]
    if not pixel:
        return replace(cfg, adv_weight=weight)
    try:
        pixel_weight = float(pixel)
    except ValueError:
        raise ConfigError(f"{preset!r}: the pixel weight after -px must be a number") from None
    if not pixel_weight >= 0:
        raise ConfigError(f"{preset!r}: the pixel weight must be >= 0")
    return replace(cfg, adv_weight=weight, pixel_weight=pixel_weight)


class _FinetuneStep:
    """One step of decoder-only finetuning: the discriminator on real vs decoded patches, then
    g_s on the adversarial, task and pixel losses; and the state a checkpoint keeps."""

    def __init__(self, codec: ICMCodec, machine, cfg: GANConfig, device: torch.device):
        self.codec, self.machine, self.cfg = codec, machine, cfg
        params = trainable_decoder_parameters(codec, cfg.decoder_layers)
        self.disc = PatchDiscriminator(3, cfg.d_channels, cfg.d_layers).to(device).train()
        self.opt = torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas))
        self.d_opt = torch.optim.Adam(self.disc.parameters(), lr=cfg.d_lr, betas=tuple(cfg.d_betas))
        self.state = CheckpointParts(
            discriminator=self.disc, optimizer=self.opt, d_optimizer=self.d_opt
        )

    def __call__(self, step: int, x: torch.Tensor) -> StepValues:
        cfg, codec, disc = self.cfg, self.codec, self.disc
        torch.manual_seed(mix_seed(cfg.seed, step))
        g = torch.Generator().manual_seed(mix_seed(cfg.seed, step, 1))  # the patch positions
        with torch.no_grad():
            latent_hat = codec.encode(x)["latent_hat"]
            pseudo_labels = self.machine.pseudo_labels(x)
        x_hat = codec.decode(latent_hat)
        real_p, fake_p = random_patches([x, x_hat], cfg.patch, g)
        d_loss = discriminator_loss(disc(real_p), disc(fake_p.detach()), cfg.adv_loss)
        self.d_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        self.d_opt.step()
        adv = generator_loss(disc(fake_p), cfg.adv_loss)
        task = self.machine.task_loss(x_hat, pseudo_labels)["loss"]
        pixel = F.mse_loss(x_hat, x)
        loss = cfg.adv_weight * adv + cfg.task_weight * task + cfg.pixel_weight * pixel
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        disc.zero_grad(set_to_none=True)  # the decoder's step must not leave grads in D
        parts = {"loss": loss, "adv_loss": adv, "task_loss": task, "mse_loss": pixel}
        # read from the device only on a logged step (one read for all five)
        return StepValues({k: v.detach().float() for k, v in {**parts, "d_loss": d_loss}.items()})


def finetune_decoder(
    codec: ICMCodec,
    machine,
    sampler: CropSampler,
    cfg: GANConfig,
    run_dir: str | Path,
    device: torch.device,
    progress: bool = True,
    stop_after: int | None = None,
    desc: str = "PatchGAN finetuning",
) -> tuple[ICMCodec, list[dict]]:
    """Finetune ``codec``'s decoder (load-or-compute; stopped runs resume bit for bit).

    Args:
        codec: a trained codec (changed in place); its encoder side never changes.
        machine: the frozen recognizer whose task loss keeps machine accuracy.
        sampler: training crops (``cfg.batch_size`` x ``cfg.crop``).

    Returns:
        The finetuned codec (eval mode; its entropy tables and coding state are the original's,
        so it decodes the original's streams) and the log.
    """
    run = RunFiles(run_dir, cfg.steps, cfg.log_every, cfg.checkpoint_every)
    return load_or_run(
        run,
        device,
        f"the PatchGAN finetuning {run.dir.name}",
        lambda: _finetune(codec, machine, sampler, cfg, run, device, progress, stop_after, desc),
    )


def _finetune(
    codec: ICMCodec,
    machine,
    sampler: CropSampler,
    cfg: GANConfig,
    run: RunFiles,
    device: torch.device,
    progress: bool,
    stop_after: int | None,
    desc: str,
) -> tuple[ICMCodec, list[dict]]:
    """The body of :func:`finetune_decoder` once this process holds the run's claim."""
    seed_everything(cfg.seed)
    # the encoder codes as in the bitstream (rounding, no noise); the entropy tables stay the
    # base codec's, so the finetuned codec decodes its streams wherever they were built
    codec.to(device).eval()
    stepper = _FinetuneStep(codec, machine, cfg, device)
    state = run.restore(device)
    if state is not None:
        codec.model.load_state_dict(state["codec"]["state_dict"])
        stepper.state.load_state_dict(state)
    for step in run.steps(stop_after, desc, progress):
        record = stepper(step, sampler.batch(step).to(device))
        if run.log_due(step + 1):
            run.log(step + 1, record)
        run.checkpoint(
            step + 1,
            lambda: {
                "codec": codec.codec_state(),
                **stepper.state.state_dict(),
                "config": asdict(cfg),
            },
        )
    for p in codec.parameters():
        p.requires_grad_(True)
    extras = {"discriminator.pt": {"state_dict": stepper.disc.state_dict()}}
    return codec, run.close(codec, asdict(cfg), extras, update_tables=False)


def gan_run_dir(codec: ICMCodec, train_set, cfg: GANConfig, preset: str, cache_dir) -> Path:
    """The cache folder of a finetuning with ``cfg`` (the preset's, seed set): its name carries
    the key of the exact weights of ``codec``, the configuration and the data."""
    return keyed_path(
        Path(cache_dir) / "gan",
        f"{preset}-seed{cfg.seed}",
        {
            # the study's list of presets decides no run: the keys of before the field
            "cfg": {k: v for k, v in asdict(cfg).items() if k != "presets"},
            "codec": state_fingerprint(codec.codec_state()["state_dict"]),
            "data": data_key(train_set.root),
        },
    )


def load_or_finetune(
    codec: ICMCodec,
    machine,
    train_set,
    cfg: GANConfig,
    preset: str,
    seed: int,
    cache_dir: str | Path,
    device: torch.device,
    progress: bool = True,
    stop_after: int | None = None,
) -> tuple[ICMCodec, list[dict], Path]:
    """Finetune a copy of ``codec`` with ``preset`` and ``seed`` (load-or-compute), keyed by the
    exact weights of ``codec`` and the configuration. Returns ``(codec, log, run_dir)``.

    Every preset of a seed trains on the same crops, so the machine's pseudo-labels of them are
    read from the cache in ``<cache_dir>/pseudo`` after the first finetuning has computed them
    (:func:`~icm_lib.pseudo_labels.cached`: the same tensors, bit for bit the same training)."""
    cfg = replace(preset_config(cfg, preset), seed=seed)
    run_dir = gan_run_dir(codec, train_set, cfg, preset, cache_dir)
    copy = load_codec(codec.codec_state())
    sampler = CropSampler(train_set, cfg.crop, cfg.batch_size, seed)
    tuned, log = finetune_decoder(
        copy,
        cached(machine, cache_dir),
        sampler,
        cfg,
        run_dir,
        device,
        progress,
        stop_after,
        desc=f"PatchGAN {preset} seed {seed}",
    )
    return tuned, log, run_dir


@dataclass
class GanPoint:
    """One PatchGAN finetuning and its codecs.

    Attributes:
        run: the typed record (:class:`~icm_lib.results.GanRecord`): before / after R-D points
            with per-image data, log, run folder.
        codec: the finetuned codec; base_codec: the baseline codec it started from.
    """

    run: GanRecord
    codec: ICMCodec = field(repr=False)
    base_codec: ICMCodec = field(repr=False)

    @property
    def record(self) -> dict:
        """The plain view (:meth:`~icm_lib.results.GanRecord.plain`): ``task``, ``lmbda``,
        ``seed``, ``preset``, ``before``, ``after``, ``log``, ``run_dir``, ``train_seconds``."""
        return self.run.plain()


def gan_base(profile) -> tuple[Task, float]:
    """The task and λ of the baseline codecs Le et al.'s finetunings start from:
    ``profile.gan.task`` at ``profile.gan.lmbda`` (default: the task's lowest λ)."""
    task = get_task(profile.gan.task)
    return task, profile.gan.lmbda or min(profile.icm.lambdas(task))


def gan_point(exp: Experiment, seed: int, preset: str) -> GanPoint:
    """Before/after of one decoder-only PatchGAN finetuning (Le et al.): the seed's baseline
    codec of :func:`gan_base` (trained if missing), finetuned with ``preset``; both evaluated
    through real bitstreams (with the checkerboard score)."""
    profile = exp.profile
    task, lmbda = gan_base(profile)
    base = exp.point(task, "baseline", lmbda, seed)
    tuned, log, run_dir = load_or_finetune(
        base.codec,
        exp.machine(task),
        exp.datasets.train(task),
        profile.gan,
        preset,
        seed,
        exp.cache_dir,
        exp.device,
        exp.progress,
    )
    after = exp.evaluate(tuned, task, run_dir / f"eval-{task.name}.json")
    record = GanRecord(
        task=task.name,
        lmbda=lmbda,
        seed=seed,
        preset=preset,
        run_dir=str(run_dir),
        seconds=log[-1]["seconds"] if log else 0.0,
        log=log,
        before=base.run.point(task.name),
        after=after.placed(f"patchgan-{preset}", lmbda, seed),
        base_run_key=base.run.run_key,
        foundations=exp.stood_on(run_dir, [task]),
    )
    return GanPoint(record, tuned, base.codec)


def main(argv: list[str] | None = None) -> dict:
    """``python -m icm_lib.gan --codec data/cache/icm/det-baseline-.../codec.pt --task det``."""
    parser = argparse.ArgumentParser(
        prog="python -m icm_lib.gan", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--codec", required=True, help="a trained codec.pt (e.g. a baseline run's)")
    parser.add_argument("--task", choices=sorted(TASKS), default="det")
    parser.add_argument(
        "--preset", default="full", help=f"one of {PRESETS}, optionally -px<pixel weight>"
    )
    parser.add_argument("--seed", type=at_least(0), default=0)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--device", default="")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    profile = get_profile(args.profile)
    cfg = profile.gan if args.steps is None else replace(profile.gan, steps=args.steps)
    preset_config(cfg, args.preset)  # an unknown preset, device or codec: before the data
    device = get_device(args.device or None)
    codec = load_codec(load_checkpoint(args.codec))
    exp = Experiment.prepare(profile, args.data_dir, device, not args.no_progress)
    codec = codec.to(exp.device)
    _, log, run_dir = load_or_finetune(
        codec,
        exp.machine(args.task),
        exp.datasets.train(args.task),
        cfg,
        args.preset,
        args.seed,
        exp.cache_dir,
        exp.device,
        exp.progress,
    )
    summary = {"run_dir": str(run_dir), "steps_logged": len(log), "last": log[-1] if log else None}
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    from .cli import command_status

    raise SystemExit(command_status(main))
