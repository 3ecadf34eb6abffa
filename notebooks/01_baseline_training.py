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
# # 01 · Baseline: training a codec with the machine's task loss (Eq. 4)
#
# Notebook 00 built the data, two frozen recognizers and a codec trained for human viewing (MSE).
# Here the codec is trained **for the machine**: its distortion term is the frozen recognizer's own
# training loss, computed on the decoded image against **pseudo-labels** — the recognizer's output on
# the original image (Yamazaki et al., followed by Iino et al.):
#
# $$L = R + \lambda\, E(y, \hat y) \qquad (4)$$
#
# ```
# x ──► g_a ──► ŷ ──► g_s ──► x̂ ──► frozen recognizer ──► E(y, ŷ)      y = recognizer(x), no gradient
#         └── R = −log₂ p(ŷ) − log₂ p(ẑ)   (entropy models, per pixel)
# ```
#
# * **Why pseudo-labels?** No ground truth is needed, so any image collection can train the codec;
#   and the target is what the machine *would* see on the original, which is exactly what the codec
#   should preserve.
# * **Where does the gradient go?** $E$ is differentiable w.r.t. $\hat x$; it flows back through the
#   recognizer (frozen: BatchNorm in eval mode, no weight updates), then $g_s$, then — through the
#   additive uniform noise that stands in for quantization during training — $g_a$. For a deep recognizer
#   (ResNeXt-101 in the paper) the encoder is far from the loss, which is the difficulty notebook 02
#   addresses.
# * **λ** trades rate against machine accuracy: each λ is one point of an R-D curve.
# * **Two optimizers.** Adam trains the codec; CompressAI's separate optimizer trains the entropy
#   bottleneck's quantiles (CompressAI calls it `aux_loss`; here it is `quantile_loss`, not to be
#   confused with the auxiliary *branch* of notebook 02).
# * For segmentation, Eq. 6 adds $\mathrm{MSE}(x, \hat x)$ inside the braces "to stabilize the
#   training"; the `seg` runs here use it too (`icm.seg_mse_weight`), so that notebook 02 compares
#   like with like.
#
# **Initialisation.** Every run starts from the reference codec (the paper starts from CompressAI's
# pretrained cheng2020-attn; the `cpu` profile from notebook 00's MSE codec) and finetunes it: the
# paper's schedule is 80 epochs with a polynomial decay of the learning rate, the `cpu` profile's a
# few hundred steps (printed below). Runs are cached and keyed by their settings, so the study
# (`make study`) and notebook 02 reuse these codecs.
#
# **What this notebook trains, and what it reads.** A R-D curve needs a codec per λ, and a BD-rate
# needs several seeds to mean anything; on a laptop that is hours. So the notebook trains the λ of
# `profile.tutorial` (on `cpu`: the segmentation codec at the lowest λ; `paper` and `smoke`: the
# whole grid), and draws the curves and BD-rates of **`make study`** (`results/study-<profile>.json`:
# every λ, three seeds, the very same runs) with this notebook's points on top — and checks that the
# codec trained here lands where the study's run of the same seed and λ did. Without a study file
# the curves are this notebook's own runs. `ICM_OVERRIDES="tutorial__det_lambdas=None
# tutorial__seg_lambdas=None tutorial__mse_curve=True"` trains the whole grid here.
#
# **The ROI baseline** (Ahonen et al.) needs no training: at encoding time it divides the latent
# outside the objects' ground-truth masks by a quantization factor QF = 1.4, so the background costs
# fewer bits. It is applied to these baseline codecs, for detection only.

# %% tags=["parameters"]
# Parameters (papermill injects overrides after this cell)
PROFILE = "cpu"  # smoke | cpu | paper
SEED = 0
DATA_DIR = "../data"  # datasets and caches (env ICM_DATA_DIR overrides)
OUTPUT_DIR = "../outputs/cpu/01_baseline_training"  # figures + metrics.json (env ICM_OUTPUT_DIR)
DEVICE = ""  # empty: cuda if available, else cpu
TASKS = ["det", "seg"]
STEPS = None  # None: the profile's schedule; an int trains shorter (other runs)
RESULTS_DIR = "../results"  # make study's files (absent or other settings: own runs only)
CLAIMS_PROFILES = ["cpu", "cpu-patterns"]  # recorded studies whose claims are shown (two worlds)

# %%
from icm_lib.notebook import setup

S = setup(PROFILE, SEED, DATA_DIR, OUTPUT_DIR, DEVICE)
profile, device = S.profile, S.device
print(f"profile={profile.name}  device={device}  data={S.data_dir}  outputs={S.output_dir}")

