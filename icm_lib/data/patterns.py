"""The *patterns* world: embedded scenes where a machine needs bits that cost something.

In the *shapes* world (:mod:`.scenes`) an object's class is its silhouette and stuff classes differ
by colour: a codec can drop every texture and the machine still sees everything it needs, so
nothing competes for bits. Here the task-relevant information is carried by fine detail, beside
task-irrelevant detail in the same frequency band:

* **Things** (detection and segmentation): six classes = stripe period {4, 6.5, 10} px x
  orientation {horizontal, vertical}, drawn inside a silhouette chosen independently of the class
  (the six shapes of the shapes world), in a saturated random colour, 20-52 px across. Where an
  object is costs few bits (a colour blob); *which* object it is costs the bits of its stripes.
* **Stuff** (segmentation): five classes that share one colour distribution and differ only in
  texture: ``plain`` (smooth shading) and stripes at 0, 45, 90 and 135 degrees with a random
  period of 3.5-9 px.
* **Clutter** (task-irrelevant, same band): isotropic band-pass noise with most of its energy at
  periods of 3-9 px over every region, things included, plus a few unlabelled decoy patches with
  stripes at random orientations and periods in muted colours.

A codec that keeps what a machine needs must therefore keep oriented stripes where the machine
looks and may drop the isotropic clutter and the decoys -- and an MSE codec, which cannot tell
them apart, spends its bits on all of it. :func:`generate_pattern_scene` has the signature and
return values of :func:`.scenes.generate_scene`.
"""

from __future__ import annotations

import colorsys

import numpy as np
from scipy import ndimage

from .scenes import _shape_mask, _wavy_boundary, layout_regions, paint_over, visible_objects

SHAPES = ("ball", "box", "tent", "star", "ring", "cross")
#: thing classes: (stripe period in px, stripe orientation in degrees; 0 = horizontal stripes)
THING_PATTERNS = {
    "fine-h": (4.0, 0.0),
    "fine-v": (4.0, 90.0),
    "medium-h": (6.5, 0.0),
    "medium-v": (6.5, 90.0),
    "coarse-h": (10.0, 0.0),
    "coarse-v": (10.0, 90.0),
}
THING_CLASSES = tuple(THING_PATTERNS)
#: stuff classes: stripe orientation in degrees (None: smooth shading, no stripes)
STUFF_PATTERNS = {
    "plain": None,
    "stripes-0": 0.0,
    "stripes-45": 45.0,
    "stripes-90": 90.0,
    "stripes-135": 135.0,
}
STUFF_CLASSES = tuple(STUFF_PATTERNS)
#: segmentation classes in label-PNG order (PNG value = index + 1; 0 = unlabeled)
SEG_CLASSES = THING_CLASSES + STUFF_CLASSES


def _stripes(h: int, w: int, period: float, degrees: float, rng: np.random.Generator) -> np.ndarray:
    """A sinusoidal grating in [-1, 1]; ``degrees`` = 0 gives horizontal stripes."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    theta = np.deg2rad(degrees)
    # the wave travels across the stripes: along y for horizontal stripes
    phase = (yy * np.cos(theta) + xx * np.sin(theta)) * (2 * np.pi / period)
    return np.sin(phase + rng.uniform(0, 2 * np.pi)).astype(np.float32)


def _clutter(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Isotropic band-pass noise (difference of Gaussians, periods ~3-9 px), unit std."""
    white = rng.standard_normal((h, w)).astype(np.float32)
    band = ndimage.gaussian_filter(white, 0.7) - ndimage.gaussian_filter(white, 1.8)
    return band / max(1e-6, float(band.std()))


def _muted_colour(rng: np.random.Generator) -> np.ndarray:
    rgb = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.05, 0.3), rng.uniform(0.35, 0.75))
    return np.array(rgb, dtype=np.float32)


