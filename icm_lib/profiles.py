"""Named profiles: every size, step count and model choice of the tutorial in one place.

``smoke``  tests: seconds per notebook, tiny data and models.
``cpu``    the embedded default: the whole tutorial on a 2-core machine without a GPU.
``paper``  a GPU: pretrained cheng2020-attn, COCO2017 / Pascal-Context59 and the recognition models
           and hyper-parameters of Iino et al. section 4.1.

Use :func:`get_profile` (``get_profile("cpu", data__n_train=64)`` overrides one field).
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import ConfigError
from .tasks import DETECTION, Task, get_task


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they are cut.

    Attributes:
        source: ``"embedded"`` (procedural scenes generated under ``data/``) or ``"real"``
            (COCO2017 / Pascal-Context59 at ``coco_root`` / ``context_root``).
        image_size: side of the generated square scenes (embedded only).
        n_train, n_val: number of generated scenes per split (embedded only).
        seed: generator seed (embedded only); the same seed gives byte-identical data.
        train_crop: side of the random training crops (256 in the paper).
        eval_short_edge: evaluation images are resized so the shorter edge has this length
            (800 in the paper for COCO), then padded to a multiple of 64. ``None`` keeps the size.
        coco_root, context_root: paths of the real datasets (``source="real"``).
        world: which embedded scenes (embedded only): ``"shapes"`` (class = silhouette, stuff =
            colour: a machine needs few, cheap bits) or ``"patterns"`` (class = a fine stripe
            pattern beside task-irrelevant clutter in the same band: bits compete); see
            :mod:`icm_lib.data.patterns`.
    """

    source: str = "embedded"
    image_size: int = 256
    n_train: int = 256
    n_val: int = 48
    seed: int = 0
    train_crop: int = 128
    eval_short_edge: int | None = None
    coco_root: str | None = None
    context_root: str | None = None
    world: str = "shapes"


@dataclass(frozen=True)
class CodecConfig:
    """The learned codec (a CompressAI model).

    Attributes:
        name: CompressAI zoo name (``cheng2020-attn``, ``mbt2018-mean``, ``bmshj2018-hyperprior``,
            ``bmshj2018-factorized``).
        quality: zoo quality 1..8; sets N/M when they are not given and picks pretrained weights.
        N, M: explicit channel counts (small CPU models); ``None`` uses the zoo's for ``quality``.
        pretrained: load CompressAI's pretrained weights (needs internet once).
        checkpoint: a local copy of the zoo's weights file for ``name`` and ``quality`` (e.g.
            ``cheng2020_attn-mse-3-2d07bbdf.pth.tar``), read instead of torch.hub's cache and
            the download (``pretrained=True``; README "Weights on a machine without internet").
            Keys carry the file's content hash, never its path (:meth:`key`).
    """

    name: str = "bmshj2018-hyperprior"
    quality: int = 3
    N: int | None = 64
    M: int | None = 96
    pretrained: bool = False
    checkpoint: str | None = None

    def __post_init__(self):
        if self.checkpoint is not None and not self.pretrained:
            raise ConfigError(
                "codec.checkpoint replaces the pretrained download: set codec__pretrained=True"
            )

    def key(self) -> dict[str, Any]:
        """The fields that decide the codec, for cache keys: without ``checkpoint`` those of
        before the field existed; with it, the file's content hash (``weights``) instead of its
        path, so two clones with the same file share keys."""
        out = dataclasses.asdict(self)
        path = out.pop("checkpoint")
        if path is not None:
            from .weights import file_identity

            out["weights"] = file_identity(path)
        return out


#: the recognition libraries of each task (README "Recognition backends")
DET_BACKENDS = ("torchvision", "detectron2")
SEG_BACKENDS = ("smp", "mmseg")
#: the recognizers' training precisions (``RecognitionConfig.det_train_precision`` / ``seg_``);
#: the torchvision detector's mixed ones run the modules ``recognition.training.MIXED_MODULES``
#: names under bfloat16
TRAIN_PRECISIONS = ("float32", "bfloat16", "bfloat16-backbone", "bfloat16-features")
MIXED_PRECISIONS = ("bfloat16-backbone", "bfloat16-features")


