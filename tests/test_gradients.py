"""The encoder-gradient measurements (Iino et al.'s premise; dropout in the task loss)."""

from __future__ import annotations

import math

import pytest
import torch

from icm_lib.codec import load_codec
from icm_lib.gradients import dropout_noise, encoder_gradients
from icm_lib.losses import ICMObjective


def _batch(exp, task, n=2, side=64):
    return torch.stack([exp.datasets.val(task)[i][0][:, :side, :side] for i in range(n)])


@pytest.mark.parametrize("task", ["det", "seg"])
def test_encoder_gradients_split_task_and_branch(smoke_env, task):
    exp = smoke_env
    codec = load_codec(exp.reference.codec_state()).train()
    branch = exp.branch("aux-enc", task, codec)
    x = _batch(exp, task)
    objective = ICMObjective(exp.machine(task), lmbda=1.0, alpha=0.5)
    g = encoder_gradients(objective, codec, branch, x)
    assert g["task_norm"] > 0 and g["branch_norm"] > 0 and g["rate_norm"] > 0
    assert g["ratio"] == pytest.approx(g["branch_norm"] / g["task_norm"])
    assert -1 <= g["cosine"] <= 1
    # α scales the branch's gradient and nothing else
    half = encoder_gradients(ICMObjective(exp.machine(task), 1.0, alpha=0.25), codec, branch, x)
    assert half["branch_norm"] == pytest.approx(g["branch_norm"] / 2, rel=1e-4)
    assert half["task_norm"] == pytest.approx(g["task_norm"], rel=1e-5)


def test_dropout_makes_the_segmentation_gradient_stochastic(smoke_env):
    """smp's DeepLabV3+ has dropout in its ASPP: with it the task gradient differs draw to draw;
    held off, it is the same every time (segmentation has no other sampling)."""
    exp = smoke_env
    codec = load_codec(exp.reference.codec_state()).train()
    out = dropout_noise(exp.machine("seg"), codec, _batch(exp, "seg"), draws=3)
    assert out["dropout_layers"] >= 1
    assert out["cos_dropout_free_draws"] == pytest.approx(1.0, abs=1e-6)
    assert out["cos_between_draws"] < 0.9999
    assert all(math.isfinite(v) for v in out.values())
    # the machine's dropout layers are left as they were
    assert all(
        not m.training
        for m in exp.machine("seg").model.modules()
        if isinstance(m, torch.nn.Dropout)
    )


@pytest.mark.slow
def test_the_gradients_file_measures_start_and_the_trained_run(smoke_env, tmp_path):
    """``python -m icm_lib.gradients``: at the start (reference codec, fresh branch) for both
    tasks; the trained state only for a run in the cache, which it never trains itself."""
    from icm_lib.gradients import main
    from icm_lib.results import GradientsFile, as_json

    exp = smoke_env
    args = ["--profile", "smoke", "--data-dir", str(exp.cache_dir.parent)]
    args += ["--results-dir", str(tmp_path), "--batches", "2"]
    before = main(args)
    assert GradientsFile.read(tmp_path / "gradients-smoke.json") == before
    assert before.icm_config == as_json(exp.profile.icm.recorded())  # what it measured under
    for task in ("det", "seg"):
        entry = before.tasks[task]
        assert entry["lmbda"] == exp.profile.ablation.lmbda(task)
        assert entry["trained"] is None and "--study ablation" in entry["trained_note"]
        start = entry["at_start"]
        assert len(start["ratio"]) == 2 and all(r > 0 for r in start["ratio"])
        assert start["ratio"][0] == pytest.approx(start["branch_norm"][0] / start["task_norm"][0])
        assert len(entry["dropout"]["cos_between_draws"]) == 2
    assert not exp.ablation_run_dir("seg", "aux-enc", 0).exists()
    exp.ablation_point("seg", "aux-enc", 0)  # the run the file reads once it is there
    after = main(args)
    assert [r.run_key for r in after.runs] == [exp.ablation_run_dir("seg", "aux-enc", 0).name]
    trained = after.tasks["seg"]["trained"]
    assert (
        trained is not None and trained["task_norm"] != after.tasks["seg"]["at_start"]["task_norm"]
    )
    assert after.tasks["seg"]["at_start"] == before.tasks["seg"]["at_start"]  # deterministic


def test_show_gradients_reads_the_file_or_says_the_command(tmp_path, capsys):
    from icm_lib.notebook import show_gradients
    from icm_lib.results import GradientsFile

    start = {"task_norm": [1.0, 3.0], "branch_norm": [4.0, 2.0], "ratio": [4.0, None],
             "cosine": [0.5, 0.1], "rate_norm": [1.0, 1.0]}  # fmt: skip
    entry = {"lmbda": 0.5, "batches": {"count": 2}, "at_start": start, "trained": None,
             "trained_note": "not in the cache yet", "dropout": {}}  # fmt: skip
    GradientsFile(profile="t", seeds=[0], compute_hours_in_runs=0, wall_hours_this_invocation=0,
                  tasks={"seg": entry}).write(GradientsFile.path(tmp_path, "t"))  # fmt: skip
    shown = show_gradients(tmp_path, ["t", "u"])
    assert shown["u"] is None
    means = shown["t"]["seg"]["at_start"]
    assert means["task_norm"] == 2.0 and means["ratio"] == 4.0  # a non-finite batch left out
    assert means["cosine"] == pytest.approx(0.3) and set(shown["t"]["seg"]) == {"at_start"}
    out = capsys.readouterr().out
    assert "python -m icm_lib.gradients --profile u" in out and "not in the cache yet" in out
    assert "other codec-training settings" not in out  # recorded nothing (an older file)


