import pytest
import torch

from icm_lib.aux_branch import AuxBackbone
from icm_lib.codec import build_codec


@pytest.mark.parametrize("task, last", [("det", (4, 6)), ("seg", (8, 12))])
def test_backbone_strides_and_widths(task, last):
    net = AuxBackbone(latent_channels=48, task=task, width=0.25)
    feats = net(torch.randn(2, 48, 8, 12))  # a 128 x 192 image's latent
    assert [tuple(f.shape[-2:]) for f in feats.values()] == [(32, 48), (16, 24), (8, 12), last]
    assert [f.shape[1] for f in feats.values()] == net.out_channels == [32, 64, 64, 128]


def test_full_width_matches_the_tables():
    assert AuxBackbone(192, "det").out_channels == [128, 256, 256, 512]


@pytest.mark.parametrize("name", ["bmshj2018-hyperprior", "cheng2020-attn"])
def test_a_loss_on_the_branch_reaches_the_encoder_and_never_the_decoder(name):
    """aux-enc sits on ŷ, the decoder's input: its loss reaches g_a, never g_s (in training, ŷ is
    y plus uniform noise, so the entropy models are trained by the rate term alone)."""
    torch.manual_seed(0)
    codec = build_codec(name, N=32, M=48).train()
    branch = AuxBackbone(codec.M, "det", width=0.25)
    out = codec(torch.rand(2, 3, 64, 64))
    loss = sum(f.pow(2).mean() for f in branch(out["latent_hat"]).values())
    loss.backward()
    g_a = [p.grad for p in codec.model.g_a.parameters()]
    assert all(g is not None for g in g_a) and sum(float(g.abs().sum()) for g in g_a) > 0
    assert all(p.grad is None for p in codec.decoder_parameters())
    # the branch's parameters are its own: none of them is in the codec's saved state
    saved = {id(t) for t in codec.model.state_dict(keep_vars=True).values()}
    assert not saved & {id(p) for p in branch.parameters()}


