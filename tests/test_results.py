"""Typed results files (results.py): round trips, no NaN, schema refusal, per-image data that
recomputes the dataset metric, and the one-off conversion of the untyped files."""

import json
import math
import subprocess
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from icm_lib import results
from icm_lib.errors import DamagedFileError
from icm_lib.metrics import ConfusionMatrix, detection_map, detection_matches, map_from_matches
from icm_lib.results import (
    AblationFile,
    GanFile,
    GanRecord,
    ImageRecords,
    RDPoint,
    RunRecord,
    StudyFile,
    convert_legacy,
)

ROOT = Path(__file__).resolve().parents[1]


def _point(task="seg", curve="baseline", lmbda=0.5, seed=0, **kw):
    images = ImageRecords(
        ids=["a", "b"], pixels=[100, 100], bits=[30.0, 50.0], psnr=[20.0, 22.0],
        ms_ssim=[0.5, 0.6], checkerboard=[0.1, 0.2],
    )  # fmt: skip
    if task == "seg":
        images = replace(images, intersection=[[5, 0], [3, 4]], union=[[8, 1], [6, 4]])
        images.labelled = [90, 95]
    else:
        images = replace(images, gt=[[[1, 2]], []], dt=[[[1, 0.9, 1023, 0]], [[2, 0.5, 0, 0]]])
    base = dict(
        bpp=0.4, metric=0.55, psnr=21.0, ms_ssim=0.55, checkerboard=0.15, bpp_estimate=0.38,
        rate="real", n_images=2, scores={"pixel_acc": 0.9}, seconds=1.5, images=images,
    )  # fmt: skip
    return RDPoint(task, curve, lmbda, seed, **{**base, **kw})


def _run(variant="baseline", seed=0, **kw):
    run = RunRecord("seg", variant, 0.5, seed, f"cache/icm/seg-{variant}-seed{seed}-abc", 20, 9.0)
    run.log = [{"step": 20, "loss": 0.3, "seconds": 9.0}]
    run.points = [_point(curve=variant, seed=seed)]
    return replace(run, **kw)


def _files():
    common = dict(profile="smoke", seeds=[0], compute_hours_in_runs=0.1,
                  wall_hours_this_invocation=0.2)  # fmt: skip
    gan = GanRecord(
        "seg", 0.5, 0, "full", "cache/gan/full-seed0-x", 3.0, [{"step": 1, "seconds": 3.0}],
        before=_point(), after=_point(curve="patchgan-full", psnr=23.0),
    )  # fmt: skip
    return [
        StudyFile(**common, complete=True, variants=["baseline"], runs=[_run()],
                  tasks={"seg": {"metric": "miou", "bd_rate": {}}}, icm_config={"alpha": 1}),
        AblationFile(**common, runs=[_run(val={"step": [1], "main_loss": [0.2]}, log=[])],
                     tasks={}, ablation_config={"steps": 2}),
        GanFile(**common, runs=[gan], summary={}, gan_config={"steps": 1}),
    ]  # fmt: skip


def test_a_record_describes_itself_in_one_line(capsys):
    """What a study or the pilot prints per run (runtime.tell): the run, what it gave, where
    it came from."""
    import time

    from icm_lib.runtime import tell

    run = _run()
    assert run.describe() == "seg baseline λ 0.5 seed 0: baseline on seg: 0.4000 bpp, miou 0.5500"
    ablation = replace(run, points=[], val={"step": [1, 2], "main_loss": [0.3, 0.25]})
    assert ablation.describe().endswith(": last val main loss 0.2500")
    gan = _files()[2].runs[0]
    assert gan.describe() == "seg full seed 0: checkerboard 0.1500 -> 0.1500"
    tell("study-x", 3, 7, replace(run, from_results_file=True), time.perf_counter())
    assert capsys.readouterr().err == (
        "[icm_lib] study-x 3/7: " + run.describe() + " (from the results file)\n"
    )
    trained = replace(run, seconds=180.0)  # a run that took 3 min to train ...
    tell("study-x", 4, 7, trained, time.perf_counter())  # ... loaded at once: the cache
    assert capsys.readouterr().err.endswith(" (from the cache, trained in 180 s)\n")
    tell("study-x", 5, 7, trained, time.perf_counter() - 170)  # ... trained here
    assert capsys.readouterr().err.endswith(f"{run.describe()} (170 s here)\n")


