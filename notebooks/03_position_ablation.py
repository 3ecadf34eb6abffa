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
# # 03 · Where should the auxiliary loss enter? (Iino et al., section 4.2)
#
# Notebook 02 put the auxiliary recognition branch on ŷ, just before the decoder (**aux-enc**), so
# that its loss $E(y, \hat y_{aux})$ trains only the encoder. Why there? Section 4.2 of the paper
# moves the branch and compares:
#
# * **none** — the baseline of Eq. 4 (no branch);
# * **aux-enc** (proposed) — the branch reads ŷ; its loss reaches the encoder $g_a$ only;
# * **aux-dec** — the branch reads the input of the decoder's last layer (Table 3's stem
#   RB↓2-RB-RB); its loss reaches $g_a$ and $g_s$ up to that layer;
# * **aux-task** — the branch reads an intermediate feature of the frozen recognizer run on x̂
#   (Faster R-CNN: between conv2 and conv3 of the backbone, the Table 1 branch after its conv1;
#   DeepLabV3+: between conv3 and conv4, only a head — MMSegmentation's auxiliary FCN head); its
#   loss reaches $g_a$ and all of $g_s$, *through* the recognizer.
#
# The number compared is not the loss each run minimises (that includes its own branch term) but
# the **validation main loss**: Eq. 4 (Eq. 6 for segmentation) *without* the branch term,
# $R + \lambda\{E(y, \hat y) [+ \mathrm{MSE}]\}$, on a fixed set of validation crops, logged while
# training. The paper's finding: aux-enc gives the lowest main loss, aux-dec the highest of the
# branch settings — "imposing the auxiliary loss only on the encoder could suppress the negative
# effect" of an auxiliary loss on the main one.
#
# **λ.** The paper compares at λ = 0.016 (detection) and λ = 2 (segmentation). The `cpu` profile
# trains on the paper's λ grids ({0.4 … 3.2} and {1 … 8}), so the two values carry over as they
# are; note that 0.016 is 25× below the lowest detection λ of the main experiment, a regime where
# the rate term dominates. The `smoke` profile uses λ = 0.5 for both (it only checks the wiring).

# %% tags=["parameters"]
# Parameters (papermill injects overrides after this cell)
PROFILE = "cpu"  # smoke | cpu | paper
SEED = 0
DATA_DIR = "../data"  # datasets and caches (env ICM_DATA_DIR overrides)
OUTPUT_DIR = "../outputs/cpu/03_position_ablation"  # figures + metrics.json (env ICM_OUTPUT_DIR)
DEVICE = ""  # empty: cuda if available, else cpu
TASKS = ["det", "seg"]
SEEDS = None  # None: the profile's ablation seeds (three on cpu: 24 runs, ~1.3 h to train)
STEPS = None  # None: the profile's schedule; an int trains shorter (other runs)
RESULTS_DIR = "../results"  # the study's ablation file: runs recorded there are not retrained
CLAIMS_PROFILES = ["cpu", "cpu-patterns"]  # recorded studies whose claims are shown (two worlds)

# %%
from icm_lib.notebook import setup

S = setup(PROFILE, SEED, DATA_DIR, OUTPUT_DIR, DEVICE)
profile, device = S.profile, S.device
ab = profile.ablation
seeds = list(SEEDS or ab.seeds)
print(f"profile={profile.name}  device={device}  data={S.data_dir}  outputs={S.output_dir}")
print(
    f"settings {list(ab.variants)}, seeds {seeds}, λ det {ab.det_lmbda:g} / seg {ab.seg_lmbda:g}, "
    f"validation every {ab.val_every} steps on {ab.val_images} val crops"
)

# %% [markdown]
# ## 1 · Fig. 7: the three positions

# %%
from icm_lib import plots

plots.save(plots.branch_positions_diagram(), S.output_dir, "branch_positions")

# %% [markdown]
# The branches themselves: aux-enc and aux-dec start with a stem that brings their input to
# stride 4; aux-task starts from the recognizer's own stride-4 feature (detection) or is only a
# head (segmentation), so it is the smallest.

# %%
from icm_lib.experiment import Experiment
from icm_lib.views import million_parameters as millions

exp = Experiment.prepare(profile, S.data_dir, device)
branch_sizes = {}
for task in TASKS:
    machine = exp.machine(task)
    branch_sizes[task] = {
        v: millions(exp.branch(v, task, exp.reference)) for v in ab.variants if v != "baseline"
    }
    print(
        f"{task}: aux-task reads {machine.aux_task_channels} channels of the recognizer; "
        + ", ".join(f"{v} {n:.2f} M" for v, n in branch_sizes[task].items())
    )

# %% [markdown]
# ## 2 · Train (or load) every setting, validating as it trains
#
# Each setting and seed is one run (load-or-compute, resumable): the same data order, λ,
# schedule and initial codec; only the branch differs. `python -m icm_lib.study --study ablation`
# trains the same runs and records each in `results/ablation-<profile>.json` with its validation
# curve; a run recorded there with the same settings is read from the file instead of being
# trained again — on `cpu` all 24 of them (the file was re-made with bfloat16 recognizers on
# 2026-12-03; trained here, they take ~1.3 compute-hours on 2 cores). Where
# your reference codec trained to other weights than the one the file's runs started from (on a
# GPU, or a CPU whose float sums run in another order), or your CPU trained the recognizers in
# float32 because it only emulates bfloat16 (`setup` says so above), their run keys differ from
# the ones computed here; they are then matched by their settings key (every setting, the data,
# the recognizers' recipe and the reference codec's settings) and counted below. Delete the file (or point
# `RESULTS_DIR` elsewhere) to train them here.

# %%
import time
from pathlib import Path

from icm_lib.results import AblationFile
from icm_lib.study import ablation_rows, recorded_elsewhere, recorded_rows

