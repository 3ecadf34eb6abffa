"""Every image form through the one door (icm_lib.data.images.to_rgb_tensor): a table of
form x dtype / mode and what each becomes, the README's "Bad input" image rows checked against
real behaviour, and the codec's 4-D tensor path going through the same rules."""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import deadline
from PIL import Image

from icm_lib.codec import build_codec, load_codec
from icm_lib.data.images import to_rgb_tensor
from icm_lib.errors import CheckpointError, ImageError

README = Path(__file__).resolve().parents[1] / "README.md"
H, W = 2, 3


def rgb(r, g=None, b=None) -> torch.Tensor:
    """The expected (3, H, W) image of one colour."""
    g = r if g is None else g
    b = r if b is None else b
    return torch.tensor([r, g, b], dtype=torch.float32)[:, None, None].expand(3, H, W)


def const(value, shape, dtype):
    return np.full(shape, value, dtype=dtype)


def pil(mode: str, data: np.ndarray) -> Image.Image:
    return Image.frombytes(mode, (data.shape[1], data.shape[0]), np.ascontiguousarray(data))


def palette(transparent: bool) -> Image.Image:
    im = Image.new("P", (W, H), 1)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    if transparent:
        im.info["transparency"] = 1
    return im


# ---------------------------------------------------------------------- the table of rules
# (id, builder, expected (3, H, W) tensor or an exception class). Builders, not objects: a
# case must not share storage with another.
OK, REFUSED = "ok", "refused"
TABLE = [
    # numpy arrays, by dtype
    ("array-bool", lambda: const(True, (H, W), bool), rgb(1.0)),
    ("array-uint8", lambda: const(51, (H, W, 3), np.uint8), rgb(0.2)),
    ("array-uint8-gray", lambda: const(255, (H, W), np.uint8), rgb(1.0)),
    ("array-uint8-gray1", lambda: const(51, (H, W, 1), np.uint8), rgb(0.2)),
    ("array-uint16", lambda: const(13107, (H, W, 3), np.uint16), rgb(0.2)),
    ("array-uint16-bigendian", lambda: const(13107, (H, W, 3), ">u2"), rgb(0.2)),
    ("array-float16", lambda: const(0.25, (H, W, 3), np.float16), rgb(0.25)),
    ("array-float32", lambda: const(0.25, (H, W, 3), np.float32), rgb(0.25)),
    ("array-float64", lambda: const(0.25, (H, W, 3), np.float64), rgb(0.25)),
    ("array-float32-0..255", lambda: const(51.0, (H, W, 3), np.float32), ImageError),
    ("array-float-negative", lambda: const(-0.1, (H, W, 3), np.float32), ImageError),
    *[
        (f"array-{t}", (lambda t=t: const(51, (H, W, 3), t)), ImageError)
        for t in ("int8", "int16", "int32", "int64", "uint32", "uint64")
    ],
    ("array-complex", lambda: const(0.5, (H, W, 3), np.complex64), ImageError),
    ("array-object", lambda: const(None, (H, W, 3), object), ImageError),
    # alpha: composited over white
    ("array-gray-alpha", lambda: np.dstack([const(0, (H, W), np.uint8)] * 2), rgb(1.0)),
    (
        "array-rgba-half",
        lambda: np.dstack([const(0, (H, W, 3), np.uint8), const(51, (H, W), np.uint8)]),
        rgb(0.8),
    ),
    # layouts
    ("array-chw", lambda: const(0, (3, H, 7), np.uint8), ImageError),
    ("array-5-channels", lambda: const(0, (H, W, 5), np.uint8), ImageError),
    ("array-1d", lambda: const(0, (W,), np.uint8), ImageError),
    ("array-empty", lambda: const(0, (0, W, 3), np.uint8), ImageError),
    ("array-empty-width", lambda: const(0.5, (H, 0), np.float32), ImageError),
    # torch tensors, (C, H, W) and (1, C, H, W), by dtype
    ("tensor-uint8", lambda: torch.full((3, H, W), 51, dtype=torch.uint8), rgb(0.2)),
    ("tensor4-uint8", lambda: torch.full((1, 3, H, W), 51, dtype=torch.uint8), rgb(0.2)),
    ("tensor-uint16", lambda: torch.full((3, H, W), 13107, dtype=torch.uint16), rgb(0.2)),
    ("tensor-bool", lambda: torch.ones(1, H, W, dtype=torch.bool), rgb(1.0)),
    ("tensor-float32", lambda: torch.full((3, H, W), 0.25), rgb(0.25)),
    ("tensor4-float32", lambda: torch.full((1, 3, H, W), 0.25), rgb(0.25)),
    ("tensor4-float16", lambda: torch.full((1, 3, H, W), 0.25, dtype=torch.float16), rgb(0.25)),
    ("tensor4-bfloat16", lambda: torch.full((1, 3, H, W), 0.25, dtype=torch.bfloat16), rgb(0.25)),
    ("tensor4-float64", lambda: torch.full((1, 3, H, W), 0.25, dtype=torch.float64), rgb(0.25)),
    ("tensor-gray", lambda: torch.full((1, H, W), 0.25), rgb(0.25)),
    ("tensor-2d", lambda: torch.full((H, W), 0.25), rgb(0.25)),
    (
        "tensor4-rgba",
        lambda: torch.tensor([0.0, 0, 0, 0.2])[None, :, None, None].expand(1, 4, H, W),
        rgb(0.8),
    ),
    ("tensor4-float-0..255", lambda: torch.full((1, 3, H, W), 51.0), ImageError),
    ("tensor4-int64", lambda: torch.full((1, 3, H, W), 51, dtype=torch.int64), ImageError),
    ("tensor-int32", lambda: torch.full((3, H, W), 51, dtype=torch.int32), ImageError),
    ("tensor4-complex", lambda: torch.zeros(1, 3, H, W, dtype=torch.complex64), ImageError),
    ("tensor4-batch2", lambda: torch.zeros(2, 3, H, W), ImageError),
    ("tensor-hwc", lambda: torch.zeros(5, 7, 3), ImageError),
    ("tensor4-empty", lambda: torch.zeros(1, 3, 0, 0), ImageError),
    ("tensor-empty", lambda: torch.zeros(3, 0, W), ImageError),
    ("tensor5", lambda: torch.zeros(1, 1, 3, H, W), ImageError),
    # PIL images, by mode
    ("pil-1", lambda: Image.new("1", (W, H), 1), rgb(1.0)),
    ("pil-L", lambda: Image.new("L", (W, H), 51), rgb(0.2)),
    ("pil-RGB", lambda: Image.new("RGB", (W, H), (255, 51, 0)), rgb(1.0, 0.2, 0.0)),
    ("pil-RGBA", lambda: Image.new("RGBA", (W, H), (0, 0, 0, 51)), rgb(0.8)),
    ("pil-LA", lambda: Image.new("LA", (W, H), (0, 51)), rgb(0.8)),
    # premultiplied: colour 64 at alpha 128 is 64/255 + (1 - 128/255) over white
    ("pil-La", lambda: pil("La", const([64, 128], (H, W, 2), np.uint8)), rgb(191 / 255)),
    (
        "pil-RGBa",
        lambda: pil("RGBa", const([64, 0, 128, 128], (H, W, 4), np.uint8)),
        rgb(191 / 255, 127 / 255, 1.0),
    ),
    ("pil-P", lambda: palette(False), rgb(1.0, 0.0, 0.0)),
    ("pil-P-transparent", lambda: palette(True), rgb(1.0)),
    ("pil-PA", lambda: palette(False).convert("PA"), rgb(1.0, 0.0, 0.0)),
    ("pil-I;16", lambda: pil("I;16", const(13107, (H, W), "<u2")), rgb(0.2)),
    ("pil-I;16B", lambda: pil("I;16B", const(13107, (H, W), ">u2")), rgb(0.2)),
    ("pil-I", lambda: pil("I", const(13107, (H, W), np.int32)), rgb(0.2)),
    ("pil-I-negative", lambda: pil("I", const(-1, (H, W), np.int32)), ImageError),
    ("pil-I-above-16-bit", lambda: pil("I", const(70000, (H, W), np.int32)), ImageError),
    ("pil-F", lambda: pil("F", const(0.25, (H, W), np.float32)), rgb(0.25)),
    ("pil-F-0..255", lambda: pil("F", const(51.0, (H, W), np.float32)), ImageError),
    ("pil-CMYK", lambda: Image.new("CMYK", (W, H), (0, 255, 255, 0)), rgb(1.0, 0.0, 0.0)),
    ("pil-YCbCr", lambda: Image.new("RGB", (W, H), (255, 255, 255)).convert("YCbCr"), rgb(1.0)),
    ("pil-HSV", lambda: Image.new("HSV", (W, H), (0, 0, 255)), rgb(1.0)),
    ("pil-empty", lambda: Image.new("RGB", (0, H)), ImageError),
    # not an image at all
    ("list", lambda: [[0, 1], [1, 0]], ImageError),
    ("none", lambda: None, ImageError),
]


