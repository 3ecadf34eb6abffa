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
# # Solutions · 04 PatchGAN decoder finetuning
#
# The exercises at the end of [notebook 04](../04_patchgan_finetuning.ipynb), worked. The
# finetunings of notebook 04 load from the cache under `DATA_DIR` (trained here if missing, as is
# the one-layer finetuning). Numbers go to `OUTPUT_DIR/metrics.json`.

# %% tags=["parameters"]
# Parameters (papermill injects overrides after this cell)
PROFILE = "cpu"  # smoke | cpu | paper
SEED = 0
DATA_DIR = "../../data"  # datasets and caches (env ICM_DATA_DIR overrides)
OUTPUT_DIR = "../../outputs/solutions/cpu/04_patchgan_finetuning"  # metrics.json
DEVICE = ""  # empty: cuda if available, else cpu
IMAGES = 4  # val images whose bytes are compared

# %%
from icm_lib.notebook import setup

S = setup(PROFILE, SEED, DATA_DIR, OUTPUT_DIR, DEVICE)
profile, device = S.profile, S.device
print(f"profile={profile.name}  device={device}  data={S.data_dir}  outputs={S.output_dir}")

# %%
from dataclasses import replace

from icm_lib.experiment import Experiment
from icm_lib.gan import gan_point, preset_config
from icm_lib.tasks import get_task

exp = Experiment.prepare(profile, S.data_dir, device)
g = profile.gan
metric = get_task(g.task).metric
val = exp.datasets.val(g.task)

# %% [markdown]
# ## 1 · The PatchGAN weight at 0
#
# With $w_{adv} = 0$ the discriminator still trains, but nothing of it reaches $g_s$: the decoder
# is finetuned on $w_{task} E + w_{pix}\,\mathrm{MSE}$ alone, from the same bytes. That is more
# decoder training towards the original pixels, so PSNR still improves, and so does whatever
# of the checkerboard score a pixel loss removes (a periodic residual is a pixel error too): the
# gain that remains is the pixel term's. What the discriminator alone adds is the difference
# between `full` and `no-adv` — in the README's study (`cpu`, three seeds) the two cannot be
# told apart, and in a few `smoke` steps neither can they. The bytes never change: the encoder is
# frozen in every preset.

# %%
points = {p: gan_point(exp, SEED, p) for p in ("full", "no-adv")}
before = points["full"].record["before"]
changes = {}
for preset, point in points.items():
    after = point.record["after"]
    changes[preset] = {k: after[k] - before[k] for k in ("psnr", "checkerboard", metric)}
    same_bytes = all(
        point.base_codec.compress(val[i][0]) == point.codec.compress(val[i][0])
        for i in range(min(IMAGES, len(val)))
    )
    changes[preset]["bitstreams_identical"] = same_bytes
    changes[preset]["adv_weight"] = preset_config(g, preset).adv_weight
    print(f"{preset:>7}: after − before {changes[preset]}")

# %% [markdown]
# ## 2 · Only the first layer of $g_s$
#
# `gan.decoder_layers = 1` unfreezes the first child of $g_s$ (the input side, as the poster's
# "first few layers") and nothing else: every other parameter of the codec stays bit for bit what
# it was, so again no byte changes. One layer of $g_s$ has far fewer parameters than the whole
# decoder, so expect PSNR to move less in the same number of steps; the last layers, which draw
# the final pixels (and the checkerboard), stay as they were.

# %%
import torch

exp1 = replace(exp, profile=replace(profile, gan=replace(g, decoder_layers=1)))
one = gan_point(exp1, SEED, "full")
base_layers = list(one.base_codec.decoder.children())
tuned_layers = list(one.codec.decoder.children())
changed = [
    not all(torch.equal(a, b) for a, b in zip(m0.parameters(), m1.parameters()))
    for m0, m1 in zip(base_layers, tuned_layers)
]
encoder_same = all(
    torch.equal(a, b)
    for a, b in zip(one.base_codec.encoder_parameters(), one.codec.encoder_parameters())
)
bytes_same = all(
    one.base_codec.compress(val[i][0]) == one.codec.compress(val[i][0])
    for i in range(min(IMAGES, len(val)))
)
psnr_change_one = one.record["after"]["psnr"] - before["psnr"]
print(f"g_s layers changed: {changed}")
print(f"encoder identical: {encoder_same}; bytes identical: {bytes_same}")
print(
    f"PSNR change: first layer only {psnr_change_one:+.3f} dB, whole decoder "
    f"{changes['full']['psnr']:+.3f} dB"
)

# %%
print(
    S.record(
        {
            "task": g.task,
            "metric": metric,
            "before": {k: before[k] for k in ("bpp", "psnr", "checkerboard", metric)},
            "changes": changes,
            "first_layer_only": {
                "layers_changed": changed,
                "encoder_identical": encoder_same,
                "bitstreams_identical": bytes_same,
                "psnr_change": psnr_change_one,
                "steps": one.record["log"][-1]["step"],
            },
        }
    )
)
