import time

import numpy as np
import pytest
import torch

from icm_lib.codec import CODEC_NAMES, build_codec, load_codec
from icm_lib.errors import BitstreamError, ImageError, WeightsUnavailableError
from icm_lib.metrics import psnr


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_split_view_shapes_and_parameter_partition(name):
    torch.manual_seed(0)
    codec = build_codec(name, N=32, M=48)
    x = torch.rand(2, 3, 64, 128)
    out = codec(x)
    assert out["x_hat"].shape == x.shape
    assert out["latent_hat"].shape[-2:] == (4, 8)
    assert out["decoder_feature"].shape[0] == 2 and out["decoder_feature"].shape[-2:] == (32, 64)
    enc = {id(p) for p in codec.encoder_parameters()}
    dec = {id(p) for p in codec.decoder_parameters()}
    assert enc and dec and not enc & dec
    assert enc | dec == {id(p) for p in codec.model.parameters()}
    # encode() stops before g_s and returns the same latent and likelihoods as forward()
    codec.eval()
    full, part = codec(x), codec.encode(x)
    assert torch.equal(full["latent_hat"], part["latent_hat"])
    assert set(full["likelihoods"]) == set(part["likelihoods"])
    for k in full["likelihoods"]:
        assert torch.equal(full["likelihoods"][k], part["likelihoods"][k])
    assert torch.allclose(codec.decode(part["latent_hat"]), full["x_hat"])


def test_cheng2020_attn_round_trip():
    torch.manual_seed(0)
    codec = build_codec("cheng2020-attn", N=32).eval()
    x = torch.rand(3, 64, 64)
    y = codec.decompress(codec.compress(x))
    assert y.shape == (1, 3, 64, 64) and torch.isfinite(y).all()


def test_real_bits_match_the_estimate_within_one_percent(trained_codec):
    codec, images = trained_codec
    x = torch.cat(
        [torch.cat([images[0], images[1]], -1), torch.cat([images[2], images[3]], -1)], -2
    )  # 256 x 256
    coded = codec.roundtrip(x)
    assert coded.bpp_estimate > 0.05
    # the payload matches the likelihoods the range coder uses to within 1 % ...
    assert abs(coded.bpp_payload / coded.bpp_coder_estimate - 1) < 0.01
    # ... which exceed the training estimate only by CompressAI's scale-table rounding
    assert coded.bpp_estimate <= coded.bpp_coder_estimate < 1.06 * coded.bpp_estimate
    assert coded.bpp > coded.bpp_payload  # the container header is counted in the actual bpp
    assert coded.x_hat.shape == (1, 3, 256, 256)
    # the bytes decode to what the model's own forward pass reconstructs ...
    with torch.no_grad():
        forward = codec(x[None])["x_hat"].clamp(0, 1)
    assert torch.allclose(coded.x_hat, forward, atol=1e-4)
    # ... which carries the image: far closer than the best constant image
    mse = float(((coded.x_hat - x[None]) ** 2).mean())
    assert mse < 0.5 * float(((x - x.mean((1, 2), keepdim=True)) ** 2).mean())


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.rand(3, 70, 90),  # not a multiple of 64
        lambda: torch.rand(3, 20, 33),  # smaller than 64 px
        lambda: (np.random.default_rng(0).random((65, 64)) * 255).astype(np.uint8),  # grayscale
        lambda: (np.random.default_rng(0).random((64, 80, 4)) * 255).astype(np.uint8),  # RGBA
        lambda: (np.random.default_rng(0).random((64, 64, 3)) * 65535).astype(np.uint16),  # 16-bit
    ],
)
def test_odd_images_are_converted_and_cropped_back(trained_codec, make):
    codec, _ = trained_codec
    image = make()
    h, w = image.shape[-2:] if isinstance(image, torch.Tensor) else image.shape[:2]
    y = codec.decompress(codec.compress(image))
    assert y.shape == (1, 3, h, w)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((0, 5, 3), np.uint8),
        np.zeros((8, 8, 5), np.uint8),
        np.full((8, 8, 3), 2.0, np.float32),
        "no/such/file.png",
    ],
)
def test_bad_images_raise_image_error(trained_codec, bad):
    codec, _ = trained_codec
    with pytest.raises(ImageError):
        codec.compress(bad)


def test_bitstream_from_another_codec_is_refused(trained_codec):
    codec, images = trained_codec
    other = build_codec("bmshj2018-hyperprior", N=32, M=64).eval()
    with pytest.raises(BitstreamError, match="load the matching model"):
        other.decompress(codec.compress(images[0]))