@pytest.mark.parametrize("case, build, expected", TABLE, ids=[c[0] for c in TABLE])
def test_every_form_and_dtype_follows_its_rule(case, build, expected):
    image = build()
    if isinstance(expected, type):
        with pytest.raises(expected):
            to_rgb_tensor(image)
        return
    x = to_rgb_tensor(image)
    assert x.shape == (3, H, W) and x.dtype == torch.float32, case
    assert torch.allclose(x, expected, atol=1.5e-3), (case, x[:, 0, 0])
    batch = to_rgb_tensor(build(), batch=True)
    assert batch.shape == (1, 3, H, W) and torch.equal(batch[0], x)


NONFINITE = [float("nan"), float("inf"), float("-inf")]


def _poisoned_forms(value: float, tmp_path: Path):
    """One pixel set to ``value`` in every float form."""
    a = np.full((4, 5, 3), 0.5, np.float32)
    a[1, 2, 0] = value
    yield "array-float32", a
    yield "array-float64", a.astype(np.float64)
    yield "array-float16", a.astype(np.float16)
    t = torch.from_numpy(a).permute(2, 0, 1).contiguous()
    yield "tensor3", t
    yield "tensor4", t[None]
    yield "tensor4-float16", t[None].half()
    yield "tensor4-bfloat16", t[None].bfloat16()
    yield "tensor4-float64", t[None].double()
    yield "pil-F", Image.fromarray(np.ascontiguousarray(a[..., 0]))
    path = tmp_path / f"poisoned-{value}.tif"
    Image.fromarray(np.ascontiguousarray(a[..., 0])).save(path)
    yield "tiff-F", path