def test_a_file_tells_when_its_runs_stood_on_different_weights(tmp_path):
    """Every run of a profile stands on one reference codec and one recognizer per task; a file
    whose runs record two fingerprints for one of them mixes two worlds, and says which. Runs
    from before foundations were recorded (``None``) are no evidence either way."""
    ours = {"reference": "aaaa", "seg": "1111"}
    study = replace(
        _files()[0],
        runs=[
            _run(seed=0, foundations=ours),
            _run(seed=1, foundations=ours),
            _run(seed=2, foundations=None),
        ],
    )
    assert study.mixed_foundations() == []
    path = study.write(tmp_path / "study-smoke.json")
    assert StudyFile.read(path).runs[0].foundations == ours  # kept through the file
    study.runs.append(_run(seed=3, foundations={**ours, "seg": "2222"}))
    assert study.mixed_foundations() == ["seg: 1111, 2222"]
    with pytest.warns(UserWarning, match=r"stood on different weights \(seg: 1111, 2222\)"):
        study.write(path)
    assert len(StudyFile.read(path).runs) == 4  # written all the same: the record is true


def test_a_file_records_the_environment_that_made_it(tmp_path):
    """Every file carries the versions and the machine its numbers came from; a file written
    before environments were recorded reads back with ``None`` (unknown), never with today's."""
    import torch as torch_module

    from icm_lib.report import environment_words, environments_line

    (study, ablation, _) = _files()
    env = study.environment
    assert env["packages"]["torch"] == torch_module.__version__.split("+")[0]  # no local tag
    assert env["packages"]["numpy"] == np.__version__ and env["python"]
    assert set(env["cpu_flags"]) <= set(results.CPU_FLAGS)
    path = study.write(study.path(tmp_path, "smoke"))
    assert StudyFile.read(path).environment == env
    old = json.loads(path.read_text())
    del old["environment"]
    path.write_text(json.dumps(old))
    assert StudyFile.read(path).environment is None
    assert results.environment_differences(None) == [
        "unknown (the file predates recorded environments)"
    ]
    assert results.environment_differences(env) == []
    other = {**env, "packages": {**env["packages"], "scipy": "0.1"}, "cpu_flags": []}
    diff = results.environment_differences(other)
    assert f"scipy 0.1 -> {env['packages']['scipy']}" in diff and len(diff) == 1 + bool(
        env["cpu_flags"]
    )
    assert environment_words(None).startswith("not recorded")
    assert f"numpy {np.__version__}" in environment_words(env)
    line = environments_line([replace(study, environment=None), ablation])
    assert line.count("`study`: not recorded") == 1 and "`ablation`: torch " in line
    # resuming from a file of another environment says what differs and what happens
    import warnings

    for same in (env, None):
        replace(study, environment=same).write(path)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert set(StudyFile.recorded(path)) == {study.runs[0].run_key}
    replace(study, environment=other).write(path)
    with pytest.warns(UserWarning, match="another environment .scipy 0.1 -> .*trained here"):
        assert set(StudyFile.recorded(path)) == {study.runs[0].run_key}


@pytest.mark.parametrize("file", _files(), ids=lambda f: f.KIND)
def test_every_file_type_round_trips(file, tmp_path):
    path = file.write(file.path(tmp_path, "smoke"))
    assert path.name == f"{file.KIND}-smoke.json"
    back = type(file).read(path)
    assert back == file
    data = json.loads(path.read_text())
    assert data["schema_version"] == results.SCHEMA_VERSION and data["kind"] == file.KIND
    assert data["run_keys"] == [r.run_key for r in file.runs] and all(data["run_keys"])
    assert set(data["commit"]) >= {"sha", "dirty"}


