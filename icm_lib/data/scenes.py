"""The embedded default dataset: seeded procedural scenes with objects over background classes.

Every pixel belongs to a class, as in Pascal-Context: the upper part of a scene is sky or a brick
wall, the lower part one or two of grass, water and ground (textures cut from photos scikit-image
ships, tinted), and 2-6 objects of six shapes (ball, box, tent, star, ring, cross) in random
colours, sizes, rotations and fills are painted over it, later ones occluding earlier ones.

One call of :func:`generate_scene` returns the image and its exact annotations; :mod:`.embedded`
writes many of them as a COCO detection set and a Pascal-Context-layout segmentation set.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from functools import cache

import numpy as np
from scipy import ndimage
from skimage import data as skdata
from skimage.draw import polygon as draw_polygon

THING_CLASSES = ("ball", "box", "tent", "star", "ring", "cross")
STUFF_CLASSES = ("sky", "grass", "water", "wall", "ground")
#: segmentation classes in label-PNG order (PNG value = index + 1; 0 = unlabeled)
SEG_CLASSES = THING_CLASSES + STUFF_CLASSES


@dataclass
class SceneObject:
    """One painted object: class index into THING_CLASSES and its visible mask."""

    category: int
    mask: np.ndarray  # (H, W) bool, visible part


@cache
def _texture(name: str) -> np.ndarray:
    """A grayscale photo texture in [0, 1] (shipped with scikit-image, no download)."""
    img = getattr(skdata, name)().astype(np.float32)
    return (img - img.min()) / max(1e-6, float(img.max() - img.min()))


def _tile(tex: np.ndarray, h: int, w: int, rng: np.random.Generator, scale: float) -> np.ndarray:
    th, tw = tex.shape
    zoom = scale * rng.uniform(0.7, 1.3)
    need_h, need_w = int(np.ceil(h / zoom)) + 1, int(np.ceil(w / zoom)) + 1
    reps = (need_h // th + 2, need_w // tw + 2)
    big = np.tile(tex, reps)
    y0, x0 = rng.integers(0, th), rng.integers(0, tw)
    crop = big[y0 : y0 + need_h, x0 : x0 + need_w]
    out = ndimage.zoom(crop, zoom, order=1)[:h, :w]
    return out


def _tint(gray: np.ndarray, rgb: tuple[float, float, float], contrast: float) -> np.ndarray:
    base = np.array(rgb, dtype=np.float32)
    g = (gray - gray.mean()) * contrast
    return np.clip(base[None, None, :] * (1 + g[..., None]), 0, 1)


def _background(name: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    yy = np.linspace(0, 1, h, dtype=np.float32)[:, None]
    if name == "sky":
        top = np.array([0.35, 0.55, 0.9]) * rng.uniform(0.85, 1.1)
        bottom = np.array([0.75, 0.85, 0.97])
        img = top[None, None] * (1 - yy[..., None]) + bottom[None, None] * yy[..., None]
        clouds = ndimage.gaussian_filter(rng.random((h, w)).astype(np.float32), sigma=h / 10)
        clouds = np.clip((clouds - clouds.mean()) * 8, 0, 1)[..., None]
        return np.clip(img * (1 - clouds) + clouds * 0.97, 0, 1).astype(np.float32)
    if name == "water":
        xx = np.linspace(0, 1, w, dtype=np.float32)[None, :]
        f = rng.uniform(20, 40)
        waves = np.sin(2 * np.pi * (f * yy + 3 * xx * rng.uniform(-1, 1)) + rng.uniform(0, 6))
        gray = 0.5 + 0.25 * waves + 0.1 * rng.standard_normal((h, w)).astype(np.float32)
        return _tint(gray, (0.1, 0.3 + 0.1 * rng.random(), 0.55), 0.5)
    texture, rgb, scale, contrast = {
        "grass": ("grass", (0.25, 0.55, 0.15), 0.5, 0.9),
        "wall": ("brick", (0.6, 0.35, 0.25), 0.5, 0.7),
        "ground": ("gravel", (0.5, 0.45, 0.38), 0.5, 0.8),
    }[name]
    jitter = tuple(np.clip(c * rng.uniform(0.85, 1.15), 0, 1) for c in rgb)
    return _tint(_tile(_texture(texture), h, w, rng, scale), jitter, contrast)


def _wavy_boundary(w: int, level: float, amp: float, rng: np.random.Generator) -> np.ndarray:
    x = np.arange(w, dtype=np.float32)
    freq = rng.uniform(0.5, 2.5) * 2 * np.pi / w
    return level + amp * np.sin(freq * x + rng.uniform(0, 6))


def _shape_mask(
    kind: str,
    h: int,
    w: int,
    cy: float,
    cx: float,
    r: float,
    angle: float,
    rng: np.random.Generator,
) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "ball":
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
    if kind == "ring":
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        return (d2 <= r**2) & (d2 >= (0.55 * r) ** 2)
    if kind == "box":
        aspect = rng.uniform(0.6, 1.0)
        pts = np.array([[-1, -aspect], [1, -aspect], [1, aspect], [-1, aspect]]) * r * 0.9
    elif kind == "tent":
        pts = np.array([[0, -1.0], [0.95, 0.75], [-0.95, 0.75]]) * r
    elif kind == "star":
        ang = np.arange(10) * np.pi / 5 - np.pi / 2
        rad = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        pts = np.stack([np.cos(ang) * rad, np.sin(ang) * rad], 1) * r
    elif kind == "cross":
        a, b = 1.0, 0.33
        pts = (
            np.array(
                [
                    [-b, -a],
                    [b, -a],
                    [b, -b],
                    [a, -b],
                    [a, b],
                    [b, b],
                    [b, a],
                    [-b, a],
                    [-b, b],
                    [-a, b],
                    [-a, -b],
                    [-b, -b],
                ]
            )
            * r
        )
    else:
        raise ValueError(kind)
    c, s = np.cos(angle), np.sin(angle)
    rot = pts @ np.array([[c, s], [-s, c]])
    mask = np.zeros((h, w), dtype=bool)
    rr, cc = draw_polygon(rot[:, 1] + cy, rot[:, 0] + cx, shape=(h, w))
    mask[rr, cc] = True
    return mask


def _fill(h: int, w: int, rng: np.random.Generator, cy: float, cx: float, r: float) -> np.ndarray:
    hue = rng.random()
    rgb = np.array(
        colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.55, 1.0)), dtype=np.float32
    )
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    style = rng.integers(0, 3)
    if style == 0:  # shaded (light from the top-left)
        shade = 1.0 - 0.35 * np.clip(((yy - cy) + (xx - cx)) / (2 * r + 1e-6) + 0.5, 0, 1)
        return np.clip(rgb[None, None] * shade[..., None], 0, 1)
    if style == 1:  # stripes of a second colour
        rgb2 = np.array(colorsys.hsv_to_rgb((hue + 0.5) % 1, 0.6, 0.9), dtype=np.float32)
        period = max(3.0, r / rng.uniform(1.5, 3.0))
        theta = rng.uniform(0, np.pi)
        stripes = np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period) > 0
        return np.where(stripes[..., None], rgb[None, None], rgb2[None, None])
    noise = ndimage.gaussian_filter(rng.standard_normal((h, w)).astype(np.float32), 1.5)
    return np.clip(rgb[None, None] * (1 + 0.25 * noise[..., None]), 0, 1)


def layout_regions(
    upper: str, lower: list[str], horizon: np.ndarray, h: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Stuff regions of an ``h``-row scene: ``upper`` above the ``horizon`` (one row index per
    column), one or two ``lower`` classes below it, two split by a slanted line.

    Returns:
        class name -> (h, len(horizon)) bool mask.
    """
    w = len(horizon)
    yy, xx = np.mgrid[0:h, 0:w]
    region_upper = yy < horizon[None, :]
    regions = {upper: region_upper}
    if len(lower) == 1:
        regions[lower[0]] = ~region_upper
    else:
        split = rng.uniform(0.3, 0.7) * w + (yy - h) * rng.uniform(-0.8, 0.8)
        regions[lower[0]] = ~region_upper & (xx < split)
        regions[lower[1]] = ~region_upper & (xx >= split)
    return regions