@dataclass(frozen=True)
class RecognitionConfig:
    """The frozen recognition models that define the task loss.

    Attributes:
        det_backend: the detection library: ``torchvision`` (Faster R-CNN FPN over
            ``det_backbone``) or ``detectron2`` (model-zoo ``det_config``; Iino et al.'s own).
        seg_backend: the segmentation library: ``smp`` (DeepLabV3+ over ``seg_encoder``) or
            ``mmseg`` (MMSegmentation config ``seg_config``; Iino et al.'s own).
        det_backbone: torchvision Faster R-CNN FPN backbone (``resnet18``, ``resnet50``,
            ``resnext101_32x8d``).
        seg_encoder: smp DeepLabV3+ encoder (``resnet18`` ... ``resnet101``).
        det_config: detectron2 model-zoo config (Iino et al.: Faster R-CNN X101-32x8d-FPN 3x).
        seg_config: MMSegmentation model name or config path (Iino et al.: DeepLabV3+ R101-D8,
            Pascal-Context-59, 40k).
        pretrained: load the libraries' pretrained weights (torchvision: COCO R50 detector or
            ImageNet backbones; smp: ImageNet encoder; detectron2 / MMSegmentation: the zoo
            weights of ``det_config`` / ``seg_config``, the paper's models).
        train_steps: optimisation steps when training on the embedded data (0 with pretrained).
        det_train_steps, seg_train_steps: one task's steps instead of ``train_steps`` (a detector
            from scratch needs several times a segmenter's); ``None`` uses ``train_steps``. Each
            keys its own task's recognizer only.
        eval_every: evaluate the recognizer on the val split every this many training steps (0:
            only at the end); the curve goes into its report (``val_curve``), to show a plateau.
        checkpoint_every: save the training state (weights, optimizer, schedule, random state)
            every this many steps, so a stopped training resumes where it was and ends on the
            same weights as an uninterrupted one. Neither of the two keys the cache.
        batch_size: for that training.
        det_lr, seg_lr: SGD learning rate of the detector, Adam learning rate of the segmenter.
        det_train_precision, seg_train_precision: ``"float32"``, ``"bfloat16"`` (that task's
            training forward and loss under bfloat16 autocast) or, for the torchvision
            detector, ``"bfloat16-backbone"`` (only its backbone under autocast) or
            ``"bfloat16-features"`` (its backbone, RPN convolutions and RoI box head), each
            handing on float32, so anchors, proposals, RoI pooling and box regression stay
            float32. Weights, gradients and optimizer state stay float32;
            evaluation and the frozen machine run in float32. Each keys its own task's
            recognizer, and only when not float32. Measured on `cpu` (README "Recognizers
            trained in bfloat16"): 1.5x faster steps on a CPU with AVX512-BF16 (slower where
            the hardware emulates bfloat16; ``bfloat16-backbone`` 1.15x); the segmenter
            reaches float32's val mIoU within seed spread; the detector lost mAP in 2 of 3 seeds
            under full autocast, and in ``bfloat16-features`` kept it (+0.0005 mAP, 95 % CI
            [-0.013, +0.014] over 13 paired seeds; its mAP after 300 steps moves with float
            rounding as much as with the seed). The ``cpu`` profile trains its detector in
            ``bfloat16-features`` and its segmenter in ``bfloat16``.
        precision_fallback: the training precision of both recognizers on a device that
            multiplies bfloat16 only by emulation (:func:`~icm_lib.runtime.bf16_native`: a CPU
            without ``avx512_bf16`` / ``amx_bf16``, a GPU without bfloat16), where a bfloat16
            precision above is set: ``"float32"`` (the default) or ``None`` (train in the set
            precision anyway). There the bfloat16 steps are not 1.5x faster but much slower (an
            AMD EPYC with AVX2 only, 2026-12-03: the ``cpu`` detector's step 46 s in
            ``bfloat16-features`` against 3.2 s in float32). :func:`for_device` applies it before
            anything is keyed (notebooks' ``setup``, ``Experiment.prepare``,
            ``recognition.load_or_train``), so the keys name the precision that ran; it keys
            nothing itself.
        asked_precisions: ``None`` until :func:`for_device` has decided the profile's
            precisions for a device (never set it yourself); then the (det, seg) training
            precisions the profile asked for, whatever ran. A decided profile stays decided
            wherever it goes next (:func:`for_device` hands it on as it is: a study's jobs on
            other nodes keep the keys the study planned): change the precisions through
            :func:`get_profile`'s overrides, before deciding, not on a decided profile (its
            recipe would still name the old ones). Keys nothing; :meth:`recipe_key` names
            the recognizers by it, so a run's settings key
            (:meth:`~icm_lib.experiment.Experiment.settings_key`) stays the same on every machine
            and notebook 03 still reads the recorded ablation there (as another machine's
            numbers) instead of training its 24 runs.
        score_threshold: detections above it become pseudo-labels (Yamazaki et al.). 0.5 suits a
            COCO-trained detector; the CPU profiles' detector, trained for minutes, is
            under-confident (highest val score 0.61), and 0.2 keeps about 7.7 boxes per val
            image against 4.1 ground-truth boxes.
        rpn_pre_nms_top_n_train, rpn_post_nms_top_n_train, rpn_batch_size_per_image,
        box_batch_size_per_image: Faster R-CNN sampling in train mode; the task loss uses train
            mode, and torchvision's defaults (2000/2000/256/512) cost 5x on a CPU.
        rpn_pre_nms_top_n_test, rpn_post_nms_top_n_test: proposals at inference (torchvision:
            1000/1000); 300 keeps evaluation and pseudo-labelling cheap on small images.
        box_head_dim: RoI box-head width (``None``: torchvision's 1024).
        anchor_sizes: anchor size per FPN level (``None``: torchvision's 32..512).
        crop_schedule: a resolution schedule for both recognizers' training: ``(side, fraction)``
            pairs, in order, each training that fraction of a task's steps on ``side``-pixel
            random crops, the rest of the steps on ``data.train_crop`` (e.g. ``((64, 0.5),)``: the
            first half on 64-px crops). Neither recognizer resizes its input, so a smaller crop
            shows objects at the same scale with less context, at a fraction of the pixels.
            Sides are multiples of 32 (the recognizers' coarsest stride); ``()`` (the default):
            every step on ``data.train_crop``, and the key of before the field. Measured on
            `cpu` (README "Half the recognizer steps, batch or pixels"): the first half on 64 px
            saves the segmenter 25 % of its time for -0.0095 mIoU, on 96 px 9 % for -0.0045;
            the detector 14 % for -0.05 mAP (one seed). No profile uses one.
        det_checkpoint, seg_checkpoint: a local copy of the pretrained weights file the backend
            would download (``pretrained=True``), read instead of the library's cache: the
            detectron2 zoo's ``model_final_*.pkl``, MMSegmentation's ``.pth``, torchvision's COCO
            R50 detector or ImageNet backbone ``.pth``, smp's ``model.safetensors`` (README
            "Weights on a machine without internet"). Keys carry the file's content hash, never
            its path (:meth:`key`).
    """

    det_backend: str = "torchvision"
    seg_backend: str = "smp"
    det_backbone: str = "resnet18"
    seg_encoder: str = "resnet18"
    det_config: str = "COCO-Detection/faster_rcnn_X_101_32x8d_FPN_3x.yaml"
    seg_config: str = "deeplabv3plus_r101-d8_4xb4-40k_pascal-context-59-480x480"
    pretrained: bool = False
    train_steps: int = 300
    det_train_steps: int | None = None
    seg_train_steps: int | None = None
    eval_every: int = 0
    checkpoint_every: int = 100
    batch_size: int = 8
    det_lr: float = 0.02
    seg_lr: float = 1e-3
    det_train_precision: str = "float32"
    seg_train_precision: str = "float32"
    precision_fallback: str | None = "float32"
    asked_precisions: tuple[str, str] | None = None
    score_threshold: float = 0.2
    rpn_pre_nms_top_n_train: int = 600
    rpn_post_nms_top_n_train: int = 300
    rpn_pre_nms_top_n_test: int = 300
    rpn_post_nms_top_n_test: int = 300
    rpn_batch_size_per_image: int = 64
    box_batch_size_per_image: int = 64
    box_head_dim: int | None = None
    anchor_sizes: tuple[int, ...] | None = None
    crop_schedule: tuple[tuple[int, float], ...] = ()
    det_checkpoint: str | None = None
    seg_checkpoint: str | None = None

    def __post_init__(self):
        for name, allowed in (("det_backend", DET_BACKENDS), ("seg_backend", SEG_BACKENDS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("det_train_precision", "seg_train_precision"):
            if getattr(self, name) not in TRAIN_PRECISIONS:
                raise ConfigError(
                    f"{name} must be one of {TRAIN_PRECISIONS}, got {getattr(self, name)!r}"
                )
        asked = self.asked_precisions
        if asked is not None and (len(asked) != 2 or not set(asked) <= set(TRAIN_PRECISIONS)):
            raise ConfigError(
                f"asked_precisions must name two of {TRAIN_PRECISIONS}, got {asked!r}"
            )
        if asked is not None:  # the precisions asked for pass the checks below too
            try:
                replace(self, det_train_precision=asked[0], seg_train_precision=asked[1],
                        asked_precisions=None)  # fmt: skip
            except ValueError as exc:
                raise ConfigError(f"asked_precisions {asked!r}: {exc}") from None
        if self.precision_fallback not in ("float32", None):
            raise ConfigError(
                f"precision_fallback must be 'float32' or None, got {self.precision_fallback!r}"
            )
        if self.seg_train_precision in MIXED_PRECISIONS or (
            self.det_train_precision in MIXED_PRECISIONS and self.det_backend != "torchvision"
        ):
            raise ConfigError(
                f"train precisions {MIXED_PRECISIONS} are the torchvision detector's "
                "(det_train_precision with det_backend='torchvision'); elsewhere use 'bfloat16'"
            )
        pairs = [e for e in self.crop_schedule if isinstance(e, tuple | list) and len(e) == 2]
        sides, fractions = [s for s, _ in pairs], [f for _, f in pairs]
        if (
            len(pairs) != len(self.crop_schedule)
            or any(s <= 0 or s % 32 for s in sides)
            or any(not 0 < f <= 1 for f in fractions)
            or (sum(fractions) > 1 + 1e-9)
        ):
            raise ConfigError(
                f"crop_schedule {self.crop_schedule!r}: (side, fraction) pairs, sides positive "
                "multiples of 32, fractions in (0, 1] adding up to at most 1, e.g. ((64, 0.5),)"
            )
        for name in ("det_checkpoint", "seg_checkpoint"):
            if getattr(self, name) is not None and not self.pretrained:
                raise ConfigError(
                    f"recognition.{name} replaces the pretrained download: set "
                    "recognition__pretrained=True"
                )

    def model_name(self, task: Task | str) -> str:
        """The task's model as a file-name part: the backbone, or the library and config."""
        if get_task(task) is DETECTION:
            if self.det_backend == "torchvision":
                return self.det_backbone
            return "d2-" + self.det_config.rsplit("/", 1)[-1].removesuffix(".yaml")
        if self.seg_backend == "smp":
            return self.seg_encoder
        return "mmseg-" + self.seg_config.rsplit("/", 1)[-1].removesuffix(".py")

    def key(self) -> dict[str, Any]:
        """The fields that decide the models, for cache keys: a backend's fields only where that
        backend is used (so the torchvision / smp keys are those of before the backends); a
        local checkpoint as its content hash (``det_weights`` / ``seg_weights``), never its path,
        and nothing without one (so the keys are those of before the fields); a task's
        ``*_train_precision`` only when it is not float32 and ``crop_schedule`` only when set
        (the keys of before the fields);
        ``precision_fallback`` never (:func:`for_device` applies it before anything is keyed)."""
        unused = {"det_checkpoint", "seg_checkpoint", "eval_every", "checkpoint_every"}
        unused |= {"precision_fallback", "asked_precisions"}  # applied before keying (for_device)
        unused |= {
            f"{t}_train_precision"
            for t in ("det", "seg")
            if getattr(self, f"{t}_train_precision") == "float32"
        }
        unused |= {
            f"{t}_train_steps" for t in ("det", "seg") if getattr(self, f"{t}_train_steps") is None
        }
        unused |= set() if self.crop_schedule else {"crop_schedule"}
        unused |= {"det_backend", "det_config"} if self.det_backend == "torchvision" else set()
        unused |= {"det_backbone"} if self.det_backend != "torchvision" else set()
        unused |= {"seg_backend", "seg_config"} if self.seg_backend == "smp" else {"seg_encoder"}
        out = {k: v for k, v in dataclasses.asdict(self).items() if k not in unused}
        for task in ("det", "seg"):
            path = getattr(self, f"{task}_checkpoint")
            if path is not None:
                from .weights import file_identity

                out[f"{task}_weights"] = file_identity(path)
        return out

    def recipe_key(self) -> dict[str, Any]:
        """:meth:`key` with the training precisions the profile asked for
        (``asked_precisions``, where :func:`for_device` may have fallen back to
        ``precision_fallback``): the recipe, the same on every machine, as another machine's
        float rounding is."""
        if self.asked_precisions is None:
            return self.key()
        det, seg = self.asked_precisions
        return replace(self, det_train_precision=det, seg_train_precision=seg).key()

    def steps_for(self, task: Task | str) -> int:
        """The training steps of ``task``'s recognizer."""
        own = getattr(self, f"{get_task(task).name}_train_steps")
        return self.train_steps if own is None else own

    def precision_for(self, task: Task | str) -> str:
        """The training precision of ``task``'s recognizer."""
        return getattr(self, f"{get_task(task).name}_train_precision")

    def sampling(self) -> dict[str, int]:
        """Faster R-CNN's train-mode sampling, shared by the detector and the aux branch."""
        return dict(
            rpn_pre_nms_top_n_train=self.rpn_pre_nms_top_n_train,
            rpn_post_nms_top_n_train=self.rpn_post_nms_top_n_train,
            rpn_batch_size_per_image=self.rpn_batch_size_per_image,
            box_batch_size_per_image=self.box_batch_size_per_image,
        )

    def detector_kwargs(self) -> dict[str, Any]:
        """Everything :func:`~icm_lib.recognition.build_detector` takes from this config."""
        return dict(
            **self.sampling(),
            rpn_pre_nms_top_n_test=self.rpn_pre_nms_top_n_test,
            rpn_post_nms_top_n_test=self.rpn_post_nms_top_n_test,
            box_head_dim=self.box_head_dim,
            anchor_sizes=self.anchor_sizes,
        )


@dataclass(frozen=True)
class TrainConfig:
    """Codec training hyper-parameters.

    Attributes:
        steps: optimisation steps.
        batch_size: crops per step.
        crop: crop side (multiple of 64).
        lr: Adam learning rate of the codec.
        quantile_lr: Adam learning rate of the entropy bottleneck's quantiles (CompressAI's
            separate "aux" optimizer, here called the quantile optimizer).
        lmbda: rate-distortion trade-off λ.
        clip_max_norm: gradient clipping of the codec's parameters (0 disables).
        checkpoint_every, log_every: in steps.
        seed: sampling and initialisation seed.
        decay_start: fraction of ``steps`` after which the learning rate decays polynomially to 0
            (1.0: constant; Iino et al. decays over the last 40 of 80 epochs for detection, 0.5,
            and over all epochs for segmentation, 0.0).
        decay_power: exponent of that decay (the paper does not give it; 0.9 is the usual
            "poly" schedule of MMSegmentation).
    """

    steps: int = 400
    batch_size: int = 8
    crop: int = 128
    lr: float = 1e-3
    quantile_lr: float = 1e-3
    lmbda: float = 0.01
    clip_max_norm: float = 1.0
    checkpoint_every: int = 100
    log_every: int = 10
    seed: int = 0
    decay_start: float = 1.0
    decay_power: float = 0.9


@dataclass(frozen=True)
class ReferenceConfig(TrainConfig):
    """The human-viewing reference codec's schedule (:class:`TrainConfig`) and its convergence
    record.

    Attributes:
        validate_every: log the validation bpp and PSNR (the codec in eval mode, on fixed centre
            crops of the first ``ablation.val_images`` detection val images) every this many
            steps and at the last; 0: none. The world checks read the curve: converged = both
            move less than 1 % over the last fifth of training. Keys the codec only where it is
            not 0 (the ``validation`` part of its key).
        precision: ``"float32"`` or ``"bfloat16"``: the training forward's transforms (g_a,
            h_a, h_s, g_s) under bfloat16 autocast, the entropy models and the loss in float32
            (:meth:`~icm_lib.codec.ICMCodec.transforms_in_bf16`); the weights stay float32 and
            the trained codec codes in float32. Keys the codec only where it is not float32.
    """

    validate_every: int = 0
    precision: str = "float32"

    def __post_init__(self):
        if self.precision not in ("float32", "bfloat16"):
            raise ConfigError(
                f"mse.precision must be 'float32' or 'bfloat16', got {self.precision!r}"
            )

    def train_config(self) -> TrainConfig:
        """The schedule alone (what keys the codec besides its validation)."""
        return TrainConfig(
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(TrainConfig)}
        )


#: :class:`ICMConfig` fields recorded (in run keys, in results files' ``icm_config``) only when
#: set: a codec for machines trained in bfloat16 on the CPU is another run, and float32 runs and
#: files keep the keys and settings they had before these fields existed
ICM_WHEN_SET = ("amp_cpu", "codec_amp", "fold_bn")


@dataclass(frozen=True)
class ICMConfig:
    """Training codecs for machines (Iino et al.): the λ sets, α, the branch and the schedules.

    Attributes:
        det_lambdas, seg_lambdas: λ of Eq. 5 / Eq. 6, one R-D point each.
        alpha: α, the weight of the auxiliary branch's loss (0.5 in the paper).
        det_mse_weight, seg_mse_weight: weight of MSE(x, x̂) inside the braces (Eq. 6 uses it for
            segmentation only).
        branch_width: channel multiplier of the auxiliary branch (1.0 = Tables 1-2).
        branch_lr: Adam learning rate of the branch (``None``: the codec's).
        det, seg: the codec's training schedule per task (``lmbda`` is set per run).
        mse_lambdas: λ of the human-viewing reference curve (MSE codecs), finetuned from the
            reference codec for ``mse_steps`` steps.
        roi_qf: the ROI baseline's quantization factor for latents outside the ROI (1.4).
        amp: bfloat16 autocast of the recognizers and the branch on CUDA (the codec and its
            entropy model stay in float32).
        amp_cpu: ``amp`` on the CPU too (off: the CPU trains in float32, and the studies'
            numbers are float32's). With ``codec_amp``, a step with cached pseudo-labels is
            1.35-1.5x faster where the CPU multiplies bfloat16 natively (``avx512_bf16``,
            AMX, with ``fold_bn`` too), much slower where it only emulates it (``python -m
            icm_lib.bench icm``). ``--bf16`` of ``python -m icm_lib.train`` / ``study`` sets
            both and ``fold_bn``.
        codec_amp: where ``amp`` applies, the codec's transforms g_a, h_a, h_s, g_s run in
            bfloat16 too (the entropy models stay float32).
        fold_bn: the frozen recognizer's task loss runs on its twin with the batch norms
            folded into the convolutions (:mod:`~icm_lib.recognition.folding`; the same
            function up to float rounding, the pseudo-labels the recognizer's own): 1-4 % off a
            ``cpu`` step in bfloat16. ``--bf16`` sets it too (not with ``--no-fold-bn``).
            ``amp_cpu``, ``codec_amp`` and ``fold_bn`` are keyed only when set: the runs they
            train are other runs, and the float32 runs keep their keys.
        validate_every: every run of the grid logs the validation losses (as the ablation's
            runs do) every this many steps; 0: none. Equal to ``ablation.val_every``, the
            ablation's ``baseline`` and ``aux-enc`` settings are the grid's runs at its λ, not
            new ones. Keys the runs only where it is not 0 (the ``validation`` part of the key).
    """

    det_lambdas: tuple[float, ...] = (0.4, 0.8, 1.6, 3.2)
    seg_lambdas: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
    alpha: float = 0.5
    det_mse_weight: float = 0.0
    seg_mse_weight: float = 1.0
    branch_width: float = 1.0
    branch_lr: float | None = None
    det: TrainConfig = field(default_factory=TrainConfig)
    seg: TrainConfig = field(default_factory=TrainConfig)
    mse_lambdas: tuple[float, ...] = (0.0025, 0.005, 0.01, 0.02)
    mse_steps: int = 200
    roi_qf: float = 1.4
    amp: bool = True
    amp_cpu: bool = False
    codec_amp: bool = False
    fold_bn: bool = False
    validate_every: int = 0

    def recorded(self) -> dict[str, Any]:
        """The settings as run keys and results files record them: every field, less those of
        :data:`ICM_WHEN_SET` while unset, so that a float32 run or results file reads the same
        as one written before those fields existed."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ICM_WHEN_SET or v}

    def precision(self) -> dict[str, Any]:
        """:class:`~icm_lib.losses.ICMObjective`'s precision arguments for these settings."""
        return {
            "amp": self.amp,
            "amp_device_types": ("cuda", "cpu") if self.amp_cpu else ("cuda",),
            "codec_amp": self.codec_amp,
            "fold_bn": self.fold_bn,
        }

    def in_bfloat16(self) -> ICMConfig:
        """These settings with the codecs for machines trained under bfloat16 autocast on every
        device: recognizer, branch and the codec's transforms, the recognizer's batch norms
        folded for its task loss (``--bf16``)."""
        return replace(self, amp=True, amp_cpu=True, codec_amp=True, fold_bn=True)

    def lambdas(self, task: Task | str) -> tuple[float, ...]:
        return self.det_lambdas if get_task(task) is DETECTION else self.seg_lambdas

    def train(self, task: Task | str) -> TrainConfig:
        return self.det if get_task(task) is DETECTION else self.seg

    def mse_weight(self, task: Task | str) -> float:
        return self.det_mse_weight if get_task(task) is DETECTION else self.seg_mse_weight


@dataclass(frozen=True)
class AblationConfig:
    """Iino et al. section 4.2: where should the auxiliary loss enter? (notebook 03, the study's
    ``--study ablation``)

    Every setting trains the task's codec for machines at one λ with validation every
    ``val_every`` steps; the compared number is the validation *main* loss (Eq. 4 / Eq. 6 without
    the branch term) on a fixed set of ``val_images`` centre crops of the val split.

    Attributes:
        det_lmbda, seg_lmbda: the paper's ablation λ (0.016 detection, 2 segmentation). The
            ``cpu`` profile's λ grids are the paper's, so the values carry over unchanged.
        variants: ``baseline`` (no branch: the paper's "none") and the three branch positions.
        seeds: the seeds of the study (the notebook shows what is cached).
        val_every: validation cadence in steps (the last step is always validated).
        val_images: how many val images (centre-cropped to the training crop) validate.
        steps: training steps of every setting (``None``: the task's schedule).
    """

    det_lmbda: float = 0.016
    seg_lmbda: float = 2.0
    variants: tuple[str, ...] = ("baseline", "aux-enc", "aux-dec", "aux-task")
    seeds: tuple[int, ...] = (0, 1, 2)
    val_every: int = 10
    val_images: int = 16
    steps: int | None = None

    def lmbda(self, task: Task | str) -> float:
        return self.det_lmbda if get_task(task) is DETECTION else self.seg_lmbda


@dataclass(frozen=True)
class GANConfig:
    """Decoder-only PatchGAN finetuning (Le et al.).

    Attributes:
        steps, batch_size, crop, seed, log_every, checkpoint_every: the schedule; codec crops of
            ``crop`` pixels.
        patch: side of the random patches the discriminator judges (real: original, fake:
            decoded; the poster trains "on small image patches").
        lr, betas: Adam of the decoder.
        d_lr, d_betas: Adam of the discriminator (pix2pix: 2e-4, (0.5, 0.999)).
        adv_loss: ``"lsgan"`` (least squares) or ``"ns"`` (non-saturating, logits + BCE).
        adv_weight, task_weight, pixel_weight: the decoder's loss
            ``adv_weight·L_adv + task_weight·E(y, ŷ) + pixel_weight·MSE(x, x̂)``.
        limited_adv_weight: the adversarial weight of the "limited impact" preset.
        decoder_layers: how many of g_s's layers are trained, from its input side (``None``:
            all; the poster finetunes "the first few layers").
        d_channels, d_layers: the discriminator's width and strided depth (pix2pix: 64, 3 → a
            70 x 70 receptive field).
        presets: what the study finetunes per seed (:func:`~icm_lib.gan.preset_config`):
            ``full`` / ``limited`` / ``no-adv``, each optionally at another pixel weight
            (``full-px1``) -- Le et al.'s factorial in ``cpu-patterns``.
        task, lmbda: the codec for machines to finetune in the notebook and the study: the
            seed's baseline (Eq. 4) run of ``task`` at ``lmbda`` (``None``: the task's lowest λ,
            where artifacts are worst). Segmentation in ``cpu``: a step costs a third of one
            with the detector.
    """

    steps: int = 300
    batch_size: int = 8
    crop: int = 128
    patch: int = 64
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    d_lr: float = 2e-4
    d_betas: tuple[float, float] = (0.5, 0.999)
    adv_loss: str = "lsgan"
    adv_weight: float = 0.1
    task_weight: float = 1.0
    pixel_weight: float = 20.0
    limited_adv_weight: float = 0.01
    decoder_layers: int | None = None
    d_channels: int = 64
    d_layers: int = 3
    log_every: int = 10
    checkpoint_every: int = 100
    seed: int = 0
    task: str = "seg"
    lmbda: float | None = None
    presets: tuple[str, ...] = ("full", "limited", "no-adv")


@dataclass(frozen=True)
class EvalConfig:
    """How R-D points are measured (:func:`icm_lib.evaluate.rd_point`).

    Attributes:
        real_images: ``None``: every val image through real bitstreams (bytes written and read
            back). An int: the **estimated** rate of the likelihoods and x̂ of the forward pass
            for every image, and real bitstreams for the first ``real_images`` only, reported
            as actual / estimated bits (for sweeps with a slow autoregressive coder). The ROI
            baseline is always coded for real.
    """

    real_images: int | None = None


@dataclass(frozen=True)
class PilotConfig:
    """The λ pilot (``python -m icm_lib.pilot``): seed-``seed`` baseline runs of the full schedule
    on a factor-2 grid per task, from which the rule of ``results/analysis-plan.json`` picks the
    study's λ grid (``icm.det_lambdas`` / ``seg_lambdas``) and the ablation's λ. The runs are the
    study's own (same keys): nothing of the pilot is trained twice."""

    det_lambdas: tuple[float, ...] = ()
    seg_lambdas: tuple[float, ...] = ()
    seed: int = 0

    def lambdas(self, task: Task | str) -> tuple[float, ...]:
        return self.det_lambdas if get_task(task) is DETECTION else self.seg_lambdas


@dataclass(frozen=True)
class TutorialConfig:
    """What the notebooks train themselves, on top of notebook 00's recognizers and reference
    codec; everything else they show comes from the study's files in ``results/`` (``make study``
    trains the full λ × seed grid, the same runs with the same keys, so the notebooks' runs are
    the study's seed-``SEED`` runs and are checked against them).

    Attributes:
        det_lambdas, seg_lambdas: the λ of the task's grid that notebooks 01-02 train (baseline,
            then aux-enc); ``None``: the whole grid; ``()``: none (the task is shown from the study).
        mse_curve: notebook 01 finetunes the MSE reference curve (else the reference codec of
            notebook 00 is the MSE point and the study holds the curve).
        gan_presets: the PatchGAN presets notebook 04 finetunes (the others from the study).
    """

    det_lambdas: tuple[float, ...] | None = None
    seg_lambdas: tuple[float, ...] | None = None
    mse_curve: bool = True
    gan_presets: tuple[str, ...] = ("full", "limited", "no-adv")

    def lambdas(self, task: Task | str, grid: tuple[float, ...]) -> tuple[float, ...]:
        """The λ of ``grid`` (the task's) that the notebooks train."""
        chosen = self.det_lambdas if get_task(task) is DETECTION else self.seg_lambdas
        if chosen is None:
            return tuple(grid)
        unknown = set(chosen) - set(grid)
        if unknown:
            raise ConfigError(f"tutorial λ {sorted(unknown)} are not in the task's grid {grid}")
        return tuple(chosen)


@dataclass(frozen=True)
class Profile:
    """A complete configuration of the tutorial; see the module docstring."""

    name: str
    data: DataConfig = field(default_factory=DataConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    recognition: RecognitionConfig = field(default_factory=RecognitionConfig)
    #: the human-viewing reference codec (MSE), trained in notebook 00 unless pretrained
    mse: ReferenceConfig = field(default_factory=ReferenceConfig)
    #: codecs for machines (Iino et al.), notebooks 01-02 and the study
    icm: ICMConfig = field(default_factory=ICMConfig)
    #: decoder-only PatchGAN finetuning (Le et al.), notebook 04
    gan: GANConfig = field(default_factory=GANConfig)
    #: the branch-position ablation (Iino et al. section 4.2), notebook 03
    ablation: AblationConfig = field(default_factory=AblationConfig)
    #: what notebooks 01-04 train themselves (``make tutorial``); the rest comes from ``results/``
    tutorial: TutorialConfig = field(default_factory=TutorialConfig)
    #: how R-D points are measured (real bitstreams, or the estimated rate with a real check)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    #: the λ pilot that chose ``icm``'s λ grids (issue: experiments that can show ...)
    pilot: PilotConfig = field(default_factory=PilotConfig)


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        data=DataConfig(image_size=128, n_train=16, n_val=8, train_crop=64),
        codec=CodecConfig(N=32, M=48),
        # a narrow box head and 100 proposals at inference: the detector's evaluation and
        # pseudo-labels were 40 % of a smoke run (the test suite's notebooks and studies)
        recognition=RecognitionConfig(
            train_steps=4,
            batch_size=4,
            box_head_dim=256,
            rpn_pre_nms_top_n_test=100,
            rpn_post_nms_top_n_test=100,
        ),
        mse=ReferenceConfig(steps=6, batch_size=4, crop=64, checkpoint_every=3, log_every=2),
        icm=ICMConfig(
            det_lambdas=(0.05, 0.5, 5.0, 50.0),
            seg_lambdas=(0.05, 0.5, 5.0, 50.0),
            branch_width=0.125,
            det=TrainConfig(
                steps=4, batch_size=2, crop=64, lr=2e-4, checkpoint_every=2, log_every=1
            ),
            seg=TrainConfig(
                steps=4, batch_size=2, crop=64, lr=2e-4, checkpoint_every=2, log_every=1
            ),
            mse_lambdas=(0.005, 0.02),
            mse_steps=2,
        ),
        gan=GANConfig(
            steps=4, batch_size=2, crop=64, patch=32, d_channels=16, log_every=1, checkpoint_every=2
        ),
        ablation=AblationConfig(
            det_lmbda=0.5, seg_lmbda=0.5, seeds=(0, 1), val_every=1, val_images=2, steps=2
        ),
    ),
    "cpu": Profile(
        name="cpu",
        data=DataConfig(image_size=256, n_train=384, n_val=48, train_crop=128),
        codec=CodecConfig(N=64, M=96),
        # the recognizers trained in bfloat16 (1.45x / 1.5x, the same quality within seed spread:
        # README "Recognizers trained in bfloat16"); evaluation and the frozen machine in float32;
        # in float32 where the device only emulates bfloat16 (precision_fallback, for_device)
        recognition=RecognitionConfig(
            train_steps=300,
            batch_size=8,
            det_train_precision="bfloat16-features",
            seg_train_precision="bfloat16",
        ),
        mse=ReferenceConfig(steps=1000, batch_size=8, crop=128, lr=1e-3, lmbda=0.01),
        icm=ICMConfig(
            det_lambdas=(0.4, 0.8, 1.6, 3.2),
            seg_lambdas=(1.0, 2.0, 4.0, 8.0),
            branch_width=0.25,
            branch_lr=1e-3,
            det=TrainConfig(
                steps=120,
                batch_size=8,
                crop=128,
                lr=3e-4,
                decay_start=0.5,
                checkpoint_every=40,
                log_every=10,
            ),
            seg=TrainConfig(
                steps=200,
                batch_size=8,
                crop=128,
                lr=3e-4,
                decay_start=0.5,
                checkpoint_every=50,
                log_every=10,
            ),
        ),
        gan=GANConfig(steps=300, batch_size=8, crop=128, patch=64, task="seg"),
        ablation=AblationConfig(val_every=10, val_images=16),
        # `make tutorial` in ~27 min on 2 cores: segmentation codecs at the lowest λ (baseline,
        # aux-enc, and the codec notebook 04 finetunes), PatchGAN with its control; the λ × seed
        # grid, detection codecs included, comes from `make study` (results/)
        tutorial=TutorialConfig(
            det_lambdas=(), seg_lambdas=(1.0,), mse_curve=False, gan_presets=("full", "no-adv")
        ),
    ),
    "paper": Profile(
        name="paper",
        data=DataConfig(
            source="real",
            train_crop=256,
            eval_short_edge=800,
            coco_root="data/coco",
            context_root="data/VOCdevkit/VOC2010",
        ),
        codec=CodecConfig(name="cheng2020-attn", quality=3, N=None, M=None, pretrained=True),
        # Iino et al.'s own models: detectron2's Faster R-CNN X101-32x8d-FPN (COCO) and
        # MMSegmentation's DeepLabV3+ R101-D8 (Pascal-Context-59), with their zoo weights
        recognition=RecognitionConfig(
            det_backend="detectron2",
            seg_backend="mmseg",
            det_backbone="resnext101_32x8d",
            seg_encoder="resnet101",
            pretrained=True,
            score_threshold=0.5,
            train_steps=0,
            batch_size=16,
            rpn_pre_nms_top_n_train=2000,
            rpn_post_nms_top_n_train=2000,
            rpn_pre_nms_top_n_test=1000,
            rpn_post_nms_top_n_test=1000,
            rpn_batch_size_per_image=256,
            box_batch_size_per_image=512,
            box_head_dim=None,
            anchor_sizes=None,
        ),
        mse=ReferenceConfig(steps=0, batch_size=16, crop=256, lr=1e-4),  # pretrained: no training
        # section 4.1: 80 epochs of COCO (118287 images) at batch 16, lr 1e-4, polynomial decay
        # over the last 40 epochs; 80 epochs of Pascal-Context (4998 images) at batch 8, lr 5e-5,
        # polynomial decay throughout; images resized to 520 (crops of 512 here).
        icm=ICMConfig(
            det=TrainConfig(
                steps=591_440,
                batch_size=16,
                crop=256,
                lr=1e-4,
                decay_start=0.5,
                checkpoint_every=5000,
                log_every=100,
            ),
            seg=TrainConfig(
                steps=49_980,
                batch_size=8,
                crop=512,
                lr=5e-5,
                decay_start=0.0,
                checkpoint_every=2000,
                log_every=100,
            ),
        ),
        # validation every 1000 steps on 100 val crops (the paper does not say how often)
        ablation=AblationConfig(val_every=1000, val_images=100),
        # 5,000 COCO images per R-D point: the estimated rate, checked on 100 real bitstreams
        evaluation=EvalConfig(real_images=100),
    ),
}


