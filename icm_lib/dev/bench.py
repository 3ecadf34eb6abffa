"""Benchmarks that print figures (never timed tests).

    python -m icm_lib.bench codec [--pretrained] [--quality 3] [--repeats 5] [--train-steps 0]
    python -m icm_lib.bench icm [--profile cpu] [--steps 5] [--fast off|on|both]
    python -m icm_lib.bench devices [--train-steps 150]
    python -m icm_lib.bench backends [--profile cpu] [--steps 5]
    python -m icm_lib.bench recognizers [--profile cpu] [--seeds 0 1 2] [--tasks det seg]
        [--precision bfloat16|bfloat16-backbone|bfloat16-features] [--recipe FIELD=VALUE ...]
    python -m icm_lib.bench loading [--profile cpu] [--tasks det seg]
    python -m icm_lib.bench reference [--profile cpu] [--seeds 0 1 2]
    python -m icm_lib.bench compile [--profile cpu] [--tasks seg] [--steps 7]
    python -m icm_lib.bench workers [--profile cpu] [--workers 2] [--steps 5] [--tasks det seg]
        [--labels run|cached|both]
    python -m icm_lib.bench paper-step [--device cpu] [--batch 2] [--crop 128] [--profile-ops]
        (the `paper` profile's training step: icm_lib.dev.stepbench; its own --help)
    python -m icm_lib.bench decode-budget [--size smoke|cpu|zoo] [--claims 512x512 ...]
        [--tile 32 --overlap 8]   (its own --help)

``decode-budget``: what a stream costs a decoder for the size its header claims, in the units a
server operator needs. For each codec family (scale hyperprior ``bmshj2018-hyperprior``,
mean-scale ``mbt2018-mean``, autoregressive ``cheng2020-attn``; random weights, the channel counts
of ``--size``) and each claimed size, a minimal valid stream is crafted (:func:`crafted_stream`:
the claimed header over a payload whose every symbol is the zero residual, the most probable
one; tens of bytes) and decoded by ``ICMCodec.decompress`` in a fresh process: seconds, and the
peak resident memory above what the process held before (``ru_maxrss``), per claimed megapixel.
Square and 1:64 / 64:1 claims of equal area show the autoregressive codecs' aspect-ratio effect
(3 H + W wavefronts). ``--tile T`` adds the peak with :func:`icm_lib.tiling.synthesize_tiled`.

``icm``: the training step as the yardstick (:func:`icm_lib.dev.stepbench.bench_icm_step`): on the
profile's data, machines and reference codec (prepared by notebook 00), the trainer's own step of
each task and variant (baseline, aux-enc) with the step flags off and on (``--fast``), in one run:
s/step (median over ``--steps``), images/s, the share of each phase, the step's FLOPs against
this CPU's large-matmul rate (how far the step is from its arithmetic floor) and the on/off
ratio, a later run's step with its pseudo-labels cached, and (where bfloat16 autocast runs) the
recognizer and branch under bfloat16 with the labels run and cached; then the encode time of
a baseline-trained and an aux-trained codec of the study's cache (ratio; the branch is not
part of the codec, so ~1.0).

``workers``: what a study gains by running W runs side by side (``python -m icm_lib.study
--launcher pool --workers W``: W processes, cores / W torch threads each) instead of one after
another with every core (:func:`icm_lib.dev.stepbench.bench_workers`): per task, variant and
precision (bfloat16 rows as ``icm``'s ``--bf16``), the training step alone and W at once, images/s
of all, and the ratio of training steps per hour.

``backends``: the time of one ICM training step (baseline and aux-enc) with each recognition
backend (torchvision, detectron2, smp, MMSegmentation; random weights; R50/R18 rows compare the
libraries on one architecture, the paper rows are Iino et al.'s models) on the profile's batch and
crop; a backend whose library is not installed is listed as skipped.

``recognizers``: what training a recognizer in bfloat16, or in another schedule, costs and gains
(``RecognitionConfig.det_train_precision`` / ``seg_train_precision``, and any other recognition
field with ``--recipe``): each task's recognizer of the profile trained per seed in the
profile's recipe in float32 and in ``--precision`` (``bfloat16``, or the detector's mixed
``bfloat16-backbone`` / ``bfloat16-features``) with the ``--recipe`` fields changed (e.g.
``det_train_steps=150 det_lr=0.04``: half the steps at twice the peak learning rate; the same
initial weights and batches; load-or-compute in the cache), its val metric, training seconds and
steps side by side, the paired difference per seed and its mean, and the seed-to-seed spread of
the float32 ones. Training seconds are only comparable on a quiet machine.

``reference``: what training the MSE reference codec with its transforms in bfloat16 costs and
gains (``ReferenceConfig.precision``): the profile's reference codec trained per seed
(``mse.seed``) in float32 and in bfloat16 (load-or-compute in the cache), its bpp (estimated) and
PSNR on fixed centre crops of the first ``ablation.val_images`` detection val images (float32
inference either way), training seconds, and the paired differences with the float32
seed-to-seed spread. Training seconds are only comparable on a quiet machine.

``compile``: whether ``torch.compile`` (inductor) pays for the frozen recognizer's part of an
ICM step: its train-mode task loss on the profile's batch (random weights, pseudo-labels of the
same crops) and the backward pass to the input, eager against compiled, in float32 and (where
the device multiplies bfloat16 natively) under bfloat16 autocast: s per call (median of
``--steps`` after two calls), the seconds the first two compiled calls take (the compilation),
and the cosine between the eager and the compiled input gradient with dropout off (on, the two
draw different masks).

``codec``: for each default codec on 512x768 photos (scikit-image's coffee and rocket, resized):
estimated vs actual bpp and their ratio, and the encode/decode time of ``ICMCodec.compress`` /
``decompress`` (icm_lib's device-independent coder; container, checks, padding included) next to
CompressAI's own ``compress`` / ``decompress`` on the same model (what icm_lib used before), as
a ratio, and with the transforms in channels-last layout and in bfloat16 (``cl.*``, ``bf.*``:
the speed-ups, the PSNR change of the round trip and the stream size). Without
``--pretrained`` (offline) the architectures have random weights, so their bpp says nothing
about coding efficiency; ``--train-steps N`` adds small codecs of the three coded families
trained for N steps on procedural scenes, and the cached MSE reference codec of the cpu
profile (trained by notebook 00) is added as a trained row when it exists.

``loading``: what reading the training images costs a recognizer's training: the profile's whole
stream of training batches per task (its steps, batch and crop, seed 0: the batches
:func:`~icm_lib.recognition.training.training_batches` gives the trainer) drawn with every image
read from disk for each crop, and with the items kept in memory (the trainer's way; the same
batches, tested), seconds and ratio side by side. Comparable with a training's seconds only on a
quiet machine.

``devices``: the cross-device table. Small codecs of each family (trained briefly) write streams
of six images on every available "device" (the CPU with its default threads, one thread, the
weights in float64; CUDA with and without TF32 when present) and every other one decodes them:
``identical`` (the writer's ŷ exactly), ``refused`` (BitstreamError) or ``differ``. The same is
done with CompressAI's own coder, whose tables each reader rebuilds with ``update()`` on its own
device (what ``load_codec`` did before), for comparison.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..cli import at_least
from ..codec import CODEC_NAMES, ICMCodec, build_codec, load_codec
from ..data.images import to_rgb_tensor
from ..data.transforms import pad_to_multiple
from ..errors import ConfigError
from ..files import load_checkpoint
from ..metrics import bpp_from_bytes
from ..profiles import parse_overrides
from ..runtime import bf16_hardware, bf16_native, bf16_slower, env_path
from .common import FAMILY_CODECS, scene_images, train_briefly


def bench_images(size: tuple[int, int] = (512, 768)) -> list[torch.Tensor]:
    from skimage import data

    out = []
    for name in ("coffee", "rocket"):
        x = to_rgb_tensor(getattr(data, name)())[None]
        out.append(
            F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False).clamp(
                0, 1
            )
        )
    return out


def _time(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def bench_codec(codec: ICMCodec, label: str, images: list[torch.Tensor], repeats: int) -> dict:
    codec.eval()
    codec.update(force=True)
    rows = []
    for x in images:
        xp, _ = pad_to_multiple(x)
        coded = codec.roundtrip(x)
        data = codec.compress(x)
        t = _codec_times(codec, x, data, repeats)
        t_ours_enc, t_cai_enc, t_ours_dec, t_cai_dec = (
            t[k] for k in ("ours_enc", "cai_enc", "ours_dec", "cai_dec")
        )
        raw = t["raw"]
        cai_bytes = sum(len(s[0]) for s in raw["strings"])
        rows.append(
            dict(
                est=coded.bpp_estimate,
                coder=coded.bpp_coder_estimate,
                act=coded.bpp,
                pay=coded.bpp_payload,
                pay_cai=coded.bpp_payload / bpp_from_bytes(cai_bytes, *x.shape[-2:]),
                enc=t_ours_enc / t_cai_enc,
                dec=t_ours_dec / t_cai_dec,
                t_enc=t_ours_enc,
                t_dec=t_ours_dec,
                c_enc=t_cai_enc,
                c_dec=t_cai_dec,
                g_a=t["g_a"],
                g_s=t["g_s"],
                cod_enc=(t_ours_enc - t["g_a"]) / (t_cai_enc - t["g_a"]),
                cod_dec=(t_ours_dec - t["g_s"]) / (t_cai_dec - t["g_s"]),
                cl_enc=t["cl_enc"] / t_cai_enc,
                cl_dec=t["cl_dec"] / t_cai_dec,
                bf_enc=t["bf_enc"] / t_cai_enc,
                bf_dec=t["bf_dec"] / t_cai_dec,
                **_bf16_costs(codec, x, coded.x_hat, data),
            )
        )
    mean = {k: statistics.fmean(r[k] for r in rows) for k in rows[0]}
    print(
        f"{label:<44}{mean['est']:>8.4f}{mean['coder']:>8.4f}{mean['act']:>8.4f}"
        f"{mean['act'] / mean['est']:>8.3f}{mean['pay'] / mean['coder']:>8.3f}"
        f"{mean['pay_cai']:>8.4f}"
        f"{mean['t_enc']:>8.3f}{mean['c_enc']:>8.3f}{mean['enc']:>7.2f}"
        f"{mean['t_dec']:>8.3f}{mean['c_dec']:>8.3f}{mean['dec']:>7.2f}"
        f"{mean['g_a']:>8.3f}{mean['cod_enc']:>7.3f}{mean['g_s']:>8.3f}{mean['cod_dec']:>7.3f}"
        f"{mean['cl_enc']:>7.2f}{mean['cl_dec']:>7.2f}{mean['bf_enc']:>7.2f}{mean['bf_dec']:>7.2f}"
        f"{mean['bf_db']:>7.3f}{mean['bf_bpp']:>7.4f}",
        flush=True,
    )
    return mean


def _with(codec: ICMCodec, fn, channels_last: bool, bf16: bool = False):
    """``fn()`` with the codec's transforms in channels-last layout and / or bfloat16
    (:attr:`ICMCodec.channels_last`, :attr:`ICMCodec.bf16`)."""
    before = codec.channels_last, codec.bf16
    codec.channels_last, codec.bf16 = channels_last, bf16
    try:
        return fn()
    finally:
        codec.channels_last, codec.bf16 = before


def _bf16_costs(codec: ICMCodec, x: torch.Tensor, x_hat: torch.Tensor, data: bytes) -> dict:
    """What :attr:`ICMCodec.bf16` costs, from one round trip of ``x`` with the transforms in
    bfloat16 against the float32 one (``data`` decoded to ``x_hat``): ``bf_db``, the PSNR
    change in dB, and ``bf_bpp``, the stream size ratio."""
    from ..metrics import psnr

    fast = _with(codec, lambda: codec.compress(x), True, True)
    fast_hat = _with(codec, lambda: codec.decompress(fast), True, True)
    return {"bf_db": psnr(fast_hat, x) - psnr(x_hat, x), "bf_bpp": len(fast) / len(data)}


def _codec_times(codec: ICMCodec, x: torch.Tensor, data: bytes, repeats: int) -> dict:
    """Median seconds of ours / CompressAI's encode and decode of ``x`` (interleaved, so that
    load on the machine hits both), and of the parts both include: ``g_a`` (the analysis
    transforms, ``h_a`` included) and ``g_s``. CompressAI's ``compress`` = g_a + h_a + its
    entropy coding; its ``decompress`` = its entropy decoding + g_s; ours likewise, plus the
    container and padding; ``cl_enc`` / ``cl_dec``: ours with the transforms in channels-last
    layout; ``bf_enc`` / ``bf_dec``: channels-last and bfloat16. Also CompressAI's strings
    (``raw``)."""
    from ..entropy import analysis

    xp, _ = pad_to_multiple(x)
    latent = codec.compress_with_latent(x)[1]
    with torch.no_grad():
        raw = codec.model.compress(xp)
        fns = {
            "ours_enc": lambda: codec.compress(x),
            "cai_enc": lambda: codec.model.compress(xp),
            "g_a": lambda: analysis(codec.model, xp),
            "cl_enc": lambda: _with(codec, lambda: codec.compress(x), True),
            "bf_enc": lambda: _with(codec, lambda: codec.compress(x), True, True),
            "ours_dec": lambda: codec.decompress(data),
            "cai_dec": lambda: codec.model.decompress(raw["strings"], raw["shape"]),
            "g_s": lambda: codec.decoder(latent),
            "cl_dec": lambda: _with(codec, lambda: codec.decompress(data), True),
            "bf_dec": lambda: _with(codec, lambda: codec.decompress(data), True, True),
        }
        times = {k: [] for k in fns}
        for _ in range(repeats):
            for k, fn in fns.items():
                times[k].append(_time(fn, 1)[0])
    return {**{k: statistics.median(v) for k, v in times.items()}, "raw": raw}


def bench_codec_scaling(name: str, quality: int, pretrained: bool, repeats: int) -> None:
    """``codec --scaling``: encode / decode seconds of one codec from 256x256 to 1080p, ours vs
    CompressAI's (coffee resized; one repeat above 512x768)."""
    from .. import bitstream

    torch.manual_seed(0)
    codec = build_codec(name, quality=quality, pretrained=pretrained).eval()
    codec.update(force=True)
    tag = "pretrained" if pretrained else "random weights"
    print(f"{name} q{quality} ({tag}), torch threads {torch.get_num_threads()}")
    print(
        f"{'image':>10}{'latent':>9}{'waves':>7}{'enc s':>8}{'CAI s':>8}{'CAI/us':>7}{'g_a s':>8}"
        f"{'dec s':>8}{'CAI s':>8}{'CAI/us':>7}{'g_s s':>8}{'pay/CAI':>8}"
    )
    for size in ((256, 256), (512, 768), (1080, 1920)):
        x = bench_images(size)[0]
        data, latent = codec.compress_with_latent(x)
        n = repeats if size[0] * size[1] <= 512 * 768 else 1
        t = _codec_times(codec, x, data, n)
        payload = sum(len(s) for s in bitstream.unpack(data)[1])
        cai_bytes = sum(len(s[0]) for s in t["raw"]["strings"])
        h, w = latent.shape[-2:]
        print(
            f"{size[0]:>5}x{size[1]:<4}{h:>4}x{w:<4}{3 * (h - 1) + w:>7}"
            f"{t['ours_enc']:>8.3f}{t['cai_enc']:>8.3f}{t['cai_enc'] / t['ours_enc']:>7.2f}"
            f"{t['g_a']:>8.3f}{t['ours_dec']:>8.3f}{t['cai_dec']:>8.3f}"
            f"{t['cai_dec'] / t['ours_dec']:>7.2f}{t['g_s']:>8.3f}{payload / cai_bytes:>8.4f}",
            flush=True,
        )
    print(
        "enc/dec s: icm_lib's compress/decompress (g_a resp. g_s included); CAI s: CompressAI's "
        "own compress/decompress (the same); CAI/us: speed-up; g_a s (h_a included), g_s s: the "
        "transforms both include; pay/CAI: payload bytes / CompressAI's strings"
    )