def test_saved_codec_round_trips(trained_codec, tmp_path):
    from icm_lib.files import atomic_torch_save, load_checkpoint

    codec, images = trained_codec
    atomic_torch_save(codec.codec_state(), tmp_path / "codec.pt")
    loaded = load_codec(load_checkpoint(tmp_path / "codec.pt")).eval()
    data = codec.compress(images[0])
    assert loaded.compress(images[0]) == data
    assert torch.equal(loaded.decompress(data), codec.decompress(data))


def _small_codec_and_image(name: str):
    """A small random-weight codec of the family (tables updated) and a random 96x160 image."""
    torch.manual_seed(0)
    codec = build_codec(name, N=32, M=48) if name != "cheng2020-attn" else build_codec(name, N=32)
    codec.eval().update(force=True)
    return codec, torch.rand(3, 96, 160)


@pytest.mark.parametrize("name", ["bmshj2018-hyperprior", "cheng2020-attn"])
def test_bf16_transforms_write_the_same_format_and_cost_the_image_little(name):
    """``ICMCodec.bf16``: g_a / h_a and g_s under bfloat16 autocast. One format: a float32
    decoder reads a bfloat16 encoder's stream and reconstructs its ŷ exactly (and the other
    way round); ŷ moves by bfloat16 rounding; x̂ stays close to the float32 synthesis's, and
    float32."""
    codec, image = _small_codec_and_image(name)
    plain, y_plain = codec.compress_with_latent(image)
    codec.bf16 = True
    half, y_half = codec.compress_with_latent(image)
    half_decoded = codec.decompress(half)
    codec.bf16 = False
    assert plain[:32] == half[:32]  # the same header: one format
    assert torch.equal(codec.decoded_latent(half), y_half)  # float32 decoder, bf16 stream
    codec.bf16 = True
    assert torch.equal(codec.decoded_latent(plain), y_plain)  # bf16 decoder, float32 stream
    x_half = codec.decompress(plain)
    codec.bf16 = False
    x_plain = codec.decompress(plain)
    assert y_half.dtype == y_plain.dtype == torch.float32
    assert x_half.dtype == torch.float32 and x_half.shape == x_plain.shape == (1, 3, 96, 160)
    # y moves by bfloat16 rounding; in autoregressive codecs every later mean moves with it
    assert (y_half - y_plain).abs().mean() <= 0.05 * y_plain.abs().mean() + 1e-6
    assert psnr(x_half, x_plain) > 40  # the synthesis's bfloat16 rounding only
    assert abs(len(half) - len(plain)) <= 0.02 * len(plain) + 8
    assert half_decoded.shape == (1, 3, 96, 160)


def test_pretrained_offline_fails_fast_with_advice(monkeypatch, tmp_path):
    monkeypatch.setenv("ICM_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # empty cache
    t0 = time.perf_counter()
    with pytest.raises(WeightsUnavailableError, match="internet"):
        build_codec("cheng2020-attn", quality=3, pretrained=True)
    assert time.perf_counter() - t0 < 5


@pytest.mark.parametrize("name", ["bmshj2018-hyperprior", "cheng2020-attn"])
def test_channels_last_transforms_write_the_same_format_and_any_decoder_reads_them(name):
    """``ICMCodec.channels_last``: the transforms in another memory layout. Streams of either
    layout decode with either; the decoder's ŷ is the encoder's; x̂ differs by float rounding."""
    codec, image = _small_codec_and_image(name)
    plain, y_plain = codec.compress_with_latent(image)
    codec.channels_last = True
    fast, y_fast = codec.compress_with_latent(image)
    fast_decoded = [codec.decompress(plain), codec.decompress(fast)]
    codec.channels_last = False
    decoded = [codec.decompress(plain), codec.decompress(fast)]
    assert plain[:32] == fast[:32]  # the same header: one format
    # what the decoder reconstructs is what the encoder coded, whichever layout wrote it
    assert torch.equal(codec.decoded_latent(fast), y_fast)
    assert torch.equal(codec.decoded_latent(plain), y_plain)
    assert (y_fast != y_plain).float().mean() < 0.01  # rounding moves at most a few of y
    for a, b in zip(fast_decoded, decoded):
        assert a.shape == b.shape == (1, 3, 96, 160)
        assert (a - b).abs().max() < 1e-4


def test_decoding_alone_keeps_no_activation_of_the_split_view():
    """``decode`` (the GAN finetuning's g_s pass) runs the hooks that capture ŷ and g_s's
    last-layer input for the split view; nothing of them stays on the codec after it, so a
    training step's activation is not kept alive until the next one."""
    codec = build_codec("bmshj2018-hyperprior", N=32, M=48).train()
    x_hat = codec.decode(torch.randn(2, 48, 4, 4, requires_grad=True))
    assert x_hat.shape == (2, 3, 64, 64) and x_hat.requires_grad
    assert codec._captured == {}
    out = codec(torch.rand(1, 3, 64, 64))  # the split view itself still gets both
    assert {"latent_hat", "decoder_feature"} <= out.keys()
