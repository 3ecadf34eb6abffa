"""The README's results tables, generated from the study files in ``results/`` (never typed).

    python -m icm_lib.report --readme README.md                # every profile with results files
    python -m icm_lib.report --profile cpu-patterns            # one world's tables, printed

The text goes between the ``<!-- study-report:start -->`` and ``<!-- study-report:end -->``
markers of the README; with files of more than one profile (the shapes world ``cpu`` and the
patterns world ``cpu-patterns``), one section per profile, side by side in one README.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .errors import ConfigError
from .evaluate import curves, mean_curve
from .files import atomic_write_bytes
from .profiles import PROFILES
from .results import (
    PAPERS,
    AblationFile,
    ClaimsFile,
    DepthFile,
    GanFile,
    GradientsFile,
    PilotFile,
    StudyFile,
    WorldFile,
    as_json,
    profiles_with_studies,
)


def fmt_mean_ci(row: dict, digits: int = 1, unit: str = "", signed: bool = True) -> str:
    """``-2.6 % ± 3.0 (n=3)`` from a :func:`~icm_lib.evaluate.mean_ci` row (``–`` if empty)."""
    if not row or row.get("n", 0) == 0:
        return "–"
    ci = f" ± {row['ci95']:.{digits}f}" if row["n"] > 1 else ""
    return f"{row['mean']:{'+' if signed else ''}.{digits}f}{unit}{ci} (n={row['n']})"


def fmt_bd_rate(row: dict, seed: int | None = None) -> str:
    """A BD-rate row of :func:`~icm_lib.evaluate.bd_rates` as one line: mean ± CI over seeds
    (``seed=None``), or that seed's value, ``undefined`` with the reason, and the BD-rate on
    the operational fronts (labelled: a different, noisier estimator)."""
    if seed is None:
        return f"{fmt_mean_ci(row, 1, ' %')}; fronts {fmt_mean_ci(row.get('front'), 1, ' %')}"
    strict, front = row["per_seed"].get(seed, {}), row["front"]["per_seed"].get(seed, {})
    text = (
        f"{strict['bd_rate']:+.1f} %"
        if strict.get("bd_rate") is not None
        else f"undefined ({strict.get('error')})"
    )
    if front.get("bd_rate") is not None:
        text += f"; on the operational fronts {front['bd_rate']:+.1f} %"
    return text


def fmt_agreement(row: dict, metric: str) -> str:
    """A row of :func:`~icm_lib.evaluate.study_agreement` as one line."""
    return (
        f"{row['curve']} λ={row['lmbda']:g} seed {row['seed']}: here {row['bpp']:.4f} bpp, "
        f"{metric} {row[metric]:.4f} | study {row['bpp_study']:.4f} bpp, {metric} "
        f"{row[metric + '_study']:.4f} (max |difference| {row['max_abs_difference']:.2g})"
    )


def fmt_gan_agreement(row: dict, metric: str) -> str:
    """A row of :func:`~icm_lib.evaluate.gan_agreement` as one line."""
    return (
        f"{row['preset']} seed {row['seed']}: here PSNR {row['psnr']:.2f} dB, checkerboard "
        f"{row['checkerboard']:.4f}, {metric} {row['metric']:.4f} | study {row['psnr_study']:.2f} "
        f"dB, {row['checkerboard_study']:.4f}, {row['metric_study']:.4f} "
        f"(max |difference| {row['max_abs_difference']:.2g})"
    )


def recorded_study(results_dir: str | Path, profile) -> dict | None:
    """Iino et al.'s study file of ``profile`` (``results/study-<name>.json``) as the notebooks
    read it, or ``None`` when it is absent or was written for other codec-training settings
    (its ``icm_config`` differs from the profile's: the notebooks then say so and use their
    own runs).

    Returns:
        ``{"curves": {task: {curve: {seed: [points]}}}, "bd_rate": {task: table}, "seeds",
        "complete", "source"}`` (seeds as ints).
    """

    path = StudyFile.path(results_dir, profile.name)
    study = StudyFile.find(results_dir, profile.name)
    if study is None:
        return None
    if study.icm_config != as_json(profile.icm.recorded()):
        print(f"{path.name} was written for other settings than profile {profile.name!r}: unused")
        return None
    return {
        "curves": {task: _sorted_curves(study, task) for task in study.tasks},
        "bd_rate": {
            task: {name: _int_seeds(row) for name, row in t["bd_rate"].items()}
            for task, t in study.tasks.items()
        },
        "seeds": study.seeds,
        "complete": study.complete,
        "source": f"{path.name} ({_seeds_per_task(study)}"
        + ("" if study.complete else ", in progress")
        + ")",
    }


def _seeds_per_task(study: StudyFile) -> str:
    """``6 seeds``, or per task where they differ (a study in progress, or one task run on
    more seeds): ``det 1 seed, seg 6 seeds``."""
    n = {
        t: len({r.seed for r in study.runs if r.task == t and r.variant != "mse"})
        for t in study.tasks
    }
    if len(set(n.values())) <= 1:
        return f"{len(study.seeds)} seeds"
    return ", ".join(f"{t} {k} seed{'' if k == 1 else 's'}" for t, k in n.items())


def _sorted_curves(study: StudyFile, task: str) -> dict:
    """The study's curves of ``task`` (:func:`~icm_lib.evaluate.curves`), curves and seeds in
    sorted order."""
    c = curves(study.runs, task)
    return {name: {s: c[name][s] for s in sorted(c[name])} for name in sorted(c)}


def _int_seeds(row: dict) -> dict:
    """A BD-rate row with its ``per_seed`` keys (JSON strings) back to ints, nested rows too."""
    out = {
        k: _int_seeds(v) if isinstance(v, dict) and k != "per_seed" else v for k, v in row.items()
    }
    if "per_seed" in row:
        out["per_seed"] = {int(s): v for s, v in row["per_seed"].items()}
    return out


START, END = "<!-- study-report:start -->", "<!-- study-report:end -->"


def write_between_markers(path: Path, text: str) -> None:
    if not path.is_file():
        raise ConfigError(f"no file {path} to write the tables into (--readme)")
    doc = path.read_text()
    if START not in doc or END not in doc:
        raise ConfigError(f"{path} has no {START} ... {END} markers")
    head, rest = doc.split(START, 1)
    tail = rest.split(END, 1)[1]
    atomic_write_bytes(path, (head + START + "\n" + text + "\n" + END + tail).encode())


def report(results_dir: str | Path, profiles: str | list[str] | None = None) -> str:
    """Markdown tables for the README, generated from the study JSON files (never typed in):
    of ``profiles`` (one name, several, or ``None``: every profile with files in
    ``results_dir``), a section per profile when there are several."""
    if isinstance(profiles, str):
        return _profile_report(results_dir, profiles)
    names = profiles if profiles is not None else profiles_with_studies(results_dir)
    if len(names) == 1:
        return _profile_report(results_dir, names[0])
    sections = []
    for name in names:
        world = PROFILES[name].data.world if name in PROFILES else "?"
        sections += [
            "",
            f"#### Profile `{name}` (the {world} world)",
            _profile_report(results_dir, name),
        ]
    return "\n".join(sections)


def _profile_report(results_dir: str | Path, profile_name: str) -> str:
    """One profile's tables and claims."""
    lines = []
    world = WorldFile.find(results_dir, profile_name)
    if world is not None:
        lines += world_table(world)
    study = StudyFile.find(results_dir, profile_name)
    if study is not None:
        lines += _provenance(study) + file_tables(study)
    ablation = AblationFile.find(results_dir, profile_name)
    if ablation is not None:
        lines += _provenance(ablation) + file_tables(ablation)
    gan = GanFile.find(results_dir, profile_name)
    if gan is not None:
        lines += _provenance(gan) + file_tables(gan)
    files = [f for f in (world, study, ablation, gan) if f is not None]
    if files:
        lines += ["", environments_line(files)]
    lines += compute_table(results_dir, profile_name)
    if (Path(results_dir) / "analysis-plan.json").is_file():
        from .claims import recorded_claims, stale_files, table

        rows = recorded_claims(results_dir, profile_name)
        if rows:
            lines += [
                "",
                f"**Claims, profile `{profile_name}`** (`python -m icm_lib.claims --profile "
                f"{profile_name}`): paired per-seed effects; the 95 % interval is the union of "
                "the two-level bootstrap (seeds x val images) and the seed-level t-interval; "
                "verdicts against the margins of `results/analysis-plan.json`.",
                *(
                    [
                        "",
                        "> These claims read files whose numbers are not today's code's ("
                        + ", ".join(f"`{name}`" for name in stale)
                        + "; see their notes above): they show the method, not a result.",
                    ]
                    if (stale := stale_files(results_dir, profile_name))
                    else []
                ),
                "",
                table(rows),
            ]
    return "\n".join(lines)