def bench_icm(
    profile_name: str,
    data_dir: Path,
    steps: int,
    repeats: int,
    fast: tuple[bool, ...],
    bf16: str = "auto",
    tasks: tuple[str, ...] = ("det", "seg"),
) -> list[dict]:
    """The training step as the yardstick (:func:`~icm_lib.dev.stepbench.bench_icm_step`), then
    the encode time of a cached aux-enc codec against a baseline. ``bf16``: the bfloat16 rows
    ``on``, ``off``, or ``auto`` (where the device multiplies bfloat16 natively: emulated, they
    take minutes and show only that it is slower)."""
    from ..experiment import Experiment
    from ..profiles import get_profile
    from .stepbench import bench_icm_step

    profile = get_profile(profile_name)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    exp = Experiment.prepare(profile, data_dir, device, progress=False, tasks=tasks)
    with_bf16 = bf16 == "on" or (bf16 == "auto" and bf16_native(device))
    rows = bench_icm_step(exp, steps, tasks=tasks, fast=fast, bf16=with_bf16)
    _encode_time_ratio(exp, repeats)
    return rows


def _median_step(codec, branch, objective, sampler, device, steps: int) -> float:
    """Median seconds of an Adam step of ``codec`` (and ``branch``) under ``objective`` on
    ``sampler``'s batches, after one warm-up step."""
    params = list(codec.main_parameters())
    if branch is not None:
        branch.to(device).train()
        params += list(branch.parameters())
    opt = torch.optim.Adam(params, lr=1e-5)

    def step(i):
        opt.zero_grad(set_to_none=True)
        objective(codec, branch, sampler.batch(i).to(device))["loss"].backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    step(0)  # warm-up
    return statistics.median(_time(lambda i=i: step(i), 1)[0] for i in range(1, steps + 1))


