import time
from pathlib import Path

import pytest
import torch
from conftest import DEVICES

from icm_lib.errors import WeightsUnavailableError
from icm_lib.files import load_checkpoint
from icm_lib.recognition import FrozenDetector, FrozenSegmenter, build_detector, build_segmenter
from icm_lib.recognition.evaluation import evaluate_segmentation
from icm_lib.recognition.training import RandomCrops

SMALL = dict(
    rpn_pre_nms_top_n_train=100,
    rpn_post_nms_top_n_train=50,
    rpn_pre_nms_top_n_test=50,
    rpn_post_nms_top_n_test=50,
    rpn_batch_size_per_image=32,
    box_batch_size_per_image=32,
    box_head_dim=64,
    anchor_sizes=(16, 32, 64, 128, 256),
)


@pytest.fixture(scope="module")
def detector():
    torch.manual_seed(0)
    return FrozenDetector(build_detector(6, "resnet18", **SMALL), score_threshold=0.0)


@pytest.fixture(scope="module")
def segmenter():
    torch.manual_seed(0)
    return FrozenSegmenter(build_segmenter(11, "resnet18"), 11)


def _bn_stats(model):
    return [
        m.running_mean.clone()
        for m in model.modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
    ]


@pytest.mark.parametrize("which", ["detector", "segmenter"])
def test_task_loss_reaches_pixels_not_weights_and_keeps_bn_frozen(which, request):
    task = request.getfixturevalue(which)
    x = torch.rand(2, 3, 64, 64)
    targets = task.pseudo_labels(x)
    before = _bn_stats(task.model)
    xr = x.clone().requires_grad_(True)
    losses = task.task_loss(xr, targets)
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"])
    assert xr.grad is not None and xr.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in task.model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, _bn_stats(task.model)))
    assert not task.model.training


def test_detection_pseudo_labels_respect_the_threshold(detector):
    x = torch.rand(2, 3, 64, 64)
    raw = detector.predict(x)
    detector.score_threshold = 0.5
    try:
        kept = detector.pseudo_labels(x)
    finally:
        detector.score_threshold = 0.0
    for r, k in zip(raw, kept):
        assert len(k["boxes"]) == int((r["scores"] >= 0.5).sum())
        assert set(k) == {"boxes", "labels"}


def test_detector_keeps_the_image_geometry(detector):
    """No internal resize: the machine sees exactly the decoded pixels, boxes in their frame."""
    x = torch.rand(1, 3, 64, 128)
    images, _ = detector.model.transform(list(x))
    assert tuple(images.image_sizes[0]) == (64, 128)


def test_segmenter_label_map_and_evaluation(segmenter, scenes):
    from icm_lib.data.context import PascalContextSegmentation

    val = PascalContextSegmentation(scenes.context_root, "val", max_images=2)
    labels = segmenter.pseudo_labels(torch.rand(2, 3, 64, 64))
    assert labels.shape == (2, 64, 64) and labels.max() < 11
    out = evaluate_segmentation(segmenter, val, torch.device("cpu"))
    assert 0 <= out["miou"] <= 1 and 0 <= out["pixel_acc"] <= 1


def test_random_crops_keep_boxes_inside(scenes):
    from icm_lib.data.coco import CocoDetection

    crops = RandomCrops(CocoDetection(scenes.coco_root, "train"), 64, seed=0)
    for i in range(len(crops)):
        image, target = crops[i]
        assert image.shape == (3, 64, 64)
        b = target["boxes"]
        assert ((b >= 0) & (b <= 64)).all() and (b[:, 2] > b[:, 0]).all()
        assert len(target["labels"]) == len(b)


def test_random_crops_read_each_image_once_and_crop_as_if_read_every_time(scenes):
    from icm_lib.data.coco import CocoDetection
    from icm_lib.data.context import PascalContextSegmentation

    for base in (
        CocoDetection(scenes.coco_root, "train"),
        PascalContextSegmentation(scenes.context_root, "train"),
    ):
        reads = []

        class Counted(torch.utils.data.Dataset):
            def __len__(self):
                return len(base)

            def __getitem__(self, idx):
                reads.append(idx)
                return base[idx]

        cached, fresh = RandomCrops(Counted(), 64, seed=3), RandomCrops(base, 64, 3, cache_items=0)
        for epoch in range(2):  # a new epoch crops the same items elsewhere
            cached.epoch = fresh.epoch = epoch
            for i in range(len(base)):
                (a, ta), (b, tb) = cached[i], fresh[i]
                assert torch.equal(a, b)
                if isinstance(ta, dict):
                    assert torch.equal(ta["boxes"], tb["boxes"])
                    assert torch.equal(ta["labels"], tb["labels"])
                else:
                    assert torch.equal(ta, tb)
        assert sorted(reads) == list(range(len(base)))  # each item read once over both epochs


