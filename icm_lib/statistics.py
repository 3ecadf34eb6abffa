"""Paired statistics of R-D claims: per-seed effects, a two-level bootstrap, and a verdict.

A claim such as "the auxiliary branch saves bits at equal accuracy" is tested the same way for
every study (the analysis plan in ``results/`` names the estimator, margin and seeds first):

1. **Paired per-seed effect.** For each seed, the test curve (e.g. ``aux-enc``) against the same
   seed's anchor curve (``baseline``): the strict BD-rate (:func:`bd_rate_effect`, percent; may be
   undefined when a curve is not monotonic) or the metric difference at equal rate
   (:func:`equal_rate_delta`: the mean of test − anchor over the overlap of their log-bpp ranges,
   each curve linear in log-bpp), which stays defined when a curve flattens. Pairing removes the
   variance a seed's data order puts into both curves alike.
2. **Two-level bootstrap** (:func:`two_level_bootstrap`): resample seeds with replacement and,
   within one replicate, the val images with replacement -- the same images for every run, since
   every run is scored on the same val set, whose sampling error is a bias shared by all runs and
   invisible in the seed spread. Each resampled point is recomputed from per-image records (bits
   and metric contributions, :class:`~icm_lib.results.ImageRecords`), so the interval covers both
   sources of noise.
3. **Verdict** (:func:`verdict`): ``effect`` (the interval excludes 0), ``equivalent`` (the
   interval lies inside the margins declared in advance) or ``unresolved`` -- with the interval's
   width and the seeds a t-interval would need at the observed spread.

A curve here is a list of points ``(bpp, metric)``; a *resamplable* point is anything with
``bits``, ``pixels`` (per image) and ``metric(indices)`` (the dataset metric over an image
resample), as :class:`~icm_lib.results.ImageRecords` has.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import numpy as np
from scipy import stats as _st

from .errors import BDRateError

Curve = Sequence[tuple[float, float]]  # (bpp, metric) per point
Estimator = Callable[[Curve, Curve], float | None]  # (anchor, test) -> effect or None


class Resamplable(Protocol):
    bits: Sequence[float]
    pixels: Sequence[int]

    def metric(self, images: Sequence[int] | None = None) -> float | None: ...


def equal_rate_delta(anchor: Curve, test: Curve) -> float | None:
    """Mean metric difference test − anchor over the overlap of the two curves' log-bpp ranges,
    each curve piecewise linear in log-bpp (points sorted by rate). ``None`` without overlap."""
    a, t = sorted(anchor), sorted(test)
    if len(a) < 2 or len(t) < 2:
        return None
    lo = max(math.log(a[0][0]), math.log(t[0][0]))
    hi = min(math.log(a[-1][0]), math.log(t[-1][0]))
    if not hi > lo:
        return None
    grid = np.linspace(lo, hi, 257)
    return float(np.mean(_in_log_bpp(t, grid) - _in_log_bpp(a, grid)))


def _in_log_bpp(points: Curve, log_bpp: np.ndarray) -> np.ndarray:
    """The metric of the curve ``points`` (sorted by rate), piecewise linear in log-bpp, at
    ``log_bpp`` (inside its range)."""
    return np.interp(log_bpp, [math.log(b) for b, _ in points], [m for _, m in points])


def metric_at_rate(curve: Curve, bpp: float) -> float | None:
    """The metric the curve reaches at ``bpp`` (piecewise linear in log-bpp, as
    :func:`equal_rate_delta` reads curves); ``None`` outside its range of rates."""
    c = sorted(curve)
    if len(c) < 2 or not c[0][0] <= bpp <= c[-1][0]:
        return None
    return float(_in_log_bpp(c, np.asarray([math.log(bpp)]))[0])


def bd_rate_effect(anchor: Curve, test: Curve, front: bool = False) -> float | None:
    """The BD-rate (%) of ``test`` against ``anchor`` (:func:`icm_lib.metrics.bd_rate`), or
    ``None`` where it is undefined (too few points, a non-monotonic curve, no overlap)."""
    from .metrics import bd_rate

    try:
        return bd_rate(
            [b for b, _ in anchor],
            [m for _, m in anchor],
            [b for b, _ in test],
            [m for _, m in test],
            front=front,
        )
    except BDRateError:
        return None


ESTIMATORS: dict[str, Estimator] = {
    "bd_rate": bd_rate_effect,
    "bd_rate_front": lambda a, t: bd_rate_effect(a, t, front=True),
    "equal_rate_delta": equal_rate_delta,
}


def t_interval(values: Sequence[float | None], confidence: float = 0.95) -> dict:
    """Mean, SD and the Student-t interval (``half`` width, ``lo``, ``hi``) of the finite
    ``values`` (``None`` and non-finite ones are left out; ``None`` where undefined: no value,
    or one value's spread)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], float)
    n = len(v)
    out = {"n": n, "mean": None, "sd": None, "half": None, "lo": None, "hi": None}
    if n == 0:
        return out
    out["mean"] = float(v.mean())
    if n < 2:
        return out
    sd = float(v.std(ddof=1))
    half = float(_st.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n))
    return out | {"sd": sd, "half": half, "lo": out["mean"] - half, "hi": out["mean"] + half}


