"""``python -m icm_lib.bench paper-step``: the time of one `paper`-profile training step.

For each task (det, seg) and variant (``baseline``: Eq. 4, no branch; ``aux-enc``) this builds
the trainer's own step (:class:`~icm_lib.trainer.Stepper`: Adam on the codec and branch, the
quantile optimizer, the schedule) around the `paper` profile's codec (cheng2020-attn) and
recognizers (detectron2 Faster R-CNN X101-32x8d-FPN, MMSegmentation DeepLabV3+ R101-D8) at
random weights (the zoo weights need the internet) on random crops, at the profile's batch and
crop (B16 256² det, B8 512² seg) unless overridden, and prints::

    s/step      median over --steps steps after one warm-up step
    img/s       batch / s/step
    peak MiB    torch.cuda.max_memory_allocated (CUDA), less what the settings built before
                it hold; the process's peak RSS increase (CPU); of the warm-up step
    hours       the paper's schedule (profile.icm.<task>.steps) x s/step
    amp         without and with bfloat16 autocast of the recognizer and branch (on the CPU
                too when it runs there, else "skipped")
    fast        the trainer's step flags (:func:`~icm_lib.trainer.step_flags`: channels-last
                recognizer, cudnn.benchmark, fused Adam) off / on; ``--fast both`` times the
                two interleaved in one run and prints their ratio
    nhwc        whether the recognizer ran channels-last (the flag is skipped for one with
                dropout, whose masks depend on the layout: smp's and MMSeg's DeepLabV3+)

Random weights give no detection above the profile's 0.5 threshold, so every detection is kept
as a pseudo-label (``score_threshold=0``), as the paper-profile tests do.

``--profile-ops`` adds the CPU proxies of a GPU step's cost: per step, the number of ``aten::``
operators the profiler records (``ops``; ``leaf``: those that call no other one, ~ kernel
launches) and of operators that make a CUDA device wait for the host to read a result (``syncs``:
:data:`SYNC_OPS`, counted once where they nest), split by where they run (pseudo-labels, codec,
task loss, branch, optimizer, the rest: backward, losses, the step's bookkeeping). The optimizer's
``item`` calls read Adam's step counters, which live on the host: listed, not counted as syncs.

    python -m icm_lib.bench paper-step                      # the paper's batches (a GPU)
    python -m icm_lib.bench paper-step --backend torchvision/smp --fast both   # no detectron2
    python -m icm_lib.bench paper-step --device cpu --batch 2 --crop 128 --steps 3 --profile-ops
    python -m icm_lib.bench paper-step --backend torchvision/smp --batch 2 --crop 128
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import functools
import resource
import shutil
import statistics
import time
from collections import Counter
from pathlib import Path

import torch

from ..errors import ConfigError
from ..runtime import bf16_hardware, get_device

#: operators whose CUDA implementation waits for the device and reads a result on the host
#: (data-dependent output sizes, Python scalars, host-side NMS masks); ``icm_lib::to_host`` marks
#: the library's own explicit device-to-host reads (invisible to a CPU profile otherwise)
SYNC_OPS = frozenset(
    {
        "aten::nonzero",
        "aten::masked_select",
        "aten::_local_scalar_dense",
        "aten::item",
        "aten::is_nonzero",
        "aten::unique",
        "aten::_unique",
        "aten::_unique2",
        "aten::unique_dim",
        "aten::unique_consecutive",
        "aten::repeat_interleave",
        "aten::bincount",
        "aten::equal",
        "aten::allclose",
        "torchvision::nms",
        "icm_lib::to_host",
    }
)
#: the parts of a step the sync counts are split into (record_function labels set by the bench)
PHASES = ("pseudo_labels", "codec", "task_loss", "branch", "optimizer")
#: no device sync on CUDA in these phases: Adam's step counters live on the host (``item`` on
#: them reads host memory), unless fused, where there is no ``item`` at all
HOST_PHASES = frozenset({"optimizer"})
#: COCO (80 classes) and Pascal-Context-59: the paper's datasets
NUM_CLASSES = {"det": 80, "seg": 59}
VARIANTS = ("baseline", "aux-enc")


@dataclasses.dataclass
class StepSetup:
    """One task/variant's training step, ready to run: ``stepper(step, batch(step))``."""

    task: str
    variant: str
    stepper: object
    batch_size: int
    crop: int
    device: torch.device
    schedule_steps: int
    sampler: object | None = None  # a CropSampler of real crops (else random pixels)

    def batch(self, step: int) -> torch.Tensor:
        """Crops (B, 3, crop, crop) in [0, 1], a pure function of ``step``: the sampler's, else
        random pixels."""
        if self.sampler is not None:
            return self.sampler.batch(step).to(self.device)
        g = torch.Generator().manual_seed(step)
        return torch.rand(self.batch_size, 3, self.crop, self.crop, generator=g)

    def run(self, step: int) -> dict[str, float]:
        """One training step; returns its logged values (read on the host)."""
        return dict(self.stepper(step, self.batch(step)))


def recognition_config(profile, backend: str | None = None):
    """The profile's RecognitionConfig at random weights, with ``backend`` = ``"det/seg"``
    (e.g. ``torchvision/smp``) replacing the libraries (the paper-size architectures:
    ResNeXt-101 32x8d FPN, ResNet-101)."""
    rec = dataclasses.replace(profile.recognition, pretrained=False)
    if backend:
        det, _, seg = backend.partition("/")
        rec = dataclasses.replace(rec, det_backend=det or rec.det_backend)
        rec = dataclasses.replace(rec, seg_backend=seg or rec.seg_backend)
    return rec