#: the packages an environment line names (the ones that decide the numbers of a CPU run)
SHOWN_PACKAGES = ("torch", "compressai", "numpy", "scipy", "pillow", "segmentation-models-pytorch")


def environment_words(env: dict | None) -> str:
    """A file's ``environment`` in a few words (``not recorded`` for files before 2026-12-02)."""
    if env is None:
        return "not recorded (made before environments were)"
    packages = ", ".join(f"{n} {env['packages'].get(n)}" for n in SHOWN_PACKAGES)
    flags = ", ".join(env.get("cpu_flags") or []) or "none of the listed flags"
    return f"{packages}; {env.get('cpu')} ({flags}){'; ' + env['gpu'] if env.get('gpu') else ''}"


def environments_line(files: list) -> str:
    """Which environment made each of a profile's files (one group per environment): a re-run
    lands on a file's numbers only in the environment it records (``constraints.txt``)."""
    groups: dict[str, list[str]] = {}
    for f in files:
        groups.setdefault(environment_words(f.environment), []).append(f"`{f.KIND}`")
    parts = [f"{', '.join(kinds)}: {words}" for words, kinds in groups.items()]
    return f"*Environment* (`constraints.txt` installs today's): {'; '.join(parts)}."


#: a profile's results files in the order its experiments make them (``make experiments``):
#: a run a later file shares with an earlier one (the pilot's baselines in the R-D study, the
#: R-D runs in the ablation and the gradients) was paid for once, by the first
COMPUTE_ORDER = (WorldFile, PilotFile, StudyFile, AblationFile, GanFile, GradientsFile, DepthFile)
COMPUTE_NAMES = {
    "world": "world check",
    "pilot": "λ pilot",
    "study": "R-D study",
    "ablation": "position ablation",
    "gan": "PatchGAN study",
    "gradients": "gradients",
    "depth": "recognizer depth",
}


