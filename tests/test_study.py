"""The study's bookkeeping on synthetic R-D points: curves, per-seed BD-rates, CI, the report."""

import json
import os
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from icm_lib.evaluate import bd_rates, curves
from icm_lib.profiles import get_profile
from icm_lib.results import AblationFile, GanFile, RDPoint, RunRecord, StudyFile
from icm_lib.study import (
    _recorded_run,
    ablation_rows,
    main,
    recorded_elsewhere,
    recorded_rows,
    summarise,
)


def _run(task, variant, lmbda, seed, bpp, metric, roi_bpp=None):
    point = RDPoint(
        task, variant, lmbda, seed, bpp, metric, psnr=20.0, ms_ssim=0.5, checkerboard=None,
        bpp_estimate=None, rate="real", n_images=4,
    )  # fmt: skip
    r = RunRecord(task, variant, lmbda, seed, f"runs/{task}-{variant}-{lmbda}-{seed}", 10, 10.0)
    r.points.append(point)
    if roi_bpp is not None:
        r.points.append(replace(point, curve="roi", bpp=roi_bpp))
    return r


def _grid(saving):
    """Baseline points per seed, and an aux-enc curve using ``saving`` (seed-dependent) fewer bits
    at the same metric; the ROI curve uses 5 % fewer bits."""
    runs = []
    for seed, s in enumerate(saving):
        for lmbda, bpp, m in [
            (0.4, 0.1, 0.10),
            (0.8, 0.15, 0.12),
            (1.6, 0.22, 0.13),
            (3.2, 0.3, 0.135),
        ]:
            runs.append(_run("det", "baseline", lmbda, seed, bpp, m, roi_bpp=0.95 * bpp))
            runs.append(_run("det", "aux-enc", lmbda, seed, bpp * (1 - s), m))
    return runs


def test_bd_rates_per_seed_with_confidence_interval():
    c = curves(_grid([0.2, 0.25, 0.3]), "det")
    assert set(c) == {"baseline", "aux-enc", "roi"} and len(c["aux-enc"]) == 3
    table = bd_rates(c, "det")
    per_seed = [v["bd_rate"] for v in table["aux-enc"]["per_seed"].values()]
    assert per_seed == pytest.approx([-20.0, -25.0, -30.0], abs=0.01)
    assert table["aux-enc"]["mean"] == pytest.approx(-25.0, abs=0.01)
    assert table["aux-enc"]["ci95"] == pytest.approx(4.303 * 5 / 3**0.5, rel=1e-3)  # t(2) = 4.303
    assert table["roi"]["mean"] == pytest.approx(-5.0, abs=0.01)
    assert table["aux-enc"]["of_mean_curves"]["bd_rate"] == pytest.approx(-25.0, abs=0.5)


def test_an_undefined_bd_rate_is_reported_not_averaged():
    runs = _grid([0.2, 0.2])
    for r in runs:  # seed 1's baseline is not monotonic
        if r.seed == 1 and r.variant == "baseline" and r.lmbda == 3.2:
            r.points[0].metric = 0.05
    table = bd_rates(curves(runs, "det"), "det")["aux-enc"]
    assert table["n"] == 1 and table["per_seed"][1]["bd_rate"] is None
    assert "does not increase" in table["per_seed"][1]["error"]
    # the fallback on the operational fronts is defined for both seeds (the dip is dropped)
    front = table["front"]
    assert front["n"] == 2 and front["per_seed"][0]["bd_rate"] == pytest.approx(-20.0, abs=0.01)
    assert front["per_seed"][1]["bd_rate"] == pytest.approx(-20.0, abs=0.5)


def test_report_writes_the_readme_between_markers(tmp_path):
    profile = get_profile("cpu")
    summary = summarise(
        profile, _grid([0.2, 0.25, 0.3]), ["det"], [0, 1, 2], ["baseline", "aux-enc"], True, 60.0
    )
    summary.write(StudyFile.path(tmp_path, "cpu"))
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- study-report:start -->\nold\n<!-- study-report:end -->\nend\n")
    main(["--report", "--profile", "cpu", "--results-dir", str(tmp_path), "--readme", str(readme)])
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("end\n") and "old" not in text
    assert "-25.0 % ± 12.4 (n=3)" in text and "-27.7 %" in text
    assert "operational R-D fronts" in text and "per seed -20.0, -25.0, -30.0" in text