def test_aux_detector_losses_and_detections_in_image_pixels():
    from icm_lib.aux_branch import AuxDetector

    torch.manual_seed(0)
    codec = build_codec("bmshj2018-hyperprior", N=32, M=48).train()
    head = AuxDetector(
        codec.M,
        num_classes=6,
        width=0.25,
        rpn_pre_nms_top_n_train=100,
        rpn_post_nms_top_n_train=50,
        rpn_batch_size_per_image=32,
        box_batch_size_per_image=32,
    ).train()
    out = codec(torch.rand(2, 3, 128, 128))
    targets = [
        {"boxes": torch.tensor([[10.0, 20.0, 60.0, 90.0]]), "labels": torch.tensor([3])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    losses = head(out["latent_hat"], (128, 128), targets)
    assert set(losses) == {
        "loss_objectness",
        "loss_rpn_box_reg",
        "loss_classifier",
        "loss_box_reg",
        "loss",
    }
    losses["loss"].backward()
    assert any(p.grad is not None for p in codec.model.g_a.parameters())
    assert all(p.grad is None for p in codec.decoder_parameters())
    head.eval()
    with torch.no_grad():
        dets = head(out["latent_hat"].detach(), (128, 128))
    assert len(dets) == 2
    for d in dets:
        assert set(d) == {"boxes", "scores", "labels"}
        assert (d["boxes"] >= 0).all() and (d["boxes"] <= 128).all()


def test_aux_segmenter_logits_at_image_size_and_gradient_isolation():
    import torch.nn.functional as F

    from icm_lib.aux_branch import AuxSegmenter

    torch.manual_seed(0)
    codec = build_codec("bmshj2018-hyperprior", N=32, M=48).train()
    head = AuxSegmenter(codec.M, num_classes=11, width=0.25).train()
    out = codec(torch.rand(2, 3, 128, 192))
    logits = head(out["latent_hat"])
    assert logits.shape == (2, 11, 128, 192)
    F.cross_entropy(logits, torch.randint(0, 11, (2, 128, 192))).backward()
    assert any(p.grad is not None for p in codec.model.g_a.parameters())
    assert all(p.grad is None for p in codec.decoder_parameters())


@pytest.mark.parametrize("task", ["det", "seg"])
def test_aux_dec_reads_the_last_layer_input_and_reaches_the_decoder_but_not_its_last_layer(task):
    """Section 4.2: aux-dec sits before g_s's last layer (Table 3 stem RB↓2-RB-RB), so its loss
    trains g_s up to there, and the encoder, but not the last layer."""
    from icm_lib.aux_branch import AuxBranch

    torch.manual_seed(0)
    codec = build_codec("bmshj2018-hyperprior", N=32, M=48).train()
    assert codec.decoder_last_layer_channels == 32
    branch = (
        AuxBranch(
            task,
            "dec",
            codec.decoder_last_layer_channels,
            6 if task == "det" else 11,
            width=0.25,
            rpn_pre_nms_top_n_train=100,
            rpn_post_nms_top_n_train=50,
            rpn_batch_size_per_image=32,
            box_batch_size_per_image=32,
        )
        if task == "det"
        else AuxBranch(task, "dec", 32, 11, width=0.25)
    )
    feats = branch.net.body(codec(torch.rand(2, 3, 128, 128))["decoder_feature"])
    assert [tuple(f.shape[-2:]) for f in feats.values()][0] == (32, 32)  # stride 4 like aux-enc
    out = codec(torch.rand(2, 3, 128, 128))
    labels = (
        [{"boxes": torch.tensor([[8.0, 8.0, 70.0, 90.0]]), "labels": torch.tensor([2])}] * 2
        if task == "det"
        else torch.randint(0, 11, (2, 128, 128))
    )
    branch(out, labels, (128, 128)).backward()
    last = {id(p) for p in codec.decoder_last_layer.parameters()}
    inner = [p for p in codec.decoder_parameters() if id(p) not in last]
    assert all(p.grad is None for p in codec.decoder_last_layer.parameters())
    assert sum(float(p.grad.abs().sum()) for p in inner if p.grad is not None) > 0
    assert any(p.grad is not None for p in codec.model.g_a.parameters())


SMALL_DET = dict(
    rpn_pre_nms_top_n_train=100,
    rpn_post_nms_top_n_train=50,
    rpn_batch_size_per_image=32,
    box_batch_size_per_image=32,
)


@pytest.fixture(scope="module")
def machines():
    from icm_lib.recognition import FrozenDetector, FrozenSegmenter, build_detector, build_segmenter

    torch.manual_seed(0)
    det = FrozenDetector(build_detector(6, "resnet18", **SMALL_DET), score_threshold=0.0)
    return {"det": det, "seg": FrozenSegmenter(build_segmenter(11, "resnet18"), 11)}


def _bn_state(model):
    return [
        t.clone()
        for m in model.modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        for t in (m.running_mean, m.running_var)
    ]


@pytest.mark.parametrize("task", ["det", "seg"])
@pytest.mark.parametrize("variant", ["aux-enc", "aux-dec", "aux-task"])
def test_gradient_paths_of_the_three_branch_positions(machines, task, variant):
    """Section 4.2: the branch loss alone reaches g_a in every position; g_s never for aux-enc,
    up to its last layer for aux-dec, all of it for aux-task (whose input is the recognizer's
    feature of x̂); the frozen recognizer's weights and BatchNorm statistics never change."""
    from icm_lib.aux_branch import build_branch
    from icm_lib.losses import ICMObjective

    torch.manual_seed(0)
    machine = machines[task]
    codec = build_codec("bmshj2018-hyperprior", N=32, M=48).train()
    branch = build_branch(
        variant, task, codec, 6 if task == "det" else 11, 0.25, SMALL_DET, machine=machine
    ).train()
    if variant == "aux-task":
        expected = 64 if task == "det" else 256  # ResNet-18: layer1 (stride 4), layer3 (16)
        assert machine.aux_task_channels == expected
    weights = [p.detach().clone() for p in machine.model.parameters()]
    bn = _bn_state(machine.model)
    parts = ICMObjective(machine, lmbda=1.0)(codec, branch, torch.rand(2, 3, 128, 128))
    assert parts["branch_loss"] > 0
    assert float(parts["main_loss"]) == pytest.approx(
        float(parts["loss"] - 0.5 * parts["branch_loss"])
    )
    parts["branch_loss"].backward()

    def reached(params):
        return sum(float(p.grad.abs().sum()) for p in params if p.grad is not None) > 0

    last = {id(p) for p in codec.decoder_last_layer.parameters()}
    inner = [p for p in codec.decoder_parameters() if id(p) not in last]
    assert reached(codec.model.g_a.parameters())
    assert reached(inner) == (variant != "aux-enc")
    assert reached(codec.decoder_last_layer.parameters()) == (variant == "aux-task")
    assert all(p.grad is None for p in machine.model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(weights, machine.model.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(bn, _bn_state(machine.model)))


@pytest.mark.parametrize("variant", ["aux-enc", "aux-task"])
def test_under_bfloat16_a_detector_keeps_its_box_geometry_in_float32(machines, variant):
    """With ``amp`` the torchvision detectors -- the recognizer of the task loss and the
    branch's head -- run their feature computations in bfloat16 and their anchors and proposals
    in float32 (under full autocast both were bfloat16: 0.5-2 px steps); the segmenter runs under
    autocast as a whole."""
    from icm_lib.aux_branch import build_branch
    from icm_lib.losses import ICMObjective

    torch.manual_seed(0)
    codec = build_codec("bmshj2018-hyperprior", N=32, M=48).train()
    seen: dict[str, torch.dtype] = {}

    def spy(name, module, pre=False):
        def hook(m, args, out=None):
            got = args[1][0] if pre else (out[0] if isinstance(out, list) else out)
            seen[name] = got.dtype

        if pre:
            return module.register_forward_pre_hook(hook)
        return module.register_forward_hook(hook)

    det, seg = machines["det"], machines["seg"]
    branch = build_branch(variant, "det", codec, 6, 0.25, SMALL_DET, machine=det).train()
    feature = det.model.backbone.body.layer1
    hooks = [
        spy("recognizer features", feature),
        spy("recognizer anchors", det.model.rpn.anchor_generator),
        spy("recognizer proposals", det.model.roi_heads.box_roi_pool, pre=True),
        spy("branch features", branch.net.body.stages[0]),
        spy("branch anchors", branch.net.rpn.anchor_generator),
        spy("branch proposals", branch.net.roi_heads.box_roi_pool, pre=True),
        spy("segmenter features", seg.model.net.encoder.layer1),
    ]
    objective = ICMObjective(det, lmbda=1.0, amp=True, amp_device_types=("cpu",))
    seg_objective = ICMObjective(seg, lmbda=1.0, amp=True, amp_device_types=("cpu",))
    try:
        parts = objective(codec, branch, torch.rand(2, 3, 128, 128))
        seg_objective(codec, None, torch.rand(2, 3, 128, 128))
    finally:
        for h in hooks:
            h.remove()
    assert torch.isfinite(parts["loss"]) and parts["branch_loss"] > 0
    assert seen == {
        "recognizer features": torch.bfloat16,
        "recognizer anchors": torch.float32,
        "recognizer proposals": torch.float32,
        "branch features": torch.bfloat16,
        "branch anchors": torch.float32,
        "branch proposals": torch.float32,
        "segmenter features": torch.bfloat16,
    }


@pytest.mark.parametrize(
    ("task", "position", "least"),
    [("seg", "enc", 2), ("seg", "dec", 2), ("seg", "task", 1), ("det", "enc", 1)],
)
def test_min_batch_is_what_a_training_pass_needs(task, position, least):
    """``AuxBranch.min_batch`` (checked by the trainer before any step) is the truth: the
    DeepLabV3+ head's pooled BatchNorm refuses one image in training, the others take it."""
    from icm_lib.aux_branch import AuxBranch

    branch = AuxBranch(task, position, 32, 5, 0.25).train()
    assert branch.min_batch == least
    x = torch.rand(1, 32, 8, 8)
    if task == "det":
        targets = [{"boxes": torch.tensor([[8.0, 8.0, 60.0, 60.0]]), "labels": torch.tensor([1])}]
        assert torch.isfinite(branch.net(x, (128, 128), targets)["loss"])
    elif least == 2:
        with pytest.raises(ValueError, match="more than 1 value per channel"):
            branch.net(x, (128, 128))
        assert branch.net(x.expand(2, -1, -1, -1), (128, 128)).shape[:2] == (2, 5)
    else:
        assert branch.net(x, (128, 128)).shape == (1, 5, 128, 128)
