"""The ROI baseline: latent scaling outside the mask lowers the bits there."""

import pytest
import torch

from icm_lib.roi import latent_bits, latent_roi_mask, roi_scaling


def test_latent_mask_resizes_pads_and_keeps_any_covered_cell():
    mask = torch.zeros(100, 150, dtype=torch.bool)
    mask[10:20, 30:35] = True
    m = latent_roi_mask(mask, (100, 150))
    assert m.shape == (1, 1, 128 // 16, 192 // 16)  # padded to 64 first
    assert m.sum() == 4 and m[0, 0, 0:2, 1:3].all()  # rows 10-19 and cols 30-34 span 2 cells each
    # a dataset that resized the image: the mask follows it
    assert latent_roi_mask(mask, (200, 300)).shape == (1, 1, 256 // 16, 320 // 16)


def test_roi_scaling_lowers_the_bits_outside_the_mask(trained_codec):
    codec, images = trained_codec
    x = images[:2, :, :64, :64]
    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask[:, :32] = True  # the left half is the ROI
    lm = latent_roi_mask(mask, (64, 64))
    inside = lm[0, 0]
    plain = latent_bits(codec, x)
    with roi_scaling(codec, lm, qf=1.4):
        scaled = latent_bits(codec, x)
        data = codec.compress(x[:1])
    assert scaled[:, ~inside].sum() < 0.9 * plain[:, ~inside].sum()
    assert scaled[:, inside].sum() == pytest.approx(float(plain[:, inside].sum()), rel=0.1)
    assert len(data) < len(codec.compress(x[:1]))  # real bytes too
    with roi_scaling(codec, lm, qf=1.0):  # QF 1 changes nothing
        assert torch.equal(latent_bits(codec, x), plain)


def test_roi_scaling_refuses_bad_input(trained_codec):
    codec, images = trained_codec
    with pytest.raises(ValueError, match="QF"):
        with roi_scaling(codec, torch.ones(1, 1, 4, 4, dtype=torch.bool), qf=0.5):
            pass
    with pytest.raises(ValueError, match="does not match"):
        with roi_scaling(codec, torch.ones(1, 1, 3, 3, dtype=torch.bool), qf=1.4):
            codec.compress(images[:1, :, :64, :64])


def test_bits_on_objects_by_hand():
    """A stand-in codec that spends 2 bits per latent cell on the left half of a 64 px image and
    1 bit on the right, an object covering the left 20 columns: the cells it touches are the
    left two of four (any covered pixel counts), holding 2·2 of 2·2 + 2·1 bits per row."""
    from icm_lib.roi import bits_on_objects

    class Stand:
        def to(self, device):
            return self

        def eval(self):
            return self

        def coder_likelihoods(self, x):
            lik = torch.full((1, 1, 4, 4), 0.5)
            lik[..., :2] = 0.25
            return {"y": lik}

    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask[:, :20] = True
    data = [(torch.rand(3, 64, 64), {})]
    dataset = type("D", (), {"__len__": lambda s: 1, "__getitem__": lambda s, i: data[i],
                             "roi_mask": lambda s, i: mask})()  # fmt: skip
    out = bits_on_objects(Stand(), dataset, 5, torch.device("cpu"))
    assert out["images"] == 1
    assert out["area_share"] == pytest.approx(0.5)
    assert out["bits_share"] == pytest.approx(2 / 3)
    assert out["concentration"] == pytest.approx(4 / 3)