def test_a_file_records_the_commit_its_process_started_with(monkeypatch):
    """Read once, at import: a study that writes its file for hours records the code it runs,
    not a commit made (or a file edited) meanwhile; each file gets its own copy."""
    import subprocess

    first = results.code_commit()

    def no_git(*args, **kwargs):
        raise AssertionError("git asked again")

    monkeypatch.setattr(subprocess, "run", no_git)
    again = results.code_commit()
    assert again == first and again is not first
    again["sha"] = "changed"
    assert results.code_commit() == first


def test_a_commit_tells_changed_code_from_a_studys_own_partial_files():
    assert set(results.code_commit()) >= {"sha", "dirty", "changed"}
    clean = {"sha": "a", "dirty": False, "changed": []}
    own = {"sha": "a", "dirty": True, "changed": ["results/study-cpu.json"]}
    code = {"sha": "a", "dirty": True, "changed": ["results/study-cpu.json", "icm_lib/codec.py"]}
    older = {"sha": "a", "dirty": True}  # written before the paths were recorded
    cut = {"sha": "a", "dirty": True, "changed": ["results/a.json", "..."]}  # more not listed
    cut_code = {"sha": "a", "dirty": True, "changed": ["icm_lib/codec.py", "..."]}
    assert [results.code_changed(c) for c in (clean, own, code, older, None, cut, cut_code)] == [
        False, False, True, None, None, None, True,
    ]  # fmt: skip


def test_records_round_trip_and_plain_views():
    for point in (_point("seg"), _point("det", scores={"map_50": 0.7})):
        assert RDPoint.from_json(json.loads(json.dumps(asdict(point)))) == point
    run = _run()
    assert RunRecord.from_json(json.loads(json.dumps(asdict(run)))) == run
    plain = run.plain()
    assert plain["eval"]["seg"]["miou"] == 0.55 and plain["roi"] == {}
    assert plain["train_seconds"] == 9.0 and run.final["loss"] == 0.3
    assert run.run_key == "seg-baseline-seed0-abc"


def test_nan_is_refused_on_write_and_on_read(tmp_path):
    study = _files()[0]
    study.runs[0].points[0].psnr = float("nan")
    with pytest.raises(ValueError, match="None with its reason"):
        study.write(tmp_path / "study-smoke.json")
    assert not (tmp_path / "study-smoke.json").exists()
    good = _files()[0].write(tmp_path / "study-smoke.json")
    good.write_text(good.read_text().replace('"psnr": 21.0', '"psnr": NaN', 1))
    with pytest.raises(DamagedFileError, match="NaN"):
        StudyFile.read(good)


def test_an_older_schema_is_refused_with_the_command_that_regenerates_it(tmp_path):
    path = _files()[1].write(tmp_path / "ablation-cpu.json")
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "schema_version": 1}))
    with pytest.raises(DamagedFileError, match="python -m icm_lib.study --study ablation"):
        AblationFile.read(path)
    del data["schema_version"]  # the untyped shape: also says how to convert it
    path.write_text(json.dumps(data))
    with pytest.raises(DamagedFileError, match="--convert"):
        AblationFile.read(path)
    with pytest.raises(DamagedFileError, match="not gan"):
        GanFile.read(_files()[0].write(tmp_path / "gan-cpu.json"))


def test_an_evaluation_of_an_older_format_is_recomputed_not_misread(tmp_path):
    from icm_lib.evaluate import load_or_evaluate

    path = tmp_path / "eval-seg.json"
    path.write_text(json.dumps({"bpp": 0.1, "miou": 0.3, "psnr": 20.0, "ms_ssim": 0.5}))
    fresh = load_or_evaluate(path, lambda: _point(curve=""))
    assert fresh == _point(curve="")
    assert load_or_evaluate(path, lambda: pytest.fail("recomputed")) == fresh