def test_the_compute_table_counts_a_run_two_files_share_once(tmp_path):
    """The pilot's baselines are the R-D study's, the study's runs the ablation's: each run is
    paid for by the first file (in the order the experiments make them) that holds it."""
    from icm_lib.report import compute_rows, compute_table
    from icm_lib.results import PilotFile

    def run(name, seconds):
        return RunRecord("det", "baseline", 0.4, 0, f"cache/icm/{name}", 10, seconds)

    pilot = PilotFile("cpu", [0], 0.25, 0.3, runs=[run("a", 1800.0), run("b", 900.0)])
    pilot.write(PilotFile.path(tmp_path, "cpu"))
    study = StudyFile("cpu", [0], 0.75, 0.8, runs=[run("b", 900.0), run("c", 1800.0)])
    study.write(StudyFile.path(tmp_path, "cpu"))
    ablation = AblationFile("cpu", [0], 0.75, 0.8, complete=True, runs=[run("c", 1800.0)])
    ablation.write(AblationFile.path(tmp_path, "cpu"))
    rows = {r["kind"]: r for r in compute_rows(tmp_path, "cpu")}
    assert list(rows) == ["pilot", "study", "ablation"]
    assert rows["pilot"]["new_hours"] == 0.75 and rows["study"]["new_hours"] == 0.5
    assert rows["study"]["hours"] == 0.75 and rows["ablation"]["new_hours"] == 0.0
    text = "\n".join(compute_table(tmp_path, "cpu"))
    assert "| `study-cpu.json` (R-D study, in progress) | 2 | 0.75 | 0.50 |" in text
    assert "| total | | | **1.25** |" in text
    assert compute_table(tmp_path, "other") == []


def test_the_ablation_study_resumes_from_its_results_file(smoke_env, tmp_path):
    """The cache does not outlive a session; the results file does. A second invocation whose
    cache is gone takes every finished run from the file (same key, marked) and trains nothing."""
    import shutil

    import torch

    from icm_lib.study import run_ablation_study

    profile, data_dir = smoke_env.profile, smoke_env.cache_dir.parent
    first = run_ablation_study(
        profile, [0], ["seg"], data_dir, tmp_path, torch.device("cpu"), False
    )
    assert first.complete and len(first.runs) == 4
    assert not any(r.from_results_file for r in first.runs)
    # each run folder keeps the weights its run stood on; a cache carried to a machine whose
    # segmenter came out otherwise keeps saying so (the record is the folder's, with a warning)
    for row in first.runs:
        stored = json.loads((Path(row.run_dir) / "foundations.json").read_text())
        assert stored == row.foundations == smoke_env.foundations(["seg"])
    row = first.runs[0]
    with pytest.warns(UserWarning, match=r"the cached run .* stood on other weights"):
        carried = _with_other_recognizer_bits(smoke_env, "seg").ablation_point(
            row.task, row.variant, row.seed
        )
    assert carried.run.foundations == row.foundations and carried.run.val == row.val
    for row in first.runs:
        shutil.rmtree(row.run_dir)  # a new session: no cache
    again = run_ablation_study(
        profile, [0], ["seg"], data_dir, tmp_path, torch.device("cpu"), False
    )
    assert all(r.from_results_file for r in again.runs)
    assert [r.val for r in again.runs] == [r.val for r in first.runs]
    # (one seed: the intervals are undefined: null with a reason)
    assert json.dumps(again.tasks, sort_keys=True) == json.dumps(first.tasks, sort_keys=True)
    assert not any(Path(r.run_dir).exists() for r in again.runs)  # nothing trained
    # launched: the runs the results file holds are no jobs, and the file is the same
    from icm_lib.launch import LaunchOptions

    launch = LaunchOptions("pool", device="cpu", launch_dir=str(tmp_path / "launch"))
    launched = run_ablation_study(
        profile, [0], ["seg"], data_dir, tmp_path, torch.device("cpu"), False, launch
    )
    assert all(r.from_results_file for r in launched.runs) and launched.complete
    assert json.dumps(launched.tasks, sort_keys=True) == json.dumps(first.tasks, sort_keys=True)
    assert not (tmp_path / "launch" / "jobs.json").exists()  # nothing submitted
    assert not any(Path(r.run_dir).exists() for r in launched.runs)
    # another machine: the same settings trained the reference codec to other last bits
    elsewhere = _with_other_reference_bits(smoke_env)
    row = first.runs[0]
    assert row.settings_key == smoke_env.ablation_settings_key(row.task, row.variant, row.seed)
    assert elsewhere.ablation_settings_key(row.task, row.variant, row.seed) == row.settings_key
    assert elsewhere.ablation_run_dir(row.task, row.variant, row.seed).name != row.run_key
    assert smoke_env.ablation_settings_key(row.task, row.variant, row.seed + 1) != row.settings_key
    recorded = recorded_rows(AblationFile.path(tmp_path, profile.name))
    coords = {"task": row.task, "variant": row.variant, "seed": row.seed, "steps": None}
    assert _recorded_run(elsewhere, coords, recorded) is None  # the study trains its own
    found = _recorded_run(elsewhere, coords, recorded, same_settings=True)  # notebook 03 reads
    assert found is not None and found.run_key == row.run_key and found.from_results_file
    rows = list(ablation_rows(elsewhere, [0], ["seg"], recorded, same_settings=True))
    assert all(r.from_results_file for r in rows) and [r.val for r in rows] == [
        r.val for r in first.runs
    ]
    assert recorded_elsewhere(elsewhere, rows) == 4 and recorded_elsewhere(smoke_env, rows) == 0
    # another machine whose reference codec came out the same but its segmenter did not (run
    # keys name recognizers by settings): the study trains the run, a reader still shows it
    assert row.foundations == smoke_env.foundations(["seg"])
    assert set(row.foundations) == {"reference", "seg"}
    other = _with_other_recognizer_bits(smoke_env, "seg")
    assert other.ablation_run_dir(row.task, row.variant, row.seed).name == row.run_key
    with pytest.warns(UserWarning, match=r"stood on other weights .*seg [0-9a-f]+ -> "):
        assert _recorded_run(other, coords, recorded) is None
    assert _recorded_run(other, coords, recorded, same_settings=True).run_key == row.run_key
    assert _recorded_run(smoke_env, coords, recorded).run_key == row.run_key
    old = {**recorded, row.run_key: replace(recorded[row.run_key], foundations=None)}
    assert _recorded_run(other, coords, old) is not None  # a file from before: nothing to check