def paint_over(
    painted: list[tuple[int, np.ndarray]], category: int, mask: np.ndarray
) -> list[tuple[int, np.ndarray]]:
    """The objects painted so far, occluded by a new one of ``category`` over ``mask``."""
    return [(c, m & ~mask) for c, m in painted] + [(category, mask)]


def visible_objects(painted: list[tuple[int, np.ndarray]], min_visible_px: int) -> list:
    """The painted objects whose visible part is at least ``min_visible_px`` (annotated)."""
    return [SceneObject(c, m) for c, m in painted if m.sum() >= min_visible_px]


def generate_scene(
    size: int,
    rng: np.random.Generator,
    min_objects: int = 2,
    max_objects: int = 6,
    min_visible_px: int = 30,
):
    """One scene.

    Args:
        size: side of the square image.
        rng: a seeded NumPy generator (the scene is a pure function of its state).

    Returns:
        image (size, size, 3) uint8; label (size, size) uint8 with values 1..len(SEG_CLASSES);
        objects: list of :class:`SceneObject` with visible masks (objects whose visible part is
        smaller than ``min_visible_px`` are painted but not annotated as instances).
    """
    h = w = size
    label = np.zeros((h, w), dtype=np.uint8)
    image = np.zeros((h, w, 3), dtype=np.float32)
    seg_id = {name: i + 1 for i, name in enumerate(SEG_CLASSES)}

    upper = "sky" if rng.random() < 0.7 else "wall"
    horizon = _wavy_boundary(w, rng.uniform(0.25, 0.6) * h, rng.uniform(0, 0.06) * h, rng)
    lower = list(rng.choice(["grass", "water", "ground"], size=rng.integers(1, 3), replace=False))
    regions = layout_regions(upper, lower, horizon, h, rng)
    for name, region in regions.items():
        tex = _background(name, h, w, rng)
        image[region] = tex[region]
        label[region] = seg_id[name]

    n = int(rng.integers(min_objects, max_objects + 1))
    painted: list[tuple[int, np.ndarray]] = []
    for _ in range(n):
        cat = int(rng.integers(0, len(THING_CLASSES)))
        r = rng.uniform(0.07, 0.2) * size
        cy, cx = rng.uniform(r * 0.6, h - r * 0.6), rng.uniform(r * 0.6, w - r * 0.6)
        mask = _shape_mask(THING_CLASSES[cat], h, w, cy, cx, r, rng.uniform(0, 2 * np.pi), rng)
        if mask.sum() < min_visible_px:
            continue
        image[mask] = _fill(h, w, rng, cy, cx, r)[mask]
        label[mask] = seg_id[THING_CLASSES[cat]]
        painted = paint_over(painted, cat, mask)
    objects = visible_objects(painted, min_visible_px)

    image = ndimage.gaussian_filter(image, sigma=(0.6, 0.6, 0))  # optics: soften hard edges
    image += rng.normal(0, 0.01, image.shape).astype(np.float32)  # sensor noise
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8), label, objects