def test_a_crop_schedule_trains_the_first_steps_on_smaller_crops(scenes):
    """``RecognitionConfig.crop_schedule``: each side for its share of the steps, then the
    profile's crop; without one the stream is the one of before (the same batches); a stream
    started again draws the same batches (a resumed training); a schedule keys the recognizers,
    an empty one does not, and a bad one is refused."""
    from icm_lib.data.context import PascalContextSegmentation
    from icm_lib.profiles import RecognitionConfig
    from icm_lib.recognition.training import crop_at, training_batches

    assert [crop_at(i, 10, 128, ((64, 0.3), (96, 0.2))) for i in range(10)] == [64] * 3 + [
        96
    ] * 2 + [128] * 5
    assert [crop_at(i, 5, 128, ((64, 0.5),)) for i in range(5)] == [64, 64, 64, 128, 128]
    assert crop_at(0, 5, 128) == 128

    base = PascalContextSegmentation(scenes.context_root, "train", max_images=4)

    def stream(crop_of=None, n=6):
        batches = training_batches(base, 2, 64, 3, crop_of=crop_of)
        return [next(batches) for _ in range(n)]  # 6 batches of 2 crops: three epochs

    def before(n=6):  # the stream as it was drawn before the schedule: whole epochs of a loader
        crops = RandomCrops(base, 64, 3)
        loader = torch.utils.data.DataLoader(
            crops, batch_size=2, shuffle=True, drop_last=True,
            generator=torch.Generator().manual_seed(3),
        )  # fmt: skip
        out = []
        while len(out) < n:
            out += list(loader)
            crops.epoch += 1
        return out[:n]

    plain, fixed = stream(), stream(lambda i: 64)
    for other in (fixed, before()):
        assert all(
            torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(plain, other)
        )
    scheduled = stream(lambda i: crop_at(i, 6, 64, ((32, 0.5),)))
    assert [b[0].shape[-1] for b in scheduled] == [32, 32, 32, 64, 64, 64]
    assert [b[1].shape[-1] for b in scheduled] == [32, 32, 32, 64, 64, 64]
    again = stream(lambda i: crop_at(i, 6, 64, ((32, 0.5),)))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(scheduled, again))

    cfg = RecognitionConfig(**SMALL)
    assert "crop_schedule" not in cfg.key()
    assert RecognitionConfig(**SMALL, crop_schedule=((64, 0.5),)).key()["crop_schedule"] == (
        (64, 0.5),
    )
    for bad in (((48, 0.5),), ((64, 0.0),), ((64, 0.6), (96, 0.5)), ((0, 0.5),), ((64,),)):
        with pytest.raises(ValueError, match="crop_schedule"):
            RecognitionConfig(crop_schedule=bad)


