"""Every results file, typed: the records, their names, reading and writing, the papers' numbers.

This module is the only code that reads or writes ``results/*.json`` and the per-run evaluation
files (``eval-<task>*.json`` in a run folder). Each is a dataclass that knows its JSON form::

    RDPoint      one codec scored on one task's val set: bpp, the task metric (mAP / mIoU), PSNR,
                 MS-SSIM, ... and, per image, its id, bits and metric contribution (ImageRecords)
    RunRecord    one training run: its key (run folder), task, variant, λ, seed, steps, seconds,
                 training log, validation curve, and its RDPoints
    GanRecord    one PatchGAN finetuning (Le et al.): the R-D point before and after
    StudyFile    results/study-<profile>.json     Iino et al.'s R-D study (BD-rate tables)
    AblationFile results/ablation-<profile>.json  the branch-position ablation (section 4.2)
    GanFile      results/gan-<profile>.json       Le et al.'s PatchGAN presets

A results file names the code that made it (``commit``: git HEAD and whether the tree was dirty)
and the run keys of every run it holds. Files are written atomically and hold no NaN: a number
that is undefined is ``null`` with the reason beside it (an ``undefined`` mapping). A file of
another schema is refused with :class:`~icm_lib.errors.DamagedFileError` saying the command that
regenerates it; an evaluation file of another schema is recomputed (it is a cache).

Per-image data (:class:`ImageRecords`) keeps what resampling images needs: for segmentation the
per-class intersection and union pixel counts (the mIoU of any subset or bootstrap resample is
their sum over its images, then the division), for detection each image's detections matched to
its ground truth at every IoU threshold of COCO's mAP and its ground-truth count per class (the
COCO accumulation over any subset gives its mAP). Files written before per-image records existed
were converted once (:func:`convert_legacy`) and say so.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import math
import subprocess
import warnings
from collections import Counter
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar

from .errors import DamagedFileError
from .files import atomic_write_json, read_json
from .profiles import PROFILES

#: the schema every results and evaluation file of this code carries; files without one (or with
#: another) are refused (results) or recomputed (evaluations)
SCHEMA_VERSION = 2

#: the file kinds in ``results/``, with the command that regenerates each (``{profile}``)
REGENERATE = {
    "study": "python -m icm_lib.study --profile {profile}",
    "ablation": "python -m icm_lib.study --study ablation --profile {profile}",
    "gan": "python -m icm_lib.study --study gan --profile {profile}",
    "world": "python -m icm_lib.world_check --profile {profile}",
    "pilot": "python -m icm_lib.pilot --profile {profile}",
    "gradients": "python -m icm_lib.gradients --profile {profile}",
    "depth": "python -m icm_lib.gradients --profile {profile} --depth",
    "claims": "python -m icm_lib.claims --profile {profile}",
}


def results_path(results_dir: str | Path, kind: str, profile: str) -> Path:
    """The one spelling of a results file's name: ``<results_dir>/<kind>-<profile>.json``."""
    if kind not in REGENERATE:
        raise ValueError(f"kind must be one of {sorted(REGENERATE)}, got {kind!r}")
    return Path(results_dir) / f"{kind}-{profile}.json"


def profiles_with_studies(results_dir: str | Path) -> list[str]:
    """The profiles that have a world-check, study, ablation or PatchGAN file in
    ``results_dir``, in the order of :data:`~icm_lib.profiles.PROFILES` (the control world
    ``cpu`` before ``cpu-patterns``), then any other name."""
    found = set()
    for kind in ("world", "study", "ablation", "gan"):
        pattern = results_path(results_dir, kind, "*")  # the file names' one spelling
        found |= {p.stem.removeprefix(f"{kind}-") for p in pattern.parent.glob(pattern.name)}
    return [n for n in PROFILES if n in found] + sorted(found - set(PROFILES))


def figure_name(kind: str, profile: str, *parts: str) -> str:
    """A results figure's file stem beside its file: ``<kind>-<profile>[-<part>...]``."""
    return "-".join([results_path(".", kind, profile).stem, *parts])


@dataclass(frozen=True)
class PaperNumbers:
    """The numbers the papers report, which the tables set beside ours.

    Attributes:
        iino_bd_rate: Iino et al. section 4.1: BD-rate (%) of aux-enc against the baseline, per
            task (negative = fewer bits at equal task metric).
        iino_ablation_lowest: Iino et al. section 4.2: the branch position with the lowest
            validation main loss.
        le_task_relative_change_percent: Le et al.: relative change (%) of the task metric after
            PatchGAN finetuning.
    """

    iino_bd_rate: dict[str, float]
    iino_ablation_lowest: str
    le_task_relative_change_percent: float


PAPERS = PaperNumbers(
    iino_bd_rate={"det": -27.7, "seg": -20.3},
    iino_ablation_lowest="aux-enc",
    le_task_relative_change_percent=-1.6,
)


