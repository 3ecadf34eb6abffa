"""The fast training step keeps the losses (needs the CPU: the flags are forced on there), the
pseudo-labels keep their boxes, and ``python -m icm_lib.bench paper-step`` prints its figures
(smoke profile, torchvision/smp, a tiny batch)."""

import itertools
import statistics

import pytest
import torch
import torch.nn as nn

from icm_lib.dev import bench
from icm_lib.dev.stepbench import bench_paper_step, build_machine, build_step, recognition_config
from icm_lib.errors import ConfigError
from icm_lib.profiles import get_profile
from icm_lib.recognition import FrozenDetector
from icm_lib.tasks import get_task
from icm_lib.trainer import StepValues, step_flags

SMOKE = get_profile("smoke")


def test_step_flags_are_on_for_cuda_only_unless_forced():
    assert step_flags("cuda") == {
        "channels_last": True,
        "cudnn_benchmark": True,
        "fused_adam": True,
    }
    assert not any(step_flags("cpu").values())
    assert not any(step_flags("cuda", fast=False).values())
    forced = step_flags("cpu", fast=True)  # cuDNN exists on CUDA only
    assert forced == {"channels_last": True, "cudnn_benchmark": False, "fused_adam": True}


class _FixedDetections(nn.Module):
    """A 'detector' returning fixed detections (one image without any)."""

    def __init__(self, dets):
        super().__init__()
        self.dets = dets

    def forward(self, images):
        return self.dets[: len(images)]


def test_pseudo_labels_keep_the_boxes_boolean_masks_keep():
    g = torch.Generator().manual_seed(0)
    dets = [
        {
            "boxes": torch.rand(n, 4, generator=g) * 64,
            "scores": torch.rand(n, generator=g),
            "labels": torch.randint(1, 6, (n,), generator=g),
        }
        for n in (7, 0, 12)
    ]
    for threshold in (0.0, 0.5, 2.0):
        got = FrozenDetector(_FixedDetections(dets), threshold).pseudo_labels(
            torch.rand(3, 3, 8, 8)
        )
        assert len(got) == 3
        for det, labels in zip(dets, got):
            keep = det["scores"] >= threshold  # the former per-image boolean indexing
            assert torch.equal(labels["boxes"], det["boxes"][keep])
            assert torch.equal(labels["labels"], det["labels"][keep])
            assert labels["boxes"].shape[1] == 4


def test_step_values_are_what_item_gave():
    parts = {"loss": torch.tensor(0.1234567), "bpp_loss": torch.tensor(3.0) / 7}
    values = StepValues({k: v.double() for k, v in parts.items()}, 1e-4)
    assert list(values) == ["loss", "bpp_loss", "lr"] and len(values) == 3
    assert dict(values) == {
        "loss": parts["loss"].item(),
        "bpp_loss": parts["bpp_loss"].item(),
        "lr": 1e-4,
    }


@pytest.mark.parametrize("task", ["det", "seg"])
@pytest.mark.parametrize("variant", ["baseline", "aux-enc"])
def test_fast_step_gives_the_same_losses(task, variant):
    """Same batch, same seed: the losses of two steps with the step flags forced on (channels_last,
    fused Adam) equal those without them within float tolerance (needs the CPU)."""
    device = torch.device("cpu")
    machine = build_machine(task, recognition_config(SMOKE), device)
    records = {}
    for fast in (False, True):  # channels_last converts the machine in place: plain first
        setup = build_step(task, variant, machine, SMOKE, device, batch=2, crop=64, fast=fast)
        records[fast] = [setup.run(step) for step in range(2)]
    for slow, fast in zip(records[False], records[True]):
        assert slow.keys() == fast.keys()
        for key in slow:
            assert fast[key] == pytest.approx(slow[key], rel=1e-4, abs=1e-6), key