t0 = time.perf_counter()
results_file = AblationFile.path(Path(RESULTS_DIR).resolve(), profile.name)
recorded = recorded_rows(results_file)
rows = list(ablation_rows(exp, seeds, TASKS, recorded, STEPS, same_settings=True))
from_file, elsewhere = sum(r.from_results_file for r in rows), recorded_elsewhere(exp, rows, STEPS)
print(
    f"{len(rows)} runs in {time.perf_counter() - t0:.0f} s: {from_file} read from "
    f"{results_file.name} ({elsewhere} of them from another machine's weights), "
    f"{len(rows) - from_file} trained or loaded from the cache"
)

# %% [markdown]
# ## 3 · Validation main loss during training (paper Fig. 8–9)
#
# Bold: the mean over seeds; band: the seeds' lowest to highest.

# %%
from icm_lib.evaluate import ablation_table

table = ablation_table(rows)
for task in TASKS:
    fig = plots.validation_curves(
        table[task], f"{task}: validation main loss, λ = {ab.lmbda(task):g}"
    )
    plots.save(fig, S.output_dir, f"validation_{task}")

# %% [markdown]
# ## 4 · The final table, next to the paper's claim

# %%
from icm_lib.report import fmt_mean_ci

print(f"final validation main loss (mean ± 95 % CI over {len(seeds)} seeds; lower is better)")
for task in TASKS:
    t = table[task]
    print(
        f"{task}: "
        + " | ".join(f"{v} {fmt_mean_ci(t['variants'][v], 4, signed=False)}" for v in ab.variants)
    )
    print(
        f"   ordered: {' < '.join(t['order'])}   paper: aux-enc lowest -> "
        f"{'same' if t['order'][0] == 'aux-enc' else 'NOT reproduced here'}"
    )
    paired = [v for v in ab.variants if "vs_baseline" in t["variants"][v]]
    print(
        "   minus the baseline of the same seed: "
        + " | ".join(f"{v} {fmt_mean_ci(t['variants'][v]['vs_baseline'], 4)}" for v in paired)
    )

# %% [markdown]
# **Reading it.** With a handful of seeds and minutes of training the differences between
# settings can be smaller than the seed-to-seed spread: compare each interval with the gaps
# between the means before calling an ordering. The paired line helps: every setting of a seed
# starts from the same codec and sees the same batches, so its difference to that seed's baseline
# cancels the spread the seeds share; an interval that excludes 0 is a difference this study
# resolves. The branch also costs compute (the aux-task
# branch runs on the recognizer's features, the aux-dec branch at stride 2). The README's results
# section reports the `cpu` study of this notebook over three seeds.

# %%
record = {
    "tasks": {  # the table of section 4 (final loss per seed, mean, interval, paired, curves)
        task: {
            **table[task],
            "lmbda": ab.lmbda(task),
            "branch_million_parameters": branch_sizes[task],
        }
        for task in TASKS
    },
    "seeds": seeds,
    "runs_from_results_file": from_file,
    "runs_from_other_reference_weights": elsewhere,
    "train_loss": {  # first and last, of runs trained or cached here (a results file keeps no log)
        f"{r.task} {r.variant} {r.seed}": [r.log[0]["loss"], r.log[-1]["loss"]]
        for r in rows
        if r.log
    },
}
print(S.record(record))

# %% [markdown]
# ## 5 · The claim, tested: is aux-enc the best position?
#
# The paper's Fig. 8–9 rank the positions by validation main loss, aux-enc lowest. Here each
# position is compared with the same seed's baseline (and aux-enc with each other position) on the
# mean validation main loss over the last 20 % of training, Holm-corrected over the three
# positions, in the recorded ablation of each world (`CLAIMS_PROFILES`).
#
# Each dot is one seed's paired effect (against the same seed's anchor run), the square and bar
# the estimate and its 95 % interval (the two-level bootstrap over seeds and val images, united
# with the seed-level t-interval), the grey band the margin declared in
# `results/analysis-plan.json` before the runs, the red diamond the paper's number. The verdict is
# **effect** (the interval excludes 0), **equivalent** (inside the margin) or **unresolved**.

# %%
from icm_lib.notebook import show_claims

claims_shown = show_claims(RESULTS_DIR, CLAIMS_PROFILES, ("iino_ablation",), S.output_dir)
print(S.record({"claims": claims_shown}, name="claims.json"))

# %% [markdown]
# ## Next
#
# **04 · PatchGAN finetuning** makes the decoded images of a codec for machines watchable again,
# without touching its bitstream; **05 · Visualization** puts every result of 01–04 side by side
# and lets you explore them.

# %% [markdown]
# ## Exercises
#
# Change one thing, **write down what you expect before you run it**, then run it and compare.
# Worked solutions, one file per notebook, kept apart:
# [`solutions/03_position_ablation.py`](solutions/03_position_ablation.py)
# (jupytext's format: open it in `make lab`; the tests run it on the `smoke` profile and
# check what it records).
#
# 1. **Move the branch to aux-dec.** Before reading the table, predict whether aux-dec ends with a
#    lower or higher validation main loss than aux-enc. Then check *why* the two differ:
#    backpropagate only the branch loss $\alpha E(y, \hat y_{aux})$ of each position and see which
#    of $g_a$, $g_s$ and $g_s$'s last layer receive a gradient.
# 2. **One more seed.** Train one more seed of every setting for one task
#    (`exp.ablation_point(task, variant, seed)` with the next seed). Do the 95 % intervals shrink
#    by more than the $\sqrt{(n+1)/n}$ that one more sample gives a standard error? (Look at
#    Student's $t$ quantile for $n-1$ and $n$ degrees of freedom; `smoke` trains $n = 2$ seeds.)
