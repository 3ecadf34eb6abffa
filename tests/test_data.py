import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from icm_lib.data.coco import CocoDetection
from icm_lib.data.context import IGNORE_INDEX, PascalContextSegmentation
from icm_lib.data.embedded import prepare_embedded
from icm_lib.data.images import to_rgb_tensor
from icm_lib.data.scenes import SEG_CLASSES, THING_CLASSES, generate_scene
from icm_lib.data.transforms import pad_to_multiple, random_crop, resize_short_edge
from icm_lib.errors import DatasetError


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != "meta.json":
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_generation_is_deterministic_and_atomic(tmp_path):
    a = prepare_embedded(tmp_path / "a", image_size=64, n_train=3, n_val=2, seed=5)
    b = prepare_embedded(tmp_path / "b", image_size=64, n_train=3, n_val=2, seed=5)
    assert _digest(a.root) == _digest(b.root)
    assert not [p for p in (tmp_path / "a" / "embedded").iterdir() if p.name.startswith(".")]
    c = prepare_embedded(tmp_path / "a", image_size=64, n_train=3, n_val=2, seed=6)
    assert c.root != a.root


def test_scene_labels_cover_every_pixel_and_masks_match_labels():
    image, label, objects = generate_scene(96, np.random.default_rng(3))
    assert image.shape == (96, 96, 3) and image.dtype == np.uint8
    assert label.min() >= 1 and label.max() <= len(SEG_CLASSES)
    for obj in objects:
        assert (label[obj.mask] == obj.category + 1).all()


def test_coco_files_are_valid_and_loaders_agree(scenes):
    from pycocotools.coco import COCO

    ann = json.loads((scenes.coco_root / "annotations" / "instances_val2017.json").read_text())
    assert [c["name"] for c in ann["categories"]] == list(THING_CLASSES)
    coco = COCO(str(scenes.coco_root / "annotations" / "instances_val2017.json"))
    a = ann["annotations"][0]
    mask = coco.annToMask(a)
    ys, xs = np.nonzero(mask)
    assert a["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]

    det = CocoDetection(scenes.coco_root, "val")
    seg = PascalContextSegmentation(scenes.context_root, "val")
    assert len(det) == len(seg) == 6 and seg.classes == SEG_CLASSES
    image_d, target = det[0]
    image_s, label = seg[0]
    assert torch.equal(image_d, image_s)
    assert target["boxes"].shape[1] == 4 and (target["labels"] >= 1).all()
    assert label.dtype == torch.int64 and label.max() < len(SEG_CLASSES)
    # every box lies on pixels labelled with its class
    b = target["boxes"][0].long()
    patch = label[b[1] : b[3], b[0] : b[2]]
    assert (patch == target["labels"][0] - 1).any()


def test_missing_and_malformed_datasets_raise_dataset_error(tmp_path, scenes):
    with pytest.raises(DatasetError, match="COCO2017"):
        CocoDetection(tmp_path / "nothing", "val")
    with pytest.raises(DatasetError, match="Pascal-Context"):
        PascalContextSegmentation(tmp_path / "nothing", "val")
    bad = tmp_path / "bad"
    (bad / "annotations").mkdir(parents=True)
    (bad / "val2017").mkdir()
    (bad / "annotations" / "instances_val2017.json").write_text("{not json")
    with pytest.raises(DatasetError, match="cannot parse"):
        CocoDetection(bad, "val")


def test_unlabeled_pixels_become_ignore_index(tmp_path):
    root = tmp_path / "VOC2010"
    for d in ["JPEGImages", "SegmentationClassContext", "ImageSets/SegmentationContext"]:
        (root / d).mkdir(parents=True)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "JPEGImages" / "a.jpg")
    lab = np.zeros((32, 32), np.uint8)
    lab[:16] = 3
    Image.fromarray(lab).save(root / "SegmentationClassContext" / "a.png")
    (root / "ImageSets/SegmentationContext/val.txt").write_text("a\n")
    ds = PascalContextSegmentation(root, "val")
    assert ds.num_classes == 59
    _, label = ds[0]
    assert set(label.unique().tolist()) == {2, IGNORE_INDEX}


def test_image_conversions():
    gray = to_rgb_tensor(np.full((5, 7), 255, np.uint8))
    assert gray.shape == (3, 5, 7) and torch.allclose(gray, torch.ones(3, 5, 7))
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 3] = 0  # fully transparent -> white
    assert torch.allclose(to_rgb_tensor(rgba), torch.ones(3, 4, 4))
    deep = to_rgb_tensor(np.full((4, 4, 3), 65535, np.uint16))
    assert torch.allclose(deep, torch.ones(3, 4, 4))


