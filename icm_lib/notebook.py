"""The one setup every notebook runs after its ``parameters`` cell, and the records the
notebooks write for their tests (one call each, not a dict built by hand in a notebook)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .evaluate import bd_rates, curves, study_agreement, summary_point
from .files import atomic_write_json
from .profiles import Profile, for_device, get_profile, parse_overrides
from .runtime import env_path, get_device, seed_everything


@dataclass
class Setup:
    profile: Profile
    device: torch.device
    data_dir: Path
    output_dir: Path
    cache_dir: Path
    seed: int

    def record(self, metrics: dict, name: str = "metrics.json") -> Path:
        """Write the notebook's key numbers (what its tests assert on) to ``output_dir``."""
        payload = {
            "profile": self.profile.name,
            "seed": self.seed,
            "device": str(self.device),
            **metrics,
        }
        return atomic_write_json(self.output_dir / name, payload)


@dataclass
class CurveComparison:
    """One task's R-D comparison as notebooks 01 and 02 show it (:func:`compare_curves`).

    Attributes:
        source: where the drawn curves come from (the study's file, or this notebook's seed).
        curves: the curves to draw (name → seed → points).
        trained: the points trained in this session (name → points), drawn on top.
        bd: BD-rate rows against the baseline (name → row).
        agreement: this session's runs against the study's points of the same run key.
    """

    source: str
    curves: dict
    trained: dict
    bd: dict
    agreement: list
    seed: int | None = None

    def show(self, task: str, title: str, output_dir: str | Path) -> None:
        """Draw the curves (``rd_<task>.png`` in ``output_dir``) and print the BD-rates and the
        agreement rows."""
        from . import plots
        from .report import fmt_agreement, fmt_bd_rate
        from .tasks import get_task

        metric = get_task(task).metric
        fig = plots.rd_curves(
            self.curves, metric, title=f"{title} — {self.source}", trained=self.trained
        )
        plots.save(fig, output_dir, f"rd_{task}")
        for name, row in self.bd.items():
            print(f"{task}: BD-rate of {name} vs baseline ({self.source}): "
                  f"{fmt_bd_rate(row, self.seed)}")  # fmt: skip
        for row in self.agreement:
            print(f"{task} {fmt_agreement(row, metric)}")


def compare_curves(
    runs: list[dict],
    task: str,
    study: dict | None,
    seed: int,
    hide_bd: tuple[str, ...] = (),
    hide_trained: tuple[str, ...] = (),
) -> CurveComparison:
    """The R-D curves of ``task`` from the study's file when there is one (``study``:
    :func:`~icm_lib.report.recorded_study`), else from this session's ``runs`` of ``seed``, with
    their BD-rates and the agreement of the runs trained here with the study's; ``hide_bd`` /
    ``hide_trained``: curves a notebook leaves to another one."""
    own = curves(runs, task)
    trained = {
        name: [p for pts in by_seed.values() for p in pts]
        for name, by_seed in own.items()
        if name not in hide_trained
    }
    if study:
        source, drawn, bd = study["source"], study["curves"][task], study["bd_rate"][task]
        agreement, shown = study_agreement(runs, study["curves"], task), None
    else:
        source, drawn, bd, agreement = f"this notebook (seed {seed})", own, bd_rates(own, task), []
        shown = seed
    bd = {k: v for k, v in bd.items() if k not in hide_bd}
    return CurveComparison(source, drawn, trained, bd, agreement, shown)