def _cpu_patterns(cpu: Profile) -> Profile:
    """The ``cpu`` profile in the world where bits compete (:mod:`icm_lib.data.patterns`), with
    the foundations the experiments issue asks for. Departures from the paper, named wherever
    results appear: recognizers trained here from scratch (ResNet-18), schedules of hundreds of
    steps, a branch that starts untrained."""
    return replace(
        cpu,
        name="cpu-patterns",
        data=replace(cpu.data, world="patterns"),
        # to convergence: the learning rate decaying over the second half, the validation curve
        # every 100 steps (the world checks' convergence check reads it); 3000 steps still moved
        # bpp +5.2 % over their last fifth, hence 8000 (amendment 4 of the analysis plan)
        # (float32 pinned here and for the recognizers: this world's runs were made in it,
        # whatever precision `cpu` trains its foundations in)
        mse=replace(cpu.mse, steps=8000, decay_start=0.5, validate_every=100, precision="float32"),
        # to a plateau: the val curve every 200 steps is in each recognizer's report; the
        # segmenter's 1500 steps still gained 3.9 % over their last fifth (amendment 3 of the
        # analysis plan), so it trains for 3000
        recognition=replace(
            cpu.recognition,
            det_train_steps=2400,
            seg_train_steps=3000,
            eval_every=200,
            det_train_precision="float32",
            seg_train_precision="float32",
        ),
        icm=replace(
            cpu.icm,
            det=replace(cpu.icm.det, steps=200, checkpoint_every=50),
            seg=replace(cpu.icm.seg, steps=300, checkpoint_every=50),
            # every run validates: the ablation's baseline and aux-enc are the grid's runs
            validate_every=10,
            # the MSE reference curve down to ~0.06 bpp, where mse_loses reads it (amendment 4)
            mse_lambdas=(0.00015625, 0.0003125, 0.000625, 0.00125, 0.0025, 0.005, 0.01),
            # chosen by the pilot with the plan's rule, both in the pinned environment
            # (results/pilot-cpu-patterns.json, 2026-12-02) and both by amendment 4's fallback,
            # "pilot band not reached". Segmentation: λ 5.6569 fell below λ 4. Detection, on the
            # grid of amendment 7: the curve rises strictly up to λ 0.8 (81 % of the
            # uncompressed mAP; the last step by +0.0006, within its noise) and is flat above.
            det_lambdas=(0.1, 0.2, 0.4, 0.8),
            seg_lambdas=(1.4142, 2.0, 2.8284, 4.0),
        ),
        ablation=replace(
            cpu.ablation, val_every=10, seeds=(0, 1, 2, 3, 4, 5), det_lmbda=0.2, seg_lmbda=2.8284
        ),
        # Le et al. as a factorial: adversarial weight {0, 0.01, 0.1} x pixel weight {20, 1}
        gan=replace(
            cpu.gan,
            presets=("no-adv", "limited", "full", "no-adv-px1", "limited-px1", "full-px1"),
        ),
        # grids around where the task loss starts to cost bits (analysis plan); amendment 4:
        # detection extended upwards (its best share was 75 %), segmentation refined to √2;
        # amendment 7: detection extended downwards (above λ 0.4 its curve is flat within the
        # noise of its 48 val images)
        pilot=PilotConfig(
            det_lambdas=(0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8),
            seg_lambdas=tuple(round(0.25 * 2 ** (k / 2), 4) for k in range(11)),
        ),
    )


