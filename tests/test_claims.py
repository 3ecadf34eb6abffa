"""Claims from results files: paired per-seed effects, the verdict's interval, Holm, and the
ablation score, on hand-made records."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

from icm_lib.claims import (
    ablation_claims,
    claims,
    holm,
    late_val_loss,
    read_plan,
    study_claims,
)
from icm_lib.results import AblationFile, ImageRecords, RDPoint, RunRecord, StudyFile
from icm_lib.statistics import equal_rate_delta

ROOT = Path(__file__).resolve().parents[1]
PLAN = read_plan(ROOT / "results" / "analysis-plan.json")


def seg_point(curve, lmbda, seed, bits, correct):
    """A seg point over 4 images of 100 pixels, 2 classes; ``correct`` pixels of each image's
    100 are right (split evenly over the two classes), so mIoU = correct / (200 - correct)."""
    inter = [[c // 2, c - c // 2] for c in correct]
    union = [[100 - c // 2, 100 - (c - c // 2)] for c in correct]
    images = ImageRecords(
        ids=list(range(4)), pixels=[100] * 4, bits=list(bits), psnr=[30.0] * 4,
        ms_ssim=[0.9] * 4, checkerboard=[0.0] * 4, intersection=inter, union=union,
        labelled=[100] * 4,
    )  # fmt: skip
    return RDPoint(
        task="seg", curve=curve, lmbda=lmbda, seed=seed, bpp=images.bpp(), metric=images.metric(),
        psnr=30.0, ms_ssim=0.9, checkerboard=0.0, bpp_estimate=None, rate="real", n_images=4,
        images=images,
    )  # fmt: skip


def run(variant, lmbda, seed, bits, correct, val=None):
    return RunRecord(
        task="seg", variant=variant, lmbda=lmbda, seed=seed, run_dir=None, steps=10,
        seconds=1.0, val=val, points=[seg_point(variant, lmbda, seed, bits, correct)],
    )  # fmt: skip


def study(shift_bits: float, spread: float = 0.02, seeds=range(4)):
    """baseline and aux-enc curves at 4 λ; aux-enc spends ``shift_bits`` of the bits for the
    same accuracy, times ``1 + spread (seed - 1.5)`` (a per-seed spread around it)."""
    runs = []
    for seed in seeds:
        for i, lm in enumerate((1.0, 2.0, 4.0, 8.0)):
            bits = [10.0 * 2**i + j + seed for j in range(4)]
            correct = [60 + 8 * i + j for j in range(4)]
            runs.append(run("baseline", lm, seed, bits, correct))
            scale = shift_bits * (1 + spread * (seed - 1.5))
            runs.append(run("aux-enc", lm, seed, [b * scale for b in bits], correct))
    return StudyFile(profile="t", seeds=list(seeds), compute_hours_in_runs=0,
                     wall_hours_this_invocation=0, runs=runs)  # fmt: skip


def by_name(rows, name):
    return next(c for c in rows if c.name == name)


def test_a_large_paired_effect_is_an_effect_and_none_is_equivalent():
    rows = study_claims(study(0.7), PLAN, n_boot=200)
    bd = by_name(rows, "iino_seg_rd/bd_rate")
    # the same metric at the scaled bits: BD-rate = the scale - 1, per seed
    for seed, value in bd.per_seed.items():
        assert value == pytest.approx(100 * (0.7 * (1 + 0.02 * (seed - 1.5)) - 1), abs=0.1)
    assert bd.verdict["verdict"] == "effect" and bd.interval["hi"] < 0
    same = by_name(study_claims(study(1.0, 0.002), PLAN, n_boot=200), "iino_seg_rd/bd_rate")
    assert same.verdict["verdict"] == "equivalent"  # inside the plan's ±5 %
    wide = by_name(study_claims(study(1.0, 0.05), PLAN, n_boot=200), "iino_seg_rd/bd_rate")
    assert wide.verdict["verdict"] == "unresolved" and wide.verdict["seeds_needed"] > 4


def test_equal_rate_delta_is_paired_per_seed_and_the_interval_is_a_union():
    s = study(0.7)
    rows = study_claims(s, PLAN, n_boot=200)
    delta = by_name(rows, "iino_seg_rd/delta_equal_rate")
    for seed in s.seeds:
        curve = {
            v: [(r.points[0].bpp, r.points[0].metric) for r in s.runs if r.seed == seed and r.variant == v]
            for v in ("baseline", "aux-enc")
        }  # fmt: skip
        assert delta.per_seed[seed] == pytest.approx(
            equal_rate_delta(curve["baseline"], curve["aux-enc"])
        )
    iv = delta.interval
    assert iv["lo"] == min(iv["bootstrap"][0], iv["t"][0])
    assert iv["hi"] == max(iv["bootstrap"][1], iv["t"][1])
    assert iv["estimate"] > 0  # fewer bits for the same accuracy: more accuracy at equal rate


def test_along_or_off_the_curve_by_hand():
    """A run on the baseline's curve moved along it (offset 0), one above it moved off it; one
    beyond the curve's rates has no offset. The paper's seg curve (-20.3 %) read at 0.2 bpp:
    the baseline at 0.2 / 0.797 bpp, 0.6 + 0.1 ln(1 / 0.797) / ln 2 = 0.63273."""
    from icm_lib.claims import along_or_off

    def point(variant, lmbda, bpp, metric):
        p = RDPoint("seg", variant, lmbda, 0, bpp, metric, psnr=30.0, ms_ssim=0.9,
                    checkerboard=0.0, bpp_estimate=None, rate="real", n_images=4)  # fmt: skip
        return RunRecord("seg", variant, lmbda, 0, None, 10, 1.0, points=[p])

    runs = [
        point("baseline", 1.0, 0.1, 0.5),
        point("baseline", 2.0, 0.2, 0.6),
        point("baseline", 4.0, 0.4, 0.7),
        point("aux-enc", 1.0, 0.2, 0.6),  # twice the bits, on the curve
        point("aux-enc", 2.0, 0.2, 0.65),  # the same bits, above it
        point("aux-enc", 4.0, 0.8, 0.75),  # beyond the baseline's rates
    ]
    f = StudyFile(profile="t", seeds=[0], compute_hours_in_runs=0,
                  wall_hours_this_invocation=0, runs=runs)  # fmt: skip
    rows = {r["lmbda"]: r for r in along_or_off(f, "seg")}
    assert rows[1.0]["bits_change"] == pytest.approx(100.0)
    assert rows[1.0]["metric_change"] == pytest.approx(0.1)
    assert rows[1.0]["offset"] == pytest.approx(0.0, abs=1e-12)
    assert rows[2.0]["bits_change"] == pytest.approx(0.0) and rows[2.0]["offset"] == pytest.approx(
        0.05
    )
    assert rows[1.0]["paper_offset"] == pytest.approx(0.1 * math.log(1 / 0.797) / math.log(2))
    assert rows[4.0]["bits_change"] == pytest.approx(100.0)
    assert rows[4.0]["offset"] is None and rows[4.0]["paper_offset"] is None


def test_holm_by_hand():
    # sorted 0.01, 0.02, 0.04 with m = 3: 0.03, max(0.03, 0.04), max(0.04, 0.04)
    out = holm({"a": 0.02, "b": 0.01, "c": 0.04, "d": None})
    assert out["b"] == pytest.approx(0.03) and out["a"] == pytest.approx(0.04)
    assert out["c"] == pytest.approx(0.04) and out["d"] is None
    assert holm({"a": 0.5, "b": 0.6}) == {"a": 1.0, "b": 1.0}  # capped at 1


def test_the_ablation_score_and_claims():
    steps = list(range(10, 110, 10))

    def val(base):
        return {"step": steps, "main_loss": [base + 1.0 / s for s in steps]}

    runs = []
    for seed in range(5):
        runs.append(run("baseline", 2.0, seed, [1] * 4, [60] * 4, val(1.00 + 0.01 * seed)))
        runs.append(run("aux-enc", 2.0, seed, [1] * 4, [60] * 4, val(0.95 + 0.01 * seed)))
        runs.append(run("aux-dec", 2.0, seed, [1] * 4, [60] * 4, val(1.00 + 0.01 * seed)))
        runs.append(run("aux-task", 2.0, seed, [1] * 4, [60] * 4, val(1.05 + 0.01 * seed)))
    # the last 20 % of 100 steps: steps 80, 90, 100
    assert late_val_loss(runs[0]) == pytest.approx(1.0 + (1 / 80 + 1 / 90 + 1 / 100) / 3)
    ab = AblationFile(profile="t", seeds=list(range(5)), compute_hours_in_runs=0,
                      wall_hours_this_invocation=0, runs=runs)  # fmt: skip
    rows = ablation_claims(ab, PLAN)
    enc = by_name(rows, "iino_ablation_seg/aux-enc-vs-baseline")
    assert enc.interval["estimate"] == pytest.approx(-0.05)
    # an exactly constant difference has no spread: no t-test, the interval is a point
    assert enc.verdict["verdict"] == "effect"
    dec = by_name(rows, "iino_ablation_seg/aux-dec-vs-baseline")
    assert dec.verdict["verdict"] == "equivalent"
    assert by_name(rows, "iino_ablation_seg/aux-enc-vs-aux-task").interval["estimate"] == (
        pytest.approx(-0.10)
    )


def test_an_interval_that_excludes_zero_but_fails_holm_says_so_in_the_table():
    import icm_lib.claims as cl

    steps = list(range(10, 110, 10))

    def val(base):
        return {"step": steps, "main_loss": [base + 1.0 / s for s in steps]}

    dec = [0.02, 0.01, 0.03, 0.005, 0.015]  # paired t: p ~ 0.02 alone, ~ 0.06 after Holm (x 3)
    noise = [0.03, -0.02, 0.01, -0.03, 0.02]  # aux-enc and aux-task: no effect
    runs = []
    for seed in range(5):
        base = 1.0 + 0.01 * seed
        runs.append(run("baseline", 2.0, seed, [1] * 4, [60] * 4, val(base)))
        runs.append(run("aux-enc", 2.0, seed, [1] * 4, [60] * 4, val(base + noise[seed])))
        runs.append(run("aux-dec", 2.0, seed, [1] * 4, [60] * 4, val(base - dec[seed])))
        runs.append(run("aux-task", 2.0, seed, [1] * 4, [60] * 4, val(base - noise[seed])))
    ab = AblationFile(profile="t", seeds=list(range(5)), compute_hours_in_runs=0,
                      wall_hours_this_invocation=0, runs=runs)  # fmt: skip
    row = by_name(ablation_claims(ab, PLAN), "iino_ablation_seg/aux-dec-vs-baseline")
    assert row.interval["hi"] < 0 and row.verdict["verdict"] == "unresolved"
    holm_p = row.verdict["p_holm"]  # the verdict carries the p that decided it ...
    assert 0.05 <= holm_p < 0.1 and row.notes[1].endswith(f"p = {holm_p:.3g}")  # ... the note too
    line = next(x for x in cl.table([row]).splitlines() if "aux-dec" in x)
    assert f"**unresolved** (not significant after Holm: p = {holm_p:.3g})" in line


def test_a_bootstrap_without_interval_leaves_the_verdict_without_one():
    import icm_lib.claims as cl
    from icm_lib.statistics import verdict

    seeds = {"lo": 0.5, "hi": 1.5, "mean": 1.0, "sd": 0.1}  # two defined seeds of three
    boot = {"estimate": 1.0, "lo": None, "hi": None, "n_boot": 2000, "undefined": 300}
    iv = cl._union(boot, seeds)
    assert iv["lo"] is None and iv["hi"] is None and iv["t"] == [0.5, 1.5]
    v = verdict(iv["lo"], iv["hi"], margin=5.0)
    row = cl.Claim("x/bd_rate", "seg: a against b", "paper", "bd_rate", {0: 1.0, 1: 1.0, 2: None},
                   seeds, iv, v, [])  # fmt: skip
    assert v["verdict"] == "unresolved" and (
        "(the interval is undefined: the estimate is undefined in 1 of 3 seeds, "
        "in 300 of 2000 bootstrap replicates)" in cl.table([row])
    )
    ran = cl._union({**boot, "lo": 0.8, "hi": 1.2}, seeds)  # a bootstrap interval: the union
    assert (ran["lo"], ran["hi"]) == (0.5, 1.5)


def test_claims_read_the_profiles_files(tmp_path):
    (tmp_path / "analysis-plan.json").write_text(
        (ROOT / "results" / "analysis-plan.json").read_text()
    )
    study(0.7).write(StudyFile.path(tmp_path, "t"))
    rows = claims(tmp_path, "t", n_boot=50)
    assert {c.name for c in rows} == {"iino_seg_rd/bd_rate", "iino_seg_rd/delta_equal_rate"}
    assert claims(tmp_path, "other") == []
    # a study still running: its claims say how far it is, in the table too
    from icm_lib.claims import table

    partial = study(0.7)
    partial.runs, partial.variants = partial.runs[:-1], ["baseline", "aux-enc"]
    partial.icm_config = {"seg_lambdas": [1.0, 2.0, 4.0, 8.0]}
    partial.write(StudyFile.path(tmp_path, "t"))
    rows = claims(tmp_path, "t", n_boot=50)
    assert "; in progress: 3 of 4 seeds complete |" in table(rows)
    assert all("in progress: 3 of 4 seeds complete in results/study-t.json so far" in c.notes
               for c in rows)  # fmt: skip


def test_a_claims_file_is_read_only_while_its_inputs_are_unchanged(tmp_path, monkeypatch):
    import icm_lib.claims as cl
    from icm_lib.results import ClaimsFile

    (tmp_path / "analysis-plan.json").write_text(
        (ROOT / "results" / "analysis-plan.json").read_text()
    )
    study(0.7).write(StudyFile.path(tmp_path, "t"))
    written = cl.claims_file(tmp_path, "t", n_boot=50)
    written.write(ClaimsFile.path(tmp_path, "t"))
    assert set(written.inputs) == {"analysis-plan.json", "study-t.json"}
    fresh = claims(tmp_path, "t", n_boot=50)
    assert cl.recorded_claims(tmp_path, "t", n_boot=50) == fresh  # the stored ones, equal
    computed = []
    monkeypatch.setattr(cl, "claims", lambda *a: computed.append(a) or ["fresh"])
    assert cl.recorded_claims(tmp_path, "t", n_boot=50) == fresh and not computed
    assert cl.recorded_claims(tmp_path, "t", n_boot=60) == ["fresh"]  # another n_boot
    rewritten = StudyFile.read(StudyFile.path(tmp_path, "t"))  # the same numbers written again
    rewritten.created, rewritten.wall_hours_this_invocation = "2031-01-01T00:00:00+00:00", 9.0
    rewritten.commit = {"sha": "0" * 40, "dirty": True, "changed": ["README.md"]}
    rewritten.write(StudyFile.path(tmp_path, "t"))
    assert cl.recorded_claims(tmp_path, "t", n_boot=50) == fresh and len(computed) == 1
    study(0.8).write(StudyFile.path(tmp_path, "t"))  # an input changed
    assert cl.recorded_claims(tmp_path, "t", n_boot=50) == ["fresh"]
    StudyFile.path(tmp_path, "t").unlink()  # ... or went away
    assert cl.recorded_claims(tmp_path, "t", n_boot=50) == ["fresh"]


CLAIMS_FILES = sorted((ROOT / "results").glob("claims-*.json"))

#: what the bootstrap draws decide (everything else in a claim is a pure function of the files)
RESAMPLED = ("bootstrap", "lo", "hi", "n_boot", "undefined")


def without_resampling(claim: dict) -> dict:
    """The part of a claim that does not depend on the bootstrap's replicates (its notes --
    undefined seeds, p-values, world checks, the pilot band -- do not)."""
    interval = {k: v for k, v in claim["interval"].items() if k not in RESAMPLED}
    return {**claim, "interval": interval, "verdict": None}


@pytest.mark.parametrize("path", CLAIMS_FILES, ids=str)
def test_the_committed_claims_files_are_current(path):
    """Each committed claims file was computed from the committed files as they are: its input
    hashes match, and computing again (with a few replicates, so the default run stays short)
    gives the same per-seed effects, seed-level intervals and point estimates. The full
    recompute is the ``slow`` test below."""
    import icm_lib.claims as cl
    from icm_lib.results import ClaimsFile

    f = ClaimsFile.read(path)
    results = ROOT / "results"
    assert f.inputs == cl.inputs_of(results, f.profile), (
        "regenerate: " + f"python -m icm_lib.claims --profile {f.profile}"
    )
    again = [without_resampling(c.plain()) for c in claims(results, f.profile, 20)]
    recorded = [without_resampling(cl.Claim.from_json(c).plain()) for c in f.claims]
    assert close(recorded, again)


@pytest.mark.slow
@pytest.mark.parametrize("path", CLAIMS_FILES, ids=str)
def test_the_committed_claims_files_recompute_exactly(path):
    """Computing a committed claims file again at its own number of replicates gives the same
    claims, bootstrap intervals and verdicts included (minutes: thousands of replicates)."""
    import icm_lib.claims as cl
    from icm_lib.results import ClaimsFile

    f = ClaimsFile.read(path)
    again = [c.plain() for c in claims(ROOT / "results", f.profile, f.n_boot)]
    # the same claims to the last few bits: a numerics library's release (scipy's Akima
    # interpolation, numpy's sums) may round the 15th digit differently
    assert close([cl.Claim.from_json(c).plain() for c in f.claims], again)


def test_without_resampling_keeps_what_the_files_decide():
    claim = {
        "name": "x", "per_seed": {0: 1.0}, "seed_interval": {"lo": 0.0},
        "interval": {"estimate": 1.0, "t": [0.0, 2.0], "bootstrap": [0.5, 1.5], "lo": 0.0,
                     "hi": 2.0, "n_boot": 20, "undefined": 0},
        "verdict": {"verdict": "effect"}, "notes": ["n"],
    }  # fmt: skip
    kept = without_resampling(claim)
    assert kept["interval"] == {"estimate": 1.0, "t": [0.0, 2.0]}
    assert kept["per_seed"] == {0: 1.0} and kept["verdict"] is None and kept["notes"] == ["n"]


def close(a, b, rel: float = 1e-9) -> bool:
    """Equal structures whose floats agree to ``rel`` (ints, strings and keys exactly)."""
    if isinstance(a, float) or isinstance(b, float):
        return (
            isinstance(a, (int, float))
            and isinstance(b, (int, float))
            and (math.isclose(a, b, rel_tol=rel, abs_tol=rel) or (math.isnan(a) and math.isnan(b)))
        )
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return (
            isinstance(b, (list, tuple))
            and len(a) == len(b)
            and all(close(x, y) for x, y in zip(a, b))
        )
    return a == b


def test_close_tolerates_rounding_only():
    assert close({"a": [1.0, {"b": 2}]}, {"a": [1.0 + 1e-14, {"b": 2}]})
    assert not close({"a": [1.0]}, {"a": [1.0001]})
    assert not close({"a": 1.0}, {"b": 1.0})
    assert not close({"a": 2}, {"a": 3})
    assert not close([1.0, 2.0], [1.0])


def test_le_claims_subtract_the_control_of_the_same_pixel_weight_and_seed():
    from dataclasses import replace

    from icm_lib.claims import factorial_table, gan_claims
    from icm_lib.results import GanFile, GanRecord

    base = seg_point("baseline", 1.0, 0, [10.0] * 4, [60] * 4)
    runs = []
    for seed in range(3):
        for preset, cb, correct in (
            ("no-adv", 0.05, 62), ("full", 0.02, 61), ("no-adv-px1", 0.09, 60),
            ("full-px1", 0.03 + 0.001 * seed, 60),
        ):  # fmt: skip
            before = replace(base, seed=seed, checkerboard=0.10)
            after = replace(
                seg_point("patchgan", 1.0, seed, [10.0] * 4, [correct] * 4), checkerboard=cb
            )
            runs.append(GanRecord(task="seg", lmbda=1.0, seed=seed, preset=preset, run_dir=None,
                                  seconds=1.0, log=[], before=before, after=after))  # fmt: skip
    gan = GanFile(profile="t", seeds=[0, 1, 2], compute_hours_in_runs=0,
                  wall_hours_this_invocation=0, runs=runs)  # fmt: skip
    rows = {c.name: c for c in gan_claims(gan, PLAN)}
    assert set(rows) == {
        "le_patchgan/full-pxpaper/checkerboard", "le_patchgan/full-pxpaper/task",
        "le_patchgan/full-px1/checkerboard", "le_patchgan/full-px1/task",
    }  # fmt: skip
    # (0.02 - 0.10) - (0.05 - 0.10) = -0.03 at the paper's weight; at px 1: -0.06 + 0.001 seed
    assert rows["le_patchgan/full-pxpaper/checkerboard"].interval["estimate"] == pytest.approx(
        -0.03
    )
    assert rows["le_patchgan/full-px1/checkerboard"].per_seed == pytest.approx(
        {0: -0.06, 1: -0.059, 2: -0.058}
    )
    assert rows["le_patchgan/full-px1/checkerboard"].verdict["verdict"] == "effect"
    # mIoU of 61 right pixels of 100 per image after, of 60 before: (30/70 + 31/69) / 2
    assert rows["le_patchgan/full-pxpaper/task"].interval["estimate"] == pytest.approx(
        100 * ((30 / 70 + 31 / 69) / 2 / (30 / 70) - 1)
    )
    # the factorial's cells themselves: rows no-adv / full, columns configured / pixel weight 1
    lines = factorial_table(gan).splitlines()
    assert lines[0] == "| adversarial preset | configured pixel weight | pixel weight 1 |"
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| no-adv", "| full"]
    assert lines[2].split(" | ")[1].startswith("-0.0500 [")  # 0.05 - 0.10 in every seed
    assert lines[3].split(" | ")[2].startswith("-0.0690 [")  # 0.03 + 0.001 s - 0.10, s = 0..2
    assert lines[3].endswith("(n=3) |")


def test_the_forest_plot_has_a_panel_per_estimator_and_a_verdict_per_claim():
    from icm_lib import plots
    from icm_lib.claims import paper_values

    rows = study_claims(study(0.7), PLAN, n_boot=50)
    fig = plots.forest(rows, paper_values(rows))
    assert len(fig.axes) == 2  # bd_rate, delta_equal_rate
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert texts == [c.verdict["verdict"] for c in rows if c.estimator == "bd_rate"] + [
        c.verdict["verdict"] for c in rows if c.estimator == "delta_equal_rate"
    ]
    assert paper_values(rows) == {"iino_seg_rd/bd_rate": -20.3}


def test_the_readmes_results_section_is_generated_from_the_results_files():
    """The README's tables between the study-report markers are exactly what
    ``python -m icm_lib.report --readme README.md`` makes of ``results/`` today (every
    profile with files)."""
    from icm_lib.report import END, START, report

    readme = (ROOT / "README.md").read_text()
    block = readme.split(START, 1)[1].split(END, 1)[0]
    assert block.strip() == report(ROOT / "results").strip()


def test_the_report_holds_both_worlds_side_by_side(tmp_path):
    """With files of two profiles the README gets a section per profile, the control world
    first; one profile's report is that section without its heading."""
    import shutil

    from icm_lib.report import report
    from icm_lib.results import profiles_with_studies

    for kind in ("study", "ablation"):
        shutil.copy(ROOT / "results" / f"{kind}-cpu.json", tmp_path / f"{kind}-cpu.json")
    shutil.copy(ROOT / "results" / "study-cpu.json", tmp_path / "study-cpu-patterns.json")
    (tmp_path / "study-cpu-det-rd.png").write_bytes(b"")  # a figure is not a profile
    assert profiles_with_studies(tmp_path) == ["cpu", "cpu-patterns"]
    both = report(tmp_path)
    shapes, patterns = report(tmp_path, "cpu"), report(tmp_path, "cpu-patterns")
    heads = [
        "#### Profile `cpu` (the shapes world)",
        "#### Profile `cpu-patterns` (the patterns world)",
    ]
    assert both == "\n".join(["", heads[0], shapes, "", heads[1], patterns])
    assert "####" not in shapes and "Iino et al. on `cpu`" in shapes and shapes != patterns


