"""``python -m icm_lib``: code an image file to a stream file and back, from the shell.

::

    python -m icm_lib encode photo.jpg -o photo.icm --codec data/cache/icm/<run>/   # a saved run
    python -m icm_lib decode photo.icm -o photo.png --codec data/cache/icm/<run>/
    python -m icm_lib encode photo.jpg -o photo.icm --zoo bmshj2018-hyperprior --quality 3
    python -m icm_lib decode photo.icm -o photo.png --zoo       # the zoo model the header names

``encode`` reads any image Pillow reads (through :func:`icm_lib.data.images.to_rgb_tensor`, whose
rules decide how a 16-bit, float, palette or transparent image becomes RGB in [0, 1]) and writes
the stream atomically; ``decode`` prints what the stream's header claims, then writes a PNG.
A stream names its codec (CompressAI model, quality, N, M) and carries the fingerprint of the
weights and tables that wrote it, but not the weights: decode with the same ``--codec`` (or
``--zoo`` for CompressAI's pretrained models); another codec is refused, never misdecoded.

Bad input -- an unreadable image, a cut or foreign stream, a missing or diverged codec, pretrained
weights offline -- prints one line ``error: ...`` on stderr and exits with status 2.

The library's other commands are reached through the same entry point (``python -m icm_lib
train ...`` runs ``python -m icm_lib.train ...``; see :data:`FORWARDED`), and end the same way on
bad input or settings: one ``error: ...`` line, status 2 (:func:`command_status`).
"""

from __future__ import annotations

import argparse
import importlib
import io
import sys
import time
from pathlib import Path

from .errors import ICMError

#: subcommands handed to their module's ``main(argv)``: name -> (module, help)
FORWARDED = {
    "train": ("icm_lib.train", "train one codec (python -m icm_lib.train)"),
    "study": ("icm_lib.study", "the multi-seed studies (python -m icm_lib.study)"),
    "gan": ("icm_lib.gan", "PatchGAN decoder finetuning (python -m icm_lib.gan)"),
    "report": ("icm_lib.report", "the README's results tables (python -m icm_lib.report)"),
    "tutorial": ("icm_lib.tutorial", "run the notebooks (python -m icm_lib.tutorial)"),
    "bench": ("icm_lib.dev.bench", "benchmarks (python -m icm_lib.bench)"),
    "fuzz": ("icm_lib.dev.fuzz", "fuzz the decoder (python -m icm_lib.fuzz)"),
    "world-check": ("icm_lib.world_check", "a world's acceptance checks (icm_lib.world_check)"),
    "pilot": ("icm_lib.pilot", "the λ pilot (python -m icm_lib.pilot)"),
    "claims": ("icm_lib.claims", "the claims' verdicts (python -m icm_lib.claims)"),
}

#: exit status of the ``error: ...`` line
EXIT_BAD_INPUT = 2
#: exit status of a study whose runs did not all finish (a :class:`~icm_lib.errors.LaunchError`
#: with its report: one line per failed run and its log)
EXIT_RUNS_FAILED = 1

_CODEC_HELP = (
    "The decoder needs the codec that wrote a stream: the header names the CompressAI model, "
    "quality and N/M and holds the fingerprint of its weights and entropy tables, not the "
    "weights. Decode with the same --codec (or --zoo for CompressAI's pretrained weights); a "
    "stream from other weights is refused, never misdecoded."
)


_CHANNELS_LAST = (
    "run the transforms in channels-last layout (faster on CPUs; same stream format, any "
    "decoder reads it)"
)
_BF16 = (
    "run the transforms under bfloat16 autocast: 2-3x faster where the hardware multiplies "
    "bfloat16 (AVX512-BF16 or AMX CPUs, tensor-core GPUs), much slower elsewhere; same stream "
    "format; decoding costs the image a small PSNR (README: Real coding)"
)
_ZOO_WEIGHTS = (
    "with --zoo: a local copy of the zoo's weights file for that model and quality (e.g. "
    "bmshj2018-hyperprior-mse-3-*.pth.tar), read instead of torch.hub's cache or the download "
    "(README: Weights on a machine without internet)"
)


