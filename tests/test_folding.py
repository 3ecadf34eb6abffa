"""The frozen recognizer's batch norms folded into its convolutions for the task loss
(``icm.fold_bn``, part of ``--bf16``): what folds, what is left alone, the check that refuses a
fold that changed the loss, and the objective that labels with the recognizer and differentiates
through its twin. Every backend's twin: tests/test_backends.py."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from icm_lib.codec import load_codec
from icm_lib.data.sampler import CropSampler
from icm_lib.losses import ICMObjective
from icm_lib.recognition import folding
from icm_lib.recognition.common import freeze
from icm_lib.recognition.folding import FoldError, fold_batch_norms, folded
from icm_lib.trainer import _recognizers


class Toy:
    """A frozen recognizer in miniature: pseudo-labels are where its output is positive, its
    loss the squared distance to them."""

    def __init__(self, model: nn.Module):
        self.model = freeze(model)

    @torch.no_grad()
    def predict(self, images):
        self.model.eval()
        return self.model(images)

    def pseudo_labels(self, images):
        return (self.predict(images) > 0).float()

    def task_loss(self, images, targets):
        loss = ((self.model(images) - targets) ** 2).mean()
        return {"loss": loss}


def _bn(channels: int) -> nn.BatchNorm2d:
    """A batch norm with statistics of its own (not the identity of a fresh one)."""
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    return bn.eval()


def _norms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def _chain() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), _bn(8), nn.ReLU(), nn.Conv2d(8, 4, 1), _bn(4)
    )


class Branching(nn.Module):
    """A convolution whose output feeds its batch norm and another convolution."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.bn, self.side = nn.Conv2d(3, 4, 3, padding=1), _bn(4), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + self.side(y)


class KeywordReader(Branching):
    """The second reader gets the output by keyword."""

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + self.side(input=y)


class SharedNorm(nn.Module):
    """One batch norm after two convolutions."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.bn = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 3, padding=1), _bn(4)

    def forward(self, x):
        return self.bn(self.a(x)) + self.bn(self.b(x))


def test_a_convolution_and_its_batch_norm_become_one_convolution():
    machine = Toy(_chain())
    before = {k: v.clone() for k, v in machine.model.state_dict().items()}
    twin = folded(machine)
    assert twin is not machine and _norms(twin.model) == 0
    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(twin.predict(x), machine.predict(x), atol=1e-5)
    # the recognizer itself is untouched: its pseudo-labels and evaluation stay its own
    assert _norms(machine.model) == 2
    assert all(torch.equal(v, before[k]) for k, v in machine.model.state_dict().items())
    assert not any(p.requires_grad for p in twin.model.parameters())
    assert folded(machine) is twin  # made once: a run's objective and validator share it


@pytest.mark.parametrize(
    "model",
    [Branching, KeywordReader, SharedNorm],
    ids=["read-elsewhere", "read-by-keyword", "norm-shared"],
)
def test_what_folding_would_change_is_left_as_it_is(model):
    """A convolution whose output is read by another module too, and a batch norm applied twice:
    folding either would change the model, so neither is folded (and nothing else is here)."""
    machine = Toy(model())
    assert fold_batch_norms(machine.model, lambda: machine.predict(torch.rand(1, 3, 8, 8))) == 0
    assert folded(machine) is machine
    assert _norms(machine.model) == 1


def test_the_fold_is_checked_in_float32_whatever_the_caller_runs_under():
    """The objective first needs its twin inside its bfloat16 autocast: the fold and its checks
    run in float32 all the same (under autocast the per-convolution check was 3.7e-3 off on the
    ``cpu`` segmenter and refused the fold), and the caller's autocast is back after."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        twin = folded(Toy(_chain()))
        assert torch.is_autocast_cpu_enabled()
    assert _norms(twin.model) == 0


def test_the_fold_runs_where_tf32_was_set_with_the_newer_api():
    """A process that set TF32 through ``fp32_precision`` (detectron2's ``default_setup`` can)
    cannot read the legacy ``allow_tf32`` flags; the fold turns TF32 off through the API in use
    and gives its settings back."""
    b = torch.backends
    names = [(b.cuda.matmul, "fp32_precision"), (b.cudnn.conv, "fp32_precision")]
    names.append((b.cudnn.rnn, "fp32_precision"))
    before = [getattr(o, n) for o, n in names]
    try:
        b.cuda.matmul.fp32_precision, b.cudnn.conv.fp32_precision = "tf32", "tf32"
        b.cudnn.rnn.fp32_precision = "ieee"  # conv and rnn apart: the legacy flag is unreadable
        with pytest.raises(RuntimeError, match="legacy and new APIs"):
            b.cudnn.allow_tf32  # noqa: B018
        twin = folded(Toy(_chain()))
        assert _norms(twin.model) == 0
        assert (b.cuda.matmul.fp32_precision, b.cudnn.conv.fp32_precision) == ("tf32", "tf32")
    finally:
        for (o, n), value in zip(names, before):
            setattr(o, n, value)