def test_the_rd_study_resumes_from_its_results_file(smoke_env, tmp_path, monkeypatch, capsys):
    """The R-D study as the ablation: a run its results file holds under the same run key while
    the cache lacks it is taken from the file (marked), with its R-D points and per-image
    records, and nothing is trained; a run the file does not hold is trained; launched, the
    recorded runs are no jobs."""
    import shutil

    import torch

    from icm_lib.launch import LaunchOptions
    from icm_lib.study import run_study

    profile, data_dir = smoke_env.profile, smoke_env.cache_dir.parent
    args = (profile, [0], ["seg"], ["baseline"], data_dir, tmp_path, torch.device("cpu"), False)
    first = run_study(*args, reference_curve=False)
    n = len(profile.icm.lambdas("seg"))
    assert first.complete and len(first.runs) == n
    assert not any(r.from_results_file for r in first.runs)
    for r in first.runs:
        shutil.rmtree(r.run_dir)  # a new session: no cache
    keep = first.runs[-1]  # ... and a results file cut before its last run
    cut = replace(first, runs=first.runs[:-1], complete=False)
    cut.write(StudyFile.path(tmp_path, profile.name))
    capsys.readouterr()
    again = run_study(*args, reference_curve=False)
    assert [r.from_results_file for r in again.runs] == [True] * (n - 1) + [False]
    told = [x for x in capsys.readouterr().err.splitlines() if x.startswith("[icm_lib] study-")]
    assert len(told) == n and told[0].startswith(f"[icm_lib] study-smoke 1/{n}: seg baseline λ")
    assert all(x.endswith("(from the results file)") for x in told[:-1])  # a line per run ...
    assert told[-1].endswith(" s here)") and f"{n}/{n}" in told[-1]  # ... trained or not
    last = again.runs[-1].points[0]
    assert f"baseline on seg: {last.bpp:.4f} bpp, miou {last.metric:.4f}" in told[-1]
    assert [r.run_key for r in again.runs] == [r.run_key for r in first.runs]
    numbers = lambda r: [{**asdict(p), "seconds": None} for p in r.points]  # noqa: E731
    # the same points, per-image records included (the last one trained again: all but its time)
    assert [numbers(r) for r in again.runs] == [numbers(r) for r in first.runs]
    assert not any(Path(r.run_dir).exists() for r in again.runs[:-1])  # nothing trained ...
    assert (Path(keep.run_dir) / "codec.pt").is_file()  # ... but the run the file lacked
    assert json.dumps(again.tasks, sort_keys=True) == json.dumps(first.tasks, sort_keys=True)
    shutil.rmtree(keep.run_dir)  # the file holds every run now
    launch = LaunchOptions("pool", device="cpu", launch_dir=str(tmp_path / "launch"))
    launched = run_study(*args, reference_curve=False, launch=launch)
    assert launched.complete and all(r.from_results_file for r in launched.runs)
    assert not (tmp_path / "launch" / "jobs.json").exists()  # nothing submitted
    assert not any(Path(r.run_dir).exists() for r in launched.runs)
    # its runs name the weights they stood on; a machine with another segmenter trains them
    recorded = StudyFile.recorded(StudyFile.path(tmp_path, profile.name))
    run = launched.runs[0]
    assert run.foundations == smoke_env.foundations(["seg"])
    found = smoke_env.recorded_point(recorded, "seg", "baseline", run.lmbda, run.seed)
    assert found is not None and found.run_key == run.run_key
    other = _with_other_recognizer_bits(smoke_env, "seg")
    with pytest.warns(UserWarning, match="trained here instead of taken from the results file"):
        assert other.recorded_point(recorded, "seg", "baseline", run.lmbda, run.seed) is None