def test_a_failed_world_check_is_named_beside_the_claims_of_its_task(tmp_path):
    import icm_lib.claims as cl
    from icm_lib.results import WorldFile

    (tmp_path / "analysis-plan.json").write_text(
        (ROOT / "results" / "analysis-plan.json").read_text()
    )
    study(0.7).write(StudyFile.path(tmp_path, "t"))
    assert all(not c.notes for c in claims(tmp_path, "t", n_boot=50))  # no world file: no note
    checks = {
        "informative_det": {"value": 0.197, "bar": 0.3, "pass": False},
        "informative_seg": {"value": 0.52, "bar": 0.5, "pass": True},
        "plateau_seg": {"gain_over_last_fifth": None, "bar": 0.02, "pass": True, "note": "x"},
    }
    world = WorldFile(profile="t", seeds=[0], compute_hours_in_runs=0,
                      wall_hours_this_invocation=0, world="patterns", checks=checks)  # fmt: skip
    world.write(WorldFile.path(tmp_path, "t"))
    assert all(not c.notes for c in claims(tmp_path, "t", n_boot=50))  # seg claims: seg passed
    checks["plateau_seg"] = {"gain_over_last_fifth": 0.039, "bar": 0.02, "pass": False}
    world.write(WorldFile.path(tmp_path, "t"))
    rows = claims(tmp_path, "t", n_boot=50)
    assert rows and all(
        c.notes == ["world check failed: plateau_seg (the segmenter's val mIoU gain over its "
                    "last fifth: 0.039, bar < 0.02; results/world-t.json)"]
        for c in rows
    )  # fmt: skip
    assert all(cl.world_failed(c) == ["plateau_seg"] for c in rows)
    assert "world check failed: plateau_seg" in cl.table(rows)
    assert "world-t.json" in cl.claims_file(tmp_path, "t", n_boot=50).inputs
    assert set(cl.world_caveats(world)) == {"det", "seg"}  # the failed det check: det claims
    assert cl.world_caveats(world)["det"] == [
        "world check failed: informative_det (the detector's uncompressed val mAP@[.5:.95]: "
        "0.197, bar >= 0.3; results/world-t.json)"
    ]
    checks["reference_converged"] = {  # a nested value and a note are shown too
        "move_over_last_fifth": {"bpp": None, "psnr": None}, "bar": 0.01, "pass": False,
        "note": "no val curve (mse.validate_every)",
    }  # fmt: skip
    assert cl.world_caveats(world)["det"][-1] == (
        "world check failed: reference_converged (the reference codec's val bpp / PSNR move "
        "over its last fifth: bpp – / psnr –, bar each within ± 0.01; no val curve "
        "(mse.validate_every); results/world-t.json)"
    )


