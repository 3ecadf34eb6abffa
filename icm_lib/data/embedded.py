"""Write the procedural scenes as real datasets (load-or-compute, atomic).

Layout under ``<data_dir>/embedded/<tag>/``::

    coco/                                   COCO2017 layout, read by icm_lib.data.coco
      train2017/000000.png ...
      val2017/...
      annotations/instances_{train,val}2017.json   boxes, RLE segmentation, categories
    VOCdevkit/VOC2010/                      MMSegmentation's Pascal-Context layout, read by
      JPEGImages/train_000000.png ...        icm_lib.data.context (images are hard links)
      SegmentationClassContext/*.png        label PNGs: 0 unlabeled, 1..11 classes
      ImageSets/SegmentationContext/{train,val}.txt
    meta.json                               config, class names, counts; written last

The whole folder is built under a temporary name and renamed in one step, so a stopped run never
leaves a half-written dataset behind; ``meta.json`` marks it complete.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from ..errors import DatasetError
from ..files import atomic_write_json, read_json
from ..runtime import config_hash, refuse_training, tqdm
from . import patterns, scenes

GENERATOR_VERSION = 1


@dataclass(frozen=True)
class World:
    """A family of embedded scenes: its generator and class names."""

    generate: Callable  # (size, rng) -> (image uint8 (H, W, 3), label uint8 (H, W), objects)
    thing_classes: tuple[str, ...]
    seg_classes: tuple[str, ...]
    version: int


#: the embedded worlds (``DataConfig.world``)
WORLDS = {
    "shapes": World(scenes.generate_scene, scenes.THING_CLASSES, scenes.SEG_CLASSES, 1),
    "patterns": World(
        patterns.generate_pattern_scene, patterns.THING_CLASSES, patterns.SEG_CLASSES, 1
    ),
}


def get_world(name: str) -> World:
    """The embedded world called ``name``.

    Raises:
        DatasetError: an unknown name.
    """
    if name not in WORLDS:
        raise DatasetError(f"unknown embedded world {name!r}: choose one of {sorted(WORLDS)}")
    return WORLDS[name]


@dataclass(frozen=True)
class EmbeddedDataset:
    """Paths of a generated dataset."""

    root: Path
    coco_root: Path
    context_root: Path
    meta: dict


def _tag(image_size: int, n_train: int, n_val: int, seed: int, world: str = "shapes") -> str:
    cfg = dict(v=GENERATOR_VERSION, size=image_size, n_train=n_train, n_val=n_val, seed=seed)
    if world == "shapes":  # the first world keeps its folder names (and so every run key)
        return f"scenes{image_size}-{n_train}-{n_val}-s{seed}-{config_hash(cfg, 6)}"
    cfg.update(world=world, world_v=get_world(world).version)
    return f"{world}{image_size}-{n_train}-{n_val}-s{seed}-{config_hash(cfg, 6)}"


def _coco_annotation(ann_id: int, image_id: int, obj) -> dict:
    ys, xs = np.nonzero(obj.mask)
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    rle = mask_utils.encode(np.asfortranarray(obj.mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": obj.category + 1,
        "bbox": [x0, y0, x1 - x0, y1 - y0],
        "area": int(obj.mask.sum()),
        "segmentation": rle,
        "iscrowd": 0,
    }


def _write(
    root: Path, world: World, image_size: int, n_train: int, n_val: int, seed: int, progress: bool
) -> dict:
    coco, voc = root / "coco", root / "VOCdevkit" / "VOC2010"
    for d in [
        coco / "annotations",
        voc / "JPEGImages",
        voc / "SegmentationClassContext",
        voc / "ImageSets" / "SegmentationContext",
    ]:
        d.mkdir(parents=True, exist_ok=True)
    categories = [
        {"id": i + 1, "name": n, "supercategory": "shape"}
        for i, n in enumerate(world.thing_classes)
    ]
    counts = {}
    for split, n, split_seed in [("train", n_train, seed), ("val", n_val, seed + 10_000)]:
        rng = np.random.default_rng(split_seed)
        (coco / f"{split}2017").mkdir(exist_ok=True)
        images, annotations, ids = [], [], []
        for i in tqdm(range(n), desc=f"scenes {split}", leave=False, disable=not progress):
            image, label, objects = world.generate(image_size, rng)
            name = f"{i:06d}.png"
            img_path = coco / f"{split}2017" / name
            Image.fromarray(image).save(img_path, optimize=False, compress_level=1)
            stem = f"{split}_{i:06d}"
            try:
                os.link(img_path, voc / "JPEGImages" / f"{stem}.png")
            except OSError:
                shutil.copyfile(img_path, voc / "JPEGImages" / f"{stem}.png")
            Image.fromarray(label).save(voc / "SegmentationClassContext" / f"{stem}.png")
            ids.append(stem)
            images.append(
                {"id": i + 1, "file_name": name, "height": image_size, "width": image_size}
            )
            for obj in objects:
                annotations.append(_coco_annotation(len(annotations) + 1, i + 1, obj))
        with open(coco / "annotations" / f"instances_{split}2017.json", "w") as f:
            json.dump(
                {
                    "info": {"description": "icm_lib embedded scenes"},
                    "images": images,
                    "annotations": annotations,
                    "categories": categories,
                },
                f,
            )
        (voc / "ImageSets" / "SegmentationContext" / f"{split}.txt").write_text("\n".join(ids))
        counts[split] = {"images": n, "instances": len(annotations)}
    return counts


def prepare_embedded(
    data_dir: str | Path,
    image_size: int = 256,
    n_train: int = 256,
    n_val: int = 48,
    seed: int = 0,
    progress: bool = True,
    world: str = "shapes",
) -> EmbeddedDataset:
    """Generate the embedded dataset under ``data_dir`` unless it is already there.

    Args:
        world: ``"shapes"`` or ``"patterns"`` (:data:`WORLDS`).

    Returns:
        An :class:`EmbeddedDataset` whose ``coco_root`` / ``context_root`` the loaders read.
    """
    base = Path(data_dir) / "embedded"
    spec = get_world(world)
    root = base / _tag(image_size, n_train, n_val, seed, world)
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        refuse_training(f"the embedded {world} scenes {root.name}")
        base.mkdir(parents=True, exist_ok=True)
        tmp = base / f".{root.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        t0 = time.perf_counter()
        try:
            counts = _write(tmp, spec, image_size, n_train, n_val, seed, progress)
            atomic_write_json(
                tmp / "meta.json",
                {
                    "generator_version": GENERATOR_VERSION,
                    "image_size": image_size,
                    "n_train": n_train,
                    "n_val": n_val,
                    "seed": seed,
                    "world": world,
                    "counts": counts,
                    "thing_classes": list(spec.thing_classes),
                    "seg_classes": list(spec.seg_classes),
                    "seconds": round(time.perf_counter() - t0, 2),
                },
            )
            try:
                os.rename(tmp, root)
            except OSError:  # another process finished first
                if not meta_path.is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    meta = read_json(
        meta_path,
        what="the embedded dataset's metadata",
        fix=f"delete the folder {root} and run again to regenerate it",
    )
    return EmbeddedDataset(root, root / "coco", root / "VOCdevkit" / "VOC2010", meta)
