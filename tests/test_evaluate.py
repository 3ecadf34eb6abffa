"""R-D points through real bitstreams or the estimated rate with a real check (evaluate.py)."""

import pytest
import torch

from icm_lib.evaluate import BitstreamRoundTrip


def test_estimated_rate_is_checked_against_real_bitstreams(trained_codec):
    codec, images = trained_codec
    batch = images[:6, :, :80, :112]  # not a multiple of 64: padded and cropped back
    real = BitstreamRoundTrip(codec)
    decoded_real = real(batch)
    estimate = BitstreamRoundTrip(codec, real_images=2)
    decoded_est = estimate(batch)
    r, e = real.summary(), estimate.summary()
    assert r["rate"] == "real" and "real_check" not in r
    assert e["rate"] == "estimate" and e["bpp"] == e["bpp_estimate"]
    assert decoded_est.shape == decoded_real.shape == batch.shape
    # the estimate over all images is the likelihood estimate the real evaluation also reports
    assert e["bpp"] == pytest.approx(r["bpp_estimate"], rel=1e-5)
    check = e["real_check"]
    assert check["images"] == 2
    # a trained hyperprior: real bytes (container included) within a few percent of the estimate
    assert 0.95 < check["actual_over_estimated_bits"] < 1.15
    # the forward pass's x̂ and the decoded one differ only by the means' fixed point
    assert check["x_hat_max_abs_diff"] < 0.05
    assert e["psnr"] == pytest.approx(r["psnr"], abs=0.05)
    assert torch.allclose(decoded_est, decoded_real, atol=0.05)


def test_the_roi_baseline_is_never_estimated(trained_codec):
    codec, _ = trained_codec
    with pytest.raises(ValueError, match="real bitstreams"):
        BitstreamRoundTrip(codec, roi_dataset=object(), roi_qf=1.4, real_images=4)
