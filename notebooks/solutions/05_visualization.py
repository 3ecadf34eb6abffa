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
# # Solutions · 05 Seeing the results
#
# The exercises at the end of [notebook 05](../05_visualization.ipynb), worked with the same
# `Explorer` the notebook's widget drives (its views are figures here). Every codec loads from
# the cache of notebooks 01, 02 and 04 under `DATA_DIR`; nothing new is trained where they ran.
# Numbers go to `OUTPUT_DIR/metrics.json`.

# %% tags=["parameters"]
# Parameters (papermill injects overrides after this cell)
PROFILE = "cpu"  # smoke | cpu | paper
SEED = 0
DATA_DIR = "../../data"  # datasets and caches (env ICM_DATA_DIR overrides)
OUTPUT_DIR = "../../outputs/solutions/cpu/05_visualization"  # figures + metrics.json
DEVICE = ""  # empty: cuda if available, else cpu
TASK = "seg"  # a task notebook 02 trained codecs of (cpu: seg)
INDEX = 2  # the val image

# %%
from icm_lib.notebook import setup

S = setup(PROFILE, SEED, DATA_DIR, OUTPUT_DIR, DEVICE)
profile, device = S.profile, S.device
print(f"profile={profile.name}  device={device}  data={S.data_dir}  outputs={S.output_dir}")

# %%
from icm_lib.experiment import Experiment
from icm_lib.gan import gan_point
from icm_lib.tasks import get_task
from icm_lib.widgets import AS_TRAINED, Explorer

exp = Experiment.prepare(profile, S.data_dir, device)
points = exp.tutorial_grid(SEED, [TASK], ["baseline", "aux-enc"])  # notebooks 01-02's codecs
codecs = {(TASK, p.record["variant"], p.record["lmbda"]): p.codec for p in points}
g = profile.gan
presets = list(profile.tutorial.gan_presets)
gan = {preset: gan_point(exp, SEED, preset) for preset in presets}  # notebook 04's
gan_lmbda = gan[presets[0]].run.lmbda
finetuned = {(g.task, "baseline", gan_lmbda): {p: v.codec for p, v in gan.items()}}
codecs[(g.task, "baseline", gan_lmbda)] = gan[presets[0]].base_codec
explorer = Explorer(exp, codecs, finetuned)
metric = get_task(TASK).metric

# %% [markdown]
# ## 1 · λ on one image
#
# A larger λ buys more bits where the machine looks, so across the grid the bytes of one image
# grow with λ too, and PSNR with them — but not step by step: two neighbouring λ whose codecs
# differ little (the low end of a short schedule) can swap by a few bytes on one image while the
# val set's mean keeps its order. The task metric of *one* image is noisier still: an mIoU or mAP
# of a single image jumps with a few pixels or one box. That is why an R-D point averages the
# whole val set, and why the explorer is for looking, not for measuring.

# %%
from IPython.display import Image, display

sweep = []
for lm in explorer.lambdas(TASK, "aux-enc"):
    view = explorer.view(TASK, "aux-enc", lm, INDEX)
    sweep.append(view.numbers)
    print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in view.numbers.items()})
display(Image(view.png))
val_curve = [p.record["eval"][TASK] for p in points if p.record["variant"] == "aux-enc"]
same_order = [v["bytes"] for v in sweep] == sorted(v["bytes"] for v in sweep)
print(f"bytes rise with every step of λ on image {INDEX}: {same_order}")
print(f"... and from the lowest to the highest λ: {sweep[-1]['bytes'] > sweep[0]['bytes']}")

# %% [markdown]
# ## 2 · What the difference map adds up to
#
# A bit-allocation map spreads each latent position's $-\log_2 p(\hat y)$ over the pixels it
# covers, so its mean over the padded image is the codec's estimated bits of ŷ per pixel. The
# map of differences is linear: its mean is the difference of the two codecs' estimated ŷ rates
# on that image — nothing more. Where it is red the plain codec spends more, where blue less, and
# the two areas net out to that one number.

# %%
import torch

from icm_lib import plots
from icm_lib.data.transforms import pad_to_multiple

image = exp.datasets.val(TASK)[INDEX][0]
x = pad_to_multiple(image[None].to(device))[0]
lm = explorer.lambdas(TASK, "aux-enc")[len(explorer.lambdas(TASK, "aux-enc")) // 2]
maps, rates = {}, {}
with torch.no_grad():
    for variant in ("baseline", "aux-enc"):
        likelihoods = codecs[(TASK, variant, lm)].to(device).eval().coder_likelihoods(x)
        maps[variant] = plots.bit_allocation(likelihoods, tuple(x.shape[-2:]))
        pixels = x.shape[-2] * x.shape[-1]
        rates[variant] = float((-torch.log2(likelihoods["y"])).sum() / pixels)
difference = maps["baseline"] - maps["aux-enc"]
identity = {
    "difference_map_mean": float(difference.mean()),
    "rate_difference": rates["baseline"] - rates["aux-enc"],
    "rates_y_bpp": rates,
}
print(identity)

# %% [markdown]
# ## 3 · Same bytes, another decoder
#
# The PatchGAN finetuning changed $g_s$ only; the encoder writes the same stream, byte for byte.
# So bytes and bpp cannot change; PSNR and the task metric are computed on the decoded pixels,
# which a different $g_s$ draws differently.

# %%
decoders = {}
for decoder in explorer.decoders(g.task, "baseline", gan_lmbda):
    view = explorer.view(g.task, "baseline", gan_lmbda, INDEX, decoder)
    decoders[decoder] = view.numbers
    print(f"{decoder:>12}: {view.numbers}")
display(Image(view.png))

# %%
print(
    S.record(
        {
            "task": TASK,
            "index": INDEX,
            "sweep": sweep,
            "val_curve": [{k: p[k] for k in ("bpp", metric, "psnr")} for p in val_curve],
            "bytes_rise_with_lambda": same_order,
            "difference_map": identity,
            "decoders": decoders,
            "as_trained": AS_TRAINED,
        }
    )
)
