"""The λ pilot's rule on hand-made rows, and the pilot's runs being the study's own."""

from __future__ import annotations

from pathlib import Path

import pytest

from icm_lib.pilot import collapsed, select


def rows(*triples, collapsed_at=()):
    return [
        {"lmbda": lm, "bpp": b, "metric": m, "collapsed": lm in collapsed_at}
        for lm, b, m in triples
    ]


PILOT = rows(
    (0.1, 0.02, 0.30),  # 60 %: below the band
    (0.2, 0.04, 0.41),  # 82 %
    (0.4, 0.07, 0.44),  # 88 %
    (0.8, 0.11, 0.46),  # 92 %
    (1.6, 0.16, 0.48),  # 96 %
    (3.2, 0.22, 0.495),  # 99 %: above
)


def test_the_widest_rising_window_inside_the_band_is_chosen():
    out = select(PILOT, reference=0.5)
    assert out["lambdas"] == [0.2, 0.4, 0.8, 1.6]
    assert out["ablation_lambda"] == 0.4  # the second-lowest
    assert [s["lmbda"] for s in out["shares"]] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2]
    assert out["shares"][1]["share"] == pytest.approx(0.82)


def test_a_flat_step_breaks_a_window_and_ties_go_to_the_lower_rates():
    flat = rows(
        (0.1, 0.03, 0.41), (0.2, 0.05, 0.43), (0.4, 0.08, 0.45), (0.8, 0.12, 0.47),
        (1.6, 0.17, 0.47), (3.2, 0.23, 0.48),
    )  # fmt: skip
    # 0.8 -> 1.6 does not rise: only the first window qualifies
    assert select(flat, 0.5)["lambdas"] == [0.1, 0.2, 0.4, 0.8]
    even = rows(
        (0.1, 0.03, 0.41), (0.2, 0.05, 0.42), (0.4, 0.08, 0.43), (0.8, 0.12, 0.44),
        (1.6, 0.17, 0.45),
    )  # fmt: skip
    # both windows span 0.03: the lower rates win
    assert select(even, 0.5)["lambdas"] == [0.1, 0.2, 0.4, 0.8]


def test_the_ablation_lambda_skips_a_collapsed_run():
    assert select(PILOT, 0.5)["ablation_lambda"] == 0.4
    bad = rows(*[(r["lmbda"], r["bpp"], r["metric"]) for r in PILOT], collapsed_at=(0.4,))
    assert select(bad, 0.5)["ablation_lambda"] == 0.8


@pytest.mark.parametrize(
    "metrics, hint, fallback",
    [
        ((0.1, 0.2, 0.3, 0.35), "upwards", [0.1, 0.2, 0.4, 0.8]),
        ((0.495, 0.496, 0.497, 0.498), "downwards", [0.1, 0.2, 0.4, 0.8]),
        ((0.30, 0.45, 0.30, 0.45), "refine", None),
    ],
)
def test_no_window_says_which_way_to_extend_the_grid(metrics, hint, fallback):
    rs = rows(*[(0.1 * 2**i, 0.01 * (i + 1), m) for i, m in enumerate(metrics)])
    out = select(rs, 0.5)
    assert hint in out["reason"] and out["band_reached"] is False
    # amendment 4: a strictly rising window is still chosen, flagged; none where none rises
    assert out["lambdas"] == fallback
    assert ("band not reached" in out["reason"]) == (fallback is not None)


def test_the_fallback_takes_the_rising_window_with_the_highest_top_share():
    # detection as the cpu-patterns world check saw it: every share below 80 %
    det = rows(
        (0.2, 0.03, 0.100), (0.4, 0.045, 0.114), (0.8, 0.067, 0.137), (1.6, 0.102, 0.147),
        (3.2, 0.177, 0.141), (6.4, 0.25, 0.150), (12.8, 0.33, 0.152),
    )  # fmt: skip
    out = select(det, 0.197)
    # 3.2 breaks the windows through it; of the rising ones, 0.2-1.6 tops highest (75 %)
    assert out["lambdas"] == [0.2, 0.4, 0.8, 1.6] and out["band_reached"] is False
    assert out["ablation_lambda"] == 0.4 and "75%" in out["reason"]
    assert select(PILOT, 0.5)["band_reached"] is True and select(PILOT, 0.5)["reason"] is None