def test_phase_shares_wait_for_the_device_around_each_phase(monkeypatch):
    """On CUDA a phase's host time is its kernel launches unless the phase waits for the
    device: ``phase_seconds`` waits before and after each labelled phase, ``count_ops`` (which
    counts the step's own syncs) does not add any."""
    import icm_lib.dev.stepbench as sb

    device = torch.device("cpu")
    machine = build_machine("seg", recognition_config(SMOKE), device)
    setup = build_step("seg", "aux-enc", machine, SMOKE, device, batch=2, crop=64, fast=False)
    waits = []
    monkeypatch.setattr(sb, "_sync", lambda device: waits.append(device))
    shares = sb.phase_seconds(setup, steps=1)
    # per step: pseudo-labels, task loss, codec forward + quantile loss, branch, 2 optimizers
    assert len(waits) >= 2 * 7 and set(waits) == {device}
    assert set(shares) == {*sb.PHASES, "other"}
    waits.clear()
    sb.count_ops(setup)
    assert waits == []


@pytest.mark.parametrize("task", ["det", "seg"])
@pytest.mark.parametrize("codec_amp", [False, True], ids=["machine", "machine+codec"])
def test_bf16_step_stays_near_the_float32_step(task, codec_amp):
    """The recognizer and branch under bfloat16 autocast on the CPU (``bench icm``'s bf16 rows),
    and with ``codec_amp`` the codec's transforms too: same codec, batch and seed; each loss part
    of the step within 5 % of the float32 step's (the rate, which a bfloat16 recognizer does not
    touch, to 1e-5; to 2 % where g_a and h_s run in bfloat16), and the codec's gradient pointing
    the same way (cosine > 0.9)."""
    device = torch.device("cpu")
    machine = build_machine(task, recognition_config(SMOKE), device)
    records, grads = {}, {}
    for amp in (False, True):
        setup = build_step(
            task, "aux-enc", machine, SMOKE, device, batch=2, crop=64, amp=amp,
            codec_amp=codec_amp and amp,
        )  # fmt: skip
        records[amp] = setup.run(0)  # the step leaves its gradients in .grad
        params = [p for p in setup.stepper.codec.main_parameters() if p.grad is not None]
        grads[amp] = torch.cat([p.grad.flatten() for p in params]).double()
        # the transforms' own forwards are back after the step
        assert all("forward" not in vars(m) for m in setup.stepper.codec.model.children())
    for key in ("bpp_loss", "task_loss", "branch_loss", "loss"):
        tol = (0.02 if codec_amp else 1e-5) if key == "bpp_loss" else 0.05
        assert records[True][key] == pytest.approx(records[False][key], rel=tol), key
    cosine = torch.nn.functional.cosine_similarity(grads[True], grads[False], dim=0)
    assert cosine > 0.9


def test_paper_step_bench_prints_its_figures(capsys):
    """``--fast both``: per task/variant/amp a row with the step flags off and one with them
    on (timed interleaved), then their ratio; the op counts of each."""
    assert bench.main(
        ["paper-step", "--profile", "smoke", "--backend", "torchvision/smp", "--device", "cpu",
         "--batch", "1", "--crop", "64", "--steps", "1", "--variants", "baseline",
         "--amp", "off", "--profile-ops", "--fast", "both"]
    ) == 0  # fmt: skip
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith(("det ", "seg "))]
    rows = [line.split() for line in lines if "fast on" not in line]
    assert [r[:2] + r[4:7] for r in rows] == [  # smp's DeepLabV3+ has dropout: not NHWC
        ["det", "baseline", "fp32", "off", "no"],
        ["det", "baseline", "fp32", "on", "yes"],
        ["seg", "baseline", "fp32", "off", "no"],
        ["seg", "baseline", "fp32", "on", "no"],
    ]
    seconds = {}
    for r in rows:
        s_step, img_s, peak, hours, ops, leaf, syncs = map(float, r[7:14])
        assert s_step > 0 and img_s > 0 and hours > 0 and peak >= 0
        assert ops >= leaf > 0 and syncs >= 0
        seconds[r[0], r[5]] = r[7]
    ratios = [line for line in lines if "fast on" in line]
    assert [r.split()[:3] for r in ratios] == [
        ["det", "baseline", "fp32:"],
        ["seg", "baseline", "fp32:"],
    ]
    for r, task in zip(ratios, ("det", "seg")):  # the ratio of the two rows printed above it
        off, on = float(seconds[task, "off"]), float(seconds[task, "on"])
        assert f"({seconds[task, 'off']} -> {seconds[task, 'on']} s/step)" in r
        assert float(r.split()[5].rstrip("x")) == pytest.approx(off / on, rel=0.02, abs=0.006)
    assert "sync operators per step" in out