def test_a_pilot_band_not_reached_is_named_beside_the_claims_of_its_task(tmp_path):
    """Amendment 4: where the pilot's λ are its fallback window (the band not reached), every
    claim of that task says so, and the pilot file is an input of the claims file."""
    import icm_lib.claims as cl
    from icm_lib.results import PilotFile

    (tmp_path / "analysis-plan.json").write_text(
        (ROOT / "results" / "analysis-plan.json").read_text()
    )
    study(0.7).write(StudyFile.path(tmp_path, "t"))
    reason = "band not reached (no λ reaches the band's top: extend the grid upwards); ..."
    pilot = PilotFile(profile="t", seeds=[0], compute_hours_in_runs=0,
                      wall_hours_this_invocation=0, complete=True,
                      selection={"seg": {"lambdas": [1, 2, 4, 8], "band_reached": True},
                                 "det": {"lambdas": [1, 2, 4, 8], "band_reached": False,
                                         "reason": reason}})  # fmt: skip
    pilot.write(PilotFile.path(tmp_path, "t"))
    assert all(not c.notes for c in claims(tmp_path, "t", n_boot=50))  # seg claims: band reached
    assert cl.pilot_caveats(pilot) == {
        "det": [f"pilot band not reached: {reason} (results/pilot-t.json)"]
    }
    pilot.selection["seg"]["band_reached"] = False
    pilot.write(PilotFile.path(tmp_path, "t"))
    rows = claims(tmp_path, "t", n_boot=50)
    assert rows and all(c.notes[0].startswith("pilot band not reached") for c in rows)
    assert "; pilot band not reached" in cl.table(rows)
    assert "pilot-t.json" in cl.claims_file(tmp_path, "t", n_boot=50).inputs