PROFILES["cpu-patterns"] = _cpu_patterns(PROFILES["cpu"])


def get_profile(name: str, **overrides: Any) -> Profile:
    """Return the named profile, with ``section__field=value`` overrides applied.

    Args:
        name: ``smoke``, ``cpu`` or ``paper``.
        **overrides: e.g. ``data__n_train=64`` or ``codec__name="mbt2018-mean"``.

    Raises:
        ValueError: unknown profile or field, or a value of another type than the field's
            (``data__n_train="64"``, ``icm__det_lambdas=0.5``); a list is taken for a tuple
            field and an int for a float one.
    """
    if name not in PROFILES:
        raise ConfigError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}")
    profile = PROFILES[name]
    for key, value in overrides.items():
        section, _, fld = key.partition("__")
        if not fld or not hasattr(profile, section):
            raise ConfigError(f"override {key!r} must look like 'data__n_train'")
        sub = getattr(profile, section)
        if fld not in {f.name for f in dataclasses.fields(sub)}:
            raise ConfigError(f"{type(sub).__name__} has no field {fld!r}")
        hint = typing.get_type_hints(type(sub))[fld]
        if (
            isinstance(value, list)
            and typing.get_origin(hint) is not list
            and _fits(tuple(value), hint)
        ):
            value = tuple(value)  # "[0.5, 1]" from the shell, for a tuple field
        if not _fits(value, hint):
            raise ConfigError(
                f"override {key}={value!r}: {type(sub).__name__}.{fld} takes "
                f"{_type_name(hint)}, not {type(value).__name__}"
            )
        profile = replace(profile, **{section: replace(sub, **{fld: value})})
    return profile