def test_paper_step_fast_settings_get_their_own_recognizer():
    """The fast flags turn the recognizer channels-last: the row with them off keeps a
    contiguous one (the flags' setups hold copies), and each row says which it was."""
    rows = bench_paper_step(
        torch.device("cpu"), 1, 1, 64, "torchvision/smp", ("det",), ("baseline",), (False,),
        profile_name="smoke", fast=(False, True),
    )  # fmt: skip
    assert [(r["fast"], r["layout"]) for r in rows] == [
        (False, "contiguous"),
        (True, "channels_last"),
    ]
    assert all(r["s_per_step"] > 0 and len(r["seconds"]) == 1 for r in rows)


def test_paper_step_says_what_a_study_plan_takes(capsys):
    """The last line hands ``python -m icm_lib.study --plan`` the s/step of the rows a study
    would run on this device (on a CPU: no autocast, the step flags off), in its own syntax."""
    from icm_lib.study import _s_per_step

    rows = bench_paper_step(
        torch.device("cpu"), 1, 2, 64, "torchvision/smp", ("seg",), ("baseline", "aux-enc"),
        (False,), profile_name="smoke", fast=(False, True),
    )  # fmt: skip
    line = [x for x in capsys.readouterr().out.splitlines() if "--s-per-step" in x]
    assert len(line) == 1 and "amp off, the trainer's step flags off" in line[0]
    plan = _s_per_step(line[0].split("--s-per-step ")[1].split())
    study = {r["variant"]: r["s_per_step"] for r in rows if not r["amp"] and not r["fast"]}
    assert plan == pytest.approx(
        {"seg": study["baseline"], "seg/aux-enc": study["aux-enc"]}, rel=1e-3
    )


def test_the_study_plan_takes_the_rows_a_study_runs():
    from icm_lib.dev.stepbench import study_s_per_step

    rows = [
        {"task": t, "variant": v, "amp": amp, "fast": fast, "s_per_step": 0.1 * i}
        for i, (t, v, amp, fast) in enumerate(
            itertools.product(("det", "seg"), ("baseline", "aux-enc"), (False, True), (False, True))
        )
    ]
    assert study_s_per_step(rows, True, True) == "det=0.3 det/aux-enc=0.7 seg=1.1 seg/aux-enc=1.5"
    assert study_s_per_step(rows, False, False) == "det=0 det/aux-enc=0.4 seg=0.8 seg/aux-enc=1.2"
    assert study_s_per_step(rows[:1], True, True) == ""


def test_paper_step_rows_with_autocast():
    rows = bench_paper_step(
        torch.device("cpu"), 1, 1, 64, "torchvision/smp", ("det",), ("aux-enc",), (False, True),
        profile_ops=True, profile_name="smoke",
    )  # fmt: skip
    assert rows and all(r["s_per_step"] > 0 and r["hours"] > 0 for r in rows)
    assert rows[0]["syncs"] > 0 and rows[0]["by_phase"]["pseudo_labels"] > 0


