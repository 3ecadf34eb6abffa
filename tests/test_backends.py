"""The recognizer backends: one contract for torchvision, detectron2, smp and MMSegmentation.

Every backend is a frozen machine (``FrozenDetector`` / ``FrozenSegmenter`` over the backend's
model): pseudo-labels from the original image, a task loss differentiable with respect to the
image with every weight (and BatchNorm statistic) unchanged, predictions for the metrics, and the
aux-task feature. detectron2 and MMSegmentation are optional: their tests skip, saying why, where
they are not installed (``.ci/run`` installs them from ``../shared/wheels`` when that exists).
"""

import dataclasses
import importlib.util
import math
import sys

import numpy as np
import pytest
import torch

from icm_lib.aux_branch import build_branch
from icm_lib.codec import build_codec
from icm_lib.data.coco import CocoDetection
from icm_lib.data.context import IGNORE_INDEX, PascalContextSegmentation
from icm_lib.data.sampler import CropSampler
from icm_lib.errors import BackendUnavailableError, ICMError, WeightsUnavailableError
from icm_lib.losses import ICMObjective
from icm_lib.metrics import ConfusionMatrix, detection_map
from icm_lib.profiles import RecognitionConfig, TrainConfig
from icm_lib.pseudo_labels import CachedMachine
from icm_lib.recognition import FrozenDetector, FrozenSegmenter, build_recognizer
from icm_lib.recognition.common import captured_output
from icm_lib.trainer import train_codec

HAVE = {
    "torchvision": True,
    "smp": True,
    "detectron2": importlib.util.find_spec("detectron2") is not None,
    "mmseg": importlib.util.find_spec("mmseg") is not None,
}
INSTALL = (
    "is not installed: `make install` installs it from ../shared/wheels when that folder exists, "
    'else README "Recognition backends"'
)


def needs(backend):
    return pytest.mark.skipif(not HAVE[backend], reason=f"{backend} {INSTALL}")


#: small configs of each library (the paper's own are built in their own tests below)
SMALL = RecognitionConfig(
    det_config="COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml",
    seg_config="deeplabv3plus_r18-d8_4xb2-80k_cityscapes-512x1024",
    box_head_dim=256,
)
DET_BACKENDS = [pytest.param(b, marks=needs(b)) for b in ("torchvision", "detectron2")]
SEG_BACKENDS = [pytest.param(b, marks=needs(b)) for b in ("smp", "mmseg")]
N_DET, N_SEG = 6, 11


def det_machine(backend, cfg=SMALL, classes=N_DET):
    torch.manual_seed(0)
    cfg = dataclasses.replace(cfg, det_backend=backend)
    # random weights give no detection above 0.5: keep every detection
    return FrozenDetector(build_recognizer("det", cfg, classes), score_threshold=0.0)


def seg_machine(backend, cfg=SMALL, classes=N_SEG):
    torch.manual_seed(0)
    cfg = dataclasses.replace(cfg, seg_backend=backend)
    return FrozenSegmenter(build_recognizer("seg", cfg, classes), classes)


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def det_batch(scenes, n=2, size=64):
    data = CocoDetection(scenes.coco_root, "train")
    images = torch.stack([data[i][0][:, :size, :size] for i in range(n)])
    return images


@pytest.mark.parametrize("backend", SEG_BACKENDS)
def test_cross_entropy_normalisation_per_backend(backend, scenes):
    """smp divides the cross-entropy by the valid pixels, MMSegmentation by all of them (ignored
    ones included). Split one label map into a left part (a quarter of the columns) and the rest,
    each with the other part ignored; with the same dropout draw (same seed) the two losses
    recombine into the whole one as the valid-pixel mean (q·l1 + (1-q)·l2) or the all-pixel sum
    (l1 + l2). Pseudo-labels, the targets of Eq. 4-6, have no ignored pixel: there both are the
    mean over all pixels, so a λ means the same for both backends."""
    machine = seg_machine(backend)
    data = PascalContextSegmentation(scenes.context_root, "train")
    images = torch.stack([data[i][0][:, :64, :64] for i in range(2)])
    labels = machine.pseudo_labels(images)
    assert not (labels == IGNORE_INDEX).any()

    def loss(target):
        torch.manual_seed(0)
        return float(machine.task_loss(images, target)["loss"])

    left, rest = labels.clone(), labels.clone()
    left[..., 16:] = IGNORE_INDEX
    rest[..., :16] = IGNORE_INDEX
    whole, l1, l2 = loss(labels), loss(left), loss(rest)
    valid_mean, all_pixel_sum = 0.25 * l1 + 0.75 * l2, l1 + l2
    if backend == "smp":
        assert valid_mean == pytest.approx(whole, rel=1e-4)
        assert all_pixel_sum != pytest.approx(whole, rel=1e-2)
    else:
        assert all_pixel_sum == pytest.approx(whole, rel=1e-4)
        assert valid_mean != pytest.approx(whole, rel=1e-2)