def curve_record(
    task: str,
    points: dict[str, list[dict]],
    runs: list[dict],
    bd: dict,
    seed: int,
    agreement: list[dict] | tuple = (),
) -> dict:
    """What notebooks 01 and 02 record of one task's R-D curves.

    Args:
        task: ``det`` / ``seg``.
        points: curve name → its R-D points (plain, ordered by λ), e.g. ``baseline``, ``roi``.
        runs: the run records (plain) whose λ, losses, steps and time are recorded.
        bd: BD-rate rows of this task (:func:`~icm_lib.evaluate.bd_rates` or the study's).
        seed: the seed whose BD-rates are recorded (``per_seed``).
        agreement: rows of :func:`~icm_lib.evaluate.study_agreement`.
    """
    from .tasks import get_task

    return {
        "metric": get_task(task).metric,
        "lambdas": [r["lmbda"] for r in runs],
        **{name: [summary_point(p, task) for p in pts] for name, pts in points.items()},
        "first_loss": [r["log"][0]["loss"] for r in runs],
        "last_loss": [r["log"][-1]["loss"] for r in runs],
        "steps": [r["log"][-1]["step"] for r in runs],
        "train_seconds": [r["train_seconds"] for r in runs],
        "bd_rate": {k: v["per_seed"].get(seed) for k, v in bd.items()},
        "bd_rate_front": {k: v["front"]["per_seed"].get(seed) for k, v in bd.items()},
        "study_agreement": list(agreement),
    }


def setup(
    profile: str, seed: int, data_dir: str, output_dir: str, device: str = "", **overrides
) -> Setup:
    """Seed, choose the device, resolve paths (``ICM_DATA_DIR`` / ``ICM_OUTPUT_DIR`` override the
    parameters, ``ICM_PROFILE`` the profile and ``ICM_OVERRIDES`` its fields, e.g.
    ``recognition__det_backend=detectron2``: how a notebook opened in JupyterLab or run by
    ``make tutorial`` is pointed at other data or models without editing it), load the
    profile as it trains on that device (:func:`~icm_lib.profiles.for_device`)."""
    overrides = {**parse_overrides(os.environ.get("ICM_OVERRIDES", "")), **overrides}
    prof = get_profile(os.environ.get("ICM_PROFILE") or profile, **overrides)
    data = env_path("ICM_DATA_DIR", data_dir)
    out = env_path("ICM_OUTPUT_DIR", output_dir)
    out.mkdir(parents=True, exist_ok=True)
    data.mkdir(parents=True, exist_ok=True)
    seed_everything(seed)
    chosen = get_device(device or None)
    return Setup(for_device(prof, chosen), chosen, data, out, data / "cache", seed)


def show_claims(
    results_dir: str | Path,
    profiles: list[str] | tuple[str, ...],
    prefixes: tuple[str, ...],
    output_dir: str | Path | None = None,
    n_boot: int = 2000,
) -> dict[str, list[dict]]:
    """The recorded claims of this notebook, per world: for each profile in ``profiles`` (e.g.
    the control world ``cpu`` and the world where bits compete ``cpu-patterns``) the claims of
    ``results/analysis-plan.json`` whose names start with one of ``prefixes``, as a verdict table
    and a forest plot (saved as ``claims-<profile>-<prefix>.png`` in ``output_dir``). A profile
    without its files says the command that makes them.

    Returns:
        ``{profile: [{"name", "estimate", "lo", "hi", "verdict", "per_seed"}, ...]}`` for
        :meth:`Setup.record`.
    """
    import matplotlib.pyplot as plt
    from IPython.display import Markdown, display

    from . import plots
    from .claims import paper_values, recorded_claims, stale_files, table
    from .results import REGENERATE

    out: dict[str, list[dict]] = {}
    if not (Path(results_dir) / "analysis-plan.json").is_file():
        print(
            f"no analysis plan in {results_dir}: the claims are tested as "
            "results/analysis-plan.json declares them (restore it from git to see them)"
        )
        return {name: [] for name in profiles}
    for name in profiles:
        world = get_profile(name).data.world
        rows = [
            c for c in recorded_claims(results_dir, name, n_boot) if c.name.startswith(prefixes)
        ]
        out[name] = [
            {
                "name": c.name,
                "estimate": c.interval["estimate"],
                "lo": c.interval["lo"],
                "hi": c.interval["hi"],
                "verdict": c.verdict["verdict"],
                "per_seed": {str(s): v for s, v in c.per_seed.items()},
            }
            for c in rows
        ]
        if not rows:
            print(
                f"profile {name} ({world} world): no recorded runs for {', '.join(prefixes)} yet; "
                f"`{REGENERATE['study'].format(profile=name)}` (and `--study ablation` / "
                "`--study gan`) records them"
            )
            continue
        stale = stale_files(results_dir, name)
        note = (
            f"\n\n> {', '.join(stale)}: numbers of older code; the method, not a result."
            if stale
            else ""
        )
        display(Markdown(f"**Profile `{name}`, {world} world**{note}\n\n{table(rows)}"))
        fig = plots.forest(rows, paper_values(rows), f"{name} ({world} world)")
        if output_dir is not None:
            stem = f"claims-{name}-{prefixes[0]}"
            fig.savefig(Path(output_dir) / f"{stem}.png", dpi=110, bbox_inches="tight")
        plt.show()
    return out


