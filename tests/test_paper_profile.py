"""The GPU recipe's wiring: one training step of every variant with the `paper` profile's
models (cheng2020-attn; detectron2's Faster R-CNN X101-32x8d-FPN and MMSegmentation's DeepLabV3+
R101-D8, the libraries Iino et al. uses) at random weights on small crops, on the CPU and (marked
`gpu`) on CUDA under bfloat16 autocast. Skips, saying why, where a library is not installed; on
CUDA, where they are not (a GPU machine for which detectron2 and mmcv have no wheel), the same
architectures come from torchvision and smp instead, so that the step still runs there."""

import dataclasses
import math

import pytest
import torch
from conftest import DEVICES

from icm_lib.aux_branch import VARIANTS, build_branch
from icm_lib.codec import codec_from_config
from icm_lib.data.coco import CocoDetection
from icm_lib.data.sampler import CropSampler
from icm_lib.errors import BackendUnavailableError
from icm_lib.losses import ICMObjective, mse_objective
from icm_lib.profiles import TrainConfig, get_profile
from icm_lib.recognition import FrozenDetector, FrozenSegmenter, build_recognizer
from icm_lib.trainer import train_codec

PAPER = get_profile("paper", codec__pretrained=False, recognition__pretrained=False)


@pytest.fixture(scope="module", params=DEVICES)
def machines(request):
    device = torch.device(request.param)
    rec = PAPER.recognition
    try:
        torch.manual_seed(0)
        det = build_recognizer("det", rec, 6)
        seg = build_recognizer("seg", rec, 11)
    except BackendUnavailableError as exc:
        if device.type != "cuda":
            pytest.skip(f"the paper profile's recognition libraries: {exc}")
        rec = dataclasses.replace(rec, det_backend="torchvision", seg_backend="smp")
        torch.manual_seed(0)
        det = build_recognizer("det", rec, 6)
        seg = build_recognizer("seg", rec, 11)
    # random weights give no detection above 0.5: keep every detection as a pseudo-label
    return {
        "det": FrozenDetector(det, score_threshold=0.0).to(device),
        "seg": FrozenSegmenter(seg, 11).to(device),
        "device": device,
        "backends": (rec.det_backend, rec.seg_backend),
    }


@pytest.mark.parametrize("task", ["det", "seg"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_one_step_of_every_variant_with_the_paper_architectures(
    machines, scenes, tmp_path, task, variant
):
    """(On CUDA the recognizers and the branch run under the profile's bfloat16 autocast.)"""
    device = machines["device"]
    rec = PAPER.recognition
    assert PAPER.codec.name == "cheng2020-attn" and PAPER.icm.branch_width == 1.0
    assert (rec.det_backend, rec.seg_backend) == ("detectron2", "mmseg")
    assert machines["backends"] in {("detectron2", "mmseg"), ("torchvision", "smp")}
    assert rec.det_config.endswith("faster_rcnn_X_101_32x8d_FPN_3x.yaml")
    assert rec.seg_config == "deeplabv3plus_r101-d8_4xb4-40k_pascal-context-59-480x480"
    torch.manual_seed(0)
    codec = codec_from_config(PAPER.codec)
    branch = build_branch(
        variant,
        task,
        codec,
        6 if task == "det" else 11,
        PAPER.icm.branch_width,
        PAPER.recognition.sampling(),
        machine=machines[task],
    )
    lmbda = PAPER.icm.lambdas(task)[0]
    objective = (
        mse_objective(0.0067)
        if variant == "mse"
        else ICMObjective(
            machines[task], lmbda, PAPER.icm.alpha, PAPER.icm.mse_weight(task), amp=PAPER.icm.amp
        )
    )
    cfg = TrainConfig(
        steps=1, batch_size=2, crop=64, lr=PAPER.icm.train(task).lr, log_every=1, checkpoint_every=1
    )
    sampler = CropSampler(CocoDetection(scenes.coco_root, "train"), 64, 2, 0)
    before = [p.detach().clone().to(device) for p in codec.model.g_a.parameters()]
    trained, log = train_codec(
        codec, sampler, cfg, objective, tmp_path, device, progress=False, branch=branch
    )
    assert len(log) == 1 and all(math.isfinite(v) for k, v in log[0].items() if k.endswith("loss"))
    assert any(not torch.equal(a, b) for a, b in zip(before, trained.model.g_a.parameters()))
    assert (tmp_path / "branch.pt").is_file() == variant.startswith("aux-")
    if branch is not None:
        assert log[0]["branch_loss"] > 0