def build_machine(task: str, rec, device: torch.device, num_classes: int | None = None):
    """The frozen recognizer of ``task`` at random weights (seed 0; every detection a
    pseudo-label), for ``num_classes`` (default: the paper's datasets')."""
    from ..recognition import FrozenDetector, FrozenSegmenter, build_recognizer

    num_classes = num_classes or NUM_CLASSES[task]
    torch.manual_seed(0)
    model = build_recognizer(task, rec, num_classes)
    machine = (
        FrozenDetector(model, score_threshold=0.0)
        if task == "det"
        else FrozenSegmenter(model, num_classes)
    )
    return machine.to(device)


def build_step(
    task: str,
    variant: str,
    machine,
    profile,
    device: torch.device,
    *,
    batch: int | None = None,
    crop: int | None = None,
    amp: bool = False,
    fast: bool | None = None,
    seed: int = 0,
    codec_amp: bool = False,
) -> StepSetup:
    """The trainer's step of ``task``/``variant`` with the profile's codec, objective (λ = the
    first of its grid) and branch; ``amp``: bfloat16 autocast of the recognizer and branch (on
    any device), with ``codec_amp`` of the codec's transforms too; ``fast``: the trainer's step
    flags (``None``: its choice for the device)."""
    from ..aux_branch import build_branch
    from ..codec import codec_from_config
    from ..losses import ICMObjective
    from ..runtime import Distributed
    from ..trainer import Stepper

    icm = profile.icm
    cfg = icm.train(task)
    cfg = dataclasses.replace(
        cfg, batch_size=batch or cfg.batch_size, crop=crop or cfg.crop, seed=seed
    )
    torch.manual_seed(seed)
    codec = dataclasses.replace(profile.codec, pretrained=False)
    codec = codec_from_config(codec).to(device).train()
    branch = build_branch(
        variant, task, codec, NUM_CLASSES[task], icm.branch_width, profile.recognition.sampling()
    )
    if branch is not None:
        branch.to(device).train()
    precision = dataclasses.replace(icm, amp=amp, amp_cpu=amp, codec_amp=codec_amp).precision()
    objective = ICMObjective(machine, icm.lambdas(task)[0], icm.alpha, icm.mse_weight(task),
                             **precision)  # fmt: skip
    stepper = Stepper(codec, branch, objective, cfg, None, Distributed(device), 1, device, fast)
    return StepSetup(
        task, variant, stepper, cfg.batch_size, cfg.crop, device, icm.train(task).steps
    )


