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
# # 05 · Seeing the results: bit allocation, R-D curves, artifacts, and an explorer
#
# Notebooks 01–04 trained codecs for machines with and without the auxiliary branch, compared
# branch positions and finetuned a decoder against a PatchGAN. This notebook puts their results
# side by side and lets you look at any of them image by image:
#
# 1. **Where the bits go** (Iino et al., Fig. 5–6): the MSE codec, the codec trained with the task
#    loss (w/o aux) and with the auxiliary branch (w/ aux) on one image, with the machine's output
#    on each decoding, and the difference of the two machine codecs' bit maps.
# 2. **R-D curves** of every variant with seed bands, and the BD-rate table.
# 3. **Checkerboards** before and after PatchGAN finetuning (Le et al.): residual spectra.
# 4. **The branch-position ablation**, where the study has run it.
# 5. **An interactive explorer**: pick a task, a codec, λ, a decoder and a val image.
#
# It trains nothing itself beyond what notebooks 01, 02 and 04 train (with the same keys, so after
# them everything loads from the cache). Multi-seed figures come from the study files in
# `results/` when they exist (`make study`); otherwise from this notebook's seed alone.

# %% tags=["parameters"]
# Parameters (papermill injects overrides after this cell)
PROFILE = "cpu"  # smoke | cpu | paper
SEED = 0
DATA_DIR = "../data"  # datasets and caches (env ICM_DATA_DIR overrides)
OUTPUT_DIR = "../outputs/cpu/05_visualization"  # figures + metrics.json (env ICM_OUTPUT_DIR)
RESULTS_DIR = "../results"  # the studies' files (missing: this notebook's own runs are used)
DEVICE = ""  # empty: cuda if available, else cpu
TASKS = ["det", "seg"]
PRESETS = None  # PatchGAN presets (None: those notebook 04 finetuned, profile.tutorial)
IMAGES = 8  # val images offered by the explorer
OTHER_WORLDS = ["cpu-patterns"]  # profiles whose cached codecs the explorer offers too

# %%
from pathlib import Path

from icm_lib.notebook import setup

S = setup(PROFILE, SEED, DATA_DIR, OUTPUT_DIR, DEVICE)
profile, device = S.profile, S.device
results_dir = Path(RESULTS_DIR).resolve()
print(f"profile={profile.name}  device={device}  data={S.data_dir}  outputs={S.output_dir}")
print(f"results: {results_dir} ({'found' if results_dir.is_dir() else 'absent'})")

# %% [markdown]
# ## 0 · The codecs of notebooks 01, 02 and 04 (loaded from the cache)

# %%
import time

from icm_lib.experiment import Experiment
from icm_lib.gan import gan_point

t0 = time.perf_counter()
exp = Experiment.prepare(profile, S.data_dir, device)
points = exp.tutorial_grid(SEED, TASKS, ["baseline", "aux-enc"])  # notebooks 01-02's codecs
codecs = {}
for p in points:
    r = p.record
    for task in r["eval"]:  # the MSE reference codecs are scored on every task
        codecs[(task, r["variant"], r["lmbda"])] = p.codec
if not any(k[1] == "mse" for k in codecs):  # no MSE curve trained: notebook 00's MSE codec
    codecs.update({(t, "mse", profile.mse.lmbda): exp.reference for t in TASKS})
PRESETS = list(PRESETS or profile.tutorial.gan_presets)
gan = {preset: gan_point(exp, SEED, preset) for preset in PRESETS}
g = profile.gan
gan_lmbda = gan[PRESETS[0]].run.lmbda
finetuned = {(g.task, "baseline", gan_lmbda): {p: v.codec for p, v in gan.items()}}
print(f"{len(codecs)} codecs and {len(gan)} finetuned decoders in {time.perf_counter() - t0:.0f} s")

# %% [markdown]
# ## 1 · Where the bits go (Fig. 5–6)
#
# Top: the input with the machine's output on it, and each codec's decoding with the machine's
# output on *that*. Bottom: bits per pixel of ŷ (where each codec spends its rate) and, right,
# w/o aux − w/ aux: red where the plain machine codec spends more than the one trained with the
# auxiliary branch, blue where it spends less. The codecs are compared at their middle λ; the MSE
# codec at the λ whose rate is closest.