# ---------------------------------------------------------------------------------- records
@dataclass
class ImageRecords:
    """Per-image data of one R-D point, one entry per val image in evaluation order.

    Attributes:
        ids: the dataset's image ids (COCO image id; Pascal-Context file stem).
        pixels: pixels of the original image (bpp of a subset = Σ bits / Σ pixels).
        bits: the image's bits (real bytes x 8, or the estimate when the point's rate is).
        psnr, ms_ssim, checkerboard: the image's fidelity scores (the point's are their means).
        intersection, union: segmentation, per image and class: pixels of the class in both
            prediction and ground truth, and in either (ignored pixels excluded).
        labelled: segmentation, per image: pixels with a ground-truth label (pixel accuracy).
        gt: detection, per image: ``[[label, count], ...]`` ground-truth boxes that count.
        dt: detection, per image: ``[[label, score, matched, ignored], ...]`` its detections as
            COCO's evaluation keeps them (per label, highest score first, at most 100), with
            bit ``t`` of ``matched`` / ``ignored`` set when the detection is a true positive /
            ignored at IoU threshold ``t`` of :data:`~icm_lib.metrics.COCO_IOU_THRESHOLDS`;
            those scored below every true positive of their class are left out (they cannot
            change the mAP of any subset: :func:`~icm_lib.metrics.detection_matches`).
    """

    ids: list
    pixels: list[int]
    bits: list[float]
    psnr: list[float]
    ms_ssim: list[float]
    checkerboard: list[float]
    intersection: list[list[int]] | None = None
    union: list[list[int]] | None = None
    labelled: list[int] | None = None
    gt: list[list[list[int]]] | None = None
    dt: list[list[list[float]]] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def metric(self, images: list[int] | None = None) -> float | None:
        """The task metric (mIoU or mAP) over ``images`` (indices; repeats allowed, as in a
        bootstrap resample; default all), computed as the dataset metric is."""
        from .metrics import map_from_matches, miou_from_counts

        idx = range(len(self)) if images is None else images
        if self.intersection is not None:
            classes = len(self.intersection[0]) if self.intersection else 0
            inter = [sum(self.intersection[i][c] for i in idx) for c in range(classes)]
            union = [sum(self.union[i][c] for i in idx) for c in range(classes)]
            return miou_from_counts(inter, union)
        if self.dt is not None:
            return map_from_matches([self.gt[i] for i in idx], [self.dt[i] for i in idx])["map"]
        raise ValueError("these per-image records hold no task data")

    def bpp(self, images: list[int] | None = None) -> float:
        """bpp over ``images`` (indices, repeats allowed; default all)."""
        idx = range(len(self)) if images is None else images
        return sum(self.bits[i] for i in idx) / sum(self.pixels[i] for i in idx)


@dataclass
class RDPoint:
    """One codec scored on one task's val set (every image through real bytes, or the estimated
    rate with a real check: ``rate``).

    Attributes:
        task: the task whose val set and metric scored it (``det``: mAP, ``seg``: mIoU).
        curve: the R-D curve it belongs to (``mse``, ``baseline``, ``aux-enc``, ``roi``,
            ``patchgan-<preset>``; empty for an evaluation not yet placed on one).
        lmbda, seed: the run's λ and random seed (``None`` before placement).
        bpp: bits per original pixel over the val set.
        metric: the task metric (mAP@[.5:.95] or mIoU); ``metric_name`` says which.
        psnr, ms_ssim, checkerboard: means over images (dB; MS-SSIM; checkerboard score).
        bpp_estimate: the likelihood estimate of bpp over the same images.
        rate: ``real`` (bits from real bytes) or ``estimate``.
        n_images: val images scored.
        scores: the task's secondary scores (``map_50``; ``pixel_acc``).
        seconds: evaluation wall time.
        real_check: for ``rate == "estimate"``: the real-bytes check (images, actual / estimated
            bits, max |x̂ difference|).
        images: per-image data (``None`` only in points converted from files that predate it).
        undefined: field name -> why that field is ``null``.
    """

    task: str
    curve: str
    lmbda: float | None
    seed: int | None
    bpp: float
    metric: float | None
    psnr: float | None
    ms_ssim: float | None
    checkerboard: float | None
    bpp_estimate: float | None
    rate: str
    n_images: int
    scores: dict[str, float | None] = field(default_factory=dict)
    seconds: float | None = None
    real_check: dict | None = None
    images: ImageRecords | None = None
    undefined: dict[str, str] = field(default_factory=dict)

    @property
    def metric_name(self) -> str:
        from .tasks import get_task

        return get_task(self.task).metric

    def placed(self, curve: str, lmbda: float, seed: int) -> RDPoint:
        """This evaluation as a point of ``curve`` at ``lmbda`` and ``seed``."""
        return replace(self, curve=curve, lmbda=lmbda, seed=seed)

    def plain(self) -> dict:
        """The point as the analysis tables and notebooks read it (no per-image data): ``bpp``,
        the metric under its name (``map`` / ``miou``), ``psnr``, ``ms_ssim``,
        ``checkerboard``, ``bpp_estimate``, ``images`` (count), ``rate``, ``lmbda``,
        ``seconds``, the secondary scores and ``real_check`` where present."""
        out = {
            "bpp": self.bpp,
            self.metric_name: self.metric,
            "psnr": self.psnr,
            "ms_ssim": self.ms_ssim,
            "checkerboard": self.checkerboard,
            "bpp_estimate": self.bpp_estimate,
            "images": self.n_images,
            "rate": self.rate,
            **self.scores,
        }
        if self.lmbda is not None:
            out["lmbda"] = self.lmbda
        if self.seconds is not None:
            out["seconds"] = self.seconds
        if self.real_check is not None:
            out["real_check"] = self.real_check
        return out

    @classmethod
    def from_json(cls, d: dict) -> RDPoint:
        d = _fields_of(cls, d)
        return cls(**{**d, "images": ImageRecords(**d["images"]) if d["images"] else None})