def test_gan_agreement_compares_the_same_baselines_finetuning_and_says_how_far():
    from icm_lib.evaluate import gan_agreement
    from icm_lib.report import fmt_gan_agreement

    def gan(preset, seed, base, **after):
        return GanRecord(
            "seg", 0.5, seed, preset, None, 3.0, [], before=_point(),
            after=_point(curve=f"patchgan-{preset}", **after), base_run_key=base,
        )  # fmt: skip

    recorded = {
        ("seg-baseline-seed0-k", "full", 0): gan("full", 0, "seg-baseline-seed0-k", psnr=23.0),
        ("seg-baseline-seed0-k", "no-adv", 0): gan("no-adv", 0, "seg-baseline-seed0-k"),
    }
    here = [
        gan("full", 0, "seg-baseline-seed0-k", psnr=23.25, checkerboard=0.14),  # differs
        gan("no-adv", 0, "seg-baseline-seed0-k"),  # the same numbers
        gan("limited", 0, "seg-baseline-seed0-k"),  # not in the file
        gan("full", 0, "seg-baseline-seed0-other"),  # another baseline
    ]
    rows = gan_agreement(here, recorded)
    assert [(r["preset"], r["seed"]) for r in rows] == [("full", 0), ("no-adv", 0)]
    assert rows[0]["max_abs_difference"] == pytest.approx(0.25)
    assert (rows[0]["psnr"], rows[0]["psnr_study"]) == (23.25, 23.0)
    assert rows[1]["max_abs_difference"] == 0
    line = fmt_gan_agreement(rows[0], "miou")
    assert line.startswith("full seed 0: here PSNR 23.25 dB") and "(max |difference| 0.25)" in line
    assert gan_agreement(here, {}) == []


# ------------------------------------------------------------------ per-image data
def _random_detections(n_images, seed):
    g = torch.Generator().manual_seed(seed)
    preds, targets = [], []
    for _ in range(n_images):
        gt_n, dt_n = (
            int(torch.randint(0, 5, (1,), generator=g)),
            int(torch.randint(0, 9, (1,), generator=g)),
        )
        xy = torch.rand(gt_n, 2, generator=g) * 80
        gt = torch.cat([xy, xy + 10 + torch.rand(gt_n, 2, generator=g) * 30], 1)
        labels = torch.randint(1, 4, (gt_n,), generator=g)
        # detections: jittered copies of the ground truth (some relabelled) and random boxes
        jitter = gt + torch.randn(gt.shape, generator=g) * 4
        xy = torch.rand(dt_n, 2, generator=g) * 80
        noise = torch.cat([xy, xy + 10 + torch.rand(dt_n, 2, generator=g) * 30], 1)
        boxes = torch.cat([jitter, noise])
        dl = torch.cat([labels, torch.randint(1, 4, (dt_n,), generator=g)])
        scores = torch.rand(len(boxes), generator=g)
        preds.append({"boxes": boxes, "scores": scores, "labels": dl})
        targets.append({"boxes": gt, "labels": labels})
    return preds, targets


def test_per_image_detection_matches_give_the_map_of_any_resample():
    preds, targets = _random_detections(12, seed=0)
    gt, dt = detection_matches(preds, targets)
    g = torch.Generator().manual_seed(1)
    for subset in [
        list(range(12)),
        [0, 3, 5, 7],
        torch.randint(0, 12, (12,), generator=g).tolist(),
    ]:
        expected = detection_map([preds[i] for i in subset], [targets[i] for i in subset])
        assert map_from_matches([gt[i] for i in subset], [dt[i] for i in subset]) == expected
    assert 0 < expected["map"] < 1


def test_a_recorded_score_is_short_and_keeps_the_order_of_neighbouring_float32_scores():
    from icm_lib.metrics import _shortest

    a = np.float32(0.2588253319263458)
    neighbours = [np.nextafter(a, np.float32(0)), a, a, np.nextafter(a, np.float32(1))]
    short = [_shortest(float(x)) for x in neighbours]
    assert short[0] < short[1] == short[2] < short[3]  # order and the tie kept
    assert [np.float32(x) for x in short] == neighbours and len(repr(short[1])) <= 10