#: ``bench backends``: (task, backend, RecognitionConfig overrides, label) at random weights
BACKEND_ROWS = (
    ("det", "torchvision", {"det_backbone": "resnet18"}, "Faster R-CNN R18-FPN (cpu profile)"),
    ("det", "torchvision", {"det_backbone": "resnet50"}, "Faster R-CNN R50-FPN"),
    ("det", "detectron2", {"det_config": "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"},
     "Faster R-CNN R50-FPN"),
    ("det", "detectron2", {}, "Faster R-CNN X101-32x8d-FPN (paper)"),
    ("seg", "smp", {"seg_encoder": "resnet18"}, "DeepLabV3+ R18 (cpu profile)"),
    ("seg", "smp", {"seg_encoder": "resnet101"}, "DeepLabV3+ R101 (stride 16)"),
    ("seg", "mmseg", {"seg_config": "deeplabv3plus_r18-d8_4xb2-80k_cityscapes-512x1024"},
     "DeepLabV3+ R18-D8"),
    ("seg", "mmseg", {}, "DeepLabV3+ R101-D8 (paper)"),
)  # fmt: skip


def bench_backends(profile_name: str, data_dir: Path, steps: int) -> None:
    """Seconds per ICM training step (baseline and aux-enc) with each recognition backend at
    random weights, on the profile's batch, crop and reference codec architecture."""
    from ..aux_branch import build_branch
    from ..codec import codec_from_config
    from ..data import get_datasets
    from ..data.sampler import CropSampler
    from ..errors import BackendUnavailableError
    from ..losses import ICMObjective
    from ..profiles import get_profile
    from .stepbench import build_machine

    profile = get_profile(profile_name)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    datasets = get_datasets(profile.data, data_dir, progress=False)
    icm = profile.icm
    print(f"profile {profile.name}, device {device}, torch threads {torch.get_num_threads()}")
    print(f"{'task':<5}{'backend':<13}{'model':<38}{'batch':>6}{'crop':>6}", end="")
    print(f"{'baseline s/step':>17}{'aux-enc s/step':>16}")
    for task, backend, overrides, label in BACKEND_ROWS:
        field = "det_backend" if task == "det" else "seg_backend"
        rec = dataclasses.replace(profile.recognition, pretrained=False, **{field: backend})
        rec = dataclasses.replace(rec, **overrides)
        train_set = datasets.train(task)
        cfg = icm.train(task)
        try:
            machine = build_machine(task, rec, device, train_set.num_classes)
        except BackendUnavailableError as exc:
            print(f"{task:<5}{backend:<13}{label:<38} skipped: {str(exc)[:60]}...")
            continue
        sampler = CropSampler(train_set, cfg.crop, cfg.batch_size, 0)
        objective = ICMObjective(
            machine, icm.lambdas(task)[0], icm.alpha, icm.mse_weight(task), icm.amp
        )
        times = []
        for variant in ("baseline", "aux-enc"):
            torch.manual_seed(0)
            codec = codec_from_config(profile.codec).to(device).train()
            branch = build_branch(
                variant, task, codec, train_set.num_classes, icm.branch_width, rec.sampling()
            )
            times.append(_median_step(codec, branch, objective, sampler, device, steps))
        print(f"{task:<5}{backend:<13}{label:<38}{cfg.batch_size:>6}{cfg.crop:>6}", end="")
        print(f"{times[0]:>17.3f}{times[1]:>16.3f}", flush=True)


