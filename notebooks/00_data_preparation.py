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
# # 00 · Data preparation — image coding for machines (ICM)
#
# A learned image codec is usually trained for **human** viewers: it spends bits where a person would
# notice errors. In *image coding for machines* the decoded image is read by a **recognition model**
# (a detector, a segmenter), so the codec should spend bits where the *machine* needs them, and as few
# as possible elsewhere.
#
# This repository implements and reproduces two papers:
#
# * **Iino et al.**, *Improving image coding for machines through optimizing encoder via auxiliary
#   loss* — train a CompressAI codec with the task loss of a frozen recognizer, plus a lightweight
#   **auxiliary recognition branch on the quantized latent** just before the decoder
#   (notebooks 01–03).
# * **Le et al.** — finetune only the **decoder** of such a codec with a **PatchGAN** discriminator,
#   encoder frozen (so the bitstream is unchanged), to remove checkerboard artifacts while keeping
#   machine accuracy (notebook 04).
#
# This first notebook builds everything the others stand on: the data, the frozen recognition models,
# and a codec that writes real bytes.

# %% [markdown]
# ## The objectives, from human viewing to machines
#
# A learned codec has an encoder (analysis transform $g_a$ and entropy models), a quantizer and a
# decoder (synthesis transform $g_s$). It is trained for a rate–distortion trade-off
#
# $$L = R + \lambda D \qquad (1)$$
#
# where $R$ is the bitrate estimated by the entropy model and $\lambda$ the Lagrange multiplier. For
# human viewing $D$ is an image error:
#
# $$L = R + \lambda D(x, \hat x) \qquad (2)$$
#
# For machines, $D$ can compare features $f_i$ of a recognition model on $x$ and $\hat x$,
#
# $$L = R + \lambda \sum_i D(f_i, \hat f_i) \qquad (3)$$
#
# or, more directly, be the recognition model's **task loss** $E$:
#
# $$L = R + \lambda E(y, \hat y) \qquad (4)$$
#
# Here $\hat y$ is the model's output on the decoded image, and the label $y$ is the model's own
# output on the *original* image (a **pseudo-label**, after Yamazaki et al.), so no ground truth is
# needed for training. The recognition model stays frozen.
#
# Iino et al. observe that the encoder sits far from the loss when the recognizer is deep, and add an
# **auxiliary branch** (a small recognizer on the quantized latent $\hat{\text{y}}$) whose loss
# reaches the encoder directly:
#
# $$L = R + \lambda \{E(y, \hat y) + \alpha E(y, \hat y_{aux})\} \qquad (5)$$
#
# $$L = R + \lambda \{E(y, \hat y) + \alpha E(y, \hat y_{aux}) + \mathrm{MSE}(x, \hat x)\} \qquad (6)$$
#
# Eq. 6 (for segmentation) adds an image error to stabilize training.
#
# ```
# image x ──► encoder g_a + entropy models ──► ŷ (quantized latent) ──► bytes (real bitstream)
#                                               │
#                                               ├──► aux branch (training only) ──► E(y, ŷ_aux)
#                                               ▼
#                                          decoder g_s ──► x̂ ──► frozen recognizer ──► E(y, ŷ)
#                                                                      ▲
#                                                 pseudo-labels y = recognizer(x)
# ```
#
# > **Names.** CompressAI's `aux_loss()` trains the entropy bottleneck's quantiles; in `icm_lib`
# > it is called `quantile_loss`. The paper's auxiliary *branch* loss is `branch_loss`. And since
# > `y` is both a label and CompressAI's latent, code says `latent_hat` for ŷ and `pseudo_labels`
# > for the targets.

# %% tags=["parameters"]
# Parameters (papermill injects overrides after this cell)
PROFILE = "cpu"  # smoke | cpu | paper
SEED = 0
DATA_DIR = "../data"  # datasets and caches (env ICM_DATA_DIR overrides)
OUTPUT_DIR = "../outputs/cpu/00_data_preparation"  # figures + metrics.json (env ICM_OUTPUT_DIR)
DEVICE = ""  # empty: cuda if available, else cpu
N_EXAMPLES = 4

# %%
from icm_lib.notebook import setup

S = setup(PROFILE, SEED, DATA_DIR, OUTPUT_DIR, DEVICE)
profile, device = S.profile, S.device
print(f"profile={profile.name}  device={device}  data={S.data_dir}  outputs={S.output_dir}")