def show_along_curve(
    results_dir: str | Path,
    profiles: list[str] | tuple[str, ...],
    output_dir: str | Path | None = None,
) -> dict:
    """Along the baseline's curve or off it, per world: each recorded aux-enc run of
    ``results/study-<profile>.json`` against the same seed's baseline
    (:func:`~icm_lib.claims.along_or_off`), a panel per task (:func:`~icm_lib.plots.along_or_off`,
    saved as ``along-<profile>.png`` in ``output_dir``) and a line of means per task. A world
    without its study file says the command that makes it.

    Returns:
        ``{profile: {task: {"runs", "inside", "bits_change", "metric_change", "offset",
        "paper_offset"}} or None}`` (means over the runs where each is defined).
    """
    import matplotlib.pyplot as plt

    from . import plots
    from .claims import along_or_off, read_plan
    from .results import PAPERS, StudyFile
    from .tasks import get_task

    plan = Path(results_dir) / "analysis-plan.json"
    margins = read_plan(plan)["margins"] if plan.is_file() else {}
    out: dict = {}
    for name in profiles:
        study = _measured(StudyFile, results_dir, name)
        out[name] = None if study is None else {}
        if study is None:
            continue
        panels = {}
        for task in study.tasks:
            rows = along_or_off(study, task)
            if not rows:
                continue
            metric = get_task(task).metric
            means = {
                k: _mean([r[k] for r in rows])
                for k in ("bits_change", "metric_change", "offset", "paper_offset")
            }
            inside = sum(r["offset"] is not None for r in rows)
            out[name][task] = {"runs": len(rows), "inside": inside, **means}
            print(
                f"profile {name}, {task}: aux-enc spends {_num(means['bits_change'], '+.1f')} % "
                f"bits at the same λ for {_num(means['metric_change'], '+.4f')} {metric}; at "
                f"equal rate it sits {_num(means['offset'], '+.4f')} above the baseline's curve "
                f"({inside} of {len(rows)} runs inside its rates), where a curve "
                f"{-PAPERS.iino_bd_rate[task]:.1f} % cheaper (the paper's) would sit "
                f"{_num(means['paper_offset'], '+.4f')}"
            )
            panels[f"{task} ({metric})"] = (rows, margins.get(f"delta_{metric}_equal_rate"))
        if panels:
            world = get_profile(name).data.world
            fig = plots.along_or_off(panels, f"{name} ({world} world): aux-enc against baseline")
            if output_dir is not None:
                fig.savefig(Path(output_dir) / f"along-{name}.png", dpi=110, bbox_inches="tight")
            plt.show()
    return out


