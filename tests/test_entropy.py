"""The device-independent, memory-safe coder (icm_lib.entropy): exactness, identical ŷ under
perturbed float paths, fingerprints, tables that travel with the saved codec."""

import copy

import pytest
import torch
import torch.nn.functional as F

from icm_lib import entropy
from icm_lib.codec import build_codec, load_codec
from icm_lib.errors import BitstreamError

FAMILY_CODECS = {
    "factorized": "bmshj2018-factorized",
    "scale": "bmshj2018-hyperprior",
    "mean-scale": "mbt2018-mean",
    "autoregressive": "cheng2020-attn",
}


def _int64_reference(layer: "entropy._ExactConv", x: torch.Tensor) -> torch.Tensor:
    """The same fixed-point layer in int64 arithmetic (unfold copies values; the products and
    sums are integer operations), written independently of F.conv2d/conv_transpose2d."""
    w, b = layer.weight.long(), layer.bias.long()
    stride, pad = layer.stride[0], layer.padding[0]
    if layer.transposed:  # = a stride-1 convolution of the zero-upsampled input, flipped kernel
        k, op = w.shape[-1], layer.output_padding[0]
        n, c, h, wd = x.shape
        up = torch.zeros(n, c, (h - 1) * stride + 1, (wd - 1) * stride + 1, dtype=x.dtype)
        up[..., ::stride, ::stride] = x
        x = F.pad(up, (k - 1 - pad, k - 1 - pad + op, k - 1 - pad, k - 1 - pad + op))
        w = w.flip(-1, -2).transpose(0, 1)
        stride, pad = 1, 0
    cols = F.unfold(x, w.shape[-2:], padding=pad, stride=stride).long()
    acc = w.reshape(w.shape[0], -1) @ cols + b[:, None]
    out = acc >> layer.shift if layer.shift >= 0 else acc << -layer.shift
    return out.clamp(-int(entropy.ACT_LIMIT), int(entropy.ACT_LIMIT))


@pytest.mark.parametrize("name,quality", [("cheng2020-attn", 6), ("mbt2018", 8)])
def test_fixed_point_layers_are_exact_integer_arithmetic(name, quality):
    """Worst-case inputs (every activation at ±2^24, the range limit) through the paper-size
    hyper-decoders: float64 gives the int64 result bit for bit, on 1 and 2 threads."""
    torch.manual_seed(0)
    model = build_codec(name, quality=quality).model
    net = entropy.ExactNet(model.h_s)
    convs = [layer for layer in net.layers if isinstance(layer, entropy._ExactConv)]
    assert any(c.transposed for c in convs) or name.startswith("cheng")
    limit = int(entropy.ACT_LIMIT)
    threads = torch.get_num_threads()
    for layer in convs:
        cin = layer.weight.shape[0 if layer.transposed else 1]
        x = torch.randint(-limit, limit + 1, (1, cin, 5, 6)).double()
        x[..., 0, :] = (
            limit
            * torch.sign(layer.weight.sum((0, 2, 3) if not layer.transposed else (1, 2, 3)))[
                :, None
            ]
        )
        ref = _int64_reference(layer, x)
        for n in (1, threads):
            torch.set_num_threads(n)
            got = layer(x)
            assert got.shape == ref.shape[:2] + got.shape[2:]
            assert torch.equal(got.reshape(ref.shape).long(), ref)
    torch.set_num_threads(threads)


@pytest.mark.parametrize("family", list(FAMILY_CODECS))
def test_every_family_decodes_the_encoders_latent(family):
    torch.manual_seed(0)
    codec = build_codec(FAMILY_CODECS[family], N=32, M=48).eval()
    x = torch.rand(1, 3, 128, 192)
    data, latent = codec.compress_with_latent(x)
    assert entropy.model_family(codec.model) == family
    assert torch.equal(codec.decoded_latent(data), latent)
    with torch.no_grad():
        assert torch.equal(codec.decompress(data), codec.decode(latent).clamp(0, 1))
    # ŷ is CompressAI's up to the fixed-point means (exactly CompressAI's where there are none)
    forward = codec.encode(x)["latent_hat"]
    if family in ("factorized", "scale"):
        assert torch.equal(latent, forward)