def test_the_icm_step_yardstick_times_shares_and_counts(smoke_env, capsys):
    """``bench icm``: per task/variant/fast one row with s/step, phase shares that add up to
    the step, the step's FLOPs and its distance to the matmul floor; the fast flags' effect on
    the shared recognizer is undone after each row. The three bfloat16 rows where the CPU
    multiplies bfloat16 natively (four: the last as ``--bf16`` trains, batch norms folded), as
    ``--bf16 auto`` does: emulated, the first three took 700 s of an AVX2
    machine's CI (the bfloat16 steps themselves are checked on every machine by
    ``test_bf16_step_stays_near_the_float32_step``)."""
    from icm_lib.dev.stepbench import PHASES, bench_icm_step
    from icm_lib.runtime import bf16_native

    exp, native = smoke_env, bf16_native()
    rows = bench_icm_step(
        exp, steps=1, tasks=("seg",), variants=("aux-enc",), fast=(False, True), bf16=native
    )
    expected = [
        ("seg", "aux-enc", False, "run", False),
        ("seg", "aux-enc", True, "run", False),
        ("seg", "aux-enc", False, "cached", False),  # a later run of the seed: labels cached
    ]
    if native:
        expected += [
            ("seg", "aux-enc", False, "run", True),  # the recognizer and branch in bfloat16
            ("seg", "aux-enc", False, "cached", True),
            ("seg", "aux-enc", False, "cached", True),  # and the codec's transforms
            ("seg", "aux-enc", False, "cached", True),  # and batch norms folded: --bf16
        ]
    assert [(r["task"], r["variant"], r["fast"], r["labels"], r["bf16"]) for r in rows] == expected
    assert [r["codec_bf16"] for r in rows] == ([False] * 5 + [True] * 2 if native else [False] * 3)
    assert [r["fold_bn"] for r in rows] == ([False] * 6 + [True] if native else [False] * 3)
    for r in rows:
        assert r["s_per_step"] > 0 and r["flops"] > 0
        assert len(r["seconds"]) == 1 and r["s_per_step"] == r["seconds"][0]
        assert r["x_floor"] == pytest.approx(r["s_per_step"] / r["floor_s"])
        assert set(r["shares"]) == {*PHASES, "other"}
        assert sum(r["shares"].values()) == pytest.approx(1.0)
        assert r["shares"]["codec"] > 0 and r["shares"]["task_loss"] > 0
        assert r["shares"]["branch"] > 0 and r["shares"]["optimizer"] > 0
    # the same arithmetic with and without the layout change or bfloat16; less without the
    # labels' pass
    assert rows[0]["flops"] == rows[1]["flops"] > rows[2]["flops"]
    assert all(r["flops"] == rows[0]["flops"] for r in rows if r["labels"] == "run")
    assert all(r["flops"] == rows[2]["flops"] for r in rows if r["labels"] == "cached")
    assert rows[2]["label_hits"] > 0 and rows[0]["label_hits"] is None
    model = exp.machine("seg").model
    assert all(p.is_contiguous() for p in model.parameters())
    out = capsys.readouterr().out
    assert "GFLOP/s" in out and "seg aux-enc: against the float32 step" in out
    assert "fast on" in out and "labels cached" in out and "bfloat16 hardware:" in out
    assert ("bf16 + labels cached" in out) is native
    assert ("bf16 codec too + labels cached" in out) is native
    assert ("and batch norms folded (--bf16)" in out) is native


def test_the_ratio_line_gives_the_ratio_of_medians_and_its_step_by_step_range():
    """Each setting against the float32 step that runs its labels: the medians' ratio, then the
    lowest and highest ratio of step i to step i (timed side by side); nothing without that
    float32 row, and a setting not benched is left out."""
    from icm_lib.dev.stepbench import ratio_line

    def row(fast, labels, precision, seconds):
        return {
            "fast": fast,
            "labels": labels,
            "precision": precision,
            "seconds": seconds,
            "s_per_step": statistics.median(seconds),
        }

    base = row(False, "run", "fp32", [2.0, 1.0, 4.0])  # median 2.0
    folded = row(False, "cached", "bf16cf", [1.0, 0.8, 1.0])  # median 1.0; 2.0, 1.25, 4.0
    cached = row(False, "cached", "fp32", [1.6, 0.5, 2.0])  # median 1.6; 1.25, 2.0, 2.0
    line = ratio_line([folded, base, cached])
    assert line.startswith("against the float32 step that runs its labels")
    assert "labels cached 1.25x (1.25-2.00)" in line
    assert "and batch norms folded (--bf16) 2.00x (1.25-4.00)" in line
    assert line.index("labels cached") < line.index("batch norms folded")
    assert "fast on" not in line and "bf16 +" not in line
    assert ratio_line([folded, cached]) == ""


