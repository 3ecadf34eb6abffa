"""Pseudo-labels computed once: the same training, bit for bit, with the recognizer run once per
batch across runs; the cache keyed by the batch's bytes and the recognizer's identity."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from icm_lib.pseudo_labels import CachedMachine, batch_key


@pytest.mark.parametrize("task", ["det", pytest.param("seg", marks=pytest.mark.slow)])
def test_a_run_with_cached_labels_trains_bit_for_bit_as_without(
    smoke_env, tmp_path, monkeypatch, task
):
    machine = smoke_env.machine(task)
    real = type(machine).pseudo_labels
    calls = {"n": 0}

    def counting(self, x):
        calls["n"] += 1
        return real(self, x)

    monkeypatch.setattr(type(machine), "pseudo_labels", counting)

    monkeypatch.setenv("ICM_PSEUDO_CACHE", "0")
    plain, _, _ = replace(smoke_env, cache_dir=tmp_path / "off").icm_run(
        task, "baseline", 0.5, 0, steps=3
    )
    assert calls["n"] == 3

    monkeypatch.setenv("ICM_PSEUDO_CACHE", "1")
    exp = replace(smoke_env, cache_dir=tmp_path / "on")
    exp.icm_run(task, "baseline", 5.0, 0, steps=3)  # fills the cache: another λ, same batches
    assert calls["n"] == 6
    files = list((tmp_path / "on" / "pseudo").rglob("*.pt"))
    assert len(files) == 3
    cached_run, _, _ = exp.icm_run(task, "baseline", 0.5, 0, steps=3)
    assert calls["n"] == 6  # every batch's labels came from the cache
    a, b = plain.state_dict(), cached_run.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_key_is_the_batch_bytes_and_the_recognizer(smoke_env, tmp_path):
    x = torch.rand(2, 3, 64, 64)
    assert batch_key(x) == batch_key(x.clone()) != batch_key(x.double())
    y = x.clone()
    y[0, 0, 0, 0] = torch.nextafter(y[0, 0, 0, 0], torch.tensor(2.0))
    assert batch_key(y) != batch_key(x)

    det = smoke_env.machine("det")
    a = CachedMachine(det, tmp_path)
    threshold = det.score_threshold
    try:
        det.score_threshold = threshold + 0.1  # another setting: other labels, other folder
        b = CachedMachine(det, tmp_path)
    finally:
        det.score_threshold = threshold
    assert a.folder != b.folder
    rpn = det.model.rpn._post_nms_top_n
    try:
        det.model.rpn._post_nms_top_n = {k: v + 1 for k, v in rpn.items()}
        c = CachedMachine(det, tmp_path)
    finally:
        det.model.rpn._post_nms_top_n = rpn
    assert c.folder != a.folder and CachedMachine(det, tmp_path).folder == a.folder


def test_a_damaged_file_is_recomputed_and_the_folder_stays_bounded(smoke_env, tmp_path):
    seg = CachedMachine(smoke_env.machine("seg"), tmp_path / "a")
    x = torch.rand(2, 3, 64, 64)
    first = seg.pseudo_labels(x)
    (path,) = seg.folder.glob("*.pt")
    path.write_bytes(path.read_bytes()[:20])  # cut
    again = seg.pseudo_labels(x)
    assert torch.equal(first, again) and (seg.misses, seg.hits) == (2, 0)
    assert torch.equal(seg.pseudo_labels(x), first) and seg.hits == 1

    size = path.stat().st_size
    small = CachedMachine(smoke_env.machine("seg"), tmp_path / "b", max_bytes=int(size * 10.5))
    for i in range(51):  # the bound is enforced every 50 new files
        small.pseudo_labels(torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(i)))
    assert len(list(small.folder.glob("*.pt"))) <= 10
