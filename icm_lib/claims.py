"""Each paper claim tested as ``results/analysis-plan.json`` declared it: a verdict with numbers.

A claim is a comparison of a *test* against an *anchor* on the same seeds (paired): Iino et al.'s
R-D claims (aux-enc against the baseline, per task; aux-enc against ROI on detection), the
positive control (the MSE codec against the task-loss baseline: a large effect the pipeline must
detect), and the branch-position ablation. For each, this module computes from the results files
(:mod:`icm_lib.results`):

* the **paired per-seed effects** and their Student-t interval (the seed level alone);
* the **two-level bootstrap** interval (seeds × val images, every point recomputed from its
  per-image records; :func:`icm_lib.statistics.two_level_bootstrap`);
* the **verdict** against the plan's margin: ``effect`` / ``equivalent`` / ``unresolved``, with
  the interval's width and the seeds a t-interval would need (:func:`icm_lib.statistics.verdict`).

R-D claims carry two estimators: the strict BD-rate (percent of bits at equal metric; undefined
when a curve does not rise strictly, which is counted) and the metric difference at equal rate
(defined when a curve flattens). ``python -m icm_lib.claims --profile cpu-patterns`` prints them
and writes ``results/claims-<profile>.json`` with the SHA-256 of every file it read; the README
and the notebooks read that file while those files are unchanged (:func:`recorded_claims`) and
compute the claims afresh otherwise, so a stored claim never outlives its inputs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats as _st

from .files import read_json
from .results import (
    AblationFile,
    ClaimsFile,
    GanFile,
    PilotFile,
    RDPoint,
    RunRecord,
    StudyFile,
    WorldFile,
)
from .statistics import (
    bd_rate_effect,
    equal_rate_delta,
    metric_at_rate,
    paired_effects,
    t_interval,
    two_level_bootstrap,
    verdict,
)

PLAN = Path("results") / "analysis-plan.json"
#: the results files a profile's claims are computed from (besides the plan)
CLAIM_SOURCES = (StudyFile, AblationFile, GanFile)
#: the acceptance checks of the world (``results/world-<profile>.json``) a task's claims rest on;
#: a failed one is named beside every claim of that task (amendment 3 of the analysis plan says
#: so of the detector's informative bar; every other check the claims rest on is named the same)
WORLD_CHECKS = {
    "det": ("informative_det", "plateau_det", "reference_converged", "mse_loses_det",
            "roi_beats_baseline_det"),
    "seg": ("informative_seg", "plateau_seg", "reference_converged", "mse_loses_seg"),
}  # fmt: skip


@dataclass
class Claim:
    """One claim's test.

    Attributes:
        name: the plan's claim (``iino_seg_rd``, ...) and, after ``/``, the estimator.
        title: what is compared, in words.
        paper: the paper's number or statement.
        estimator: ``bd_rate`` (%, negative = fewer bits), ``delta_equal_rate`` (metric points,
            positive = better), ``val_main_loss`` (lower = better).
        per_seed: the paired effect per seed (``None`` where undefined).
        seed_interval: :func:`~icm_lib.statistics.t_interval` of the defined per-seed effects.
        interval: ``{"estimate", "lo", "hi", "bootstrap", "t", "n_boot", "undefined"}``: the
            verdict's interval ``[lo, hi]`` is the union of the two-level bootstrap's
            (``bootstrap``; seeds only where the records hold no per-image data) and the
            seed-level t-interval (``t``).
        verdict: :func:`~icm_lib.statistics.verdict` at the plan's margin.
    """

    name: str
    title: str
    paper: str
    estimator: str
    per_seed: dict[int, float | None]
    seed_interval: dict
    interval: dict
    verdict: dict
    notes: list[str] = field(default_factory=list)

    def plain(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> Claim:
        """The claim :meth:`plain` wrote (JSON turns the per-seed keys into strings)."""
        return cls(**{**d, "per_seed": {int(s): v for s, v in d["per_seed"].items()}})


def read_plan(path: str | Path = PLAN) -> dict:
    return read_json(
        path,
        what="the analysis plan",
        fix="restore results/analysis-plan.json from git (it is declared before the runs)",
    )


def _curves(runs: list[RunRecord], task: str, variant: str, curve: str) -> dict[int, list]:
    """Per seed, the points of ``curve`` on ``task`` of the runs of ``variant``, by λ."""
    out: dict[int, list[RDPoint]] = {}
    for run in sorted(runs, key=lambda r: r.lmbda):
        if run.variant != variant or (run.task != task and variant != "mse"):
            continue
        point = run.point(task, curve)
        if point is not None and point.metric is not None:
            out.setdefault(run.seed, []).append(point)
    return out


class _Records:
    """A point's per-image records as the bootstrap reads them (the point's own numbers when it
    has none: then only seeds are resampled)."""

    def __init__(self, point: RDPoint):
        self.point = point
        im = point.images
        self.bits = im.bits if im is not None else [point.bpp]
        self.pixels = im.pixels if im is not None else [1]

    def metric(self, images=None):
        if self.point.images is None:
            return self.point.metric
        return self.point.images.metric(images)


ESTIMATORS = {
    "bd_rate": bd_rate_effect,
    "delta_equal_rate": equal_rate_delta,
}


def rd_claim(
    name: str,
    title: str,
    paper: str,
    anchor: dict[int, list[RDPoint]],
    test: dict[int, list[RDPoint]],
    estimator: str,
    margin: float,
    n_boot: int,
) -> Claim:
    """One R-D comparison, paired by seed (seeds both curves hold)."""
    fn = ESTIMATORS[estimator]
    a = {s: [_Records(p) for p in pts] for s, pts in anchor.items()}
    t = {s: [_Records(p) for p in pts] for s, pts in test.items()}
    per_seed = paired_effects(
        {s: [(p.bpp, p.metric) for p in pts] for s, pts in anchor.items()},
        {s: [(p.bpp, p.metric) for p in pts] for s, pts in test.items()},
        fn,
    )
    per_image = all(p.images is not None for pts in (*anchor.values(), *test.values()) for p in pts)
    notes = []
    if not per_image:
        notes.append("some points hold no per-image records: the interval resamples seeds only")
    if not per_seed:
        boot = {"estimate": None, "lo": None, "hi": None, "n_boot": 0, "undefined": 0}
    else:
        boot = two_level_bootstrap(a, t, fn, n_boot=n_boot, resample_images=per_image)
        boot = {k: boot[k] for k in ("estimate", "lo", "hi", "n_boot", "undefined")}
    undefined = [s for s, v in per_seed.items() if v is None]
    if undefined:
        notes.append(f"undefined for seeds {undefined}")
    seed_iv = t_interval(list(per_seed.values()))
    boot = _union(boot, seed_iv)
    return Claim(
        name=f"{name}/{estimator}",
        title=title,
        paper=paper,
        estimator=estimator,
        per_seed=per_seed,
        seed_interval=seed_iv,
        interval=boot,
        verdict=verdict(boot["lo"], boot["hi"], margin, seed_iv["sd"], boot["estimate"]),
        notes=notes,
    )


def along_or_off(
    study: StudyFile, task: str, test: str = "aux-enc", anchor: str = "baseline"
) -> list[dict]:
    """Does a ``test`` run move *along* the same seed's ``anchor`` curve or *off* it? Per test
    run (seed, λ): ``bits_change``, its bits against the anchor run of the same seed and λ (%),
    and ``metric_change``; ``offset``, its metric minus the anchor curve's at its own rate (the
    curve piecewise linear in log-bpp, as the equal-rate estimator reads it; ``None`` outside
    the curve's rates); and ``paper_offset``, the offset a curve as much cheaper as Iino et al.
    report (their BD-rate for the task) would have there: the anchor curve's metric at
    bpp / (1 + BD-rate) minus its metric at bpp. A run that spends more bits for the metric the
    curve already gives at that rate (offset ≈ 0) moved along the curve; the paper's effect
    lifts runs off it, to about ``paper_offset``."""
    from .results import PAPERS

    shrink = 1 + PAPERS.iino_bd_rate[task] / 100
    anchors = _curves(study.runs, task, anchor, anchor)
    rows = []
    for seed, points in sorted(_curves(study.runs, task, test, test).items()):
        base = anchors.get(seed, [])
        curve = [(p.bpp, p.metric) for p in base]
        same = {p.lmbda: p for p in base}
        for p in points:
            at = metric_at_rate(curve, p.bpp)
            paper_at = metric_at_rate(curve, p.bpp / shrink)
            b = same.get(p.lmbda)
            rows.append(
                {
                    "seed": seed,
                    "lmbda": p.lmbda,
                    "bpp": p.bpp,
                    "metric": p.metric,
                    "bits_change": None if b is None else 100 * (p.bpp / b.bpp - 1),
                    "metric_change": None if b is None else p.metric - b.metric,
                    "offset": None if at is None else p.metric - at,
                    "paper_offset": None if at is None or paper_at is None else paper_at - at,
                }
            )
    return rows


def _union(boot: dict, seed_iv: dict) -> dict:
    """The verdict's interval: the union of the bootstrap's and the seed-level t-interval (the
    plan's amendment: a percentile bootstrap over a handful of seeds sees few distinct seed sets
    and is too narrow; the t-interval alone ignores the val images' sampling). A bootstrap that
    ran and gave no interval (too many undefined replicates: amendment 5) leaves none: the
    t-interval of the seeds where the estimate happens to be defined would be narrower than
    what the data say."""
    out = {**boot, "bootstrap": [boot["lo"], boot["hi"]], "t": [seed_iv["lo"], seed_iv["hi"]]}
    if boot["n_boot"] and boot["lo"] is None:
        out["lo"] = out["hi"] = None
        return out
    los = [x for x in (boot["lo"], seed_iv["lo"]) if x is not None]
    his = [x for x in (boot["hi"], seed_iv["hi"]) if x is not None]
    out["lo"], out["hi"] = (min(los), max(his)) if los and his else (None, None)
    return out


def study_claims(study: StudyFile, plan: dict, n_boot: int = 2000) -> list[Claim]:
    """The plan's R-D claims and the positive control that ``study`` holds runs for."""
    margins = plan["margins"]
    out = []
    for name, spec in plan["claims"].items():
        if "anchor" not in spec or "test" not in spec:
            continue
        tasks = ["det", "seg"] if spec["task"] == "det and seg" else [spec["task"]]
        for task in tasks:
            metric = "map" if task == "det" else "miou"
            anchor_variant = "baseline" if spec["anchor"] in ("baseline", "roi") else spec["anchor"]
            anchor = _curves(study.runs, task, anchor_variant, spec["anchor"])
            test = _curves(study.runs, task, spec["test"], spec["test"])
            if spec["test"] == "mse" and 0 in test:  # one MSE curve (seed 0) against every seed
                test = {s: test[0] for s in anchor}
            if not anchor or not test:
                continue
            paper = spec.get("paper") or spec.get("expected", "")
            label = f"{name}" + (f"_{task}" if len(tasks) > 1 else "")
            title = f"{task}: {spec['test']} against {spec['anchor']}"
            out.append(
                rd_claim(label, title, paper, anchor, test, "bd_rate",
                         margins["bd_rate_percent"], n_boot)
            )  # fmt: skip
            out.append(
                rd_claim(label, title, paper, anchor, test, "delta_equal_rate",
                         margins[f"delta_{metric}_equal_rate"], n_boot)
            )  # fmt: skip
    return out


def late_val_loss(run: RunRecord, key: str = "main_loss", last: float = 0.2) -> float | None:
    """Mean validation ``key`` over the last ``last`` share of the run's steps (the plan's
    ablation score); ``None`` without a validation curve."""
    if not run.val or not run.val.get("step"):
        return None
    steps, values = run.val["step"], run.val[key]
    end = steps[-1]
    tail = [v for s, v in zip(steps, values) if s >= (1 - last) * end]
    return float(np.mean(tail)) if tail else None


def holm(p_values: dict[str, float | None]) -> dict[str, float | None]:
    """Holm-adjusted p-values (step-down, monotone; ``None`` stays ``None``)."""
    known = sorted(((p, k) for k, p in p_values.items() if p is not None), key=lambda x: x[0])
    m, running, out = len(known), 0.0, {k: None for k in p_values}
    for i, (p, k) in enumerate(known):
        running = max(running, min(1.0, (m - i) * p))
        out[k] = running
    return out


def _seed_claim(name, title, paper, estimator, per_seed, margin, notes=()) -> Claim:
    """A claim whose interval is the seed-level t-interval alone."""
    iv = t_interval(list(per_seed.values()))
    return Claim(
        name=name,
        title=title,
        paper=paper,
        estimator=estimator,
        per_seed=per_seed,
        seed_interval=iv,
        interval={
            "estimate": iv["mean"],
            "lo": iv["lo"],
            "hi": iv["hi"],
            "n_boot": 0,
            "undefined": sum(x is None for x in per_seed.values()),
        },
        verdict=verdict(iv["lo"], iv["hi"], margin, iv["sd"], iv["mean"]),
        notes=list(notes),
    )


def ablation_claims(ablation: AblationFile, plan: dict) -> list[Claim]:
    """Section 4.2 per task: every position against the same seed's baseline (Holm over the
    positions), and aux-enc against each other position; the score is the mean validation main
    loss over the last 20 % of training (lower is better)."""
    margin = plan["margins"]["ablation_main_loss"]
    spec = plan["claims"]["iino_ablation"]
    out = []
    for task in sorted({r.task for r in ablation.runs}):
        score = {(r.variant, r.seed): late_val_loss(r) for r in ablation.runs if r.task == task}
        pairs = [(p, "baseline") for p in spec["positions"]]
        pairs += [("aux-enc", p) for p in spec["positions"] if p != "aux-enc"]
        found = []
        for test, anchor in pairs:
            seeds = sorted(
                {s for v, s in score if v == test} & {s for v, s in score if v == anchor}
            )
            per_seed = {
                s: (score[test, s] - score[anchor, s])
                if score[test, s] is not None and score[anchor, s] is not None
                else None
                for s in seeds
            }
            if per_seed:
                found.append((test, anchor, per_seed))
        p_raw = {}
        for test, anchor, per_seed in found:
            v = [x for x in per_seed.values() if x is not None]
            p_raw[f"{test}|{anchor}"] = (
                float(_st.ttest_1samp(v, 0.0).pvalue)
                if len(v) > 1 and np.std(v) > 1e-9 * max(1.0, abs(float(np.mean(v))))
                else None
            )
        p_holm = holm({k: p for k, p in p_raw.items() if k.endswith("|baseline")})
        for test, anchor, per_seed in found:
            key = f"{test}|{anchor}"
            notes = [f"p = {p_raw[key]:.3g} (paired t)"] if p_raw[key] is not None else []
            if key in p_holm and p_holm[key] is not None:
                notes.append(f"Holm-adjusted over the positions: p = {p_holm[key]:.3g}")
            claim = _seed_claim(
                f"iino_ablation_{task}/{test}-vs-{anchor}",
                f"{task}: {test} against {anchor} (late validation main loss)",
                spec["paper"],
                "val_main_loss",
                per_seed,
                margin,
                notes,
            )
            held = p_holm.get(key)
            if claim.verdict["verdict"] == "effect" and held is not None and held >= 0.05:
                claim.verdict = {
                    **claim.verdict,
                    "verdict": "unresolved",
                    "why": "not significant after Holm",
                    "p_holm": held,
                }
            out.append(claim)
    return out


def gan_changes(gan: GanFile) -> tuple[dict, dict]:
    """Per ``((preset name, pixel weight), seed)`` of the factorial (``-px1`` presets: pixel
    weight ``"1"``; the others ``"paper"``, the configured weight): the change in checkerboard
    score over finetuning (after - before) and the task metric's change (percent of before)."""
    change, task_change = {}, {}
    for r in gan.runs:
        name, _, px = r.preset.partition("-px")
        cell = (name, px or "paper")
        if r.after.checkerboard is not None and r.before.checkerboard is not None:
            change[cell, r.seed] = r.after.checkerboard - r.before.checkerboard
        if r.after.metric is not None and r.before.metric:
            task_change[cell, r.seed] = 100 * (r.after.metric / r.before.metric - 1)
    return change, task_change


def factorial_table(gan: GanFile) -> str:
    """Le et al. as a factorial, in markdown: one row per adversarial preset, one column per
    pixel weight; each cell the mean change in checkerboard score over finetuning [95 % t-interval]
    and the task metric's change (%), over the seeds. The claim is the difference of a row from
    ``no-adv`` in the same column (the claims table); this table shows the cells themselves."""
    change, task_change = gan_changes(gan)
    cells = {c for c, _ in change} | {c for c, _ in task_change}
    names = [n for n in ("no-adv", "limited", "full") if any(c[0] == n for c in cells)]
    pxs = sorted({c[1] for c in cells}, key=lambda px: px != "paper")

    def cell(name: str, px: str) -> str:
        cb = t_interval([v for (c, _), v in change.items() if c == (name, px)])
        task = t_interval([v for (c, _), v in task_change.items() if c == (name, px)])
        if cb["n"] == 0:
            return "—"
        return (
            f"{fmt(cb['mean'], 4)} [{fmt(cb['lo'], 4)}, {fmt(cb['hi'], 4)}]; "
            f"task {fmt(task['mean'], 1)} % (n={cb['n']})"
        )

    head = ["configured pixel weight" if px == "paper" else f"pixel weight {px}" for px in pxs]
    lines = ["| adversarial preset | " + " | ".join(head) + " |", "|---" * (len(pxs) + 1) + "|"]
    lines += [f"| {n} | " + " | ".join(cell(n, px) for px in pxs) + " |" for n in names]
    return "\n".join(lines)


def gan_claims(gan: GanFile, plan: dict) -> list[Claim]:
    """Le et al. per pixel weight: what the discriminator adds to the change in checkerboard
    score (each adversarial preset minus ``no-adv`` at the same pixel weight and seed), and the
    task metric's change over finetuning (percent of before) of each adversarial preset."""
    spec = plan["claims"]["le_patchgan"]
    margins = plan["margins"]
    change, task_change = gan_changes(gan)
    out = []
    cells = sorted({c for c, _ in change} | {c for c, _ in task_change})
    for name, px in cells:
        if name == "no-adv":
            continue
        weight = "the configured pixel weight" if px == "paper" else f"pixel weight {px}"
        control = ("no-adv", px)
        seeds = sorted(
            {s for c, s in change if c == (name, px)} & {s for c, s in change if c == control}
        )
        if seeds:
            per_seed = {s: change[(name, px), s] - change[control, s] for s in seeds}
            out.append(
                _seed_claim(
                    f"le_patchgan/{name}-px{px}/checkerboard",
                    f"{name} against no-adv at {weight}: change in checkerboard score",
                    spec["paper"],
                    "checkerboard_vs_control",
                    per_seed,
                    margins["checkerboard"],
                )
            )
        per_seed = {s: v for (c, s), v in task_change.items() if c == (name, px)}
        if per_seed:
            out.append(
                _seed_claim(
                    f"le_patchgan/{name}-px{px}/task",
                    f"{name} at {weight}: task metric after finetuning (% of before)",
                    spec["paper"],
                    "task_change_percent",
                    per_seed,
                    margins["task_change_percent"],
                )
            )
    return out


def claims(results_dir: str | Path, profile: str, n_boot: int = 2000) -> list[Claim]:
    """Every claim the profile's results files hold runs for, each with the world checks it
    rests on that failed (:func:`world_caveats`) among its notes."""
    plan = read_plan(Path(results_dir) / "analysis-plan.json")
    out: list[tuple[str, Claim]] = []
    study = StudyFile.find(results_dir, profile)
    if study is not None:
        out += _noted(
            [(c.title.split(":")[0], c) for c in study_claims(study, plan, n_boot)],
            progress_caveats(study),
        )
    ablation = AblationFile.find(results_dir, profile)
    if ablation is not None:
        out += _noted(
            [(c.title.split(":")[0], c) for c in ablation_claims(ablation, plan)],
            progress_caveats(ablation),
        )
    gan = GanFile.find(results_dir, profile)
    if gan is not None:
        task = gan.runs[0].task if gan.runs else ""
        out += _noted([(task, c) for c in gan_claims(gan, plan)], progress_caveats(gan))
    world, pilot = WorldFile.find(results_dir, profile), PilotFile.find(results_dir, profile)
    caveats, band = world_caveats(world), pilot_caveats(pilot)
    mixed = environment_caveats(
        {"world": world, "pilot": pilot, "study": study, "ablation": ablation, "gan": gan}
    )
    for task, claim in out:
        claim.notes += caveats.get(task, []) + band.get(task, []) + mixed
    return [c for _, c in out]


#: how a claim's note begins when its results file is not complete yet
IN_PROGRESS = "in progress: "


def progress_caveats(file) -> dict[str, list[str]]:
    """Per task, a note where a results file is not complete yet (a study still running, its
    runs so far committed): the verdicts of its claims are those of the runs so far."""
    if isinstance(file, GanFile):
        planned = len(file.seeds) * len(file.gan_config.get("presets", ()))
        if not file.runs or len(file.runs) >= planned:
            return {}
        return {
            file.runs[0].task: [
                f"{IN_PROGRESS}{len(file.runs)} of {planned} finetunings in "
                f"results/{file.path('.', file.profile).name} so far"
            ]
        }
    if file.complete:
        return {}
    out = {}
    for task in sorted({*file.tasks, *(r.task for r in file.runs if r.variant != "mse")}):
        if isinstance(file, StudyFile):
            grid = [
                (v, lm) for v in file.variants for lm in file.icm_config.get(f"{task}_lambdas", ())
            ]
        else:
            grid = [
                (v, file.ablation_config[f"{task}_lmbda"]) for v in file.ablation_config["variants"]
            ]
        have = {(r.variant, r.lmbda, r.seed) for r in file.runs if r.task == task}
        done = [s for s in file.seeds if all((v, lm, s) in have for v, lm in grid)]
        if len(done) < len(file.seeds):
            out[task] = [
                f"{IN_PROGRESS}{len(done)} of {len(file.seeds)} seeds complete in "
                f"results/{file.path('.', file.profile).name} so far"
            ]
    return out


def _noted(claims: list[tuple[str, Claim]], notes: dict[str, list[str]]) -> list:
    """``claims`` (task, claim) with each task's ``notes`` added."""
    for task, claim in claims:
        claim.notes += notes.get(task, [])
    return claims


#: how a claim's note begins when the files it rests on come from different environments
MIXED_ENVIRONMENTS = "files of different environments"


def environment_caveats(files: dict) -> list[str]:
    """One note for every claim of a profile whose files (kind -> file or ``None``) were made
    in different environments (:attr:`~icm_lib.results._ResultsFile.environment`): their
    recognizers and reference codecs are then not the same weights, so a world check or a
    pilot describes other foundations than the studies' runs. None when all agree."""
    from .report import environment_words

    groups: dict[str, list[str]] = {}
    for kind, f in files.items():
        if f is not None:
            groups.setdefault(json.dumps(f.environment, sort_keys=True), []).append(kind)
    if len(groups) < 2:
        return []
    parts = "; ".join(
        f"{', '.join(kinds)}: {environment_words(json.loads(key))}" for key, kinds in groups.items()
    )
    return [f"{MIXED_ENVIRONMENTS} ({parts}): not the same recognizers and reference codec"]


def pilot_caveats(pilot: PilotFile | None) -> dict[str, list[str]]:
    """Per task, a note where the pilot's λ are the fallback of amendment 4 (no 4 consecutive
    λ rose strictly inside the band of the uncompressed metric; none without a pilot file)."""
    if pilot is None:
        return {}
    return {
        task: [
            f"pilot band not reached: {sel.get('reason')} "
            f"(results/{pilot.path('.', pilot.profile).name})"
        ]
        for task, sel in pilot.selection.items()
        if sel.get("lambdas") is not None and sel.get("band_reached") is False
    }


def world_caveats(world: WorldFile | None) -> dict[str, list[str]]:
    """Per task, a note for each check of :data:`WORLD_CHECKS` that the world file records as
    failed (none without a world file: the control world and the legacy profiles have none)."""
    from .world_check import describe_check

    if world is None:
        return {}
    out: dict[str, list[str]] = {}
    for task, names in WORLD_CHECKS.items():
        for name in names:
            check = world.checks.get(name)
            if check is not None and not check.get("pass"):
                d = describe_check(name, check)
                out.setdefault(task, []).append(
                    f"world check failed: {name} ({d['words']}: {d['value']}, bar {d['bar']}"
                    + (f"; {d['note']}" if d["note"] else "")
                    + f"; results/{world.path('.', world.profile).name})"
                )
    return out


def world_failed(claim: Claim) -> list[str]:
    """The names of the failed world checks among ``claim``'s notes."""
    return [n.split()[3] for n in claim.notes if n.startswith("world check failed: ")]


def inputs_of(results_dir: str | Path, profile: str) -> dict[str, str]:
    """The files the profile's claims are computed from (the plan, the study, ablation and
    PatchGAN files, the world checks and the pilot that exist), name -> SHA-256 of their
    content without the fields that say when and by which commit a file was last written
    (:data:`PROVENANCE`): an invocation that re-writes a file with the same numbers -- a study
    whose every run is in the cache, a pilot re-run -- leaves the claims computed from it
    current."""
    names = ["analysis-plan.json"] + [
        cls.path(".", profile).name for cls in (*CLAIM_SOURCES, WorldFile, PilotFile)
    ]
    return {
        n: _content_hash(Path(results_dir) / n) for n in names if (Path(results_dir) / n).is_file()
    }


#: a results file's top-level fields no claim reads: when, by which commit, in how much wall time
PROVENANCE = ("created", "commit", "wall_hours_this_invocation")


def _content_hash(path: Path) -> str:
    raw = path.read_bytes()
    try:
        data = json.loads(raw)
    except ValueError:  # not JSON: hashed as it is, and computing the claims says what is wrong
        return hashlib.sha256(raw).hexdigest()
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k not in PROVENANCE}
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def recorded_claims(results_dir: str | Path, profile: str, n_boot: int = 2000) -> list[Claim]:
    """The profile's claims from ``results/claims-<profile>.json`` while every file they were
    computed from is unchanged (and at the same ``n_boot``), else computed afresh
    (:func:`claims`)."""
    f = ClaimsFile.find(results_dir, profile)
    if f is not None and f.n_boot == n_boot and f.inputs == inputs_of(results_dir, profile):
        return [Claim.from_json(c) for c in f.claims]
    return claims(results_dir, profile, n_boot)


