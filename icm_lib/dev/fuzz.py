"""Fuzzing the coder's doors: damaged and crafted containers, non-finite images and weights.

    python -m icm_lib.fuzz [--cases 1000] [--train-steps 300] [--aspect-side 65536] [--out f.json]

For each codec family (scale hyperprior, mean-scale, autoregressive) with random weights and
briefly trained on procedural scenes, one stream of a small image is mutated in five ways, the
CRC-32 recomputed each time so that every case reaches the decoder:

* ``payload``: bit flips, overwritten bytes, dropped or appended words, truncation;
* ``header``: random bytes of the header overwritten (any field, including lengths and counts);
* ``field``: one header field set to a neighbouring, extreme or random value;
* ``reshape``: height, width and latent shape changed *consistently*, so the payload is decoded
  for an image of another size;
* ``aspect``: the same with an extreme aspect ratio: one side 64 or 128 px, the other up to
  ``--aspect-side`` (64 x 65,536 is the largest claim the default ``max_decode_pixels`` takes;
  autoregressive codecs decode 3 H + W wavefronts, so a thin claim costs more than a square one).

and one more kind tries the encoder's door:

* ``nonfinite``: NaN, +inf or -inf in an image of every form (3-D and 4-D tensors of float32,
  float16 and float64, float arrays, PIL ``F`` images, float TIFF files), or in one weight of the
  codec (compressed, decoded, or saved and loaded). Every case must be refused
  (:class:`~icm_lib.errors.ImageError` / :class:`~icm_lib.errors.CheckpointError`), promptly:
  before the entropy coder was guarded, a NaN looped forever in it.

and one the file doors:

* ``files``: a saved codec (``codec.pt``), a results file (``study-*.json``) or a training log
  (``log.jsonl``) damaged by a cut at a random byte, a flipped byte, an overwritten block, an
  emptied file, a NaN / Infinity number (JSON) or a garbled line (log), then read through the
  project's reader (:func:`~icm_lib.cli.load_saved_codec`, ``StudyFile.read``,
  :func:`~icm_lib.files.repair_log`). A codec must be refused
  (:class:`~icm_lib.errors.CheckpointError`) or load its exact weights; a results file refused
  (:class:`~icm_lib.errors.DamagedFileError`) or read (a changed digit of a number cannot be
  told); a log repaired to complete records (a changed digit cannot be told there either).

Each case runs in a worker process; a case that kills it (a crash) or outlasts ``--timeout`` (a
hang) is counted and the worker restarted with the next case. Outcomes: ``decoded`` (an image of
the header's size, finite; ``files``: read as the reader promises), ``refused``
(:class:`~icm_lib.errors.BitstreamError` for streams, any :class:`~icm_lib.errors.ICMError` for
``nonfinite``, the reader's error for ``files``), ``other`` (any other exception, or a
non-finite input accepted: a defect), ``crash``, ``hang``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import replace
from pathlib import Path

import torch

from .. import bitstream
from ..runtime import mix_seed
from .common import FAMILY_CODECS, scene_images, train_briefly

#: stream mutations (decoded) and the encoder's door (``nonfinite``)
KINDS = ("payload", "header", "field", "reshape", "aspect", "nonfinite", "files")
#: the longest side of an ``aspect`` claim by default: 64 x 65,536 = the default decode limit
ASPECT_SIDE = 65536
OUTCOMES = ("decoded", "refused", "other", "crash", "hang")


# ---------------------------------------------------------------------- mutations
def _header_length(data: bytes) -> int:
    """Bytes before the first payload (magic ... group count, length of the first group)."""
    header, strings = bitstream.unpack(data)
    return len(data) - 4 - sum(len(s) for s in strings)


def _with_crc(body: bytes) -> bytes:
    import struct
    import zlib

    return body + struct.pack(">I", zlib.crc32(body))


def mutate(data: bytes, kind: str, rng: random.Random, aspect_side: int = ASPECT_SIDE) -> bytes:
    """One mutation of a valid container ``data`` (``kind``: one of :data:`KINDS` but
    ``nonfinite``); the checksum is recomputed. ``aspect_side``: the longest side of an
    ``aspect`` claim."""
    if kind == "aspect":
        return _aspect(data, rng, aspect_side)
    if kind not in _MUTATIONS:
        streams = tuple(k for k in KINDS if k not in ("nonfinite", "files"))
        raise ValueError(f"kind must be one of {streams}")
    return _MUTATIONS[kind](data, rng)


def _mutate_payload(data: bytes, rng: random.Random) -> bytes:
    header, strings = bitstream.unpack(data)
    payload = bytearray(strings[0])
    op = rng.randrange(5)
    if op == 0 and payload:  # bit flips
        for _ in range(rng.randint(1, 8)):
            payload[rng.randrange(len(payload))] ^= 1 << rng.randrange(8)
    elif op == 1 and payload:  # overwritten bytes
        for _ in range(rng.randint(1, 4)):
            payload[rng.randrange(len(payload))] = rng.randrange(256)
    elif op == 2:  # truncation
        payload = payload[: rng.randrange(len(payload) + 1)]
    elif op == 3:  # appended words
        payload += bytes(rng.randrange(256) for _ in range(4 * rng.randint(1, 16)))
    else:  # an inserted zero word
        cut = 4 * rng.randrange(len(payload) // 4 + 1)
        payload = payload[:cut] + bytes(4) + payload[cut:]
    return bitstream.pack(header, [bytes(payload)])


def _mutate_header_bytes(data: bytes, rng: random.Random) -> bytes:
    body = bytearray(data[:-4])
    n = _header_length(data)
    for _ in range(rng.randint(1, 3)):
        body[rng.randrange(4, n)] = rng.randrange(256)
    return _with_crc(bytes(body))


_FIELDS = ("quality", "N", "M", "height", "width", "pad_h", "pad_w", "latent0", "latent1")


def _mutate_field(data: bytes, rng: random.Random) -> bytes:
    header, strings = bitstream.unpack(data)
    name = rng.choice([*_FIELDS, "fingerprint"])
    if name == "fingerprint":
        fp = bytearray(header.fingerprint)
        fp[rng.randrange(len(fp))] ^= 1 << rng.randrange(8)
        return bitstream.pack(replace(header, fingerprint=bytes(fp)), strings)
    latent = name.startswith("latent")
    old = header.latent_shape[int(name[-1])] if latent else getattr(header, name)
    limit = 255 if name == "quality" else 0xFFFF
    candidates = {old + 1, old - 1, old * 2, 0, limit, rng.randrange(limit + 1)}
    new = rng.choice([v for v in candidates if 0 <= v <= limit and v != old])
    if latent:
        shape = list(header.latent_shape)
        shape[int(name[-1])] = new
        return bitstream.pack(replace(header, latent_shape=tuple(shape)), strings)
    return bitstream.pack(replace(header, **{name: new}), strings)


def _reshape(data: bytes, rng: random.Random) -> bytes:
    """Height, width and latent shape changed together: a consistent header for another size."""
    header, strings = bitstream.unpack(data)
    per = (header.height + header.pad_h) // header.latent_shape[0]  # pixels per latent row
    rows = max(1, header.latent_shape[0] + rng.choice([-1, 1, 2, 8, 64]))
    cols = max(1, header.latent_shape[1] + rng.choice([-1, 0, 1, 4, 32]))
    resized = replace(
        header, height=rows * per, width=cols * per, pad_h=0, pad_w=0, latent_shape=(rows, cols)
    )
    return bitstream.pack(resized, strings)


def _aspect(data: bytes, rng: random.Random, long_side: int) -> bytes:
    """A consistent header for an image with an extreme aspect ratio: the short side 64 or 128
    px, the long one ``long_side`` or a random multiple of 64 up to it, either way round."""
    header, strings = bitstream.unpack(data)
    per = (header.height + header.pad_h) // header.latent_shape[0]  # pixels per latent row
    short = per * rng.choice([1, 2])
    longest = max(per, long_side - long_side % per)
    long = rng.choice([longest, per * rng.randint(1, longest // per)])
    sides = [(short, long), (long, short)][rng.randrange(2)]
    # a padded side of 65,536 does not fit the 16-bit size field: 65,535 px plus 1 of padding
    kept = [min(v, 0xFFFF) for v in sides]
    resized = replace(
        header,
        height=kept[0],
        width=kept[1],
        pad_h=sides[0] - kept[0],
        pad_w=sides[1] - kept[1],
        latent_shape=(sides[0] // per, sides[1] // per),
    )
    return bitstream.pack(resized, strings)


_MUTATIONS = {
    "payload": _mutate_payload,
    "header": _mutate_header_bytes,
    "field": _mutate_field,
    "reshape": _reshape,
}


# ---------------------------------------------------------------------- non-finite inputs
#: the forms a ``nonfinite`` case poisons (see the module docstring)
NONFINITE_FORMS = (
    "tensor3",
    "tensor4",
    "tensor4-float16",
    "tensor4-float64",
    "array-float32",
    "array-float64",
    "pil-F",
    "tiff-F",
    "weights-compress",
    "weights-decompress",
    "weights-load",
)


def nonfinite_input(codec, rng: random.Random, folder: Path):
    """One ``nonfinite`` case: ``(form, run, error)`` where ``run()`` feeds a poisoned image to
    ``codec.compress``, or poisons one weight of a copy of ``codec`` and uses it; ``run`` must
    raise ``error`` (:class:`~icm_lib.errors.ImageError` or
    :class:`~icm_lib.errors.CheckpointError`)."""
    import copy

    import numpy as np
    from PIL import Image

    from ..codec import load_codec
    from ..errors import CheckpointError, ImageError

    form = rng.choice(NONFINITE_FORMS)
    value = rng.choice([float("nan"), float("inf"), float("-inf")])
    h, w = rng.randint(1, 96), rng.randint(1, 96)
    gen = np.random.default_rng(rng.randrange(2**32))
    clean = gen.random((h, w, 3)).astype(np.float32)
    clean_chw = torch.from_numpy(clean).permute(2, 0, 1).contiguous()
    image = clean.copy()
    flat = image.reshape(-1)
    n_bad = rng.choice([1, rng.randint(1, flat.size), flat.size])
    flat[gen.choice(flat.size, n_bad, replace=False)] = value
    if form.startswith("weights"):
        sd = {k: v.clone() for k, v in codec.model.state_dict().items()}
        names = [k for k, v in sd.items() if v.is_floating_point() and v.numel()]
        name = rng.choice(names)
        sd[name].view(-1)[rng.randrange(sd[name].numel())] = value
        if form == "weights-load":
            state = {"codec_config": codec.config(), "state_dict": sd}
            return form, lambda: load_codec(state), CheckpointError
        poisoned = copy.deepcopy(codec)
        poisoned.model.load_state_dict(sd)
        if form == "weights-compress":
            return form, lambda: poisoned.compress(clean_chw), CheckpointError
        stream = codec.compress(clean_chw)
        return form, lambda: poisoned.decompress(stream), CheckpointError
    chw = torch.from_numpy(image).permute(2, 0, 1).contiguous()
    if form == "tensor3":
        return form, lambda: codec.compress(chw), ImageError
    if form.startswith("tensor4"):
        dtype = {"tensor4": torch.float32, "tensor4-float16": torch.float16}.get(
            form, torch.float64
        )
        return form, lambda: codec.compress(chw[None].to(dtype)), ImageError
    if form.startswith("array"):
        return form, lambda: codec.compress(image.astype(form.split("-")[1])), ImageError
    gray = np.ascontiguousarray(image[..., 0])
    if np.isfinite(gray).all():  # the poison sat in channels 1-2 only
        gray[0, 0] = value
    if form == "pil-F":
        return form, lambda: codec.compress(Image.fromarray(gray)), ImageError
    path = folder / f"nonfinite-{rng.randrange(10**9)}.tif"
    Image.fromarray(gray).save(path)
    return form, lambda: codec.compress(path), ImageError


FILE_FORMS = ("codec", "results", "log")


def damaged_file(codec_path: str, rng: random.Random, folder: Path):
    """One ``files`` case: ``(form, run)`` where ``run()`` damages a copy of a file and reads it
    through the project's reader, returning ``"refused"``, ``"decoded"`` (read as promised) or
    ``"other:<why>"`` (see the module docstring)."""
    from ..cli import load_saved_codec
    from ..errors import CheckpointError, DamagedFileError
    from ..files import content_hash, load_checkpoint, repair_log
    from ..results import RunRecord, StudyFile

    form = rng.choice(FILE_FORMS)
    path = folder / f"files-{rng.randrange(10**9)}"
    if form == "codec":
        original = Path(codec_path).read_bytes()
        path = path.with_suffix(".pt")
    elif form == "results":
        study = StudyFile(
            profile="fuzz", seeds=[0], compute_hours_in_runs=0.5,
            wall_hours_this_invocation=0.25,
            runs=[RunRecord(task="seg", variant="baseline", lmbda=1.0, seed=0, run_dir=None,
                            steps=10, seconds=1.5, log=[{"step": 10, "loss": 0.25}])],
        )  # fmt: skip
        path = path.with_name("study-fuzz.json")
        study.write(path)
        original = path.read_bytes()
    else:
        records = [{"step": i, "loss": 1.0 / i, "seconds": 0.5 * i} for i in range(1, 9)]
        original = b"".join(json.dumps(r).encode() + b"\n" for r in records)
        path = path.with_suffix(".jsonl")
    data = bytearray(original)
    how = rng.choice(["cut", "flip", "block", "empty", "nan", "garble"])
    if how == "cut":
        data = data[: rng.randrange(len(data))]
    elif how == "flip":
        i = rng.randrange(len(data))
        data[i] ^= 1 << rng.randrange(8)
    elif how == "block":
        i = rng.randrange(len(data))
        data[i : i + rng.randint(1, 64)] = bytes(rng.randrange(256) for _ in range(64))
    elif how == "empty":
        data = bytearray()
    elif how == "nan" and form != "codec":
        text = data.decode()
        for old in ("0.25", "1.5", "0.5"):
            if old in text:
                text = text.replace(old, rng.choice(["NaN", "Infinity", "-Infinity", "1e999"]), 1)
                break
        data = bytearray(text.encode())
    else:  # a garbled line in the middle
        lines = bytes(data).split(b"\n")
        lines.insert(rng.randrange(len(lines)), bytes(rng.randrange(256) for _ in range(20)))
        data = bytearray(b"\n".join(lines))
    path.write_bytes(bytes(data))
    form = f"{form}-{how}"

    def run() -> str:
        if form.startswith("codec"):
            try:
                codec = load_saved_codec(path)
            except CheckpointError:
                return "refused"
            same = content_hash(codec.codec_state()["state_dict"]) == content_hash(
                load_checkpoint(codec_path)["state_dict"]
            )
            return "decoded" if same else "other:changed-weights-loaded"
        if form.startswith("results"):
            try:
                StudyFile.read(path)
            except DamagedFileError:
                return "refused"
            return "decoded"
        repair_log(path)  # the rewritten log: complete records only, no more than there were
        got = [json.loads(line) for line in path.read_bytes().splitlines()]
        complete = all(isinstance(r, dict) and isinstance(r.get("step"), int) for r in got)
        return "decoded" if complete and len(got) <= len(records) else "other:log-not-repaired"

    return form, run


# ---------------------------------------------------------------------- the isolated runner
def _worker(manifest: str, start: int) -> None:
    """Run cases ``start...`` of the manifest, one line per case on stdout."""
    from ..codec import load_codec
    from ..errors import BitstreamError, ICMError
    from ..files import load_checkpoint

    torch.set_num_threads(1)
    tasks = json.loads(Path(manifest).read_text())
    codecs: dict[str, object] = {}
    folder = Path(manifest).parent
    for i, task in enumerate(_expand(tasks)):
        if i < start:
            continue
        path, stream, kind, seed, aspect_side = task
        if path not in codecs:
            codecs[path] = load_codec(load_checkpoint(path)).eval()
        codec = codecs[path]
        if kind == "files":
            try:
                _, run = damaged_file(path, random.Random(seed), folder)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # a repaired log warns, as it should
                    outcome = run()
            except Exception as exc:  # noqa: BLE001 -- a defect to count, not to hide
                outcome = f"other:{type(exc).__name__}"
            print(i, outcome, flush=True)
            continue
        if kind == "nonfinite":
            _, run, expected = nonfinite_input(codec, random.Random(seed), folder)
            try:
                run()
                outcome = "other:accepted"  # a non-finite input coded: a defect
            except expected:
                outcome = "refused"
            except ICMError as exc:  # refused, but for another reason than the poison
                outcome = f"other:{type(exc).__name__}"
            except Exception as exc:  # noqa: BLE001 -- a defect to count, not to hide
                outcome = f"other:{type(exc).__name__}"
            print(i, outcome, flush=True)
            continue
        blob = mutate(Path(stream).read_bytes(), kind, random.Random(seed), aspect_side)
        try:
            x = codec.decompress(blob)
            header, _ = bitstream.unpack(blob)
            ok = x.shape == (1, 3, header.height, header.width) and bool(torch.isfinite(x).all())
            outcome = "decoded" if ok else "other"
        except BitstreamError:
            outcome = "refused"
        except Exception as exc:  # noqa: BLE001 -- a defect to count, not to hide
            outcome = f"other:{type(exc).__name__}"
        print(i, outcome, flush=True)


def _expand(tasks: list[dict]) -> list[tuple]:
    return [
        (
            t["codec"],
            t["stream"],
            t["kind"],
            mix_seed(t["seed"], c),
            t.get("aspect_side", ASPECT_SIDE),
        )
        for t in tasks
        for c in range(t["cases"])
    ]


def run_isolated(
    tasks: list[dict], timeout: float = 10.0, workdir: str | Path | None = None
) -> list[str]:
    """Run every case of ``tasks`` (dicts: codec, stream, kind, cases, seed) in worker
    processes; returns one outcome per case (see module docstring)."""
    cases = _expand(tasks)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        manifest = Path(tmp) / "manifest.json"
        manifest.write_text(json.dumps(tasks))
        outcomes: list[str] = []
        while len(outcomes) < len(cases):
            outcomes += _run_worker(manifest, len(outcomes), len(cases), timeout)
    return outcomes


def _run_worker(manifest: Path, start: int, total: int, timeout: float) -> list[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "icm_lib.dev.fuzz", "--worker", str(manifest), str(start)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    got: list[str] = []
    deadline = time.monotonic() + timeout + 60  # the first case also pays for imports
    try:
        while start + len(got) < total:
            ready, _, _ = select.select(
                [proc.stdout], [], [], max(0.0, deadline - time.monotonic())
            )
            if not ready:
                proc.kill()
                return got + ["hang"]
            line = proc.stdout.readline()
            if not line:  # the worker died on this case
                proc.wait()
                return got + ["crash"]
            got.append(line.split()[1])
            deadline = time.monotonic() + timeout
        return got
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()


def prepare_codecs(folder: Path, train_steps: int, size: int = 128) -> list[dict]:
    """Save a random-weight and (if ``train_steps``) a briefly trained codec of each family and
    one stream of a scene by each; returns their descriptions."""
    from ..codec import build_codec
    from ..files import atomic_torch_save

    images = scene_images(8, 128, seed=0)
    image = scene_images(1, size, seed=1)[0]
    out = []
    for family, name in FAMILY_CODECS:
        for weights in ("random", "trained") if train_steps else ("random",):
            torch.manual_seed(0)
            codec = build_codec(name, N=32, M=48)
            if weights == "trained":
                train_briefly(codec, images, train_steps)
            codec.eval().update()
            path = folder / f"{family}-{weights}.pt"
            atomic_torch_save(codec.codec_state(), path)
            stream = folder / f"{family}-{weights}.icm"
            stream.write_bytes(codec.compress(image))
            out.append(
                {"family": family, "weights": weights, "codec": str(path), "stream": str(stream)}
            )
    return out


def fuzz(
    cases: int,
    train_steps: int,
    timeout: float = 10.0,
    kinds=KINDS,
    aspect_side: int = ASPECT_SIDE,
    aspect_timeout: float = 120.0,
) -> list[dict]:
    """The table of the module docstring: one row per family x weights x kind, with its
    ``cases`` and the count of each of :data:`OUTCOMES`.

    ``aspect`` cases may claim the largest image the decoder accepts, whose decoding takes
    seconds to a minute (it is refused only after its symbols are decoded): they are a hang
    after ``aspect_timeout`` seconds, the others after ``timeout``.
    """
    with tempfile.TemporaryDirectory() as tmp:
        codecs = prepare_codecs(Path(tmp), train_steps)
        tasks = [
            dict(
                codec=c["codec"],
                stream=c["stream"],
                kind=k,
                cases=cases,
                seed=j,
                aspect_side=aspect_side,
            )
            for c in codecs
            for j, k in enumerate(kinds)
        ]
        slow = [t["kind"] == "aspect" for t in tasks]
        runs = {
            flag: iter(
                run_isolated(
                    [t for t, f in zip(tasks, slow) if f == flag],
                    aspect_timeout if flag else timeout,
                    tmp,
                )
            )
            for flag in set(slow)
        }
        outcomes = [next(runs[flag]) for flag in slow for _ in range(cases)]
    rows, i = [], 0
    for c in codecs:
        for k in kinds:
            counts = Counter(o.split(":")[0] for o in outcomes[i : i + cases])
            others = sorted({o for o in outcomes[i : i + cases] if o.startswith("other")})
            rows.append(
                {
                    "family": c["family"],
                    "weights": c["weights"],
                    "kind": k,
                    "cases": cases,
                    **{o: counts.get(o, 0) for o in OUTCOMES},
                    "other_types": others,
                }
            )
            i += cases
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m icm_lib.fuzz", description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=1000, help="cases per family x weights x kind")
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per case")
    ap.add_argument(
        "--aspect-side",
        type=int,
        default=ASPECT_SIDE,
        help="longest side of the `aspect` claims (px; default 65536: a 64 x 65536 claim)",
    )
    ap.add_argument("--aspect-timeout", type=float, default=120.0, help="seconds per `aspect` case")
    ap.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    ap.add_argument("--out", type=Path, default=None, help="also write the rows as JSON")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        _worker(args.worker[0], int(args.worker[1]))
        return 0
    t0 = time.perf_counter()
    rows = fuzz(
        args.cases,
        args.train_steps,
        args.timeout,
        args.kinds,
        args.aspect_side,
        args.aspect_timeout,
    )
    print(f"{'family':<16}{'weights':<9}{'kind':<9}" + "".join(f"{o:>9}" for o in OUTCOMES))
    for r in rows:
        print(
            f"{r['family']:<16}{r['weights']:<9}{r['kind']:<9}"
            + "".join(f"{r[o]:>9}" for o in OUTCOMES)
            + (f"  {r['other_types']}" if r["other_types"] else "")
        )
    totals = {o: sum(r[o] for r in rows) for o in OUTCOMES}
    print(
        f"{len(rows) * args.cases} cases: "
        + ", ".join(f"{n} {o}" for o, n in totals.items())
        + f" in {time.perf_counter() - t0:.0f} s"
    )
    if args.out:
        from ..files import atomic_write_json

        atomic_write_json(args.out, rows)
    return 0


if __name__ == "__main__":
    from ..cli import command_status

    raise SystemExit(command_status(main))