@pytest.mark.parametrize("value", NONFINITE, ids=["nan", "inf", "-inf"])
def test_non_finite_values_are_refused_in_every_form(value, tmp_path):
    forms = list(_poisoned_forms(value, tmp_path))
    assert len(forms) == 10
    for form, image in forms:
        with pytest.raises(ImageError, match="NaN or infinite"):
            to_rgb_tensor(image)
            pytest.fail(f"{form} accepted")


def test_integer_scale_never_depends_on_the_image_maximum():
    """The old rule divided by 255 or 65535 depending on the maximum: a pixel of 200 in an image
    whose maximum is 300 came out at 200 / 65535. Now the dtype alone sets the scale, and a
    signed integer image is refused whatever its values."""
    for dtype, scale in ((np.uint8, 255), (np.uint16, 65535)):
        for top in (200, 255) if dtype == np.uint8 else (200, 300, 65535):
            a = np.full((2, 2), 200, dtype)
            a[0, 0] = top
            assert to_rgb_tensor(a)[0, 1, 1].item() == pytest.approx(200 / scale)
    max300 = np.full((4, 4, 3), 150, np.int64)
    max300[0, 0] = 300
    with pytest.raises(ImageError, match="uint8"):
        to_rgb_tensor(max300)
    with pytest.raises(ImageError, match="uint8"):
        to_rgb_tensor(torch.from_numpy(max300).permute(2, 0, 1))
    i_mode = pil("I", max300[..., 0].astype(np.int32))
    assert to_rgb_tensor(i_mode)[0, 1, 1].item() == pytest.approx(150 / 65535)  # 16-bit, stated


def test_results_are_copies_and_stay_on_the_tensor_device():
    t = torch.full((1, 3, H, W), 0.25)
    x = to_rgb_tensor(t, batch=True)
    x += 0.5
    assert t.max().item() == 0.25  # the caller's tensor is untouched
    assert to_rgb_tensor(t).device == t.device