@pytest.mark.parametrize(
    "build",
    [
        lambda: build_detector(6, "resnet18", pretrained=True),
        lambda: build_detector(90, "resnet50", pretrained=True),
        lambda: build_segmenter(11, "resnet18", pretrained=True),
    ],
)
def test_pretrained_offline_fails_fast(build, monkeypatch, tmp_path):
    monkeypatch.setenv("ICM_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    t0 = time.perf_counter()
    with pytest.raises(WeightsUnavailableError):
        build()
    assert time.perf_counter() - t0 < 10


def test_recognizers_are_a_function_of_the_seed_alone(scenes, tmp_path):
    """Built after seeding: whatever the global random state before (two fresh cache folders,
    other work done first), the same seed gives the same untrained weights."""
    from icm_lib.data import CocoDetection, PascalContextSegmentation
    from icm_lib.profiles import RecognitionConfig
    from icm_lib.recognition.training import load_or_train_detector, load_or_train_segmenter

    cfg = RecognitionConfig(train_steps=0, **SMALL)
    det, seg = [], []
    for i in range(2):
        torch.manual_seed(100 + i)  # a different global state each time
        coco = [CocoDetection(scenes.coco_root, s, max_images=2) for s in ("train", "val")]
        ctx = [
            PascalContextSegmentation(scenes.context_root, s, max_images=2)
            for s in ("train", "val")
        ]
        det.append(
            load_or_train_detector(
                cfg, *coco, 64, tmp_path / f"a{i}", "cpu", seed=3, progress=False
            )[0].model.state_dict()
        )
        seg.append(
            load_or_train_segmenter(
                cfg, *ctx, 64, tmp_path / f"a{i}", "cpu", seed=3, progress=False
            )[0].model.state_dict()
        )
    for a, b in ((det[0], det[1]), (seg[0], seg[1])):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("task, schedule", [("det", ()), ("seg", ((32, 0.6),))])
def test_a_stopped_recognizer_training_resumes_to_the_same_weights(
    scenes, tmp_path, monkeypatch, task, schedule, device
):
    """Stopped after its checkpoint at step 2 of 5 and started again, training ends on the weights
    of an uninterrupted run (with a resolution schedule too, whose 32-px steps 0-2 the stop
    cuts); the val curve covers every ``eval_every`` step and the end; the other task's step
    count does not key this recognizer. On CUDA the samplers and dropout draw from the device's
    generator, which the checkpoint keeps too; its non-deterministic kernels (RoI align's
    backward) leave float rounding apart, where another generator's draws would sample other
    anchors, RoIs and masks from step 2 on."""
    from icm_lib.data import CocoDetection, PascalContextSegmentation
    from icm_lib.profiles import RecognitionConfig
    from icm_lib.recognition import training

    if task == "det":
        sets = [CocoDetection(scenes.coco_root, s, max_images=4) for s in ("train", "val")]
        load = training.load_or_train_detector
    else:
        sets = [
            PascalContextSegmentation(scenes.context_root, s, max_images=4)
            for s in ("train", "val")
        ]
        load = training.load_or_train_segmenter
    other = "seg" if task == "det" else "det"
    cfg = RecognitionConfig(
        train_steps=1,
        batch_size=2,
        checkpoint_every=2,
        eval_every=2,
        crop_schedule=schedule,
        **SMALL,
        **{f"{task}_train_steps": 5, f"{other}_train_steps": 7},
    )

    def run(folder, cfg=cfg):
        machine, report = load(cfg, *sets, 64, tmp_path / folder, device, seed=1, progress=False)
        return {k: v.cpu() for k, v in machine.model.state_dict().items()}, report

    whole, report = run("whole")
    assert [c["step"] for c in report["val_curve"]] == [2, 4, 5]
    assert report["train_steps"] == 5 and len(report["loss_log"]) == 5

    opt_cls = torch.optim.SGD if task == "det" else torch.optim.Adam
    real_step = opt_cls.step
    calls = {"n": 0}

    def stop_at_third(self, *a, **k):  # a stopped session: dies during step 3
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    monkeypatch.setattr(opt_cls, "step", stop_at_third)
    ticks = iter(range(0, 10_000, 500))  # a clock on which the stopped session took 500 s
    monkeypatch.setattr(training, "active_seconds", lambda: float(next(ticks)))
    with pytest.raises(KeyboardInterrupt):
        run("stopped")
    monkeypatch.undo()
    (partial,) = (tmp_path / "stopped").glob("*.partial")
    assert load_checkpoint(partial)["seconds"] == 500
    resumed, report2 = run("stopped")
    assert not list((tmp_path / "stopped").glob("*.partial"))
    assert whole.keys() == resumed.keys()
    if device == "cpu":
        assert all(torch.equal(whole[k], resumed[k]) for k in whole)
        assert report2["loss_log"] == report["loss_log"]
    else:
        for k in whole:
            torch.testing.assert_close(resumed[k], whole[k], rtol=1e-3, atol=1e-5)
        assert report2["loss_log"] == pytest.approx(report["loss_log"], rel=1e-4)
    # the training seconds count every session's: the stopped one's 500 and the resumed one's
    assert report["train_seconds"] < 100 and 500 < report2["train_seconds"] < 600
    # the other task's steps are not part of this recognizer's key
    _, again = run(
        "whole",
        cfg=RecognitionConfig(
            train_steps=1,
            batch_size=2,
            crop_schedule=schedule,
            **SMALL,
            **{f"{task}_train_steps": 5, f"{other}_train_steps": 3},
        ),
    )
    assert again["cached"]


@pytest.mark.parametrize(
    "task, precision",
    [
        ("det", "bfloat16"),
        ("det", "bfloat16-backbone"),
        ("det", "bfloat16-features"),
        ("seg", "bfloat16"),
    ],
)
def test_bfloat16_recognizer_training_stays_close_to_float32(
    scenes, tmp_path, monkeypatch, task, precision
):
    """``<task>_train_precision="bfloat16"`` trains under bfloat16 autocast with float32 weights: from
    the same weights and batch its step is not float32's (the losses differ) but close to it:
    loss within 5 % (segmentation) / 15 % (detection: the RoIs it samples depend on the boxes
    it predicts), gradient cosine > 0.9 (detection, 0.95 measured) / 0.7 (segmentation, 0.81).
    It is its own cache entry (the other task's precision does not key it); the float32 key is
    the one of before the fields. The weights are
    those of 8 float32 steps: this early, on a batch of two 64-pixel crops, the segmenter's
    gradient is ill-conditioned (cosine 0.70 at random weights, 0.89 on 8 x 128-pixel crops);
    on the trained `cpu` segmenter and 8 real crops it is 1.000, and what the precision costs a
    trained recognizer is measured in README "Recognizers trained in bfloat16".
    The detector's mixed precisions: ``"bfloat16-backbone"`` runs the backbone in bfloat16 and
    the RPN's head receives float32 features; ``"bfloat16-features"`` runs the RPN's head and
    the RoI box head in bfloat16 too, while the box predictor (the regression) computes in
    float32; afterwards every module is itself again."""
    import dataclasses

    from icm_lib.data import CocoDetection, PascalContextSegmentation
    from icm_lib.profiles import RecognitionConfig
    from icm_lib.recognition import build_recognizer, training

    if task == "det":
        sets = [CocoDetection(scenes.coco_root, s, max_images=4) for s in ("train", "val")]
        load, train, opt_cls = (
            training.load_or_train_detector,
            training.train_detector,
            torch.optim.SGD,
        )
    else:
        sets = [
            PascalContextSegmentation(scenes.context_root, s, max_images=4)
            for s in ("train", "val")
        ]
        load, train, opt_cls = (
            training.load_or_train_segmenter,
            training.train_segmenter,
            torch.optim.Adam,
        )
    fp32 = RecognitionConfig(train_steps=8, batch_size=2, **SMALL)
    other = "seg" if task == "det" else "det"
    bf16 = dataclasses.replace(fp32, **{f"{task}_train_precision": precision})
    assert not any("precision" in k for k in fp32.key())
    assert bf16.key()[f"{task}_train_precision"] == precision
    with pytest.raises(ValueError, match="train_precision"):
        RecognitionConfig(**{f"{task}_train_precision": "float16"})
    with pytest.raises(ValueError, match="torchvision detector"):
        RecognitionConfig(seg_train_precision="bfloat16-features")
    with pytest.raises(ValueError, match="torchvision detector"):
        RecognitionConfig(det_backend="detectron2", det_train_precision="bfloat16-backbone")
    warm, ra = load(fp32, *sets, 64, tmp_path, "cpu", seed=2, progress=False)
    # its own cache entry: one bfloat16 step is enough to show it (a CPU without avx512_bf16
    # emulates bfloat16, several times slower than float32)
    one = {"train_steps": 1}
    machine, rb = load(dataclasses.replace(bf16, **one), *sets, 64, tmp_path, "cpu", seed=2,
                       progress=False)  # fmt: skip
    twin = load(dataclasses.replace(fp32, **one), *sets, 64, tmp_path, "cpu", seed=2,
                progress=False)[1]  # fmt: skip
    assert len({Path(r["path"]) for r in (ra, rb, twin)}) == 3 and not rb["cached"]
    other_bf16 = dataclasses.replace(fp32, **{f"{other}_train_precision": "bfloat16"})
    assert load(other_bf16, *sets, 64, tmp_path, "cpu", seed=2, progress=False)[1]["cached"]
    assert all(v.dtype == torch.float32 for v in machine.model.parameters())

    grads = []
    real_step = opt_cls.step

    def recording_step(self, *a, **k):  # the gradient the step takes
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        grads.append(torch.cat([p.grad.flatten() for p in params]).clone())
        return real_step(self, *a, **k)

    monkeypatch.setattr(opt_cls, "step", recording_step)
    losses, dtypes = [], {}
    for cfg in (fp32, bf16):  # one more step from the warm weights, in each precision
        model = build_recognizer(task, cfg, sets[0].num_classes)
        model.load_state_dict(warm.model.state_dict())
        if task == "det":  # what the backbone's first conv, the RPN's head, the box predictor
            for name, m in (
                ("conv1", model.backbone.body.conv1),
                ("rpn", model.rpn.head.conv),
                ("box_head", model.roi_heads.box_head.fc6),
                ("predictor", model.roi_heads.box_predictor.bbox_pred),
            ):
                hook = lambda m, i, o, name=name: dtypes.update({name: (i[0].dtype, o.dtype)})  # noqa: E731
                m.register_forward_hook(hook)
        cfg = dataclasses.replace(cfg, train_steps=1)
        log, _, _ = train(model, sets[0], cfg, 64, "cpu", seed=5, progress=False)
        losses.append(log[0])
        if task == "det":  # every module is itself again
            for m in (model.backbone, model.rpn.head, model.roi_heads.box_head):
                assert "forward" not in vars(m)
    bf, fp = torch.bfloat16, torch.float32
    if precision == "bfloat16-backbone":
        assert dtypes["conv1"][1] == bf and dtypes["rpn"] == (fp, fp)
        assert dtypes["box_head"][1] == dtypes["predictor"][1] == fp
    elif precision == "bfloat16-features":
        assert dtypes["conv1"][1] == dtypes["rpn"][1] == dtypes["box_head"][1] == bf
        assert dtypes["predictor"] == (fp, fp)
    elif task == "det":
        assert dtypes["conv1"][1] == dtypes["rpn"][1] == dtypes["predictor"][1] == bf
    assert losses[1] != losses[0]  # autocast ran
    assert losses[1] == pytest.approx(losses[0], rel=0.15 if task == "det" else 0.05)
    cosine = torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0)
    assert cosine > (0.9 if task == "det" else 0.7)