def compute_rows(results_dir: str | Path, profile_name: str) -> list[dict]:
    """What a profile's studies cost, from their files: per file its runs, the hours logged in
    them, and the hours of the runs no earlier file (:data:`COMPUTE_ORDER`) holds -- each run
    counted once by its key; a file without runs (the depth study) counts its own hours."""
    seen: set[str] = set()
    rows = []
    for cls in COMPUTE_ORDER:
        file = cls.find(results_dir, profile_name)
        if file is None:
            continue
        new = 0.0
        for r in file.runs:
            if r.run_key is None or r.run_key not in seen:
                new += (r.seconds or 0.0) / 3600
            if r.run_key is not None:
                seen.add(r.run_key)
        if not file.runs:
            new = file.compute_hours_in_runs
        rows.append(
            {
                "kind": cls.KIND,
                "runs": len(file.runs),
                "hours": file.compute_hours_in_runs,
                "new_hours": new,
                "complete": getattr(file, "complete", None),
            }
        )
    return rows


def compute_table(results_dir: str | Path, profile_name: str) -> list[str]:
    """:func:`compute_rows` as the README's markdown table (nothing without files)."""
    rows = compute_rows(results_dir, profile_name)
    if not rows:
        return []
    lines = [
        "",
        f"**Compute, profile `{profile_name}`** (hours logged in the files' runs: training and "
        "evaluation; a run two files share counted once, by the first; not included: the "
        "foundations, i.e. the recognizers and the reference codec of the world check):",
        "",
        "| file | runs | hours in its runs | of which first paid here |",
        "|---|---|---|---|",
    ]
    for r in rows:
        state = ", in progress" if r["complete"] is False else ""
        lines.append(
            f"| `{r['kind']}-{profile_name}.json` ({COMPUTE_NAMES[r['kind']]}{state}) | "
            f"{r['runs']} | {r['hours']:.2f} | {r['new_hours']:.2f} |"
        )
    total = sum(r["new_hours"] for r in rows)
    lines.append(f"| total | | | **{total:.2f}** |")
    return lines


