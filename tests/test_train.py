import json

import numpy as np
import torch
from PIL import Image

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


def test_cached_items_are_bounded_in_bytes_too():
    from icm_lib.data.sampler import CachedItems, nbytes

    class Sized(torch.utils.data.Dataset):  # item i: an image of (i + 1) KiB and a target
        reads = 0

        def __len__(self):
            return 8

        def __getitem__(self, i):
            Sized.reads += 1
            return torch.full((256 * (i + 1),), float(i)), {"labels": torch.zeros(4).long()}

    ds = Sized()
    assert nbytes(ds[2]) == 3 * 1024 + 32
    assert nbytes([Image.new("RGB", (10, 4)), np.zeros(3), {"name": "x"}]) == 120 + 24
    bound = 5 * 1024 + 64
    items = CachedItems(ds, capacity=100, max_bytes=bound)
    for i in (0, 1, 2, 7, 3, 0):
        image, _ = items[i]
        assert torch.equal(image, ds[i][0])  # what is served never depends on what is held
        assert items.held_bytes <= bound
    assert items.held_bytes == sum(nbytes(ds[i]) for i in (3, 0))  # the two most recent fit
    Sized.reads = 0
    items[7]  # 8 KiB: larger than the bound, served without being kept (nothing evicted)
    items[0]
    assert Sized.reads == 1 and items.held == 2


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


def test_a_runs_logged_seconds_count_only_its_active_time_across_resumes(tmp_path, monkeypatch):
    """The training seconds of a run's log are differences of ``runtime.active_seconds`` (which
    stands still while the process is stopped) and carry on from the checkpoint's step."""
    from icm_lib import runtime
    from icm_lib.runtime import RunFiles

    clock = {"now": 1000.0}
    monkeypatch.setattr(runtime, "active_seconds", lambda: clock["now"])

    def train(stop_after):
        run = RunFiles(tmp_path, steps=4, log_every=1, checkpoint_every=2)
        with run.claim():
            run.restore("cpu")
            for step in run.steps(stop_after, progress=False):
                clock["now"] += 10.0  # a step takes 10 active seconds
                run.log(step + 1, {"loss": 1.0})
                run.checkpoint(step + 1, lambda: {"w": torch.ones(1)})
        return [r["seconds"] for r in run.read_log()]

    assert train(2) == [10.0, 20.0]
    clock["now"] = 5000.0  # the next session's clock starts elsewhere
    assert train(None) == [10.0, 20.0, 30.0, 40.0]


def test_reference_codec_in_bfloat16_is_its_own_codec_close_to_float32(scenes):
    """``mse.precision="bfloat16"``: the reference codec's transforms run in bfloat16 while it
    trains (the likelihoods and the loss in float32, the weights float32), its loss within 2 %
    of float32's on the same weights and crops; it is another cache entry, and float32 keys the
    codec as before the field."""
    import dataclasses
    from types import SimpleNamespace

    import pytest

    from icm_lib.experiment import reference_dir
    from icm_lib.profiles import get_profile

    fp32 = get_profile("smoke")
    bf16 = dataclasses.replace(fp32, mse=dataclasses.replace(fp32.mse, precision="bfloat16"))
    with pytest.raises(ValueError, match="mse.precision"):
        dataclasses.replace(fp32.mse, precision="float16")
    datasets = SimpleNamespace(det_train=CocoDetection(scenes.coco_root, "train"))
    a, b = (reference_dir(p, datasets, "cache") for p in (fp32, bf16))
    assert a != b
    assert a == reference_dir(
        dataclasses.replace(fp32, mse=dataclasses.replace(fp32.mse, precision="float32")),
        datasets,
        "cache",
    )
    torch.manual_seed(0)
    codec = build_codec("bmshj2018-hyperprior", N=16, M=24)
    seen = []
    for m in (codec.model.g_a[0], codec.model.g_a):  # its first conv, and what g_a hands on
        m.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    x = torch.rand(2, 3, 64, 64)
    losses = [mse_objective(0.01, bf16=flag)(codec, None, x) for flag in (False, True)]
    assert seen == [torch.float32] * 2 + [torch.bfloat16, torch.float32]
    assert all(parts["loss"].dtype == torch.float32 for parts in losses)
    assert losses[1]["loss"].item() != losses[0]["loss"].item()  # bfloat16 ran
    assert losses[1]["loss"].item() == pytest.approx(losses[0]["loss"].item(), rel=0.02)