# %% [markdown]
# ## 1 · Data
#
# The papers use **COCO2017** (detection) and **Pascal-Context59** (segmentation). Neither can be
# downloaded everywhere, so the `smoke` and `cpu` profiles use an **embedded default**: procedural
# scenes generated from a seed — six object classes (ball, box, tent, star, ring, cross) in random
# colours, fills, sizes and rotations, occluding each other, over five *background* classes (sky,
# grass, water, wall, ground; textures cut from photos that scikit-image ships), so that every pixel
# has a label as in Pascal-Context.
#
# The generator writes a real **COCO-format** detection set (images + `instances_*.json` with boxes,
# RLE masks, categories) and a **Pascal-Context-format** segmentation set (MMSegmentation's layout),
# and the *same loaders* read them that read the real datasets in the `paper` profile. Generation is
# load-or-compute: a second run finds the folder and skips it.

# %%
import time

from icm_lib.data import get_datasets

t0 = time.perf_counter()
ds = get_datasets(profile.data, S.data_dir)
data_seconds = time.perf_counter() - t0
print(
    f"source={ds.source}  detection: {len(ds.det_train)} train / {len(ds.det_val)} val, "
    f"{ds.det_train.num_classes} classes {ds.det_train.category_names}"
)
print(
    f"segmentation: {len(ds.seg_train)} train / {len(ds.seg_val)} val, {ds.seg_train.num_classes} classes"
)
print(f"ready in {data_seconds:.1f} s  ({ds.meta.get('counts', '')})")

# %%
from icm_lib import plots

fig = plots.dataset_examples(ds.det_val, ds.seg_val, n=min(N_EXAMPLES, len(ds.det_val)))
plots.save(fig, S.output_dir, "dataset_examples")

# %% [markdown]
# ## 2 · The machines: frozen recognition models
#
# * **Detection:** Faster R-CNN with an FPN. Here torchvision's, over a ResNet-18; in the `paper`
#   profile the paper's own, detectron2's X101-32x8d-FPN with its COCO weights.
# * **Segmentation:** DeepLabV3+. Here `segmentation_models_pytorch`'s, over a ResNet-18; in the
#   `paper` profile MMSegmentation's R101-D8 with its Pascal-Context-59 weights.
#
# Four libraries sit behind one interface (README "Recognition backends"); the profile's
# `recognition.det_backend` / `seg_backend` choose. To switch without editing a notebook, set
# `ICM_OVERRIDES` before starting JupyterLab or `make tutorial`, for example
# `ICM_OVERRIDES="recognition__det_backend=detectron2 recognition__det_config=COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"`
# (detectron2 and MMSegmentation are optional installs: `pip install -e ".[detectron2,mmseg]"`).
#
# On the embedded default both are trained from scratch here (a few minutes on a CPU; cached after
# the first run; on `cpu` under bfloat16 autocast — the detector's features only,
# `det_train_precision="bfloat16-features"`, the segmenter whole, `seg_train_precision="bfloat16"`
# — about 1.4× faster where the CPU multiplies bfloat16 natively (`avx512_bf16`, AMX), at the same
# quality within seed spread, README "Recognizers trained in bfloat16"; their evaluation stays
# float32). A CPU without those instructions (most laptops) only emulates bfloat16, and there a
# bfloat16 detector step costs 14× a float32 one: on such a device `setup` above hands on the
# profile with both recognizers in float32 (`recognition.precision_fallback`) and says so in its
# output; their weights then differ from the committed `cpu` files' by about a seed's spread. During codec
# training they are **frozen**: no weight changes, BatchNorm uses its
# running statistics, and the task loss $E(y, \hat y)$ is the model's own training loss (Faster
# R-CNN's four RPN/RoI losses; DeepLabV3+'s cross-entropy), differentiable with respect to the image.
# Faster R-CNN's train-mode RPN/RoI sampling is reduced in the CPU profiles
# (`rpn_post_nms_top_n_train=300`, 64 RoIs per image), which makes a step ~5× cheaper.

# %%
from icm_lib.recognition import load_or_train

rec = profile.recognition
print(
    f"detection: {rec.det_backend} ({rec.model_name('det')}), "
    f"segmentation: {rec.seg_backend} ({rec.model_name('seg')}), pretrained={rec.pretrained}"
)
det, seg, rec_reports = load_or_train(profile, ds, S.cache_dir, device)
for name, r in rec_reports.items():
    print(
        f"{name}: val {r['val']}  trained {r['train_steps']} steps in {r['train_seconds']:.0f} s"
        f"{'  (loaded from cache)' if r['cached'] else ''}"
    )
if fig := plots.recognizer_training(rec_reports):
    plots.save(fig, S.output_dir, "recognition_training")

