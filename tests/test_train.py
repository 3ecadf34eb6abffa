import json

import torch

from icm_lib.codec import build_codec
from icm_lib.data.coco import CocoDetection
from icm_lib.data.sampler import CropSampler
from icm_lib.losses import mse_objective
from icm_lib.profiles import TrainConfig
from icm_lib.trainer import train_codec

CFG = TrainConfig(
    steps=6, batch_size=2, crop=64, lr=1e-3, lmbda=0.01, checkpoint_every=2, log_every=1, seed=3
)


def _train(tmp, scenes, stop_after=None, codec=None):
    torch.manual_seed(0)
    codec = codec or build_codec("bmshj2018-hyperprior", N=16, M=24)
    sampler = CropSampler(
        CocoDetection(scenes.coco_root, "train"), CFG.crop, CFG.batch_size, CFG.seed
    )
    return train_codec(
        codec,
        sampler,
        CFG,
        mse_objective(CFG.lmbda),
        tmp,
        torch.device("cpu"),
        progress=False,
        stop_after=stop_after,
    )


def test_stop_and_resume_reproduces_an_uninterrupted_run(tmp_path, scenes):
    straight, log_a = _train(tmp_path / "a", scenes)
    _train(tmp_path / "b", scenes, stop_after=3)
    assert (tmp_path / "b" / "checkpoint.pt").is_file() and not (
        tmp_path / "b" / "codec.pt"
    ).exists()
    torch.manual_seed(
        123
    )  # a resumed process starts from other RNG state; the checkpoint restores it
    resumed, log_b = _train(tmp_path / "b", scenes)
    for (name, a), b in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().values()
    ):
        assert torch.equal(a, b), name
    assert [r["loss"] for r in log_a] == [r["loss"] for r in log_b]
    assert [r["step"] for r in log_b] == list(range(1, 7))


def test_finished_run_is_loaded_not_retrained(tmp_path, scenes):
    codec, log = _train(tmp_path, scenes)
    mtime = (tmp_path / "codec.pt").stat().st_mtime_ns
    again, log2 = _train(tmp_path, scenes)
    assert (tmp_path / "codec.pt").stat().st_mtime_ns == mtime
    assert log2 == log and len(log) == 6
    x = torch.rand(1, 3, 64, 64)
    assert again.compress(x) == codec.compress(x)
    assert json.loads((tmp_path / "config.json").read_text())["steps"] == 6


def test_crop_sampler_depends_only_on_seed_and_step(scenes):
    ds = CocoDetection(scenes.coco_root, "train")
    a, b = CropSampler(ds, 64, 3, seed=1), CropSampler(ds, 64, 3, seed=1)
    assert torch.equal(a.batch(5), b.batch(5))
    assert not torch.equal(a.batch(5), a.batch(6))


def test_crop_sampler_memory_is_bounded(scenes):
    ds = CocoDetection(scenes.coco_root, "train")
    bounded, whole = CropSampler(ds, 64, 4, seed=2, cache_images=3), CropSampler(ds, 64, 4, seed=2)
    for step in range(10):
        assert torch.equal(bounded.batch(step), whole.batch(step))  # same batches either way
        assert bounded.items.held <= 3
    assert whole.items.held > 3


def test_run_files_never_resume_across_versions_or_keep_orphan_log_records(tmp_path):
    import pytest

    from icm_lib.files import append_log, atomic_torch_save, read_log
    from icm_lib.runtime import RunFiles

    run = RunFiles(tmp_path, steps=10, log_every=1, checkpoint_every=5)
    append_log(tmp_path / "log.jsonl", {"step": 1, "loss": 1.0})  # died before a checkpoint
    assert run.restore("cpu") is None and run.start == 0
    assert read_log(tmp_path / "log.jsonl") == []  # no duplicate steps after the restart
    atomic_torch_save({"step": 5, "w": torch.ones(1)}, tmp_path / "checkpoint.pt")  # old format
    append_log(tmp_path / "log.jsonl", {"step": 5, "loss": 1.0})
    with pytest.warns(UserWarning, match="starts over"):
        assert RunFiles(tmp_path, 10, 1, 5).restore("cpu") is None
    assert read_log(tmp_path / "log.jsonl") == []