def seeds_needed(
    sd: float | None, target: float, confidence: float = 0.95, max_n: int = 1000
) -> int | None:
    """The smallest number of seeds whose t-interval half-width at spread ``sd`` is below
    ``target`` (``None`` if none up to ``max_n``, or no spread to go on)."""
    if sd is None or not target > 0:
        return None
    if sd == 0:
        return 2
    for n in range(2, max_n + 1):
        if float(_st.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n) < target:
            return n
    return None


def paired_effects(
    anchor_by_seed: Mapping[int, Curve], test_by_seed: Mapping[int, Curve], estimator: Estimator
) -> dict[int, float | None]:
    """The estimator per seed, test against the same seed's anchor (seeds both hold)."""
    seeds = sorted(set(anchor_by_seed) & set(test_by_seed))
    return {s: estimator(anchor_by_seed[s], test_by_seed[s]) for s in seeds}


def resampled_curve(points: Sequence[Resamplable], images: np.ndarray | None) -> list:
    """``(bpp, metric)`` of each point over the image resample ``images`` (indices)."""
    out = []
    for p in points:
        bits, pixels = np.asarray(p.bits, float), np.asarray(p.pixels, float)
        if images is not None:
            bits, pixels = bits[images], pixels[images]
        metric = p.metric(None if images is None else images.tolist())
        out.append((float(bits.sum() / pixels.sum()), float("nan") if metric is None else metric))
    return out


def two_level_bootstrap(
    anchor_by_seed: Mapping[int, Sequence[Resamplable]],
    test_by_seed: Mapping[int, Sequence[Resamplable]],
    estimator: Estimator,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    resample_images: bool = True,
) -> dict:
    """Percentile interval of the mean paired effect over seeds × images.

    Each replicate draws the seeds with replacement and one image resample (with replacement)
    that every run of the replicate shares, recomputes every point from its per-image records,
    and averages the paired effect over the drawn seeds. A replicate in which the estimator is
    undefined for every drawn seed is dropped and counted; where more than one tail's share
    ((1 − confidence) / 2, 2.5 %) of the replicates is dropped, there is no interval
    (``lo`` = ``hi`` = ``None``): a percentile of the few defined replicates would be an
    interval conditioned on the rare resamples whose curves happen to rise (analysis plan,
    amendment 5).

    Args:
        anchor_by_seed, test_by_seed: per seed, the curve's points (resamplable, one per λ).
        estimator: ``(anchor_curve, test_curve) -> effect | None``.
        resample_images: ``False`` resamples seeds only (the seed level alone).

    Returns:
        ``{"estimate", "lo", "hi", "n_boot", "undefined", "seeds"}``: the estimate is the mean
        paired effect on the full data.
    """
    seeds = sorted(set(anchor_by_seed) & set(test_by_seed))
    if not seeds:
        raise ValueError("no seed holds both curves")
    n_images = len(anchor_by_seed[seeds[0]][0].bits)
    full = paired_effects(
        {s: resampled_curve(anchor_by_seed[s], None) for s in seeds},
        {s: resampled_curve(test_by_seed[s], None) for s in seeds},
        estimator,
    )
    defined = [v for v in full.values() if v is not None]
    rng = np.random.default_rng(seed)
    values, undefined = [], 0
    for _ in range(n_boot):
        drawn = rng.choice(seeds, size=len(seeds), replace=True)
        images = rng.integers(0, n_images, n_images) if resample_images else None
        cache: dict[int, float | None] = {}
        effects = []
        for s in drawn:
            if s not in cache:
                cache[s] = estimator(
                    resampled_curve(anchor_by_seed[s], images),
                    resampled_curve(test_by_seed[s], images),
                )
            if cache[s] is not None and math.isfinite(cache[s]):
                effects.append(cache[s])
        if effects:
            values.append(float(np.mean(effects)))
        else:
            undefined += 1
    alpha = (1 - confidence) / 2
    lo, hi = (
        (float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha)))
        if values and undefined <= alpha * n_boot
        else (None, None)
    )
    return {
        "estimate": float(np.mean(defined)) if defined else None,
        "lo": lo,
        "hi": hi,
        "n_boot": n_boot,
        "undefined": undefined,
        "seeds": seeds,
        "per_seed": full,
    }


def verdict(
    lo: float | None,
    hi: float | None,
    margin: float,
    sd: float | None = None,
    estimate: float | None = None,
) -> dict:
    """``effect`` when [lo, hi] excludes 0, ``equivalent`` when it lies inside (−margin,
    margin), else ``unresolved``; with the interval's width and, from the per-seed spread
    ``sd``, the seeds a t-interval would need to reach either verdict at this estimate."""
    if lo is None or hi is None:
        return {
            "verdict": "unresolved",
            "width": None,
            "seeds_needed": None,
            "why": "the interval is undefined",
        }
    width = hi - lo
    if lo > 0 or hi < 0:
        kind = "effect"
    elif -margin < lo and hi < margin:
        kind = "equivalent"
    else:
        kind = "unresolved"
    out = {"verdict": kind, "width": width, "margin": margin, "seeds_needed": None}
    if kind == "unresolved" and estimate is not None:
        for_effect = seeds_needed(sd, abs(estimate))
        for_equivalence = seeds_needed(sd, margin - abs(estimate))
        options = [n for n in (for_effect, for_equivalence) if n is not None]
        out["seeds_needed"] = min(options) if options else None
    return out
