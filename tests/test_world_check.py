"""The acceptance checks of an embedded world, at smoke scale (the numbers are meaningless
there; the test checks that each check is computed from the runs it names)."""

from __future__ import annotations

import math

import pytest

from icm_lib.results import WorldFile
from icm_lib.statistics import equal_rate_delta
from icm_lib.world_check import main, share_at


def test_share_at_interpolates_in_log_bpp():
    pts = [{"bpp": 0.05, "m": 0.2}, {"bpp": 0.2, "m": 0.4}]
    # 0.1 is the log-midpoint of 0.05 and 0.2
    assert share_at(pts, "m", 0.1, 0.5) == pytest.approx(0.6)
    assert share_at(pts, "m", 0.3, 0.5) is None


@pytest.mark.slow
def test_world_check_on_smoke(tmp_path):
    out = main(
        [
            "--profile", "smoke", "--overrides", "data__world=patterns",
            "--data-dir", str(tmp_path / "data"), "--results-dir", str(tmp_path),
            "--det-lambdas", "0.5", "5.0",
        ]
    )  # fmt: skip
    assert WorldFile.read(tmp_path / "world-smoke.json") == out
    checks = out.checks
    assert set(checks) == {
        "informative_det",
        "informative_seg",
        "mse_loses_det",
        "mse_loses_seg",
        "roi_beats_baseline_det",
    }
    assert out.world == "patterns" and out.commit["sha"]
    det = [r for r in out.runs if r.variant == "baseline"]
    assert [r.lmbda for r in det] == [0.5, 5.0] and len(out.run_keys) == 4
    base = [(r.point("det").bpp, r.point("det").metric) for r in det]
    roi = [(r.point("det", "roi").bpp, r.point("det", "roi").metric) for r in det]
    assert checks["roi_beats_baseline_det"]["map_gain_at_equal_rate"] == equal_rate_delta(base, roi)
    # ROI scales the background latent down: it never costs more bits than the baseline
    assert all(r[0] <= b[0] + 1e-9 for r, b in zip(roi, base))
    assert out.passed == all(c["pass"] for c in checks.values())
    assert checks["informative_seg"]["value"] == out.recognizers["seg"]["val"]["miou"]
    mse = [r for r in out.runs if r.variant == "mse"]
    assert all(math.isfinite(r.point(t, "mse").bpp) for r in mse for t in ("det", "seg"))