def test_the_gan_study_resumes_from_its_results_file(smoke_env, tmp_path, capsys):
    """Le et al.'s study as the others: where the cache lost a seed's baseline codec, each
    finetuning its file holds (same baseline run key, preset, seed and settings) is taken from
    the file, and neither the baseline nor the finetuning is trained again; a file made with
    other finetuning settings is not used."""
    import shutil

    import torch

    from icm_lib.jobs import RunCall
    from icm_lib.launch import LaunchOptions
    from icm_lib.study import _recorded_gan, recorded_finetunings, run_gan_study

    profile = replace(smoke_env.profile, gan=replace(smoke_env.profile.gan, presets=("full",)))
    exp = replace(smoke_env, profile=profile)
    data_dir = smoke_env.cache_dir.parent
    args = (profile, [0], data_dir, tmp_path, torch.device("cpu"), False)
    first = run_gan_study(*args)
    (run,) = first.runs
    (told,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("[icm_lib] gan-")]
    scores = f"{run.before.checkerboard:.4f} -> {run.after.checkerboard:.4f}"
    assert told.startswith("[icm_lib] gan-smoke 1/1: seg full seed 0: checkerboard " + scores)
    assert not run.from_results_file and run.base_run_key
    base = Path(exp.cache_dir) / "icm" / run.base_run_key
    assert base.is_dir()
    shutil.rmtree(base)  # a new session: no cache
    shutil.rmtree(run.run_dir)
    again = run_gan_study(*args)
    assert [r.from_results_file for r in again.runs] == [True]
    assert replace(again.runs[0], from_results_file=False) == run
    assert run.foundations == exp.foundations(["seg"])
    other = _with_other_recognizer_bits(exp, "seg")
    call, held = (
        RunCall("gan", {"seed": 0, "preset": "full"}),
        recorded_finetunings(GanFile.path(tmp_path, profile.name), profile),
    )
    with pytest.warns(UserWarning, match="stood on other weights"):
        assert _recorded_gan(other, call, held) is None  # trained here
    assert _recorded_gan(exp, call, held).from_results_file
    assert again.summary == first.summary
    assert not base.exists() and not Path(run.run_dir).exists()  # nothing trained
    launch = LaunchOptions("pool", device="cpu", launch_dir=str(tmp_path / "launch"))
    launched = run_gan_study(*args, launch)
    assert launched.runs[0].from_results_file and not (tmp_path / "launch" / "jobs.json").exists()
    other = replace(profile, gan=replace(profile.gan, steps=profile.gan.steps + 1))
    assert recorded_finetunings(GanFile.path(tmp_path, profile.name), other) == {}
    # another seed adds to the file; a change of finetuning settings drops the other seeds'
    more = run_gan_study(profile, [1], *args[2:])
    assert more.seeds == [0, 1] and [(r.seed, r.preset) for r in more.runs] == [
        (0, "full"), (1, "full")
    ]  # fmt: skip
    assert more.runs[0] == launched.runs[0]
    with pytest.warns(UserWarning, match=r"1 recorded run\(s\).*seg full seed 0"):
        alone = run_gan_study(other, [1], *args[2:])
    assert alone.seeds == [1] and [r.seed for r in alone.runs] == [1]