def claims_file(results_dir: str | Path, profile: str, n_boot: int = 2000) -> ClaimsFile:
    """Compute the profile's claims with what :func:`recorded_claims` needs to trust them later."""
    t0 = time.perf_counter()
    inputs = inputs_of(results_dir, profile)
    rows = claims(results_dir, profile, n_boot)
    return ClaimsFile(
        profile=profile,
        seeds=sorted({s for c in rows for s in c.per_seed}),
        compute_hours_in_runs=0.0,
        wall_hours_this_invocation=round((time.perf_counter() - t0) / 3600, 4),
        inputs=inputs,
        n_boot=n_boot,
        claims=[c.plain() for c in rows],
    )


def stale_files(results_dir: str | Path, profile: str) -> list[str]:
    """The profile's results files the claims read whose numbers are known not to be today's
    code's (``reproduced_by_current_code`` false), by file name."""
    files = ((cls, cls.find(results_dir, profile)) for cls in CLAIM_SOURCES)
    return [
        cls.path(".", profile).name
        for cls, f in files
        if f is not None and f.reproduced_by_current_code is False
    ]


def paper_values(rows: list[Claim]) -> dict[str, float]:
    """The papers' numbers on a claim's own scale (Iino et al.'s BD-rates), for the plots."""
    from .results import PAPERS

    out = {}
    for c in rows:
        for task, value in PAPERS.iino_bd_rate.items():
            if c.name == f"iino_{task}_rd/bd_rate":
                out[c.name] = value
    return out


