"""Object detection with detectron2: Iino et al.'s own detector behind the project's interface.

Iino et al. uses detectron2's Faster R-CNN X101-32x8d-FPN (model zoo
``COCO-Detection/faster_rcnn_X_101_32x8d_FPN_3x``, COCO box AP 43.0). :class:`Detectron2Detector`
wraps any detectron2 model-zoo config behind torchvision's detection interface, which
:class:`~icm_lib.recognition.FrozenDetector`, the recognizer training loop and the metrics use:

- ``model(images)`` in eval mode: per image ``{"boxes", "scores", "labels"}``;
- ``model(images, targets)`` in train mode: detectron2's four training losses;
- images are RGB in [0, 1]; labels are the project's 1..C (0 is torchvision's background).

Converted at the boundary to detectron2's conventions: pixels in 0..255 in the config's
``INPUT.FORMAT`` channel order (BGR for the model zoo), normalised inside the model by
``MODEL.PIXEL_MEAN``/``PIXEL_STD``; classes 0..C-1; no resizing (detectron2 resizes in its data
mapper, which is not used: the machine sees exactly the decoded pixels).

detectron2 is optional (``pip install -e ".[detectron2]"`` after installing detectron2 itself;
README "Recognition backends").
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn as nn

from ..errors import BackendUnavailableError, ConfigError
from ..weights import local_file, require_download

#: Iino et al.'s detector (detectron2 model zoo)
PAPER_CONFIG = "COCO-Detection/faster_rcnn_X_101_32x8d_FPN_3x.yaml"
INSTALL_HINT = (
    "detectron2 is not installed: install it the upstream way "
    "(pip install 'git+https://github.com/facebookresearch/detectron2.git', then "
    'pip install -e ".[detectron2]"; README "Recognition backends"), or use the '
    "torchvision backend (recognition__det_backend='torchvision')"
)
#: the profile field that takes a local copy of the zoo's weights file
FIELD = "recognition.det_checkpoint"
#: where detectron2 reads a model-zoo file, in words (iopath's cache, not torch.hub's)
CACHE_FOLDER = (
    "$FVCORE_CACHE/<the URL's path after the host>; FVCORE_CACHE defaults to "
    "~/.torch/iopath_cache (iopath's cache, which detectron2's DetectionCheckpointer reads; not "
    "torch.hub's)"
)

#: RecognitionConfig / build_detector keyword -> detectron2 config key
_CONFIG_KEYS = {
    "rpn_pre_nms_top_n_train": "MODEL.RPN.PRE_NMS_TOPK_TRAIN",
    "rpn_post_nms_top_n_train": "MODEL.RPN.POST_NMS_TOPK_TRAIN",
    "rpn_pre_nms_top_n_test": "MODEL.RPN.PRE_NMS_TOPK_TEST",
    "rpn_post_nms_top_n_test": "MODEL.RPN.POST_NMS_TOPK_TEST",
    "rpn_batch_size_per_image": "MODEL.RPN.BATCH_SIZE_PER_IMAGE",
    "box_batch_size_per_image": "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
    "box_score_thresh": "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
    "box_head_dim": "MODEL.ROI_BOX_HEAD.FC_DIM",
}


def require_detectron2():
    """Import detectron2, or raise :class:`BackendUnavailableError` saying how to install it."""
    try:
        import detectron2  # noqa: F401
        from detectron2 import model_zoo  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailableError(f"{INSTALL_HINT} ({exc})") from exc


def detectron2_config(config: str, num_classes: int, pretrained: bool, **kwargs):
    """The detectron2 ``CfgNode`` of model-zoo ``config`` for ``num_classes`` classes on the CPU.

    ``kwargs`` are :func:`~icm_lib.recognition.build_detector`'s sampling and test settings
    (``None`` keeps the config's value). Without pretrained weights the ResNet gets trainable
    BatchNorm and no frozen stages (the zoo's FrozenBN and ``FREEZE_AT=2`` assume an ImageNet
    initialisation), as the torchvision backend does.
    """
    require_detectron2()
    from detectron2 import model_zoo

    try:
        cfg = model_zoo.get_config(config)
    except RuntimeError as exc:
        raise ConfigError(f"detectron2's model zoo has no config {config!r}") from exc
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    cfg.MODEL.WEIGHTS = ""
    for name, value in kwargs.items():
        if name == "anchor_sizes":
            if value is not None:
                cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[s] for s in value]
            continue
        if name not in _CONFIG_KEYS:
            raise TypeError(f"unknown detector setting {name!r}")
        if value is not None:
            cfg.merge_from_list([_CONFIG_KEYS[name], value])
    if not pretrained:
        cfg.MODEL.RESNETS.NORM = "BN"
        cfg.MODEL.BACKBONE.FREEZE_AT = 0
    return cfg


@contextlib.contextmanager
def _event_storage():
    """detectron2's training losses log into an ``EventStorage``; open one unless a detectron2
    trainer already did."""
    from detectron2.utils.events import EventStorage, get_event_storage

    try:
        get_event_storage()
    except AssertionError:
        with EventStorage(0):
            yield
        return
    yield


class Detectron2Detector(nn.Module):
    """A detectron2 ``GeneralizedRCNN`` with torchvision's detection interface (module docstring).

    Args:
        net: the detectron2 model (``detectron2.modeling.build_model``).
        input_format: the config's ``INPUT.FORMAT`` (``"BGR"`` or ``"RGB"``).
    """

    def __init__(self, net: nn.Module, input_format: str = "BGR"):
        super().__init__()
        if input_format not in ("BGR", "RGB"):
            raise ValueError(f"unsupported detectron2 INPUT.FORMAT {input_format!r}")
        self.net = net
        self.input_format = input_format

    @property
    def aux_task_layer(self) -> nn.Module:
        """Iino et al.'s aux-task feature: the ResNet's conv2 stage (``res2``, stride 4)."""
        return self.net.backbone.bottom_up.res2

    def to_library_image(self, image: torch.Tensor) -> torch.Tensor:
        """(3, H, W) RGB in [0, 1] -> detectron2's input (0..255, ``INPUT.FORMAT`` order)."""
        image = image * 255.0
        return image.flip(0) if self.input_format == "BGR" else image

    @staticmethod
    def to_library_instances(target: dict, size: tuple[int, int]):
        """The project's ``{"boxes", "labels" in 1..C}`` -> detectron2 ``Instances`` (0..C-1)."""
        from detectron2.structures import Boxes, Instances

        inst = Instances(size)
        inst.gt_boxes = Boxes(target["boxes"].reshape(-1, 4).float())
        inst.gt_classes = target["labels"].long() - 1
        return inst

    @staticmethod
    def from_library_instances(inst) -> dict[str, torch.Tensor]:
        """detectron2's predicted ``Instances`` -> ``{"boxes", "scores", "labels" in 1..C}``."""
        return {
            "boxes": inst.pred_boxes.tensor,
            "scores": inst.scores,
            "labels": inst.pred_classes.long() + 1,
        }

    def forward(self, images, targets: list[dict] | None = None):
        """``images``: a list (or batch) of (3, H, W) RGB in [0, 1]. Train mode with ``targets``:
        detectron2's loss dict; eval mode: one ``{"boxes", "scores", "labels"}`` per image."""
        inputs = []
        for i, image in enumerate(images):
            h, w = image.shape[-2:]
            item = {"image": self.to_library_image(image), "height": h, "width": w}
            if targets is not None:
                item["instances"] = self.to_library_instances(targets[i], (h, w))
            inputs.append(item)
        if self.training:
            if targets is None:
                raise ValueError("a detector in train mode needs targets")
            with _event_storage():
                return self.net(inputs)
        return [self.from_library_instances(out["instances"]) for out in self.net(inputs)]


def build_detectron2_detector(
    num_classes: int,
    config: str = PAPER_CONFIG,
    pretrained: bool = False,
    checkpoint: str | None = None,
    **kwargs,
) -> Detectron2Detector:
    """A :class:`Detectron2Detector` of model-zoo ``config``.

    Args:
        num_classes: object classes, background excluded (80 for COCO, labels 1..80 in the order
            of sorted COCO category ids, which is detectron2's contiguous order).
        config: a detectron2 model-zoo config (Iino et al.: :data:`PAPER_CONFIG`).
        pretrained: load the zoo's COCO weights through detectron2's ``DetectionCheckpointer``
            (downloaded once into iopath's cache: :func:`d2_cache_file`).
        checkpoint: with ``pretrained``, a local copy of the zoo's file (``model_final_*.pkl``;
            the profile's ``recognition.det_checkpoint``), loaded instead of the URL.
        **kwargs: sampling / test settings (:func:`detectron2_config`).

    Raises:
        BackendUnavailableError: detectron2 is not installed.
        WeightsUnavailableError: ``pretrained`` and the weights cannot be downloaded (the message
            names the file detectron2 reads and the URL), or ``checkpoint`` is missing.
    """
    cfg = detectron2_config(config, num_classes, pretrained, **kwargs)
    from detectron2 import model_zoo
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    net = build_model(cfg)
    if pretrained:
        if num_classes != 80:
            raise ConfigError(
                f"detectron2's COCO weights predict 80 classes; the dataset has {num_classes}"
            )
        what = f"detectron2 {config}"
        if checkpoint is not None:
            # the file name's suffix tells DetectionCheckpointer the format (.pkl: the zoo's)
            DetectionCheckpointer(net).load(str(local_file(checkpoint, what, FIELD)))
        else:
            url = model_zoo.get_checkpoint_url(config)
            require_download(url, what, cached=d2_cache_file(url), folder=CACHE_FOLDER, field=FIELD)
            DetectionCheckpointer(net).load(url)
    return Detectron2Detector(net, cfg.INPUT.FORMAT)


def d2_cache_file(url: str) -> Path:
    """The file detectron2's ``DetectionCheckpointer`` reads for a model-zoo ``url``: iopath's
    ``HTTPURLHandler`` caches it as ``<get_cache_dir()>/<the URL's path after the host>``, where
    ``get_cache_dir()`` is ``$FVCORE_CACHE``, default ``~/.torch/iopath_cache`` (torch.hub's
    folder is never read)."""
    from iopath.common.file_io import get_cache_dir

    return Path(get_cache_dir()) / urlparse(url).path.lstrip("/")


__all__ = [
    "PAPER_CONFIG",
    "Detectron2Detector",
    "build_detectron2_detector",
    "d2_cache_file",
    "detectron2_config",
    "require_detectron2",
]