@pytest.mark.parametrize("backend", DET_BACKENDS)
def test_detector_contract(backend, scenes, tmp_path):
    machine = det_machine(backend)
    images = det_batch(scenes)
    before = state(machine.model)
    identity = CachedMachine(machine, tmp_path).folder  # the pseudo-label cache's key
    labels = machine.pseudo_labels(images)
    assert len(labels) == 2
    for t in labels:
        assert t["boxes"].dtype == torch.float32 and t["boxes"].shape[1:] == (4,)
        assert t["labels"].dtype == torch.int64 and len(t["labels"]) == len(t["boxes"])
        assert (t["boxes"][:, 2:] >= t["boxes"][:, :2]).all()
        assert ((t["labels"] >= 1) & (t["labels"] <= N_DET)).all()  # the project's 1..C
    assert sum(len(t["labels"]) for t in labels) > 0
    x = images.clone().requires_grad_(True)
    opt = torch.optim.SGD([x], lr=0.1)
    losses = machine.task_loss(x, labels)
    assert set(losses) > {"loss"} and math.isfinite(losses["loss"].item())
    losses["loss"].backward()
    assert x.grad is not None and x.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()
    opt.step()
    after = state(machine.model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN statistics
    assert not any(p.requires_grad for p in machine.model.parameters())
    with captured_output(machine.aux_task_layer) as feature:
        preds = machine.predict(images)
    assert {"boxes", "scores", "labels"} <= set(preds[0])
    # used, the recognizer keeps its identity: every run finds the labels the first one stored
    assert CachedMachine(machine, tmp_path).folder == identity
    # the aux-task feature: the ResNet's conv2 stage, stride 4
    assert feature["out"].shape[1:] == (machine.aux_task_channels, 16, 16)


@pytest.mark.parametrize("backend", SEG_BACKENDS)
def test_segmenter_contract(backend, scenes, tmp_path):
    machine = seg_machine(backend)
    data = PascalContextSegmentation(scenes.context_root, "train")
    images = torch.stack([data[i][0][:, :64, :64] for i in range(2)])
    before = state(machine.model)
    identity = CachedMachine(machine, tmp_path).folder
    with captured_output(machine.aux_task_layer) as feature:
        labels = machine.pseudo_labels(images)
    assert feature["out"].shape[:2] == (2, machine.aux_task_channels)  # conv4 stage
    assert labels.shape == (2, 64, 64) and labels.dtype == torch.int64
    assert ((labels >= 0) & (labels < N_SEG)).all()
    x = images.clone().requires_grad_(True)
    losses = machine.task_loss(x, labels)
    assert math.isfinite(losses["loss"].item())
    losses["loss"].backward()
    assert x.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()
    torch.optim.SGD([x], lr=0.1).step()
    after = state(machine.model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(p.requires_grad for p in machine.model.parameters())
    # ignored pixels carry no loss
    ignored = torch.full_like(labels, IGNORE_INDEX)
    ignored[:, :8, :8] = labels[:, :8, :8]
    assert math.isfinite(float(machine.task_loss(images, ignored)["loss"]))
    assert CachedMachine(machine, tmp_path).folder == identity  # used, the same cache key


@needs("detectron2")
def test_detectron2_sees_what_its_own_predictor_feeds_it(scenes):
    """RGB in [0, 1] through the adapter == detectron2's ``DefaultPredictor`` input (a BGR uint8
    image as float, channel order per ``INPUT.FORMAT``), at the same size."""
    machine = det_machine("detectron2")
    rgb = (det_batch(scenes, 1)[0] * 255).round() / 255
    bgr_uint8 = (rgb.permute(1, 2, 0).flip(-1) * 255).round().to(torch.uint8).numpy()
    # what DefaultPredictor.__call__ does, without its resize (INPUT.FORMAT is BGR in the zoo)
    image = torch.as_tensor(bgr_uint8.astype("float32").transpose(2, 0, 1))
    net = machine.model.net
    with torch.no_grad():
        own = net([{"image": image, "height": 64, "width": 64}])[0]["instances"]
    ours = machine.predict(rgb[None])[0]
    assert len(own) > 0 and len(ours["boxes"]) == len(own)
    assert torch.allclose(ours["boxes"], own.pred_boxes.tensor, atol=1e-4)
    assert torch.equal(ours["labels"], own.pred_classes + 1)


@needs("mmseg")
def test_mmseg_sees_what_its_own_preprocessor_feeds_it(scenes):
    """RGB in [0, 1] through the adapter == MMSegmentation's ``SegDataPreProcessor`` applied to
    the BGR uint8 image mmcv would load (``bgr_to_rgb``, mean/std)."""
    from mmseg.structures import SegDataSample

    machine = seg_machine("mmseg")
    rgb = (det_batch(scenes, 1)[0] * 255).round() / 255
    bgr = (rgb.flip(0) * 255).round().to(torch.uint8)
    sample = SegDataSample(metainfo={"img_shape": (64, 64), "ori_shape": (64, 64)})
    pre = machine.model.net.data_preprocessor
    theirs = pre({"inputs": [bgr], "data_samples": [sample]}, False)["inputs"]
    ours = machine.model.normalize(rgb[None])
    assert torch.allclose(ours, theirs, atol=1e-4)


def perturbed_predictions(targets, seed=0):
    """Ground truth with jittered boxes, random scores and false positives: a non-trivial mAP."""
    g = torch.Generator().manual_seed(seed)
    preds = []
    for t in targets:
        boxes = t["boxes"] + torch.randn(t["boxes"].shape, generator=g) * 3
        extra = torch.rand(3, 2, generator=g) * 100
        boxes = torch.cat([boxes, torch.cat([extra, extra + 20], 1)])
        labels = torch.cat([t["labels"], torch.randint(1, N_DET + 1, (3,), generator=g)])
        preds.append(
            {"boxes": boxes, "scores": torch.rand(len(boxes), generator=g), "labels": labels}
        )
    return preds


@needs("detectron2")
def test_our_map_agrees_with_detectron2_coco_evaluator(scenes, tmp_path):
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_instances
    from detectron2.evaluation import COCOEvaluator
    from detectron2.structures import Boxes, Instances

    val = CocoDetection(scenes.coco_root, "val")
    items = [val[i] for i in range(len(val))]
    targets = [t for _, t in items]
    preds = perturbed_predictions(targets)
    ours = detection_map(preds, targets)
    name = f"icm_scenes_val_{id(tmp_path)}"
    ann = scenes.coco_root / "annotations" / "instances_val2017.json"
    register_coco_instances(name, {}, str(ann), str(scenes.coco_root / "val2017"))
    DatasetCatalog.get(name)  # sets the category-id <-> contiguous mapping
    evaluator = COCOEvaluator(name, tasks=("bbox",), output_dir=str(tmp_path))
    evaluator.reset()
    for (image, target), pred in zip(items, preds):
        inst = Instances(image.shape[-2:])
        inst.pred_boxes = Boxes(pred["boxes"])
        inst.scores = pred["scores"]
        inst.pred_classes = pred["labels"] - 1  # detectron2's contiguous 0..C-1
        evaluator.process([{"image_id": target["image_id"]}], [{"instances": inst}])
    theirs = evaluator.evaluate()["bbox"]
    assert 0.05 < ours["map"] < 0.95  # a non-trivial operating point
    assert ours["map"] == pytest.approx(theirs["AP"] / 100, abs=1e-6)
    assert ours["map_50"] == pytest.approx(theirs["AP50"] / 100, abs=1e-6)


@needs("mmseg")
def test_our_miou_agrees_with_mmsegmentation_iou_metric(scenes):
    from mmseg.evaluation import IoUMetric

    data = PascalContextSegmentation(scenes.context_root, "val")
    g = torch.Generator().manual_seed(0)
    cm = ConfusionMatrix(data.num_classes, IGNORE_INDEX)
    areas = []
    for i in range(len(data)):
        _, label = data[i]
        pred = label.clone()
        noise = torch.rand(label.shape, generator=g) < 0.3
        pred[noise] = torch.randint(0, data.num_classes, (int(noise.sum()),), generator=g)
        pred[pred == IGNORE_INDEX] = 0
        cm.update(pred, label)
        areas.append(IoUMetric.intersect_and_union(pred, label, data.num_classes, IGNORE_INDEX))
    totals = [sum(a[k] for a in areas) for k in range(4)]
    theirs = IoUMetric.total_area_to_metrics(*totals, metrics=["mIoU"])
    assert 0.1 < cm.miou() < 0.99
    # MMSegmentation accumulates the areas in float32: agreement to its precision
    assert cm.miou() == pytest.approx(float(np.nanmean(theirs["IoU"])), abs=1e-6)
    assert cm.pixel_accuracy() == pytest.approx(float(theirs["aAcc"]), abs=1e-6)


def one_icm_step(machine, task, variant, scenes, tmp_path, device="cpu", crop=64):
    torch.manual_seed(0)
    codec = build_codec("bmshj2018-hyperprior", N=32, M=48)
    classes = N_DET if task == "det" else N_SEG
    branch = build_branch(
        variant, task, codec, classes, 0.125, SMALL.sampling(), machine=machine.to(device)
    )
    objective = ICMObjective(machine, 0.5, 0.1, 0.0)
    cfg = TrainConfig(steps=1, batch_size=2, crop=crop, lr=1e-4, log_every=1, checkpoint_every=1)
    data = (
        CocoDetection(scenes.coco_root, "train")
        if task == "det"
        else PascalContextSegmentation(scenes.context_root, "train")
    )
    before = state(machine.model)
    g_a = [p.detach().clone() for p in codec.model.g_a.parameters()]
    trained, log = train_codec(
        codec,
        CropSampler(data, crop, 2, 0),
        cfg,
        objective,
        tmp_path,
        torch.device(device),
        progress=False,
        branch=branch,
    )
    assert len(log) == 1 and all(math.isfinite(v) for k, v in log[0].items() if k.endswith("loss"))
    assert any(not torch.equal(a, b.cpu()) for a, b in zip(g_a, trained.model.g_a.parameters()))
    after = state(machine.model)
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("variant", ["baseline", "aux-enc", "aux-task"])
@pytest.mark.parametrize("backend", DET_BACKENDS)
def test_one_icm_step_with_every_detection_backend(backend, variant, scenes, tmp_path):
    one_icm_step(det_machine(backend), "det", variant, scenes, tmp_path)


@pytest.mark.parametrize("variant", ["baseline", "aux-enc", "aux-task"])
@pytest.mark.parametrize("backend", SEG_BACKENDS)
def test_one_icm_step_with_every_segmentation_backend(backend, variant, scenes, tmp_path):
    one_icm_step(seg_machine(backend), "seg", variant, scenes, tmp_path)


@pytest.mark.parametrize(
    "task,backend",
    [pytest.param("det", b, marks=needs(b)) for b in ("torchvision", "detectron2")]
    + [pytest.param("seg", b, marks=needs(b)) for b in ("smp", "mmseg")],
)
def test_every_backends_batch_norms_fold_and_its_task_loss_stays(task, backend, scenes):
    """``icm.fold_bn`` (part of ``--bf16``): each library's frozen batch norms fold into the
    convolutions before them (torchvision's and detectron2's ``FrozenBatchNorm2d``, detectron2's
    norm inside its ``Conv2d``, smp's ``BatchNorm2d``, MMEngine's ``_BatchNormXd``), and on real
    crops the twin's task loss and input gradient are the recognizer's up to float rounding;
    the recognizer keeps its own weights."""
    from icm_lib.recognition.folding import _loss_and_gradient

    machine = det_machine(backend) if task == "det" else seg_machine(backend)
    before = state(machine.model)
    norms = [type(m).__name__ for m in machine.model.modules() if "BatchNorm" in type(m).__name__]
    twin = machine.folded()
    left = [type(m).__name__ for m in twin.model.modules() if "BatchNorm" in type(m).__name__]
    assert twin is not machine and len(left) <= len(norms) // 10, (len(norms), left)
    if task == "det":
        images = det_batch(scenes, size=96)
    else:
        data = PascalContextSegmentation(scenes.context_root, "train")
        images = torch.stack([data[i][0][:, :96, :96] for i in range(2)])
    targets = machine.pseudo_labels(images)
    loss, grad = _loss_and_gradient(machine, images, targets)
    twin_loss, twin_grad = _loss_and_gradient(twin, images, targets)
    assert twin_loss == pytest.approx(loss, rel=1e-4)
    # a detector's sampled RoIs may follow a rounding-sized change of its scores (detectron2
    # here: cosine 1 - 1.2e-4); a segmenter's gradient is continuous in its weights
    cosine = float(torch.nn.functional.cosine_similarity(grad, twin_grad, dim=0))
    assert cosine > 1 - (1e-3 if task == "det" else 1e-5)
    after = state(machine.model)
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(
    "task, backend, classes, cache_env, name",
    [
        pytest.param(
            "det", "detectron2", 80, "FVCORE_CACHE", "detectron2", marks=needs("detectron2")
        ),
        pytest.param("seg", "mmseg", 59, "TORCH_HOME", "MMSegmentation", marks=needs("mmseg")),
    ],
)
def test_pretrained_offline_fails_fast(
    monkeypatch, tmp_path, task, backend, classes, cache_env, name
):
    """The paper's weights, offline and not cached: WeightsUnavailableError at once."""
    monkeypatch.setenv("ICM_OFFLINE", "1")
    monkeypatch.setenv(cache_env, str(tmp_path))  # an empty download cache
    field = "det_backend" if task == "det" else "seg_backend"
    cfg = RecognitionConfig(pretrained=True, **{field: backend})
    with pytest.raises(WeightsUnavailableError, match=name):
        build_recognizer(task, cfg, classes)


@pytest.mark.parametrize(
    "task, field, backend, module",
    [("det", "det_backend", "detectron2", "detectron2"), ("seg", "seg_backend", "mmseg", "mmseg")],
)
def test_a_missing_library_says_what_to_install(monkeypatch, task, field, backend, module):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    cfg = RecognitionConfig(**{field: backend})
    with pytest.raises(BackendUnavailableError, match="install") as info:
        build_recognizer(task, cfg, 80)
    assert isinstance(info.value, ICMError)


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="det_backend"):
        RecognitionConfig(det_backend="yolo")


def test_backend_choice_keys_the_cache_only_when_it_is_used():
    default = RecognitionConfig()
    assert "det_config" not in default.key() and "det_backend" not in default.key()
    d2 = RecognitionConfig(det_backend="detectron2")
    assert d2.key()["det_config"] == d2.det_config and "det_backbone" not in d2.key()
    assert RecognitionConfig(det_config="other.yaml").key() == default.key()


def test_icm_overrides_switch_a_notebooks_backend(monkeypatch, tmp_path):
    from icm_lib.notebook import setup
    from icm_lib.profiles import parse_overrides

    assert parse_overrides("data__n_train=8 recognition__det_config=a/b.yaml") == {
        "data__n_train": 8,
        "recognition__det_config": "a/b.yaml",
    }
    with pytest.raises(ValueError, match="look like"):
        parse_overrides("recognition__det_backend")
    monkeypatch.setenv("ICM_OVERRIDES", "recognition__det_backend=detectron2")
    s = setup("smoke", 0, str(tmp_path / "d"), str(tmp_path / "o"), "cpu")
    assert s.profile.recognition.det_backend == "detectron2"
    assert s.profile.recognition.seg_backend == "smp"


@needs("mmseg")
def test_our_pascal_context_labels_are_mmsegmentations_reduce_zero_label(scenes):
    """The label convention at the boundary: MMSegmentation's own ``LoadAnnotations`` with
    ``reduce_zero_label=True`` (as ``PascalContextDataset59``) reads the same label maps."""
    from mmseg.datasets.transforms import LoadAnnotations

    data = PascalContextSegmentation(scenes.context_root, "val")
    load = LoadAnnotations(reduce_zero_label=True)
    for i, stem in enumerate(data.ids):
        path = data.root / "SegmentationClassContext" / f"{stem}.png"
        theirs = load({"seg_map_path": str(path), "reduce_zero_label": True, "seg_fields": []})
        assert np.array_equal(data[i][1].numpy(), theirs["gt_seg_map"].astype(np.int64))