@dataclass
class RunRecord:
    """One training run of Iino et al.'s study or ablation.

    Attributes:
        task, variant, lmbda, seed: what was trained (``variant``: mse, baseline, aux-enc, ...).
        run_dir: its cache folder; the folder's name is the run key (every setting that decides
            the run is hashed into it). ``None`` only in runs converted from files that did not
            record it.
        steps: training steps done; seconds: training wall time.
        log: the training log (rows of step, losses, seconds; empty where a results file kept
            none); ``final`` is its last row.
        val: the validation curve (``{"step": [...], "main_loss": [...], ...}``; ablation runs).
        points: its R-D points (the ROI baseline's as curve ``roi``).
        from_results_file: taken from an earlier results file instead of the cache.
        undefined: field name -> why that field is ``null``.
        settings_key: the run key with the reference codec named by its settings instead of
            its weights (:meth:`~icm_lib.experiment.Experiment.settings_key`): equal on every
            machine for the same settings, where the run key differs between kinds of CPU.
            ``None`` in files written before it existed.
        foundations: the fingerprints of the weights the run stood on -- ``"reference"`` (the
            codec it started from) and each frozen recognizer it trained or was scored against,
            by task name (:meth:`~icm_lib.experiment.Experiment.foundations`). The run key
            names the recognizers by their settings only; a study does not take a recorded run
            whose recognizers were other weights. ``None`` in files written before it existed.
    """

    task: str
    variant: str
    lmbda: float
    seed: int
    run_dir: str | None
    steps: int | None
    seconds: float | None
    log: list[dict] = field(default_factory=list)
    val: dict | None = None
    points: list[RDPoint] = field(default_factory=list)
    from_results_file: bool = False
    undefined: dict[str, str] = field(default_factory=dict)
    settings_key: str | None = None
    foundations: dict[str, str] | None = None

    @property
    def run_key(self) -> str | None:
        return Path(self.run_dir).name if self.run_dir else None

    @property
    def final(self) -> dict:
        """The last training-log row (empty without a log)."""
        return self.log[-1] if self.log else {}

    def point(self, task: str, curve: str | None = None) -> RDPoint | None:
        """Its R-D point on ``task`` (of ``curve``; default: the run's own variant)."""
        curve = curve or self.variant
        return next((p for p in self.points if p.task == task and p.curve == curve), None)

    def describe(self) -> str:
        """The run and what it gave, in one line: bpp and metric per scoring task (or the last
        validation main loss of a run without R-D points)."""
        result = "; ".join(
            f"{p.curve} on {p.task}: {p.bpp:.4f} bpp, {p.metric_name} "
            + ("undefined" if p.metric is None else f"{p.metric:.4f}")
            for p in self.points
        )
        if not self.points and self.val:
            result = f"last val main loss {self.val['main_loss'][-1]:.4f}"
        return f"{self.task} {self.variant} λ {self.lmbda:g} seed {self.seed}: {result}"

    def plain(self) -> dict:
        """The run as the analysis functions and notebooks read it: ``task``, ``variant``,
        ``lmbda``, ``seed``, ``run_dir``, ``train_seconds``, ``eval`` and ``roi`` ({task: plain
        point}), and ``log``, ``val``, ``from_results_file`` where present."""
        out = {
            "task": self.task,
            "variant": self.variant,
            "lmbda": self.lmbda,
            "seed": self.seed,
            "run_dir": self.run_dir,
            "train_seconds": self.seconds,
            "eval": {p.task: p.plain() for p in self.points if p.curve != "roi"},
            "roi": {p.task: p.plain() for p in self.points if p.curve == "roi"},
        }
        if self.log:
            out["log"] = self.log
        if self.val is not None:
            out["val"] = self.val
        if self.from_results_file:
            out["from_results_file"] = True
        return out

    @classmethod
    def from_json(cls, d: dict) -> RunRecord:
        d = _fields_of(cls, d, derived=("run_key",))
        return cls(**{**d, "points": [RDPoint.from_json(p) for p in d["points"]]})


@dataclass
class GanRecord:
    """One decoder-only PatchGAN finetuning (Le et al.) of a baseline codec.

    Attributes:
        task, lmbda, seed: the baseline codec's task, λ and seed (the finetuning's seed too).
        preset: the finetuning preset (:func:`~icm_lib.gan.preset_config`: ``full``, ``limited``,
            ``no-adv``, optionally ``-px<pixel weight>``).
        run_dir: its cache folder (the name is its key); seconds: finetuning wall time;
        log: the finetuning log.
        before, after: the R-D points of the codec before and after.
        base_run_key: the run key (folder name) of the baseline codec it finetuned: with the
            preset, seed and finetuning settings it identifies the finetuning without the
            codec's weights (a study takes it from its file where the cache lost the codec).
        from_results_file: taken from an earlier results file instead of the cache.
        foundations: the fingerprints of the weights it stood on, as
            :attr:`RunRecord.foundations` (the reference codec and the task's recognizer);
            ``None`` in files written before it existed.
    """

    task: str
    lmbda: float
    seed: int
    preset: str
    run_dir: str | None
    seconds: float | None
    log: list[dict]
    before: RDPoint
    after: RDPoint
    undefined: dict[str, str] = field(default_factory=dict)
    base_run_key: str | None = None
    from_results_file: bool = False
    foundations: dict[str, str] | None = None

    @property
    def run_key(self) -> str | None:
        return Path(self.run_dir).name if self.run_dir else None

    def describe(self) -> str:
        """The finetuning and its checkerboard score before -> after, in one line."""
        sides = (self.before.checkerboard, self.after.checkerboard)
        result = (
            f"checkerboard {sides[0]:.4f} -> {sides[1]:.4f}"
            if None not in sides
            else "checkerboard undefined"
        )
        return f"{self.task} {self.preset} seed {self.seed}: {result}"

    def plain(self) -> dict:
        """``task``, ``lmbda``, ``seed``, ``preset``, ``before`` / ``after`` (plain points),
        ``log``, ``run_dir``, ``train_seconds``."""
        return {
            "task": self.task,
            "lmbda": self.lmbda,
            "seed": self.seed,
            "preset": self.preset,
            "before": self.before.plain(),
            "after": self.after.plain(),
            "log": self.log,
            "run_dir": self.run_dir,
            "train_seconds": self.seconds,
        }

    @classmethod
    def from_json(cls, d: dict) -> GanRecord:
        d = _fields_of(cls, d, derived=("run_key",))
        return cls(
            **{
                **d,
                "before": RDPoint.from_json(d["before"]),
                "after": RDPoint.from_json(d["after"]),
            }
        )


# ---------------------------------------------------------------------------------- files
#: the changed paths a file's ``commit`` lists at most (then ``"..."``)
CHANGED_SHOWN = 20


def code_commit() -> dict:
    """``{"sha": git HEAD, "dirty": tracked files changed, "changed": their paths}`` of the
    code beside this module (``None`` values with ``why`` when it is not a git checkout), read
    once per process, when this module is imported: a study that runs for hours and writes its
    file after every run records the code it runs, not a commit made meanwhile. ``changed``
    (at most :data:`CHANGED_SHOWN` paths, then ``"..."``) tells a tree dirty only in
    ``results/`` -- a study's own partial file -- from changed code."""
    return dict(_process_commit())


