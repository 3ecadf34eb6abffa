"""The experiment layer: what every notebook, study, command line and benchmark starts from.

An :class:`Experiment` is a profile made concrete: its datasets, the frozen recognizers (each
loaded when first used, or up front) and the human-viewing reference codec, each load-or-compute
under ``<data_dir>/cache``::

    exp = Experiment.prepare(get_profile("cpu"), "data", device)
    exp.datasets.train("det"), exp.machine("seg"), exp.reference
    codec, log, run_dir = exp.icm_run("det", "aux-enc", 0.8, seed=0)     # one trained codec
    point = exp.point("det", "aux-enc", 0.8, seed=0)                     # ... and its R-D point
    for point in exp.grid([0], ["det", "seg"], ["baseline", "aux-enc"]):  # Iino et al.'s grid
        ...

Runs are keyed by everything that determines them (schedule, variant, task, codec, recognizers,
Iino et al.'s settings, the reference codec's exact weights, the data), so the study, the notebooks
and the command line share every run they have in common.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from .aux_branch import VARIANTS, build_branch
from .codec import ICMCodec, codec_from_config, load_codec
from .data import Datasets, get_datasets
from .data.sampler import CropSampler
from .errors import ConfigError
from .evaluate import load_or_evaluate, rd_point
from .files import atomic_write_json, read_json
from .losses import ICMObjective, mse_objective
from .metrics import bpp_from_likelihoods, psnr
from .profiles import ICM_WHEN_SET, Profile, TrainConfig, for_device
from .pseudo_labels import cached
from .recognition import load_or_train_task
from .results import RDPoint, RunRecord, foundations_differences
from .runtime import (
    Distributed,
    data_key,
    keyed_path,
    rng_kept,
    seed_everything,
    state_fingerprint,
)
from .tasks import DETECTION, TASKS, Task, get_task
from .trainer import train_codec


def load_or_train_reference_codec(
    profile: Profile,
    datasets: Datasets,
    cache_dir: str | Path,
    device: torch.device,
    progress: bool = True,
    dist: Distributed | None = None,
) -> tuple[ICMCodec, list[dict]]:
    """The human-viewing reference codec of a profile: CompressAI's pretrained weights when the
    profile asks for them, else trained for MSE on the training images (load-or-compute)."""
    seed_everything(profile.mse.seed)  # the initial weights are a function of the seed alone
    codec = codec_from_config(profile.codec)
    if profile.codec.pretrained or profile.mse.steps == 0:
        codec.update()
        return codec.to(device).eval(), []
    cfg, every = profile.mse, profile.mse.validate_every
    run_dir = reference_dir(profile, datasets, cache_dir)
    sampler = CropSampler(datasets.det_train, cfg.crop, cfg.batch_size, cfg.seed)
    validate = None
    if every:
        batch = val_crops(datasets.val("det"), profile.ablation.val_images, cfg.crop)
        validate = reference_validator(batch.to(device))
    return train_codec(
        codec,
        sampler,
        cfg,
        mse_objective(cfg.lmbda, bf16=cfg.precision == "bfloat16"),
        run_dir,
        device,
        progress,
        dist=dist,
        desc=f"MSE reference codec λ={cfg.lmbda:g}",
        validate=validate,
        validate_every=every,
    )


def reference_dir(profile: Profile, datasets: Datasets, cache_dir: str | Path) -> Path:
    """The reference codec's cache folder (trained for MSE): its name is the key of its
    settings (codec, schedule, data, validation, a precision other than float32)."""
    every = profile.mse.validate_every
    return keyed_path(
        Path(cache_dir),
        f"mse-codec-{profile.codec.name}",
        {
            "codec": profile.codec.key(),
            "train": asdict(profile.mse.train_config()),
            "data": data_key(datasets.det_train.root),
            **({"validation": _validation_key(profile, every)} if every else {}),
            **({"precision": profile.mse.precision} if profile.mse.precision != "float32" else {}),
        },
    )


def val_crops(val, n: int, crop: int) -> torch.Tensor:
    """One batch of fixed centre crops of the first ``n`` images of ``val`` (side: ``crop``, or
    the largest multiple of 64 every image holds)."""
    crops = []
    for i in range(min(n, len(val))):
        image = val[i][0]
        h, w = image.shape[-2:]
        side = min(crop, h // 64 * 64, w // 64 * 64)
        top, left = (h - side) // 2, (w - side) // 2
        crops.append(image[:, top : top + side, left : left + side])
    side = min(c.shape[-1] for c in crops)
    return torch.stack([c[:, :side, :side] for c in crops])


def reference_validator(batch: torch.Tensor):
    """``validate(codec) -> {"val_bpp", "val_psnr"}`` of a codec in eval mode on ``batch``: the
    estimated rate (likelihoods of the rounded latents) and the PSNR of its reconstruction."""

    def validate(codec: ICMCodec) -> dict[str, float]:
        was_training = codec.training
        codec.eval()
        with torch.no_grad():
            out = codec(batch)
        codec.train(was_training)
        bpp = bpp_from_likelihoods(out["likelihoods"], batch.shape[-2] * batch.shape[-1])
        return {"val_bpp": float(bpp), "val_psnr": psnr(out["x_hat"].clamp(0, 1), batch)}

    return validate


def _validation_key(profile: Profile, every: int) -> dict:
    return {"every": every, "images": profile.ablation.val_images}


#: the ICMConfig fields that do not decide a run, left out of its key: the schedules enter as
#: ``train``, validation as its own part; the λ grids only list which runs a study holds (a run's
#: own λ is in ``train``), so a grid chosen by the pilot keeps the pilot's runs; the ROI method's
#: QF acts at evaluation only (its evaluation file carries the QF in its name)
UNKEYED_ICM = (
    "det",
    "seg",
    "validate_every",
    "det_lambdas",
    "seg_lambdas",
    "mse_lambdas",
    "roi_qf",
)


def run_config(
    profile: Profile,
    task: Task | str,
    variant: str,
    lmbda: float,
    seed: int,
    steps: int | None = None,
) -> TrainConfig:
    """The training schedule of one run: the task's (or, for ``mse``, the reference's
    finetuning) schedule with this run's λ and seed."""
    base = profile.icm.train(task)
    if variant == "mse":
        base = replace(base, steps=profile.icm.mse_steps, lr=profile.mse.lr)
    return replace(base, lmbda=lmbda, seed=seed, steps=base.steps if steps is None else steps)


