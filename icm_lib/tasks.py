"""The two machine tasks of Iino et al. as a type: object detection and semantic segmentation.

A :class:`Task` names what differs between the two wherever the code must choose: the key of
profiles, run folders and results (``det`` / ``seg``), the task metric of its R-D curves, and
its title. Functions take a ``Task`` or its name (:func:`get_task`).
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError


@dataclass(frozen=True)
class Task:
    """One machine task.

    Attributes:
        name: ``"det"`` or ``"seg"``: the key in profiles, run folders and result files.
        title: for figures and prose.
        metric: the key of the task metric in R-D points (``map``: COCO mAP@[.5:.95];
            ``miou``: mean IoU).
        metric_title: how figures label it.
    """

    name: str
    title: str
    metric: str
    metric_title: str

    def __str__(self) -> str:
        return self.name


DETECTION = Task("det", "detection", "map", "mAP")
SEGMENTATION = Task("seg", "segmentation", "miou", "mIoU")
TASKS: dict[str, Task] = {t.name: t for t in (DETECTION, SEGMENTATION)}


def get_task(task: Task | str) -> Task:
    """The :class:`Task` of ``task`` (a Task or its name).

    Raises:
        ValueError: an unknown name.
    """
    if isinstance(task, Task):
        return task
    if task not in TASKS:
        raise ConfigError(f"task must be one of {sorted(TASKS)}, got {task!r}")
    return TASKS[task]


__all__ = ["Task", "DETECTION", "SEGMENTATION", "TASKS", "get_task"]