# ---------------------------------------------------------------------- files
def _png_claiming(width: int, height: int) -> bytes:
    """A PNG signature and IHDR claiming ``width`` x ``height`` RGB, with no pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_decompression_bomb_is_an_image_error_that_says_what_to_do(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_claiming(40000, 40000))
    with pytest.raises(ImageError, match="MAX_IMAGE_PIXELS") as info:
        to_rgb_tensor(bomb)
    assert "downscale" in str(info.value)


def test_float_tiff_in_unit_range_keeps_its_values(tmp_path):
    """A float32 TIFF (mode F) with values in [0, 1] used to encode as black."""
    values = np.linspace(0.1, 0.9, 12, dtype=np.float32).reshape(3, 4)
    path = tmp_path / "float.tif"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "F"
    x = to_rgb_tensor(path)
    assert torch.allclose(x, torch.from_numpy(values).expand(3, -1, -1))
    assert x.mean().item() == pytest.approx(0.5, abs=1e-6)


def test_image_files_of_every_kind(tmp_path):
    values = np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000
    Image.fromarray(values).save(tmp_path / "gray16.png")
    assert Image.open(tmp_path / "gray16.png").mode.startswith("I")
    x16 = to_rgb_tensor(tmp_path / "gray16.png")
    assert torch.allclose(x16[0], torch.from_numpy(values / 65535.0).float())
    palette(True).save(tmp_path / "palette.png")
    assert torch.allclose(to_rgb_tensor(str(tmp_path / "palette.png")), rgb(1.0))
    Image.new("CMYK", (W, H), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    assert torch.allclose(to_rgb_tensor(tmp_path / "cmyk.jpg"), rgb(1.0, 0.0, 0.0), atol=0.02)
    Image.new("RGB", (W, H), (255, 51, 0)).save(tmp_path / "rgb.png")
    assert torch.allclose(to_rgb_tensor(tmp_path / "rgb.png"), rgb(1.0, 0.2, 0.0))


@pytest.mark.parametrize("kind", ["missing", "folder", "text", "cut-png", "empty-file"])
def test_unreadable_files_are_image_errors(kind, tmp_path):
    path = tmp_path / "x.png"
    if kind == "folder":
        path.mkdir()
    elif kind == "text":
        path.write_text("not an image\n")
    elif kind == "cut-png":
        path = _cut_png(tmp_path)
    elif kind == "empty-file":
        path.write_bytes(b"")
    with pytest.raises(ImageError):
        to_rgb_tensor(path)


# ---------------------------------------------------------------------- the codec's door
def _small_codec():
    """A random-weight hyperprior codec with its tables (coding needs no training)."""
    torch.manual_seed(0)
    codec = build_codec("bmshj2018-hyperprior", N=32, M=48).eval()
    codec.update()
    return codec


@pytest.fixture(scope="module")
def small_codec():
    return _small_codec()


def _with(x: torch.Tensor, index: int, value: float) -> torch.Tensor:
    """A copy of ``x`` with its ``index``-th value set to ``value``."""
    out = x.clone()
    out.view(-1)[index] = value
    return out


def test_four_d_tensors_go_through_the_same_rules_in_compress(small_codec):
    codec = small_codec
    x = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(0))
    u8 = (x * 255).round().to(torch.uint8)
    assert codec.compress(u8) == codec.compress(u8.float() / 255)  # converted, not coded raw
    assert codec.compress(u8) == codec.compress(u8[0])  # 4-D and 3-D: one rule
    assert codec.compress(x.double()) == codec.compress(x)
    bad = {
        "float in 0..255": x * 255,
        "int64": u8.long(),
        "empty": torch.zeros(1, 3, 0, 0),
        "batch of two": torch.cat([x, x]),
        "one NaN": _with(x, 0, float("nan")),
        "one -inf": _with(x, 7, float("-inf")),
        "all inf": x.clone().fill_(float("inf")),
    }
    for what, image in bad.items():
        with deadline(60), pytest.raises(ImageError):
            codec.compress(image)
            pytest.fail(f"{what} coded")
        with deadline(60), pytest.raises(ImageError):
            codec.compress_with_latent(image)
        with deadline(60), pytest.raises(ImageError):
            codec.roundtrip(image)


def _poisoned(codec, name: str, value: float):
    state = codec.codec_state()
    sd = {k: v.clone() for k, v in state["state_dict"].items()}
    sd[name].view(-1)[0] = value
    return {"codec_config": state["codec_config"], "state_dict": sd}


@pytest.mark.parametrize("value", NONFINITE, ids=["nan", "inf", "-inf"])
def test_non_finite_weights_are_refused_before_coding(small_codec, value):
    import copy

    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    data = small_codec.compress(x)
    for name in ("g_a.0.weight", "h_s.0.bias", "g_s.0.weight", "entropy_bottleneck.quantiles"):
        with pytest.raises(CheckpointError, match="NaN or infinite"):
            load_codec(_poisoned(small_codec, name, value))
        codec = copy.deepcopy(small_codec)
        codec.model.load_state_dict(_poisoned(small_codec, name, value)["state_dict"])
        with deadline(60), pytest.raises(CheckpointError):
            codec.compress(x)
        with deadline(60), pytest.raises(CheckpointError):
            codec.decompress(data)
        with pytest.raises(CheckpointError):
            codec.update()


def test_the_entropy_coder_refuses_non_finite_latents_promptly(small_codec):
    """Below the codec's door: the coder's own guard (the old escape loop never ended)."""
    state = small_codec.coding_state()
    y = torch.zeros(1, 48, 4, 4)
    z = torch.zeros(1, 32, 1, 1)
    for bad_y, bad_z in ((y.clone().fill_(float("nan")), z), (y, z.clone().fill_(float("-inf")))):
        with deadline(30), pytest.raises(CheckpointError, match="NaN or infinite"):
            state.encode(bad_y, bad_z)


def test_escape_bit_lengths_match_the_reference_loop():
    """The closed-form bit lengths of the escape coder equal the old loop's (the stream format
    is unchanged), and garbage values raise instead of looping."""
    from icm_lib.entropy import _ESCAPE_BITS, _Writer

    rng = np.random.default_rng(0)
    raw = np.concatenate([np.arange(0, 70), rng.integers(0, 1 << _ESCAPE_BITS, 500)])
    raw = np.concatenate([raw, (1 << np.arange(_ESCAPE_BITS)) - 1, 1 << np.arange(_ESCAPE_BITS)])
    esc = 10
    v = np.where(raw % 2 == 1, -(raw + 1) // 2, raw // 2 + esc)  # the decoder's inverse
    writer = _Writer()
    writer.escapes(v, esc)
    nbits = writer.chunks[0][1]
    reference = np.array([int(r).bit_length() for r in raw])
    assert np.array_equal(nbits, reference)
    for garbage in (np.iinfo(np.int64).min, 1 << 40):
        with pytest.raises(ValueError, match="too large"):
            _Writer().escapes(np.array([garbage]), esc)


# ---------------------------------------------------------------------- README's table
def _bomb(tmp_path: Path) -> Path:
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_claiming(40000, 40000))
    return path


def _text(tmp_path: Path) -> Path:
    path = tmp_path / "notes.png"
    path.write_text("not an image")
    return path


def _cut_png(tmp_path: Path) -> Path:
    path = tmp_path / "cut.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:300])
    return path


def _float_tiff(tmp_path: Path, value: float) -> Path:
    path = tmp_path / f"float-{value}.tif"
    a = np.full((H, W), 0.25, np.float32)
    a[0, 0] = value
    Image.fromarray(a).save(path)
    return path


def _nan_codec():
    codec = _small_codec()
    with torch.no_grad():
        codec.model.g_a[0].weight[0, 0, 0, 0] = float("nan")
    return codec


_T = torch.full((1, 3, H, W), 0.25)
#: README row (door, input) -> inputs for the door and the expected image where it converts
README_ROWS = {
    ("path", "a missing file, a folder, a text file, a cut PNG"): lambda p: [
        p / "missing.png",
        p,
        _text(p),
        _cut_png(p),
    ],
    ("path", "a PNG claiming 40000 × 40000 px (a decompression bomb)"): lambda p: [_bomb(p)],
    ("path", "a float32 TIFF (mode `F`) in [0, 1]"): lambda p: [_float_tiff(p, 0.25)],
    ("path", "a float32 TIFF holding NaN, ±inf or 255"): lambda p: [
        _float_tiff(p, float("nan")),
        _float_tiff(p, float("inf")),
        _float_tiff(p, 255.0),
    ],
    ("PIL image", "mode `La` / `RGBa` (premultiplied alpha), `LA`, `P`, `CMYK`, `I;16`"): (
        lambda p: [
            pil("La", const([64, 255], (H, W, 2), np.uint8)),
            pil("RGBa", const([64, 64, 64, 255], (H, W, 4), np.uint8)),
            Image.new("LA", (W, H), (64, 255)),
            Image.new("L", (W, H), 64).convert("P"),
            Image.new("L", (W, H), 64).convert("RGB").convert("CMYK"),
            pil("I;16", const(64 * 257, (H, W), "<u2")),
        ]
    ),
    ("PIL image", "mode `I` with values outside 0..65535"): lambda p: [
        pil("I", const(-5, (H, W), np.int32)),
        pil("I", const(1 << 20, (H, W), np.int32)),
    ],
    ("array", "uint8 / uint16"): lambda p: [
        const(64, (H, W, 3), np.uint8),
        const(64 * 257, (H, W, 3), np.uint16),
    ],
    ("array", "int8 … int64, uint32, uint64 (e.g. int64 with maximum 300)"): lambda p: [
        const(300, (H, W, 3), t) for t in ("int8", "int16", "int32", "int64", "uint32", "uint64")
    ],
    ("array", "float outside [0, 1], NaN, ±inf"): lambda p: [
        const(v, (H, W, 3), np.float32) for v in (255.0, -0.5, float("nan"), float("inf"))
    ],
    ("array", "empty (a side of 0), 5 channels, (C, H, W)"): lambda p: [
        const(0, (0, W, 3), np.uint8),
        const(0, (H, W, 5), np.uint8),
        const(0, (3, H, 9), np.uint8),
    ],
    ("tensor", "(3, H, W) or (1, 3, H, W) float in [0, 1], uint8"): lambda p: [
        _T,
        _T[0],
        torch.full((1, 3, H, W), 64, dtype=torch.uint8),
    ],
    ("tensor", "(1, 3, H, W) float in 0..255, int64, NaN / ±inf, (1, 3, 0, 0), a batch of 2"): (
        lambda p: [
            _T * 255,
            (_T * 255).long(),
            _T.clone().fill_(float("nan")),
            _T.clone().fill_(float("-inf")),
            torch.zeros(1, 3, 0, 0),
            torch.zeros(2, 3, H, W),
        ]
    ),
    ("codec", "weights holding NaN / ±inf (a diverged run), saved or in memory"): lambda p: [
        "codec"
    ],
}
#: what the converted rows give (the gray levels their inputs were built with)
README_VALUES = {
    ("path", "a float32 TIFF (mode `F`) in [0, 1]"): 0.25,
    ("PIL image", "mode `La` / `RGBa` (premultiplied alpha), `LA`, `P`, `CMYK`, `I;16`"): 64 / 255,
    ("array", "uint8 / uint16"): 64 / 255,
    ("tensor", "(3, H, W) or (1, 3, H, W) float in [0, 1], uint8"): None,
}


def _readme_rows() -> list[tuple[str, str, str]]:
    text = README.read_text()
    start = text.index("| image door | input | gets |")
    rows = []
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows.append(tuple(cells))
    return rows


def test_readme_bad_input_table_matches_behaviour(tmp_path):
    """Each row of the README's image-door table, built and fed to the door: the error class it
    names is raised, or the image converts; rows and test cases are the same set."""
    rows = _readme_rows()
    assert {(d, i) for d, i, _ in rows} == set(README_ROWS), "README table and test drifted"
    for door, what, gets in rows:
        named = re.findall(r"`(\w+Error)`", gets)
        for image in README_ROWS[(door, what)](tmp_path):
            if isinstance(image, str) and image == "codec":
                assert named == ["CheckpointError"], gets
                codec = _nan_codec()
                with deadline(60), pytest.raises(CheckpointError):
                    codec.compress(_T)
                with pytest.raises(CheckpointError):
                    load_codec(codec.codec_state())
                continue
            if named:
                with pytest.raises(ImageError) as info:
                    to_rgb_tensor(image)
                assert type(info.value).__name__ == named[0], (door, what)
            else:
                x = to_rgb_tensor(image)
                assert x.shape == (3, H, W), (door, what)
                value = README_VALUES[(door, what)]
                if value is not None:
                    assert torch.allclose(x, rgb(value), atol=2 / 255), (door, what, x[:, 0, 0])