@functools.cache
def _process_commit() -> dict:
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        return {"sha": None, "dirty": None, "why": f"no git checkout ({exc})"}
    changed = [line[3:] for line in status.splitlines() if line.strip()]
    if len(changed) > CHANGED_SHOWN:
        changed = [*changed[:CHANGED_SHOWN], "..."]
    return {"sha": sha, "dirty": bool(changed), "changed": changed}


def code_changed(commit: dict | None) -> bool | None:
    """Whether a file's ``commit`` ran on changed code: a dirty tree with a changed path outside
    ``results/`` (``None`` where unknown: no git, or a file from before ``changed`` was
    recorded and dirty)."""
    if not commit or commit.get("dirty") is None:
        return None
    if not commit["dirty"]:
        return False
    if "changed" not in commit:
        return None
    listed = [path for path in commit["changed"] if path != "..."]
    if any(not path.startswith("results/") for path in listed):
        return True
    return None if len(listed) < len(commit["changed"]) else False  # "...": not all listed


_process_commit()  # the code this process runs (see code_commit)

#: the distributions whose versions decide a result's numbers (the generators of the embedded
#: scenes, the codec, the recognizers, their kernels), as ``importlib.metadata`` names them
NUMERIC_PACKAGES = (
    "torch",
    "torchvision",
    "compressai",
    "numpy",
    "scipy",
    "pillow",
    "segmentation-models-pytorch",
    "timm",
    "detectron2",
    "mmsegmentation",
    "mmcv",
)
#: the CPU features that choose float kernels (the vector ISA and bfloat16 / AMX units)
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def code_environment() -> dict:
    """What besides the code decides a file's numbers: Python, the versions of
    :data:`NUMERIC_PACKAGES` (``None``: not installed), the CPU (model and the
    :data:`CPU_FLAGS` it has) and the GPU, read once per process. The same code in another
    environment trains to other last bits (another kernel sums in another order; another
    ``scipy`` renders other scenes): a re-run lands on a file's numbers where its environment
    is this one (``constraints.txt`` installs the versions the committed files were made with)."""
    return json.loads(json.dumps(_process_environment()))


@functools.cache
def _process_environment() -> dict:
    import platform
    from importlib import metadata

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    model, flags = platform.processor() or None, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    except ImportError:
        pass
    return {
        "python": platform.python_version(),
        "packages": {name: version(name) for name in NUMERIC_PACKAGES},
        "machine": platform.machine(),
        "cpu": model,
        "cpu_flags": [f for f in CPU_FLAGS if f in flags],
        "gpu": gpu,
    }


def warn_other_environment(file: _ResultsFile, path: str | Path) -> None:
    """Warn when a study resumes from a file that another environment made: its runs are taken
    only where their run keys match this machine's (a key holds the reference codec's weights,
    which another environment trains to other bits) and their recorded recognizers' weights do
    (:attr:`RunRecord.foundations`), so expect them to be trained again. Files
    from before environments were recorded say nothing."""
    if file.environment is None:
        return
    differences = environment_differences(file.environment)
    if differences:
        warnings.warn(
            f"{path} was made in another environment ({'; '.join(differences)}): its runs are "
            "taken only where their run keys and recognizers' weights match this machine's, "
            "the others are trained here "
            "(install constraints.txt on the machine kind that made it to resume it instead)",
            stacklevel=3,
        )


def environment_differences(recorded: dict | None, here: dict | None = None) -> list[str]:
    """What differs between a file's ``environment`` and this process's (``here``), as
    ``"torch 2.14.1 -> 2.15.0"`` lines (the GPU is not compared: a file's CPU runs are not
    another machine's GPU runs by its name); ``["unknown (...)"]`` for a file from before
    environments were recorded."""
    if recorded is None:
        return ["unknown (the file predates recorded environments)"]
    here = here or code_environment()
    out = []
    for name in sorted(set(recorded.get("packages", {})) | set(here["packages"])):
        a, b = recorded.get("packages", {}).get(name), here["packages"].get(name)
        if a != b:
            out.append(f"{name} {a} -> {b}")
    for key in ("python", "machine", "cpu", "cpu_flags"):
        if recorded.get(key) != here.get(key):
            out.append(f"{key} {recorded.get(key)} -> {here.get(key)}")
    return out


def foundations_differences(recorded: dict | None, here: dict) -> list[str]:
    """Where a record's :attr:`RunRecord.foundations` differ from ``here`` (this machine's
    fingerprints of the same weights), as ``"seg 8beca789aa -> 41c07d2e55"`` lines; ``[]`` for a
    record from before foundations were recorded (nothing to compare) and for the weights
    ``here`` does not name."""
    return [
        f"{name} {fingerprint} -> {here[name]}"
        for name, fingerprint in sorted((recorded or {}).items())
        if name in here and here[name] != fingerprint
    ]


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


