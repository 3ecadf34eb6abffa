import dataclasses
import typing

import pytest
import torch

from icm_lib.errors import BDRateError, CheckpointError
from icm_lib.files import atomic_torch_save, atomic_write_json, load_checkpoint
from icm_lib.metrics import (
    ConfusionMatrix,
    bd_rate,
    bpp_from_likelihoods,
    detection_map,
    ms_ssim,
    psnr,
    rd_front,
)
from icm_lib.profiles import get_profile


def test_psnr_and_ms_ssim():
    x = torch.rand(2, 3, 64, 64)
    assert psnr(x, x + 0.1 * torch.ones_like(x)) == pytest.approx(20.0, abs=1e-4)
    assert ms_ssim(x, x) == pytest.approx(1.0, abs=1e-6)
    assert ms_ssim(x, torch.rand_like(x)) < 0.5


def test_bpp_from_likelihoods():
    lk = {"y": torch.full((2, 4, 2, 2), 0.5)}  # 1 bit per element, 16 per image
    assert float(bpp_from_likelihoods(lk, 16)) == pytest.approx(1.0)


def test_miou_known_values():
    cm = ConfusionMatrix(3)
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 0, 0]])
    cm.update(pred, target)
    # class 0: inter 1, union 3; class 1: inter 2, union 3; class 2: inter 1, union 2
    assert cm.miou() == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)


def test_detection_map_perfect_and_empty():
    gt = [
        {
            "boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 40, 40]]),
            "labels": torch.tensor([1, 2]),
        }
    ]
    perfect = [{**gt[0], "scores": torch.tensor([0.9, 0.8])}]
    assert detection_map(perfect, gt)["map"] == pytest.approx(1.0)
    none = [
        {
            "boxes": torch.zeros(0, 4),
            "scores": torch.zeros(0),
            "labels": torch.zeros(0, dtype=torch.long),
        }
    ]
    assert detection_map(none, gt)["map"] == pytest.approx(0.0)


def test_bd_rate_known_shift_and_errors():
    r = [0.1, 0.2, 0.4, 0.8]
    q = [0.3, 0.4, 0.5, 0.6]
    assert bd_rate(r, q, [v * 0.8 for v in r], q) == pytest.approx(-20.0, abs=1e-6)
    assert bd_rate(r, q, [v * 1.25 for v in r], q) == pytest.approx(25.0, abs=1e-6)
    with pytest.raises(BDRateError, match="increase"):
        bd_rate(r, [0.3, 0.5, 0.4, 0.6], r, q)
    with pytest.raises(BDRateError, match="overlap"):
        bd_rate(r, q, r, [0.7, 0.8, 0.9, 0.95])
    with pytest.raises(BDRateError, match="4"):
        bd_rate(r[:3], q[:3], r, q)


def test_bd_rate_on_the_operational_front_of_a_saturating_curve():
    # points are given out of rate order; the saturated tail (0.8 -> 0.45) and a tie are dominated
    assert rd_front([0.4, 0.1, 0.8, 0.2, 0.3], [0.5, 0.3, 0.45, 0.4, 0.4]) == [1, 3, 0]
    r, q = [0.1, 0.2, 0.4, 0.8], [0.3, 0.4, 0.5, 0.6]
    sat = [0.3, 0.4, 0.5, 0.45]  # saturates: strict BD-rate refuses it
    with pytest.raises(BDRateError, match="increase"):
        bd_rate(r, q, [v * 0.8 for v in r], sat)
    # on the fronts, 20 % fewer bits over the common quality range 0.3..0.5 is -20 %
    assert bd_rate(r, q, [v * 0.8 for v in r], sat, front=True) == pytest.approx(-20.0, abs=1e-6)
    # a monotonic pair gives the same as the strict estimator (a pure rate shift is exact in both)
    assert bd_rate(r, q, [v * 1.25 for v in r], q, front=True) == pytest.approx(25.0, abs=1e-6)
    with pytest.raises(BDRateError, match="2 .* on its front"):
        bd_rate(r, q, r, [0.6, 0.5, 0.4, 0.3], front=True)  # only the cheapest point survives
    with pytest.raises(BDRateError, match="non-finite"):
        bd_rate(r, q, r, [0.3, float("nan"), 0.5, 0.6], front=True)