def at_least(low: int):
    """An argparse ``type``: an integer of at least ``low`` (``--accumulate`` 1, a seed 0), so
    that a bad count is the parser's one-line error, not a failure after the data is ready."""

    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    parse.__name__ = "int"  # argparse names the type in "invalid int value: 'x'"
    return parse


def build_parser() -> argparse.ArgumentParser:
    """The one parser of ``python -m icm_lib`` (each command a subparser)."""
    from .codec import CODEC_NAMES, ICMCodec

    ap = argparse.ArgumentParser(
        prog="python -m icm_lib",
        description="Image coding for machines: code image files with a learned codec.",
        epilog=_CODEC_HELP,
    )
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    enc = sub.add_parser(
        "encode",
        help="image file -> stream file",
        description="Encode one image file (any format Pillow reads) to a stream file.",
        epilog=_CODEC_HELP,
    )
    enc.add_argument("image", type=Path, help="the image file")
    enc.add_argument("-o", "--output", type=Path, required=True, help="the stream file to write")
    src = enc.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--codec",
        type=Path,
        metavar="PATH",
        help="a saved codec (codec.pt) or a finished run's folder holding one",
    )
    src.add_argument(
        "--zoo", choices=CODEC_NAMES, metavar="NAME", help=f"CompressAI pretrained: {CODEC_NAMES}"
    )
    enc.add_argument("--quality", type=int, default=3, help="zoo quality (default 3)")
    enc.add_argument("--zoo-weights", type=Path, default=None, metavar="FILE", help=_ZOO_WEIGHTS)
    enc.add_argument("--device", default="cpu", help="where g_a runs (default cpu)")
    enc.add_argument("--channels-last", action="store_true", help=_CHANNELS_LAST)
    enc.add_argument("--bf16", action="store_true", help=_BF16)

    dec = sub.add_parser(
        "decode",
        help="stream file -> PNG",
        description="Decode a stream file written by `encode` (or ICMCodec.compress) to a PNG.",
        epilog=_CODEC_HELP,
    )
    dec.add_argument("stream", type=Path, help="the stream file")
    dec.add_argument("-o", "--output", type=Path, required=True, help="the PNG file to write")
    src = dec.add_mutually_exclusive_group()
    src.add_argument(
        "--codec",
        type=Path,
        metavar="PATH",
        help="the saved codec (codec.pt) or run folder that wrote the stream",
    )
    src.add_argument(
        "--zoo",
        action="store_true",
        help="CompressAI's pretrained model named by the header (model and quality)",
    )
    dec.add_argument("--zoo-weights", type=Path, default=None, metavar="FILE", help=_ZOO_WEIGHTS)
    dec.add_argument(
        "--max-pixels",
        type=int,
        default=ICMCodec.max_decode_pixels,
        help="largest padded image accepted; a stream's claimed size sets the decoding's "
        f"time and memory (default {ICMCodec.max_decode_pixels})",
    )
    dec.add_argument(
        "--tile",
        type=int,
        default=None,
        help="run g_s on latent tiles of this side (16*TILE px): bounded synthesis memory for "
        "large images, the same pixels to float rounding (default: the whole image at once)",
    )
    dec.add_argument("--device", default="cpu", help="where g_s runs (default cpu)")
    dec.add_argument("--channels-last", action="store_true", help=_CHANNELS_LAST)
    dec.add_argument("--bf16", action="store_true", help=_BF16)

    for name, (_, text) in FORWARDED.items():
        sub.add_parser(name, help=text, add_help=False)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (0, or 2 after an ``error: ...`` line)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in FORWARDED:
        return _forward(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    try:
        if args.command == "encode":
            return encode(args)
        return decode(args)
    except (ICMError, OSError) as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _forward(name: str, argv: list[str]) -> int:
    main = importlib.import_module(FORWARDED[name][0]).main
    return command_status(main, argv, empty_fails=name == "train")


def command_status(main, argv: list[str] | None = None, *, empty_fails: bool = False) -> int:
    """The exit status of a command's ``main(argv)`` run from the shell (``python -m icm_lib
    NAME`` and each module's ``python -m icm_lib.NAME``): an int result is the status (tutorial,
    bench, fuzz return theirs); another result is 0, or 1 where it is empty and ``empty_fails``
    (``train``: no record). Bad input or settings -- any :class:`~icm_lib.errors.ICMError`
    (a :class:`~icm_lib.errors.ConfigError` for an unknown profile, preset or device, a locked
    run, a launcher that cannot run, data or weights missing offline, a full disk) -- print one
    line ``error: ...`` on stderr and give 2, not a traceback; a study whose runs failed prints
    its report (a line per run, with its log) and gives 1. Anything else, a bare ``OSError``
    included, is a fault of the library and keeps its traceback. ``main`` called from Python
    raises as usual."""
    try:
        result = main(argv)
    except ICMError as exc:
        if getattr(exc, "report", None) is None:
            print(f"error: {_one_line(exc)}", file=sys.stderr)
            return EXIT_BAD_INPUT
        print(f"error: {str(exc).strip()}", file=sys.stderr)  # a run per line, with its log
        return EXIT_RUNS_FAILED
    if isinstance(result, int) and not isinstance(result, bool):
        return result
    return (0 if result else 1) if empty_fails else 0


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, ICMError) else f"{type(exc).__name__}: {text}"


