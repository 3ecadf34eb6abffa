import random
import struct
import time
import zlib

import pytest

from icm_lib import bitstream
from icm_lib.errors import BitstreamError

HEADER = bitstream.Header("bmshj2018-hyperprior", 0, 32, 48, 70, 90, 58, 38, (2, 2))


def test_container_round_trip():
    strings = [b"abc" * 10, b"\x00\x01"]
    data = bitstream.pack(HEADER, strings)
    header, out = bitstream.unpack(data)
    assert header == HEADER
    assert out == strings


@pytest.mark.parametrize("cut", [0, 3, 4, 10, -1, -5])
def test_truncated_raises(cut):
    data = bitstream.pack(HEADER, [b"x" * 50, b"y" * 7])
    with pytest.raises(BitstreamError):
        bitstream.unpack(data[:cut])


def test_foreign_and_wrong_version():
    with pytest.raises(BitstreamError, match="magic"):
        bitstream.unpack(b"\x89PNG\r\n\x1a\n" + b"0" * 40)
    body = bytearray(bitstream.pack(HEADER, [b"z"])[:-4])
    body[4] = 99  # version
    with pytest.raises(BitstreamError, match="version"):
        bitstream.unpack(bytes(body) + struct.pack(">I", zlib.crc32(bytes(body))))


def test_values_that_do_not_fit_are_refused():
    big = bitstream.Header("x", 0, 1, 1, 70000, 10, 0, 0, (1, 1))
    with pytest.raises(BitstreamError, match="65535"):
        bitstream.pack(big, [b""])


def test_fuzz_container_mutations_and_truncations():
    """Hundreds of bit flips, byte changes and truncations: always BitstreamError, never another
    exception, within a bounded time."""
    rng = random.Random(0)
    data = bitstream.pack(HEADER, [bytes(rng.randrange(256) for _ in range(200)), b"q" * 30])
    t0 = time.perf_counter()
    for case in range(600):
        buf = bytearray(data)
        kind = case % 3
        if kind == 0:
            pos = rng.randrange(len(buf))
            buf[pos] ^= 1 << rng.randrange(8)
        elif kind == 1:
            for _ in range(rng.randint(1, 8)):
                buf[rng.randrange(len(buf))] = rng.randrange(256)
            if bytes(buf) == data:
                continue
        else:
            buf = buf[: rng.randrange(len(buf))]
        with pytest.raises(BitstreamError):
            bitstream.unpack(bytes(buf))
    assert time.perf_counter() - t0 < 10