#: ``--no-fold-bn`` of ``python -m icm_lib.train`` and ``study``
NO_FOLD_HELP = (
    "with --bf16: leave the recognizer's batch norms as they are (icm.fold_bn off; another "
    "run), e.g. where folding them is refused"
)
#: ``--overrides`` of ``python -m icm_lib.train`` and ``study``
OVERRIDES_HELP = (
    "profile fields to set, space-separated section__field=value (values as Python literals), "
    'e.g. "icm__amp=False" (the codecs for machines in float32 on a GPU that only emulates '
    'bfloat16) or "icm__det_lambdas=[0.4,0.8]": other settings, other runs (keyed apart); a '
    "study writes them into the profile's results file, so give another --results-dir to keep "
    "its own, and the same --overrides to --plan or --status it"
)
#: ``--bf16`` of ``python -m icm_lib.train`` and ``study``
BF16_HELP = (
    "train the codecs for machines with the recognizer, the branch and the codec's transforms "
    "under bfloat16 autocast on the CPU too, the recognizer's batch norms folded into its "
    "convolutions for its task loss (icm.amp_cpu, icm.codec_amp, icm.fold_bn; on CUDA it adds "
    "the codec's transforms and the folding): where the CPU multiplies bfloat16 (avx512_bf16, "
    "AMX) a step with its pseudo-labels cached is 1.35-1.5x faster than in float32 (python -m "
    "icm_lib.bench icm); slower, not faster, where it does not. "
    "Other runs than float32's (keyed apart), whose numbers this CPU's float32 runs do not "
    "reproduce; a study writes them into the same results file, so give another --results-dir "
    "to keep a float32 study's"
)