def _set_transforms(codec, args: argparse.Namespace) -> None:
    """``--channels-last`` and ``--bf16`` on ``codec`` (on the device it was loaded on);
    ``--bf16`` where the device only emulates bfloat16 is done as asked, with a line on stderr
    that it is slower there, not faster (:func:`~icm_lib.runtime.bf16_slower`)."""
    from .runtime import bf16_slower

    codec.channels_last = args.channels_last
    codec.bf16 = args.bf16
    device = next(codec.parameters()).device
    slower = bf16_slower(device) if args.bf16 else None
    if slower:
        print(
            f"--bf16 on {device.type}: {slower}; the transforms run in bfloat16 as asked "
            "(the stream is the same format)",
            file=sys.stderr,
        )


def load_saved_codec(path: Path, device: str = "cpu"):
    """A codec saved by a run (``codec.pt``, or the run folder holding it), in eval mode.

    Raises:
        CheckpointError: no file, a damaged file, not a codec, or non-finite weights.
    """
    from .codec import load_codec
    from .errors import CheckpointError
    from .files import load_checkpoint
    from .runtime import RunFiles, get_device

    path = Path(path)
    if path.is_dir():
        if not (path / RunFiles.FINAL).is_file():
            raise CheckpointError(
                f"{path} holds no {RunFiles.FINAL}: the run is not finished (or the folder is "
                "not a run); finish it, or pass the codec file itself"
            )
        path = path / RunFiles.FINAL
    state = load_checkpoint(path)
    if not isinstance(state, dict) or "codec_config" not in state:
        raise CheckpointError(
            f"{path} is not a saved icm_lib codec (no codec_config); pass a run's codec.pt"
        )
    return load_codec(state).to(get_device(device)).eval()


def _zoo_codec(name: str, quality: int, device: str, weights: Path | None = None):
    from .codec import build_codec
    from .runtime import get_device

    device = get_device(device)  # a wrong device before any download
    if weights is not None and not Path(weights).is_file():
        raise ICMError(f"--zoo-weights: no file at {weights}")
    # a quality the zoo does not have: build_codec's ConfigError, an ICMError
    codec = build_codec(
        name, quality, pretrained=True, checkpoint=None if weights is None else str(weights)
    )
    return codec.to(device).eval()


