"""Semantic segmentation with MMSegmentation: Iino et al.'s own segmenter behind the project's
interface.

Iino et al. uses MMSegmentation's DeepLabV3+ R101-D8 on Pascal-Context-59 (config
``deeplabv3plus_r101-d8_4xb4-40k_pascal-context-59-480x480``, mIoU 52.86). :class:`MMSegSegmenter`
wraps any MMSegmentation ``EncoderDecoder`` config behind the interface of the project's
segmenters (:class:`~icm_lib.recognition.segmentation.NormalizedSegmenter`), which
:class:`~icm_lib.recognition.FrozenSegmenter` and the recognizer training loop use:

- ``model(images)``: logits (B, C, H, W) at the input size, ``images`` RGB in [0, 1];
- ``model.loss(images, labels)``: the decode head's own loss (the config's ``loss_decode``)
  against labels (B, H, W) in 0..C-1 with 255 ignored;
- ``model.aux_task_layer``: the ResNet's ``layer3``, the input of the config's auxiliary FCN head.

Converted at the boundary to MMSegmentation's conventions: pixels in 0..255, normalised with the
config's ``data_preprocessor`` mean/std (RGB order: the pre-processor's ``bgr_to_rgb`` turns
mmcv's BGR loading into RGB, which is what the project's images already are). Labels need no
conversion: the project's Pascal-Context loader applies the same ``reduce_zero_label`` as
``PascalContextDataset59`` (class k -> k-1, background -> 255). Inference is "whole" (one
forward at the image's size; the config's ``test_cfg`` slide window is not used): the machine
sees exactly the decoded picture at the experiment's geometry.

MMSegmentation is optional (``pip install -e ".[mmseg]"`` with mmcv from OpenMMLab's wheel index;
README "Recognition backends").
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from ..errors import BackendUnavailableError, ConfigError
from ..weights import local_file, require_download

#: Iino et al.'s segmenter (MMSegmentation model index)
PAPER_CONFIG = "deeplabv3plus_r101-d8_4xb4-40k_pascal-context-59-480x480"
INSTALL_HINT = (
    'MMSegmentation is not installed: pip install -e ".[mmseg]" with mmcv 2.0/2.1 from '
    'OpenMMLab\'s wheel index for your torch/CUDA (README "Recognition backends"), or use the '
    "smp backend (recognition__seg_backend='smp')"
)
#: the profile field that takes a local copy of the model index's weights file
FIELD = "recognition.seg_checkpoint"


def require_mmseg():
    """Import MMSegmentation, or raise :class:`BackendUnavailableError` saying how to install it."""
    try:
        import mmcv  # noqa: F401
        import mmengine  # noqa: F401
        import mmseg  # noqa: F401
        from mmseg.apis import init_model  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailableError(f"{INSTALL_HINT} ({exc})") from exc


def _configs_dir() -> Path:
    import mmseg

    return Path(mmseg.__file__).parent / ".mim" / "configs"


def mmseg_config_path(config: str) -> Path:
    """The config file of ``config``: a path to a ``.py`` file, or a model name of
    MMSegmentation's model index (the configs installed with the package)."""
    require_mmseg()
    path = Path(config)
    if path.suffix == ".py" and path.is_file():
        return path
    found = sorted(_configs_dir().glob(f"*/{path.stem}.py"))
    if not found:
        raise ConfigError(f"MMSegmentation has no config named {config!r}")
    return found[0]


def mmseg_checkpoint_url(config: str) -> str:
    """The pretrained weights of model ``config``, from its folder's ``metafile.yaml``."""
    import yaml

    path = mmseg_config_path(config)
    meta = path.parent / "metafile.yaml"
    models = yaml.safe_load(meta.read_text()).get("Models", []) if meta.is_file() else []
    for model in models:
        if model.get("Name") == path.stem and model.get("Weights"):
            return model["Weights"]
    raise ConfigError(f"MMSegmentation publishes no weights for {path.stem!r} (no {meta} entry)")