@dataclass
class RunPoint:
    """One trained codec of a grid and its evaluation.

    Attributes:
        run: the typed record (:class:`~icm_lib.results.RunRecord`): identity, run folder,
            log, R-D points with per-image data.
        codec: the trained codec (eval mode).
    """

    run: RunRecord
    codec: ICMCodec = field(repr=False)

    @property
    def record(self) -> dict:
        """The run's plain view (:meth:`~icm_lib.results.RunRecord.plain`): ``task``,
        ``variant``, ``lmbda``, ``seed``, ``run_dir``, ``train_seconds``, ``log``, ``eval``
        ({task: R-D point}), ``roi`` ({task: point})."""
        return self.run.plain()


def _val_curve(log: list[dict]) -> dict[str, list] | None:
    """The validation curve of a run's log: ``{"step": [...], "main_loss": [...], ...}``
    (``None`` for a run without validation)."""
    rows = [r for r in log if "val_main_loss" in r]
    if not rows:
        return None
    val = {"step": [r["step"] for r in rows]}
    val.update(
        {k.removeprefix("val_"): [r[k] for r in rows] for k in rows[0] if k.startswith("val_")}
    )
    return val


def _point_tasks(task: Task | str, variant: str, eval_tasks: Iterable[str] | None) -> list[str]:
    """The tasks whose recognizers a run of :meth:`Experiment.point` uses: the ones it is
    scored on (``eval_tasks``, default its own), and its own task unless it is an MSE run
    (trained without a machine)."""
    own = get_task(task).name
    return [*(eval_tasks or (own,)), *([own] if variant != "mse" else [])]


def _run_record(task: Task, variant, lmbda, seed, run_dir, log, **parts) -> RunRecord:
    """What a study keeps of one training run: its identity, folder, steps, compute and log."""
    return RunRecord(
        task=task.name,
        variant=variant,
        lmbda=lmbda,
        seed=seed,
        run_dir=str(run_dir),
        steps=log[-1].get("step") if log else None,
        seconds=log[-1]["seconds"] if log else 0.0,
        log=log,
        **parts,
    )


