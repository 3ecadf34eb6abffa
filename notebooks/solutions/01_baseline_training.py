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
# # Solutions · 01 Baseline training
#
# The exercises at the end of [notebook 01](../01_baseline_training.ipynb), worked. The codecs of
# notebook 01 load from the cache under `DATA_DIR`; the new ones are trained here (load-or-compute,
# keyed by their settings like every run). Numbers go to `OUTPUT_DIR/metrics.json`.

# %% tags=["parameters"]
# Parameters (papermill injects overrides after this cell)
PROFILE = "cpu"  # smoke | cpu | paper
SEED = 0
DATA_DIR = "../../data"  # datasets and caches (env ICM_DATA_DIR overrides)
OUTPUT_DIR = "../../outputs/solutions/cpu/01_baseline_training"  # figures + metrics.json
DEVICE = ""  # empty: cuda if available, else cpu
TASK = "seg"  # the task whose λ is doubled (a segmentation step is the cheaper one)
QFS = [1.0, 1.4, 2.0]  # ROI quantization factors (1.4: the paper's)

# %%
from icm_lib.notebook import setup

S = setup(PROFILE, SEED, DATA_DIR, OUTPUT_DIR, DEVICE)
profile, device = S.profile, S.device
print(f"profile={profile.name}  device={device}  data={S.data_dir}  outputs={S.output_dir}")

# %%
from icm_lib.experiment import Experiment
from icm_lib.tasks import get_task

exp = Experiment.prepare(profile, S.data_dir, device)
icm, metric = profile.icm, get_task(TASK).metric

# %% [markdown]
# ## 1 · Double λ
#
# In $L = R + \lambda\{E(y, \hat y) + w\,\mathrm{MSE}\}$ a larger λ weights the distortion more
# against the rate, so the codec keeps more bits: the new point should sit to the right of the
# old top point, with a task metric at least as good up to noise. Where the metric has saturated
# (as it often has at the top of the grid), the extra bits buy nothing the machine sees: the
# point moves right, hardly up, and leaves the operational front. The logged `loss` is exactly
# that sum, which the log lets us check step by step.

# %%
from pathlib import Path

from icm_lib import plots
from icm_lib.evaluate import curves, summary_point

grid = sorted(icm.lambdas(TASK))
lmbda = 2 * grid[-1]
points = [exp.point(TASK, "baseline", lm, SEED) for lm in grid]  # notebook 01's (cached)
new = exp.point(TASK, "baseline", lmbda, SEED)
old_point, new_point = points[-1].record["eval"][TASK], new.record["eval"][TASK]
for name, p in (("λ " + format(grid[-1], "g"), old_point), ("λ " + format(lmbda, "g"), new_point)):
    print(f"{name:>8}: {p['bpp']:.4f} bpp, {metric} {p[metric]:.4f}, PSNR {p['psnr']:.2f} dB")

w = icm.mse_weight(TASK)
decomposition = [
    abs(r["loss"] - (r["bpp_loss"] + lmbda * (r["task_loss"] + w * r["mse_loss"])))
    / max(abs(r["loss"]), 1e-12)
    for r in new.record["log"]
]
print(f"loss = bpp + λ(task + {w:g}·mse) at every logged step, to {max(decomposition):.1e}")

rd = curves([p.record for p in points], TASK)
fig = plots.rd_curves(
    rd, metric, title=f"{TASK}: the grid and 2 x λ_max", trained={"baseline": [new_point]}
)
plots.save(fig, S.output_dir, "double_lambda")

# %% [markdown]
# ## 2 · The ROI quantization factor
#
# The ROI method divides the latent outside the objects' masks by QF before quantization: a
# larger QF leaves fewer non-zero symbols in the background, so fewer bits. QF = 1 divides by
# one: the very same latent, the very same bytes as the codec alone, so the same bpp to the last
# digit. The task metric pays for the background only where the detector looked at it.

# %%
det_lmbda = min(icm.lambdas("det"))
base = exp.point("det", "baseline", det_lmbda, SEED)  # notebook 01's detection codec
run_dir = Path(base.record["run_dir"])
roi = {}
for qf in QFS:
    point = exp.evaluate(base.codec, "det", run_dir / f"eval-det-roi-qf{qf:g}.json", roi_qf=qf)
    roi[qf] = summary_point(point, "det")
    print(f"ROI QF {qf:g}: {roi[qf]['bpp']:.5f} bpp, mAP {roi[qf]['metric']:.4f}")
plain = summary_point(base.record["eval"]["det"], "det")
print(f"codec alone: {plain['bpp']:.5f} bpp, mAP {plain['metric']:.4f}")

# %%
print(
    S.record(
        {
            "double_lambda": {
                "task": TASK,
                "grid": grid,
                "lmbda": lmbda,
                "old": summary_point(old_point, TASK),
                "new": summary_point(new_point, TASK),
                "new_run_dir": Path(new.record["run_dir"]).name,
                "old_run_dir": Path(points[-1].record["run_dir"]).name,
                "loss_decomposition_max_relative_error": max(decomposition),
            },
            "roi": {
                "lmbda": det_lmbda,
                "codec_alone": plain,
                "qf": {format(qf, "g"): v for qf, v in roi.items()},
            },
        }
    )
)