# ----------------------------------------------------------------------------- measurements
def _rss_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@contextlib.contextmanager
def peak_memory(device: torch.device):
    """``with peak_memory(device) as peak:`` -- ``peak["mib"]`` after the block: CUDA's peak
    allocated memory, or on the CPU the peak resident set size's increase over the block's start
    (Linux resets the peak through /proc/self/clear_refs; elsewhere ru_maxrss's increase)."""
    out: dict = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield out
        torch.cuda.synchronize(device)
        out["mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        return
    start = _rss_kib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")
        reset = start is not None
    except OSError:
        reset = False
    before = start if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield out
    after = _rss_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out["mib"] = max(0, (after or 0) - before) / 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_settings(
    builders: list, steps: int, device: torch.device
) -> tuple[list[StepSetup], list[dict[str, float]]]:
    """Build each setup (``builders``: callables returning a :class:`StepSetup` on ``device``)
    and run its warm-up step, one after the other, then time them interleaved
    (:func:`interleaved_seconds`). Returns the setups and per setup: s/step (median of
    ``steps``), images/s, peak MiB and the projected hours of its schedule.

    Peak MiB is that of the setup's warm-up step (cuDNN's algorithm search, the allocator's first
    blocks, Adam's state): on CUDA ``max_memory_allocated`` less what the setups built before it
    in this call hold (their codec, optimizer state, gradients, recognizer copy), i.e. as in a
    process that runs this setting alone; on the CPU the resident set's increase over the step."""

    def held() -> float:
        return torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0

    setups, peaks, start, benchmark = [], [], held(), torch.backends.cudnn.benchmark
    try:
        for build in builders:
            others = held() - start
            setup = build()
            torch.backends.cudnn.benchmark = setup.stepper.flags["cudnn_benchmark"]
            with peak_memory(device) as peak:
                setup.run(0)  # warm-up (cudnn.benchmark's search, allocator, lazy init)
                _sync(device)
            peaks.append(peak["mib"] - others)
            setups.append(setup)
    finally:
        torch.backends.cudnn.benchmark = benchmark
    rows = []
    for setup, seconds, mib in zip(setups, interleaved_seconds(setups, steps), peaks):
        s = statistics.median(seconds)
        rows.append(
            {
                "s_per_step": s,
                "seconds": seconds,
                "images_per_s": setup.batch_size / s,
                "peak_mib": mib,
                "hours": setup.schedule_steps * s / 3600,
            }
        )
    return setups, rows


@contextlib.contextmanager
def _labelled_phases(setup: StepSetup, sync: bool = False):
    """Wrap the step's parts in ``record_function`` labels (instance attributes, undone after).
    ``sync``: each part waits for the device before and after it (CUDA), so that its label's
    host time is its device time, not its kernel launches (the work a part queues would else be
    counted in whichever part waits next)."""
    from torch.profiler import record_function

    objective = setup.stepper.model._objective
    machine, codec, branch = objective.machine, setup.stepper.codec, setup.stepper.branch
    targets = [(machine, "pseudo_labels", "pseudo_labels")]
    targets += [(objective.loss_machine, "task_loss", "task_loss")]
    targets += [(codec, "forward", "codec"), (codec, "quantile_loss", "codec")]
    targets += [(setup.stepper.main, "step", "optimizer")]
    targets += [(setup.stepper.quantiles, "step", "optimizer")]
    if branch is not None:
        targets.append((branch, "forward", "branch"))

    def labelled(fn, label):
        def call(*args, **kwargs):
            if sync:
                _sync(setup.device)
            with record_function(f"phase::{label}"):
                out = fn(*args, **kwargs)
                if sync:
                    _sync(setup.device)
                return out

        return call

    for obj, name, label in targets:
        setattr(obj, name, labelled(getattr(obj, name), label))
    try:
        yield
    finally:
        for obj, name, _ in targets:
            delattr(obj, name)


def count_ops(setup: StepSetup, step: int = 1) -> dict:
    """The profiler's operator counts of one step (after a warm-up step): ``ops`` (``aten::``
    events), ``leaf`` (those without an ``aten::`` child), ``syncs`` (:data:`SYNC_OPS`, outermost
    only, outside :data:`HOST_PHASES`), ``by_phase`` (every phase, the host ones included) and
    ``by_op`` (the syncs by operator)."""
    from torch.profiler import ProfilerActivity, profile

    setup.run(0)
    with _labelled_phases(setup), profile(activities=[ProfilerActivity.CPU]) as prof:
        setup.run(step)
    ops = leaf = 0
    by_phase, by_op = Counter(), Counter()
    for ev in prof.events():
        if ev.name.startswith("aten::"):
            ops += 1
            leaf += not any(c.name.startswith("aten::") for c in ev.cpu_children)
        if ev.name not in SYNC_OPS:
            continue
        parent, phase, nested = ev.cpu_parent, "other", False
        while parent is not None:
            nested |= parent.name in SYNC_OPS
            if parent.name.startswith("phase::") and phase == "other":
                phase = parent.name.removeprefix("phase::")
            parent = parent.cpu_parent
        if nested:
            continue
        by_phase[phase] += 1
        if phase not in HOST_PHASES:
            by_op[ev.name.split("::")[-1]] += 1
    return {
        "ops": ops,
        "leaf": leaf,
        "syncs": sum(by_op.values()),
        "by_phase": dict(by_phase),
        "by_op": dict(by_op),
    }


def phase_seconds(setup: StepSetup, steps: int = 2) -> dict[str, float]:
    """Seconds per step in each labelled phase (:data:`PHASES`: their forward passes, the
    optimizer's step) over ``steps`` profiled steps after a warm-up, and ``other``: the rest of
    the step's wall time (the backward pass of every part, the losses, the bookkeeping). On
    CUDA each phase is timed between two waits for the device."""
    from torch.profiler import ProfilerActivity, profile

    setup.run(0)
    with _labelled_phases(setup, sync=True), profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for i in range(1, steps + 1):
            setup.run(i)
        _sync(setup.device)
        wall = (time.perf_counter() - t0) / steps
    out = dict.fromkeys(PHASES, 0.0)
    for ev in prof.events():
        if not ev.name.startswith("phase::"):
            continue
        parent, nested = ev.cpu_parent, False
        while parent is not None:  # count a phase once where labelled calls nest
            nested |= parent.name.startswith("phase::")
            parent = parent.cpu_parent
        if not nested:
            out[ev.name.removeprefix("phase::")] += ev.cpu_time_total / 1e6 / steps
    out["other"] = max(0.0, wall - sum(out.values()))
    return out


def step_flops(setup: StepSetup, step: int = 1) -> float:
    """Floating-point operations of one step (forward, backward, optimizer) as PyTorch's
    ``FlopCounterMode`` counts them (matrix multiplications and convolutions: the arithmetic
    that sets a floor on the step's time)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        setup.run(step)
    return float(counter.get_total_flops())


def matmul_flops_per_second(
    device: torch.device, n: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32
) -> float:
    """What this device sustains on a large matrix product (best of ``repeats``; float32: the
    yardstick the step's FLOPs are divided by)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def bench_icm_step(
    exp,
    steps: int = 5,
    tasks: tuple[str, ...] = ("det", "seg"),
    variants: tuple[str, ...] = VARIANTS,
    fast: tuple[bool, ...] = (False, True),
    bf16: bool = True,
) -> list[dict]:
    """``python -m icm_lib.bench icm``: the profile's own training step (the trainer's stepper,
    the trained recognizers of ``exp``, its reference codec, real crops) per task, variant and
    ``fast`` setting (:func:`~icm_lib.trainer.step_flags`), in one run: s/step (median of
    ``steps`` after a warm-up), images/s, the share of the step in each phase, the step's FLOPs
    and how far it is from the floor (FLOPs / this device's large-matmul rate). A task/variant's
    settings are timed interleaved (:func:`interleaved_seconds`), so a machine whose speed
    drifts during the run slows them alike and their ratios stay fair.

    The recognizer's pseudo-labels are computed every step in the ``labels run`` rows, as in the
    first run of a seed; the ``labels cached`` row (float32 path) times the step of a later run
    of the seed, which reads them from the cache (:mod:`icm_lib.pseudo_labels`, filled by a
    first pass over the same batches). With ``bf16`` (where bfloat16 autocast runs at all), three
    more rows run the recognizer and the branch under bfloat16 autocast (``ICMObjective(amp=)``,
    on the CPU too), with their labels run and cached, and then the codec's transforms too
    (``codec_amp``, labels cached), and then the recognizer's batch norms folded for its task
    loss too (``fold_bn``: what ``--bf16`` trains): fast where the hardware multiplies bfloat16
    (AVX512-BF16, AMX, tensor cores); the studies keep float32, whose numbers every machine
    reproduces."""
    import tempfile

    labels_dir = Path(tempfile.mkdtemp(prefix="icm-bench-labels-"))
    profile, device = exp.profile, exp.device
    rate = matmul_flops_per_second(device)
    bf16 = bf16 and amp_runs(device)
    bf16_rate = (
        f"; bfloat16 {matmul_flops_per_second(device, dtype=torch.bfloat16) / 1e9:.1f}"
        if bf16
        else ""
    )
    print(
        f"profile {profile.name}, device {device}, torch threads {torch.get_num_threads()}; "
        f"bfloat16 hardware: {bf16_hardware(device)}; matmul GFLOP/s: float32 {rate / 1e9:.1f} "
        f"(the floor's yardstick){bf16_rate}; median of {steps} steps after a "
        "warm-up, a task/variant's settings timed interleaved (step i of each before step "
        "i + 1 of any); shares: forward passes (+ Adam), 'other' = backward and the rest"
    )
    print(
        f"{'task':<5}{'variant':<9}{'fast':>5}{'prec':>7}{'labels':>7}{'B':>3}{'crop':>5}{'s/step':>8}"
        f"{'img/s':>7}{'GFLOP':>8}{'floor s':>8}{'x floor':>8}  "
        + " ".join(f"{p[:6]:>6}" for p in (*PHASES, "other"))
    )
    rows = []
    for task in tasks:
        for variant in variants:
            # (fast flags, labels cached, bf16: "" / "machine" / "codec" (machine and codec) /
            # "fold" (and the recognizer's batch norms folded: --bf16))
            settings = [(on, False, "") for on in fast] + [(False, True, "")]
            settings += [(False, False, "machine"), (False, True, "machine")] if bf16 else []
            settings += [(False, True, "codec"), (False, True, "fold")] if bf16 else []
            folder = labels_dir / f"{task}-{variant}"
            rows += _icm_rows(exp, task, variant, settings, folder, steps, rate)
    shutil.rmtree(labels_dir, ignore_errors=True)
    for task in tasks:
        for variant in variants:
            line = ratio_line([r for r in rows if (r["task"], r["variant"]) == (task, variant)])
            if line:
                print(f"{task} {variant}: {line}")
    return rows


#: the ratio lines' settings against the float32 step that runs its labels, in print order
RATIO_NAMES = {
    (True, "run", "fp32"): "fast on",
    (False, "cached", "fp32"): "labels cached",
    (False, "run", "bf16"): "bf16",
    (False, "cached", "bf16"): "bf16 + labels cached",
    (False, "cached", "bf16c"): "bf16 codec too + labels cached",
    (False, "cached", "bf16cf"): "and batch norms folded (--bf16)",
}


def ratio_line(rows: list[dict]) -> str:
    """The speed-ups of one task/variant's rows (:func:`bench_icm_step`) against its float32
    step that runs its labels: the ratio of the medians, and in brackets the lowest and highest
    ratio of step i to step i (timed next to each other, :func:`interleaved_seconds`), what the
    ratio would read had the bench timed one step of each; ``""`` without that float32 row."""
    got = {(r["fast"], r["labels"], r["precision"]): r for r in rows}
    base = got.get((False, "run", "fp32"))
    if base is None:
        return ""
    ratios = []
    for key, name in RATIO_NAMES.items():
        if key in got:
            row = got[key]
            paired = [b / s for b, s in zip(base["seconds"], row["seconds"])]
            ratios.append(
                f"{name} {base['s_per_step'] / row['s_per_step']:.2f}x "
                f"({min(paired):.2f}-{max(paired):.2f})"
            )
    return "against the float32 step that runs its labels (in brackets: step by step): " + (
        ", ".join(ratios)
    )


def _icm_setup(exp, task: str, variant: str, on: bool, labels, bf16: str = "", seed: int = 0):
    """The step of ``task`` / ``variant`` as one row of :func:`bench_icm_step` times it: the
    ``fast`` flags ``on`` (on a copy of the recognizer, whose layout they change), its
    pseudo-labels run (``labels=None``) or read from a cache in the folder ``labels``, the
    recognizer and branch under bfloat16 autocast with ``bf16`` ``"machine"`` (on the CPU too),
    the codec's transforms too with ``"codec"``, and the recognizer's batch norms folded for its
    task loss with ``"fold"`` (all of ``--bf16``); the crops of the run seed ``seed``. Returns the
    :class:`StepSetup` and its machine (a :class:`~icm_lib.pseudo_labels.CachedMachine` counts
    its hits)."""
    from ..codec import load_codec
    from ..data.sampler import CropSampler
    from ..losses import ICMObjective
    from ..pseudo_labels import CachedMachine
    from ..runtime import Distributed
    from ..trainer import Stepper

    icm, device = exp.profile.icm, exp.device
    cfg = icm.train(task)
    torch.manual_seed(0)
    codec = load_codec(exp.reference.codec_state()).to(device).train()
    branch = exp.branch(variant, task, codec)
    if branch is not None:
        branch.to(device).train()
    machine = copy.deepcopy(exp.machine(task)) if on else exp.machine(task)
    machine = machine if labels is None else CachedMachine(machine, labels)
    if bf16:  # as --bf16 trains with "fold"; the codec's float32 and no fold with "machine"
        codec_too, fold = bf16 in ("codec", "fold"), bf16 == "fold"
        icm = dataclasses.replace(icm.in_bfloat16(), codec_amp=codec_too, fold_bn=fold)
    else:  # the bench's float32 rows: autocast on CUDA only, whatever the profile says
        icm = dataclasses.replace(icm, amp_cpu=False, codec_amp=False, fold_bn=False)
    objective = ICMObjective(
        machine, icm.lambdas(task)[0], icm.alpha, icm.mse_weight(task), **icm.precision()
    )
    benchmark = torch.backends.cudnn.benchmark
    stepper = Stepper(
        codec, branch, objective, cfg, icm.branch_lr, Distributed(device), 1, device, on
    )
    torch.backends.cudnn.benchmark = benchmark  # set per step by interleaved_seconds
    sampler = CropSampler(exp.datasets.train(task), cfg.crop, cfg.batch_size, seed)
    setup = StepSetup(task, variant, stepper, cfg.batch_size, cfg.crop, device, cfg.steps, sampler)
    return setup, machine


# ----------------------------------------------------------------------------- runs side by side
#: seconds a worker of :func:`bench_workers` waits for the others at a rendezvous before it fails
RENDEZVOUS_S = 1800


def bench_workers(
    profile_name: str,
    data_dir: Path,
    steps: int = 5,
    workers: int = 2,
    tasks: tuple[str, ...] = ("det", "seg"),
    variants: tuple[str, ...] = VARIANTS,
    bf16: bool = False,
    labels: tuple[str, ...] = ("run",),
) -> list[dict]:
    """``python -m icm_lib.bench workers``: what a study gains on this CPU by running
    ``workers`` runs side by side (``python -m icm_lib.study --launcher pool --workers W``: W
    processes of cores / W torch threads each) instead of one run after another with all the
    cores (``--launcher local``). Per task, variant and precision (float32; with ``bf16`` also the
    recognizer, branch and codec transforms under bfloat16 autocast), in one run: the profile's
    training step (:func:`_icm_setup`: its trained recognizers and reference codec, real crops,
    its pseudo-labels per ``labels``: ``run`` as in a seed's first run, ``cached`` read from the
    labels cache as in its later runs, a first pass over the same steps filling it) timed
    ``alone`` in one process with every
    thread, then ``together`` in ``workers`` processes at once (each its own run seed's crops),
    s/step (median of ``steps`` after a warm-up), images/s of all of them, and the ratio: the
    training steps per hour a study gains. With both ``labels``, a last line sets each
    side-by-side step with cached labels against the float32 step that runs its labels alone
    (what a study's run cost before either lever). The worker processes are started once
    (spawned) and meet before each measurement; one that fails ends the bench with its
    traceback."""
    import multiprocessing as mp
    import queue as queues

    from ..experiment import Experiment
    from ..profiles import get_profile

    if workers < 2:
        raise ConfigError(f"--workers {workers}: give 2 or more runs to set side by side")
    cores = torch.get_num_threads()
    per = max(1, cores // workers)
    device = torch.device("cpu")
    Experiment.prepare(get_profile(profile_name), data_dir, device, progress=False, tasks=tasks)
    precisions = ("fp32", "bf16") if bf16 else ("fp32",)
    combos = [(t, v, p, lab) for t in tasks for v in variants for p in precisions for lab in labels]
    ctx = mp.get_context("spawn")  # a fresh interpreter each: no forked torch thread pools
    barrier, results = ctx.Barrier(workers, timeout=RENDEZVOUS_S), ctx.Queue()
    args = (workers, profile_name, str(data_dir), combos, steps, cores, per, tasks)
    procs = [
        ctx.Process(target=_workers_child, args=(rank, *args, barrier, results), daemon=True)
        for rank in range(workers)
    ]
    print(
        f"profile {profile_name}, {cores} torch threads, bfloat16 hardware: "
        f"{bf16_hardware(device)}; alone: one run with {cores} threads "
        f"(--launcher local); together: {workers} runs at once with {per} each (--launcher pool "
        f"--workers {workers}); median of {steps} steps after a warm-up; labels run: a seed's "
        "first run computes its pseudo-labels, cached: its later runs read them"
    )
    print(
        f"{'task':<5}{'variant':<9}{'prec':>5}{'labels':>7}{'B':>3}{'crop':>5}{'alone s':>9}{'img/s':>7}"
        f"{'together s':>12}{'img/s':>7}{'x steps/h':>11}"
    )
    for p in procs:
        p.start()
    got: dict[tuple[int, str], list[list[float]]] = {}
    label_hits: dict[int, list[int | None]] = {}
    rows: list[dict] = []
    try:
        while len(rows) < len(combos):
            try:
                message = results.get(timeout=5)
            except queues.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(
                        f"a worker of the bench ended with exit code {dead[0].exitcode} "
                        "without a traceback (killed, out of memory?)"
                    ) from None
                continue
            if message[0] == "broken":  # the failing worker's own message follows
                continue
            if message[0] == "error":
                raise RuntimeError(f"worker {message[1]} of the bench failed:\n{message[2]}")
            phase, i, _rank, seconds, batch, crop, hits = message
            got.setdefault((i, phase), []).append(seconds)
            label_hits.setdefault(i, []).append(hits)
            if len(got.get((i, "alone"), [])) == 1 and len(got.get((i, "together"), [])) == workers:
                row = _workers_row(
                    combos[i], got[i, "alone"][0], got[i, "together"], batch, crop, cores, per
                )
                rows.append({**row, "label_hits": label_hits[i]})
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join()
    gains = ", ".join(
        f"{r['task']} {r['variant']} {r['precision']} {r['labels']} {r['ratio']:.2f}x" for r in rows
    )
    print(
        f"training steps per hour, {workers} runs side by side against one at a time: {gains}. "
        f"A run with {per} thread(s) differs from one with {cores} by float rounding (the "
        "kernels split their sums by thread): its numbers are not bit for bit those of the "
        "other, as another CPU's are not."
    )
    before = {
        (r["task"], r["variant"]): r["images_per_s_alone"]
        for r in rows
        if (r["precision"], r["labels"]) == ("fp32", "run")
    }
    levered = [
        f"{r['task']} {r['variant']} {r['precision']} "
        f"{r['images_per_s_together'] / before[r['task'], r['variant']]:.2f}x"
        for r in rows
        if r["labels"] == "cached" and (r["task"], r["variant"]) in before
    ]
    if levered:
        print(
            "a study's later runs (labels cached), side by side, against its runs before these "
            f"levers (float32, labels run, one at a time): {', '.join(levered)}"
        )
    return rows


def _workers_row(combo, alone, together, batch, crop, cores, per) -> dict:
    """One printed row of :func:`bench_workers` from its workers' step seconds."""
    task, variant, precision, labels = combo
    s_alone = statistics.median(alone)
    s_together = [statistics.median(seconds) for seconds in together]
    row = {
        "task": task,
        "variant": variant,
        "precision": precision,
        "labels": labels,
        "threads_alone": cores,
        "threads_together": per,
        "s_alone": s_alone,
        "s_together": s_together,
        "images_per_s_alone": batch / s_alone,
        "images_per_s_together": sum(batch / s for s in s_together),
    }
    row["ratio"] = row["images_per_s_together"] / row["images_per_s_alone"]
    print(
        f"{task:<5}{variant:<9}{precision:>5}{labels:>7}{batch:>3}{crop:>5}{s_alone:>9.3f}"
        f"{row['images_per_s_alone']:>7.1f}{statistics.mean(s_together):>12.3f}"
        f"{row['images_per_s_together']:>7.1f}{row['ratio']:>10.2f}x",
        flush=True,
    )
    return row


def _workers_child(
    rank, workers, profile_name, data_dir, combos, steps, cores, per, tasks, barrier, results
) -> None:
    """A worker process of :func:`bench_workers`. Per combination, three rendezvous: before the
    ``alone`` measurement (rank 0 alone, the others wait at the next), before the ``together``
    one's setup, and when every worker is warmed up (all start timing at once)."""
    import tempfile
    import threading
    import traceback

    cache = Path(tempfile.mkdtemp(prefix=f"icm-bench-workers-{rank}-"))
    try:
        from ..experiment import Experiment
        from ..profiles import get_profile

        device = torch.device("cpu")
        profile = get_profile(profile_name)
        exp = Experiment.prepare(profile, data_dir, device, progress=False, tasks=tasks)
        for i, (task, variant, precision, labels) in enumerate(combos):
            bf16 = "codec" if precision == "bf16" else ""
            for phase, threads in (("alone", cores), ("together", per)):
                barrier.wait()
                if phase == "alone" and rank:
                    continue
                torch.set_num_threads(threads)
                folder = cache / f"{i}-{phase}" if labels == "cached" else None
                setup, machine = _icm_setup(exp, task, variant, False, folder, bf16, seed=rank)
                for step in range(steps + 1 if folder else 0):  # the seed's first run: stored
                    setup.run(step)
                setup.run(0)  # warm-up
                hits = machine.hits if folder else None
                if phase == "together":
                    barrier.wait()
                seconds = []
                for step in range(1, steps + 1):
                    t0 = time.perf_counter()
                    setup.run(step)
                    seconds.append(time.perf_counter() - t0)
                hits = machine.hits - hits if folder else None  # labels read while timed
                results.put((phase, i, rank, seconds, setup.batch_size, setup.crop, hits))
                del setup, machine
    except threading.BrokenBarrierError:  # another worker failed: its error is the one to tell
        results.put(("broken", rank))
    except BaseException:
        results.put(("error", rank, traceback.format_exc()))
        barrier.abort()  # the others stop waiting
        raise
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def interleaved_seconds(setups: list[StepSetup], steps: int) -> list[list[float]]:
    """Seconds of steps 1..``steps`` of each setup (after a warm-up step 0 each), interleaved:
    step i of every setup before step i + 1 of any, the order rotated by one each step, each
    under its own cuDNN autotuning flag (a process-wide switch). Timed one after the other,
    settings run last pay for whatever slows the machine later in the run (another process, a
    noisy neighbour, the clock); interleaved, every setting samples the same stretch of time."""
    times: list[list[float]] = [[] for _ in setups]
    benchmark = torch.backends.cudnn.benchmark
    try:
        for i in range(steps + 1):
            k = i % len(setups)
            for j in [*range(k, len(setups)), *range(k)]:
                setup = setups[j]
                torch.backends.cudnn.benchmark = setup.stepper.flags["cudnn_benchmark"]
                batch = setup.batch(i)
                _sync(setup.device)
                t0 = time.perf_counter()
                setup.stepper(i, batch)
                _sync(setup.device)
                if i:
                    times[j].append(time.perf_counter() - t0)
    finally:
        torch.backends.cudnn.benchmark = benchmark
    return times


def _icm_rows(
    exp, task: str, variant: str, settings: list, labels: Path, steps: int, rate: float
) -> list[dict]:
    """The rows of :func:`bench_icm_step` for ``task`` / ``variant``: one per setting
    ``(fast, labels cached, bf16)`` (:func:`_icm_setup`), the labels of the cached ones computed
    and stored by a first pass over the same batches (the first run of the seed), then timed
    together (:func:`interleaved_seconds`), then each profiled alone for its phase shares and
    FLOPs; printed and returned."""
    built = [
        (
            on,
            cached,
            in_bf16,
            *_icm_setup(exp, task, variant, on, labels if cached else None, in_bf16),
        )
        for on, cached, in_bf16 in settings
    ]
    for _, cached, _, setup, _ in built:
        if cached:  # the first run of the seed: labels computed and stored
            for i in range(steps + 1):
                setup.run(i)
    times = interleaved_seconds([setup for *_, setup, _ in built], steps)
    rows = []
    for (on, cached, in_bf16, setup, machine), seconds in zip(built, times):
        s = statistics.median(seconds)
        shares = phase_seconds(setup)
        flops = step_flops(setup)
        total = sum(shares.values())
        row = {
            "task": task,
            "variant": variant,
            "fast": on,
            "labels": "cached" if cached else "run",
            "bf16": bool(in_bf16),
            "codec_bf16": in_bf16 in ("codec", "fold"),
            "fold_bn": in_bf16 == "fold",
            # the row's label: float32, bfloat16 recognizer and branch, and the codec too
            "precision": {"": "fp32", "machine": "bf16", "codec": "bf16c", "fold": "bf16cf"}[
                in_bf16
            ],
            "label_hits": machine.hits if cached else None,
            "s_per_step": s,
            "seconds": seconds,
            "images_per_s": setup.batch_size / s,
            "hours": setup.schedule_steps * s / 3600,
            "flops": flops,
            "floor_s": flops / rate,
            "x_floor": s / (flops / rate),
            "shares": {k: v / total for k, v in shares.items()},
        }
        rows.append(row)
        print(
            f"{task:<5}{variant:<9}{'on' if on else 'off':>5}"
            f"{row['precision']:>7}"
            f"{row['labels']:>7}{setup.batch_size:>3}"
            f"{setup.crop:>5}{s:>8.3f}{row['images_per_s']:>7.1f}"
            f"{flops / 1e9:>8.1f}{row['floor_s']:>8.3f}{row['x_floor']:>8.1f}  "
            + " ".join(f"{row['shares'][p]:>6.0%}" for p in (*PHASES, "other")),
            flush=True,
        )
    return rows


def machine_layout(setup: StepSetup) -> str:
    """The memory layout of the step's frozen recognizer as it ran: ``"channels_last"`` where a
    convolution weight of it is stored NHWC, else ``"contiguous"``."""
    weights = setup.stepper.model._objective.loss_machine.model.parameters()
    nhwc = any(
        w.dim() == 4
        and not w.is_contiguous()
        and w.is_contiguous(memory_format=torch.channels_last)
        for w in weights
    )
    return "channels_last" if nhwc else "contiguous"


def amp_runs(device: torch.device) -> bool:
    """Whether bfloat16 autocast runs a convolution on ``device``."""
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            x = torch.ones(1, 1, 4, 4, device=device)
            torch.nn.functional.conv2d(x, torch.ones(1, 1, 3, 3, device=device)).sum().item()
        return True
    except (RuntimeError, NotImplementedError):
        return False


def study_s_per_step(rows: list[dict], amp: bool, fast: bool) -> str:
    """``--s-per-step`` of :mod:`icm_lib.study`'s ``--plan`` from the rows of
    :func:`bench_paper_step` that run as a study would (its profile's ``amp``, the trainer's
    ``fast`` flags for the device): ``det=0.262 det/aux-enc=0.266 ...`` (baseline as the task
    alone); empty where no row matches."""
    return " ".join(
        f"{r['task']}{'' if r['variant'] == 'baseline' else '/' + r['variant']}"
        f"={r['s_per_step']:.4g}"
        for r in rows
        if r["amp"] == amp and r["fast"] == fast
    )


def _step_on_own_machine(task: str, variant: str, machine, *args, **kwargs) -> StepSetup:
    """:func:`build_step` on a copy of ``machine``, for step flags that change its layout: built
    when the setting is, so that its memory counts as the setting's (:func:`time_settings`)."""
    return build_step(task, variant, copy.deepcopy(machine), *args, **kwargs)


def bench_paper_step(
    device: torch.device,
    steps: int = 5,
    batch: int | None = None,
    crop: int | None = None,
    backend: str | None = None,
    tasks: tuple[str, ...] = ("det", "seg"),
    variants: tuple[str, ...] = VARIANTS,
    amp: tuple[bool, ...] = (False, True),
    profile_ops: bool = False,
    profile_name: str = "paper",
    fast: tuple[bool | None, ...] = (None,),
) -> list[dict]:
    """The table of the module docstring; returns its rows (one dict per printed row). Each
    ``fast`` setting (:func:`~icm_lib.trainer.step_flags`; ``None``: the trainer's choice for the
    device) is a row of its own, the settings of a task/variant/amp timed interleaved, each with
    its own copy of the recognizer (the flags change its layout), and their ratio printed."""
    from ..errors import BackendUnavailableError
    from ..profiles import get_profile
    from ..trainer import step_flags

    profile = get_profile(profile_name)
    rec = recognition_config(profile, backend)
    print(
        f"profile {profile.name}, device {device}, torch {torch.__version__}, threads "
        f"{torch.get_num_threads()}, codec {profile.codec.name} (random weights), "
        f"det {rec.det_backend}, seg {rec.seg_backend}; median of {steps} steps after a warm-up"
    )
    header = (
        f"{'task':<5}{'variant':<10}{'B':>4}{'crop':>6}{'amp':>6}{'fast':>6}{'nhwc':>6}"
        f"{'s/step':>9}{'img/s':>8}{'peak MiB':>10}{'hours':>9}"
    )
    print(header + (f"{'ops':>8}{'leaf':>8}{'syncs':>7}  sync ops by phase" if profile_ops else ""))
    rows = []
    can_amp = amp_runs(device)
    for task in tasks:
        try:
            machine = build_machine(task, rec, device)
        except BackendUnavailableError as exc:
            print(f"{task:<5}skipped: {exc}")
            continue
        for variant in variants:
            for use_amp in amp:
                label = "bf16" if use_amp else "fp32"
                if use_amp and not can_amp:
                    print(f"{task:<5}{variant:<10}{'':>10}{label:>6}  skipped: no bf16 autocast")
                    continue
                ons = [step_flags(device.type, f)["channels_last"] for f in fast]
                builders = [
                    functools.partial(
                        _step_on_own_machine if on else build_step,
                        task,
                        variant,
                        machine,
                        profile,
                        device,
                        batch=batch,
                        crop=crop,
                        amp=use_amp,
                        fast=f,
                    )  # fmt: skip
                    for f, on in zip(fast, ons)
                ]
                try:
                    setups, timed = time_settings(builders, steps, device)
                except (RuntimeError, NotImplementedError) as exc:
                    if not use_amp:
                        raise
                    print(f"{task:<5}{variant:<10}{'':>10}{label:>6}  skipped: {str(exc)[:70]}")
                    continue
                for setup, on, row in zip(setups, ons, timed):
                    row = {"task": task, "variant": variant, "amp": use_amp, "fast": on, **row}
                    row["layout"] = machine_layout(setup)
                    line = (
                        f"{task:<5}{variant:<10}{setup.batch_size:>4}{setup.crop:>6}{label:>6}"
                        f"{'on' if on else 'off':>6}"
                        f"{'yes' if row['layout'] == 'channels_last' else 'no':>6}"
                        f"{row['s_per_step']:>9.3f}"
                        f"{row['images_per_s']:>8.2f}{row['peak_mib']:>10.0f}{row['hours']:>9.3g}"
                    )
                    if profile_ops:
                        ops = count_ops(setup)
                        row.update(ops)
                        phases = " ".join(f"{k}={v}" for k, v in sorted(ops["by_phase"].items()))
                        line += f"{ops['ops']:>8}{ops['leaf']:>8}{ops['syncs']:>7}  {phases}"
                    print(line, flush=True)
                    rows.append({**row, "batch": setup.batch_size, "crop": setup.crop})
                # not held while the next settings are measured (the loop's last one neither)
                setup = None
                del setups, builders, setup
                if sorted(ons) == [False, True]:
                    off, on = (timed[ons.index(v)]["s_per_step"] for v in (False, True))
                    print(
                        f"{task} {variant} {label}: fast on {off / on:.2f}x "
                        f"({off:.3f} -> {on:.3f} s/step)",
                        flush=True,
                    )
        del machine
    # what a study runs on this device: the profile's autocast (on CUDA only), the trainer's flags
    study_amp = profile.icm.amp and device.type == "cuda"
    plan = study_s_per_step(rows, study_amp, step_flags(device.type)["channels_last"])
    if plan:
        print(
            f"for `python -m icm_lib.study --profile {profile.name} --plan` (the rows a study "
            f"runs on {device.type}: amp {'on' if study_amp else 'off'}, the trainer's step "
            f"flags {'on' if step_flags(device.type)['channels_last'] else 'off'}): "
            f"--s-per-step {plan}"
        )
    if profile_ops and rows:
        print("sync operators per step (outermost), by task/variant/amp:")
        for r in rows:
            ops = ", ".join(
                f"{k} {v}" for k, v in sorted(r["by_op"].items(), key=lambda kv: -kv[1])
            )
            print(f"  {r['task']}/{r['variant']}/{'bf16' if r['amp'] else 'fp32'}: {ops}")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m icm_lib.bench paper-step",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up)")
    ap.add_argument("--batch", type=int, default=None, help="override the profile's batch")
    ap.add_argument("--crop", type=int, default=None, help="override the profile's crop")
    ap.add_argument(
        "--backend", default=None, help="det/seg libraries, e.g. torchvision/smp (default: paper)"
    )
    ap.add_argument("--tasks", nargs="+", default=["det", "seg"], choices=["det", "seg"])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--amp", choices=["both", "off", "on"], default="both")
    ap.add_argument("--profile-ops", action="store_true", help="count operators and host syncs")
    ap.add_argument("--profile", default="paper", help="the profile (smoke: a quick check)")
    ap.add_argument(
        "--fast",
        choices=["auto", "on", "off", "both"],
        default="auto",
        help="the trainer's step flags (channels_last, cudnn.benchmark, fused Adam): auto = "
        "on for CUDA only; both: off and on timed interleaved in one run, with their ratio",
    )
    args = ap.parse_args(argv)
    amp = {"both": (False, True), "off": (False,), "on": (True,)}[args.amp]
    bench_paper_step(
        get_device(args.device),
        args.steps,
        args.batch,
        args.crop,
        args.backend,
        tuple(args.tasks),
        tuple(args.variants),
        amp,
        args.profile_ops,
        args.profile,
        {"auto": (None,), "on": (True,), "off": (False,), "both": (False, True)}[args.fast],
    )
    return 0


if __name__ == "__main__":
    from ..cli import command_status

    raise SystemExit(command_status(main))