def _encode_time_ratio(exp, repeats: int) -> None:
    """Encode time of a cached aux-enc codec against a cached baseline codec (no branch at test
    time: ~1.0 expected)."""
    images = [pad_to_multiple(exp.datasets.det_val[i][0][None])[0] for i in range(4)]
    found = False
    for task in ("det", "seg"):
        runs = {
            v: sorted((exp.cache_dir / "icm").glob(f"{task}-{v}-*/codec.pt"))
            for v in ("baseline", "aux-enc")
        }
        if not (runs["baseline"] and runs["aux-enc"]):
            continue
        found = True
        enc = {}
        for v, paths in runs.items():
            codec = load_codec(load_checkpoint(paths[0])).to(exp.device).eval()
            enc[v] = statistics.fmean(_time(lambda: codec.compress(x), repeats)[0] for x in images)
        print(
            f"encode time {task}: baseline {enc['baseline']:.4f} s, aux-enc {enc['aux-enc']:.4f} s,"
            f" ratio {enc['aux-enc'] / enc['baseline']:.3f} ({runs['baseline'][0].parent.name} vs "
            f"{runs['aux-enc'][0].parent.name})"
        )
    if not found:
        print(
            "encode time: no trained baseline/aux-enc pair in the cache yet (run notebook 02 "
            "or the study)"
        )


# ---------------------------------------------------------------------- cross-device decoding
def _device_variants() -> dict[str, dict]:
    out = {
        "cpu": {"device": "cpu"},
        "cpu-1thread": {"device": "cpu", "threads": 1},
        "cpu-float64": {"device": "cpu", "dtype": torch.float64},
    }
    if torch.cuda.is_available():
        out["cuda"] = {"device": "cuda"}
        out["cuda-tf32"] = {"device": "cuda", "tf32": True}
    return out


@contextlib.contextmanager
def _on(variant: dict):
    threads = torch.get_num_threads()
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.set_num_threads(variant.get("threads", threads))
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = variant.get(
        "tf32", False
    )
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


def _compressai_roundtrip(writer: ICMCodec, reader: ICMCodec, x: torch.Tensor) -> torch.Tensor:
    """ŷ that CompressAI's own decoder gives on ``reader`` for ``writer``'s own stream."""
    xp, _ = pad_to_multiple(x.to(next(writer.parameters())))
    with torch.no_grad():
        raw = writer.model.compress(xp)
        reader.model.decompress(raw["strings"], raw["shape"])
    return reader._captured.pop("latent_hat")


#: recognition fields ``bench recognizers --recipe`` refuses: they change no trained weights
#: (evaluation, checkpoints, the device's precision decision)
NOT_A_RECIPE = frozenset(
    {"eval_every", "checkpoint_every", "precision_fallback", "asked_precisions"}
)


def bench_recognizers(
    profile_name: str,
    data_dir: Path,
    seeds: tuple[int, ...],
    tasks: tuple[str, ...],
    precision: str | None = "bfloat16",
    recipe: dict[str, Any] | None = None,
) -> list[dict]:
    """``python -m icm_lib.bench recognizers``: each task's recognizer trained in the profile's
    recipe in float32 against the same recipe with ``precision`` (a task's training precision)
    and the ``recipe`` fields of :class:`~icm_lib.profiles.RecognitionConfig` changed (another
    schedule: ``{"det_train_steps": 150, "det_lr": 0.04}``), per seed (see the module
    docstring); prints one row per task and seed and returns them. A recipe that is not a valid
    recognition config, or a precision a task cannot take, stops it before any training."""
    from ..data import get_datasets
    from ..profiles import get_profile
    from ..recognition.training import load_or_train_detector, load_or_train_segmenter
    from ..tasks import get_task

    recipe = {k.removeprefix("recognition__"): v for k, v in (recipe or {}).items()}
    if precision is None and not recipe:
        raise ConfigError("bench recognizers: nothing to compare (give --precision or --recipe)")
    for k in recipe:  # what the recipe may not set: the precision, what trains nothing
        if k.endswith("_train_precision"):
            raise ConfigError(f"bench recognizers --recipe {k}: set the precision with --precision")
        if k in NOT_A_RECIPE:
            raise ConfigError(
                f"bench recognizers --recipe {k}: not part of how a recognizer trains "
                f"(a recipe sets none of {sorted(NOT_A_RECIPE)})"
            )
    float32 = {f"recognition__{t}_train_precision": "float32" for t in ("det", "seg")}
    profile = get_profile(profile_name, **float32)  # its data, and its float32 recognizers
    base = profile.recognition
    try:  # the profile loader's own checks: known fields, their types and values
        changed = get_profile(
            profile_name, **float32, **{f"recognition__{k}": v for k, v in recipe.items()}
        ).recognition
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"bench recognizers --recipe: {exc}") from None
    label = " ".join(filter(None, (precision, *(f"{k}={v}" for k, v in recipe.items()))))
    variants = {}
    for name in tasks:  # what a task's recognizer cannot take: say so before training
        other = "seg" if name == "det" else "det"
        if precision is None and all(k.startswith(f"{other}_") for k in recipe):
            print(f"--tasks {name}: the recipe changes only the {other} recognizer; skipped")
            continue
        try:
            variants[name] = (
                changed
                if precision is None
                else dataclasses.replace(changed, **{f"{name}_train_precision": precision})
            )
        except ValueError as exc:
            raise ConfigError(f"bench recognizers --tasks {name}: {exc}") from None
    datasets = get_datasets(profile.data, data_dir, progress=False)
    device, cache = torch.device("cpu"), data_dir / "cache"
    slower = bf16_slower(device) if precision is not None else None
    print(
        f"profile {profile_name}, {torch.get_num_threads()} threads; recognizers trained in the "
        f"profile's recipe in float32 vs {label}"
        f"{' (under autocast)' if precision else ''}, seeds {list(seeds)}"
        + ("" if slower else f"; bfloat16 hardware: {bf16_hardware()}")  # else said just below
    )
    if slower:
        print(f"({slower}: the {precision} training's seconds say so; its metric is comparable)")
    rows = []
    for name in variants:
        task = get_task(name)
        load = load_or_train_detector if name == "det" else load_or_train_segmenter
        train, val = datasets.train(task), datasets.val(task)
        steps = {"float32": base.steps_for(task), label: variants[name].steps_for(task)}
        print(f"{'task':<5}{'seed':>5}{task.metric + ' fp32':>12}{'other':>9}{'diff':>9}"
              f"{'s fp32':>9}{'s other':>9}{'steps':>12}")  # fmt: skip
        for seed in seeds:
            got = {}
            for key, cfg in (("float32", base), (label, variants[name])):
                _, report = load(cfg, train, val, profile.data.train_crop, cache, device, seed,
                                 progress=False)  # fmt: skip
                got[key] = report
            a, b = (got[k]["val"][task.metric] for k in ("float32", label))
            row = {
                "task": name,
                "seed": seed,
                "fp32": a,
                "other": b,
                "seconds": {k: got[k]["train_seconds"] for k in got},
                "steps": steps,
            }
            rows.append(row)
            print(
                f"{name:<5}{seed:>5}{a:>12.4f}{b:>9.4f}{b - a:>+9.4f}"
                f"{row['seconds']['float32']:>9.0f}{row['seconds'][label]:>9.0f}"
                f"{steps['float32']:>6} /{steps[label]:>4}",
                flush=True,
            )
        mine = [r for r in rows if r["task"] == name]
        _print_paired(f"{name}: {label}", [r["fp32"] for r in mine], [r["other"] for r in mine])
    return rows