def test_a_rows_settings_are_timed_interleaved():
    """``bench icm`` times a task/variant's settings together: step i of each before step i + 1
    of any (step 0 the warm-up, not timed), the order rotated by one each step, each step under
    its own setting's cuDNN autotuning flag, the process's flag restored after."""
    from icm_lib.dev.stepbench import StepSetup, interleaved_seconds

    calls = []

    class Stepper:
        def __init__(self, name, benchmark):
            self.name, self.flags = name, {"cudnn_benchmark": benchmark}

        def __call__(self, step, batch):
            calls.append((self.name, step, torch.backends.cudnn.benchmark))

    before = torch.backends.cudnn.benchmark
    cpu = torch.device("cpu")
    setups = [StepSetup("seg", "baseline", Stepper(n, n == "b"), 1, 4, cpu, 1) for n in "abc"]
    times = interleaved_seconds(setups, 3)
    assert [len(t) for t in times] == [3, 3, 3] and all(x >= 0 for t in times for x in t)
    assert [(n, i) for n, i, _ in calls] == [
        ("a", 0), ("b", 0), ("c", 0),
        ("b", 1), ("c", 1), ("a", 1),
        ("c", 2), ("a", 2), ("b", 2),
        ("a", 3), ("b", 3), ("c", 3),
    ]  # fmt: skip
    assert all(flag is (n == "b") for n, _, flag in calls)
    assert torch.backends.cudnn.benchmark is before


def test_the_benchmarks_read_the_checkouts_data_folder(monkeypatch):
    """Moved into icm_lib/dev/, the default cache folder must still be the checkout's data/cache
    (one level more of parents): a wrong default retrains the recognizers into the package."""
    from pathlib import Path

    seen = {}
    monkeypatch.setattr(
        bench, "bench_icm", lambda profile, data_dir, *a: seen.update(d=data_dir, tasks=a[-1])
    )
    bench.main(["icm"])
    assert seen["d"] == Path(__file__).resolve().parents[1] / "data"
    assert seen["tasks"] == ("det", "seg")
    bench.main(["icm", "--tasks", "seg"])  # one task's rows alone
    assert seen["tasks"] == ("seg",)


def test_a_gpu_that_only_emulates_bfloat16_is_not_taken_for_native(monkeypatch):
    """``torch.cuda.is_bf16_supported()`` counts emulation by default (a V100, a T4): the GPU's
    bfloat16 is native only where it multiplies bfloat16 itself, asked of the device given."""
    import contextlib

    import icm_lib.runtime as runtime

    asked = []

    def device(d):
        asked.append(d)
        return contextlib.nullcontext()

    monkeypatch.setattr(torch.cuda, "device", device)
    for units in (False, True):
        monkeypatch.setattr(
            torch.cuda,
            "is_bf16_supported",
            lambda including_emulation=True: including_emulation or units,
        )
        gpu = torch.device("cuda", 1)
        assert runtime.bf16_native(gpu) is units
        assert runtime.bf16_hardware(gpu) == (
            "CUDA bf16" if units else "none (this GPU emulates it)"
        )
    assert asked and set(asked) == {torch.device("cuda", 1)}


@pytest.mark.parametrize(
    "hardware, native",
    [("avx512_bf16", True), ("avx512_bf16 + amx_bf16", True), ("CUDA bf16", True),
     ("none (emulated: slower than float32)", False), ("none (this GPU emulates it)", False),
     ("unknown (no /proc/cpuinfo)", False)],
)  # fmt: skip
def test_bench_icm_prints_bf16_rows_where_bfloat16_is_native(monkeypatch, hardware, native):
    """``bench icm --bf16 auto`` (the default) adds the bfloat16 rows only where the device
    multiplies bfloat16 natively; ``on`` / ``off`` force them."""
    from pathlib import Path

    import icm_lib.dev.bench as b
    import icm_lib.dev.stepbench as sb
    import icm_lib.experiment as ex
    import icm_lib.runtime as runtime

    monkeypatch.setattr(runtime, "bf16_hardware", lambda device=None: hardware)
    assert runtime.bf16_native() is native
    # the one note every caller prints where bfloat16 is not native: "may" where unknown
    slower = runtime.bf16_slower()
    assert (slower is None) is native
    if not native:
        assert hardware in slower
        assert ("may be slower" in slower) is hardware.startswith("unknown")
        assert ("several times slower" in slower) is hardware.startswith("none")
    asked = []
    monkeypatch.setattr(
        sb, "bench_icm_step", lambda exp, steps, tasks, fast, bf16: asked.append(bf16)
    )
    monkeypatch.setattr(ex.Experiment, "prepare", classmethod(lambda cls, *a, **k: None))
    monkeypatch.setattr(b, "_encode_time_ratio", lambda exp, repeats: None)
    for choice in ("auto", "on", "off"):
        b.bench_icm("smoke", Path("data"), 1, 1, (False,), choice)
    assert asked == [native, True, False]