def test_the_noise_of_a_pilot_metric_and_of_its_rise_over_the_val_images():
    """Two runs on two val images (one class): run A scores 1/2 on each image, so every
    resample gives mIoU 0.5; run B scores 2/2 and 0/2, so a resample gives 1, 0.5 or 0 (SE of
    the mean of two fair coins, √(0.25 / 2) ≈ 0.35). Their rise is 0 on the full set and, paired,
    varies exactly as B does."""
    from types import SimpleNamespace

    from icm_lib.pilot import metric_noise
    from icm_lib.results import ImageRecords

    def run(lmbda, inter):
        images = ImageRecords(
            ids=[0, 1], pixels=[4, 4], bits=[1.0, 1.0], psnr=[0, 0], ms_ssim=[0, 0],
            checkerboard=[0, 0], intersection=[[i] for i in inter], union=[[2], [2]],
            labelled=[2, 2],
        )  # fmt: skip
        point = SimpleNamespace(images=images, metric=images.metric())
        return SimpleNamespace(lmbda=lmbda, task="seg", point=lambda task: point)

    noise = metric_noise([run(2.0, [2, 0]), run(1.0, [1, 1])], n_boot=2000)
    assert [r["lmbda"] for r in noise] == [1.0, 2.0]  # ascending λ
    assert noise[0]["se"] == 0 and "rise" not in noise[0]
    assert noise[1]["rise"] == 0 and noise[1]["se"] == pytest.approx(0.354, abs=0.03)
    assert noise[1]["rise_se"] == pytest.approx(noise[1]["se"])
    assert metric_noise([SimpleNamespace(lmbda=1.0, task="seg", point=lambda t: None)]) is None


def test_collapse_is_a_rise_of_the_validation_task_loss_late_in_training():
    steps = list(range(10, 210, 10))
    steady = {"step": steps, "task_loss": [1.5 - 0.01 * i for i in range(20)]}
    lost = {"step": steps, "task_loss": [1.4] * 10 + [1.4 + 0.2 * i for i in range(10)]}
    noisy = {"step": steps, "task_loss": [1.4 + (0.05 if i % 2 else -0.05) for i in range(20)]}
    assert collapsed(steady) is False
    assert collapsed(lost) is True
    assert collapsed(noisy) is False
    assert collapsed(None) is None and collapsed({"step": [], "task_loss": []}) is None


@pytest.mark.slow
def test_the_pilot_runs_are_the_study_grid_runs(tmp_path):
    """On smoke with a 4-λ seg pilot: the file is complete, its rows are its runs' points, and
    every run folder is the one the study's grid (validation included) would use."""
    import torch

    from icm_lib.experiment import Experiment
    from icm_lib.pilot import main
    from icm_lib.profiles import get_profile
    from icm_lib.results import PilotFile

    grid = "(0.05,0.5,5.0,50.0)"
    out = main(
        [
            "--profile", "smoke", "--tasks", "seg", "--no-progress",
            "--data-dir", str(tmp_path / "data"), "--results-dir", str(tmp_path),
            "--overrides", f"pilot__seg_lambdas={grid} icm__validate_every=2",
        ]
    )  # fmt: skip
    assert PilotFile.read(tmp_path / "pilot-smoke.json") == out and out.complete
    sel = out.selection["seg"]
    assert [r["lmbda"] for r in sel["rows"]] == [0.05, 0.5, 5.0, 50.0]
    assert [r["metric"] for r in sel["rows"]] == [r.point("seg").metric for r in out.runs]
    assert all(r.val and r.val["step"][-1] == r.steps for r in out.runs)  # validated runs
    profile = get_profile("smoke", icm__validate_every=2)
    exp = Experiment.prepare(profile, tmp_path / "data", torch.device("cpu"), False)
    assert [r.run_dir for r in out.runs] == [
        str(exp.run_dir("seg", "baseline", lm, 0, validate_every=2))
        for lm in (0.05, 0.5, 5.0, 50.0)
    ]
    # a machine that lost its cache: the pilot takes its runs from its file, trains nothing,
    # and the R-D study takes the same runs (its seed-0 baselines) from the pilot's file
    import shutil

    from icm_lib.study import run_study

    for r in out.runs:
        shutil.rmtree(r.run_dir)
    again = main(
        [
            "--profile", "smoke", "--tasks", "seg", "--no-progress",
            "--data-dir", str(tmp_path / "data"), "--results-dir", str(tmp_path),
            "--overrides", f"pilot__seg_lambdas={grid} icm__validate_every=2",
        ]
    )  # fmt: skip
    assert all(r.from_results_file for r in again.runs) and again.selection == out.selection
    assert not any(Path(r.run_dir).exists() for r in again.runs)
    profile = get_profile("smoke", icm__validate_every=2, icm__seg_lambdas=(0.05, 0.5, 5.0, 50.0))
    data = tmp_path / "data"
    study = run_study(
        profile, [0], ["seg"], ["baseline"], data, tmp_path, torch.device("cpu"), False, False
    )
    assert [r.run_key for r in study.runs] == [r.run_key for r in out.runs]
    assert all(r.from_results_file for r in study.runs)
    assert not any(Path(r.run_dir).exists() for r in study.runs)