def _with_other_recognizer_bits(exp, task: str):
    """``exp`` with ``task``'s frozen recognizer a rounding apart (another machine's bfloat16
    training; the same settings, so the same run keys)."""
    import copy

    import torch

    machine = copy.deepcopy(exp.machine(task))
    with torch.no_grad():
        next(machine.model.parameters()).view(-1)[0] += 1e-3
    return replace(exp, machines={**{t: exp.machine(t) for t in exp.machines}, task: machine})


def _with_other_reference_bits(exp):
    """``exp`` as another machine prepares it: the reference codec's weights a rounding
    apart (nothing else differs)."""
    import copy

    import torch

    reference = copy.deepcopy(exp.reference)
    with torch.no_grad():
        next(reference.model.g_a.parameters()).view(-1)[0] += 1e-6
    return replace(exp, reference=reference)


def test_plan_projects_gpu_hours_from_step_times(capsys):
    """``--plan``: the paper studies' runs and steps from the grids, hours from s/step."""
    args = ["--profile", "paper", "--seeds", "0", "1", "2", "--plan", "--s-per-step"]
    rows = main([*args, "det=0.25", "seg=0.5", "seg/aux-enc=0.6"])["plan"]
    by = {(r["task"], r["variant"]): r for r in rows}
    assert list(by) == [
        ("det", "mse"), ("det", "baseline"), ("det", "aux-enc"), ("seg", "baseline"),
        ("seg", "aux-enc"),
    ]  # fmt: skip
    det = by[("det", "baseline")]
    assert (det["runs"], det["steps"]) == (12, 12 * 591_440)  # 4 λ x 3 seeds, 80 COCO epochs
    assert det["hours"] == pytest.approx(12 * 591_440 * 0.25 / 3600)
    assert by[("seg", "aux-enc")]["hours"] == pytest.approx(12 * 49_980 * 0.6 / 3600)
    assert by[("det", "mse")]["runs"] == 4  # the reference curve: seed 0 only
    gan = main(["--study", "gan", *args, "seg=0.5"])["plan"]
    assert [(r["variant"], r["runs"]) for r in gan] == [("baseline", 3), ("gan", 9)]
    assert "1,169.0" in capsys.readouterr().out.split("gan study")[0]  # the aux total
    assert main(["--study", "ablation", *args, "det=0.25"])["plan"][-1]["hours"] is None


def test_ablation_table_pairs_each_position_with_the_same_seeds_baseline():
    from icm_lib.evaluate import ablation_table

    def row(variant, seed, final):
        return {
            "task": "det",
            "variant": variant,
            "seed": seed,
            "val": {"step": [10, 20], "main_loss": [1.0, final]},
        }

    # seeds differ a lot; aux-enc is 0.01 below its seed's baseline every time
    base = {0: 0.50, 1: 0.70, 2: 0.90}
    rows = [row("baseline", s, v) for s, v in base.items()]
    rows += [row("aux-enc", s, v - 0.01) for s, v in base.items()]
    rows += [row("aux-dec", s, v + d) for (s, v), d in zip(base.items(), (0.02, -0.02, 0.03))]
    t = ablation_table(rows)["det"]
    enc, dec = t["variants"]["aux-enc"], t["variants"]["aux-dec"]
    assert enc["ci95"] > 0.1  # unpaired: the seeds' spread hides the difference
    assert enc["vs_baseline"]["mean"] == pytest.approx(-0.01)
    assert enc["vs_baseline"]["ci95"] == pytest.approx(0.0, abs=1e-12)  # paired: it does not
    assert dec["vs_baseline"]["mean"] == pytest.approx(0.01) and dec["vs_baseline"]["n"] == 3
    assert "vs_baseline" not in t["variants"]["baseline"]
    assert t["order"] == ["aux-enc", "baseline", "aux-dec"]


def test_each_study_prints_its_headline_beside_the_paper():
    """What ``python -m icm_lib.study`` prints once a study is in, from the committed files."""
    from pathlib import Path

    from icm_lib.results import AblationFile, GanFile, StudyFile
    from icm_lib.study import _summary_lines

    results = Path(__file__).resolve().parents[1] / "results"
    study = _summary_lines("rd", StudyFile.find(results, "cpu"))
    assert study and all("BD-rate" in line and "paper aux-enc" in line for line in study)
    assert any(line.startswith("seg aux-enc") and "-20.3 %" in line for line in study)
    ablation = _summary_lines("ablation", AblationFile.find(results, "cpu"))
    assert [line.split(":")[0] for line in ablation] == ["det", "seg"]
    assert all("paper: aux-enc lowest" in line for line in ablation)
    gan = _summary_lines("gan", GanFile.find(results, "cpu"))
    assert gan and all("→" in line for line in gan)


