"""The acceptance checks of an embedded world, at smoke scale (the numbers are meaningless
there; the test checks that each check is computed from the runs it names)."""

from __future__ import annotations

import math

import pytest

from icm_lib.results import WorldFile
from icm_lib.statistics import equal_rate_delta
from icm_lib.world_check import foundation_checks, last_fifth_move, main, share_at


def test_share_at_interpolates_in_log_bpp():
    pts = [{"bpp": 0.05, "m": 0.2}, {"bpp": 0.2, "m": 0.4}]
    # 0.1 is the log-midpoint of 0.05 and 0.2
    assert share_at(pts, "m", 0.1, 0.5) == pytest.approx(0.6)
    assert share_at(pts, "m", 0.3, 0.5) is None


def test_last_fifth_move_reads_the_last_fifth():
    steps = [100, 200, 300, 400, 500]
    # 80 % of 500 is 400: the move from 400's value to the end's, relative to the end's
    assert last_fifth_move(steps, [1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(0.2)
    assert last_fifth_move([100, 450, 500], [1.0, 4.0, 5.0]) == pytest.approx(0.8)  # at 100
    assert last_fifth_move(steps, [5.0, 4.0, 3.0, 2.5, 2.0]) == pytest.approx(-0.25)
    assert last_fifth_move([500], [1.0]) is None
    assert last_fifth_move([450, 500], [1.0, 2.0]) is None  # nothing at or before step 400


def test_foundation_checks_against_hand_made_curves():
    flat = [{"step": s, "map": 0.5, "miou": 0.6} for s in (200, 400, 600, 800, 1000)]
    rising = [{"step": s, "map": 0.1 * i, "miou": 0.6} for i, s in enumerate((200, 400), 1)]
    ref = [{"step": s, "val_bpp": 0.3, "val_psnr": 25.0 + s / 1e4} for s in (50, 80, 100)]
    checks = foundation_checks({"det": {"val_curve": flat}, "seg": {"val_curve": flat}}, ref)
    assert checks["plateau_det"]["pass"] and checks["plateau_seg"]["pass"]
    # PSNR 25.008 -> 25.01 dB over the last fifth: 0.008 %; bpp unchanged
    assert checks["reference_converged"]["pass"]
    assert checks["reference_converged"]["move_over_last_fifth"]["bpp"] == 0.0
    ref[-1] = {"step": 100, "val_bpp": 0.33, "val_psnr": 25.01}  # bpp +9 % in the last fifth
    rising_det = {"det": {"val_curve": rising}, "seg": {"val_curve": flat}}
    checks = foundation_checks(rising_det, ref)
    assert not checks["reference_converged"]["pass"]
    assert checks["plateau_det"]["gain_over_last_fifth"] == pytest.approx(0.5)
    assert not checks["plateau_det"]["pass"] and checks["plateau_seg"]["pass"]
    none = foundation_checks({"det": {}, "seg": {"val_curve": []}}, [{"step": 1, "loss": 2.0}])
    assert not any(c["pass"] for c in none.values())
    assert all(c["note"] for c in none.values())


@pytest.mark.slow
def test_world_check_on_smoke(tmp_path):
    out = main(
        [
            "--profile", "smoke",
            "--overrides", "data__world=patterns mse__validate_every=2 recognition__eval_every=2",
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
        "plateau_det",
        "plateau_seg",
        "reference_converged",
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
    # the foundations: the reference codec's val curve every 2 of its 6 steps, the recognizers'
    assert [p["step"] for p in out.reference["val_curve"]] == [2, 4, 6]
    moves = checks["reference_converged"]["move_over_last_fifth"]
    curve = out.reference["val_curve"]  # 80 % of 6 is 4.8: from step 4 to step 6
    assert moves["psnr"] == pytest.approx((curve[2]["psnr"] - curve[1]["psnr"]) / curve[2]["psnr"])
    assert checks["plateau_seg"]["gain_over_last_fifth"] is not None
    mse = [r for r in out.runs if r.variant == "mse"]
    assert all(math.isfinite(r.point(t, "mse").bpp) for r in mse for t in ("det", "seg"))