def world_table(world: WorldFile) -> list[str]:
    """The world's acceptance checks (``results/world-<profile>.json``) as a markdown table:
    what each measures, the value, the bar and whether it passed."""
    from .world_check import describe_check

    lines = [
        "",
        f"**World checks, profile `{world.profile}`** (`python -m icm_lib.world_check --profile "
        f"{world.profile}`; the bars of `results/analysis-plan.json`; "
        f"{'all passed' if world.passed else 'not all passed'}):",
        "",
        "| check | measures | value | bar | |",
        "|---|---|---|---|---|",
    ]
    for name, check in world.checks.items():
        d = describe_check(name, check)
        lines.append(
            f"| `{name}` | {d['words']} | {d['value']} | {d['bar']} | "
            f"{'pass' if check.get('pass') else '**FAIL**'} |"
        )
    return lines


def file_tables(file: StudyFile | AblationFile | GanFile | ClaimsFile) -> list[str]:
    """The README's markdown tables of one results file (the book's study pages use them)."""
    if isinstance(file, ClaimsFile):  # the verdicts as the README shows them
        from .claims import Claim, table

        return [table([Claim.from_json(c) for c in file.claims])]
    if isinstance(file, StudyFile):
        return _bd_rate_table(file) + _front_table(file) + _rd_point_table(file) + _undefined(file)
    if isinstance(file, AblationFile):
        return _ablation_table(file)
    return _gan_table(file)


def _provenance(file) -> list[str]:
    """A results file's notes when its numbers are not (known to be) today's code's."""
    if file.reproduced_by_current_code is not False:
        return []
    return ["", *(f"*{file.path('', file.profile).name}: {note}*" for note in file.notes), ""]


def _bd_rate_cell(row: dict | None) -> str:
    if not row:
        return "–"
    mean = row.get("of_mean_curves") or {}
    of_mean = (
        f"; of the mean curves {mean['bd_rate']:+.1f} %" if mean.get("bd_rate") is not None else ""
    )
    return fmt_mean_ci(row, 1, " %") + of_mean


def _front_cell(row: dict | None) -> str:
    row = (row or {}).get("front")
    if not row or row.get("n", 0) == 0:
        return "–"
    seeds = ", ".join(
        f"{v['bd_rate']:+.1f}" for v in row["per_seed"].values() if v["bd_rate"] is not None
    )
    return fmt_mean_ci(row, 1, " %") + f"; per seed {seeds}"


def _curve_table(d: StudyFile, cell, paper_column: bool) -> list[str]:
    """One row per task: ``cell(row)`` for aux-enc, ROI and the MSE codec (and the paper's)."""
    columns = ["aux-enc (ours)", "paper aux-enc"] if paper_column else ["aux-enc"]
    lines = [
        "| task | " + " | ".join([*columns, "ROI (QF 1.4)", "MSE codec"]) + " |",
        "|---" * (len(columns) + 3) + "|",
    ]
    for task, t in d.tasks.items():
        bd = t["bd_rate"]
        cells = [cell(bd.get("aux-enc"))]
        if paper_column:
            cells.append(f"{PAPERS.iino_bd_rate[task]:+.1f} %")
        cells += [cell(bd.get("roi")), cell(bd.get("mse"))]
        lines.append(f"| {task} ({t['metric']}) | " + " | ".join(cells) + " |")
    return lines


def _bd_rate_table(d: StudyFile) -> list[str]:
    return [
        f"Iino et al. on `{d.profile}` ({' and '.join(d.tasks)}: "
        f"{'complete' if d.complete else 'in progress'}, "
        f"{len(d.runs)} runs, {d.compute_hours_in_runs:.2f} h of compute in runs). "
        "BD-rate against the baseline (Eq. 4) on the task metric, mean ± 95 % CI over seeds:",
        "",
    ] + _curve_table(d, _bd_rate_cell, paper_column=True)


def _front_table(d: StudyFile) -> list[str]:
    return [
        "",
        "The same on the operational R-D fronts (a point matched or beaten in quality by "
        "a cheaper one is dropped; pchip interpolation). A different, noisier estimator: "
        "the fallback where a saturating metric leaves the strict BD-rate undefined.",
        "",
    ] + _curve_table(d, _front_cell, paper_column=False)