# %%
from icm_lib import plots, views

fig56 = {}
TRAINED = [t for t in TASKS if any(k[:2] == (t, "aux-enc") for k in codecs)]
print("tasks with codecs of notebooks 01-02:", TRAINED)
for task in TRAINED:
    machine, val = exp.machine(task), exp.datasets.val(task)
    image = val[0][0]
    fig56[task] = views.with_and_without_branch(codecs, task, image, machine)
    panels = fig56[task].pop("panels")
    fig = plots.bit_allocation_comparison(
        image, panels, task, views.class_names(val), "w/o aux", ("w/o aux", "w/ aux")
    )
    plots.save(fig, S.output_dir, f"bit_allocation_{task}")
    print(task, fig56[task])

# %% [markdown]
# ## 2 · R-D curves and BD-rates
#
# From `results/study-<profile>.json` (every seed of the study) where it exists, else from this
# notebook's runs (one seed: no band). Bold: the mean over seeds with ±1 standard deviation;
# faint: each seed.

# %%
from icm_lib.evaluate import bd_rates, curves
from icm_lib.report import fmt_bd_rate, recorded_study
from icm_lib.tasks import get_task

study = recorded_study(results_dir, profile)
if study:
    rd, bd, rd_source = study["curves"], study["bd_rate"], study["source"]
else:
    runs = [p.record for p in points]
    rd = {t: curves(runs, t) for t in TASKS}
    bd = {t: bd_rates(rd[t], t) for t in TASKS}
    rd_source = f"this notebook's runs (seed {SEED})"
print("R-D source:", rd_source)
for task in TASKS:
    fig = plots.rd_curves(rd[task], get_task(task).metric, title=f"{task}: R-D ({rd_source})")
    plots.save(fig, S.output_dir, f"rd_{task}")
    for name, row in bd[task].items():
        print(f"{task} BD-rate of {name:8s} vs baseline: strict {fmt_bd_rate(row)}")

# %% [markdown]
# ## 3 · Checkerboards before and after PatchGAN finetuning (Le et al.)
#
# The same bytes decoded by the machine codec's decoder and by each finetuned decoder; bottom:
# the log power spectrum of each residual, where a checkerboard shows as a grid of peaks.

# %%
val = exp.datasets.val(g.task)
x = val[0][0]
base = gan[PRESETS[0]].base_codec
data = base.compress(x)
decoded = {
    "machine codec": base.decompress(data)[0].cpu(),
    **{f"PatchGAN {p}": v.codec.decompress(data)[0].cpu() for p, v in gan.items()},
}
fig, spectra_scores = plots.before_after_spectra(x, decoded)
plots.save(fig, S.output_dir, "checkerboard_spectra")
print({k: round(v, 4) for k, v in spectra_scores.items()})

# %% [markdown]
# ## 4 · The branch-position ablation (where the study ran it)

# %%
from icm_lib.results import AblationFile

ablation = AblationFile.find(results_dir, profile.name)
if ablation:
    for task, table in ablation.tasks.items():
        plots.save(
            plots.validation_curves(table, f"{task}: validation main loss"),
            S.output_dir,
            f"ablation_{task}",
        )
        print(task, "lowest first:", " < ".join(table["order"]))
else:
    print(
        f"no {AblationFile.path(results_dir, profile.name).name}: run notebook 03 or "
        "`python -m icm_lib.study --study ablation`"
    )

# %% [markdown]
# ## 5 · Explore
#
# Choose a task, a codec (`mse`, `baseline` = w/o aux, `aux-enc` = w/ aux), its λ, a decoder
# (as trained, or — for the codec notebook 04 finetuned — a PatchGAN decoder of the *same bytes*)
# and a val image. Left to right: the original with the machine's output, the decoding with the
# machine's output and that image's task metric, the bits of ŷ, and the error. Nothing trains
# here: every choice decodes cached codecs, and every view is cached once rendered.

# %%
from IPython.display import display

from icm_lib.widgets import Explorer

explorer = Explorer(exp, codecs, finetuned, images=IMAGES)
display(explorer.widget())