class MMSegSegmenter(nn.Module):
    """An MMSegmentation ``EncoderDecoder`` with the project's segmenter interface (module
    docstring).

    Args:
        net: the segmentor (``mmseg.apis.init_model``), SyncBN reverted to BatchNorm.
        mean, std: the config's ``data_preprocessor`` normalisation (0..255 scale, in the
            network's channel order).
        bgr: the network consumes BGR (a pre-processor without ``bgr_to_rgb``).
    """

    def __init__(self, net: nn.Module, mean, std, bgr: bool = False):
        super().__init__()
        self.net = net
        self.bgr = bgr
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @property
    def aux_task_layer(self) -> nn.Module:
        """Iino et al.'s aux-task feature for segmentation: the ResNet's ``layer3`` (conv4, stride
        8 in the D8 models), which the config's auxiliary FCN head reads."""
        return self.net.backbone.layer3

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1] -> the network's input (0..255, its channel order, minus mean, over
        std)."""
        if self.bgr:
            images = images.flip(1)
        return (images * 255.0 - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB in [0, 1] -> decode-head logits (B, C, H, W) at the input size."""
        h, w = images.shape[-2:]
        metas = [{"img_shape": (h, w), "ori_shape": (h, w)}] * images.shape[0]
        return self.net.encode_decode(self.normalize(images), metas)

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """The decode head's training loss (its config's ``loss_decode``; the auxiliary head is
        left out: the task loss is the machine's, the aux-task branch is the project's own) of
        ``images`` against ``labels`` (B, H, W); the sum of its terms under ``"loss"``."""
        from mmengine.structures import PixelData
        from mmseg.structures import SegDataSample

        samples = []
        for label in labels:
            sample = SegDataSample()
            sample.gt_sem_seg = PixelData(data=label[None].long())
            samples.append(sample)
        head = self.net.decode_head
        logits = head(self.net.extract_feat(self.normalize(images)))
        losses = {k: v for k, v in head.loss_by_feat(logits, samples).items() if "loss" in k}
        losses["loss"] = sum(losses.values())
        return losses


def build_mmseg_segmenter(
    num_classes: int,
    config: str = PAPER_CONFIG,
    pretrained: bool = False,
    checkpoint: str | None = None,
) -> MMSegSegmenter:
    """A :class:`MMSegSegmenter` of ``config`` (a model name of MMSegmentation's index or a path).

    Args:
        num_classes: classes of the decode (and auxiliary) head (59 for Pascal-Context-59).
        pretrained: load the model index's weights through mmengine's ``load_checkpoint``
            (``mmseg.apis.init_model``; downloaded once into torch.hub's cache,
            ``$TORCH_HOME/hub/checkpoints/<file name of the URL>``).
        checkpoint: with ``pretrained``, a local copy of that file (the profile's
            ``recognition.seg_checkpoint``), loaded instead of the URL.

    Raises:
        BackendUnavailableError: MMSegmentation (or mmcv / mmengine) is not installed.
        WeightsUnavailableError: ``pretrained`` and the weights cannot be downloaded (the message
            names the file mmengine reads and the URL), or ``checkpoint`` is missing.
    """
    path = mmseg_config_path(config)
    from mmengine.config import Config
    from mmengine.model import revert_sync_batchnorm
    from mmseg.apis import init_model

    cfg = Config.fromfile(str(path))
    weights = None
    if pretrained:
        if num_classes != cfg.model.decode_head.num_classes:
            raise ConfigError(
                f"{path.stem}'s weights predict {cfg.model.decode_head.num_classes} classes; the "
                f"dataset has {num_classes}"
            )
        what = f"MMSegmentation {path.stem}"
        if checkpoint is not None:
            weights = str(local_file(checkpoint, what, FIELD))
        else:
            # mmengine's load_checkpoint reads a URL through torch.hub.load_state_dict_from_url
            weights = mmseg_checkpoint_url(config)
            require_download(weights, what, field=FIELD)
    heads = [cfg.model.decode_head]
    aux = cfg.model.get("auxiliary_head")
    heads += aux if isinstance(aux, list) else [aux] if aux else []
    for head in heads:
        head.num_classes = num_classes
    net = revert_sync_batchnorm(init_model(cfg, weights, device="cpu"))
    pre = cfg.model.data_preprocessor
    return MMSegSegmenter(
        net, list(pre["mean"]), list(pre["std"]), bgr=not pre.get("bgr_to_rgb", False)
    )


__all__ = [
    "PAPER_CONFIG",
    "MMSegSegmenter",
    "build_mmseg_segmenter",
    "mmseg_checkpoint_url",
    "mmseg_config_path",
    "require_mmseg",
]
