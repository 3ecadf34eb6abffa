"""The resumable study of seed 001: R-D points of every (task, variant, λ, seed), BD-rates with
confidence intervals, written to ``results/``.

Every run is load-or-compute (a trained codec in its run folder, its evaluation in a JSON beside
it), so a stopped study resumes where it stopped, and notebooks 01-02 reuse the seed-0 runs::

    python -m icm_lib.study --profile cpu --seeds 0 1 2        # or: make study

Curves per task:

* ``mse``       the human-viewing reference (MSE codecs at ``icm.mse_lambdas``; seed 0 only);
* ``baseline``  Eq. 4 (task loss only);
* ``aux-enc``   Eq. 5 / 6 (the proposed auxiliary branch on ŷ);
* ``roi``       the baseline codecs coded with the ROI scaling of Ahonen et al. (detection only).

BD-rate is computed per seed against that seed's baseline curve on the task metric (mAP or mIoU),
then summarised as mean and 95 % Student-t interval over seeds.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path

import torch

from .evaluate import (POINT_KEYS, TASK_METRIC, bd_rate_or_reason, load_or_evaluate, mean_ci,
                       mean_curve, rd_point)
from .gan import PRESETS, load_or_finetune
from .profiles import Profile, get_profile
from .runtime import atomic_write_json
from .train import load_or_train_icm, prepare

#: the paper's average BD-rates of aux-enc against the baseline (seed 001 section 4.1)
PAPER_BD_RATE = {"det": -27.7, "seg": -20.3}


def val_set(datasets, task: str):
    return datasets.det_val if task == "det" else datasets.seg_val


def run_point(profile: Profile, task: str, variant: str, lmbda: float, seed: int, datasets,
              machines: dict, reference, cache_dir: Path, device: torch.device,
              progress: bool = True, eval_tasks: tuple[str, ...] | None = None,
              roi: bool = False, steps: int | None = None) -> dict:
    """Train (or load) one codec and evaluate it (or load its evaluation).

    Args:
        eval_tasks: tasks whose val sets score the codec (default: ``task`` only; the MSE
            reference is scored on both).
        roi: also evaluate the ROI baseline (QF ``profile.icm.roi_qf``) with this codec.
        steps: override the profile's step count (a quick look; it is another run).

    Returns:
        ``{"task", "variant", "lmbda", "seed", "train_seconds", "log", "eval": {task: point},
        "roi": {task: point}}``.
    """
    codec, log, run_dir = load_or_train_icm(profile, task, variant, lmbda, seed, datasets,
                                            machines.get(task), reference, cache_dir, device,
                                            progress, steps=steps)
    result = {"task": task, "variant": variant, "lmbda": lmbda, "seed": seed,
              "run_dir": str(run_dir), "train_seconds": log[-1]["seconds"] if log else 0.0,
              "log": log, "eval": {}, "roi": {}}
    for t in eval_tasks or (task,):
        result["eval"][t] = load_or_evaluate(
            run_dir / f"eval-{t}.json",
            lambda: rd_point(codec, t, machines[t], val_set(datasets, t), device), POINT_KEYS)
        if roi and t == "det":
            qf = profile.icm.roi_qf
            result["roi"][t] = load_or_evaluate(
                run_dir / f"eval-{t}-roi-qf{qf:g}.json",
                lambda: rd_point(codec, t, machines[t], val_set(datasets, t), device, roi_qf=qf),
                POINT_KEYS)
    result["codec"] = codec
    return result


def curves(runs: list[dict], task: str) -> dict[str, dict[int, list[dict]]]:
    """``{curve name: {seed: [R-D points sorted by λ]}}`` for one task from :func:`run_point`
    results (the ROI curve comes from the baseline runs' ROI evaluations)."""
    out: dict[str, dict[int, list[dict]]] = {}
    for r in sorted(runs, key=lambda r: r["lmbda"]):
        if task in r["eval"] and (r["task"] == task or r["variant"] == "mse"):
            point = {**r["eval"][task], "lmbda": r["lmbda"]}
            out.setdefault(r["variant"], {}).setdefault(r["seed"], []).append(point)
        if task in r["roi"] and r["task"] == task:
            out.setdefault("roi", {}).setdefault(r["seed"], []).append(
                {**r["roi"][task], "lmbda": r["lmbda"]})
    return out


def bd_rates(task_curves: dict[str, dict[int, list[dict]]], task: str) -> dict[str, dict]:
    """Per-seed BD-rates of every curve against the same seed's baseline (the seed-0 MSE curve
    is compared with every seed's baseline), with their mean and 95 % interval. ``front`` holds
    the same on the operational R-D fronts (dominated points dropped, pchip): the fallback
    estimate where a saturating metric leaves the strict BD-rate undefined."""
    metric = TASK_METRIC[task]
    anchors = task_curves.get("baseline", {})
    table = {}
    for name, by_seed in task_curves.items():
        if name == "baseline":
            continue
        pairs = {seed: (anchor, by_seed.get(seed, by_seed.get(0)) if name == "mse"
                        else by_seed.get(seed)) for seed, anchor in anchors.items()}
        pairs = {seed: pair for seed, pair in pairs.items() if pair[1]}
        per_seed = {seed: bd_rate_or_reason(a, t, metric) for seed, (a, t) in pairs.items()}
        on_front = {seed: bd_rate_or_reason(a, t, metric, front=True)
                    for seed, (a, t) in pairs.items()}
        table[name] = {"per_seed": per_seed,
                       **mean_ci([v["bd_rate"] for v in per_seed.values()]),
                       # the seed-averaged curves: less noisy, defined more often
                       "of_mean_curves": bd_rate_or_reason(mean_curve(anchors), mean_curve(by_seed),
                                                           metric) if anchors else None,
                       "front": {"per_seed": on_front,
                                 **mean_ci([v["bd_rate"] for v in on_front.values()])}}
    return table


def iter_grid(profile: Profile, seeds: list[int], tasks: list[str], variants: list[str],
              datasets, machines: dict, reference, cache_dir: Path, device: torch.device,
              progress: bool = True, reference_curve: bool = True, mse_seed: int = 0,
              steps: int | None = None):
    """Train-or-load and evaluate the grid, yielding each :func:`run_point` result in turn: the
    MSE reference curve (``mse_seed``, scored on every task) first, then per seed, task, variant
    and λ (with the ROI evaluation of the detection baselines). The study and notebooks 01-02
    walk the same grid, so they share their runs."""
    if reference_curve:
        for lmbda in profile.icm.mse_lambdas:
            yield run_point(profile, "det", "mse", lmbda, mse_seed, datasets, machines, reference,
                            cache_dir, device, progress, eval_tasks=tuple(tasks), steps=steps)
    for seed in seeds:
        for task in tasks:
            for variant in variants:
                for lmbda in profile.icm.lambdas(task):
                    yield run_point(profile, task, variant, lmbda, seed, datasets, machines,
                                    reference, cache_dir, device, progress,
                                    roi=(variant == "baseline" and task == "det"), steps=steps)


def run_study(profile: Profile, seeds: list[int], tasks: list[str], variants: list[str],
              data_dir: str | Path, results_dir: str | Path, device: torch.device,
              progress: bool = True, reference_curve: bool = True) -> dict:
    """Run (or resume) the whole grid and write ``results/study-<profile>.json`` after every run
    and the R-D figure at the end. Returns the summary."""
    from . import plots

    t_start = time.perf_counter()
    datasets, machines, reference, cache_dir = prepare(profile, data_dir, device, progress)
    results_dir = Path(results_dir)
    out_json = results_dir / f"study-{profile.name}.json"
    runs: list[dict] = []

    def write(done: bool) -> dict:
        summary = summarise(profile, runs, tasks, seeds, variants, done,
                            time.perf_counter() - t_start)
        atomic_write_json(out_json, summary)
        return summary

    for r in iter_grid(profile, seeds, tasks, variants, datasets, machines, reference, cache_dir,
                       device, progress, reference_curve):
        runs.append({k: v for k, v in r.items() if k != "codec"})  # weights stay on disk
        write(False)
    summary = write(True)
    for task in tasks:
        fig = plots.rd_curves(curves(runs, task), TASK_METRIC[task],
                              title=f"{task}: R-D on the {profile.name} profile ({len(seeds)} seeds)")
        plots.save(fig, results_dir, f"study-{profile.name}-{task}-rd")
    return summary


def summarise(profile: Profile, runs: list[dict], tasks: list[str], seeds: list[int],
              variants: list[str], done: bool, wall_seconds: float) -> dict:
    """The study's JSON: every R-D point, BD-rate tables and the compute spent."""
    per_task = {}
    for task in tasks:
        c = curves(runs, task)
        per_task[task] = {"metric": TASK_METRIC[task], "curves": c, "bd_rate": bd_rates(c, task),
                          "paper_bd_rate_aux_enc": PAPER_BD_RATE[task]}
    compute = sum(r["train_seconds"] for r in runs) + sum(
        p.get("seconds", 0.0) for r in runs for p in [*r["eval"].values(), *r["roi"].values()])
    return {"profile": profile.name, "complete": done, "seeds": seeds, "variants": variants,
            "runs": len(runs), "compute_hours_in_runs": round(compute / 3600, 3),
            "wall_hours_this_invocation": round(wall_seconds / 3600, 3),
            "icm_config": asdict(profile.icm), "tasks": per_task}


# ---------------------------------------------------------------------- seed 002
#: seed 002's headline: relative change of the task score after PatchGAN finetuning
PAPER_GAN_TASK_CHANGE = -1.6


def gan_point(profile: Profile, seed: int, preset: str, datasets, machines: dict, reference,
              cache_dir: Path, device: torch.device, progress: bool = True) -> dict:
    """Before/after of one decoder-only PatchGAN finetuning (seed 002): the seed's baseline
    codec of ``profile.gan.task`` at ``profile.gan.lmbda`` (trained if missing), finetuned with
    ``preset``; both evaluated through real bitstreams (with the checkerboard score)."""
    task = profile.gan.task
    lmbda = profile.gan.lmbda or min(profile.icm.lambdas(task))
    base = run_point(profile, task, "baseline", lmbda, seed, datasets, machines, reference,
                     cache_dir, device, progress)
    train_set = datasets.det_train if task == "det" else datasets.seg_train
    tuned, log, run_dir = load_or_finetune(base["codec"], machines[task], train_set, profile.gan,
                                           preset, seed, cache_dir, device, progress)
    after = load_or_evaluate(
        run_dir / f"eval-{task}.json",
        lambda: rd_point(tuned, task, machines[task], val_set(datasets, task), device), POINT_KEYS)
    return {"task": task, "lmbda": lmbda, "seed": seed, "preset": preset,
            "before": base["eval"][task],
            "after": after, "log": log, "run_dir": str(run_dir), "codec": tuned,
            "base_codec": base["codec"], "train_seconds": log[-1]["seconds"] if log else 0.0}


def summarise_gan(rows: list[dict]) -> dict:
    """Mean and 95 % interval over seeds of before, after and the change, per preset."""
    out = {}
    for preset in sorted({r["preset"] for r in rows}):
        rs = [r for r in rows if r["preset"] == preset]
        metric = TASK_METRIC[rs[0]["task"]]
        table = {}
        for key in ("bpp", "psnr", "ms_ssim", "checkerboard", metric):
            table[key] = {"before": mean_ci([r["before"][key] for r in rs]),
                          "after": mean_ci([r["after"][key] for r in rs]),
                          "change": mean_ci([r["after"][key] - r["before"][key] for r in rs])}
        table["task_relative_change_percent"] = mean_ci(
            [100 * (r["after"][metric] / r["before"][metric] - 1) for r in rs
             if r["before"][metric] > 0])
        out[preset] = table
    return out


def run_gan_study(profile: Profile, seeds: list[int], data_dir: str | Path,
                  results_dir: str | Path, device: torch.device, progress: bool = True) -> dict:
    """Both presets over ``seeds``; writes ``results/gan-<profile>.json`` after every run."""
    t_start = time.perf_counter()
    datasets, machines, reference, cache_dir = prepare(profile, data_dir, device, progress)
    rows = []
    out_json = Path(results_dir) / f"gan-{profile.name}.json"
    summary: dict = {}
    for seed in seeds:
        for preset in PRESETS:
            r = gan_point(profile, seed, preset, datasets, machines, reference, cache_dir, device,
                          progress)
            rows.append({k: v for k, v in r.items() if k not in ("codec", "base_codec")})
            summary = {"profile": profile.name, "seeds": seeds, "rows": rows,
                       "summary": summarise_gan(rows), "gan_config": asdict(profile.gan),
                       "paper_task_relative_change_percent": PAPER_GAN_TASK_CHANGE,
                       "compute_hours_in_runs": round(sum(x["train_seconds"] for x in rows) / 3600, 3),
                       "wall_hours_this_invocation": round((time.perf_counter() - t_start) / 3600, 3)}
            atomic_write_json(out_json, summary)
    return summary


def _fmt(row: dict, digits: int = 1, unit: str = "") -> str:
    if not row or row.get("n", 0) == 0:
        return "–"
    ci = f" ± {row['ci95']:.{digits}f}" if row["n"] > 1 else ""
    return f"{row['mean']:+.{digits}f}{unit}{ci} (n={row['n']})"


START, END = "<!-- study-report:start -->", "<!-- study-report:end -->"


def _replace_between_markers(path: Path, text: str) -> None:
    doc = path.read_text()
    if START not in doc or END not in doc:
        raise ValueError(f"{path} has no {START} ... {END} markers")
    head, rest = doc.split(START, 1)
    tail = rest.split(END, 1)[1]
    from .runtime import atomic_write_bytes

    atomic_write_bytes(path, (head + START + "\n" + text + "\n" + END + tail).encode())


def report(results_dir: str | Path, profile_name: str) -> str:
    """Markdown tables for the README, generated from the study JSON files (never typed in)."""
    import json

    lines = []
    aux = Path(results_dir) / f"study-{profile_name}.json"
    if aux.is_file():
        d = json.loads(aux.read_text())
        lines += [f"Seed 001 on `{d['profile']}` ({'complete' if d['complete'] else 'in progress'}: "
                  f"{d['runs']} runs, {d['compute_hours_in_runs']:.2f} h of compute in runs). "
                  "BD-rate against the baseline (Eq. 4) on the task metric, mean ± 95 % CI over seeds:",
                  "", "| task | aux-enc (ours) | paper aux-enc | ROI (QF 1.4) | MSE codec |",
                  "|---|---|---|---|---|"]

        def cell(row):
            if not row:
                return "–"
            mean = row.get("of_mean_curves") or {}
            of_mean = (f"; of the mean curves {mean['bd_rate']:+.1f} %"
                       if mean.get("bd_rate") is not None else "")
            return _fmt(row, 1, " %") + of_mean

        for task, t in d["tasks"].items():
            bd = t["bd_rate"]
            lines.append(f"| {task} ({t['metric']}) | {cell(bd.get('aux-enc'))} | "
                         f"{t['paper_bd_rate_aux_enc']:+.1f} % | {cell(bd.get('roi'))} | "
                         f"{cell(bd.get('mse'))} |")

        def front_cell(row):
            row = (row or {}).get("front")
            if not row or row.get("n", 0) == 0:
                return "–"
            seeds = ", ".join(f"{v['bd_rate']:+.1f}" for v in row["per_seed"].values()
                              if v["bd_rate"] is not None)
            return _fmt(row, 1, " %") + f"; per seed {seeds}"

        lines += ["", "The same on the operational R-D fronts (a point matched or beaten in quality by "
                  "a cheaper one is dropped; pchip interpolation). A different, noisier estimator: "
                  "the fallback where a saturating metric leaves the strict BD-rate undefined.", "",
                  "| task | aux-enc | ROI (QF 1.4) | MSE codec |", "|---|---|---|---|"]
        for task, t in d["tasks"].items():
            bd = t["bd_rate"]
            lines.append(f"| {task} ({t['metric']}) | {front_cell(bd.get('aux-enc'))} | "
                         f"{front_cell(bd.get('roi'))} | {front_cell(bd.get('mse'))} |")
        lines += ["", "R-D points (mean over the seeds done so far; bpp from real bytes):", "",
                  "| task | curve | per λ: bpp / metric / PSNR |", "|---|---|---|"]
        for task, t in d["tasks"].items():
            for name, by_seed in t["curves"].items():
                pts = mean_curve({int(k): v for k, v in by_seed.items()})
                cells = "; ".join(f"λ {p['lmbda']:g}: {p['bpp']:.3f} / {p[t['metric']]:.3f} / "
                                  f"{p['psnr']:.1f} dB" for p in pts)
                lines.append(f"| {task} | {name} (n={len(by_seed)}) | {cells} |")
        undefined = [f"{task} {name} seed {seed}: {v['error']}" for task, t in d["tasks"].items()
                     for name, row in t["bd_rate"].items()
                     for seed, v in row["per_seed"].items() if v["bd_rate"] is None]
        if undefined:
            lines += ["", "BD-rates left undefined (and out of the means):", ""]
            lines += [f"* {u}" for u in undefined]
    gan = Path(results_dir) / f"gan-{profile_name}.json"
    if gan.is_file():
        d = json.loads(gan.read_text())
        lines += ["", f"Seed 002 on `{d['profile']}` (seeds {d['seeds']}, "
                  f"{d['compute_hours_in_runs']:.2f} h in finetuning runs); before → after, mean over seeds:",
                  "", "| preset | bpp | PSNR (dB) | MS-SSIM | checkerboard | task metric | task change (paper −1.6 %) |",
                  "|---|---|---|---|---|---|---|"]
        for preset, t in d["summary"].items():
            metric = next(k for k in t if k not in ("bpp", "psnr", "ms_ssim", "checkerboard",
                                                     "task_relative_change_percent"))
            cells = [f"{t[k]['before']['mean']:.4g} → {t[k]['after']['mean']:.4g}"
                     for k in ("bpp", "psnr", "ms_ssim", "checkerboard", metric)]
            lines.append(f"| {preset} | " + " | ".join(cells) + " | "
                         + _fmt(t["task_relative_change_percent"], 1, " %") + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    """``python -m icm_lib.study --profile cpu --seeds 0 1 2`` (see ``--help``)."""
    parser = argparse.ArgumentParser(prog="python -m icm_lib.study", description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--study", choices=["aux", "gan"], default="aux",
                        help="aux: seed 001 (R-D, BD-rate); gan: seed 002 (PatchGAN finetuning)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tasks", nargs="+", default=["det", "seg"], choices=["det", "seg"])
    parser.add_argument("--variants", nargs="+", default=["baseline", "aux-enc"],
                        choices=["baseline", "aux-enc", "aux-dec"])
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--device", default="")
    parser.add_argument("--no-reference-curve", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--report", action="store_true",
                        help="print the README's markdown tables from results/ and exit")
    parser.add_argument("--readme", default=None,
                        help="with --report: also write the tables into this file between the "
                             "<!-- study-report:start/end --> markers")
    args = parser.parse_args(argv)
    from .runtime import get_device

    if args.report:
        text = report(args.results_dir, args.profile)
        print(text)
        if args.readme:
            _replace_between_markers(Path(args.readme), text)
        return {"report": text}
    if args.study == "gan":
        summary = run_gan_study(get_profile(args.profile), args.seeds, args.data_dir,
                                args.results_dir, get_device(args.device or None),
                                not args.no_progress)
        for preset, t in summary["summary"].items():
            print(f"{preset}: " + ", ".join(f"{k} {v['before']['mean']:.4g} → {v['after']['mean']:.4g}"
                                            for k, v in t.items() if "before" in v))
        return summary
    summary = run_study(get_profile(args.profile), args.seeds, args.tasks, args.variants,
                        args.data_dir, args.results_dir, get_device(args.device or None),
                        not args.no_progress, not args.no_reference_curve)
    for task, t in summary["tasks"].items():
        for name, row in t["bd_rate"].items():
            print(f"{task} {name:9s} BD-rate {_fmt(row, 1, ' %')}; on the operational fronts "
                  f"{_fmt(row.get('front'), 1, ' %')} (paper aux-enc {t['paper_bd_rate_aux_enc']:+.1f} %)")
    return summary


if __name__ == "__main__":
    main()