def test_atomic_checkpoint_and_truncation(tmp_path):
    path = tmp_path / "ckpt.pt"
    atomic_torch_save({"w": torch.arange(5), "step": 3}, path)
    assert load_checkpoint(path)["step"] == 3
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(CheckpointError, match="delete it"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(TypeError):
        atomic_write_json(tmp_path / "x.json", {"bad": object()})
    assert list(tmp_path.iterdir()) == []


def test_profiles_and_overrides():
    p = get_profile("cpu", data__n_train=10, codec__name="mbt2018-mean")
    assert p.data.n_train == 10 and p.codec.name == "mbt2018-mean"
    assert get_profile("paper").codec.name == "cheng2020-attn"
    with pytest.raises(ValueError):
        get_profile("gpu")
    with pytest.raises(ValueError):
        get_profile("cpu", data__nope=1)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"data__n_train": "64"}, "DataConfig.n_train takes int, not str"),
        ({"data__n_train": 6.5}, "takes int, not float"),
        ({"icm__det_lambdas": 0.5}, "ICMConfig.det_lambdas takes tuple[float, ...], not float"),
        ({"icm__det_lambdas": ("a",)}, "not tuple"),
        ({"codec__name": 3}, "CodecConfig.name takes str"),
        ({"recognition__pretrained": 1}, "takes bool, not int"),
    ],
)
def test_an_override_of_another_type_is_refused_with_the_fields_type(override, message):
    """A typo from the shell (``ICM_OVERRIDES``, ``--override``) fails at once with the field's
    declared type, not later in a run; what the shell cannot tell apart is accepted."""
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        get_profile("cpu", **override)


def test_overrides_convert_what_the_shell_cannot_tell_apart():
    from icm_lib.profiles import PROFILES, _fits, parse_overrides

    p = get_profile("cpu", **parse_overrides("icm__det_lambdas=[0.5,1] icm__alpha=1"))
    assert p.icm.det_lambdas == (0.5, 1) and p.icm.alpha == 1
    for profile in PROFILES.values():  # every field of every profile fits its own declaration
        for section in dataclasses.fields(profile):
            sub = getattr(profile, section.name)
            if not dataclasses.is_dataclass(sub):
                continue
            hints = typing.get_type_hints(type(sub))
            for f in dataclasses.fields(sub):
                assert _fits(getattr(sub, f.name), hints[f.name]), (profile.name, f.name)