def test_show_gradients_says_when_the_file_was_measured_with_other_settings(tmp_path, capsys):
    """``python -m icm_lib.gradients --overrides icm__amp_cpu=True`` measures in bfloat16 and
    writes the profile's file: the file records the settings, the notebook names what differs."""
    from dataclasses import replace

    from icm_lib.notebook import show_gradients
    from icm_lib.profiles import get_profile
    from icm_lib.results import GradientsFile, as_json

    own = get_profile("smoke").icm
    for name, icm in (("same", own), ("bf16", replace(own, amp_cpu=True))):
        folder = tmp_path / name
        GradientsFile(profile="smoke", seeds=[0], compute_hours_in_runs=0,
                      wall_hours_this_invocation=0, icm_config=as_json(icm.recorded())).write(
            GradientsFile.path(folder, "smoke"))  # fmt: skip
        read = GradientsFile.read(GradientsFile.path(folder, "smoke"))
        assert read.icm_config == as_json(icm.recorded())
        show_gradients(folder, ["smoke"])
        out = capsys.readouterr().out
        assert ("other codec-training settings (amp_cpu=True)" in out) is (name == "bf16"), out


def test_depth_varies_only_the_recognizers_backbone(smoke_env, tmp_path):
    """``python -m icm_lib.gradients --depth``: per backbone the recognizer it trained (or
    loaded) and the at-start gradients; the profile's own backbone gives exactly what
    ``measure`` gives (the same codec, branch, batches and λ), another backbone other numbers."""
    from icm_lib.data.sampler import CropSampler
    from icm_lib.gradients import main
    from icm_lib.results import DepthFile
    from icm_lib.runtime import seed_everything

    exp = smoke_env
    args = ["--profile", "smoke", "--data-dir", str(exp.cache_dir.parent)]
    args += ["--results-dir", str(tmp_path), "--batches", "1"]
    depth = main(args + ["--depth", "resnet18", "resnet34"])
    assert DepthFile.read(tmp_path / "depth-smoke.json") == depth
    rows = depth.tasks["seg"]["backbones"]
    assert list(depth.tasks) == ["seg"] and [r["backbone"] for r in rows] == [
        "resnet18",
        "resnet34",
    ]
    r18, r34 = rows
    assert r18["recognizer"]["name"] == "resnet18" and r34["recognizer"]["name"] == "resnet34"
    assert r34["recognizer"]["params"] > r18["recognizer"]["params"]
    assert "miou" in r34["recognizer"]["val"] and r34["recognizer"]["train_steps"] > 0
    # the profile's own backbone: the smoke machine, the reference codec, a fresh branch of
    # seed 0, the first training batch of seed 0, the ablation's λ -- computed here directly
    icm, cfg = exp.profile.icm, exp.profile.icm.train("seg")
    x = CropSampler(exp.datasets.train("seg"), cfg.crop, cfg.batch_size, 0).batch(0)
    codec = load_codec(exp.reference.codec_state()).train()
    seed_everything(0)
    branch = exp.branch("aux-enc", "seg", codec).train()
    lmbda = exp.profile.ablation.lmbda("seg")
    objective = ICMObjective(exp.machine("seg"), lmbda, icm.alpha, icm.mse_weight("seg"), icm.amp)
    own = encoder_gradients(objective, codec, branch, x, 0)
    assert r18["at_start"] == {k: [v] for k, v in own.items()}
    assert r34["at_start"]["task_norm"] != r18["at_start"]["task_norm"]
    assert depth.tasks["seg"]["lmbda"] == exp.profile.ablation.lmbda("seg")


def test_depth_refuses_a_backend_without_resnet_backbones(smoke_env):
    from icm_lib.errors import ICMError
    from icm_lib.gradients import measure_depth
    from icm_lib.profiles import get_profile

    profile = get_profile("smoke", recognition__seg_backend="mmseg")
    with pytest.raises(ICMError, match="recognition__seg_backend=smp"):
        measure_depth(profile, smoke_env.cache_dir.parent, ("resnet18",), ("seg",))


def test_show_depth_reads_the_file_or_says_the_command(tmp_path, capsys):
    from icm_lib.notebook import show_depth
    from icm_lib.results import DepthFile

    def row(backbone, params, miou, ratios, cosines):
        return {"backbone": backbone, "recognizer": {"name": "r", "params": params, "val": {"miou": miou},
                               "train_steps": 300, "train_seconds": 60.0},
                "at_start": {"task_norm": [1.0] * len(ratios), "branch_norm": ratios,
                             "ratio": ratios, "cosine": cosines,
                             "rate_norm": [1.0] * len(ratios)}}  # fmt: skip

    entry = {"lmbda": 1.0, "batches": {"count": 2},
             "backbones": [row("resnet50", 27_000_000, 0.41, [1.5, None], [-0.2, 0.0]),
                           row("resnet18", 12_000_000, 0.46, [0.4, 0.6], [0.1, 0.3])]}  # fmt: skip
    DepthFile(profile="t", seeds=[0], compute_hours_in_runs=0, wall_hours_this_invocation=0,
              tasks={"seg": entry}).write(DepthFile.path(tmp_path, "t"))  # fmt: skip
    shown = show_depth(tmp_path, ["t", "u"])
    assert shown["u"] is None
    r50, r18 = shown["t"]["seg"]  # as measured
    assert (r50["backbone"], r18["backbone"]) == ("resnet50", "resnet18")
    assert r18["ratio"] == pytest.approx(0.5) and r18["cosine"] == pytest.approx(0.2)
    assert r50["ratio"] == 1.5 and r50["metric"] == 0.41  # a non-finite batch left out
    out = capsys.readouterr().out
    assert "python -m icm_lib.gradients --profile u --depth" in out
    assert "resnet50       27.0M   0.410" in out