# %% [markdown]
# ## 1 · What notebook 00 left: data, machines, the reference codec (cached)

# %%
from icm_lib.experiment import Experiment

exp = Experiment.prepare(profile, S.data_dir, device)
ds, icm = exp.datasets, profile.icm
for task in TASKS:
    cfg = icm.train(task)
    print(
        f"{task}: λ grid {list(icm.lambdas(task))}, trained here "
        f"{list(profile.tutorial.lambdas(task, icm.lambdas(task)))}; {STEPS or cfg.steps} steps x "
        f"{cfg.batch_size} crops of {cfg.crop}px, lr {cfg.lr:g} (poly decay from "
        f"{cfg.decay_start:.0%}), MSE weight {icm.mse_weight(task)}"
    )

# %%
from pathlib import Path

from icm_lib.report import recorded_study

study = recorded_study(Path(RESULTS_DIR).resolve(), profile)
print("study:", study["source"] if study else "none: the curves below are this notebook's runs")

# %% [markdown]
# ## 2 · The human-viewing reference curve
#
# The MSE codec of notebook 00, finetuned at a few other λ of $R + \lambda \cdot 255^2 \cdot
# \mathrm{MSE}$, gives the curve a codec *not* trained for machines achieves (the paper shows its
# pretrained cheng2020-attn only in the bit-allocation figures). Where `profile.tutorial.mse_curve`
# is off, the curve is the study's and notebook 00's codec stands for it below.

# %%
from icm_lib.tasks import get_task

metric = {t: get_task(t).metric for t in TASKS}
mse_points = [p for p in exp.tutorial_grid(SEED, TASKS, []) if p.record["variant"] == "mse"]
for point in mse_points:
    r = point.record
    print(
        f"MSE λ={r['lmbda']:<7g}"
        + "".join(
            f"  {t}: {p['bpp']:.3f} bpp, {metric[t]} {p[metric[t]]:.3f}, {p['psnr']:.2f} dB"
            for t, p in r["eval"].items()
        )
    )
print(f"{len(mse_points)} MSE codecs trained or loaded here")

# %% [markdown]
# ## 3 · Training with the task loss
#
# One run per λ and task (those of `profile.tutorial`). The progress bar shows the loss parts; each
# run writes a JSON-lines log, complete checkpoints (resumable) and, at the end, the codec alone.
# Finished runs load in a second.

# %%
import time

t0 = time.perf_counter()
baseline_points = [
    p for p in exp.tutorial_grid(SEED, TASKS, ["baseline"]) if p.record["variant"] != "mse"
]
print(f"{time.perf_counter() - t0:.0f} s (trained or loaded)")
runs = [p.record for p in mse_points + baseline_points]  # plain data: what curves and tables read
baseline = {task: [p.record for p in baseline_points if p.record["task"] == task] for task in TASKS}

# %%
from icm_lib import plots

logs = {}  # one panel per task and loss, one line per λ
for task in TASKS:
    for r in baseline[task]:
        for part in ("bpp_loss", "task_loss"):
            logs.setdefault(f"{task} {part}", {})[f"λ={r['lmbda']:g}"] = [x[part] for x in r["log"]]
if logs:
    fig = plots.loss_curves(logs, smooth=3)
    plots.save(fig, S.output_dir, "training_curves")

# %% [markdown]
# Did λ spread the rates? Each λ must give a different bpp, ordered with λ (a larger λ
# weights the task loss more, so it keeps more bits). The R-D points below are measured on the val
# set through **real bitstreams** (bytes written and read back), scored against ground truth; the
# study's points follow those trained here.

# %%
rates = {r["eval"][t].get("rate", "real") for r in runs for t in r["eval"]}
print(
    f"R-D points measured with: {rates or 'no runs here'} (profile.evaluation: {profile.evaluation})"
)
for task in TASKS:
    m = metric[task]
    print(
        f"{task}: {'λ':>6} {'bpp':>7} {m:>7} {'PSNR':>7}   ROI (QF {icm.roi_qf}): {'bpp':>6} {m:>7}"
    )
    for r in baseline[task]:
        p = r["eval"][task]
        roi = r["roi"].get(task)
        roi_s = f"{roi['bpp']:>6.3f} {roi[m]:>7.3f}" if roi else ""
        print(
            f"     {r['lmbda']:>6g} {p['bpp']:>7.3f} {p[m]:>7.3f} {p['psnr']:>7.2f}   {'':>16}{roi_s}"
        )

# %%
from icm_lib.notebook import compare_curves