def test_fixed_point_hyper_decoder_tracks_the_float_one(trained_family_codecs):
    codecs, images = trained_family_codecs
    for family, codec in codecs.items():
        state = codec.coding_state()
        with torch.no_grad():
            z_hat = codec.model.entropy_bottleneck(
                entropy.analysis(codec.model, images[:1])[1], training=False
            )[0]
            exact = state.h_s(torch.round(z_hat.double() * entropy.ONE)) / entropy.ONE
            ref = codec.model.h_s(z_hat).double()
        err = (exact - ref).abs().max().item()
        assert err < 20 / entropy.ONE, (family, err)  # a few units of 2^-12


def _noisy(module: torch.nn.Module, scale: float):
    return module.register_forward_hook(
        lambda m, args, out: out * (1 + scale * torch.randn_like(out))
    )


@pytest.mark.parametrize("family", ["scale", "mean-scale", "autoregressive"])
def test_decoded_latent_ignores_the_float_path(trained_family_codecs, family):
    """The decoder's float path perturbed three ways -- one thread instead of two, every weight
    in float64, relative noise of 1e-3 on the float hyper-decoder (and context / entropy
    parameter) outputs -- still decodes the identical ŷ. The noise is large enough to change
    CompressAI's own choice of tables (checked), so the test would fail for a float decoder."""
    codec = trained_family_codecs[0][family]
    image = trained_family_codecs[1][1]
    data, latent = codec.compress_with_latent(image)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert torch.equal(codec.decoded_latent(data), latent)
    finally:
        torch.set_num_threads(threads)
    as_double = copy.deepcopy(codec).double()
    as_double._coding = None  # rebuilt from the float64 weights
    assert torch.equal(as_double.decoded_latent(data).float(), latent)
    noisy = load_codec(codec.codec_state()).eval()
    model = noisy.model
    handles = [
        _noisy(m, 1e-3)
        for m in (
            model.h_s,
            getattr(model, "context_prediction", None),
            getattr(model, "entropy_parameters", None),
        )
        if m is not None
    ]
    torch.manual_seed(1)
    try:
        assert torch.equal(noisy.decoded_latent(data), latent)
        with torch.no_grad():  # the same noise moves CompressAI's float table choice
            z_hat = model.entropy_bottleneck(
                entropy.analysis(model, image[None])[1], training=False
            )[0]
            params = model.h_s(z_hat)
        scales = params if family == "scale" else params.chunk(2, 1)[0]
        gc = model.gaussian_conditional
        flips = (
            gc.build_indexes(scales)
            != gc.build_indexes(scales.detach() * (1 + 1e-3 * torch.randn_like(scales)))
        ).sum()
        assert flips > 0
    finally:
        for h in handles:
            h.remove()


def test_streams_of_other_weights_or_tables_are_refused(trained_family_codecs):
    codec = trained_family_codecs[0]["mean-scale"]
    image = trained_family_codecs[1][0]
    data = codec.compress(image)
    other = build_codec("mbt2018-mean", N=32, M=48).eval()  # same architecture, other weights
    with pytest.raises(BitstreamError, match="other weights or entropy tables"):
        other.decompress(data)
    tampered = load_codec(codec.codec_state())
    tampered.model.gaussian_conditional._quantized_cdf[5, 3] += 1  # one table entry
    tampered._coding = None
    with pytest.raises(BitstreamError, match="fingerprint"):
        tampered.decompress(data)
    # Le et al.: a codec whose synthesis transform alone changed decodes the same stream
    finetuned = load_codec(codec.codec_state())
    with torch.no_grad():
        for p in finetuned.decoder_parameters():
            p.add_(0.01 * torch.randn_like(p))
    assert finetuned.fingerprint == codec.fingerprint
    assert torch.equal(finetuned.decoded_latent(data), codec.decoded_latent(data))


