"""Datasets: the embedded procedural scenes or real COCO2017 / Pascal-Context59, one interface."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import DatasetError
from ..tasks import DETECTION, Task, get_task
from .coco import CocoDetection
from .context import PascalContextSegmentation


@dataclass
class Datasets:
    """Train/val splits for both tasks, and where they came from."""

    det_train: CocoDetection
    det_val: CocoDetection
    seg_train: PascalContextSegmentation
    seg_val: PascalContextSegmentation
    source: str
    meta: dict

    def train(self, task: Task | str) -> CocoDetection | PascalContextSegmentation:
        """The training split of ``task`` (``det``: COCO detection; ``seg``: Pascal-Context)."""
        return self.det_train if get_task(task) is DETECTION else self.seg_train

    def val(self, task: Task | str) -> CocoDetection | PascalContextSegmentation:
        """The validation split of ``task``."""
        return self.det_val if get_task(task) is DETECTION else self.seg_val

    def summary(self) -> dict:
        """Source, split sizes, class counts and the instance counts of the generator (if any)."""
        return {
            "source": self.source,
            "n_train": len(self.det_train),
            "n_val": len(self.det_val),
            "det_classes": self.det_train.num_classes,
            "seg_classes": self.seg_train.num_classes,
            "instances": self.meta.get("counts"),
        }


def get_datasets(data_cfg, data_dir: str | Path, progress: bool = True) -> Datasets:
    """Build (load-or-generate) the datasets a profile's :class:`~icm_lib.profiles.DataConfig`
    names. ``source="embedded"`` generates scenes under ``data_dir`` once; ``"real"`` reads
    ``coco_root`` / ``context_root`` (relative paths are taken under ``data_dir``'s parent)."""
    if data_cfg.source == "embedded":
        from .embedded import prepare_embedded

        emb = prepare_embedded(
            data_dir,
            data_cfg.image_size,
            data_cfg.n_train,
            data_cfg.n_val,
            data_cfg.seed,
            progress=progress,
            world=data_cfg.world,
        )
        coco_root, context_root, meta = emb.coco_root, emb.context_root, emb.meta
    elif data_cfg.source == "real":
        if not data_cfg.coco_root or not data_cfg.context_root:
            raise DatasetError("source='real' needs coco_root and context_root in the profile")
        base = Path(data_dir).parent
        coco_root, context_root = (
            Path(p) if Path(p).is_absolute() else base / p
            for p in (data_cfg.coco_root, data_cfg.context_root)
        )
        meta = {"coco_root": str(coco_root), "context_root": str(context_root)}
    else:
        raise DatasetError(f"unknown data source {data_cfg.source!r}: 'embedded' or 'real'")
    short = data_cfg.eval_short_edge
    return Datasets(
        det_train=CocoDetection(coco_root, "train"),
        det_val=CocoDetection(coco_root, "val", short_edge=short),
        seg_train=PascalContextSegmentation(context_root, "train"),
        seg_val=PascalContextSegmentation(context_root, "val", short_edge=short),
        source=data_cfg.source,
        meta=meta,
    )