def test_bench_loading_draws_each_recognizers_whole_stream_both_ways(smoke_env, capsys):
    """``bench loading``: per task, the profile's steps drawn read-per-crop and kept, timed."""
    rows = bench.bench_loading("smoke", smoke_env.cache_dir.parent, ("det", "seg"))
    steps = SMOKE.recognition.steps_for
    assert [(r["task"], r["steps"]) for r in rows] == [
        ("det", steps(get_task("det"))),
        ("seg", steps(get_task("seg"))),
    ]
    assert all(r["read_s"] > 0 and r["kept_s"] > 0 for r in rows)
    assert "read from disk per crop vs kept in memory" in capsys.readouterr().out


def test_bench_recognizers_sets_the_chosen_precision_or_recipe_against_float32(smoke_env, capsys):
    """``bench recognizers --precision bfloat16-backbone``: per seed the profile's float32
    detector (the cached one) and one trained with its backbone in bfloat16, side by side;
    ``--recipe det_train_steps=2``: the same against another schedule in float32, with both
    step counts. A recipe or precision that cannot be stops before any training."""
    rows = bench.bench_recognizers(
        "smoke", smoke_env.cache_dir.parent, (0,), ("det",), "bfloat16-backbone"
    )
    (row,) = rows
    assert (row["task"], row["seed"]) == ("det", 0)
    assert set(row["seconds"]) == {"float32", "bfloat16-backbone"}
    assert row["fp32"] == smoke_env.reports["det"]["val"]["map"]
    said = capsys.readouterr().out
    assert "bfloat16-backbone - float32, mean over 1 seeds" in said
    assert "one seed: no seed-to-seed SD" in said and "nan" not in said
    assert said.count("bfloat16 hardware") == 1  # in the header, or in the "slower" line
    (row,) = bench.bench_recognizers(
        "smoke", smoke_env.cache_dir.parent, (0,), ("det",), None, {"det_train_steps": 2}
    )
    assert row["fp32"] == smoke_env.reports["det"]["val"]["map"]
    steps = SMOKE.recognition.steps_for("det")
    assert row["steps"] == {"float32": steps, "det_train_steps=2": 2} and steps != 2
    assert "det: det_train_steps=2 - float32, mean over 1 seeds" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="--tasks seg: train precisions"):  # before any training
        bench.bench_recognizers("smoke", smoke_env.cache_dir.parent, (0,), ("det", "seg"),
                                "bfloat16-features")  # fmt: skip
    for recipe, said in (
        ({"det_lr": "fast"}, "--recipe: .*takes float"),
        ({"no_such": 1}, "--recipe: .*no field"),
        ({"seg_train_precision": "bfloat16"}, "with --precision"),
        ({"eval_every": 5}, "not part of how a recognizer trains"),
        ({"crop_schedule": ((48, 0.5),)}, "--recipe: crop_schedule .*multiples of 32"),
    ):
        with pytest.raises(ConfigError, match=said):
            bench.bench_recognizers("smoke", smoke_env.cache_dir.parent, (0,), ("det",), None,
                                    recipe)  # fmt: skip
    with pytest.raises(ConfigError, match="nothing to compare"):
        bench.bench_recognizers("smoke", smoke_env.cache_dir.parent, (0,), ("det",), None)
    # a recipe of the other task's fields alone: that task is not compared with itself
    assert bench.bench_recognizers("smoke", smoke_env.cache_dir.parent, (0,), ("seg",), None,
                                   {"det_lr": 0.01}) == []  # fmt: skip
    assert "the recipe changes only the det recognizer; skipped" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="each item is FIELD=VALUE"):
        bench.main(["recognizers", "--profile", "smoke", "--recipe", "det_steps150"])