class Recognizers(Mapping):
    """Task name -> what one part of ``load(task name)`` gives (``part`` 0: the frozen
    recognizer, 1: its report), each task loaded -- or trained -- the first time it is asked
    for: a study of one task never waits for the other task's recognizer. The views of one
    ``loaded`` dict share what they load. A load leaves the random generators where they were
    (:func:`~icm_lib.runtime.rng_kept`): it may happen inside a run (an ``aux-task`` branch asks
    for its recognizer after the run's seed is set), and must not change what the run draws.
    ``in`` and ``len`` load nothing."""

    def __init__(self, load, part: int, loaded: dict):
        self._load, self._part, self._loaded = load, part, loaded

    def __getitem__(self, name: str):
        if name not in TASKS:
            raise KeyError(name)
        if name not in self._loaded:
            with rng_kept():
                self._loaded[name] = self._load(name)
        return self._loaded[name][self._part]

    def __contains__(self, name: object) -> bool:
        return name in TASKS

    def __iter__(self) -> Iterator[str]:
        return iter(TASKS)

    def __len__(self) -> int:
        return len(TASKS)


@dataclass
class Experiment:
    """A profile's data, frozen machines and reference codec (see the module docstring).

    Attributes:
        machines: the frozen recognizers by task name (``det``, ``seg``); a task that
            :meth:`prepare` did not load is loaded (or trained) when first asked for.
        reports: their training / validation reports by task name (loaded the same way).
        reference: the codec every run starts from (CompressAI's pretrained cheng2020-attn in
            ``paper``; notebook 00's MSE codec in ``cpu``).
    """

    profile: Profile
    datasets: Datasets
    machines: Mapping
    reports: Mapping
    reference: ICMCodec
    reference_log: list[dict]
    cache_dir: Path
    device: torch.device
    progress: bool = True
    dist: Distributed | None = None
    _fingerprints: dict[str, str] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @classmethod
    def prepare(
        cls,
        profile: Profile,
        data_dir: str | Path,
        device: torch.device,
        progress: bool = True,
        dist: Distributed | None = None,
        tasks: Iterable[str] | None = None,
    ) -> Experiment:
        """Datasets, the frozen recognizers and the reference codec (load-or-compute). Under
        torchrun, rank 0 builds what is missing while the others wait, then all load it.

        Args:
            tasks: the recognizers to load (or train) now (default: both); another task's is
                loaded when first used. Under torchrun name every task the run uses: only what
                is loaded here is built by rank 0 while the other ranks wait.
        """
        profile = for_device(profile, device)  # before anything is keyed
        dist = dist or Distributed(device)
        cache_dir = Path(data_dir) / "cache"
        shown = progress and dist.is_main
        if not dist.is_main:
            dist.barrier()
        datasets = get_datasets(profile.data, data_dir, progress=shown)

        def load(task: str):
            return load_or_train_task(task, profile, datasets, cache_dir, device, shown)

        loaded = {
            get_task(t).name: load(get_task(t).name) for t in (TASKS if tasks is None else tasks)
        }
        reference, log = load_or_train_reference_codec(
            profile, datasets, cache_dir, device, shown, Distributed.local(device)
        )
        if dist.is_main:
            dist.barrier()
        return cls(
            profile,
            datasets,
            Recognizers(load, 0, loaded),
            Recognizers(load, 1, loaded),
            reference,
            log,
            cache_dir,
            device,
            progress,
            dist,
        )

    def machine(self, task: Task | str):
        """The frozen recognizer of ``task``."""
        return self.machines[get_task(task).name]

    def foundations(self, tasks: Iterable[Task | str]) -> dict[str, str]:
        """The weights a run stands on, by fingerprint
        (:func:`~icm_lib.runtime.state_fingerprint`): the reference codec's (``"reference"``)
        and the frozen recognizers' of ``tasks`` (loaded if they are not yet). A run key names
        the recognizers by their settings: one trained on another kind of CPU (its bfloat16 or
        float32 kernels round otherwise) is other weights under the same key, so a run's record
        carries these (:attr:`~icm_lib.results.RunRecord.foundations`) and a study does not take
        a recorded run that stood on other weights (:meth:`stands_on_ours`)."""
        out = {"reference": self._fingerprint("reference", self.reference.codec_state)}
        for name in sorted({get_task(t).name for t in tasks}):
            out[name] = self._fingerprint(name, lambda name=name: self.machine(name).model)
        return out

    def _fingerprint(self, name: str, owner) -> str:
        if name not in self._fingerprints:
            state = owner()
            state = state["state_dict"] if isinstance(state, dict) else state.state_dict()
            self._fingerprints[name] = state_fingerprint(state)
        return self._fingerprints[name]

    def stands_on_ours(self, record, tasks: Iterable[Task | str], warn: bool = True) -> bool:
        """Whether a recorded run (a :class:`~icm_lib.results.RunRecord` or
        :class:`~icm_lib.results.GanRecord`) stood on the weights this machine has for what the
        call uses: the reference codec and the recognizers of ``tasks`` (only those are loaded
        and compared) -- ``True`` for a record from before foundations were recorded. Where
        not, warns (unless ``warn`` is off): a study trains that run here instead of mixing two
        machines' recognizers in one file."""
        if not record.foundations:
            return True
        names = {get_task(t).name for t in tasks} & set(record.foundations)
        differences = foundations_differences(record.foundations, self.foundations(names))
        if differences and warn:
            warnings.warn(
                f"the recorded run {record.describe()} stood on other weights than this "
                f"machine's ({'; '.join(differences)}; a recognizer trained on another kind of "
                "CPU or GPU): it is trained here instead of taken from the results file",
                stacklevel=2,
            )
        return not differences

    def stood_on(self, run_dir: Path, tasks: Iterable[Task | str]) -> dict[str, str]:
        """The :meth:`foundations` a cached run in ``run_dir`` stood on: what the folder's
        ``foundations.json`` says (written the first time its record is made, right after it
        trained), completed with this machine's for the weights it does not name yet (an
        evaluation on another task). A cache copied to another machine, or a recognizer trained
        again under the same key, leaves a folder that disagrees with this machine's: it warns,
        and the record keeps what the run stood on (a results file then says it mixes
        weights: :meth:`~icm_lib.results.StudyFile.mixed_foundations`)."""
        here, path = self.foundations(tasks), Path(run_dir) / "foundations.json"
        stored = (
            read_json(
                path,
                what="the run's foundations",
                fix="delete it (the record then names this machine's weights)",
            )
            if path.is_file()
            else {}
        )
        differences = foundations_differences(stored, here)
        if differences:
            warnings.warn(
                f"the cached run {Path(run_dir).name} stood on other weights than this "
                f"machine's ({'; '.join(differences)}): its record says so; delete the folder "
                "to train it against this machine's",
                stacklevel=2,
            )
        out = {**here, **stored}
        if out != stored:
            atomic_write_json(path, out)
        return out

    def branch(self, variant: str, task: Task | str, codec: ICMCodec):
        """A new auxiliary branch of ``variant`` for ``codec`` with the profile's width and the
        detector's sampling (``None`` for ``mse`` and ``baseline``)."""
        profile = self.profile
        return build_branch(
            variant,
            task,
            codec,
            self.datasets.train(task).num_classes,
            profile.icm.branch_width,
            profile.recognition.sampling(),
            machine=self.machine(task) if variant == "aux-task" else None,
        )

    # ------------------------------------------------------------------ codecs for machines
    def icm_run(
        self,
        task: Task | str,
        variant: str,
        lmbda: float,
        seed: int,
        steps: int | None = None,
        accumulate: int = 1,
        stop_after: int | None = None,
        validate_every: int = 0,
    ) -> tuple[ICMCodec, list[dict], Path]:
        """One codec of Iino et al. (load-or-compute), initialised from the reference codec.

        Args:
            variant: one of :data:`~icm_lib.aux_branch.VARIANTS` (``mse`` ignores the machine;
                ``lmbda`` is then the MSE λ).
            steps: override the profile's step count (tests, quick looks; another run).
            accumulate, stop_after: see :func:`~icm_lib.trainer.train_codec`.
            validate_every: log the validation losses (:meth:`validator`) every this many steps
                (0: none). A run with validation is another run (its key includes the cadence);
                runs without keep the keys they always had.

        Returns:
            ``(codec, log, run_dir)``.
        """
        task = get_task(task)
        profile, icm = self.profile, self.profile.icm
        cfg = run_config(profile, task, variant, lmbda, seed, steps)
        train_set = self.datasets.train(task)
        run_dir = self.run_dir(task, variant, lmbda, seed, steps, validate_every)
        codec = load_codec(self.reference.codec_state())
        seed_everything(seed)  # the branch's initial weights depend on the seed only
        branch = self.branch(variant, task, codec)
        objective = (
            mse_objective(lmbda)
            if variant == "mse"
            else ICMObjective(
                cached(self.machine(task), self.cache_dir),
                lmbda,
                icm.alpha,
                icm.mse_weight(task),
                **icm.precision(),
            )
        )
        sampler = CropSampler(train_set, cfg.crop, cfg.batch_size, seed)
        codec, log = train_codec(
            codec,
            sampler,
            cfg,
            objective,
            run_dir,
            self.device,
            self.progress,
            stop_after=stop_after,
            branch=branch,
            branch_lr=icm.branch_lr,
            accumulate=accumulate,
            dist=self.dist,
            desc=f"{task.name} {variant} λ={lmbda:g} seed {seed}",
            validate=self.validator(task, lmbda, cfg.crop) if validate_every else None,
            validate_every=validate_every,
        )
        return codec, log, run_dir

    def run_dir(
        self,
        task: Task | str,
        variant: str,
        lmbda: float,
        seed: int,
        steps: int | None = None,
        validate_every: int = 0,
    ) -> Path:
        """The cache folder of :meth:`icm_run` with these arguments: its name carries the key of
        everything that decides the run (config, codec, machines, the reference codec's weights,
        data), the same in every clone (:func:`~icm_lib.runtime.data_key`) whose reference
        codec trained to the same weights (:meth:`settings_key` is the same on every machine)."""
        reference = self.foundations([])["reference"]
        return self._keyed_run(task, variant, lmbda, seed, steps, validate_every, reference)

    def settings_key(
        self,
        task: Task | str,
        variant: str,
        lmbda: float,
        seed: int,
        steps: int | None = None,
        validate_every: int = 0,
    ) -> str:
        """The run key of :meth:`run_dir` with the reference codec named by its *settings*
        instead of its weights' fingerprint: the same on every machine (for the embedded data; a
        dataset elsewhere is keyed by its path). The run key changes
        where the reference codec trained to other weights -- on a GPU, or on a CPU whose float32
        kernels sum in another order -- so a results file made there matches runs here by this
        key (:attr:`~icm_lib.results.RunRecord.settings_key`): the same settings, that machine's
        numbers. The recognizers are named by their recipe
        (:meth:`~icm_lib.profiles.RecognitionConfig.recipe_key`): float32 ones trained where the
        device only emulates the bfloat16 the profile asks for are that machine's numbers too."""
        profile = self.profile
        if profile.codec.pretrained:
            reference = {"pretrained": profile.codec.key()}
        elif profile.mse.steps == 0:  # untrained: its initial weights are the seed's
            reference = {"untrained": profile.codec.key(), "seed": profile.mse.seed}
        else:
            reference = reference_dir(profile, self.datasets, ".").name
        run = self._keyed_run(
            task, variant, lmbda, seed, steps, validate_every, reference, recipe=True
        )
        return run.name

    def _keyed_run(
        self, task, variant, lmbda, seed, steps, validate_every, reference, recipe: bool = False
    ) -> Path:
        task = get_task(task)
        if variant not in VARIANTS:
            raise ConfigError(f"variant must be one of {VARIANTS}, got {variant!r}")
        profile, icm = self.profile, self.profile.icm
        cfg = run_config(profile, task, variant, lmbda, seed, steps)
        return keyed_path(
            self.cache_dir / "icm",
            f"{task.name}-{variant}-lmbda{lmbda:g}-seed{seed}",
            {
                "train": asdict(cfg),
                "variant": variant,
                "task": task.name,
                "codec": profile.codec.key(),
                "recognition": (
                    profile.recognition.recipe_key() if recipe else profile.recognition.key()
                ),
                "icm": {  # an MSE run never autocasts: the same run in bfloat16 profiles
                    k: v
                    for k, v in icm.recorded().items()
                    if k not in UNKEYED_ICM and not (variant == "mse" and k in ICM_WHEN_SET)
                },
                "reference": reference,
                "data": data_key(self.datasets.train(task).root),
                **({"validation": self._validation_key(validate_every)} if validate_every else {}),
            },
        )

    def ablation_run_dir(
        self,
        task: Task | str,
        variant: str,
        seed: int,
        steps: int | None = None,
    ) -> Path:
        """The cache folder of :meth:`ablation_point` (without training)."""
        lmbda, steps, every = self._ablation_schedule(task, steps)
        return self.run_dir(task, variant, lmbda, seed, steps, every)

    def ablation_settings_key(
        self, task: Task | str, variant: str, seed: int, steps: int | None = None
    ) -> str:
        """The :meth:`settings_key` of :meth:`ablation_point`'s run."""
        lmbda, steps, every = self._ablation_schedule(task, steps)
        return self.settings_key(task, variant, lmbda, seed, steps, every)

    def _ablation_schedule(
        self, task: Task | str, steps: int | None
    ) -> tuple[float, int | None, int]:
        """``(λ, steps, validate_every)`` of an ablation run (one derivation for its folder,
        its settings key and its training)."""
        ab = self.profile.ablation
        return ab.lmbda(task), steps or ab.steps, ab.val_every

    def _validation_key(self, every: int) -> dict:
        return _validation_key(self.profile, every)

    def validator(self, task: Task | str, lmbda: float, crop: int):
        """``validate(codec) -> {"val_main_loss", "val_bpp_loss", "val_task_loss",
        "val_mse_loss"}``: the objective without the branch (Eq. 4 / Eq. 6 without its branch
        term) on fixed centre crops of the first ``ablation.val_images`` val images, the codec
        in eval mode, the recognizer's RoI sampling seeded the same every time."""
        task, icm = get_task(task), self.profile.icm
        batch = val_crops(self.datasets.val(task), self.profile.ablation.val_images, crop)
        batch = batch.to(self.device)
        objective = ICMObjective(
            self.machine(task), lmbda, icm.alpha, icm.mse_weight(task), **icm.precision()
        )

        def validate(codec: ICMCodec) -> dict[str, float]:
            was_training = codec.training
            codec.eval()
            devices = [self.device] if self.device.type == "cuda" else []
            with torch.no_grad(), torch.random.fork_rng(devices=devices):
                torch.manual_seed(0)
                parts = objective(codec, None, batch)
            codec.train(was_training)
            keys = ("main_loss", "bpp_loss", "task_loss", "mse_loss")
            return {f"val_{k}": float(parts[k]) for k in keys}

        return validate

    def ablation_point(
        self, task: Task | str, variant: str, seed: int, steps: int | None = None
    ) -> RunPoint:
        """One setting of the branch-position ablation (section 4.2): ``variant`` trained at
        the ablation's λ with validation (load-or-compute). ``run.val`` holds the
        validation curve: ``{"step": [...], "main_loss": [...], ...}``."""
        task = get_task(task)
        lmbda, steps, every = self._ablation_schedule(task, steps)
        codec, log, run_dir = self.icm_run(
            task, variant, lmbda, seed, steps=steps, validate_every=every
        )
        record = _run_record(task, variant, lmbda, seed, run_dir, log, val=_val_curve(log))
        record.settings_key = self.settings_key(task, variant, lmbda, seed, steps, every)
        record.foundations = self.stood_on(run_dir, [task] if variant != "mse" else [])
        return RunPoint(record, codec)

    def evaluate(
        self, codec: ICMCodec, task: Task | str, path: Path, roi_qf: float | None = None
    ) -> RDPoint:
        """The R-D point of ``codec`` on ``task``'s val set, stored at ``path`` (load-or-compute;
        ``roi_qf``: through the ROI baseline). Real bitstreams, or the estimated rate with a
        real check as ``profile.evaluation`` says (the point's ``rate``)."""
        task = get_task(task)
        real = None if roi_qf is not None else self.profile.evaluation.real_images
        if real is not None:  # the estimated rate: another file than the real bitstreams'
            path = path.with_name(f"{path.stem}-estimate-check{real}.json")
        return load_or_evaluate(
            path,
            lambda: rd_point(
                codec,
                self.machine(task),
                self.datasets.val(task),
                self.device,
                roi_qf=roi_qf,
                real_images=real,
            ),
        )

    def point(
        self,
        task: Task | str,
        variant: str,
        lmbda: float,
        seed: int,
        eval_tasks: tuple[str, ...] | None = None,
        roi: bool = False,
        steps: int | None = None,
    ) -> RunPoint:
        """Train (or load) one codec and evaluate it (or load its evaluation).

        Args:
            eval_tasks: tasks whose val sets score the codec (default: ``task`` only; the MSE
                reference curve of :meth:`grid` is scored on the grid's tasks).
            roi: also evaluate the ROI baseline (QF ``profile.icm.roi_qf``) on detection.
        """
        task = get_task(task)
        every = self.point_validation(variant)
        codec, log, run_dir = self.icm_run(
            task, variant, lmbda, seed, steps=steps, validate_every=every
        )
        record = _run_record(task, variant, lmbda, seed, run_dir, log, val=_val_curve(log))
        record.settings_key = self.settings_key(task, variant, lmbda, seed, steps, every)
        record.foundations = self.stood_on(run_dir, _point_tasks(task, variant, eval_tasks))
        for t in map(get_task, eval_tasks or (task.name,)):
            point = self.evaluate(codec, t, run_dir / f"eval-{t.name}.json")
            record.points.append(point.placed(variant, lmbda, seed))
            if roi and t is DETECTION:
                qf = self.profile.icm.roi_qf
                point = self.evaluate(
                    codec, t, run_dir / f"eval-{t.name}-roi-qf{qf:g}.json", roi_qf=qf
                )
                record.points.append(point.placed("roi", lmbda, seed))
        return RunPoint(record, codec)

    def point_validation(self, variant: str) -> int:
        """The validation cadence :meth:`point` trains ``variant`` with (the MSE reference:
        none)."""
        return self.profile.icm.validate_every if variant != "mse" else 0

    def recorded_point(
        self,
        recorded: Mapping[str, RunRecord],
        task: Task | str,
        variant: str,
        lmbda: float,
        seed: int,
        steps: int | None = None,
        **_point_args,
    ) -> RunRecord | None:
        """The run a results file recorded (``recorded``: run key -> record, e.g.
        :meth:`~icm_lib.results.StudyFile.recorded`) for :meth:`point` with these arguments, where
        this machine's cache lacks the run: what a study or the pilot takes instead of training
        it again after the cache is gone. ``None``: in the cache, not recorded, or recorded on
        other recognizer weights (:meth:`stands_on_ours`)."""
        run_dir = self.point_run_dir(task, variant, lmbda, seed, steps)
        if (run_dir / "codec.pt").is_file():
            return None
        found = recorded.get(run_dir.name)
        used = _point_tasks(task, variant, _point_args.get("eval_tasks"))
        return found if found is None or self.stands_on_ours(found, used) else None

    def point_run_dir(
        self, task: Task | str, variant: str, lmbda: float, seed: int, steps: int | None = None
    ) -> Path:
        """The cache folder :meth:`point` trains this run in (validated as the profile says)."""
        return self.run_dir(task, variant, lmbda, seed, steps, self.point_validation(variant))

    def grid(
        self,
        seeds: list[int],
        tasks: list[str],
        variants: list[str],
        reference_curve: bool = True,
        mse_seed: int = 0,
        steps: int | None = None,
        lambdas: dict[str, tuple[float, ...]] | None = None,
    ) -> Iterator[RunPoint]:
        """Train-or-load and evaluate Iino et al.'s grid, yielding each :class:`RunPoint` in turn:
        the MSE reference curve (``mse_seed``, scored on each of ``tasks``) first, then per seed,
        task, variant and λ (with the ROI evaluation of the detection baselines). The study and
        notebooks 01-02 walk the same grid, so they share their runs; ``lambdas`` (task name ->
        λ) walks part of it (:meth:`tutorial_grid`)."""
        if reference_curve:
            for lmbda in self.profile.icm.mse_lambdas:
                yield self.point(
                    DETECTION, "mse", lmbda, mse_seed, eval_tasks=tuple(tasks), steps=steps
                )
        for seed in seeds:
            for task in map(get_task, tasks):
                grid = self.profile.icm.lambdas(task)
                for variant in variants:
                    for lmbda in grid if lambdas is None else lambdas.get(task.name, grid):
                        yield self.point(
                            task,
                            variant,
                            lmbda,
                            seed,
                            steps=steps,
                            roi=variant == "baseline" and task is DETECTION,
                        )

    def tutorial_grid(self, seed: int, tasks: list[str], variants: list[str]) -> list[RunPoint]:
        """The part of the grid the notebooks train themselves (``profile.tutorial``): its λ per
        task, and the MSE reference curve if it asks for it. Same runs as :meth:`grid`'s."""
        tut, icm = self.profile.tutorial, self.profile.icm
        lambdas = {t: tut.lambdas(t, icm.lambdas(t)) for t in tasks}
        return list(
            self.grid([seed], tasks, variants, tut.mse_curve, mse_seed=seed, lambdas=lambdas)
        )


__all__ = [
    "Experiment",
    "RunPoint",
    "TASKS",
    "VARIANTS",
    "load_or_train_reference_codec",
    "run_config",
]
