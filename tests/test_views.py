"""icm_lib.views: one image of any form and size in, answers at its own size out."""

import numpy as np
import pytest
import torch

from icm_lib import views
from icm_lib.codec import load_codec
from icm_lib.errors import ImageError
from icm_lib.tasks import DETECTION, SEGMENTATION


@pytest.fixture(scope="module")
def image(smoke_env):
    """A val scene cropped to a size that is no multiple of 64, quantized to 8 bits so that
    its uint8 array is the same image."""
    x = smoke_env.datasets.val(SEGMENTATION)[0][0][:, :70, :90]
    return (x * 255).round() / 255


def test_bits_of_any_form_is_the_coders_rate_at_the_images_size(smoke_env, image):
    codec = smoke_env.reference
    bits = views.bits_of(codec, image)
    assert bits.shape == (70, 90) and bits.device.type == "cpu" and (bits >= 0).all()
    array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    for other in (image[None], array):
        assert torch.allclose(views.bits_of(codec, other), bits)
    # on an image of 64-multiples the map's mean is the coder's estimate of ŷ's bits per pixel
    full = smoke_env.datasets.val(SEGMENTATION)[0][0][:, :64, :128]
    with torch.no_grad():
        y = codec.eval().coder_likelihoods(full[None])["y"]
    expected = float(-torch.log2(y).sum()) / (64 * 128)
    assert float(views.bits_of(codec, full).mean()) == pytest.approx(expected, rel=1e-5)


def test_bits_of_keeps_the_codecs_mode_and_refuses_a_nan_image(smoke_env, image):
    codec = load_codec(smoke_env.reference.codec_state()).train()
    views.bits_of(codec, image)
    assert codec.training
    bad = image.clone()
    bad[0, 3, 4] = float("nan")
    with pytest.raises(ImageError):
        views.bits_of(codec, bad)


def test_machine_output_is_what_the_machine_uses_at_the_images_size(smoke_env, image):
    seg = smoke_env.machine(SEGMENTATION)
    labels = views.machine_output(seg, image)
    assert labels.shape == (70, 90) and labels.dtype == torch.int64
    det = smoke_env.machine(DETECTION)
    scene = smoke_env.datasets.val(DETECTION)[0][0]
    kept, every = views.machine_output(det, scene), views.machine_output(det, scene, False)
    assert set(kept) == {"boxes", "labels", "scores"} and len(kept["scores"]) <= len(
        every["scores"]
    )
    assert (kept["scores"] >= det.score_threshold).all()
    assert int((every["scores"] >= det.score_threshold).sum()) == len(kept["scores"])


def test_decoded_reads_the_encoders_bytes_with_another_decoder(smoke_env, image):
    codec = smoke_env.reference
    other = load_codec(codec.codec_state())
    for p in other.decoder_parameters():
        p.data.mul_(1.05)
    seg = smoke_env.machine(SEGMENTATION)
    a = views.decoded(codec, image, seg)
    b = views.decoded(codec, image, seg, decoder=other)
    assert a.data == b.data and a.bpp == b.bpp == len(a.data) * 8 / (70 * 90)
    assert a.x_hat.shape == (3, 70, 90) and not torch.equal(a.x_hat, b.x_hat)
    assert torch.equal(a.output, views.machine_output(seg, a.x_hat))
    assert torch.equal(a.bits, b.bits)  # the bits are the encoder's
    assert set(a.as_panel()) == {"x_hat", "bits", "bpp", "output"}


def test_class_names(smoke_env):
    assert views.class_names(smoke_env.datasets.val(DETECTION))
    assert views.class_names(smoke_env.datasets.val(SEGMENTATION))
    with pytest.raises(TypeError, match="category_names"):
        views.class_names(object())
