"""COCO-format detection data: real COCO2017 and the embedded scenes, one loader.

Expected layout (COCO2017's own)::

    <root>/train2017/*.jpg   <root>/val2017/*.jpg
    <root>/annotations/instances_train2017.json   instances_val2017.json
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..errors import DatasetError
from .images import to_rgb_tensor
from .transforms import resize_short_edge

COCO_HINT = (
    "download COCO2017 (train2017, val2017 and annotations_trainval2017) from the COCO "
    "website and pass its folder as coco_root, or use the embedded default "
    "(profile 'cpu' or 'smoke')"
)


class CocoDetection(Dataset):
    """Images with boxes in torchvision's target format.

    Args:
        root: the COCO folder (see module docstring).
        split: ``"train"`` or ``"val"``.
        short_edge: resize so the shorter edge has this length (``None``: keep).
        max_images: use only the first ``max_images`` images (sorted by id).

    Items: ``(image (3, H, W) in [0, 1], {"boxes": (K, 4) x1y1x2y2, "labels": (K,) in 1..C,
    "image_id": int})``. Category ids are mapped to contiguous labels 1..C
    (``self.category_names[label - 1]``).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "val",
        short_edge: int | None = None,
        max_images: int | None = None,
    ):
        from pycocotools.coco import COCO

        self.root = Path(root)
        ann = self.root / "annotations" / f"instances_{split}2017.json"
        self.image_dir = self.root / f"{split}2017"
        if not ann.is_file() or not self.image_dir.is_dir():
            raise DatasetError(
                f"no COCO {split} split at {self.root} (looked for {ann} and "
                f"{self.image_dir}); {COCO_HINT}"
            )
        try:
            import contextlib
            import io

            with contextlib.redirect_stdout(io.StringIO()):
                self.coco = COCO(str(ann))
        except Exception as exc:
            raise DatasetError(f"cannot parse {ann}: {exc}; is it a COCO instances file?") from exc
        self.cat_ids = sorted(self.coco.getCatIds())
        self.category_names = [self.coco.cats[c]["name"] for c in self.cat_ids]
        self._label = {c: i + 1 for i, c in enumerate(self.cat_ids)}
        self.ids = sorted(self.coco.getImgIds())[:max_images]
        self.short_edge = short_edge

    @property
    def num_classes(self) -> int:
        """Object classes, background excluded."""
        return len(self.cat_ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, idx: int):
        image_id = self.ids[idx]
        info = self.coco.imgs[image_id]
        path = self.image_dir / info["file_name"]
        if not path.is_file():
            raise DatasetError(f"image {path} listed in the annotations is missing; {COCO_HINT}")
        image = to_rgb_tensor(path)
        anns = [a for a in self.coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        boxes = torch.tensor(
            [
                [
                    a["bbox"][0],
                    a["bbox"][1],
                    a["bbox"][0] + a["bbox"][2],
                    a["bbox"][1] + a["bbox"][3],
                ]
                for a in anns
            ],
            dtype=torch.float32,
        ).reshape(-1, 4)
        labels = torch.tensor([self._label[a["category_id"]] for a in anns], dtype=torch.int64)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        image, boxes, _ = resize_short_edge(image, self.short_edge, boxes[keep])
        return image, {"boxes": boxes, "labels": labels[keep], "image_id": image_id}

    def roi_mask(self, idx: int) -> torch.Tensor:
        """Union of the ground-truth instance masks (H, W) bool, at the original size."""
        import numpy as np

        image_id = self.ids[idx]
        info = self.coco.imgs[image_id]
        m = np.zeros((info["height"], info["width"]), dtype=bool)
        for a in self.coco.imgToAnns.get(image_id, []):
            if not a.get("segmentation"):
                raise DatasetError(
                    f"annotation {a.get('id')} of image {image_id} has no 'segmentation' mask: "
                    "the ROI baseline needs instance masks (COCO's instances_*.json have them; "
                    "box-only files such as SFU-HW's do not), so evaluate it on a dataset with "
                    "masks or leave the ROI curve out"
                )
            m |= self.coco.annToMask(a).astype(bool)
        return torch.from_numpy(m)
