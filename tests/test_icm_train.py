"""The ICM trainer: every variant, resume with the branch, the saved codec, DDP, the CLI."""

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from icm_lib.aux_branch import VARIANTS
from icm_lib.codec import load_codec
from icm_lib.files import load_checkpoint
from icm_lib.profiles import TrainConfig
from icm_lib.train import main
from icm_lib.trainer import poly_decay


def _run(exp, task, variant, cache, steps=3, stop_after=None, seed=0, lmbda=1.0):
    return replace(exp, cache_dir=cache).icm_run(
        task, variant, lmbda, seed, steps=steps, stop_after=stop_after
    )


@pytest.mark.parametrize("task", ["det", "seg"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_trains_and_logs_its_loss_parts(smoke_env, tmp_path, task, variant):
    codec, log, run_dir = _run(smoke_env, task, variant, tmp_path, steps=2)
    assert [r["step"] for r in log] == [1, 2]
    for r in log:
        assert all(torch.isfinite(torch.tensor(v)) for k, v in r.items() if k.endswith("loss"))
    if variant == "mse":
        assert "task_loss" not in log[0]
    else:
        assert log[0]["task_loss"] > 0
        assert (log[0]["branch_loss"] > 0) == variant.startswith("aux-")
    assert (run_dir / "branch.pt").is_file() == variant.startswith("aux-")


def test_a_micro_batch_too_small_for_the_branch_is_a_clear_error(smoke_env, tmp_path):
    """The seg branch's DeepLabV3+ head needs two images per pass (its pooled BatchNorm): one is
    refused before the first step, saying what to change; the baseline trains on one."""
    icm = smoke_env.profile.icm
    one = replace(icm, seg=replace(icm.seg, batch_size=1))
    exp = replace(smoke_env, profile=replace(smoke_env.profile, icm=one))
    with pytest.raises(ValueError, match="at least 2 images.*gives 1: raise batch_size"):
        _run(exp, "seg", "aux-enc", tmp_path, steps=1)
    _, log, _ = _run(exp, "seg", "baseline", tmp_path, steps=1)
    assert log[0]["task_loss"] > 0


def test_saved_codec_and_bitstreams_hold_no_branch(smoke_env, tmp_path):
    reference = smoke_env.reference
    codec, _, run_dir = _run(smoke_env, "det", "aux-enc", tmp_path)
    saved = load_checkpoint(run_dir / "codec.pt")
    assert set(saved["state_dict"]) == set(reference.codec_state()["state_dict"])
    branch = load_checkpoint(run_dir / "branch.pt")["state_dict"]
    assert branch and not set(branch) & set(saved["state_dict"])
    # a codec rebuilt from the saved file alone decodes the trained codec's bytes
    x = torch.rand(1, 3, 64, 64)
    data = codec.compress(x)
    assert torch.equal(load_codec(saved).decompress(data), codec.decompress(data))
    assert set(saved) == {"state_dict", "codec_config"}


def test_the_branch_changes_the_encoder_not_only_the_rate(smoke_env, tmp_path):
    """With the same seed, data and λ, training with the branch ends with another encoder."""
    a, _, _ = _run(smoke_env, "seg", "baseline", tmp_path / "a")
    b, _, _ = _run(smoke_env, "seg", "aux-enc", tmp_path / "b")
    diff = [
        not torch.equal(p, q) for p, q in zip(a.model.g_a.parameters(), b.model.g_a.parameters())
    ]
    assert any(diff)


@pytest.mark.parametrize("task", ["det", "seg"])
def test_kill_and_resume_reproduces_codec_and_branch(smoke_env, tmp_path, task):
    straight, log_a, dir_a = _run(smoke_env, task, "aux-enc", tmp_path / "a", steps=4)
    _run(smoke_env, task, "aux-enc", tmp_path / "b", steps=4, stop_after=2)
    torch.manual_seed(999)  # the resumed process starts from another random state
    resumed, log_b, dir_b = _run(smoke_env, task, "aux-enc", tmp_path / "b", steps=4)
    for (name, p), q in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().values()
    ):
        assert torch.equal(p, q), name
    ba = load_checkpoint(dir_a / "branch.pt")["state_dict"]
    bb = load_checkpoint(dir_b / "branch.pt")["state_dict"]
    assert all(torch.equal(ba[k], bb[k]) for k in ba)
    assert [r["loss"] for r in log_a] == [r["loss"] for r in log_b]


def test_poly_decay():
    f = poly_decay(TrainConfig(steps=100, decay_start=0.5, decay_power=1.0))
    assert f(0) == f(49) == 1.0
    assert f(75) == pytest.approx(0.5) and f(100) == 0.0
    assert poly_decay(TrainConfig(steps=10))(9) == 1.0  # decay_start=1: constant


def test_cli_trains_then_loads(smoke_env, capsys):
    data_dir = smoke_env.cache_dir.parent
    argv = "--profile smoke --task seg --variant aux-enc --lmbda 2 --steps 2 --no-progress".split()
    argv += ["--data-dir", str(data_dir)]
    first = main(argv)
    assert first["finished"] and first["steps_logged"] == 2
    again = main(argv)
    assert again["run_dir"] == first["run_dir"] and again["last"] == first["last"]
    assert json.loads(capsys.readouterr().out.split("\n}\n")[0] + "}")["finished"] is True


def _train_cli(argv, nproc=None):
    """Run the trainer in a fresh process with one thread (torchrun when ``nproc``)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ICM_OFFLINE": "1"}
    launcher = (
        ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
        if nproc
        else []
    )
    proc = subprocess.run(
        [sys.executable, *launcher, "-m", "icm_lib.train", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout[proc.stdout.index("{") :])


def test_ddp_with_two_gloo_processes_matches_one_process(smoke_env, tmp_path):
    """torchrun, 2 CPU processes (gloo), the smoke batch of 2 split 1 + 1, against one process
    that accumulates the same two shards, both single-threaded: the same losses and weights up
    to float rounding. (Detection, because the segmentation branch's ASPP pooling needs 2 images
    per shard for its BatchNorm.)"""
    data_dir = smoke_env.cache_dir.parent
    argv = "--profile smoke --task det --variant aux-enc --lmbda 2 --steps 3 --no-progress".split()
    # --device cpu: gloo on the CPU, also where GPUs exist
    argv += ["--seed", "5", "--data-dir", str(data_dir), "--device", "cpu"]
    single = _train_cli(argv + ["--accumulate", "2"])
    single_dir = tmp_path / "single"
    shutil.move(single["run_dir"], single_dir)
    ddp = _train_cli(argv, nproc=2)
    assert ddp["world_size"] == 2 and ddp["finished"] and single["world_size"] == 1
    log_single = [json.loads(line) for line in (single_dir / "log.jsonl").read_text().splitlines()]
    log_ddp = [json.loads(line) for line in open(os.path.join(ddp["run_dir"], "log.jsonl"))]
    assert [r["step"] for r in log_ddp] == [1, 2, 3]
    for a, b in zip(log_single, log_ddp):
        for k in ("loss", "bpp_loss", "task_loss", "branch_loss", "mse_loss", "quantile_loss"):
            assert b[k] == pytest.approx(a[k], rel=1e-5), (a["step"], k)
    assert log_single[2]["loss"] != pytest.approx(log_single[0]["loss"], rel=1e-3)  # it trained
    a = load_checkpoint(single_dir / "codec.pt")["state_dict"]
    b = load_checkpoint(os.path.join(ddp["run_dir"], "codec.pt"))["state_dict"]
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)


def test_more_local_processes_than_gpus_is_a_clear_error(monkeypatch):
    from icm_lib.errors import ICMError
    from icm_lib.runtime import Distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ICMError, match="at most 1 processes per node"):
        Distributed()
    with pytest.raises(ICMError, match="--device cpu"):
        Distributed(torch.device("cuda"))


def test_a_training_gives_back_the_recognizers_layout_and_cudnns_flag(
    smoke_env, tmp_path, monkeypatch
):
    """With the step flags on (CUDA's default) a run trains on a channels-last recognizer under
    cuDNN autotuning, and gives both back when it ends: the recognizer is shared with the
    evaluation and the process's other runs, whose numbers must not depend on whether a
    training ran first."""
    import icm_lib.trainer as trainer

    flags = {"channels_last": True, "cudnn_benchmark": True, "fused_adam": False}
    monkeypatch.setattr(trainer, "step_flags", lambda device_type, fast=None: flags)
    model = smoke_env.machine("det").model
    layouts = []
    hook = model.register_forward_pre_hook(lambda m, a: layouts.append(trainer._contiguous(m)))
    before = torch.backends.cudnn.benchmark
    try:
        replace(smoke_env, cache_dir=tmp_path).icm_run("det", "baseline", 1.0, 0, steps=1)
    finally:
        hook.remove()
    assert layouts and not any(layouts)  # trained channels-last
    assert trainer._contiguous(model) and torch.backends.cudnn.benchmark is before


def test_a_torchrun_process_group_waits_longer_than_nccls_ten_minutes(monkeypatch):
    """The other ranks wait in a barrier while rank 0 prepares a fresh cache (hours): the process
    group gets a day (``ICM_DIST_TIMEOUT_H`` another; a bad value is one clear error)."""
    from datetime import timedelta

    from icm_lib.errors import ConfigError
    from icm_lib.runtime import Distributed

    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(
        torch.distributed, "init_process_group", lambda *a, **k: calls.append((a, k))
    )
    Distributed(torch.device("cpu"))
    monkeypatch.setenv("ICM_DIST_TIMEOUT_H", "0.5")
    Distributed(torch.device("cpu"))
    assert calls == [
        (("gloo",), {"timeout": timedelta(hours=24)}),
        (("gloo",), {"timeout": timedelta(minutes=30)}),
    ]
    for bad in ("0", "soon", "nan", "inf"):
        monkeypatch.setenv("ICM_DIST_TIMEOUT_H", bad)
        with pytest.raises(ConfigError, match="ICM_DIST_TIMEOUT_H"):
            Distributed(torch.device("cpu"))
    assert len(calls) == 2


def test_a_study_of_one_task_loads_only_that_tasks_recognizer(smoke_env, tmp_path):
    """``prepare(tasks=["seg"])`` (what a segmentation-only study asks for) does not load or
    train the detector: with only the segmenter in the cache it prepares inside
    ``cached_only``, runs the MSE reference curve scored on segmentation (an MSE run keyed under
    detection), and the detector is asked for -- and missed -- only when something uses it."""
    from icm_lib.errors import NotCachedError
    from icm_lib.experiment import Experiment
    from icm_lib.runtime import cached_only

    data = tmp_path / "data"
    shutil.copytree(smoke_env.cache_dir.parent / "embedded", data / "embedded")
    shutil.copytree(smoke_env.cache_dir, data / "cache", ignore=shutil.ignore_patterns("icm"))
    for path in (data / "cache").glob("detector-*"):
        path.unlink()
    cpu = torch.device("cpu")
    with cached_only("make tutorial PROFILE=smoke"):
        exp = Experiment.prepare(smoke_env.profile, data, cpu, False, tasks=["seg"])
        assert set(exp.machines) == {"det", "seg"}  # both named, one loaded
        assert exp.machines["seg"] is not None and "seg" in exp.reports
    lmbda = smoke_env.profile.icm.mse_lambdas[0]
    point = exp.point("det", "mse", lmbda, 0, eval_tasks=("seg",), steps=2)  # trains, briefly
    assert [p.task for p in point.run.points] == ["seg"]
    assert not list((data / "cache").glob("detector-*"))  # neither loaded nor trained
    assert "det" in exp.machines and "det" in exp.reports  # asks nothing of the cache
    with cached_only("make tutorial PROFILE=smoke"), pytest.raises(NotCachedError, match="recogn"):
        exp.machines["det"]  # noqa: B018 (first use: it would be trained here)
    # loaded when first used -- possibly inside a run, after its seed: the generators stay put
    for path in smoke_env.cache_dir.glob("detector-*"):
        shutil.copy(path, data / "cache" / path.name)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    assert exp.reports["det"]["val"] == smoke_env.reports["det"]["val"]  # loaded, not trained
    assert torch.equal(torch.rand(3), expected)


def test_cached_only_loads_what_is_cached_and_trains_nothing(smoke_env, tmp_path):
    """Inside ``cached_only`` a cached experiment loads as usual, while a recognizer or a codec
    run that is not cached raises NotCachedError naming the command, and nothing is written."""
    from icm_lib.errors import NotCachedError
    from icm_lib.experiment import Experiment
    from icm_lib.profiles import get_profile
    from icm_lib.runtime import cached_only

    command, cpu = "make tutorial PROFILE=smoke", torch.device("cpu")
    with cached_only(command):
        exp = Experiment.prepare(smoke_env.profile, smoke_env.cache_dir.parent, cpu, False)
        assert set(exp.machines) == {"det", "seg"}
        run_dir = exp.run_dir("seg", "baseline", 123.0, 0)
        with pytest.raises(NotCachedError, match=command) as exc:
            exp.icm_run("seg", "baseline", 123.0, 0)
        assert run_dir.name in str(exc.value) and not run_dir.exists()
        with pytest.raises(NotCachedError, match="embedded shapes scenes"):
            Experiment.prepare(get_profile("smoke"), tmp_path / "data", cpu, False)
        assert not (tmp_path / "data" / "embedded").exists()
        with pytest.raises(NotCachedError, match="recognizer"):  # the scenes, not the machines
            shutil.copytree(smoke_env.cache_dir.parent / "embedded", tmp_path / "data" / "embedded")
            Experiment.prepare(get_profile("smoke"), tmp_path / "data", cpu, False)
    assert not list((tmp_path / "data" / "cache").glob("*.pt*"))
    assert not list((tmp_path / "data" / "cache").glob("*.lock"))


def test_a_bfloat16_codec_run_is_another_run_and_trains_under_autocast(smoke_env, tmp_path):
    """``--bf16`` (``ICMConfig.in_bfloat16``): the codec for machines trains with the
    recognizer, branch and the codec's transforms under bfloat16 autocast on the CPU too; it is
    another run (its own key), the float32 runs keep their keys (the new fields keyed only when
    set) and an MSE run, whose objective never autocasts, is the same run either way."""
    fp32 = replace(smoke_env, cache_dir=tmp_path)
    bf16 = replace(fp32, profile=replace(fp32.profile, icm=fp32.profile.icm.in_bfloat16()))
    assert bf16.profile.icm.precision() == {
        "amp": True,
        "amp_device_types": ("cuda", "cpu"),
        "codec_amp": True,
        "fold_bn": True,
    }
    assert fp32.profile.icm.precision()["amp_device_types"] == ("cuda",)
    assert not fp32.profile.icm.precision()["fold_bn"]
    assert bf16.run_dir("seg", "aux-enc", 1.0, 0, 2) != fp32.run_dir("seg", "aux-enc", 1.0, 0, 2)
    assert bf16.run_dir("seg", "mse", 0.01, 0, 2) == fp32.run_dir("seg", "mse", 0.01, 0, 2)
    # the float32 runs' keys as before the fields: test_the_new_fields_leave_every_run_key_unchanged

    calls = []
    autocast = torch.autocast

    def spy(device_type, *args, enabled=True, **kwargs):
        calls.append((device_type, kwargs.get("dtype"), enabled))
        return autocast(device_type, *args, enabled=enabled, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch, "autocast", spy)
        _, log_bf16, _ = bf16.icm_run("seg", "aux-enc", 1.0, 0, steps=2)
    assert ("cpu", torch.bfloat16, True) in calls
    _, log_fp32, _ = fp32.icm_run("seg", "aux-enc", 1.0, 0, steps=2)
    first = [(log_fp32[0][k], log_bf16[0][k]) for k in ("task_loss", "branch_loss", "bpp_loss")]
    for a, b in first:  # the same batch and initial weights: bfloat16's rounding apart
        assert a != b and abs(a - b) <= 0.05 * abs(a), (a, b)


def test_where_bfloat16_is_emulated_one_process_says_so(monkeypatch, capsys):
    """``--bf16`` where the device only emulates bfloat16: trained as asked, with one line on
    stderr, said by the process that ``say``s (a torchrun job's first; the others keep quiet)."""
    from icm_lib import runtime
    from icm_lib.profiles import get_profile, trained_in_bfloat16

    monkeypatch.setattr(runtime, "bf16_slower", lambda device: "bfloat16 is emulated here")
    profile = get_profile("smoke")
    said = []
    for say in (True, False):
        got = trained_in_bfloat16(profile, "cpu", say=say)
        assert got.icm == profile.icm.in_bfloat16()
        said.append(capsys.readouterr().err)
    assert said == [
        "--bf16: bfloat16 is emulated here; the codecs train in bfloat16 as asked\n",
        "",
    ]


def test_the_bf16_flag_trains_the_profile_in_bfloat16(monkeypatch, capsys):
    from icm_lib import train

    seen = []

    def prepare(profile, *args, **kwargs):
        seen.append(profile.icm)
        raise SystemExit(0)  # stop before any data

    monkeypatch.setattr(train.Experiment, "prepare", prepare)
    with pytest.raises(SystemExit):
        main(["--profile", "smoke", "--task", "seg", "--lmbda", "1", "--bf16", "--device", "cpu"])
    with pytest.raises(SystemExit):
        main(["--profile", "smoke", "--task", "seg", "--lmbda", "1", "--device", "cpu"])
    with pytest.raises(SystemExit):
        argv = ["--profile", "smoke", "--task", "seg", "--lmbda", "1", "--device", "cpu"]
        main([*argv, "--bf16", "--no-fold-bn"])
    assert [(icm.amp_cpu, icm.codec_amp, icm.fold_bn) for icm in seen] == [
        (True, True, True),
        (False, False, False),
        (True, True, False),  # --no-fold-bn: bfloat16, the batch norms as they are
    ]