def _print_paired(label: str, fp32: list[float], other: list[float], unit: str = ".4f") -> None:
    """One line: ``other`` - ``fp32`` per seed and on average, and the float32 seed-to-seed SD
    (what a paired precision comparison of the ``recognizers`` and ``reference`` benches ends
    with)."""
    diffs = [b - a for a, b in zip(fp32, other, strict=True)]
    sd = (
        f"float32 seed-to-seed SD {statistics.stdev(fp32):{unit}}"
        if len(fp32) > 1
        else "one seed: no seed-to-seed SD (give --seeds 0 1 2 for one)"
    )
    print(
        f"{label} - float32, mean over {len(diffs)} seeds {statistics.mean(diffs):+{unit}} "
        f"(per seed {', '.join(f'{d:+{unit}}' for d in diffs)}); {sd}"
    )


def bench_reference(profile_name: str, data_dir: Path, seeds: tuple[int, ...]) -> list[dict]:
    """``python -m icm_lib.bench reference`` (module docstring): one row per seed."""
    from ..data import get_datasets
    from ..experiment import load_or_train_reference_codec, reference_validator, val_crops
    from ..profiles import get_profile

    profile = get_profile(profile_name)
    datasets = get_datasets(profile.data, data_dir, progress=False)
    device, cache = torch.device("cpu"), data_dir / "cache"
    validate = reference_validator(
        val_crops(datasets.val("det"), profile.ablation.val_images, profile.mse.crop)
    )
    print(
        f"profile {profile_name}, {torch.get_num_threads()} threads; the reference codec "
        f"({profile.mse.steps} steps) trained with its transforms in float32 vs bfloat16, seeds "
        f"{list(seeds)}; bfloat16 hardware: {bf16_hardware()}"
    )
    print(f"{'seed':>4}{'bpp fp32':>10}{'bf16':>8}{'PSNR fp32':>11}{'bf16':>8}"
          f"{'s fp32':>8}{'s bf16':>8}")  # fmt: skip
    rows = []
    for seed in seeds:
        got = {}
        for precision in ("float32", "bfloat16"):
            mse = dataclasses.replace(profile.mse, seed=seed, precision=precision)
            codec, log = load_or_train_reference_codec(
                dataclasses.replace(profile, mse=mse), datasets, cache, device, progress=False
            )
            got[precision] = {**validate(codec), "seconds": log[-1]["seconds"] if log else None}
        a, b = got["float32"], got["bfloat16"]
        rows.append({"seed": seed, **got})
        print(
            f"{seed:>4}{a['val_bpp']:>10.4f}{b['val_bpp']:>8.4f}{a['val_psnr']:>11.2f}"
            f"{b['val_psnr']:>8.2f}{a['seconds'] or 0:>8.0f}{b['seconds'] or 0:>8.0f}",
            flush=True,
        )
    for name, unit in (("val_bpp", ".4f"), ("val_psnr", ".3f")):
        fp32, bf16 = ([r[p][name] for r in rows] for p in ("float32", "bfloat16"))
        _print_paired(f"{name}: bfloat16", fp32, bf16, unit)
    return rows


def bench_loading(profile_name: str, data_dir: Path, tasks: tuple[str, ...]) -> list[dict]:
    """``python -m icm_lib.bench loading`` (module docstring): one row per task."""
    from ..data import get_datasets
    from ..data.sampler import KEEP_ITEMS
    from ..profiles import get_profile
    from ..recognition.training import collate_detection, training_batches
    from ..tasks import get_task

    profile = get_profile(profile_name)
    datasets = get_datasets(profile.data, data_dir, progress=False)
    cfg, crop = profile.recognition, profile.data.train_crop
    print(
        f"profile {profile_name}, {torch.get_num_threads()} threads; a recognizer's training "
        f"batches (batch {cfg.batch_size}, crop {crop}), read from disk per crop vs kept in memory"
    )
    print(f"{'task':<5}{'steps':>6}{'images':>8}{'s read':>9}{'s kept':>9}{'ratio':>7}")
    rows = []
    for name in tasks:
        task = get_task(name)
        steps, train = cfg.steps_for(task), datasets.train(task)
        collate = collate_detection if name == "det" else None
        seconds = []
        for keep in (0, KEEP_ITEMS):  # read from disk per crop, then the trainer's way
            batches = training_batches(train, cfg.batch_size, crop, 0, collate, keep)
            t0 = time.perf_counter()
            for _ in range(steps):
                next(batches)
            seconds.append(time.perf_counter() - t0)
        read, kept = seconds
        rows.append({"task": name, "steps": steps, "read_s": read, "kept_s": kept})
        print(f"{name:<5}{steps:>6}{len(train):>8}{read:>9.2f}{kept:>9.2f}{read / kept:>7.1f}")
    return rows


def bench_devices(train_steps: int) -> dict:
    """The cross-device table (module docstring); returns its cells."""

    variants = _device_variants()
    images = bench_images() + list(scene_images(4, 256, seed=3)[:, None])
    print(
        f"{len(images)} images (2 photos 512x768, 4 scenes 256x256); codecs N=32 M=48 trained "
        f"{train_steps} steps; entries: identical / refused / differ over the images"
    )
    table = {}
    for family, name in FAMILY_CODECS:
        torch.manual_seed(0)
        state = train_briefly(
            build_codec(name, N=32, M=48), scene_images(8, 128), train_steps
        ).codec_state()
        codecs = {
            v: load_codec(state).to(spec["device"], spec.get("dtype", torch.float32)).eval()
            for v, spec in variants.items()
        }
        for coder in ("icm_lib", "CompressAI"):
            if coder == "CompressAI":  # as before: every reader rebuilds its own tables
                for v, spec in variants.items():
                    with _on(spec):
                        codecs[v].model.update(force=True)
            print(f"\n{family} ({name}), {coder}: writer \\ reader")
            print(f"{'':<14}" + "".join(f"{r:>14}" for r in variants))
            for w in variants:
                cells = []
                for r in variants:
                    counts = _cross_decode(codecs, variants, w, r, coder, images)
                    table[(family, coder, w, r)] = counts
                    cells.append(
                        "n/a"
                        if counts is None
                        else "{identical}/{refused}/{differ}".format(**counts)
                    )
                print(f"{w:<14}" + "".join(f"{c:>14}" for c in cells), flush=True)
    return table