def test_saved_codec_brings_its_tables_and_never_recomputes_them(
    trained_family_codecs, monkeypatch, tmp_path
):
    from icm_lib.files import atomic_torch_save, load_checkpoint

    codec = trained_family_codecs[0]["autoregressive"]
    image = trained_family_codecs[1][0]
    atomic_torch_save(codec.codec_state(), tmp_path / "codec.pt")

    def boom(model):
        raise AssertionError("entropy tables recomputed at load")

    monkeypatch.setattr(entropy, "update_tables", boom)
    loaded = load_codec(load_checkpoint(tmp_path / "codec.pt")).eval()
    assert loaded.fingerprint == codec.fingerprint
    data = codec.compress(image)
    assert loaded.compress(image) == data
    assert torch.equal(loaded.decompress(data), codec.decompress(data))


def test_tables_do_not_depend_on_the_models_dtype():
    """update() computes the tables on a float32 CPU copy: a float64 model (or, on a GPU
    machine, a CUDA one -- see test_gpu.py) gets the same tables and fingerprint."""
    torch.manual_seed(0)
    codec = build_codec("mbt2018-mean", N=32, M=48)
    twin = copy.deepcopy(codec).double()
    codec.update()
    twin.update()
    assert twin.fingerprint == codec.fingerprint


def test_payload_must_end_where_its_last_symbol_ends(trained_family_codecs):
    from icm_lib import bitstream

    codec = trained_family_codecs[0]["scale"]
    data = codec.compress(trained_family_codecs[1][0])
    header, (payload,) = bitstream.unpack(data)
    for bad in (payload + bytes([7, 0, 0, 0]), payload[4:], payload[:-1]):
        with pytest.raises(BitstreamError):
            codec.decompress(bitstream.pack(header, [bad]))


def test_a_huge_claimed_image_is_refused_before_decoding(trained_family_codecs):
    from dataclasses import replace

    from icm_lib import bitstream

    codec = trained_family_codecs[0]["scale"]
    header, strings = bitstream.unpack(codec.compress(trained_family_codecs[1][0]))
    huge = replace(header, height=64 * 1000, width=64 * 1000, latent_shape=(1000, 1000))
    with pytest.raises(BitstreamError, match="max_pixels"):
        codec.decompress(bitstream.pack(huge, strings))