def _as_if_made_elsewhere(path, task, seed):
    """The results file at ``path`` with the runs of ``task`` and ``seed`` under other run keys,
    as another machine (another reference codec) would have recorded them."""
    recorded = json.loads(path.read_text())
    for r in recorded["runs"]:
        if r["task"] == task and r["seed"] == seed:
            r["run_dir"] = r["run_dir"][:-4] + "beef"
    path.write_text(json.dumps(recorded))


def test_a_study_of_some_tasks_or_seeds_adds_to_the_file(smoke_env, tmp_path):
    """``--tasks det`` after a segmentation study keeps the recorded segmentation runs (and the
    MSE reference's segmentation points); another seed keeps the first seed's runs; a file from
    other codec settings is not mixed in, with a warning."""
    import torch

    from icm_lib.study import run_study

    profile, data = smoke_env.profile, smoke_env.cache_dir.parent
    cpu = torch.device("cpu")

    def study(tasks, seeds, reference_curve=True):
        return run_study(
            profile, seeds, tasks, ["baseline"], data, tmp_path, cpu, False, reference_curve
        )

    seg = study(["seg"], [0])
    assert seg.complete and set(seg.tasks) == {"seg"}
    both = study(["det"], [0])
    assert list(both.tasks) == ["det", "seg"] and both.complete and both.seeds == [0]
    seg_runs = [r for r in both.runs if r.task == "seg" and r.variant == "baseline"]
    assert [r.run_key for r in seg_runs] == [r.run_key for r in seg.runs if r.variant == "baseline"]
    mse = [r for r in both.runs if r.variant == "mse"]
    assert len(mse) == len(profile.icm.mse_lambdas)
    assert all(sorted(p.task for p in r.points) == ["det", "seg"] for r in mse)
    assert [r.variant for r in both.runs[: len(mse)]] == ["mse"] * len(mse)  # the grid's order
    assert json.dumps(both.tasks["seg"], sort_keys=True) == json.dumps(
        seg.tasks["seg"], sort_keys=True
    )
    assert StudyFile.read(StudyFile.path(tmp_path, profile.name)).runs == both.runs
    # another seed of one task: the file holds both seeds, and is not complete (det seed 1)
    more = study(["seg"], [1], reference_curve=False)
    assert more.seeds == [0, 1] and not more.complete
    assert {(r.task, r.seed) for r in more.runs if r.variant == "baseline"} == {
        ("det", 0), ("seg", 0), ("seg", 1)
    }  # fmt: skip
    assert len([r for r in more.runs if r.variant == "mse"]) == len(mse)
    # a λ grid without two of the detection runs' λ: those runs are no longer the study's
    from dataclasses import replace as with_

    det_grid = profile.icm.det_lambdas[:2]
    fewer = with_(profile, icm=with_(profile.icm, det_lambdas=det_grid))
    smaller = run_study(fewer, [1], ["seg"], ["baseline"], data, tmp_path, cpu, False, False)
    det = [r.lmbda for r in smaller.runs if r.task == "det" and r.variant == "baseline"]
    assert sorted(det) == sorted(det_grid)
    assert [r for r in smaller.runs if r.task == "seg"] == [r for r in more.runs if r.task == "seg"]
    # a file from before environments were recorded: its runs are kept by their keys
    path = StudyFile.path(tmp_path, profile.name)
    older = json.loads(path.read_text())
    older["environment"] = None
    path.write_text(json.dumps(older))
    again = study(["det"], [0])
    assert {(r.task, r.seed) for r in again.runs if r.variant == "baseline"} == {
        ("det", 0), ("seg", 0), ("seg", 1)
    }  # fmt: skip
    # runs another machine made (another reference codec: other run keys) are not this
    # file's: they are dropped, with a warning; the MSE runs it recorded stay whole until
    # this invocation scores them again
    _as_if_made_elsewhere(path, "seg", 1)
    with pytest.warns(UserWarning, match=r"4 recorded run\(s\).*seg baseline seed 1"):
        alone = study(["det"], [0], reference_curve=False)
    assert {(r.task, r.seed) for r in alone.runs if r.variant == "baseline"} == {
        ("det", 0), ("seg", 0)
    }  # fmt: skip
    assert alone.seeds == [0] and alone.complete
    assert [sorted(p.task for p in r.points) for r in alone.runs if r.variant == "mse"] == [
        ["det", "seg"]
    ] * len(mse)
    assert not list(tmp_path.glob(".*.lock"))  # each invocation let the file go


