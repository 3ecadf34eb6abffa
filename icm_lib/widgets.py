"""An interactive explorer of trained codecs for machines (notebook 05).

Pick a task, a codec (variant and λ), a decoder (as trained, or a PatchGAN-finetuned one where
notebook 04 made them) and a validation image; see the decoded image with the machine's output
on it, where the bits went, the error, and the numbers (bpp from real bytes, PSNR, the task metric
of that image)::

    explorer = Explorer(exp, codecs, finetuned)      # codecs: {(task, variant, λ): ICMCodec}
    explorer.widget()                                # ipywidgets controls + the picture
    view = explorer.view("det", "aux-enc", 0.8, 3)   # the same without a frontend

It only *reads* codecs that were trained before (the notebook loads them): a change of a control
never trains anything, and every view is cached, so going back is instant. A codec the study
recorded (``results/``) but this machine's cache lacks is offered too: choosing it shows the one
command that trains it, and a button that trains it here, with a progress bar
(:meth:`Explorer.train`, the same run and key as the study's).
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass

import matplotlib.pyplot as plt

from . import plots, views
from .metrics import ConfusionMatrix, detection_map, psnr
from .tasks import DETECTION, get_task

#: the decoder choice for "the codec as trained"
AS_TRAINED = "as trained"


def other_world(profile, data_dir, device, seed: int, results_dir, images: int = 8):
    """An :class:`Explorer` of another world's codecs, from the cache only (never trains): that
    profile's experiment and the codecs of its recorded study's seed-``seed`` runs that are
    cached (the others offered with the command that trains them). Raises
    :class:`~icm_lib.errors.NotCachedError` (naming the command) where the world's recognizers
    or reference codec are not cached."""
    from .errors import NotCachedError
    from .experiment import Experiment
    from .results import StudyFile
    from .runtime import cached_only

    command = f"python -m icm_lib.world_check --profile {profile.name}"
    with cached_only(command):
        exp = Experiment.prepare(profile, data_dir, device, progress=False)
    study = StudyFile.find(results_dir, profile.name)
    recorded = sorted(
        {(r.task, r.variant, r.lmbda) for r in (study.runs if study else []) if r.seed == seed}
    )
    codecs = {}
    for task, variant, lmbda in recorded:
        try:
            with cached_only(command):
                codecs[(task, variant, lmbda)] = exp.point(task, variant, lmbda, seed).codec
        except NotCachedError:
            pass  # offered with its train command
    return Explorer(exp, codecs, images=images, recorded=recorded, seed=seed)


@dataclass
class View:
    """One rendered choice: its numbers and the picture (PNG bytes)."""

    numbers: dict
    png: bytes
    seconds: float


class Explorer:
    """Cached codecs of an :class:`~icm_lib.experiment.Experiment`, viewed image by image.

    Args:
        exp: the experiment (validation images, frozen machines).
        codecs: ``{(task, variant, λ): codec}`` of the runs to explore.
        finetuned: ``{(task, variant, λ): {preset: codec}}``: PatchGAN-finetuned decoders of some
            of those codecs (Le et al.), offered as alternative decoders of the same bytes.
        images: how many validation images per task to offer.
        recorded: ``(task, variant, λ)`` of the runs a results file holds (seed ``seed``), offered
            whether or not they are cached here.
        seed: the seed of the codecs (the study's runs of that seed).
    """

    def __init__(
        self,
        exp,
        codecs: dict,
        finetuned: dict | None = None,
        images: int = 8,
        recorded=(),
        seed: int = 0,
    ):
        self.exp, self.codecs, self.finetuned = exp, dict(codecs), finetuned or {}
        self.images, self.seed = images, seed
        self.recorded = {tuple(r) for r in recorded}
        self._cache: dict = {}
        self._originals: dict = {}  # the machine's output on each original image

    # ------------------------------------------------------------------ choices
    def _choices(self) -> set:
        return set(self.codecs) | self.recorded

    def variants(self, task: str) -> list[str]:
        return sorted({v for t, v, _ in self._choices() if t == task})

    def lambdas(self, task: str, variant: str) -> list[float]:
        return sorted(lm for t, v, lm in self._choices() if (t, v) == (task, variant))

    def is_cached(self, task: str, variant: str, lmbda: float) -> bool:
        return (task, variant, lmbda) in self.codecs

    def train_command(self, task: str, variant: str, lmbda: float) -> str:
        """The one command that trains the codec (with the rest of its λ grid; every run is
        load-or-compute, so what is cached is not trained again)."""
        name = self.exp.profile.name
        if variant == "mse":
            return (
                f"python -m icm_lib.study --profile {name} --seeds {self.seed} --tasks {task} "
                "--variants baseline  # the MSE reference curve comes first"
            )
        return (
            f"python -m icm_lib.study --profile {name} --seeds {self.seed} --tasks {task} "
            f"--variants {variant}"
        )

    def train(self, task: str, variant: str, lmbda: float):
        """Train (or load) the codec here: the study's run, same key (:meth:`Experiment.point`,
        with the experiment's progress bar), then offer it."""
        point = self.exp.point(task, variant, lmbda, self.seed)
        self.codecs[(task, variant, lmbda)] = point.codec
        return point.codec

    def decoders(self, task: str, variant: str, lmbda: float) -> list[str]:
        return [AS_TRAINED, *self.finetuned.get((task, variant, lmbda), {})]

    # ------------------------------------------------------------------ rendering
    def view(
        self, task: str, variant: str, lmbda: float, index: int, decoder: str = AS_TRAINED
    ) -> View:
        """The numbers and picture of one choice (computed once, then cached).

        Raises:
            LookupError: the codec is recorded but not cached here (with the command that trains
                it, or :meth:`train`).
        """
        if not self.is_cached(task, variant, lmbda):
            raise LookupError(
                f"the {task} {variant} λ={lmbda:g} codec (seed {self.seed}) is in the results but "
                f"not in this machine's cache: train it with `{self.train_command(task, variant, lmbda)}` "
                "or Explorer.train(...)"
            )
        key = (task, variant, lmbda, index, decoder)
        if key not in self._cache:
            t0 = time.perf_counter()
            numbers, fig = self._render(task, variant, lmbda, index, decoder)
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=80)
            plt.close(fig)
            self._cache[key] = View(numbers, buf.getvalue(), time.perf_counter() - t0)
        return self._cache[key]

    def _render(self, task_name, variant, lmbda, index, decoder):
        task = get_task(task_name)
        encoder = self.codecs[(task.name, variant, lmbda)]
        codec = (
            encoder
            if decoder == AS_TRAINED
            else self.finetuned[(task.name, variant, lmbda)][decoder]
        )
        dataset = self.exp.datasets.val(task)
        image, target = dataset[index]
        machine = self.exp.machine(task)
        # the bytes are the encoder's; a finetuned decoder reads the same ones
        view = views.decoded(encoder, image, machine, decoder=codec)
        x_hat, bits, bpp, on_decoded = view.x_hat, view.bits, view.bpp, view.output
        if (task.name, index) not in self._originals:  # the same for every codec
            self._originals[(task.name, index)] = views.machine_output(machine, image)
        on_original = self._originals[(task.name, index)]
        score = _image_score(task, machine, on_decoded, target)
        numbers = {
            "task": task.name,
            "variant": variant,
            "lmbda": lmbda,
            "index": index,
            "decoder": decoder,
            "bytes": len(view.data),
            "bpp": bpp,
            "psnr": psnr(x_hat[None], image[None]),
            task.metric: score,
        }
        fig, axes = plt.subplots(1, 4, figsize=(12, 3.4))
        names = views.class_names(dataset)
        plots.draw_machine_output(axes[0], image, on_original, task, names, "original + machine")
        plots.draw_machine_output(
            axes[1],
            x_hat,
            on_decoded,
            task,
            names,
            f"decoded ({decoder}): {task.metric_title} {score:.3f}",
        )
        im = axes[2].imshow(bits.numpy(), cmap="viridis")
        axes[2].set_title(f"bits of ŷ: {bpp:.3f} bpp (real bytes)", fontsize=8)
        fig.colorbar(im, ax=axes[2], fraction=0.046)
        axes[3].imshow((x_hat - image).abs().mean(0).numpy(), cmap="magma")
        axes[3].set_title(f"|x̂ − x|: PSNR {numbers['psnr']:.2f} dB", fontsize=8)
        for ax in axes[2:]:
            ax.set_axis_off()
        fig.suptitle(f"{task.title}, {variant} λ={lmbda:g}, val image {index}", fontsize=9)
        fig.tight_layout()
        return numbers, fig

    # ------------------------------------------------------------------ the widget
    def widget(self):
        """ipywidgets controls (task, codec, λ, decoder, image, "next image") above the picture
        and the numbers; every change re-renders from the cache or the cached codecs."""
        import ipywidgets as w

        tasks = sorted({t for t, _, _ in self._choices()})
        task = w.Dropdown(options=tasks, description="task")
        variant = w.Dropdown(description="codec")
        lmbda = w.Dropdown(description="λ")
        decoder = w.Dropdown(description="decoder")
        index = w.IntSlider(0, 0, self.images - 1, description="val image")
        step = w.Button(description="next image ▶")
        picture, numbers = w.Image(format="png"), w.HTML()
        train = w.Button(description="train it here", layout=w.Layout(display="none"))
        progress = w.Output()

        updating = False

        def refresh_choices(*_):
            """Offer what exists for the current task (and codec, and λ), keep what still fits."""
            nonlocal updating
            if updating:
                return
            updating = True
            try:
                for control, choices in (
                    (variant, lambda: self.variants(task.value)),
                    (lmbda, lambda: self.lambdas(task.value, variant.value)),
                    (decoder, lambda: self.decoders(task.value, variant.value, lmbda.value)),
                ):
                    options = choices()
                    keep = control.value if control.value in options else options[0]
                    control.options = options
                    control.value = keep
            finally:
                updating = False
            render()

        def render(*_):
            if updating:
                return
            if not self.is_cached(task.value, variant.value, lmbda.value):
                command = self.train_command(task.value, variant.value, lmbda.value)
                numbers.value = (
                    f"<b>not trained on this machine</b> (the study recorded it): "
                    f"<code>{command}</code>, or train it here"
                )
                picture.value, train.layout.display = b"", None
                return
            train.layout.display = "none"
            v = self.view(task.value, variant.value, lmbda.value, index.value, decoder.value)
            picture.value = v.png
            numbers.value = (
                " · ".join(
                    f"<b>{k}</b> {val:.4g}" if isinstance(val, float) else f"<b>{k}</b> {val}"
                    for k, val in v.numbers.items()
                )
                + f" · rendered in {v.seconds:.2f} s"
            )

        for control in (task, variant, lmbda):
            control.observe(refresh_choices, "value")
        for control in (decoder, index):
            control.observe(render, "value")
        step.on_click(lambda _: setattr(index, "value", (index.value + 1) % self.images))

        def train_here(_):
            train.disabled = True
            with progress:  # the experiment's progress bar shows here
                self.train(task.value, variant.value, lmbda.value)
            train.disabled = False
            render()

        train.on_click(train_here)
        refresh_choices()
        return w.VBox(
            [
                w.HBox([task, variant, lmbda]),
                w.HBox([decoder, index, step]),
                numbers,
                train,
                progress,
                picture,
            ]
        )


def _image_score(task, machine, prediction, target) -> float:
    """The task metric of one image against its ground truth."""
    if task is DETECTION:
        return detection_map([prediction], [target])["map"]
    cm = ConfusionMatrix(machine.num_classes)
    cm.update(prediction, target)
    return cm.miou()


__all__ = ["AS_TRAINED", "Explorer", "View"]