def _rd_point_table(d: StudyFile) -> list[str]:
    lines = [
        "",
        "R-D points (mean over the seeds done so far; bpp from real bytes):",
        "",
        "| task | curve | per λ: bpp / metric / PSNR |",
        "|---|---|---|",
    ]
    for task, t in d.tasks.items():
        for name, by_seed in _sorted_curves(d, task).items():
            pts = mean_curve(by_seed)
            cells = "; ".join(
                f"λ {p['lmbda']:g}: {p['bpp']:.3f} / {p[t['metric']]:.3f} / {p['psnr']:.1f} dB"
                for p in pts
            )
            lines.append(f"| {task} | {name} (n={len(by_seed)}) | {cells} |")
    return lines


def _undefined(d: StudyFile) -> list[str]:
    undefined = [
        f"{task} {name} seed {seed}: {v['error']}"
        for task, t in d.tasks.items()
        for name, row in t["bd_rate"].items()
        for seed, v in row["per_seed"].items()
        if v["bd_rate"] is None
    ]
    if not undefined:
        return []
    return ["", "BD-rates left undefined (and out of the means):", ""] + [
        f"* {u}" for u in undefined
    ]


def _ablation_table(d: AblationFile) -> list[str]:
    cfg = d.ablation_config
    lines = [
        "",
        f"Iino et al. section 4.2 on `{d.profile}` ({'complete' if d.complete else 'in progress'}"
        f": {len(d.runs)} runs, {d.compute_hours_in_runs:.2f} h): final validation main "
        f"loss (Eq. 4 / Eq. 6 without the branch term) by branch position, mean ± 95 % CI over "
        f"seeds; λ {cfg['det_lmbda']:g} (det) / {cfg['seg_lmbda']:g} (seg):",
        "",
        "| task | " + " | ".join(cfg["variants"]) + " | lowest (ours) | lowest (paper) |",
        "|---" * (len(cfg["variants"]) + 3) + "|",
    ]
    for task, t in d.tasks.items():
        cells = [
            fmt_mean_ci(t["variants"][v], 4, signed=False) if v in t["variants"] else "–"
            for v in cfg["variants"]
        ]
        lines.append(
            f"| {task} | "
            + " | ".join(cells)
            + f" | {t['order'][0]} | {PAPERS.iino_ablation_lowest} |"
        )
        paired = [
            fmt_mean_ci(t["variants"][v].get("vs_baseline", {}), 4)
            if v in t["variants"] and v != "baseline"
            else "–"
            for v in cfg["variants"]
        ]
        lines.append(f"| {task}: − baseline, same seed | " + " | ".join(paired) + " | | |")
    return lines


#: what a seed-002 summary holds besides the task metric
GAN_KEYS = ("bpp", "psnr", "ms_ssim", "checkerboard", "task_relative_change_percent")


def _gan_table(d: GanFile) -> list[str]:
    paper = f"{PAPERS.le_task_relative_change_percent:+.1f}".replace("-", "−")
    planned = len(d.seeds) * len(d.gan_config.get("presets") or d.summary)
    state = "" if len(d.runs) >= planned else f"in progress: {len(d.runs)} of {planned} runs, "
    lines = [
        "",
        f"Le et al. on `{d.profile}` ({state}seeds {d.seeds}, {d.compute_hours_in_runs:.2f} h "
        "in finetuning runs); before → after, mean over seeds:",
        "",
        "| preset | bpp | PSNR (dB) | MS-SSIM | checkerboard | task metric "
        f"| task change (paper {paper} %) |",
        "|---|---|---|---|---|---|---|",
    ]
    for preset, t in d.summary.items():
        metric = next(k for k in t if k not in GAN_KEYS)
        cells = [
            f"{t[k]['before']['mean']:.4g} → {t[k]['after']['mean']:.4g}"
            for k in (*GAN_KEYS[:4], metric)
        ]
        change = fmt_mean_ci(t["task_relative_change_percent"], 1, " %")
        lines.append(f"| {preset} | " + " | ".join(cells) + f" | {change} |")
    return lines


def main(argv: list[str] | None = None) -> str:
    """Print the tables (and write them into ``--readme`` between the markers)."""
    parser = argparse.ArgumentParser(
        prog="python -m icm_lib.report", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--profile",
        nargs="*",
        default=None,
        help="profiles to report (default: every profile with results files)",
    )
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--readme", default=None)
    args = parser.parse_args(argv)
    text = report(args.results_dir, args.profile)
    print(text)
    if args.readme:
        write_between_markers(Path(args.readme), text)
    return text


if __name__ == "__main__":
    from .cli import command_status

    raise SystemExit(command_status(main))