def _cross_decode(
    codecs: dict, variants: dict, w: str, r: str, coder: str, images: list
) -> dict | None:
    """Streams written by ``codecs[w]`` decoded by ``codecs[r]``: how many gave the writer's ŷ
    (``None`` where CompressAI's writer itself cannot run, e.g. its AR coder in float64)."""
    from ..errors import BitstreamError

    counts = {"identical": 0, "refused": 0, "differ": 0}
    for x in images:
        with _on(variants[w]):
            if coder == "icm_lib":
                data, latent = codecs[w].compress_with_latent(x)
            else:
                try:
                    latent = _compressai_roundtrip(codecs[w], codecs[w], x)
                except RuntimeError:  # CompressAI's AR decoder is float32-only
                    return None
        with _on(variants[r]):
            try:
                got = (
                    codecs[r].decoded_latent(data)
                    if coder == "icm_lib"
                    else _compressai_roundtrip(codecs[w], codecs[r], x)
                )
            except (BitstreamError, RuntimeError, ValueError):
                counts["refused"] += 1
                continue
        counts[
            "identical" if torch.equal(got.float().cpu(), latent.float().cpu()) else "differ"
        ] += 1
    return counts


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["paper-step"]:  # its own options: icm_lib.dev.stepbench
        from .stepbench import main as paper_step

        return paper_step(argv[1:])
    if argv[:1] == ["decode-budget"]:  # its own options
        return decode_budget_main(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "what",
        choices=[
            "codec",
            "icm",
            "devices",
            "backends",
            "recognizers",
            "loading",
            "reference",
            "compile",
            "workers",
            "paper-step",
            "decode-budget",
        ],
    )
    ap.add_argument("--profile", default="cpu", help="icm: the profile to time")
    ap.add_argument("--steps", type=int, default=5, help="icm, workers: timed steps per variant")
    ap.add_argument("--workers", type=int, default=2, help="workers: runs side by side")
    ap.add_argument(
        "--labels",
        choices=["run", "cached", "both"],
        default="both",
        help="workers: pseudo-labels run (a seed's first run), cached (its later runs) or both",
    )
    ap.add_argument(
        "--fast",
        choices=["off", "on", "both"],
        default="both",
        help="icm: the trainer's step flags (channels-last recognizer, fused Adam) off, on, or both",
    )
    ap.add_argument(
        "--bf16",
        choices=["auto", "on", "off"],
        default="auto",
        help="icm, workers: the bfloat16 rows; auto: where the device multiplies bfloat16 natively",
    )
    ap.add_argument(
        "--tasks",
        nargs="+",
        choices=["det", "seg"],
        default=["det", "seg"],
        help="icm, recognizers, loading, workers: the tasks",
    )
    ap.add_argument(
        "--seeds",
        nargs="+",
        type=at_least(0),
        default=[0, 1, 2],
        help="recognizers, reference: the seeds",
    )
    ap.add_argument(
        "--precision",
        choices=["bfloat16", "bfloat16-backbone", "bfloat16-features"],
        default=None,
        help="recognizers: the training precision set against float32 (default bfloat16 "
        "without --recipe, float32 with it)",
    )
    ap.add_argument(
        "--recipe",
        nargs="+",
        default=[],
        metavar="FIELD=VALUE",
        help="recognizers: RecognitionConfig fields changed against the profile's recipe "
        "(another schedule), e.g. det_train_steps=150 det_lr=0.04",
    )
    ap.add_argument("--pretrained", action="store_true", help="CompressAI zoo weights (internet)")
    ap.add_argument("--quality", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--codecs", nargs="*", default=list(CODEC_NAMES))
    ap.add_argument(
        "--cache-dir",
        type=Path,
        # the notebooks' data folder: $ICM_DATA_DIR as they read it, else the checkout's data/
        default=env_path("ICM_DATA_DIR", Path(__file__).resolve().parents[2] / "data") / "cache",
        help="the data folder's cache (default: $ICM_DATA_DIR/cache, else the checkout's "
        "data/cache); icm, backends, recognizers, loading, reference use its data folder",
    )
    ap.add_argument(
        "--train-steps",
        type=int,
        default=None,
        help="codec: add briefly trained small codecs (default 0); devices: their "
        "training steps (default 150)",
    )
    ap.add_argument("--scaling", action="store_true", help="codec: time 256² to 1080p instead")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    if args.what in ("icm", "backends", "recognizers", "loading", "reference", "workers"):
        print(
            f"data folder {args.cache_dir.parent} (notebook 00's world; what it lacks is made "
            "first: --cache-dir or ICM_DATA_DIR to use another)",
            flush=True,
        )
    if args.what == "devices":
        bench_devices(150 if args.train_steps is None else args.train_steps)
    elif args.what == "icm":
        fast = {"off": (False,), "on": (True,), "both": (False, True)}[args.fast]
        bench_icm(
            args.profile, args.cache_dir.parent, args.steps, args.repeats, fast, args.bf16,
            tuple(args.tasks),
        )  # fmt: skip
    elif args.what == "workers":
        from .stepbench import bench_workers

        cpu = torch.device("cpu")
        bench_workers(
            args.profile, args.cache_dir.parent, args.steps, args.workers, tuple(args.tasks),
            bf16=args.bf16 == "on" or (args.bf16 == "auto" and bf16_native(cpu)),
            labels=("run", "cached") if args.labels == "both" else (args.labels,),
        )  # fmt: skip
    elif args.what == "backends":
        bench_backends(args.profile, args.cache_dir.parent, args.steps)
    elif args.what == "recognizers":
        try:
            recipe = parse_overrides(" ".join(args.recipe))
        except ValueError:
            raise ConfigError(
                f"bench recognizers --recipe {' '.join(args.recipe)}: each item is FIELD=VALUE, "
                "a RecognitionConfig field, e.g. det_train_steps=150 det_lr=0.04"
            ) from None
        precision = args.precision or (None if recipe else "bfloat16")
        bench_recognizers(
            args.profile, args.cache_dir.parent, tuple(args.seeds), tuple(args.tasks),
            precision, recipe,
        )  # fmt: skip
    elif args.what == "loading":
        bench_loading(args.profile, args.cache_dir.parent, tuple(args.tasks))
    elif args.what == "reference":
        bench_reference(args.profile, args.cache_dir.parent, tuple(args.seeds))
    elif args.what == "compile":
        bench_compile(args.profile, tuple(args.tasks), args.steps)
    elif args.scaling:
        for name in args.codecs if args.codecs != list(CODEC_NAMES) else ["cheng2020-attn"]:
            bench_codec_scaling(name, args.quality, args.pretrained, args.repeats)
    else:
        bench_codecs(
            args.codecs,
            args.quality,
            args.pretrained,
            args.repeats,
            args.train_steps or 0,
            args.cache_dir,
        )
    return 0


def bench_compile(profile_name: str, tasks: tuple[str, ...], steps: int) -> list[dict]:
    """The ``compile`` table (module docstring): per task and precision, the frozen
    recognizer's task loss and input gradient eager and compiled; printed and returned."""
    from ..profiles import get_profile
    from .stepbench import build_machine, recognition_config

    profile = get_profile(profile_name)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precisions = [False, True] if bf16_native(device) else [False]
    print(
        f"profile {profile.name}, device {device}, torch threads {torch.get_num_threads()}; "
        f"bfloat16 hardware: {bf16_hardware(device)}; median of {steps} calls after two"
    )
    print(
        f"{'task':<5}{'prec':>6}{'B':>3}{'crop':>5}{'eager s':>9}{'compiled s':>11}"
        f"{'ratio':>7}{'compile s':>10}{'grad cos':>9}"
    )
    rows = []
    for task in tasks:
        cfg = profile.icm.train(task)
        machine = build_machine(task, recognition_config(profile), device, num_classes=8)
        model = machine.model
        gen = torch.Generator().manual_seed(0)
        x0 = torch.rand(cfg.batch_size, 3, cfg.crop, cfg.crop, generator=gen).to(device)
        targets = machine.pseudo_labels(x0)

        class TaskLoss(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.machine = machine

            def forward(self, x):
                return sum(self.machine.task_loss(x, targets).values())

        eager = TaskLoss()
        compiled = torch.compile(TaskLoss())

        def grad(fn, bf16: bool, dropout: bool = True) -> torch.Tensor:
            x = x0.clone().requires_grad_(True)
            drops = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
            rates = [m.p for m in drops]
            for m in drops if not dropout else []:
                m.p = 0.0  # (the task loss sets train mode itself: eval() would not hold)
            try:
                with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                    loss = fn(x)
            finally:
                for m, rate in zip(drops, rates):
                    m.p = rate
            loss.backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return x.grad

        for bf16 in precisions:
            grad(eager, bf16), grad(eager, bf16)
            t0 = time.perf_counter()
            grad(compiled, bf16), grad(compiled, bf16)
            compile_s = time.perf_counter() - t0
            te = _time(lambda: grad(eager, bf16), steps)[0]
            tc = _time(lambda: grad(compiled, bf16), steps)[0]
            ge, gc = grad(eager, bf16, dropout=False), grad(compiled, bf16, dropout=False)
            cos = torch.nn.functional.cosine_similarity(ge.flatten(), gc.flatten(), dim=0).item()
            row = {
                "task": task,
                "precision": "bf16" if bf16 else "fp32",
                "eager_s": te,
                "compiled_s": tc,
                "ratio": te / tc,
                "compile_s": compile_s,
                "grad_cosine": cos,
            }
            rows.append(row)
            print(
                f"{task:<5}{row['precision']:>6}{cfg.batch_size:>3}{cfg.crop:>5}{te:>9.3f}"
                f"{tc:>11.3f}{te / tc:>6.2f}x{compile_s:>10.1f}{cos:>9.4f}",
                flush=True,
            )
    return rows


def bench_codecs(
    names: list[str],
    quality: int,
    pretrained: bool,
    repeats: int,
    train_steps: int,
    cache_dir: Path,
) -> None:
    """The ``codec`` table: zoo architectures, briefly trained small codecs, cached MSE codecs."""
    images = bench_images()
    print(
        f"images: {len(images)} x 512x768, torch threads {torch.get_num_threads()}, "
        f"median of {repeats}; bfloat16 hardware: {bf16_hardware()}"
    )
    print(
        f"{'codec':<44}{'est':>8}{'coder':>8}{'actual':>8}{'act/est':>8}{'pay/cod':>8}"
        f"{'pay/CAI':>8}{'enc s':>8}{'CAI s':>8}{'ratio':>7}{'dec s':>8}{'CAI s':>8}{'ratio':>7}"
        f"{'g_a s':>8}{'c.rat':>7}{'g_s s':>8}{'c.rat':>7}{'cl.enc':>7}{'cl.dec':>7}"
        f"{'bf.enc':>7}{'bf.dec':>7}{'bf.dB':>7}{'bf.bpp':>7}"
    )
    for name in names:
        codec = build_codec(name, quality=quality, pretrained=pretrained)
        tag = "pretrained" if pretrained else "random weights"
        bench_codec(codec, f"{name} q{quality} ({tag})", images, repeats)
    if train_steps:
        for _, name in FAMILY_CODECS:
            torch.manual_seed(0)
            codec = train_briefly(build_codec(name, N=32, M=48), scene_images(8, 128), train_steps)
            bench_codec(codec, f"{name} N32 M48 ({train_steps} steps)", images, repeats)
    for path in sorted(cache_dir.glob("mse-codec-*/codec.pt")):
        codec = load_codec(load_checkpoint(path))
        bench_codec(codec, f"{codec.name} N{codec.N} M{codec.M} (trained, MSE)", images, repeats)
    print(
        "est: likelihood estimate; coder: with CompressAI's scale table; actual: container bytes;"
        " pay/cod: payload / coder estimate; pay/CAI: payload / CompressAI's own strings for "
        "the same image; enc/dec s: icm_lib; CAI s: CompressAI's own compress/decompress "
        "(icm_lib before its own coder); ratio: icm_lib / CompressAI; g_a s: the analysis "
        "transforms (h_a included) and g_s s: the synthesis, which both include; c.rat: the "
        "ratio without them (entropy coding, plus container and padding for icm_lib); "
        "cl.enc / cl.dec: the ratios with the transforms in channels-last layout "
        "(ICMCodec.channels_last); bf.enc / bf.dec: channels-last and bfloat16 "
        "(ICMCodec.bf16: fast where the CPU has AVX512-BF16 or AMX); bf.dB: the PSNR of the "
        "bfloat16 round trip minus the float32 one; bf.bpp: its stream size / the float32 one's"
    )


# ---------------------------------------------------------------------- decode budget
#: the codec of each coded family (the fuzzer's)
BUDGET_CODECS = FAMILY_CODECS
#: channel counts (N, M) of ``--size``: the smoke and cpu profiles' codecs, and the zoo's at
#: quality 3 (cheng2020-attn N=128; the paper's codec); cheng2020 takes N only
BUDGET_SIZES = {"smoke": (32, 48), "cpu": (64, 96), "zoo": (None, None)}
#: claimed (height, width): 0.25 and 1 MPix squares, and 1 MPix at 1:64 and 64:1
BUDGET_CLAIMS = ((512, 512), (1024, 1024), (128, 8192), (8192, 128))


class _MostProbable:
    """An entropy-coder stand-in for :meth:`icm_lib.entropy.CodingState._code`: every symbol it
    is asked for is the zero residual (the median of z, the mean of a Gaussian: each table's
    most probable value), and each is also written to ``writer``, so the writer's payload
    decodes to exactly these symbols."""

    def __init__(self, writer):
        self.writer = writer

    def grouped(self, tables, index):
        import numpy as np

        values = np.zeros(len(index), dtype=np.int64)
        self.writer.grouped(tables, index, values)
        return values


def crafted_stream(codec: ICMCodec, height: int, width: int) -> bytes:
    """A valid container claiming a ``height`` x ``width`` image whose latents are all the most
    probable symbol: what an attacker sends to make a decoder work for the largest size it
    accepts (a few tens of bytes; issue 22 item 9). Costs what decoding it costs."""
    from .. import bitstream, entropy

    state = codec.coding_state()
    ph, pw = -(-height // 64) * 64, -(-width // 64) * 64
    shape = state.latent_shape(ph, pw)
    writer = entropy._Writer()
    state._code(_MostProbable(writer), None, None, shape)
    header = bitstream.Header(
        codec.name,
        codec.quality or 0,
        codec.N,
        codec.M,
        height,
        width,
        ph - height,
        pw - width,
        shape,
        state.fingerprint,
    )
    return bitstream.pack(header, [writer.finish()])


def budget_codec(name: str, size: str, seed: int = 0) -> ICMCodec:
    """A random-weight codec of ``name`` with the channel counts of ``size`` (BUDGET_SIZES),
    entropy tables built."""
    torch.manual_seed(seed)
    n, m = BUDGET_SIZES[size]
    if name.startswith("cheng2020"):
        m = None
    codec = build_codec(name, quality=3, N=n, M=m).eval()
    codec.update()
    return codec


def _budget_worker(argv: list[str]) -> int:
    """In a fresh process: decode one stream, print seconds and ru_maxrss before / after."""
    import json
    import resource

    from .. import bitstream

    ap = argparse.ArgumentParser()
    ap.add_argument("codec")
    ap.add_argument("stream")
    ap.add_argument("--tile", type=int, default=0)
    ap.add_argument("--overlap", type=int, default=8)
    args = ap.parse_args(argv)
    codec = load_codec(torch.load(args.codec, weights_only=True)).eval()
    data = Path(args.stream).read_bytes()
    state = codec.coding_state()  # once per codec in a server, not per stream

    def decode(data: bytes) -> torch.Tensor:
        if not args.tile:
            return codec.decompress(data, max_pixels=1 << 32)
        from ..tiling import synthesize_tiled

        header, strings = bitstream.unpack(data)
        latent = state.decode(strings[0], tuple(header.latent_shape))
        return synthesize_tiled(codec.decoder, latent, args.tile, args.overlap).clamp(0, 1)

    # a warm decoder: the one-time allocations of torch's first calls are not the stream's
    decode(crafted_stream(codec, 64, 64))
    # Linux: reset the peak (VmHWM) to the current RSS, so a decode that needs less than the
    # imports' transient peak is still seen; elsewhere ru_maxrss (a lower bound then)
    before = peak = None
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
        before = _proc_status_kb("VmRSS")
    if before is None:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    x = decode(data)
    seconds = time.perf_counter() - t0
    peak = _proc_status_kb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {"seconds": seconds, "before_kb": before, "peak_kb": peak, "shape": list(x.shape)}
        )
    )
    return 0


def _proc_status_kb(field: str) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def _run_budget_case(codec_file: Path, stream_file: Path, tile: int, overlap: int) -> dict:
    import json
    import subprocess

    cmd = [sys.executable, "-m", "icm_lib.dev.bench", "decode-budget", "--worker", str(codec_file)]
    cmd += [str(stream_file), "--tile", str(tile), "--overlap", str(overlap)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"decode-budget worker failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_decode_budget(
    size: str, claims, tile: int = 0, overlap: int = 8, codecs=BUDGET_CODECS
) -> list[dict]:
    """The ``decode-budget`` table (module docstring); returns its rows."""
    import tempfile

    rows = []
    print(
        f"decode budget: random-weight codecs, size {size!r} (N, M = {BUDGET_SIZES[size]}; None: "
        f"the zoo's q3), torch threads {torch.get_num_threads()}; one fresh process per case"
    )
    head = f"{'family':<15}{'codec':<22}{'claim':>12}{'MPix':>7}{'bytes':>7}{'s':>8}{'s/MPix':>8}"
    head += f"{'MB':>8}{'MB/MPix':>9}"
    if tile:
        head += f"{'tiled MB':>9}{'MB/MPix':>9}{'tiled s':>8}"
    print(head)
    with tempfile.TemporaryDirectory() as tmp:
        for family, name in codecs:
            codec = budget_codec(name, size)
            codec_file = Path(tmp) / f"{name}.pt"
            torch.save(codec.codec_state(), codec_file)
            for h, w in claims:
                data = crafted_stream(codec, h, w)
                stream_file = Path(tmp) / f"{name}-{h}x{w}.icm"
                stream_file.write_bytes(data)
                mpix = (-(-h // 64) * 64) * (-(-w // 64) * 64) / 1e6
                got = _run_budget_case(codec_file, stream_file, 0, overlap)
                mb = (got["peak_kb"] - got["before_kb"]) / 1024
                row = {
                    "family": family,
                    "codec": name,
                    "N": codec.N,
                    "M": codec.M,
                    "height": h,
                    "width": w,
                    "mpix": mpix,
                    "bytes": len(data),
                    "seconds": got["seconds"],
                    "peak_mb": mb,
                    "baseline_mb": got["before_kb"] / 1024,
                }
                line = f"{family:<15}{name:<22}{f'{h}x{w}':>12}{mpix:>7.2f}{len(data):>7}"
                line += f"{got['seconds']:>8.2f}{got['seconds'] / mpix:>8.2f}{mb:>8.0f}{mb / mpix:>9.0f}"
                if tile:
                    tiled = _run_budget_case(codec_file, stream_file, tile, overlap)
                    tmb = (tiled["peak_kb"] - tiled["before_kb"]) / 1024
                    row.update(tiled_mb=tmb, tiled_seconds=tiled["seconds"])
                    line += f"{tmb:>9.0f}{tmb / mpix:>9.0f}{tiled['seconds']:>8.2f}"
                print(line, flush=True)
                rows.append(row)
    print(
        "claim: the header's height x width; MPix: padded pixels; bytes: the whole crafted file; "
        "s: wall seconds of decompress (entropy decoding + g_s; the machine's load changes them); "
        "MB: peak resident memory above the process's before decoding (VmHWM reset; "
        "after a 64x64 warm-up decode, so torch's one-time allocations are excluded)"
        + (f"; tiled: g_s in {tile}-latent tiles with {overlap} of overlap" if tile else "")
    )
    return rows


def decode_budget_main(argv: list[str]) -> int:
    if argv[:1] == ["--worker"]:
        return _budget_worker(argv[1:])
    ap = argparse.ArgumentParser(
        prog="python -m icm_lib.bench decode-budget",
        description="Seconds and memory per claimed megapixel of crafted streams (bench.py).",
    )
    ap.add_argument("--size", choices=sorted(BUDGET_SIZES), default="smoke")
    ap.add_argument(
        "--claims",
        nargs="*",
        default=[f"{h}x{w}" for h, w in BUDGET_CLAIMS],
        help="claimed sizes HxW (default: %(default)s)",
    )
    ap.add_argument("--codecs", nargs="*", default=[n for _, n in BUDGET_CODECS])
    ap.add_argument("--tile", type=int, default=0, help="also decode with g_s in tiles of T")
    ap.add_argument("--overlap", type=int, default=8, help="latents of overlap of the tiles")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args(argv)
    claims = [tuple(int(v) for v in c.lower().split("x")) for c in args.claims]
    codecs = [(f, n) for f, n in BUDGET_CODECS if n in args.codecs]
    rows = bench_decode_budget(args.size, claims, args.tile, args.overlap, codecs)
    if args.json:
        import json

        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    from ..cli import command_status

    raise SystemExit(command_status(main))
