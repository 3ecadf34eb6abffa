"""The paired statistics against cases computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from icm_lib.statistics import (
    bd_rate_effect,
    equal_rate_delta,
    metric_at_rate,
    paired_effects,
    seeds_needed,
    t_interval,
    two_level_bootstrap,
    verdict,
)


class Point:
    """A resamplable point: per-image bits and pixels, metric = mean of per-image scores."""

    def __init__(self, bits, scores, pixels=100):
        self.bits = list(bits)
        self.pixels = [pixels] * len(self.bits)
        self.scores = np.asarray(scores, float)

    def metric(self, images=None):
        return float(self.scores.mean() if images is None else self.scores[images].mean())


def test_equal_rate_delta_by_hand():
    anchor = [(0.1, 0.5), (0.4, 0.7)]
    assert equal_rate_delta(anchor, [(b, m + 0.02) for b, m in anchor]) == pytest.approx(0.02)
    # linear in log-bpp: the mean over the overlap [ln .2, ln .4] is the value at its middle,
    # anchor 0.5 + 0.2 * 0.75 = 0.65, test 0.6 + 0.3 * 0.25 = 0.675
    assert equal_rate_delta(anchor, [(0.2, 0.6), (0.8, 0.9)]) == pytest.approx(0.025, abs=1e-9)
    assert equal_rate_delta(anchor, [(0.5, 0.6), (0.8, 0.9)]) is None  # no overlap
    # the order of the points does not matter
    assert equal_rate_delta(anchor[::-1], [(0.8, 0.9), (0.2, 0.6)]) == pytest.approx(0.025)


def test_metric_at_rate_is_linear_in_log_bpp_inside_the_curve_only():
    anchor = [(0.4, 0.7), (0.1, 0.5)]  # any order
    assert metric_at_rate(anchor, 0.2) == pytest.approx(0.6)  # halfway in log-bpp
    assert metric_at_rate(anchor, 0.1) == pytest.approx(0.5)
    assert metric_at_rate(anchor, 0.05) is None and metric_at_rate(anchor, 0.41) is None
    assert metric_at_rate([(0.1, 0.5)], 0.1) is None  # one point is no curve


def test_bd_rate_effect_half_the_rate():
    anchor = [(0.1, 0.4), (0.2, 0.5), (0.4, 0.58), (0.8, 0.63)]
    test = [(b / 2, m) for b, m in anchor]
    assert bd_rate_effect(anchor, test) == pytest.approx(-50.0, abs=1e-6)
    flat = [(0.1, 0.4), (0.2, 0.5), (0.4, 0.49), (0.8, 0.63)]
    assert bd_rate_effect(anchor, flat) is None  # not monotonic: undefined, not an error


def test_t_interval_and_seeds_needed_by_hand():
    t = t_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, 2) * sd / sqrt(n), sd = 1
    assert (t["mean"], t["sd"]) == (2.0, 1.0)
    assert (t["lo"], t["hi"]) == pytest.approx((2 - half, 2 + half))
    assert t_interval([None, 4.0])["n"] == 1
    # sd 1, target 1: t(.975, 5) / sqrt(6) = 1.0497 > 1, t(.975, 6) / sqrt(7) = 0.9248 < 1
    assert seeds_needed(1.0, 1.0) == 7
    assert seeds_needed(None, 1.0) is None


def test_verdicts():
    assert verdict(0.5, 2.0, margin=5)["verdict"] == "effect"
    assert verdict(-3.0, -0.1, margin=5)["verdict"] == "effect"
    assert verdict(-2.0, 3.0, margin=5)["verdict"] == "equivalent"
    v = verdict(-8.0, 3.0, margin=5, sd=4.0, estimate=-1.5)
    assert v["verdict"] == "unresolved" and v["width"] == 11.0
    # the fewer of: seeds to show |−1.5| ≠ 0 at sd 4 (half-width < 1.5), seeds to fit inside
    # ±5 around it (half-width < 3.5)
    assert seeds_needed(4.0, 3.5) < seeds_needed(4.0, 1.5)
    assert v["seeds_needed"] == seeds_needed(4.0, 3.5)
    assert verdict(None, None, margin=1)["verdict"] == "unresolved"


def test_paired_effects_pairs_by_seed():
    a = {0: [(0.1, 0.5), (0.4, 0.7)], 1: [(0.1, 0.4), (0.4, 0.6)], 2: [(0.1, 0.1), (0.2, 0.2)]}
    t = {0: [(0.1, 0.6), (0.4, 0.8)], 1: [(0.1, 0.45), (0.4, 0.65)]}
    got = paired_effects(a, t, equal_rate_delta)
    assert set(got) == {0, 1}
    assert got[0] == pytest.approx(0.1) and got[1] == pytest.approx(0.05)


def test_two_level_bootstrap_seed_level_by_hand():
    """Two seeds with effects 1 and 3 on every image: the replicate mean is 1, 2 or 3 with
    probabilities 1/4, 1/2, 1/4, so the 95 % interval is [1, 3] and the estimate 2."""
    n = 20
    bits = np.full(n, 50.0)
    anchor = {s: [Point(bits, np.zeros(n)), Point(bits * 4, np.ones(n))] for s in (0, 1)}
    test = {
        s: [Point(bits, np.zeros(n) + d), Point(bits * 4, np.ones(n) + d)]
        for s, d in ((0, 1.0), (1, 3.0))
    }
    out = two_level_bootstrap(anchor, test, equal_rate_delta, n_boot=2000, seed=1)
    assert out["estimate"] == pytest.approx(2.0)
    assert (out["lo"], out["hi"]) == pytest.approx((1.0, 3.0))
    assert out["per_seed"] == pytest.approx({0: 1.0, 1: 3.0})


def test_two_level_bootstrap_gives_no_interval_where_many_replicates_are_undefined():
    """Seed 1's effect is undefined: a replicate that draws only seed 1 (two seeds: 1 in 4) is
    dropped. A quarter of the replicates dropped leaves no interval (more than the 2.5 % of a
    tail); one undefined seed of eight is drawn alone almost never, and the interval stands."""
    n = 20
    bits = np.full(n, 50.0)

    def curves(effects):
        anchor = {s: [Point(bits, np.zeros(n)), Point(bits * 4, np.ones(n))] for s in effects}
        test = {
            s: [Point(bits, np.zeros(n) + d), Point(bits * 4, np.ones(n) + d)]
            for s, d in effects.items()
        }
        return anchor, test

    def estimator(a, t):  # undefined where the effect is 3
        d = equal_rate_delta(a, t)
        return None if d > 2 else d

    out = two_level_bootstrap(*curves({0: 1.0, 1: 3.0}), estimator, n_boot=2000, seed=1)
    assert out["estimate"] == pytest.approx(1.0) and out["per_seed"][1] is None
    assert out["undefined"] == pytest.approx(500, abs=60)
    assert out["lo"] is None and out["hi"] is None
    eight = {s: 1.0 + 0.1 * s for s in range(7)} | {7: 3.0}
    out = two_level_bootstrap(*curves(eight), estimator, n_boot=500, seed=1)
    assert out["undefined"] == 0 and out["lo"] < out["estimate"] < out["hi"]


def test_two_level_bootstrap_image_level():
    """One seed, test = anchor + e_i per image with mean(e) = 0: the estimate is 0 and only the
    image level makes the interval wide; with the same images for anchor and test, a constant
    shift gives a zero-width interval."""
    rng = np.random.default_rng(0)
    n = 200
    bits = rng.uniform(40, 60, n)
    base = rng.uniform(0.3, 0.7, n)
    e = rng.normal(0, 0.1, n)
    e -= e.mean()
    anchor = {0: [Point(bits, base), Point(bits * 3, base + 0.1)]}
    noisy = {0: [Point(bits, base + e), Point(bits * 3, base + 0.1 + e)]}
    out = two_level_bootstrap(anchor, noisy, equal_rate_delta, n_boot=400)
    assert out["estimate"] == pytest.approx(0.0, abs=1e-12)
    assert out["lo"] < 0 < out["hi"]
    # the spread of a mean of 200 values of SD 0.1: half-width about 1.96 * 0.1 / sqrt(200)
    assert out["hi"] - out["lo"] == pytest.approx(2 * 1.96 * 0.1 / math.sqrt(n), rel=0.25)
    seeds_only = two_level_bootstrap(anchor, noisy, equal_rate_delta, 50, resample_images=False)
    assert seeds_only["lo"] == seeds_only["hi"] == pytest.approx(0.0, abs=1e-12)
    shifted = {0: [Point(bits, base + 0.03), Point(bits * 3, base + 0.13)]}
    out = two_level_bootstrap(anchor, shifted, equal_rate_delta, n_boot=200)
    assert (out["lo"], out["hi"]) == pytest.approx((0.03, 0.03))
    assert verdict(out["lo"], out["hi"], margin=0.01)["verdict"] == "effect"