def fmt(x: float | None, digits: int = 3) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:+.{digits}f}"


def table(rows: list[Claim]) -> str:
    """A markdown table: claim, paper, estimate [interval], verdict, seeds."""
    lines = [
        "| claim | estimator | paper | estimate [95 % CI] | verdict | seeds |",
        "|---|---|---|---|---|---|",
    ]
    for c in rows:
        digits = 1 if c.estimator in ("bd_rate", "task_change_percent") else 4
        iv = c.interval
        v = c.verdict
        extra = (
            f" (would need {v['seeds_needed']} seeds)"
            if v["verdict"] == "unresolved" and v.get("seeds_needed")
            else ""
        )
        if v.get("why"):  # an unresolved verdict the interval alone does not explain
            why = [f"p = {v['p_holm']:.3g}"] if v.get("p_holm") is not None else []
            undefined = sum(x is None for x in c.per_seed.values())
            if undefined:
                why.append(f"the estimate is undefined in {undefined} of {len(c.per_seed)} seeds")
            if iv.get("n_boot") and iv.get("undefined"):
                why.append(f"in {iv['undefined']} of {iv['n_boot']} bootstrap replicates")
            extra += f" ({v['why']}{': ' + ', '.join(why) if why else ''})"
        progress = [n.split(" in results/")[0] for n in c.notes if n.startswith(IN_PROGRESS)]
        extra += "".join(f"; {n}" for n in progress)
        failed = world_failed(c)
        if failed:
            extra += f"; world check failed: {', '.join(failed)}"
        if any(n.startswith("pilot band not reached") for n in c.notes):
            extra += "; pilot band not reached"
        if any(n.startswith(MIXED_ENVIRONMENTS) for n in c.notes):
            extra += "; its files come from different environments"
        lines.append(
            f"| {c.title} | {c.estimator} | {c.paper} | {fmt(iv['estimate'], digits)} "
            f"[{fmt(iv['lo'], digits)}, {fmt(iv['hi'], digits)}] | **{v['verdict']}**{extra} | "
            f"{len(c.per_seed)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[Claim]:
    p = argparse.ArgumentParser(prog="python -m icm_lib.claims", description=__doc__.split("\n")[0])
    p.add_argument("--profile", default="cpu-patterns")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--n-boot", type=int, default=2000)
    p.add_argument("--figure", default=None, help="also save the forest plot here (.png)")
    args = p.parse_args(argv)
    out = claims_file(args.results_dir, args.profile, args.n_boot)
    rows = [Claim.from_json(c) for c in out.claims]
    print(table(rows) if rows else f"no results for profile {args.profile!r} yet")
    if rows:
        print("wrote", out.write(ClaimsFile.path(args.results_dir, args.profile)))
    if rows and args.figure:
        from . import plots

        fig = plots.forest(rows, paper_values(rows), f"claims, profile {args.profile}")
        fig.savefig(args.figure, dpi=110, bbox_inches="tight")
    return rows


if __name__ == "__main__":
    from .cli import command_status

    raise SystemExit(command_status(main))