def encode(args: argparse.Namespace) -> int:
    """``encode``: read the image, compress, write the stream atomically, report."""
    from .data.images import to_rgb_tensor
    from .files import atomic_write_bytes
    from .metrics import bpp_from_bytes

    x = to_rgb_tensor(args.image, batch=True)  # the image first: a bad one costs no model
    if args.zoo_weights is not None and args.zoo is None:
        raise ICMError("--zoo-weights goes with --zoo (a saved --codec holds its own weights)")
    if args.codec is not None:
        codec = load_saved_codec(args.codec, args.device)
    else:
        codec = _zoo_codec(args.zoo, args.quality, args.device, args.zoo_weights)
    h, w = x.shape[-2:]
    _set_transforms(codec, args)
    t0 = time.perf_counter()
    data = codec.compress(x)
    seconds = time.perf_counter() - t0
    atomic_write_bytes(args.output, data)
    quality = f"q{codec.quality}" if codec.quality else f"N={codec.N} M={codec.M}"
    print(
        f"{args.image} ({w}x{h} px) -> {args.output}: {len(data)} bytes, "
        f"{bpp_from_bytes(len(data), h, w):.4f} bpp, {seconds:.2f} s "
        f"({codec.name} {quality}, fingerprint {codec.fingerprint.hex()})"
    )
    return 0


def describe_header(header) -> list[str]:
    """What a stream's header claims, one fact a line (printed by ``decode``)."""
    quality = f"q{header.quality}" if header.quality else "explicit N/M"
    ph, pw = header.height + header.pad_h, header.width + header.pad_w
    return [
        f"codec        {header.codec} {quality} (N={header.N}, M={header.M})",
        f"image        {header.width}x{header.height} px (padded {pw}x{ph})",
        f"latent       {'x'.join(str(v) for v in header.latent_shape)}",
        f"fingerprint  {header.fingerprint.hex()}",
    ]


def decode(args: argparse.Namespace) -> int:
    """``decode``: print the header's claims, decode, write the PNG atomically, report."""
    import numpy as np
    from PIL import Image

    from . import bitstream
    from .errors import BitstreamError
    from .files import atomic_write_bytes

    if args.output.suffix.lower() != ".png":
        raise ICMError(f"decode writes PNG; name the output *.png, not {args.output.name}")
    if args.max_pixels <= 0:
        raise ICMError(f"--max-pixels must be positive, got {args.max_pixels}")
    if not args.stream.is_file():
        raise BitstreamError(f"no stream file at {args.stream}")
    data = args.stream.read_bytes()
    header, strings = bitstream.unpack(data)
    print(f"{args.stream}: {len(data)} bytes, payload {sum(len(s) for s in strings)} bytes")
    for line in describe_header(header):
        print(f"  {line}")
    if args.zoo_weights is not None and not args.zoo:
        raise ICMError("--zoo-weights goes with --zoo (a saved --codec holds its own weights)")
    if args.codec is not None:
        codec = load_saved_codec(args.codec, args.device)
    elif args.zoo:
        if not header.quality:
            raise BitstreamError(
                "the stream was written by a codec with explicit N/M, not a zoo model: "
                "decode it with --codec and the saved codec that wrote it"
            )
        codec = _zoo_codec(header.codec, header.quality, args.device, args.zoo_weights)
    else:
        raise ICMError(
            "which codec wrote this stream? pass --codec with the saved codec (codec.pt or its "
            "run folder), or --zoo if it was CompressAI's pretrained model"
        )
    t0 = time.perf_counter()
    if args.tile is not None and args.tile <= 0:
        raise ICMError(f"--tile must be positive, got {args.tile}")
    _set_transforms(codec, args)
    x_hat = codec.decompress(data, max_pixels=args.max_pixels, tile=args.tile)
    seconds = time.perf_counter() - t0
    pixels = (x_hat[0] * 255.0).round().clamp(0, 255).to("cpu").byte().permute(1, 2, 0)
    png = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels.numpy())).save(png, format="PNG")
    atomic_write_bytes(args.output, png.getvalue())
    print(f"wrote {args.output} ({header.width}x{header.height} px) in {seconds:.2f} s")
    return 0


__all__ = ["FORWARDED", "build_parser", "main", "encode", "decode", "load_saved_codec"]