@dataclass
class _ResultsFile:
    """What every results file carries besides its records (see the subclasses).

    Attributes:
        profile: the profile it was made with.
        commit: the code that made it (``sha``, ``dirty``).
        environment: the packages and machine that ran it (:func:`code_environment`; ``None``
            in a file from before they were recorded).
        created: when (ISO 8601, UTC).
        reproduced_by_current_code: ``True`` when this code wrote it; ``False`` when its numbers
            are known to come from older code; ``None`` when that was not checked (see notes).
        notes: what a reader must know about where the numbers come from.
        compute_hours_in_runs, wall_hours_this_invocation: compute spent.
    """

    KIND: ClassVar[str] = ""
    RECORD: ClassVar[type] = RunRecord  # the type of the file's runs
    profile: str
    seeds: list[int]
    compute_hours_in_runs: float
    wall_hours_this_invocation: float
    commit: dict = field(default_factory=code_commit)
    environment: dict | None = field(default_factory=code_environment)
    created: str = field(default_factory=_now)
    reproduced_by_current_code: bool | None = True
    notes: list[str] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION

    @property
    def run_keys(self) -> list[str | None]:
        """The run key (cache folder name) of every run the file holds."""
        return [r.run_key for r in self.runs]

    def mixed_foundations(self) -> list[str]:
        """The weights its runs stood on (:attr:`RunRecord.foundations`) where they differ
        between runs, one ``"seg: 41c07d2e55, 8beca789aa"`` line per differing name; ``[]`` where
        every run that records them stood on the same reference codec and recognizers (one
        world: every run of a profile starts from its reference codec and trains against its
        recognizers, whatever its seed)."""
        seen: dict[str, set[str]] = {}
        for run in self.runs:
            for name, fingerprint in (getattr(run, "foundations", None) or {}).items():
                seen.setdefault(name, set()).add(fingerprint)
        return [f"{name}: {', '.join(sorted(f))}" for name, f in sorted(seen.items()) if len(f) > 1]

    @classmethod
    def path(cls, results_dir: str | Path, profile: str) -> Path:
        return results_path(results_dir, cls.KIND, profile)

    def to_json(self) -> dict:
        return {"kind": self.KIND, "run_keys": self.run_keys, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, d: dict) -> Any:
        d = _fields_of(cls, d, derived=("kind", "run_keys"))
        runs = [cls.RECORD.from_json(r) for r in d["runs"]]
        return cls(**{"environment": None, **d, "runs": runs})  # None: not recorded

    def write(self, path: str | Path) -> Path:
        """Write atomically; refuse NaN or infinity anywhere (write ``None`` with a reason).
        Warns when its runs stood on different weights (:meth:`mixed_foundations`): written
        all the same, the records say whose each run is."""
        data = self.to_json()
        _refuse_non_finite(data, str(path))
        mixed = self.mixed_foundations() if isinstance(getattr(self, "runs", None), list) else []
        if mixed:  # (the same text warns once per process)
            warnings.warn(
                f"{path} holds runs that stood on different weights ({'; '.join(mixed)}): "
                "trained on machines whose recognizers or reference codec came out otherwise; "
                "compare them only within one world (each run's `foundations` says whose it is)",
                stacklevel=2,
            )
        return atomic_write_json(path, data)

    @classmethod
    def read(cls, path: str | Path) -> Any:
        """The file at ``path``; :class:`DamagedFileError` (with the command that regenerates
        it) when it is missing, damaged, of another kind or of another schema."""
        path = Path(path)
        profile = path.stem.removeprefix(f"{cls.KIND}-") or "cpu"
        fix = f"regenerate it with `{REGENERATE[cls.KIND].format(profile=profile)}`"
        data = read_json(path, what=f"the {cls.KIND} results file", fix=fix)
        version = data.get("schema_version") if isinstance(data, dict) else None
        if version != SCHEMA_VERSION:
            legacy = (
                "; a file of the untyped shape (no schema_version) converts once, numbers "
                "unchanged, with `python -m icm_lib.results --convert " + str(path) + "`"
                if version is None
                else ""
            )
            raise DamagedFileError(
                f"{path} has results schema {version} but this code reads schema "
                f"{SCHEMA_VERSION}: {fix}{legacy}"
            )
        if data.get("kind") != cls.KIND:
            raise DamagedFileError(f"{path} is a {data.get('kind')} file, not {cls.KIND}: {fix}")
        try:
            return cls.from_json(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise DamagedFileError(
                f"{path} does not hold a {cls.KIND} file ({exc}): {fix}"
            ) from None

    @classmethod
    def recorded(cls, path: str | Path) -> dict[str, Any]:
        """The finished runs of the file at ``path`` by run key (folder name), each marked
        ``from_results_file``; ``{}`` without a file. The results file is the record that
        outlives a session (the cache is not committed): a run whose folder name, which carries
        the key of everything that decides it, is in the file but not in the cache is taken from
        the file instead of being trained again."""
        if not Path(path).is_file():
            return {}
        earlier = cls.read(path)
        warn_other_environment(earlier, path)
        return {
            r.run_key: dataclasses.replace(r, from_results_file=True)
            for r in earlier.runs
            if getattr(r, "run_key", None)
        }

    @classmethod
    def find(cls, results_dir: str | Path, profile: str) -> Any:
        """The profile's file in ``results_dir``, or ``None`` when there is none."""
        path = cls.path(results_dir, profile)
        return cls.read(path) if path.is_file() else None


@dataclass
class StudyFile(_ResultsFile):
    """``results/study-<profile>.json``: Iino et al.'s R-D study.

    Attributes:
        complete: every run of the grid is in.
        variants: the trained variants (besides the MSE reference curve).
        runs: every run with its R-D points (the MSE runs scored on every task).
        tasks: per task ``{"metric", "bd_rate": table of evaluate.bd_rates}``.
        icm_config: the profile's codec-training settings the runs used.
    """

    KIND: ClassVar[str] = "study"
    complete: bool = False
    variants: list[str] = field(default_factory=list)
    runs: list[RunRecord] = field(default_factory=list)
    tasks: dict = field(default_factory=dict)
    icm_config: dict = field(default_factory=dict)

    def plain_runs(self) -> list[dict]:
        return [r.plain() for r in self.runs]


@dataclass
class AblationFile(_ResultsFile):
    """``results/ablation-<profile>.json``: the branch-position ablation (Iino et al. 4.2).

    Attributes:
        complete: every (task, variant, seed) is in.
        runs: the runs with their validation curves (no training log).
        tasks: per task the table of :func:`~icm_lib.evaluate.ablation_table`.
        ablation_config: the profile's ablation settings.
        icm_config: the profile's codec-training settings the runs used (``{}`` in files
            written before it was recorded).
    """

    KIND: ClassVar[str] = "ablation"
    complete: bool = False
    runs: list[RunRecord] = field(default_factory=list)
    tasks: dict = field(default_factory=dict)
    ablation_config: dict = field(default_factory=dict)
    icm_config: dict = field(default_factory=dict)


@dataclass
class GanFile(_ResultsFile):
    """``results/gan-<profile>.json``: Le et al.'s PatchGAN presets over seeds.

    Attributes:
        runs: every finetuning with its before / after points.
        summary: per preset, before / after / change (mean ± 95 % CI) of each score.
        gan_config: the profile's finetuning settings.
    """

    KIND: ClassVar[str] = "gan"
    RECORD: ClassVar[type] = GanRecord
    runs: list[GanRecord] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    gan_config: dict = field(default_factory=dict)


@dataclass
class WorldFile(_ResultsFile):
    """``results/world-<profile>.json``: the acceptance checks of the profile's embedded world
    (:mod:`icm_lib.world_check`), run before any study.

    Attributes:
        world: the world (``DataConfig.world``).
        recognizers: per task the cache file, val metric, val curve, steps and seconds.
        reference: the reference codec's steps, val curve (bpp, PSNR) and seconds.
        runs: the MSE reference curve (scored on both tasks) and the detection baselines (with
            their ROI points) the checks read.
        checks: per check its value, bar and ``pass``.
        passed: every check passed.
    """

    KIND: ClassVar[str] = "world"
    world: str = ""
    recognizers: dict = field(default_factory=dict)
    reference: dict = field(default_factory=dict)
    runs: list[RunRecord] = field(default_factory=list)
    checks: dict = field(default_factory=dict)
    passed: bool = False


@dataclass
class PilotFile(_ResultsFile):
    """``results/pilot-<profile>.json``: the λ pilot (:mod:`icm_lib.pilot`) and the λ it chose
    by the rule of ``results/analysis-plan.json``.

    Attributes:
        complete: every pilot run is in.
        runs: the pilot's baseline runs (the study's own, same keys), with validation curves.
        selection: per task the rule's inputs (uncompressed metric, each λ's share of it and
            collapse flag) and outputs (``lambdas``, ``ablation_lambda``, or ``None`` with the
            reason and what to extend).
        rule: the selection rule as applied (words).
    """

    KIND: ClassVar[str] = "pilot"
    complete: bool = False
    runs: list[RunRecord] = field(default_factory=list)
    selection: dict = field(default_factory=dict)
    rule: dict = field(default_factory=dict)


@dataclass
class GradientsFile(_ResultsFile):
    """``results/gradients-<profile>.json``: what gradient reaches the encoder g_a
    (:mod:`icm_lib.gradients`), the measurement behind Iino et al.'s premise.

    Attributes:
        runs: the trained aux-enc runs measured (the grid's own, read from the cache).
        tasks: per task the λ, the batches, and per measured state (``at_start``: the reference
            codec with a fresh branch; ``trained``: the grid's aux-enc run at that λ, or ``None``
            with ``trained_note``) the per-batch task and branch gradient norms, their ratio and
            cosine; ``dropout``: the task gradient's spread between dropout draws.
        icm_config: the codec-training settings the gradients were measured under (precision
            included; ``{}`` in files written before it was recorded).
    """

    KIND: ClassVar[str] = "gradients"
    runs: list[RunRecord] = field(default_factory=list)
    tasks: dict = field(default_factory=dict)
    icm_config: dict = field(default_factory=dict)


@dataclass
class DepthFile(_ResultsFile):
    """``results/depth-<profile>.json``: the premise against the recognizer's depth
    (:func:`icm_lib.gradients.measure_depth`): the same codec, branch and batches, the frozen
    recognizer's backbone varied.

    Attributes:
        tasks: per task the λ, the batches, and ``backbones``: a row per backbone, in the
            order measured, ``{"backbone", "recognizer": {"name", "params", "val",
            "train_steps", "train_seconds"}, "at_start": per-batch task and branch gradient
            norms, ratio and cosine}`` (as :class:`GradientsFile`'s ``at_start``).
    """

    KIND: ClassVar[str] = "depth"
    runs: list[RunRecord] = field(default_factory=list)  # none: recognizers, no codec runs
    tasks: dict = field(default_factory=dict)


@dataclass
class ClaimsFile(_ResultsFile):
    """``results/claims-<profile>.json``: the claims as ``python -m icm_lib.claims`` computed
    them (:func:`icm_lib.claims.claims`; the bootstrap takes seconds to minutes), with the
    SHA-256 of every file they were computed from. Readers use it only while each of those files
    is unchanged (:func:`icm_lib.claims.recorded_claims`), so it cannot go stale silently.

    Attributes:
        inputs: file name (in the same folder) -> SHA-256 of its bytes.
        n_boot: the bootstrap's replicates.
        claims: :meth:`icm_lib.claims.Claim.plain` of each claim.
    """

    KIND: ClassVar[str] = "claims"
    runs: list[RunRecord] = field(default_factory=list)  # none: the claims read files
    inputs: dict = field(default_factory=dict)
    n_boot: int = 2000
    claims: list[dict] = field(default_factory=list)


FILE_TYPES = {
    cls.KIND: cls
    for cls in (
        StudyFile,
        AblationFile,
        GanFile,
        WorldFile,
        PilotFile,
        GradientsFile,
        DepthFile,
        ClaimsFile,
    )
}


# ---------------------------------------------------------------------------------- evaluations
def read_evaluation(path: str | Path) -> RDPoint | None:
    """The R-D point stored at ``path``, or ``None`` when it must be (re)computed: absent,
    damaged, or written by an evaluator of another schema (e.g. before per-image data)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = read_json(path, what="the evaluation", fix="it is recomputed")
    except DamagedFileError:
        return None
    if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION:
        return None
    data = {k: v for k, v in data.items() if k != "schema_version"}
    try:
        return RDPoint.from_json(data)
    except (KeyError, TypeError, ValueError):
        return None


def write_evaluation(path: str | Path, point: RDPoint) -> Path:
    """Store an R-D point at ``path`` (atomic, NaN refused, with the schema version)."""
    data = {"schema_version": SCHEMA_VERSION, **dataclasses.asdict(point)}
    _refuse_non_finite(data, str(path))
    return atomic_write_json(path, data)


# ---------------------------------------------------------------------------------- helpers
def finite_or_none(values: dict, reasons: dict[str, str], why: str) -> dict:
    """``values`` with every NaN / infinity replaced by ``None``, its name and ``why`` added to
    ``reasons``."""
    out = {}
    for k, v in values.items():
        if isinstance(v, float) and not math.isfinite(v):
            out[k] = None
            reasons[k] = why
        else:
            out[k] = v
    return out


def as_json(table: dict) -> dict:
    """``table`` as it reads back from JSON (seed keys as strings, tuples as lists): what a
    results file's settings are compared with."""
    return json.loads(json.dumps(table))


def _refuse_non_finite(obj: Any, where: str) -> None:
    bad = [p for p, v in _leaves(obj) if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise ValueError(
            f"{where}: non-finite numbers at {', '.join(bad[:5])}: an undefined number is written "
            "as None with its reason beside it (an 'undefined' entry)"
        )


def _leaves(obj: Any, path: str = ""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, f"{path}.{k}" if path else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _leaves(v, f"{path}[{i}]")
    else:
        yield path, obj


def _fields_of(cls, d: dict, derived: tuple[str, ...] = ()) -> dict:
    """``d``'s entries for ``cls``'s fields; a missing or unknown one raises ``KeyError``."""
    names = {f.name for f in fields(cls) if f.init}
    given = set(d) - set(derived)
    if given - names or {f.name for f in fields(cls) if _required(f)} - given:
        raise KeyError(
            f"{cls.__name__} fields differ: unknown {sorted(given - names)}, "
            f"missing {sorted({f.name for f in fields(cls) if _required(f)} - given)}"
        )
    return {k: d[k] for k in given}


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


# ---------------------------------------------------------------------------------- legacy files
#: why the converted points carry no per-image data
NO_IMAGES = "this point predates per-image records (converted from the untyped results file)"


def convert_legacy(path: str | Path, write: bool = True) -> _ResultsFile:
    """Rewrite a results file of the untyped shape (before :data:`SCHEMA_VERSION` existed) into
    its typed file, changing no number, and check that: every finite number of the old file is
    found, equal, in the new one (as many times), every NaN became ``null`` with a reason, and
    the papers' numbers the old file repeated equal :data:`PAPERS`. ``commit`` is the commit
    that last changed the file (git), ``created`` its date; the points carry no per-image data
    (``NO_IMAGES``). The study file stays marked as computed by older code.

    Raises:
        DamagedFileError: the file is not an untyped study / ablation / GAN file.
        AssertionError: a number would change (nothing is written).
    """
    path = Path(path)
    text = path.read_text()
    old = json.loads(text)  # the one reader that accepts NaN: the legacy files hold some
    if "schema_version" in old:
        raise DamagedFileError(f"{path} is already typed (schema {old['schema_version']})")
    kind = path.stem.split("-")[0]
    if kind not in ("study", "ablation", "gan"):
        raise DamagedFileError(f"{path}: not a study-, ablation- or gan- results file")
    reasons: list[str] = []
    new = {"study": _legacy_study, "ablation": _legacy_ablation, "gan": _legacy_gan}[kind](
        old, reasons
    )
    new.commit, new.created = _last_change(path)
    data = new.to_json()
    _refuse_non_finite(data, str(path))
    # every number kept: the papers' numbers move to PAPERS, the run count becomes the run list
    moved = {"paper_bd_rate_aux_enc", "paper_task_relative_change_percent", "runs"}
    if kind == "study":
        for task, t in old["tasks"].items():
            assert t["paper_bd_rate_aux_enc"] == PAPERS.iino_bd_rate[task]
        assert old["runs"] == len(new.runs), (old["runs"], len(new.runs))
    if kind == "gan":
        assert old["paper_task_relative_change_percent"] == PAPERS.le_task_relative_change_percent
    if kind == "ablation":
        assert old["paper_lowest"] == PAPERS.iino_ablation_lowest
        moved = {"paper_lowest"}
    old_numbers = _numbers(old, skip=moved)
    missing = old_numbers - _numbers(data)
    assert not missing, f"numbers of {path} not found in the typed file: {dict(missing)}"
    nans = sum(isinstance(v, float) and math.isnan(v) for _, v in _leaves(old))
    assert nans == len(reasons), (nans, reasons)
    assert _json_roundtrip(new) == data
    if write:
        new.write(path)
    return new


def _json_roundtrip(file: _ResultsFile) -> dict:
    """``file`` written to JSON text and parsed back into its type, as JSON (a check)."""
    data = json.loads(json.dumps(file.to_json()))
    return json.loads(json.dumps(type(file).from_json(data).to_json()))


def _numbers(obj: Any, skip: set[str] = frozenset()) -> Counter:
    def walk(o, key=None):
        if key in skip:
            return
        if isinstance(o, dict):
            for k, v in o.items():
                yield from walk(v, k)
        elif isinstance(o, list):
            for v in o:
                yield from walk(v)
        elif isinstance(o, (int, float)) and not isinstance(o, bool):
            if not (isinstance(o, float) and math.isnan(o)):
                yield float(o)

    return Counter(walk(obj))


def _last_change(path: Path) -> tuple[dict, str]:
    try:
        out = subprocess.run(
            ["git", "log", "-1", "--format=%H %cI", "--", path.name],
            cwd=path.parent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        out = []
    if len(out) != 2:
        return {"sha": None, "dirty": None, "why": "the file is not in git history"}, _now()
    return {"sha": out[0], "dirty": False}, out[1]


def _nulled(obj: Any, reasons: list[str], why) -> Any:
    """``obj`` with every NaN in a dict replaced by ``None`` and ``undefined[key] = why(dict,
    key)`` added to that dict."""
    if isinstance(obj, list):
        return [_nulled(v, reasons, why) for v in obj]
    if not isinstance(obj, dict):
        return obj
    out = {k: _nulled(v, reasons, why) for k, v in obj.items()}
    nan = [k for k, v in obj.items() if isinstance(v, float) and math.isnan(v)]
    for k in nan:
        out[k] = None
        reasons.append(k)
    if nan:
        out["undefined"] = {**out.get("undefined", {}), **{k: why(obj, k) for k in nan}}
    return out


def _mean_ci_reason(row: dict, key: str) -> str:
    n = row.get("n")
    if n == 0:
        return "no finite value to average (n=0)"
    if n == 1 and key == "ci95":
        return "one value has no interval (n=1)"
    return "NaN in the untyped file"


def _legacy_point(p: dict, task: str, curve: str, lmbda: float | None, seed: int | None):
    from .tasks import get_task

    metric = get_task(task).metric
    secondary = {"map": ("map_50",), "miou": ("pixel_acc",)}[metric]
    known = {metric, *secondary, "bpp", "psnr", "ms_ssim", "checkerboard", "bpp_estimate"}
    known |= {"images", "rate", "seconds", "real_check", "lmbda"}
    assert set(p) <= known, f"unknown point fields {set(p) - known}"
    reasons: dict[str, str] = {"images": NO_IMAGES}
    return RDPoint(
        task=task,
        curve=curve,
        lmbda=lmbda,
        seed=seed,
        bpp=p["bpp"],
        metric=p[metric],
        psnr=p.get("psnr"),
        ms_ssim=p.get("ms_ssim"),
        checkerboard=p.get("checkerboard"),
        bpp_estimate=p.get("bpp_estimate"),
        rate=p.get("rate", "real"),  # before the estimated rate existed every point was real
        n_images=p["images"],
        scores={k: p[k] for k in secondary if k in p},
        seconds=p.get("seconds"),
        real_check=p.get("real_check"),
        images=None,
        undefined=reasons,
    )


_LEGACY_RUN = (
    "the untyped study file kept R-D points per curve, not its runs: run folder, steps and "
    "training time were not recorded"
)


def _legacy_study(old: dict, reasons: list[str]) -> StudyFile:
    runs: dict[tuple, RunRecord] = {}
    for task, t in old["tasks"].items():
        for curve, by_seed in t["curves"].items():
            for seed, pts in by_seed.items():
                for p in pts:
                    # the ROI curve is the detection baselines coded with ROI scaling; the MSE
                    # reference runs are trained once (on detection crops) and scored on each task
                    variant = "baseline" if curve == "roi" else curve
                    run_task = "det" if curve == "mse" else task
                    key = (run_task, variant, p["lmbda"], int(seed))
                    run = runs.setdefault(
                        key,
                        RunRecord(
                            run_task,
                            variant,
                            p["lmbda"],
                            int(seed),
                            run_dir=None,
                            steps=None,
                            seconds=None,
                            undefined={k: _LEGACY_RUN for k in ("run_dir", "steps", "seconds")},
                        ),
                    )
                    run.points.append(_legacy_point(p, task, curve, p["lmbda"], int(seed)))
    tasks = {
        task: {"metric": t["metric"], "bd_rate": _nulled(t["bd_rate"], reasons, _mean_ci_reason)}
        for task, t in old["tasks"].items()
    }
    return StudyFile(
        profile=old["profile"],
        seeds=old["seeds"],
        compute_hours_in_runs=old["compute_hours_in_runs"],
        wall_hours_this_invocation=old["wall_hours_this_invocation"],
        complete=old["complete"],
        variants=old["variants"],
        runs=list(runs.values()),
        tasks=tasks,
        icm_config=old["icm_config"],
        reproduced_by_current_code=False,
        notes=[
            "Computed by older code: today's code does not land on these numbers (the "
            "tutorial's agreement check; issue 19 item 1). Re-run `make study` to replace it.",
            "Converted once from the untyped file (icm_lib.results.convert_legacy), every "
            "number unchanged; its points have no per-image records.",
        ],
    )


def _legacy_ablation(old: dict, reasons: list[str]) -> AblationFile:
    runs = []
    for r in old["rows"]:
        known = {"task", "variant", "lmbda", "seed", "run_dir", "train_seconds", "val"}
        assert set(r) <= known | {"from_results_file", "log"}, set(r) - known
        runs.append(
            RunRecord(
                r["task"],
                r["variant"],
                r["lmbda"],
                r["seed"],
                run_dir=r["run_dir"],
                steps=None,
                seconds=r["train_seconds"],
                log=r.get("log", []),
                val=r["val"],
                from_results_file=bool(r.get("from_results_file")),
                undefined={"steps": "the untyped file did not record it (see val.step)"},
            )
        )
    return AblationFile(
        profile=old["profile"],
        seeds=old["seeds"],
        compute_hours_in_runs=old["compute_hours_in_runs"],
        wall_hours_this_invocation=old["wall_hours_this_invocation"],
        complete=old["complete"],
        runs=runs,
        tasks=_nulled(old["tasks"], reasons, _mean_ci_reason),
        ablation_config=old["ablation_config"],
        reproduced_by_current_code=None,
        notes=[
            "Converted once from the untyped file (icm_lib.results.convert_legacy), every "
            "number unchanged; not re-run since.",
        ],
    )


def _legacy_gan(old: dict, reasons: list[str]) -> GanFile:
    runs = []
    for r in old["rows"]:
        task, lmbda, seed = r["task"], r["lmbda"], r["seed"]
        runs.append(
            GanRecord(
                task,
                lmbda,
                seed,
                r["preset"],
                run_dir=r["run_dir"],
                seconds=r["train_seconds"],
                log=r["log"],
                before=_legacy_point(r["before"], task, "baseline", lmbda, seed),
                after=_legacy_point(r["after"], task, f"patchgan-{r['preset']}", lmbda, seed),
            )
        )
    return GanFile(
        profile=old["profile"],
        seeds=old["seeds"],
        compute_hours_in_runs=old["compute_hours_in_runs"],
        wall_hours_this_invocation=old["wall_hours_this_invocation"],
        runs=runs,
        summary=_nulled(old["summary"], reasons, _mean_ci_reason),
        gan_config=old["gan_config"],
        reproduced_by_current_code=None,
        notes=[
            "Converted once from the untyped file (icm_lib.results.convert_legacy), every "
            "number unchanged; not re-run since; its points have no per-image records.",
        ],
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m icm_lib.results --convert results/study-cpu.json ...`` (one-off)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m icm_lib.results", description=__doc__[:60])
    parser.add_argument("--convert", nargs="+", type=Path, required=True)
    args = parser.parse_args(argv)
    for path in args.convert:
        new = convert_legacy(path)
        print(f"{path}: {type(new).__name__}, {len(new.runs)} runs, every number kept")
    return 0


if __name__ == "__main__":
    from .cli import command_status

    raise SystemExit(command_status(main))