def test_the_cpu_patterns_settings_are_what_its_pilot_chose():
    """The λ grids and ablation λ of ``cpu-patterns`` are the pilot's choice, copied into the
    profile before the study runs: once the pilot's file is committed, a profile that drifts
    from it fails here."""
    from pathlib import Path

    from icm_lib.pilot import check
    from icm_lib.profiles import get_profile
    from icm_lib.results import PilotFile

    results = Path(__file__).resolve().parents[1] / "results"
    if not (results / "pilot-cpu-patterns.json").is_file():
        pytest.skip("the cpu-patterns pilot has not been committed yet")
    if not PilotFile.read(results / "pilot-cpu-patterns.json").complete:
        pytest.skip(
            "the committed cpu-patterns pilot is a part (its runs so far, kept across stops)"
        )
    assert check(get_profile("cpu-patterns"), results) == []


def test_the_pilot_check_says_what_to_set(tmp_path):
    from icm_lib.pilot import check, main
    from icm_lib.profiles import get_profile
    from icm_lib.results import PilotFile

    profile = get_profile("smoke")
    assert check(profile, tmp_path) == ["no pilot yet: python -m icm_lib.pilot --profile smoke"]
    chosen = {"lambdas": [0.5, 5.0], "ablation_lambda": 0.5}
    pilot = PilotFile(profile="smoke", seeds=[0], compute_hours_in_runs=0,
                      wall_hours_this_invocation=0, complete=True,
                      selection={"seg": chosen})  # fmt: skip
    pilot.write(PilotFile.path(tmp_path, "smoke"))
    assert check(profile, tmp_path) == ["seg: set icm.seg_lambdas = (0.5, 5.0)"]
    agreeing = get_profile("smoke", icm__seg_lambdas=(0.5, 5.0))
    assert check(agreeing, tmp_path) == []
    args = ["--profile", "smoke", "--results-dir", str(tmp_path), "--check"]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 1
    assert main([*args, "--overrides", "icm__seg_lambdas=(0.5,5.0)"]) == []


def test_the_patterns_world_keeps_float32_foundations_whatever_cpu_trains_in():
    """``cpu-patterns`` is derived from ``cpu``; its committed runs were made with float32
    recognizers and reference codec, so a faster precision chosen for ``cpu`` must not re-key
    them."""
    import dataclasses

    from icm_lib.profiles import PROFILES, _cpu_patterns

    cpu = PROFILES["cpu"]
    fast = dataclasses.replace(
        cpu,
        recognition=dataclasses.replace(
            cpu.recognition, det_train_precision="bfloat16-features", seg_train_precision="bfloat16"
        ),
        mse=dataclasses.replace(cpu.mse, precision="bfloat16"),
    )
    pinned, today = _cpu_patterns(fast), PROFILES["cpu-patterns"]
    assert pinned.recognition.key() == today.recognition.key()
    assert pinned.mse == today.mse
