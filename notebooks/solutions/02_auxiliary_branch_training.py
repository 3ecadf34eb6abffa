# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Solutions · 02 The auxiliary branch
#
# The exercises at the end of [notebook 02](../02_auxiliary_branch_training.ipynb), worked. The
# codecs of notebooks 01–02 load from the cache under `DATA_DIR`; the α = 0 run is trained here.
# Numbers go to `OUTPUT_DIR/metrics.json`.

# %% tags=["parameters"]
# Parameters (papermill injects overrides after this cell)
PROFILE = "cpu"  # smoke | cpu | paper
SEED = 0
DATA_DIR = "../../data"  # datasets and caches (env ICM_DATA_DIR overrides)
OUTPUT_DIR = "../../outputs/solutions/cpu/02_auxiliary_branch_training"  # metrics.json
DEVICE = ""  # empty: cuda if available, else cpu
TASK = "seg"
BATCH = 2  # crops in the gradient measurement

# %%
from icm_lib.notebook import setup

S = setup(PROFILE, SEED, DATA_DIR, OUTPUT_DIR, DEVICE)
profile, device = S.profile, S.device
print(f"profile={profile.name}  device={device}  data={S.data_dir}  outputs={S.output_dir}")

# %%
from dataclasses import replace

from icm_lib.experiment import Experiment
from icm_lib.tasks import get_task

exp = Experiment.prepare(profile, S.data_dir, device)
icm, metric = profile.icm, get_task(TASK).metric
lmbda = profile.tutorial.lambdas(TASK, icm.lambdas(TASK))[0]  # the first λ notebook 02 trained
print(f"{TASK} at λ = {lmbda:g}, α = {icm.alpha:g}")

# %% [markdown]
# ## 1 · α = 0: the baseline returns
#
# Eq. 5 with α = 0 is Eq. 4: the branch still runs (and is still built), but its loss enters the
# sum multiplied by zero, so the gradient it sends to $g_a$ is exactly zero, and the branch
# itself, which learns only from that term, never changes. The codec then sees the same batches,
# the same quantization noise (seeded by seed, step and shard, not by what else drew random
# numbers) and the same gradients as the baseline of the same seed and λ: it lands on the
# baseline's point. What can still separate them is anything the branch's forward pass draws from
# the shared random stream before the recognizer does (dropout in train mode, RoI sampling); the
# numbers below show how far that goes here.

# %%
import math

exp0 = replace(exp, profile=replace(profile, icm=replace(icm, alpha=0.0)))
runs = {
    "baseline": exp.point(TASK, "baseline", lmbda, SEED),  # notebook 01's
    "aux-enc": exp.point(TASK, "aux-enc", lmbda, SEED),  # notebook 02's (α = 0.5)
    "aux-enc α=0": exp0.point(TASK, "aux-enc", lmbda, SEED),  # trained here
}
points = {k: v.record["eval"][TASK] for k, v in runs.items()}
for name, p in points.items():
    print(f"{name:>12}: {p['bpp']:.5f} bpp, {metric} {p[metric]:.4f}, PSNR {p['psnr']:.3f} dB")


def log_gap(a, b, key):
    return max(abs(x[key] - y[key]) for x, y in zip(a.record["log"], b.record["log"]))


gaps = {
    key: log_gap(runs["aux-enc α=0"], runs["baseline"], key)
    for key in ("bpp_loss", "task_loss", "mse_loss")
}
branch_losses = [r["branch_loss"] for r in runs["aux-enc α=0"].record["log"]]
point_gap = {
    k: abs(points["aux-enc α=0"][k] - points["baseline"][k]) for k in ("bpp", metric, "psnr")
}
print(f"α = 0 vs baseline, largest difference in the training log: {gaps}")
print(f"... and in the R-D point: {point_gap}")
print(f"the branch's own loss, untrained (α = 0): {[round(v, 4) for v in branch_losses]}")

# %% [markdown]
# ## 2 · A wider branch
#
# A convolution's weights grow with input × output channels, so doubling every width multiplies
# most of the branch by four; layers with a fixed side (ŷ's M channels in, the classes out) grow
# by two, so the total lands a little under 4×. The saved codec does not change at all: the branch
# is trained alongside and thrown away (notebook 02, section 5).

# %%
from icm_lib.aux_branch import build_branch


def millions(module):
    return sum(p.numel() for p in module.parameters()) / 1e6


widths = {}
for width in (icm.branch_width, 2 * icm.branch_width):
    branch = build_branch(
        "aux-enc",
        TASK,
        exp.reference,
        exp.datasets.train(TASK).num_classes,
        width,
        profile.recognition.sampling(),
    )
    widths[width] = millions(branch)
ratio = widths[2 * icm.branch_width] / widths[icm.branch_width]
codec_millions = millions(exp.reference)
print(f"branch: {widths} M parameters, x{ratio:.2f}; the codec stays {codec_millions:.3f} M")

# %% [markdown]
# ## 3 · Who pushes the encoder harder?
#
# Iino et al.'s premise: behind a deep recognizer the task loss reaches $g_a$ weakly, and the
# branch on ŷ gives it a stronger signal. With a ResNet-18 recognizer and a branch that starts
# from random weights, neither is obvious: measure it. At α = 0 the branch's gradient is exactly
# zero (section 1's explanation, in one number).

# %%
import torch

from icm_lib.codec import load_codec
from icm_lib.gradients import encoder_gradients
from icm_lib.losses import ICMObjective

crop = icm.train(TASK).crop
train = exp.datasets.train(TASK)
x = torch.stack([train[i][0][:, :crop, :crop] for i in range(BATCH)]).to(device)
codec = load_codec(exp.reference.codec_state()).to(device).train()
torch.manual_seed(SEED)
branch = exp.branch("aux-enc", TASK, codec).to(device).train()
grads = {}
for alpha in (icm.alpha, 0.0):
    objective = ICMObjective(exp.machine(TASK), lmbda, alpha, icm.mse_weight(TASK), icm.amp)
    grads[alpha] = encoder_gradients(objective, codec, branch, x, seed=SEED)
    g = grads[alpha]
    print(
        f"α = {alpha:g}: ‖g_task‖ {g['task_norm']:.3e}, ‖g_branch‖ {g['branch_norm']:.3e}, "
        f"ratio {g['ratio']:.3f}, cosine {g['cosine'] if math.isfinite(g['cosine']) else 'n/a'}"
    )

# %%
print(
    S.record(
        {
            "alpha_zero": {
                "task": TASK,
                "lmbda": lmbda,
                "points": {
                    k: {kk: p[kk] for kk in ("bpp", metric, "psnr")} for k, p in points.items()
                },
                "log_gap": gaps,
                "point_gap": point_gap,
                "branch_loss_first_last": [branch_losses[0], branch_losses[-1]],
                "run_dirs_differ": runs["aux-enc α=0"].record["run_dir"]
                != runs["aux-enc"].record["run_dir"],
            },
            "branch_width": {
                "million_parameters": {format(k, "g"): v for k, v in widths.items()},
                "ratio": ratio,
                "codec_million_parameters": codec_millions,
            },
            "encoder_gradients": {
                format(a, "g"): {k: (v if math.isfinite(v) else None) for k, v in g.items()}
                for a, g in grads.items()
            },
        }
    )
)