def test_a_nan_is_no_fold():
    """A recognizer whose loss on the probe is not a number cannot be checked: refused."""

    class Nan(Toy):
        def task_loss(self, images, targets):
            return {"loss": super().task_loss(images, targets)["loss"] * float("nan")}

    with pytest.raises(FoldError, match="changed its task loss"):
        folded(Nan(_chain()))


def test_a_batch_norm_in_training_or_after_no_convolution_is_not_folded():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), _bn(4).train(), nn.ReLU(), _bn(4))
    with torch.no_grad():  # not through predict: the first batch norm stays in train mode
        assert fold_batch_norms(model, lambda: model(torch.rand(2, 3, 8, 8))) == 0
    assert _norms(model) == 2


def test_a_fold_that_changes_the_loss_is_refused(monkeypatch):
    """The twin is checked against the recognizer before it is used: a wrong fold (here the
    weights off by 1 %) is an error, never a silently different task loss."""
    right = folding._fold_into

    def wrong(conv, norm):
        right(conv, norm)
        with torch.no_grad():
            conv.weight.mul_(1.01)

    monkeypatch.setattr(folding, "_fold_into", wrong)
    with pytest.raises(
        FoldError, match="folded convolution of Sequential gives [0-9.e-]+ off.*fold_bn"
    ):
        folded(Toy(_chain()))


def test_an_output_read_outside_any_module_fails_the_whole_twins_check():
    """A convolution's output read by a plain function as well as by its batch norm looks like a
    pair to the hooks; folding it changes the sum below, which the task-loss check refuses."""

    class Hidden(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), _bn(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + 2 * torch.tanh(y)

    with pytest.raises(FoldError, match="changed its task loss"):
        folded(Toy(Hidden()))


@pytest.fixture(scope="module")
def seg_step(smoke_env):
    """The smoke profile's segmenter, reference codec and one training batch."""
    cfg = smoke_env.profile.icm.train("seg")
    sampler = CropSampler(smoke_env.datasets.train("seg"), cfg.crop, cfg.batch_size, 0)
    return smoke_env.machine("seg"), smoke_env.reference.codec_state(), sampler.batch(0)


def _objective_parts(machine, state, x, fold, variant=None, env=None):
    codec = load_codec(state).train()
    branch = env.branch(variant, "seg", codec) if variant else None
    objective = ICMObjective(machine, lmbda=1.0, mse_weight=1.0, fold_bn=fold)
    torch.manual_seed(0)  # the codec's noise and the segmenter's dropout: the same draws
    return objective, objective(codec, branch, x)


def test_the_objective_labels_with_the_recognizer_and_differentiates_its_twin(seg_step):
    machine, state, x = seg_step
    lazy = ICMObjective(copy.deepcopy(machine), lmbda=1.0, fold_bn=True)
    assert lazy._loss_machine is None  # made when first needed: a loaded run never makes it
    plain, parts = _objective_parts(machine, state, x, fold=False)
    objective, folded_parts = _objective_parts(machine, state, x, fold=True)
    assert plain.loss_machine is machine
    assert objective.machine is machine and objective.loss_machine is not machine
    assert _norms(machine.model) > 0 and _norms(objective.loss_machine.model) == 0
    for key in ("loss", "task_loss", "bpp_loss"):
        a, b = float(parts[key]), float(folded_parts[key])
        assert b == pytest.approx(a, rel=1e-4), key
    # the trainer's layout setting reaches both models it runs
    assert {id(m) for m in _recognizers(objective)} == {
        id(machine.model),
        id(objective.loss_machine.model),
    }
    assert [id(m) for m in _recognizers(plain)] == [id(machine.model)]


def test_the_twin_follows_its_machine_and_a_zero_gradient_is_no_change(seg_step):
    machine = copy.deepcopy(seg_step[0])
    machine.__dict__.pop("_folded_twin", None)  # one an earlier test made: fold anew
    twin = machine.folded()
    assert twin is not machine
    machine.to(torch.float64)  # (a device move, where there is one device)
    assert {p.dtype for p in twin.model.parameters()} == {torch.float64}
    zero = torch.zeros(5)
    assert folding._cosine(zero, zero) == 1.0 and folding._cosine(zero, torch.ones(5)) == 0.0


def test_the_aux_task_branch_reads_the_twin_that_runs(smoke_env, seg_step):
    """aux-task reads the recognizer's own intermediate feature of x̂, captured during the task
    loss: with the folding, the twin's layer is the one that runs."""
    machine, state, x = seg_step
    _, parts = _objective_parts(machine, state, x, True, "aux-task", smoke_env)
    assert torch.isfinite(parts["branch_loss"]) and float(parts["branch_loss"]) > 0
