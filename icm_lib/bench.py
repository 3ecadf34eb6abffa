"""Benchmarks that print figures (never timed tests).

    python -m icm_lib.bench codec [--pretrained] [--quality 3] [--repeats 3]

``codec``: for each default codec on 512x768 photos (scikit-image's coffee and rocket, resized):
estimated vs actual bpp and their ratio, and the encode/decode time of ``ICMCodec.compress`` /
``decompress`` (container, checks, padding included) next to CompressAI's own ``compress`` /
``decompress`` on the same model, as a ratio. Without ``--pretrained`` (offline) the architectures
have random weights, so their bpp says nothing about coding efficiency; the cached MSE reference
codec of the cpu profile (trained by notebook 00) is added as a trained row when it exists.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .codec import CODEC_NAMES, ICMCodec, build_codec, load_codec
from .data.images import to_rgb_tensor
from .data.transforms import pad_to_multiple
from .runtime import load_checkpoint


def bench_images() -> list[torch.Tensor]:
    from skimage import data

    out = []
    for name in ("coffee", "rocket"):
        x = to_rgb_tensor(getattr(data, name)())[None]
        out.append(F.interpolate(x, size=(512, 768), mode="bilinear", antialias=True,
                                 align_corners=False).clamp(0, 1))
    return out


def _time(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def bench_codec(codec: ICMCodec, label: str, images: list[torch.Tensor], repeats: int) -> dict:
    codec.eval()
    codec.update(force=True)
    rows = []
    for x in images:
        xp, _ = pad_to_multiple(x)
        coded = codec.roundtrip(x)
        t_ours_enc, data = _time(lambda: codec.compress(x), repeats)
        t_ours_dec, _ = _time(lambda: codec.decompress(data), repeats)
        with torch.no_grad():
            t_cai_enc, raw = _time(lambda: codec.model.compress(xp), repeats)
            t_cai_dec, _ = _time(lambda: codec.model.decompress(raw["strings"], raw["shape"]),
                                 repeats)
        rows.append(dict(est=coded.bpp_estimate, coder=coded.bpp_coder_estimate, act=coded.bpp,
                         pay=coded.bpp_payload, enc=t_ours_enc / t_cai_enc,
                         dec=t_ours_dec / t_cai_dec, t_enc=t_ours_enc, t_dec=t_ours_dec))
    mean = {k: statistics.fmean(r[k] for r in rows) for k in rows[0]}
    print(f"{label:<34}{mean['est']:>8.4f}{mean['coder']:>8.4f}{mean['act']:>8.4f}"
          f"{mean['act'] / mean['est']:>8.3f}{mean['pay'] / mean['coder']:>8.3f}"
          f"{mean['t_enc']:>8.3f}{mean['enc']:>7.2f}{mean['t_dec']:>8.3f}{mean['dec']:>7.2f}",
          flush=True)
    return mean


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("what", choices=["codec"])
    ap.add_argument("--pretrained", action="store_true", help="CompressAI zoo weights (internet)")
    ap.add_argument("--quality", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--codecs", nargs="*", default=list(CODEC_NAMES))
    ap.add_argument("--cache-dir", type=Path, default=Path(__file__).resolve().parent.parent
                    / "data" / "cache")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    images = bench_images()
    print(f"images: {len(images)} x 512x768, torch threads {torch.get_num_threads()}, "
          f"median of {args.repeats}")
    print(f"{'codec':<34}{'est':>8}{'coder':>8}{'actual':>8}{'act/est':>8}{'pay/cod':>8}"
          f"{'enc s':>8}{'x CAI':>7}{'dec s':>8}{'x CAI':>7}")
    for name in args.codecs:
        codec = build_codec(name, quality=args.quality, pretrained=args.pretrained)
        tag = "pretrained" if args.pretrained else "random weights"
        bench_codec(codec, f"{name} q{args.quality} ({tag})", images, args.repeats)
    for path in sorted(args.cache_dir.glob("mse-codec-*/codec.pt")):
        codec = load_codec(load_checkpoint(path))
        bench_codec(codec, f"{codec.name} N{codec.N} M{codec.M} (trained, MSE)", images,
                    args.repeats)
    print("est: likelihood estimate; coder: with CompressAI's scale table; actual: container bytes;"
          " pay/cod: payload / coder estimate; x CAI: time ratio icm_lib / CompressAI")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