def trained_in_bfloat16(
    profile: Profile, device: Any = None, say: bool = True, fold: bool = True
) -> Profile:
    """``profile`` with its codecs for machines trained under bfloat16 autocast on every device
    (:meth:`ICMConfig.in_bfloat16`; ``--bf16``), the recognizer's batch norms folded for its
    task loss unless not ``fold`` (``--no-fold-bn``). Where ``device`` (``None``: CUDA if
    present, else the CPU) only emulates bfloat16 it is done as asked, with a line on stderr
    that it is slower there, not faster (where ``say``: one process of a ``torchrun`` job says
    it)."""
    from .runtime import bf16_slower, get_device

    slower = bf16_slower(get_device(device or None))
    if slower is not None and say:
        print(f"--bf16: {slower}; the codecs train in bfloat16 as asked", file=sys.stderr)
    return replace(profile, icm=replace(profile.icm.in_bfloat16(), fold_bn=fold))


def from_precision_flags(
    profile: Profile, bf16: bool, no_fold_bn: bool, device: Any = None, say: bool = True
) -> Profile:
    """``profile`` as ``--bf16`` / ``--no-fold-bn`` of ``train`` and ``study`` ask
    (:func:`trained_in_bfloat16`); unchanged without ``--bf16``.

    Raises:
        ConfigError: ``--no-fold-bn`` without ``--bf16`` (it changes nothing there).
    """
    if no_fold_bn and not bf16:
        raise ConfigError(
            "--no-fold-bn goes with --bf16 (a float32 run never folds the batch norms)"
        )
    return trained_in_bfloat16(profile, device, say, fold=not no_fold_bn) if bf16 else profile