def test_per_image_confusion_counts_give_the_miou_of_any_resample():
    g = torch.Generator().manual_seed(0)
    labels = [torch.randint(0, 5, (16, 16), generator=g) for _ in range(6)]
    labels[0][:4] = 255  # ignored pixels
    preds = [torch.where(torch.rand(16, 16, generator=g) < 0.7, t, 3) for t in labels]
    counts = []
    for p, t in zip(preds, labels):
        one = ConfusionMatrix(5)
        one.update(p, t)
        counts.append(one.counts())
    records = ImageRecords(
        ids=list(range(6)), pixels=[256] * 6, bits=[1.0] * 6, psnr=[0.0] * 6, ms_ssim=[0.0] * 6,
        checkerboard=[0.0] * 6, intersection=[c[0] for c in counts],
        union=[c[1] for c in counts], labelled=[c[2] for c in counts],
    )  # fmt: skip
    for subset in [list(range(6)), [1, 2], [5, 5, 0, 3, 3, 3]]:
        whole = ConfusionMatrix(5)
        for i in subset:
            whole.update(preds[i], labels[i])
        assert records.metric(subset) == whole.miou()


@pytest.mark.parametrize("task", ["det", "seg"])
def test_an_rd_point_recomputes_its_dataset_metric_from_its_images(smoke_env, task):
    """On the smoke profile: the reference codec scored through real bitstreams; the per-image
    records give the metric, bpp and fidelity the point reports, and the metric is the one the
    recognizer's own evaluation reports on the same decoded images."""
    from icm_lib.evaluate import BitstreamRoundTrip, rd_point
    from icm_lib.recognition import evaluate_detection, evaluate_segmentation

    exp, device = smoke_env, torch.device("cpu")
    machine, val = exp.machine(task), exp.datasets.val(task)
    point = rd_point(exp.reference, machine, val, device)
    images = point.images
    assert point.task == task and point.n_images == len(images) == len(val)
    assert images.ids == list(val.ids)
    assert images.metric() == point.metric  # exactly: the same counts, the same arithmetic
    assert images.bpp() == point.bpp
    assert sum(images.psnr) / len(images) == point.psnr
    evaluate = evaluate_detection if task == "det" else evaluate_segmentation
    theirs = evaluate(machine, val, device, transform=BitstreamRoundTrip(exp.reference))
    assert theirs[point.metric_name] == point.metric
    # as an evaluation file holds it
    again = RDPoint.from_json(json.loads(json.dumps(asdict(point))))
    assert again == point and again.images.metric() == point.metric


# ------------------------------------------------------------------ legacy files
def _legacy_study():
    point = {"bpp": 0.1, "bpp_estimate": 0.09, "checkerboard": 0.2, "images": 48,
             "lmbda": 0.4, "miou": 0.43, "ms_ssim": 0.6, "pixel_acc": 0.8, "psnr": 19.5,
             "seconds": 9.1}  # fmt: skip
    curves = {
        name: {str(s): [{**point, "bpp": 0.1 + s / 100 + (name == "aux-enc") / 50}] for s in (0, 1)}
        for name in ("baseline", "aux-enc")
    }
    curves["mse"] = {"0": [{**point, "bpp": 0.3, "lmbda": 0.0067}]}
    undefined = {"bd_rate": None, "error": "needs at least 4 points"}
    row = {"mean": math.nan, "ci95": math.nan, "n": 0, "per_seed": {"0": undefined},
           "of_mean_curves": undefined,
           "front": {"mean": -3.5, "ci95": math.nan, "n": 1, "per_seed": {"0": undefined}}}  # fmt: skip
    return {
        "profile": "cpu", "complete": True, "seeds": [0, 1], "variants": ["baseline", "aux-enc"],
        "runs": 5, "compute_hours_in_runs": 1.25, "wall_hours_this_invocation": 0.5,
        "icm_config": {"alpha": 1.0, "seg_lambdas": [0.5, 1.0]},
        "tasks": {"seg": {"metric": "miou", "curves": curves, "bd_rate": {"aux-enc": row},
                          "paper_bd_rate_aux_enc": -20.3}},
    }  # fmt: skip