def test_wavefront_parameters_equal_the_float_networks_on_the_coded_latent(trained_family_codecs):
    """The exact context model + entropy parameters, evaluated wavefront by wavefront while
    decoding, give the float networks' scales and means on the same ŷ (to a few 2^-12): the
    taps, their order and the wavefront schedule are CompressAI's causal context. (A wrong
    context would still round-trip, since encoder and decoder share it, but cost bits.)"""
    codec = trained_family_codecs[0]["autoregressive"]
    image = trained_family_codecs[1][0]
    data, latent = codec.compress_with_latent(image)
    state, m = codec.coding_state(), codec.model
    seen = []
    original = state._gaussian

    def spy(io, y, scales, means):  # record what the decoder used, position by position
        seen.append((scales.clone(), means.clone()))
        return original(io, y, scales, means)

    state._gaussian = spy
    try:
        assert torch.equal(codec.decoded_latent(data), latent)
    finally:
        del state._gaussian
    h, w = latent.shape[-2:]
    assert len(seen) == 3 * (h - 1) + w  # one step per wavefront
    with torch.no_grad():
        z_hat = m.entropy_bottleneck(entropy.analysis(m, image[None])[1], training=False)[0]
        gp = m.entropy_parameters(torch.cat([m.h_s(z_hat), m.context_prediction(latent)], 1))
    scales, means = (t[0].double() for t in gp.chunk(2, 1))
    for t, (s, mu) in enumerate(seen):
        rows = torch.arange(max(0, -(-(t - w + 1) // 3)), min(h - 1, t // 3) + 1)
        cols = t - 3 * rows
        assert (s / entropy.ONE - scales[:, rows, cols].T).abs().max() < 20 / entropy.ONE
        assert (mu / entropy.ONE - means[:, rows, cols].T).abs().max() < 20 / entropy.ONE


def _exact_parameters(state: "entropy.CodingState", params: torch.Tensor, latent: torch.Tensor):
    """Scales and means (M, h, w) of the fixed-point context model + entropy parameters run as
    whole-latent convolutions (:class:`entropy._ExactConv`, the conv path) on the final ŷ: the
    causal mask makes them what each position saw while it was coded."""
    ctx = state.context.exact(torch.round(latent.double() * entropy.ONE))
    gp = state.entropy_parameters(torch.cat([params[None], ctx], 1))[0]
    return gp.chunk(2, 0)


def _ar_codec(name: str, weights: str, trained_family_codecs):
    if weights == "trained" and name == "cheng2020-attn":
        return trained_family_codecs[0]["autoregressive"]
    if weights == "trained" and name == "mbt2018-mean":
        return trained_family_codecs[0]["mean-scale"]
    torch.manual_seed(0)
    codec = build_codec(name, N=32, M=48) if name != "cheng2020-attn" else build_codec(name, N=32)
    if weights == "trained":
        from icm_lib.dev.common import scene_images, train_briefly

        train_briefly(codec, scene_images(8, 128), steps=40)
    return codec.eval()


@pytest.mark.parametrize("weights", ["random", "trained"])
@pytest.mark.parametrize("name", ["cheng2020-attn", "mbt2018", "mbt2018-mean"])
def test_wavefront_coding_is_lossless(trained_family_codecs, name, weights):
    """The fast wavefront coder (and the mean-scale one): the decoder gets the encoder's ŷ
    exactly, on odd image sizes (latents from 4x4, narrow and tall ones, wavefronts of one
    position), random and trained weights; the scales and means it used are bit for bit those of the
    fixed-point conv path on the whole latent, and ŷ = round(y - μ) + μ."""
    from icm_lib.data.transforms import pad_to_multiple

    codec = _ar_codec(name, weights, trained_family_codecs)
    state = codec.coding_state()
    torch.manual_seed(2)
    images = [
        trained_family_codecs[1][0][None, :, :77, :],
        torch.rand(1, 3, 45, 130),
        trained_family_codecs[1][1][None, :, :, :33],
        torch.rand(1, 3, 300, 70) * 0.3 + 0.5,
        torch.rand(1, 3, 60, 61),
        torch.rand(1, 3, 30, 200),
    ]
    for x in images:
        data, latent = codec.compress_with_latent(x)
        assert torch.equal(codec.decoded_latent(data), latent), x.shape
        if state.family != "autoregressive":
            continue
        seen = []
        original = state._gaussian

        def spy(io, y, scales, means):  # what the decoder used, wavefront by wavefront
            seen.append((scales.clone(), means.clone()))
            return original(io, y, scales, means)

        state._gaussian = spy
        try:
            codec.decoded_latent(data)
        finally:
            del state._gaussian
        with torch.no_grad():
            y, z = entropy.analysis(codec.model, pad_to_multiple(x)[0])
            z_hat = codec.model.entropy_bottleneck(z, training=False)[0]
        params = state.h_s(torch.round(z_hat.double() * entropy.ONE))[0]
        scales, means = _exact_parameters(state, params, latent[0])
        h, w = latent.shape[-2:]
        assert len(seen) == 3 * (h - 1) + w
        for t, (s, mu) in enumerate(seen):
            rows = torch.arange(max(0, -(-(t - w + 1) // 3)), min(h - 1, t // 3) + 1)
            cols = t - 3 * rows
            assert torch.equal(s, scales[:, rows, cols].T)
            assert torch.equal(mu, means[:, rows, cols].T)
        y_hat = torch.round(y[0].double() - means / entropy.ONE) + means / entropy.ONE
        assert torch.equal(y_hat.float(), latent[0])


def test_wavefront_streams_do_not_depend_on_threads(trained_family_codecs):
    """Encoding on one thread writes the same bytes as on the default threads."""
    codec = trained_family_codecs[0]["autoregressive"]
    image = trained_family_codecs[1][0]
    data = codec.compress(image)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert codec.compress(image) == data
    finally:
        torch.set_num_threads(threads)