# %% [markdown]
# ### Pseudo-labels and the task loss
#
# The targets $y$ of Eq. 4–6 are the frozen model's outputs on the **original** image: detections
# above a score threshold, and the argmax label map. Below: pseudo-labels on validation images, and
# the gradient of the task loss with respect to the input pixels — where the machine "wants" the
# pixels to change. That gradient is exactly what trains the codec in notebook 01.

# %%
import torch

from icm_lib.data.transforms import pad_to_multiple

n = min(N_EXAMPLES, len(ds.det_val))
x = torch.stack([pad_to_multiple(ds.det_val[i][0])[0] for i in range(n)]).to(device)
det_targets = det.pseudo_labels(x)
seg_targets = seg.pseudo_labels(x)

# the task loss of a degraded image against the pseudo-labels, and its gradient w.r.t. pixels
noisy = (x + 0.1 * torch.randn_like(x)).clamp(0, 1).requires_grad_(True)
det_loss = det.task_loss(noisy, det_targets)["loss"]
seg_loss = seg.task_loss(noisy, seg_targets)["loss"]
(det_loss + seg_loss).backward()
saliency = noisy.grad.abs().sum(1)

# %%
with torch.no_grad():
    pseudo = {
        "boxes_per_image": sum(len(d["boxes"]) for d in det_targets) / n,
        "clean_det_loss": float(det.task_loss(x, det_targets)["loss"]),
        "noisy_det_loss": float(det_loss.detach()),
        "clean_seg_loss": float(seg.task_loss(x, seg_targets)["loss"]),
        "noisy_seg_loss": float(seg_loss.detach()),
        "saliency_sum": float(saliency.sum()),
    }
print(
    f"task loss on originals: det {pseudo['clean_det_loss']:.3f}  seg {pseudo['clean_seg_loss']:.3f}"
)
print(
    f"task loss with noise σ=0.1: det {pseudo['noisy_det_loss']:.3f}  "
    f"seg {pseudo['noisy_seg_loss']:.3f}"
)
fig = plots.pseudo_label_grid(
    x, det_targets, seg_targets, saliency, ds.det_val.category_names, ds.seg_val.classes
)
plots.save(fig, S.output_dir, "pseudo_labels")

# %% [markdown]
# ## 3 · The codec and a real bitstream
#
# `icm_lib.codec.ICMCodec` wraps an unmodified CompressAI model (`cheng2020-attn` in the `paper`
# profile, a small `bmshj2018-hyperprior` here) and adds the **split view** the training methods
# need, through forward hooks rather than copied model code:
#
# * `latent_hat` — ŷ, the input of the synthesis transform $g_s$ (the aux-enc position),
# * `decoder_feature` — the input of $g_s$'s last layer (the aux-dec position of the ablation),
# * `encoder_parameters()` / `decoder_parameters()` — the split the PatchGAN finetuning needs.
#
# `compress()` writes real bytes in a small container (magic, version, codec name and size,
# original size, padding, latent shape, a fingerprint of the entropy tables and hyper-decoder,
# CRC-32). The coder (`icm_lib.entropy`) picks every symbol's probability table in exact integer
# arithmetic, so a stream written on a GPU decodes to the identical ŷ on a CPU; `decompress()`
# refuses anything corrupt, crafted or written by another codec with a `BitstreamError`.
# In the `paper` profile the reference codec is CompressAI's pretrained
# cheng2020-attn; here a small codec is trained for MSE for a few minutes — the **human-viewing
# reference** that the machine-trained codecs of notebooks 01–02 are compared with.

# %%
from icm_lib import views
from icm_lib.experiment import load_or_train_reference_codec

codec, codec_log = load_or_train_reference_codec(profile, ds, S.cache_dir, device)
print(f"{codec.name} N={codec.N} M={codec.M}, {views.million_parameters(codec):.2f} M parameters")
if codec_log:
    plots.save(
        plots.loss_curves(
            {k: [r[k] for r in codec_log] for k in ("loss", "bpp_loss", "mse_loss")}, smooth=3
        ),
        S.output_dir,
        "mse_codec_training",
    )

# %%
from icm_lib import bitstream

image = ds.det_val[0][0]
coded = codec.roundtrip(image)
header, strings = bitstream.unpack(coded.data)
# the decoder must receive exactly the encoder's quantized latent
data, encoder_latent = codec.compress_with_latent(image)
latent_identical = bool(torch.equal(codec.decoded_latent(data), encoder_latent))

print(
    f"{len(coded.data)} bytes for a {header.height}x{header.width} image; streams {[len(s) for s in strings]} bytes"
)
print(
    f"actual bpp {coded.bpp:.4f} (payload {coded.bpp_payload:.4f}) | estimate {coded.bpp_estimate:.4f}"
    f" | estimate with the coder's scale table {coded.bpp_coder_estimate:.4f}"
)
print(f"header: {header}")
print(f"decoded latent identical to the encoder's: {latent_identical}")