def test_the_converter_keeps_every_number_and_nulls_nan_with_a_reason(tmp_path):
    path = tmp_path / "study-cpu.json"
    path.write_text(json.dumps(_legacy_study()))  # json writes NaN tokens, as the old code did
    assert "NaN" in path.read_text()
    study = convert_legacy(path)
    assert StudyFile.read(path) == study
    assert study.reproduced_by_current_code is False and "older code" in study.notes[0]
    assert len(study.runs) == 5 and all(p.images is None for r in study.runs for p in r.points)
    assert all(p.undefined["images"] == results.NO_IMAGES for r in study.runs for p in r.points)
    row = study.tasks["seg"]["bd_rate"]["aux-enc"]
    assert row["mean"] is None and row["undefined"]["mean"] == "no finite value to average (n=0)"
    assert row["front"]["undefined"] == {"ci95": "one value has no interval (n=1)"}
    from icm_lib.evaluate import curves

    old = _legacy_study()["tasks"]["seg"]["curves"]
    new = curves(study.runs, "seg")
    for name, by_seed in old.items():
        for seed, pts in by_seed.items():
            got = new[name][int(seed)]
            assert [{k: p[k] for k in pts[0]} for p in got] == pts  # every field, unchanged
    with pytest.raises(DamagedFileError, match="already typed"):
        convert_legacy(path)


def test_the_converter_refuses_to_change_a_number(tmp_path, monkeypatch):
    path = tmp_path / "study-cpu.json"
    path.write_text(json.dumps(_legacy_study()))
    real = results._legacy_point

    def off_by_a_bit(p, *args):
        point = real(p, *args)
        return replace(point, bpp=point.bpp + 1e-12)

    monkeypatch.setattr(results, "_legacy_point", off_by_a_bit)
    with pytest.raises(AssertionError, match="not found in the typed file"):
        convert_legacy(path)
    assert "schema_version" not in path.read_text()  # nothing written


#: the commit whose results files are the last of the untyped shape
LEGACY_COMMIT = "f3b5ec8"
#: the last commit whose `cpu` files are the float32-recognizer world, the typed successors of
#: the untyped files (the `cpu` world was re-made with bfloat16 recognizers after it, issue 21)
FLOAT32_COMMIT = "1d4946b"


def _file_at(commit: str, name: str, tmp_path: Path) -> Path:
    shown = subprocess.run(
        ["git", "show", f"{commit}:results/{name}"], cwd=ROOT, capture_output=True
    )
    if shown.returncode:
        pytest.skip(f"git history without {commit} (a shallow clone)")
    out = tmp_path / commit / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(shown.stdout)
    return out


@pytest.mark.parametrize("kind", ["study", "ablation", "gan"])
def test_the_typed_files_are_the_conversion_of_the_untyped_ones(kind, tmp_path):
    """The float32 world's typed files hold every run of the untyped ones: the conversion of
    the legacy file, or a re-run of its grid with today's code (the ablation's bit for bit)."""
    name = f"{kind}-cpu.json"
    converted = convert_legacy(_file_at(LEGACY_COMMIT, name, tmp_path), write=False)
    committed = results.FILE_TYPES[kind].read(_file_at(FLOAT32_COMMIT, name, tmp_path))
    if committed.reproduced_by_current_code:
        # re-run with today's code (new run keys) over the same grid of runs
        def grid(f):
            return sorted(
                (r.task, getattr(r, "variant", None) or r.preset, r.seed, getattr(r, "lmbda", 0))
                for r in f.runs
            )

        assert grid(committed) == grid(converted)
        if kind == "ablation":  # at 1d4946b its float32 re-run was bit for bit the legacy file
            runs = {(r.task, r.variant, r.seed): r for r in committed.runs}
            for old in converted.runs:
                new = runs[(old.task, old.variant, old.seed)]
                assert (new.val, new.points, new.lmbda) == (old.val, old.points, old.lmbda)
            assert committed.tasks == converted.tasks
        return
    assert replace(converted, commit=committed.commit, created=committed.created) == committed
    assert committed.reproduced_by_current_code is (False if kind == "study" else None)