def test_a_second_invocation_on_one_results_file_stops_at_once(smoke_env, tmp_path):
    """While one invocation writes a results file (it holds the file's lock), a second one on
    the same file would drop the runs the first adds: it raises before it trains anything,
    naming the holder; a study of another file, or asking the jobs' states, is not held up."""
    import torch

    from icm_lib.errors import RunLockedError
    from icm_lib.launch import LaunchOptions
    from icm_lib.locks import RunLock
    from icm_lib.study import run_ablation_study, run_gan_study, run_study

    profile, data = smoke_env.profile, smoke_env.cache_dir.parent
    cpu = torch.device("cpu")
    before = sorted(smoke_env.cache_dir.rglob("*"))
    for cls, start, together in [
        (
            StudyFile,
            lambda: run_study(profile, [0], ["seg"], ["baseline"], data, tmp_path, cpu),
            "--tasks det seg",
        ),
        (
            AblationFile,
            lambda: run_ablation_study(profile, [0], ["seg"], data, tmp_path, cpu),
            "--tasks det seg",
        ),
        (GanFile, lambda: run_gan_study(profile, [0], data, tmp_path, cpu), "e.g. --seeds 0 1 2)"),
    ]:
        path = cls.path(tmp_path, profile.name)
        with RunLock(path.with_name(f".{path.name}.lock"), timeout=0):
            with pytest.raises(RunLockedError, match="another study invocation") as info:
                start()
        message = str(info.value)
        assert str(path) in message and "--launcher pool" in message and together in message
        assert f"pid {os.getpid()}" in message
        assert not path.exists() and sorted(smoke_env.cache_dir.rglob("*")) == before
    # asking the jobs' states writes nothing: it runs while another invocation holds the file
    held = StudyFile.path(tmp_path, profile.name)
    with RunLock(held.with_name(f".{held.name}.lock"), timeout=0):
        status = LaunchOptions(launcher="pool", status_only=True, launch_dir=str(tmp_path / "l"))
        run_study(profile, [0], ["seg"], ["baseline"], data, tmp_path, cpu, False, False, status)
    assert not held.exists()


def test_an_ablation_of_some_tasks_or_seeds_adds_to_the_file(smoke_env, tmp_path):
    """As the R-D study: ``--tasks det`` keeps the recorded segmentation rows; the file is
    complete only when every row of its tasks and seeds is in."""
    import torch

    from icm_lib.study import run_ablation_study

    profile, data = smoke_env.profile, smoke_env.cache_dir.parent

    def ablation(tasks, seeds):
        return run_ablation_study(profile, seeds, tasks, data, tmp_path, torch.device("cpu"), False)

    seg = ablation(["seg"], [0])
    both = ablation(["det"], [0])
    assert both.complete and list(both.tasks) == ["det", "seg"]
    assert [r.run_key for r in both.runs if r.task == "seg"] == [r.run_key for r in seg.runs]
    assert json.dumps(both.tasks["seg"], sort_keys=True) == json.dumps(
        seg.tasks["seg"], sort_keys=True
    )
    more = ablation(["seg"], [1])
    assert more.seeds == [0, 1] and not more.complete
    assert {(r.task, r.seed) for r in more.runs} == {("det", 0), ("seg", 0), ("seg", 1)}
    path = AblationFile.path(tmp_path, profile.name)
    assert AblationFile.read(path).icm_config == json.loads(json.dumps(profile.icm.recorded()))
    # rows another machine made (other run keys) are dropped, with a warning
    _as_if_made_elsewhere(path, "seg", 1)
    with pytest.warns(UserWarning, match=r"4 recorded run\(s\).*seg aux-dec seed 1"):
        alone = ablation(["det"], [0])
    assert alone.complete and alone.seeds == [0]
    assert {(r.task, r.seed) for r in alone.runs} == {("det", 0), ("seg", 0)}