def test_detection_map_equals_pycocotools():
    """The same detections scored by pycocotools directly: equal within 1e-6 (torchmetrics'
    default float32 IoU thresholds alone moved mAP by ~1e-3)."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    g = torch.Generator().manual_seed(0)
    targets, preds, images, anns, dets = [], [], [], [], []
    for img in range(12):
        n = int(torch.randint(1, 6, (), generator=g))
        xy = torch.rand(n, 2, generator=g) * 200
        wh = 8 + torch.rand(n, 2, generator=g) * 60
        boxes = torch.cat([xy, xy + wh], 1)
        labels = torch.randint(1, 4, (n,), generator=g)
        targets.append({"boxes": boxes, "labels": labels})
        jitter = boxes + torch.randn(n, 4, generator=g) * 6
        extra = torch.rand(2, 4, generator=g).sort(1).values * 250
        pb = torch.cat([jitter, extra[:, [0, 1, 2, 3]]])
        pb = torch.cat([pb[:, :2].minimum(pb[:, 2:]), pb[:, :2].maximum(pb[:, 2:]) + 1], 1)
        pl = torch.cat([labels, torch.randint(1, 4, (2,), generator=g)])
        ps = torch.rand(n + 2, generator=g)
        preds.append({"boxes": pb, "scores": ps, "labels": pl})
        images.append({"id": img, "height": 300, "width": 300})
        for b, lab in zip(boxes.tolist(), labels.tolist()):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": img,
                    "category_id": lab,
                    "bbox": [b[0], b[1], w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
        for b, lab, sc in zip(pb.tolist(), pl.tolist(), ps.tolist()):
            dets.append(
                {
                    "image_id": img,
                    "category_id": lab,
                    "score": sc,
                    "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                }
            )
    # one image whose detections overlap their boxes with IoU exactly 0.6, 0.8 and 0.85: the
    # float32 thresholds (0.6000000238...) refuse what pycocotools' 0.6 accepts
    img = len(images)
    boxes = torch.tensor([[0.0, 0, 10, 10], [100, 0, 110, 10], [200, 0, 210, 10]])
    pb = boxes.clone()
    pb[:, 3] = torch.tensor([6.0, 8.0, 8.5])
    targets.append({"boxes": boxes, "labels": torch.tensor([1, 1, 1])})
    preds.append(
        {"boxes": pb, "scores": torch.tensor([0.9, 0.8, 0.7]), "labels": torch.tensor([1, 1, 1])}
    )
    images.append({"id": img, "height": 300, "width": 300})
    for b, p, sc in zip(boxes.tolist(), pb.tolist(), preds[-1]["scores"].tolist()):
        anns.append(
            {
                "id": len(anns) + 1,
                "image_id": img,
                "category_id": 1,
                "iscrowd": 0,
                "bbox": [b[0], b[1], 10.0, 10.0],
                "area": 100.0,
            }
        )
        dets.append(
            {
                "image_id": img,
                "category_id": 1,
                "score": sc,
                "bbox": [p[0], p[1], p[2] - p[0], p[3] - p[1]],
            }
        )
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {
            "images": images,
            "annotations": anns,
            "categories": [{"id": i} for i in (1, 2, 3)],
        }
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    ours = detection_map(preds, targets)
    assert 0.05 < ev.stats[0] < 0.95
    assert abs(ours["map"] - ev.stats[0]) < 1e-6
    assert abs(ours["map_50"] - ev.stats[1]) < 1e-6


class _NotATensor:
    pass


@pytest.mark.parametrize("content", [b"\x00\x01garbage" * 50, None])
def test_checkpoint_errors_never_advise_unsafe_loading(tmp_path, content):
    path = tmp_path / "ckpt.pt"
    if content is None:  # a pickle of a class the weights-only loader refuses
        torch.save({"x": _NotATensor()}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert "weights_only" not in str(info.value) and "delete it" in str(info.value).lower()


def test_forwards_in_bfloat16_computes_in_bfloat16_and_hands_on_float32():
    """Inside, a wrapped module's convolutions run in bfloat16 and what it returns (a tensor or a
    mapping of them) is float32; its weights keep their names and dtype; outside, it is itself."""
    from collections import OrderedDict

    from icm_lib.runtime import forwards_in_bfloat16

    class Pyramid(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            y = self.conv(x)
            return OrderedDict([("0", y), ("pool", y[..., ::2, ::2])])

    plain, pyramid = torch.nn.Conv2d(3, 4, 1), Pyramid()
    seen = []
    pyramid.conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    names = [n for n, _ in pyramid.named_parameters()]
    x = torch.rand(1, 3, 8, 8)
    with forwards_in_bfloat16([plain, pyramid], "cpu"):
        out, feats = plain(x), pyramid(x)
        assert [n for n, _ in pyramid.named_parameters()] == names
    assert out.dtype == torch.float32 and seen == [torch.bfloat16]
    assert isinstance(feats, OrderedDict) and list(feats) == ["0", "pool"]
    assert all(v.dtype == torch.float32 for v in feats.values())
    assert torch.allclose(out, plain(x), atol=0.05) and "forward" not in vars(plain)
    assert pyramid(x)["0"].dtype == torch.float32 and seen[-1] == torch.float32


def test_forwards_in_bfloat16_nests_and_gives_back_the_forward_a_module_had():
    """Nested scopes and a module listed twice restore each module's own forward; named tuples
    keep their type; integer outputs are not turned into floats."""
    from collections import namedtuple

    from icm_lib.runtime import forwards_in_bfloat16

    Pair = namedtuple("Pair", "scores labels")

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 3)

        def forward(self, x):
            y = self.fc(x)
            return Pair(y, y.argmax(1))

    head, plain = Head(), torch.nn.Linear(4, 4)
    own = plain.forward
    plain.forward = lambda x: own(x) * 2  # a forward of its own, as an instance attribute
    mine = plain.forward
    x = torch.rand(2, 4)
    with forwards_in_bfloat16([head, plain, head], "cpu"):
        outer = head.forward
        with forwards_in_bfloat16([head], "cpu"):
            out = head(x)
        assert head.forward is outer  # the inner scope gave back the outer wrapper
        assert plain(x).dtype == torch.float32
    assert isinstance(out, Pair) and out.scores.dtype == torch.float32
    assert out.labels.dtype == torch.int64
    assert "forward" not in vars(head) and plain.forward is mine


def test_active_seconds_stand_still_while_the_process_is_stopped():
    """A child process stopped (SIGSTOP) for ~3 s: its active clock leaves those seconds out,
    its monotonic clock does not; a long busy stretch that starves the clock's thread (here a
    loop holding the GIL) still counts."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from icm_lib.runtime import _ActiveClock\n"
            "clock = _ActiveClock(tick=0.05, gap=0.5)\n"
            "a, m = clock(), time.monotonic()\n"
            "print('ready', flush=True)\n"
            "sys.stdin.readline()\n"
            "b, n = clock(), time.monotonic()\n"
            "while time.monotonic() < n + 1.5: sum(range(10**8))\n"  # busy, GIL mostly held
            "print(b - a, n - m, clock() - b, time.monotonic() - n, flush=True)\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.3)
        child.send_signal(signal.SIGSTOP)
        time.sleep(3.0)
        child.send_signal(signal.SIGCONT)
        out, _ = child.communicate("\n", timeout=60)
    finally:
        child.kill()
    stopped_active, stopped_wall, busy_active, busy_wall = map(float, out.split())
    assert stopped_wall > 3.2 and 2.5 < stopped_wall - stopped_active < 3.3
    assert busy_active > 0.9 * busy_wall  # busy is not stopped