# %%
from icm_lib.metrics import psnr

rt_psnr = psnr(coded.x_hat.cpu(), image[None])
fig = plots.roundtrip_figure(
    image,
    coded.x_hat[0],
    views.bits_of(codec, image),  # bits per pixel of ŷ, as the coder prices them
    f"{coded.bpp:.3f} bpp (actual), PSNR {rt_psnr:.2f} dB",
)
plots.save(fig, S.output_dir, "roundtrip")

# %% [markdown]
# ## 4 · Does compression hurt the machines?
#
# Every validation image goes through **real bytes** (compress → decompress); the recognizers then
# run on the decoded images and are scored against the ground truth. The gap between the two rows is
# what machine-oriented training (notebooks 01–02) tries to close at a lower rate.

# %%
from icm_lib.evaluate import BitstreamRoundTrip
from icm_lib.recognition import evaluate_detection, evaluate_segmentation

det_orig = rec_reports["det"]["val"]
seg_orig = rec_reports["seg"]["val"]
rt = BitstreamRoundTrip(codec)
det_dec = evaluate_detection(det, ds.det_val, device, transform=rt)
seg_dec = evaluate_segmentation(seg, ds.seg_val, device, transform=BitstreamRoundTrip(codec))
rd = rt.summary()
print(f"{'':<28}{'mAP':>8}{'mAP@.5':>9}{'mIoU':>8}")
print(
    f"{'original images':<28}{det_orig['map']:>8.3f}{det_orig['map_50']:>9.3f}{seg_orig['miou']:>8.3f}"
)
print(
    f"{'decoded, ' + format(rd['bpp'], '.3f') + ' bpp':<28}{det_dec['map']:>8.3f}{det_dec['map_50']:>9.3f}{seg_dec['miou']:>8.3f}"
)
print(
    f"reference codec on val: PSNR {rd['psnr']:.2f} dB, MS-SSIM {rd['ms_ssim']:.4f}, "
    f"actual/estimated bpp {rd['bpp'] / rd['bpp_estimate']:.3f}"
)

# %%
record = {
    "data": {**ds.summary(), "seconds": data_seconds},
    "recognition": {
        k: {f: r[f] for f in ("val", "train_seconds", "train_steps", "cached")}
        for k, r in rec_reports.items()
    },
    "pseudo_labels": pseudo,
    "codec": {
        **coded.summary(),
        **{"name": codec.name, "N": codec.N, "M": codec.M, "psnr": rt_psnr},
        "latent_identical": latent_identical,
        "image_shape": list(image.shape),
        "train_losses": [r["loss"] for r in codec_log],
    },
    "machines_on_decoded": {
        **{k: rd[k] for k in ("bpp", "bpp_estimate", "psnr", "ms_ssim")},
        "det": det_dec,
        "seg": seg_dec,
    },
}
print(S.record(record))

# %% [markdown]
# ## Next
#
# * **01 · Baseline training** — train the codec with Eq. 4 (task loss on pseudo-labels) for four λ.
# * **02 · Auxiliary-branch training** — add the aux-enc branch of Eq. 5–6 and compare R-D curves
#   and BD-rates with the baseline, the ROI method and this notebook's MSE codec.
#
# Everything this notebook computed is cached under `DATA_DIR` (datasets, recognizers, the
# reference codec), so later notebooks start in seconds.

# %% [markdown]
# ## Exercises
#
# Change one thing, **write down what you expect before you run it**, then run it and compare.
# Worked solutions, one file per notebook, kept apart:
# [`solutions/00_data_preparation.py`](solutions/00_data_preparation.py)
# (jupytext's format: open it in `make lab`; the tests run it on the `smoke` profile and
# check what it records).
#
# 1. **The pseudo-label threshold.** Detections above `det.score_threshold` (0.2 on `cpu`)
#    become the pseudo-labels $y$. Set it to 0.05, 0.2, 0.5 and 0.8 before `det.pseudo_labels(x)`
#    in section 2. Predict how the number of pseudo-boxes per image moves, and what a codec
#    trained against very few boxes will stop spending bits on.
# 2. **One flipped bit.** Flip one bit in the middle of `coded.data` (section 3) and decode it
#    with `codec.decompress`. A slightly wrong image, a garbage image, or a refusal? Which part
#    of the container decides?
# 3. **The header's share.** Code the same val image at twice its side
#    (`torch.nn.functional.interpolate(image[None], scale_factor=2)`). Predict how many more
#    header bytes it needs, and how the gap between actual and payload bpp
#    (`coded.bpp - coded.bpp_payload`) changes.
