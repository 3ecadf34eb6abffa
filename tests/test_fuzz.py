"""No input crashes or hangs the decoder: damaged and crafted containers behind a recomputed
checksum, each case in a worker process (icm_lib.fuzz), for the scale, mean-scale and
autoregressive families with random and briefly trained weights."""

import random

import pytest

from icm_lib import bitstream
from icm_lib.fuzz import KINDS, fuzz, mutate


def _check(rows, cases):
    assert len(rows) == 3 * 2 * len(KINDS)
    for r in rows:
        assert r["decoded"] + r["refused"] + r["other"] + r["crash"] + r["hang"] == cases
        assert (r["crash"], r["hang"], r["other"]) == (0, 0, 0), r
        assert r["refused"] > 0, r  # the mutations reach the checks


def test_fuzz_decoder_isolated_cases():
    _check(fuzz(cases=25, train_steps=60), 25)


@pytest.mark.slow
def test_fuzz_decoder_many_cases():
    _check(fuzz(cases=400, train_steps=300), 400)


def test_mutations_keep_a_valid_checksum_and_change_the_stream():
    data = bitstream.pack(
        bitstream.Header(
            "bmshj2018-hyperprior", 0, 32, 48, 128, 128, 0, 0, (2, 2), bytes(range(8))
        ),
        [bytes(range(64))],
    )
    rng = random.Random(0)
    for kind in KINDS:
        changed = 0
        for _ in range(50):
            blob = mutate(data, kind, rng)
            changed += blob != data
            if kind != "header":  # header bytes may break the structure, never the CRC
                bitstream.unpack(blob)
        assert changed >= 45, kind
