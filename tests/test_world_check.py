"""The acceptance checks of an embedded world, at smoke scale (the numbers are meaningless
there; the test checks that each check is computed from the runs it names)."""

from __future__ import annotations

import math

import pytest

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
            "--profile", "smoke", "--world", "patterns", "--data-dir", str(tmp_path / "data"),
            "--det-lambdas", "0.5", "5.0", "--out", str(tmp_path / "world.json"),
        ]
    )  # fmt: skip
    checks = out["checks"]
    assert set(checks) == {
        "informative_det",
        "informative_seg",
        "mse_loses_det",
        "mse_loses_seg",
        "roi_beats_baseline_det",
    }
    assert len(out["det_baseline"]) == len(out["det_roi"]) == 2
    assert len(out["run_keys"]) == 4 and out["commit"]["sha"]
    gain = equal_rate_delta(
        [(p["bpp"], p["map"]) for p in out["det_baseline"]],
        [(p["bpp"], p["map"]) for p in out["det_roi"]],
    )
    assert checks["roi_beats_baseline_det"]["map_gain_at_equal_rate"] == gain
    # ROI scales the background latent down: it never costs more bits than the baseline
    assert all(r["bpp"] <= b["bpp"] + 1e-9 for r, b in zip(out["det_roi"], out["det_baseline"]))
    assert out["passed"] == all(c["pass"] for c in checks.values())
    assert all(math.isfinite(p["bpp"]) for p in out["mse"]["det"] + out["mse"]["seg"])
