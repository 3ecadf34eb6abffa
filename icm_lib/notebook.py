"""The one setup every notebook runs after its ``parameters`` cell."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .files import atomic_write_json
from .profiles import Profile, get_profile, parse_overrides
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


def setup(
    profile: str, seed: int, data_dir: str, output_dir: str, device: str = "", **overrides
) -> Setup:
    """Seed, choose the device, resolve paths (``ICM_DATA_DIR`` / ``ICM_OUTPUT_DIR`` override the
    parameters, ``ICM_PROFILE`` the profile and ``ICM_OVERRIDES`` its fields, e.g.
    ``recognition__det_backend=detectron2``: how a notebook opened in JupyterLab or run by
    ``make tutorial`` is pointed at other data or models without editing it), load the
    profile."""
    overrides = {**parse_overrides(os.environ.get("ICM_OVERRIDES", "")), **overrides}
    prof = get_profile(os.environ.get("ICM_PROFILE") or profile, **overrides)
    data = env_path("ICM_DATA_DIR", data_dir)
    out = env_path("ICM_OUTPUT_DIR", output_dir)
    out.mkdir(parents=True, exist_ok=True)
    data.mkdir(parents=True, exist_ok=True)
    seed_everything(seed)
    return Setup(prof, get_device(device or None), data, out, data / "cache", seed)


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


def show_gradients(results_dir: str | Path, profiles: list[str] | tuple[str, ...]) -> dict:
    """The mechanism behind Iino et al.'s premise, per world: from
    ``results/gradients-<profile>.json`` (``python -m icm_lib.gradients``), per task the mean over
    batches of the branch's and the task loss's gradient norms on g_a, their ratio and cosine, at
    the start of training and on the trained aux-enc run. A world without the file says the
    command that measures it.

    Returns:
        ``{profile: {task: {state: {stat: mean}}} or None}`` for :meth:`Setup.record`.
    """
    from .results import REGENERATE, GradientsFile

    def mean(values):
        finite = [v for v in values if v is not None]
        return sum(finite) / len(finite) if finite else None

    out: dict = {}
    for name in profiles:
        f = GradientsFile.find(results_dir, name)
        if f is None:
            print(
                f"profile {name}: not measured yet: `{REGENERATE['gradients'].format(profile=name)}`"
            )
            out[name] = None
            continue
        out[name] = {}
        for task, entry in f.tasks.items():
            states = {s: entry[s] for s in ("at_start", "trained") if entry.get(s)}
            out[name][task] = {
                s: {k: mean(v) for k, v in stats.items()} for s, stats in states.items()
            }
            for s, m in out[name][task].items():
                ratio = "—" if m["ratio"] is None else f"{m['ratio']:.3g}"
                cosine = "—" if m["cosine"] is None else f"{m['cosine']:+.3f}"
                print(
                    f"profile {name}, {task} λ={entry['lmbda']:g}, {s.replace('_', ' ')}: "
                    f"‖g_branch‖/‖g_task‖ = {ratio}, cosine {cosine} "
                    f"(mean of {entry['batches']['count']} batches)"
                )
            if entry.get("trained_note"):
                print(f"profile {name}, {task}: {entry['trained_note']}")
    return out