def test_mse_points_of_a_task_without_trained_runs_are_kept():
    """A kept MSE reference run may carry points on a task that has no trained run in the file
    (a study of that task stopped after its MSE runs): they are merged or kept, in the tasks'
    order, and the file is not complete for it; a recorded MSE run lacking a point on a task
    the call scores is scored again, not taken from the file."""
    from icm_lib.jobs import point_call
    from icm_lib.study import _recorded_point, summarise_with_earlier

    profile = get_profile("smoke")
    lo, hi = profile.icm.mse_lambdas
    mine = _run("det", "mse", lo, 0, 0.5, 0.2)
    mine.foundations = {"reference": "r", "det": "d"}
    old_lo = _run("det", "mse", lo, 0, 0.5, 0.4)
    old_lo.points[0].task = "seg"  # same run, scored on seg by the earlier invocation
    old_lo.foundations = {"reference": "r", "seg": "s"}  # ... with this segmenter
    old_hi = _run("seg", "mse", hi, 0, 0.9, 0.5)
    old_hi.task, old_hi.run_dir = "det", f"runs/det-mse-{hi}-0"
    study = summarise_with_earlier(
        profile, [mine], [old_lo, old_hi], ["det"], [0], ["baseline"], False, 1.0
    )
    assert [[p.task for p in r.points] for r in study.runs] == [["det", "seg"], ["seg"]]
    assert study.runs[0].foundations == {"reference": "r", "det": "d", "seg": "s"}
    assert [r.lmbda for r in study.runs] == [lo, hi] and not study.complete

    class Recorded:  # an Experiment whose cache lacks the run; the file recorded old_lo
        def recorded_point(self, recorded, **args):
            return old_lo

    assert _recorded_point(Recorded(), point_call("det", "mse", lo, 0, eval_tasks=("seg",)), {})
    assert (
        _recorded_point(Recorded(), point_call("det", "mse", lo, 0, eval_tasks=("det",)), {})
        is None
    )


def test_a_recorded_run_scored_otherwise_is_not_current():
    """A run keeps its place in the file only if this machine would train it to the same key
    and the profile scores it the same way (real bytes, or the estimate)."""
    from pathlib import Path as P

    from icm_lib.study import _current_point

    run = _run("seg", "baseline", 1.0, 0, 0.3, 0.5)

    class Exp:
        def __init__(self, real_images, key):
            self.profile = replace(
                get_profile("smoke"),
                evaluation=replace(get_profile("smoke").evaluation, real_images=real_images),
            )
            self.key = key

        def point_run_dir(self, *args):
            return P("cache") / self.key

    assert _current_point(Exp(None, run.run_key), run)
    assert not _current_point(Exp(None, "seg-baseline-other"), run)
    assert not _current_point(Exp(2, run.run_key), run)  # the estimate, where it was real


def test_an_invocation_whose_lock_was_taken_stops_writing(tmp_path):
    """Another host that judged the file's lock stale (this process stopped too long) holds it
    now: this invocation's next write raises instead of overwriting that one's runs."""
    from icm_lib.errors import RunLockedError
    from icm_lib.study import _write_held, sole_writer

    class File:
        def write(self, path):
            Path(path).write_text("{}")

    path = tmp_path / "study-x.json"
    with sole_writer(path) as lock:
        _write_held(File(), path)
        holder = json.loads(lock.path.read_text())
        lock.path.write_text(json.dumps({**holder, "token": "another", "host": "node7"}))
        with pytest.raises(RunLockedError, match="no longer holds"):
            _write_held(File(), path)
    assert lock.path.exists()  # the other holder's lock stays


@pytest.mark.parametrize("name", ["cpu", "cpu-patterns"])
def test_the_notebooks_read_the_committed_study_and_not_a_bfloat16_ones(name, capsys):
    """The notebooks read ``results/study-<profile>.json`` only where it was written for the
    profile's codec-training settings: the committed float32 files (written before
    ``ICMConfig.amp_cpu`` / ``codec_amp`` existed) still are; for the same profile trained with
    ``--bf16`` they are not (they would be read as that study's numbers)."""
    from dataclasses import replace

    from icm_lib.report import recorded_study

    results = Path(__file__).resolve().parents[1] / "results"
    profile = get_profile(name)
    assert recorded_study(results, profile) is not None
    bf16 = replace(profile, icm=profile.icm.in_bfloat16())
    assert recorded_study(results, bf16) is None
    assert "written for other settings" in capsys.readouterr().out