def test_bench_reference_trains_the_reference_codec_both_ways(smoke_env, capsys):
    """``bench reference``: per seed the profile's reference codec in float32 (seed 0: the one
    notebook 00 trained, from the cache) and with its transforms in bfloat16, scored alike."""
    from icm_lib.experiment import reference_validator, val_crops

    rows = bench.bench_reference("smoke", smoke_env.cache_dir.parent, (0,))
    (row,) = rows
    assert row["seed"] == 0 and set(row) == {"seed", "float32", "bfloat16"}
    batch = val_crops(smoke_env.datasets.val("det"), SMOKE.ablation.val_images, SMOKE.mse.crop)
    own = reference_validator(batch)(smoke_env.reference)
    assert row["float32"]["val_bpp"] == pytest.approx(own["val_bpp"], rel=1e-6)
    assert row["bfloat16"]["val_psnr"] != row["float32"]["val_psnr"]
    assert "val_psnr: bfloat16 - float32, mean over 1 seeds" in capsys.readouterr().out


def test_bench_compile_sets_the_compiled_task_loss_against_eager(monkeypatch, capsys):
    """``bench compile``: per task and precision the frozen recognizer's task loss and input
    gradient, eager and compiled, and the gradients' cosine with dropout off. With an identity
    "compiler" the two are one function: the cosine is exactly 1, which it would not be if the
    segmenter's dropout still drew its masks."""
    import icm_lib.dev.bench as b

    monkeypatch.setattr(torch, "compile", lambda module: module)
    monkeypatch.setattr(b, "bf16_native", lambda device=None: False)
    rows = b.bench_compile("smoke", ("seg",), 1)
    assert [(r["task"], r["precision"]) for r in rows] == [("seg", "fp32")]
    assert rows[0]["grad_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert rows[0]["eager_s"] > 0 and rows[0]["compiled_s"] > 0 and rows[0]["compile_s"] > 0
    assert "grad cos" in capsys.readouterr().out


def test_runs_side_by_side_against_one_at_a_time(smoke_env, capsys):
    """``bench workers``: the step alone with every thread and in two processes at once with
    half each (spawned workers that meet before each measurement), in one run: a row per
    combination whose ratio is the images/s of the two against the one. With cached labels,
    every timed step of each worker reads its labels from its cache."""
    from icm_lib.dev.stepbench import bench_workers

    cores = torch.get_num_threads()
    rows = bench_workers(
        "smoke", smoke_env.cache_dir.parent, steps=2, workers=2, tasks=("seg",),
        variants=("baseline",), labels=("run", "cached"),
    )  # fmt: skip
    assert [(r["task"], r["variant"], r["precision"], r["labels"]) for r in rows] == [
        ("seg", "baseline", "fp32", "run"),
        ("seg", "baseline", "fp32", "cached"),
    ]
    assert rows[0]["label_hits"] == [None] * 3
    r = rows[1]
    assert r["threads_alone"] == cores and r["threads_together"] == max(1, cores // 2)
    assert r["s_alone"] > 0 and len(r["s_together"]) == 2 and min(r["s_together"]) > 0
    assert r["label_hits"] == [2, 2, 2]  # alone, then each worker side by side
    batch = get_profile("smoke").icm.train("seg").batch_size
    assert r["images_per_s_together"] == pytest.approx(sum(batch / s for s in r["s_together"]))
    assert r["ratio"] == pytest.approx(r["images_per_s_together"] / (batch / r["s_alone"]))
    out = capsys.readouterr().out
    assert "seg  baseline  fp32    run" in out and "2 runs side by side against one at" in out
    later = float(out.split("one at a time): seg baseline fp32 ")[1].split("x")[0])
    assert later == pytest.approx(
        r["images_per_s_together"] / rows[0]["images_per_s_alone"], rel=0.01
    )
    with pytest.raises(ValueError, match="2 or more"):
        bench_workers("smoke", smoke_env.cache_dir.parent, workers=1)


def test_a_failing_worker_ends_the_side_by_side_bench_with_its_error(smoke_env):
    """A worker that fails (here: a variant no branch has) hands its traceback to the bench,
    the others stop waiting for it, and the bench raises instead of hanging."""
    from icm_lib.dev.stepbench import bench_workers

    with pytest.raises(RuntimeError, match=r"(?s)worker 0 of the bench failed.*no-such-variant"):
        bench_workers(
            "smoke", smoke_env.cache_dir.parent, steps=1, workers=2, tasks=("seg",),
            variants=("no-such-variant",),
        )  # fmt: skip