def show_gradients(results_dir: str | Path, profiles: list[str] | tuple[str, ...]) -> dict:
    """The mechanism behind Iino et al.'s premise, per world: from
    ``results/gradients-<profile>.json`` (``python -m icm_lib.gradients``), per task the mean over
    batches of the branch's and the task loss's gradient norms on g_a, their ratio and cosine, at
    the start of training and on the trained aux-enc run. A world without the file says the
    command that measures it.

    Returns:
        ``{profile: {task: {state: {stat: mean}}} or None}`` for :meth:`Setup.record`.
    """
    from .results import GradientsFile

    out: dict = {}
    for name in profiles:
        f = _measured(GradientsFile, results_dir, name)
        out[name] = None if f is None else {}
        if f is None:
            continue
        other = _other_settings(f.icm_config, name)
        if other:
            print(f"profile {name}: measured with other codec-training settings ({other})")
        for task, entry in f.tasks.items():
            states = {s: entry[s] for s in ("at_start", "trained") if entry.get(s)}
            out[name][task] = {
                s: {k: _mean(v) for k, v in stats.items()} for s, stats in states.items()
            }
            for s, m in out[name][task].items():
                print(
                    f"profile {name}, {task} λ={entry['lmbda']:g}, {s.replace('_', ' ')}: "
                    f"‖g_branch‖/‖g_task‖ = {_num(m['ratio'], '.3g')}, "
                    f"cosine {_num(m['cosine'], '+.3f')} "
                    f"(mean of {entry['batches']['count']} batches)"
                )
            if entry.get("trained_note"):
                print(f"profile {name}, {task}: {entry['trained_note']}")
    return out


def show_depth(results_dir: str | Path, profiles: list[str] | tuple[str, ...]) -> dict:
    """The premise against the recognizer's depth, per world: from ``results/depth-<profile>.json``
    (``python -m icm_lib.gradients --depth``), per task and backbone the recognizer's parameters
    and val metric, and the mean over batches of ‖g_branch‖ / ‖g_task‖ on g_a and their cosine
    at the start of training. A world without the file says the command that measures it.

    Returns:
        ``{profile: {task: [{"backbone", "params", "metric", "ratio", "cosine"}, ...]} or
        None}``, the backbones in the order measured (a list: a record keeps it).
    """
    from .results import DepthFile
    from .tasks import get_task

    out: dict = {}
    for name in profiles:
        f = _measured(DepthFile, results_dir, name)
        out[name] = None if f is None else {}
        if f is None:
            continue
        for task, entry in f.tasks.items():
            metric = get_task(task).metric
            rows = out[name][task] = []
            print(f"profile {name}, {task} λ={entry['lmbda']:g}, at the start of training "
                  f"(mean of {entry['batches']['count']} batches):")  # fmt: skip
            print(f"  {'backbone':<10}{'params':>10}{metric:>8}{'‖g_branch‖/‖g_task‖':>22}"
                  f"{'cosine':>9}")  # fmt: skip
            for row in entry["backbones"]:
                backbone, start = row["backbone"], row["at_start"]
                r = {
                    "backbone": backbone,
                    "params": row["recognizer"]["params"],
                    "metric": row["recognizer"]["val"].get(metric),
                    "ratio": _mean(start["ratio"]),
                    "cosine": _mean(start["cosine"]),
                }
                rows.append(r)
                print(
                    f"  {backbone:<10}{r['params'] / 1e6:>9.1f}M{_num(r['metric'], '.3f'):>8}"
                    f"{_num(r['ratio'], '.3g'):>22}{_num(r['cosine'], '+.3f'):>9}"
                )
    return out


def _measured(cls, results_dir: str | Path, name: str):
    """The profile's measurement file of kind ``cls`` (a results file class), or ``None`` after
    printing the command that measures it."""
    from .results import REGENERATE

    f = cls.find(results_dir, name)
    if f is None:
        print(f"profile {name}: not measured yet: `{REGENERATE[cls.KIND].format(profile=name)}`")
    return f


def _other_settings(recorded: dict, name: str) -> str:
    """Where a measurement's recorded ``icm_config`` differs from profile ``name``'s own (e.g.
    measured in bfloat16 with ``--overrides``): ``"field=value, ..."``; ``""`` where it does
    not, where nothing was recorded, or where ``name`` is no profile of this library."""
    from .profiles import PROFILES
    from .results import as_json

    if not recorded or name not in PROFILES:
        return ""
    own = as_json(PROFILES[name].icm.recorded())
    keys = sorted(set(recorded) | set(own))
    return ", ".join(f"{k}={recorded.get(k)!r}" for k in keys if recorded.get(k) != own.get(k))


def _mean(values) -> float | None:
    """The mean of the values that are not ``None`` (a non-finite batch), or ``None``."""
    finite = [v for v in values if v is not None]
    return sum(finite) / len(finite) if finite else None


def _num(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)