bd, agreement = {}, {}
for task in TASKS:
    c = compare_curves(runs, task, study, SEED, hide_bd=("aux-enc",))  # aux-enc: notebook 02
    c.show(task, f"{task}: task loss (Eq. 4) vs MSE and ROI", S.output_dir)
    bd[task], agreement[task] = c.bd, c.agreement

# %% [markdown]
# ## 4 · Where do the bits go?
#
# Bit-allocation maps ($-\log_2 p(\hat y)$ per latent position, spread over the pixels it covers) of the
# MSE codec and of a codec trained with the task loss, at similar rates. Trained for the machine, the
# codec spends its bits on what the recognizer needs (objects, class boundaries) and starves the
# rest.

# %%
from icm_lib import views

task = next(t for t in TASKS if baseline[t])  # the first task with a codec trained here
image = ds.val(task)[0][0]
mse_codec = (
    min(mse_points, key=lambda p: p.record["eval"][task]["bpp"]).codec
    if mse_points
    else exp.reference  # notebook 00's MSE codec
)
task_codec = max(
    (p for p in baseline_points if p.record["task"] == task), key=lambda p: p.record["lmbda"]
).codec
maps = {
    name: views.bits_of(c.to(device), image)
    for name, c in [("MSE codec", mse_codec), (f"{task} task loss", task_codec)]
}
fig = plots.bit_maps({"input": (image, maps)})
plots.save(fig, S.output_dir, "bit_allocation")

# %%
from icm_lib.notebook import curve_record

record = {"tasks": {}, "study": study["source"] if study else None}
for task in TASKS:
    rs = baseline[task]
    points = {
        "baseline": [r["eval"][task] for r in rs],
        "roi": [r["roi"][task] for r in rs if task in r["roi"]],  # ROI codes the same codecs
        "mse": [p.record["eval"][task] for p in mse_points],
    }
    record["tasks"][task] = curve_record(task, points, rs, bd[task], SEED, agreement.get(task, []))
print(S.record(record))

# %% [markdown]
# ## 5 · The claim, tested: can this pipeline see a large effect at all?
#
# Before any claim about the branch, the pipeline must show it detects an effect known to be
# large: the **positive control** sets the MSE codec of section 2 against the task-loss baseline,
# in the recorded study of each world (`CLAIMS_PROFILES`: the shapes world `cpu`, and
# `cpu-patterns`, where an object's class is carried by detail that costs bits). A BD-rate above 0
# says the MSE codec needs more bits for the same accuracy. A world where the control fails cannot
# show the other claims either: there the task loss has nothing to drop that pixels keep.
#
# Each dot is one seed's paired effect (against the same seed's anchor run), the square and bar
# the estimate and its 95 % interval (the two-level bootstrap over seeds and val images, united
# with the seed-level t-interval), the grey band the margin declared in
# `results/analysis-plan.json` before the runs, the red diamond the paper's number. The verdict is
# **effect** (the interval excludes 0), **equivalent** (inside the margin) or **unresolved**.

# %%
from icm_lib.notebook import show_claims

claims_shown = show_claims(RESULTS_DIR, CLAIMS_PROFILES, ("positive_control",), S.output_dir)
print(S.record({"claims": claims_shown}, name="claims.json"))

# %% [markdown]
# ## Next
#
# **02 · Auxiliary-branch training** adds a small recognizer on ŷ whose loss reaches the encoder
# directly (Eq. 5–6), and compares its R-D curve with these.

# %% [markdown]
# ## Exercises
#
# Change one thing, **write down what you expect before you run it**, then run it and compare.
# Worked solutions, one file per notebook, kept apart:
# [`solutions/01_baseline_training.py`](solutions/01_baseline_training.py)
# (jupytext's format: open it in `make lab`; the tests run it on the `smoke` profile and
# check what it records).
#
# 1. **Double λ.** Train the segmentation baseline once more at twice the largest λ of the grid
#    (`exp.point("seg", "baseline", 2 * max(icm.lambdas("seg")), SEED)`) and find the new
#    operating point on the R-D curve. More bits? A better mIoU? Which term of Eq. 4 gains weight,
#    and what should the logged `loss` equal in terms of `bpp_loss`, `task_loss` and `mse_loss`?
# 2. **The ROI quantization factor.** Evaluate a detection baseline through the ROI method at
#    QF 1.0, 1.4 (the paper's) and 2.0 (`exp.evaluate(codec, "det", path, roi_qf=qf)`). Predict
#    the order of the three rates, and what QF = 1.0 gives next to the codec alone.
