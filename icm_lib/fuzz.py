"""Fuzzing the decoder: damaged and crafted containers behind a recomputed checksum.

    python -m icm_lib.fuzz [--cases 1000] [--train-steps 300] [--out fuzz.json]

For each codec family (scale hyperprior, mean-scale, autoregressive) with random weights and
briefly trained on procedural scenes, one stream of a small image is mutated in four ways, the
CRC-32 recomputed each time so that every case reaches the decoder:

* ``payload``: bit flips, overwritten bytes, dropped or appended words, truncation;
* ``header``: random bytes of the header overwritten (any field, including lengths and counts);
* ``field``: one header field set to a neighbouring, extreme or random value;
* ``reshape``: height, width and latent shape changed *consistently*, so the payload is decoded
  for an image of another size.

Each case runs in a worker process; a case that kills it (a crash) or outlasts ``--timeout`` (a
hang) is counted and the worker restarted with the next case. Outcomes: ``decoded`` (an image of
the header's size, finite), ``refused`` (:class:`~icm_lib.errors.BitstreamError`), ``other``
(any other exception: a defect), ``crash``, ``hang``.
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
from collections import Counter
from dataclasses import replace
from pathlib import Path

import torch

from . import bitstream
from .runtime import mix_seed

KINDS = ("payload", "header", "field", "reshape")
OUTCOMES = ("decoded", "refused", "other", "crash", "hang")
#: the family representatives: (label, CompressAI name)
FAMILY_CODECS = (
    ("scale", "bmshj2018-hyperprior"),
    ("mean-scale", "mbt2018-mean"),
    ("autoregressive", "cheng2020-attn"),
)


# ---------------------------------------------------------------------- mutations
def _header_length(data: bytes) -> int:
    """Bytes before the first payload (magic ... group count, length of the first group)."""
    header, strings = bitstream.unpack(data)
    return len(data) - 4 - sum(len(s) for s in strings)


def _with_crc(body: bytes) -> bytes:
    import struct
    import zlib

    return body + struct.pack(">I", zlib.crc32(body))


def mutate(data: bytes, kind: str, rng: random.Random) -> bytes:
    """One mutation of a valid container ``data`` (``kind``: one of :data:`KINDS`); the
    checksum is recomputed."""
    if kind not in _MUTATIONS:
        raise ValueError(f"kind must be one of {KINDS}")
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


_MUTATIONS = {
    "payload": _mutate_payload,
    "header": _mutate_header_bytes,
    "field": _mutate_field,
    "reshape": _reshape,
}


# ---------------------------------------------------------------------- codecs to fuzz
def scene_images(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    """``n`` procedural scenes (the embedded default's generator) as (n, 3, size, size) in [0, 1]."""
    import numpy as np

    from .data.scenes import generate_scene

    rng = np.random.default_rng(seed)
    return torch.stack(
        [
            torch.from_numpy(generate_scene(size, rng)[0]).permute(2, 0, 1).float() / 255
            for _ in range(n)
        ]
    )


def train_briefly(
    codec,
    images: torch.Tensor,
    steps: int,
    lmbda: float = 0.05,
    crop: int = 64,
    batch: int = 4,
    seed: int = 0,
):
    """Train a codec for MSE on random crops of ``images`` (in memory, a few seconds per 100
    steps for small models), then build its entropy tables. Enough to give the entropy models
    realistic, peaked distributions for tests; not a codec to use."""
    from compressai.losses import RateDistortionLoss

    torch.manual_seed(seed)
    crit = RateDistortionLoss(lmbda=lmbda)
    opt = torch.optim.Adam(codec.main_parameters(), lr=1e-3)
    qopt = torch.optim.Adam(codec.quantile_parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    span = images.shape[-1] - crop + 1
    codec.train()
    for _ in range(steps):
        idx = torch.randint(0, len(images), (batch,), generator=g)
        top, left = torch.randint(0, span, (2,), generator=g).tolist()
        x = images[idx, :, top : top + crop, left : left + crop]
        loss = crit(codec(x), x)["loss"]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(codec.main_parameters(), 1.0)
        opt.step()
        qloss = codec.quantile_loss()
        qopt.zero_grad()
        qloss.backward()
        qopt.step()
    codec.eval()
    codec.update()
    return codec


# ---------------------------------------------------------------------- the isolated runner
def _worker(manifest: str, start: int) -> None:
    """Decode cases ``start...`` of the manifest, one line per case on stdout."""
    from .codec import load_codec
    from .errors import BitstreamError
    from .runtime import load_checkpoint

    torch.set_num_threads(1)
    tasks = json.loads(Path(manifest).read_text())
    codecs: dict[str, object] = {}
    for i, task in enumerate(_expand(tasks)):
        if i < start:
            continue
        path, stream, kind, seed = task
        if path not in codecs:
            codecs[path] = load_codec(load_checkpoint(path)).eval()
        codec = codecs[path]
        blob = mutate(Path(stream).read_bytes(), kind, random.Random(seed))
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
        (t["codec"], t["stream"], t["kind"], mix_seed(t["seed"], c))
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
        [sys.executable, "-m", "icm_lib.fuzz", "--worker", str(manifest), str(start)],
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
    from .codec import build_codec
    from .runtime import atomic_torch_save

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


def fuzz(cases: int, train_steps: int, timeout: float = 10.0, kinds=KINDS) -> list[dict]:
    """The table of the module docstring: one row per family x weights x kind."""
    with tempfile.TemporaryDirectory() as tmp:
        codecs = prepare_codecs(Path(tmp), train_steps)
        tasks = [
            dict(codec=c["codec"], stream=c["stream"], kind=k, cases=cases, seed=j)
            for c in codecs
            for j, k in enumerate(kinds)
        ]
        outcomes = run_isolated(tasks, timeout, tmp)
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
    ap.add_argument("--out", type=Path, default=None, help="also write the rows as JSON")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        _worker(args.worker[0], int(args.worker[1]))
        return 0
    t0 = time.perf_counter()
    rows = fuzz(args.cases, args.train_steps, args.timeout)
    print(f"{'family':<16}{'weights':<9}{'kind':<9}" + "".join(f"{o:>9}" for o in OUTCOMES))
    for r in rows:
        print(
            f"{r['family']:<16}{r['weights']:<9}{r['kind']:<9}"
            + "".join(f"{r[o]:>9}" for o in OUTCOMES)
            + (f"  {r['other_types']}" if r["other_types"] else "")
        )
    print(f"{len(rows) * args.cases} cases in {time.perf_counter() - t0:.0f} s")
    if args.out:
        from .runtime import atomic_write_json

        atomic_write_json(args.out, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