def test_transforms_keep_boxes_and_labels_aligned():
    x = torch.rand(3, 70, 90)
    padded, (ph, pw) = pad_to_multiple(x)
    assert padded.shape[-2:] == (128, 128) and (ph, pw) == (58, 38)
    assert torch.equal(padded[:, :70, :90], x)
    boxes = torch.tensor([[10.0, 10.0, 30.0, 40.0]])
    y, b, lab = resize_short_edge(x, 140, boxes, torch.zeros(70, 90, dtype=torch.long))
    assert y.shape[-2:] == (140, 180) and lab.shape == (140, 180)
    assert torch.allclose(b, boxes * 2)
    g = torch.Generator().manual_seed(0)
    big = torch.tensor([[0.0, 0, 100, 100]])
    img, b2, l2, _ = random_crop(
        torch.rand(3, 100, 100), 50, g, big, torch.tensor([3]), min_visible=0.2
    )  # a quarter of the box stays visible
    assert img.shape == (3, 50, 50) and b2.tolist() == [[0, 0, 50, 50]] and l2.tolist() == [3]
    _, b3, l3, _ = random_crop(torch.rand(3, 100, 100), 50, g, big, torch.tensor([3]))
    assert b3.shape == (0, 4) and l3.numel() == 0  # under the default 30 % it is dropped


def test_roi_mask_without_instance_masks_is_a_dataset_error(scenes):
    ds = CocoDetection(scenes.coco_root, "val")
    assert ds.roi_mask(0).any()
    for a in ds.coco.imgToAnns[ds.ids[0]]:
        a.pop("segmentation", None)  # as in box-only annotation files
    with pytest.raises(DatasetError, match="no 'segmentation' mask"):
        ds.roi_mask(0)


# ------------------------------------------------------------------ the patterns world
def _orientation_of(image: np.ndarray, mask: np.ndarray) -> float:
    """Share of the masked area's gradient energy along y (horizontal stripes: most of it;
    the isotropic clutter and the silhouette's edge pull every object towards 1/2)."""
    gray = image.astype(np.float32).mean(-1)
    ys, xs = np.nonzero(mask)
    patch = gray[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    inside = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    patch = np.where(inside, patch - patch[inside].mean(), 0.0)
    dy, dx = np.diff(patch, axis=0)[:, :-1], np.diff(patch, axis=1)[:-1, :]
    both = inside[1:, 1:] & inside[:-1, 1:] & inside[1:, :-1]
    ey, ex = float((dy[both] ** 2).sum()), float((dx[both] ** 2).sum())
    return ey / (ey + ex)


def test_patterns_world_carries_class_in_the_fill_not_the_silhouette():
    """Every object's stripes run as its class says (horizontal: the energy varies along y),
    whatever its silhouette; labels cover every pixel; the scene is a function of the seed."""
    from icm_lib.data.patterns import SEG_CLASSES as P_SEG
    from icm_lib.data.patterns import THING_CLASSES as P_THINGS
    from icm_lib.data.patterns import generate_pattern_scene

    rng = np.random.default_rng(0)
    checked = {"h": [], "v": []}
    for _ in range(12):
        image, label, objects = generate_pattern_scene(256, rng)
        assert label.min() >= 1 and label.max() <= len(P_SEG)
        for obj in objects:
            assert (label[obj.mask] == obj.category + 1).all()
            if obj.mask.sum() >= 300:
                kind = P_THINGS[obj.category][-1]
                checked[kind].append(_orientation_of(image, obj.mask))
    assert len(checked["h"]) >= 5 and len(checked["v"]) >= 5
    assert min(checked["h"]) > 0.55 and max(checked["v"]) < 0.45, checked
    a = generate_pattern_scene(64, np.random.default_rng(7))[0]
    b = generate_pattern_scene(64, np.random.default_rng(7))[0]
    assert (a == b).all()


def test_worlds_keep_the_shapes_keys_and_name_their_classes(tmp_path):
    """The shapes world keeps its folder names (so every run key of the committed results);
    another world gets its own folder, and its classes reach the loaders through meta.json."""
    from icm_lib.data import patterns
    from icm_lib.data.embedded import _tag, get_world

    assert _tag(256, 384, 48, 0) == "scenes256-384-48-s0-f95b7d"  # the cpu profile's data
    assert _tag(128, 16, 8, 0) == "scenes128-16-8-s0-020797"  # the smoke profile's
    assert _tag(256, 384, 48, 0, "patterns").startswith("patterns256-384-48-s0-")
    with pytest.raises(DatasetError, match="unknown embedded world"):
        get_world("stripes")
    emb = prepare_embedded(tmp_path, image_size=64, n_train=2, n_val=2, world="patterns")
    assert emb.meta["world"] == "patterns"
    assert PascalContextSegmentation(emb.context_root, "val").classes == patterns.SEG_CLASSES
    assert CocoDetection(emb.coco_root, "val").num_classes == len(patterns.THING_CLASSES)


def test_damaged_dataset_metadata_is_one_clear_error(tmp_path):
    from icm_lib.errors import DamagedFileError

    emb = prepare_embedded(tmp_path, image_size=64, n_train=2, n_val=2)
    meta = emb.root / "meta.json"
    meta.write_bytes(meta.read_bytes()[:20])  # cut by a full disk
    with pytest.raises(DamagedFileError, match="regenerate"):
        prepare_embedded(tmp_path, image_size=64, n_train=2, n_val=2)