def test_every_mixed_precision_names_its_modules():
    """The profile's mixed precisions and the modules training runs in bfloat16 for each agree."""
    from icm_lib.profiles import MIXED_PRECISIONS, TRAIN_PRECISIONS
    from icm_lib.recognition.training import MIXED_MODULES

    assert set(MIXED_PRECISIONS) == set(MIXED_MODULES) <= set(TRAIN_PRECISIONS)


def test_where_bfloat16_is_emulated_the_notebooks_and_experiments_train_in_float32(
    smoke_env, monkeypatch, tmp_path
):
    """A bfloat16 recognizer asked for on a device that only emulates bfloat16: the notebooks'
    ``setup`` and ``Experiment.prepare`` hand on the profile with float32 recognizers (its
    keys), so the smoke world's cached float32 recognizers are loaded, nothing is trained."""
    import icm_lib.runtime as runtime
    from icm_lib.experiment import Experiment
    from icm_lib.notebook import setup
    from icm_lib.profiles import get_profile

    monkeypatch.setattr(runtime, "bf16_hardware", lambda device=None: "none (emulated)")
    monkeypatch.setenv("ICM_OVERRIDES", "recognition__seg_train_precision=bfloat16")
    S = setup("smoke", 0, str(tmp_path / "data"), str(tmp_path / "out"), "cpu")
    assert S.profile.recognition.seg_train_precision == "float32"
    data_dir, cache = smoke_env.cache_dir.parent, smoke_env.cache_dir
    files = sorted(cache.glob("segmenter-*"))
    asked = get_profile("smoke", recognition__seg_train_precision="bfloat16")
    exp = Experiment.prepare(asked, data_dir, torch.device("cpu"), progress=False, tasks=["seg"])
    assert exp.profile.recognition.seg_train_precision == "float32"
    assert exp.reports["seg"]["cached"]
    assert sorted(cache.glob("segmenter-*")) == files
    monkeypatch.setattr(runtime, "bf16_hardware", lambda device=None: "avx512_bf16")
    native = setup("smoke", 0, str(tmp_path / "d"), str(tmp_path / "o"), "cpu").profile
    assert native.recognition.seg_train_precision == "bfloat16"
    assert native.recognition.key() == asked.recognition.key()