def test_a_resumed_optimizer_keeps_this_processs_implementation():
    """A training state saved with one Adam implementation (the CPU's plain one) and resumed by a
    process whose flags choose another (CUDA's fused one; fused Adam runs on the CPU too) takes
    the saved hyperparameters and moments, keeps its own implementation and steps on; a state
    with another number of parameter groups is still refused."""
    from icm_lib.runtime import CheckpointParts

    p = torch.nn.Parameter(torch.randn(4))
    plain = torch.optim.Adam([p], lr=0.1)
    p.grad = torch.ones(4)
    plain.step()
    saved = CheckpointParts(optimizer=plain).state_dict()
    q = torch.nn.Parameter(p.detach().clone())
    fused = torch.optim.Adam([q], lr=0.5, fused=True)
    CheckpointParts(optimizer=fused).load_state_dict(saved)
    group, state = fused.param_groups[0], fused.state[q]
    assert group["fused"] is True and group["lr"] == 0.1
    assert torch.equal(state["exp_avg"], plain.state[p]["exp_avg"])
    assert state["step"].dtype == torch.float32 and float(state["step"]) == 1.0
    q.grad = torch.ones(4)
    fused.step()
    assert float(fused.state[q]["step"]) == 2.0
    two = torch.optim.Adam([{"params": [q]}, {"params": [torch.nn.Parameter(torch.ones(1))]}])
    with pytest.raises(ValueError, match="number of parameter groups"):
        CheckpointParts(optimizer=two).load_state_dict(saved)