def test_files_of_different_environments_are_named_beside_every_claim(tmp_path):
    """A world check (or pilot) made in another environment than the study describes other
    recognizers and another reference codec: every claim says so, the table too."""
    import icm_lib.claims as cl
    from icm_lib.results import WorldFile

    (tmp_path / "analysis-plan.json").write_text(
        (ROOT / "results" / "analysis-plan.json").read_text()
    )
    study(0.7).write(StudyFile.path(tmp_path, "t"))
    world = WorldFile(profile="t", seeds=[0], compute_hours_in_runs=0,
                      wall_hours_this_invocation=0, world="patterns", checks={})  # fmt: skip
    world.write(WorldFile.path(tmp_path, "t"))
    assert all(not c.notes for c in claims(tmp_path, "t", n_boot=50))  # one environment
    replace(world, environment=None).write(WorldFile.path(tmp_path, "t"))  # an older file
    rows = claims(tmp_path, "t", n_boot=50)
    assert rows and all(len(c.notes) == 1 for c in rows)
    note = rows[0].notes[0]
    assert note.startswith("files of different environments (world: not recorded")
    assert "; study: torch " in note and note.endswith(
        "not the same recognizers and reference codec"
    )
    assert "; its files come from different environments" in cl.table(rows)


def test_the_report_shows_the_world_checks_with_their_bars(tmp_path):
    """A world-check file alone makes a profile appear in the report, with one row per check:
    what it measures, its value, its bar, pass or FAIL."""
    from icm_lib.report import report
    from icm_lib.results import WorldFile, profiles_with_studies

    checks = {
        "informative_det": {"value": 0.1966, "bar": 0.3, "pass": False},
        "mse_loses_seg": {"share_at_low_bpp": 0.41, "low_bpp": 0.1, "bar": 0.7, "pass": True},
        "reference_converged": {
            "move_over_last_fifth": {"bpp": -0.004, "psnr": 0.002}, "bar": 0.01, "pass": True,
        },
        "roi_beats_baseline_det": {"map_gain_at_equal_rate": -0.0031, "pass": False},  # no bar
    }  # fmt: skip
    WorldFile(profile="cpu-patterns", seeds=[0], compute_hours_in_runs=0,
              wall_hours_this_invocation=0, world="patterns",
              checks=checks).write(WorldFile.path(tmp_path, "cpu-patterns"))  # fmt: skip
    assert profiles_with_studies(tmp_path) == ["cpu-patterns"]
    text = report(tmp_path)
    rows = [ln for ln in text.splitlines() if ln.startswith(tuple(f"| `{c}`" for c in checks))]
    assert rows == [
        "| `informative_det` | the detector's uncompressed val mAP@[.5:.95] | 0.1966 | >= 0.3 "
        "| **FAIL** |",
        "| `mse_loses_seg` | share of that mIoU the MSE codec keeps at 0.1 bpp | 0.41 | <= 0.7 "
        "| pass |",
        "| `reference_converged` | the reference codec's val bpp / PSNR move over its last fifth "
        "| bpp -0.004 / psnr 0.002 | each within ± 0.01 | pass |",
        "| `roi_beats_baseline_det` | ROI's mAP gain over the task-loss baseline at equal rate "
        "| -0.0031 | > 0 | **FAIL** |",
    ]
    assert "not all passed" in text