def for_device(profile: Profile, device: Any = None, native: bool | None = None) -> Profile:
    """``profile`` as its recognizers train on ``device``: where the device multiplies bfloat16
    only by emulation, or may (``native``; by default :func:`~icm_lib.runtime.bf16_slower` of
    ``device``, the CPU if ``None``, says why), each recognizer precision other than float32 becomes
    ``recognition.precision_fallback`` (unless that is ``None``), with one printed line that
    says so. Applied before anything is keyed, so a recognizer's key, and every run's on it,
    names the precision it trained in. The profile it hands on is decided: the precisions asked
    for are in ``recognition.asked_precisions`` (keying nothing but the settings key), and
    applied again, on another device too, it changes nothing, so the jobs of a study keep the
    keys the study planned. A profile without bfloat16 recognizers, or whose
    ``precision_fallback`` is ``None``, comes back as it was: there is nothing to decide."""
    rec = profile.recognition
    fallback = rec.precision_fallback
    asked = {
        f"{t}_train_precision": getattr(rec, f"{t}_train_precision")
        for t in ("det", "seg")
        if getattr(rec, f"{t}_train_precision") != "float32"
    }
    if not asked or fallback is None or rec.asked_precisions is not None:
        return profile
    if native is None:
        from .runtime import bf16_slower, get_device

        slower = bf16_slower(get_device(device or None))
    else:
        slower = None if native else "bfloat16 taken as emulated on this device (native=False)"
    decided = {"asked_precisions": (rec.det_train_precision, rec.seg_train_precision)}
    if slower is None:
        return replace(profile, recognition=replace(rec, **decided))
    print(
        f"recognizers: {', '.join(f'{k} {v} -> {fallback}' for k, v in asked.items())}: "
        f"{slower} (README 'Recognizers trained in bfloat16'; "
        "recognition__precision_fallback=None trains in bfloat16 anyway). The recognizers, and "
        f"every run on them, are keyed as {fallback} ones: the committed `{profile.name}` files "
        "were made on bfloat16 recognizers, so expect differences of the seed-to-seed spread."
    )
    return replace(profile, recognition=replace(rec, **decided, **dict.fromkeys(asked, fallback)))


def _fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` has the type a profile field declares (the types profiles use:
    numbers, strings, None, tuples, lists, dicts, unions of them; any other type passes)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (tuple, list):
        if not isinstance(value, origin):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(map(_fits, value, args))
        return not args or all(_fits(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    return not isinstance(hint, type) or isinstance(value, hint)


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) if typing.get_origin(hint) is None else str(hint)


def parse_overrides(text: str) -> dict[str, Any]:
    """``"section__field=value ..."`` (space-separated; values as Python literals, else strings)
    -> keyword overrides for :func:`get_profile`, e.g. the ``ICM_OVERRIDES`` environment
    variable of the notebooks: ``recognition__det_backend=detectron2 data__n_train=64``.

    Raises:
        ValueError: an item without ``=``.
    """
    import ast

    out: dict[str, Any] = {}
    for item in text.split():
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"override {item!r} must look like 'data__n_train=64'")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out