# %% [markdown]
# **The other world.** The same explorer over another world's codecs (`OTHER_WORLDS`), read from
# the cache only: nothing trains here. A world whose recognizers are not cached says the command
# that trains them; a codec its study recorded but this cache lacks is offered with its command
# (and a button that trains it here). Compare what a task-loss codec keeps where bits compete
# (`cpu-patterns`: stripes whose period and orientation are the class) with the shapes world.

# %%
import ipywidgets as widgets

from icm_lib.errors import NotCachedError
from icm_lib.profiles import get_profile
from icm_lib.widgets import other_world

worlds = {f"{profile.name} ({profile.data.world})": explorer}
not_cached = {}
for name in OTHER_WORLDS:
    other = get_profile(name)
    try:
        seen = other_world(other, S.data_dir, device, SEED, results_dir, IMAGES)
    except NotCachedError as exc:
        not_cached[name] = str(exc)
        print(f"{name}: {exc}")
        continue
    if seen.recorded or seen.codecs:
        worlds[f"{name} ({other.data.world})"] = seen
    else:
        print(f"{name}: no study recorded in {results_dir} for this world yet")
if len(worlds) > 1:
    tabs = widgets.Tab(children=[e.widget() for e in worlds.values()])
    for i, title in enumerate(worlds):
        tabs.set_title(i, title)
    display(tabs)

# %% [markdown]
# Without a browser (papermill, a script), the same views render as figures. Here: one image of
# each task for both machine codecs at the middle λ, and the codec of notebook 04 with its own
# decoder and each finetuned one (the same bytes).

# %%
import numpy as np
from IPython.display import Image

samples = []
for task in TRAINED:
    lambdas = explorer.lambdas(task, "aux-enc")
    lm = lambdas[len(lambdas) // 2]
    for variant in ("baseline", "aux-enc"):
        samples.append(explorer.view(task, variant, lm, 1))
for preset in explorer.decoders(g.task, "baseline", gan_lmbda):  # as trained + finetuned
    samples.append(explorer.view(g.task, "baseline", gan_lmbda, 1, preset))
for i, v in enumerate(samples):
    (S.output_dir / f"explorer_{i}.png").write_bytes(v.png)
    display(Image(v.png))
seconds = [v.seconds for v in samples]
print(
    f"{len(samples)} views, first render {np.median(seconds):.2f} s median "
    f"(max {max(seconds):.2f} s); a cached view returns at once"
)

# %%
record = {
    "bit_allocation": fig56,
    "rd_source": rd_source,
    "bd_rate": {
        t: {name: {"mean": row.get("mean"), "n": row.get("n")} for name, row in bd[t].items()}
        for t in TASKS
    },
    "checkerboard": spectra_scores,
    "ablation_orders": {t: v["order"] for t, v in ablation.tasks.items()} if ablation else None,
    "explorer": {
        "codecs": len(codecs),
        "finetuned": len(finetuned[(g.task, "baseline", gan_lmbda)]),
        "views": [v.numbers for v in samples],
        "render_seconds": seconds,
        "tasks": sorted({t for t, _, _ in codecs}),
        "worlds": {
            title: {"cached": len(e.codecs), "recorded": len(e.recorded)}
            for title, e in worlds.items()
        },
        "not_cached": not_cached,
    },
}
print(S.record(record))

# %% [markdown]
# ## Exercises
#
# Change one thing, **write down what you expect before you run it**, then run it and compare.
# Worked solutions, one file per notebook, kept apart:
# [`solutions/05_visualization.py`](solutions/05_visualization.py)
# (jupytext's format: open it in `make lab`; the tests run it on the `smoke` profile and
# check what it records).
#
# 1. **Sweep λ on one image.** In the explorer, keep one val image and the w/ aux codec and step
#    through every λ. Predict how bytes, PSNR and the task metric move, and whether one image
#    follows the order of the val set's R-D curve.
# 2. **What the difference map adds up to.** Before computing it: what does the mean of the
#    w/o aux − w/ aux map of section 1 (over the padded image) equal, in numbers this notebook
#    already printed?
# 3. **Same bytes, another decoder.** Switch the decoder of notebook 04's codec to a PatchGAN
#    one. Predict which of bytes, bpp, PSNR and the task metric change.