def _stuff(name: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """One stuff region's texture (h, w, 3): the class is the orientation, never the colour."""
    base = _muted_colour(rng)
    yy = np.linspace(-0.5, 0.5, h, dtype=np.float32)[:, None]
    xx = np.linspace(-0.5, 0.5, w, dtype=np.float32)[None, :]
    a = rng.uniform(0, 2 * np.pi)
    shade = 1 + 0.25 * (np.cos(a) * yy + np.sin(a) * xx)
    gray = shade.astype(np.float32)
    orientation = STUFF_PATTERNS[name]
    if orientation is not None:
        degrees = orientation + rng.uniform(-5, 5)
        gray = gray + rng.uniform(0.15, 0.3) * _stripes(h, w, rng.uniform(3.5, 9.0), degrees, rng)
    return np.clip(base[None, None] * gray[..., None], 0, 1)


def generate_pattern_scene(
    size: int,
    rng: np.random.Generator,
    min_objects: int = 2,
    max_objects: int = 5,
    min_visible_px: int = 30,
):
    """One scene of the patterns world.

    Args:
        size: side of the square image.
        rng: a seeded NumPy generator (the scene is a pure function of its state).

    Returns:
        image (size, size, 3) uint8; label (size, size) uint8 with values 1..len(SEG_CLASSES);
        objects: list of :class:`~icm_lib.data.scenes.SceneObject` with visible masks (objects
        whose visible part is under ``min_visible_px`` are painted but not annotated).
    """
    h = w = size
    label = np.zeros((h, w), dtype=np.uint8)
    image = np.zeros((h, w, 3), dtype=np.float32)
    seg_id = {name: i + 1 for i, name in enumerate(SEG_CLASSES)}

    # stuff: two or three regions split by wavy boundaries, classes drawn without repeats
    names = list(rng.choice(STUFF_CLASSES, size=int(rng.integers(2, 4)), replace=False))
    horizon = _wavy_boundary(w, rng.uniform(0.3, 0.6) * h, rng.uniform(0, 0.06) * h, rng)
    regions = layout_regions(names[0], names[1:], horizon, h, rng)
    for name, region in regions.items():
        image[region] = _stuff(name, h, w, rng)[region]
        label[region] = seg_id[name]

    # decoys: unlabelled stripe patches in muted colours, any orientation and period
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(int(rng.integers(1, 4))):
        r = rng.uniform(0.04, 0.1) * size
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        grating = _stripes(h, w, rng.uniform(3.0, 11.0), rng.uniform(0, 180), rng)
        patch = _muted_colour(rng)[None, None] * (1 + 0.25 * grating[..., None])
        image[mask] = np.clip(patch, 0, 1)[mask]

    n = int(rng.integers(min_objects, max_objects + 1))
    painted: list[tuple[int, np.ndarray]] = []
    for _ in range(n):
        cat = int(rng.integers(0, len(THING_CLASSES)))
        period, orientation = THING_PATTERNS[THING_CLASSES[cat]]
        r = rng.uniform(0.04, 0.1) * size
        cy, cx = rng.uniform(r * 0.6, h - r * 0.6), rng.uniform(r * 0.6, w - r * 0.6)
        shape = SHAPES[int(rng.integers(0, len(SHAPES)))]
        mask = _shape_mask(shape, h, w, cy, cx, r, rng.uniform(0, 2 * np.pi), rng)
        if mask.sum() < min_visible_px:
            continue
        hue = rng.random()
        rgb = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.6, 0.95)))
        grating = _stripes(
            h, w, period * rng.uniform(0.93, 1.07), orientation + rng.uniform(-8, 8), rng
        )
        fill = rgb.astype(np.float32)[None, None] * (1 + 0.3 * grating[..., None])
        image[mask] = np.clip(fill, 0, 1)[mask]
        label[mask] = seg_id[THING_CLASSES[cat]]
        painted = paint_over(painted, cat, mask)
    objects = visible_objects(painted, min_visible_px)

    image += 0.06 * _clutter(h, w, rng)[..., None]  # task-irrelevant, same band as the stripes
    image = ndimage.gaussian_filter(image, sigma=(0.6, 0.6, 0))  # optics
    image += rng.normal(0, 0.01, image.shape).astype(np.float32)  # sensor noise
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8), label, objects