def test_claims_of_a_file_in_progress_say_so():
    """A study, ablation or PatchGAN file that is not complete yet gives its tasks' claims a
    note: the verdict is that of the runs so far (a task whose every seed is in gets none)."""
    from icm_lib.claims import progress_caveats
    from icm_lib.results import GanFile, GanRecord

    runs = [run(v, lm, s, [1] * 4, [60] * 4) for s in (0, 1) for v in ("baseline", "aux-enc")
            for lm in (1.0, 2.0)][:-1]  # fmt: skip
    common = {"profile": "t", "seeds": [0, 1], "compute_hours_in_runs": 0,
              "wall_hours_this_invocation": 0}  # fmt: skip
    rd = StudyFile(**common, variants=["baseline", "aux-enc"], runs=runs, tasks={"seg": {}},
                   icm_config={"seg_lambdas": [1.0, 2.0]})  # fmt: skip
    assert progress_caveats(rd) == {
        "seg": ["in progress: 1 of 2 seeds complete in results/study-t.json so far"]
    }
    whole = runs + [run("aux-enc", 2.0, 1, [1] * 4, [60] * 4)]
    assert progress_caveats(replace(rd, runs=whole)) == {}  # (another task still running)
    assert progress_caveats(replace(rd, complete=True)) == {}
    ab = AblationFile(**common, runs=[run("baseline", 2.0, s, [1] * 4, [60] * 4) for s in (0, 1)],
                      tasks={"seg": {}},
                      ablation_config={"seg_lmbda": 2.0, "variants": ["baseline", "aux-enc"]})  # fmt: skip
    assert progress_caveats(ab)["seg"][0].startswith("in progress: 0 of 2 seeds complete")
    point = runs[0].points[0]
    gan = GanFile(**common, gan_config={"presets": ["full", "no-adv"]}, runs=[
        GanRecord("seg", 2.0, s, p, None, 1.0, [], point, point) for s in (0, 1)
        for p in ("full", "no-adv")
    ])  # fmt: skip
    assert progress_caveats(gan) == {}
    assert progress_caveats(replace(gan, runs=gan.runs[:3])) == {
        "seg": ["in progress: 3 of 4 finetunings in results/gan-t.json so far"]
    }
