"""What gradient reaches the encoder: the measurement behind Iino et al.'s premise.

The paper argues that the task loss E(y, ŷ), computed by a *deep* frozen recognizer on the decoded
image, sends a weak and indirect gradient back to the shallow encoder g_a, and that an auxiliary
recognizer reading the quantized latent ŷ directly (Eq. 5-6) gives g_a a stronger, more useful
signal. Whether that holds for a given recognizer is measurable on one batch::

    g_task   = ∂ λ·E(y, ŷ)        / ∂θ(g_a)     through g_s and the recognizer
    g_branch = ∂ λ·α·E(y, ŷ_aux)  / ∂θ(g_a)     through the branch only

:func:`encoder_gradients` reports their norms, the ratio ‖g_branch‖ / ‖g_task‖ and their cosine
(does the branch push g_a the same way as the task?). Where the premise applies, the ratio is
large; a shallow recognizer (ResNet-18) need not starve g_a at all.

It also answers a question nobody chose: the frozen recognizer's loss runs in train mode (RPN / RoI
sampling for detection), which keeps its dropout active (smp's ASPP p = 0.5, MMSegmentation's head
0.1), so E(y, ŷ) is stochastic. :func:`dropout_noise` measures the cosine between two draws of
g_task on the same batch and the same codec noise, and against the dropout-free gradient.

``python -m icm_lib.gradients --profile cpu-patterns`` measures both per task at the ablation's λ,
at the start of training and on the trained aux-enc run, and writes
``results/gradients-<profile>.json`` (:class:`~icm_lib.results.GradientsFile`).
``--depth`` compares the frozen recognizer's backbones instead (ResNet-18 ... 101: does a deeper
recognizer send g_a a weaker task gradient, as the premise says?) and writes
``results/depth-<profile>.json`` (:class:`~icm_lib.results.DepthFile`).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time
from pathlib import Path

import torch
import torch.nn as nn

from .errors import ICMError
from .losses import ICMObjective


def _flat_grad(loss: torch.Tensor, params: list[nn.Parameter]) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat(
        [(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)]
    )


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """In float64: over millions of float32 elements the cosine of a vector with itself
    rounds to 1 +- a few 1e-6, which would hide (or fake) a difference between draws."""
    a, b = a.double(), b.double()
    return float(torch.nn.functional.cosine_similarity(a[None], b[None]).item())


def _dropout_safe(machine) -> contextlib.AbstractContextManager:
    """Dropout off inside the machine's own train-mode loss: ``loss_mode`` switches the model to
    train mode, so the layers are patched to stay in eval mode through it."""
    layers = [m for m in machine.model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]

    @contextlib.contextmanager
    def patched():
        originals = [m.train for m in layers]
        for m in layers:
            m.eval()
            m.train = lambda mode=True, _m=m: _m  # stays in eval mode
        try:
            yield len(layers)
        finally:
            for m, train in zip(layers, originals):
                m.train = train

    return patched()


def encoder_gradients(
    objective: ICMObjective, codec, branch: nn.Module, x: torch.Tensor, seed: int = 0
) -> dict[str, float]:
    """Norms and cosine of the task's and the branch's gradients on g_a's parameters.

    Args:
        objective: Eq. 5/6 for the frozen recognizer (its λ and α are used).
        codec: the :class:`~icm_lib.codec.ICMCodec` (train mode: noisy ŷ, as in training).
        branch: the auxiliary branch (any position; ``enc`` reaches g_a directly).
        x: (B, 3, H, W) crops in [0, 1].

    Returns:
        ``{"task_norm", "branch_norm", "ratio", "cosine", "rate_norm"}``: the ratio is
        ‖g_branch‖ / ‖g_task‖, ``rate_norm`` the rate term's gradient norm for scale.
    """
    params = [p for p in codec.model.g_a.parameters() if p.requires_grad]
    torch.manual_seed(seed)
    parts = objective(codec, branch, x)
    lam, alpha = objective.lmbda, objective.alpha
    g_task = _flat_grad(lam * parts["task_loss"], params)
    g_branch = _flat_grad(lam * alpha * parts["branch_loss"], params)
    g_rate = _flat_grad(parts["bpp_loss"], params)
    task_norm, branch_norm = float(g_task.norm()), float(g_branch.norm())
    return {
        "task_norm": task_norm,
        "branch_norm": branch_norm,
        "ratio": branch_norm / task_norm if task_norm > 0 else float("inf"),
        "cosine": _cosine(g_task, g_branch),
        "rate_norm": float(g_rate.norm()),
    }


def dropout_noise(machine, codec, x: torch.Tensor, draws: int = 4, seed: int = 0) -> dict:
    """How stochastic the task gradient on g_a is with the machine's dropout active.

    The codec's forward pass (and its quantization noise) is drawn once; the machine's train-mode
    loss is then evaluated ``draws`` times (dropout and, for detection, RPN / RoI sampling drawn
    anew) and once with dropout held off.

    Returns:
        ``{"dropout_layers", "cos_between_draws", "cos_to_dropout_free", "cos_dropout_free_draws"}``:
        mean pairwise cosine of the draws with dropout, their mean cosine to the dropout-free
        gradient, and the mean pairwise cosine of dropout-free draws (1 for segmentation; below 1
        for detection, whose sampling stays random).
    """
    params = [p for p in codec.model.g_a.parameters() if p.requires_grad]
    torch.manual_seed(seed)
    targets = machine.pseudo_labels(x)
    out = codec(x)

    def grad() -> torch.Tensor:
        return _flat_grad(machine.task_loss(out["x_hat"], targets)["loss"].float(), params)

    with_dropout = [grad() for _ in range(draws)]
    with _dropout_safe(machine) as n_layers:
        free = [grad() for _ in range(max(2, draws // 2))]

    def mean_pairwise(gs):
        pairs = [_cosine(a, b) for i, a in enumerate(gs) for b in gs[i + 1 :]]
        return sum(pairs) / len(pairs)

    return {
        "dropout_layers": n_layers,
        "cos_between_draws": mean_pairwise(with_dropout),
        "cos_to_dropout_free": sum(_cosine(g, free[0]) for g in with_dropout) / draws,
        "cos_dropout_free_draws": mean_pairwise(free),
    }


# ------------------------------------------------------------------------------ the measurement
STATS = ("task_norm", "branch_norm", "ratio", "cosine", "rate_norm")


def _per_batch(rows: list[dict]) -> dict[str, list]:
    """``{stat: [one value per batch]}`` (a non-finite value as ``None``)."""
    return {k: [r[k] if math.isfinite(r[k]) else None for r in rows] for k in rows[0]}


def _start(exp, task: str, batches: int) -> tuple[ICMObjective, object, list[torch.Tensor]]:
    """What :func:`measure` and :func:`measure_depth` measure on, per task: the ablation λ's
    objective for the frozen recognizer, the reference codec, and ``batches`` training batches
    (seed 0, steps 0..batches-1)."""
    from .codec import load_codec
    from .data.sampler import CropSampler

    icm, device = exp.profile.icm, exp.device
    cfg = icm.train(task)
    sampler = CropSampler(exp.datasets.train(task), cfg.crop, cfg.batch_size, 0)
    xs = [sampler.batch(step).to(device) for step in range(batches)]
    objective = ICMObjective(
        exp.machine(task),
        exp.profile.ablation.lmbda(task),
        icm.alpha,
        icm.mse_weight(task),
        **icm.precision(),
    )
    return objective, load_codec(exp.reference.codec_state()).to(device), xs


def _grads(objective: ICMObjective, codec, branch: nn.Module, xs: list[torch.Tensor]) -> dict:
    """:func:`encoder_gradients` per batch, codec and branch in train mode (as in training)."""
    codec.train(), branch.train()
    return _per_batch([encoder_gradients(objective, codec, branch, x, i) for i, x in enumerate(xs)])


def _fresh_branch(exp, task: str, codec) -> nn.Module:
    """The aux-enc branch a run of seed 0 starts from."""
    from .runtime import seed_everything

    seed_everything(0)
    return exp.branch("aux-enc", task, codec).to(exp.device)


def measure(profile, data_dir, batches: int = 3, progress: bool = True):
    """Per task, at the ablation's λ (:class:`~icm_lib.results.GradientsFile`): the task and
    branch gradients on g_a (:func:`encoder_gradients`) at the start of training (the reference
    codec, a fresh aux-enc branch of seed 0) and at its end (the ablation's aux-enc run of seed
    0, the grid's own run where the grid validates, read from the cache; never trained here),
    and the task gradient's spread between dropout draws (:func:`dropout_noise`), each on the
    same ``batches`` training batches (seed 0, steps 0..batches-1)."""
    from .codec import load_codec
    from .experiment import Experiment
    from .files import load_checkpoint, read_log
    from .results import GradientsFile, RunRecord, as_json
    from .runtime import RunFiles, get_device

    device, t0 = get_device(), time.perf_counter()
    exp = Experiment.prepare(profile, data_dir, device, progress)
    tasks, runs = {}, []
    for task in ("det", "seg"):
        lmbda, cfg = profile.ablation.lmbda(task), profile.icm.train(task)
        objective, codec, xs = _start(exp, task, batches)
        machine = exp.machine(task)
        entry = {
            "lmbda": lmbda,
            "batches": {"count": batches, "batch_size": cfg.batch_size, "crop": cfg.crop},
            "at_start": _grads(objective, codec, _fresh_branch(exp, task, codec), xs),
            "dropout": _per_batch(
                [dropout_noise(machine, codec.train(), x, seed=i) for i, x in enumerate(xs)]
            ),
            "trained": None,
            "trained_note": None,
        }
        run_dir = exp.ablation_run_dir(task, "aux-enc", 0)
        if (run_dir / RunFiles.FINAL).is_file() and (run_dir / "branch.pt").is_file():
            trained = load_codec(load_checkpoint(run_dir / RunFiles.FINAL)).to(device)
            branch = exp.branch("aux-enc", task, trained).to(device)
            branch.load_state_dict(load_checkpoint(run_dir / "branch.pt")["state_dict"])
            entry["trained"] = _grads(objective, trained, branch, xs)
            log = read_log(run_dir / RunFiles.LOG)
            runs.append(
                RunRecord(
                    task=task,
                    variant="aux-enc",
                    lmbda=lmbda,
                    seed=0,
                    run_dir=str(run_dir),
                    steps=log[-1]["step"] if log else None,
                    seconds=log[-1]["seconds"] if log else None,
                )
            )
        else:
            entry["trained_note"] = (
                f"the aux-enc run at λ={lmbda:g} seed 0 is not in the cache yet: "
                f"python -m icm_lib.study --study ablation --profile {profile.name}"
            )
        tasks[task] = entry
        start = entry["at_start"]
        print(
            f"[gradients {task} λ={lmbda:g}] at start: ratio {start['ratio']}, "
            f"cosine {start['cosine']}; trained: "
            + (
                f"ratio {entry['trained']['ratio']}, cosine {entry['trained']['cosine']}"
                if entry["trained"]
                else "not yet"
            ),
            flush=True,
        )
    return GradientsFile(
        profile=profile.name,
        seeds=[0],
        compute_hours_in_runs=round(sum(r.seconds or 0.0 for r in runs) / 3600, 3),
        wall_hours_this_invocation=round((time.perf_counter() - t0) / 3600, 3),
        runs=runs,
        tasks=tasks,
        icm_config=as_json(profile.icm.recorded()),
        notes=[
            f"recognizers: {profile.recognition.model_name('det')} / "
            f"{profile.recognition.model_name('seg')}; the gradients are those of one batch "
            "each, the codec in train mode (noisy ŷ), as in training"
        ],
    )


#: the backbones :func:`measure_depth` compares by default (torchvision / smp ResNets)
DEPTHS = ("resnet18", "resnet34", "resnet50", "resnet101")
#: the recognition setting that names each task's backbone
_BACKBONE_FIELD = {"det": "det_backbone", "seg": "seg_encoder"}


def measure_depth(
    profile,
    data_dir,
    backbones: tuple[str, ...] = DEPTHS,
    tasks: tuple[str, ...] = ("seg",),
    batches: int = 8,
    progress: bool = True,
):
    """The premise against depth (:class:`~icm_lib.results.DepthFile`): per task and backbone,
    the task and branch gradients on g_a at the start of training (:func:`measure`'s
    ``at_start``: the reference codec, a fresh aux-enc branch of seed 0, the same batches, the
    ablation's λ), with only the frozen recognizer's backbone changed. Each recognizer is the
    profile's own recipe on that backbone (trained here if the cache lacks it: the profile's
    steps, from scratch where the profile trains from scratch), its val metric recorded beside
    the ratio: a deeper recognizer that learned less in the same steps is another confound."""
    from dataclasses import replace

    from .experiment import Experiment
    from .results import DepthFile
    from .runtime import get_device
    from .tasks import get_task

    backends = {"det": profile.recognition.det_backend, "seg": profile.recognition.seg_backend}
    tasks = tuple(get_task(t).name for t in tasks)
    for task in tasks:
        if backends[task] not in ("torchvision", "smp"):
            raise ICMError(
                f"--depth varies torchvision's / smp's ResNet backbone; profile {profile.name} "
                f"runs {task} on {backends[task]}: choose a profile with recognition__det_backend="
                "torchvision / recognition__seg_backend=smp"
            )
    device, t0 = get_device(), time.perf_counter()
    out, trained = {}, 0.0
    for task in tasks:
        cfg, rows = profile.icm.train(task), []
        for name in backbones:
            recognition = replace(profile.recognition, **{_BACKBONE_FIELD[task]: name})
            p = replace(profile, recognition=recognition)
            exp = Experiment.prepare(p, data_dir, device, progress, tasks=(task,))
            objective, codec, xs = _start(exp, task, batches)
            report = exp.reports[task]
            trained += report.get("train_seconds") or 0.0
            machine = exp.machine(task)
            start = _grads(objective, codec, _fresh_branch(exp, task, codec), xs)
            rows.append(
                {
                    "backbone": name,
                    "recognizer": {
                        "name": recognition.model_name(task),
                        "params": sum(t.numel() for t in machine.model.parameters()),
                        "val": report["val"],
                        "train_steps": report.get("train_steps"),
                        "train_seconds": report.get("train_seconds"),
                    },
                    "at_start": start,
                }
            )
            ratio = [r for r in start["ratio"] if r is not None]
            print(
                f"[depth {task} {name}] val {report['val']}; at start "
                f"‖g_branch‖/‖g_task‖ {sum(ratio) / max(1, len(ratio)):.3g} (mean of {batches})",
                flush=True,
            )
        out[task] = {
            "lmbda": profile.ablation.lmbda(task),
            "batches": {"count": batches, "batch_size": cfg.batch_size, "crop": cfg.crop},
            "backbones": rows,
        }
    return DepthFile(
        profile=profile.name,
        seeds=[0],
        compute_hours_in_runs=round(trained / 3600, 3),
        wall_hours_this_invocation=round((time.perf_counter() - t0) / 3600, 3),
        tasks=out,
        notes=[
            "compute_hours_in_runs: the training of the recognizers measured (the profile's own "
            "included; trained here or earlier); the gradients are those of one batch each, the "
            "codec in train mode (noisy ŷ), as in training"
        ],
    )


def main(argv: list[str] | None = None):
    from .profiles import get_profile, parse_overrides
    from .results import DepthFile, GradientsFile
    from .runtime import env_path

    p = argparse.ArgumentParser(prog="python -m icm_lib.gradients", description=__doc__)
    p.add_argument("--profile", default="cpu-patterns")
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--results-dir", type=Path, default=Path("results"))
    p.add_argument(
        "--batches", type=int, default=None, help="training batches measured (3; --depth: 8)"
    )
    p.add_argument("--overrides", default="", help='e.g. "ablation__det_lmbda=0.4"')
    p.add_argument(
        "--depth",
        nargs="*",
        default=None,
        metavar="BACKBONE",
        help=f"compare the recognizer's backbones instead (default {' '.join(DEPTHS)}) -> "
        "results/depth-<profile>.json",
    )
    p.add_argument(
        "--tasks", nargs="+", default=["seg"], choices=["det", "seg"], help="with --depth"
    )
    args = p.parse_args(argv)
    profile = get_profile(args.profile, **parse_overrides(args.overrides))
    data_dir = args.data_dir or env_path("ICM_DATA_DIR", "data")
    if args.depth is not None:
        backbones = tuple(args.depth) or DEPTHS
        batches = args.batches or 8
        out = measure_depth(profile, data_dir, backbones, tuple(args.tasks), batches)
        out.write(DepthFile.path(args.results_dir, profile.name))
        return out
    out = measure(profile, data_dir, args.batches or 3)
    out.write(GradientsFile.path(args.results_dir, profile.name))
    return out


if __name__ == "__main__":
    from .cli import command_status

    raise SystemExit(command_status(main))
