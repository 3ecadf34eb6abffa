"""The container around the entropy-coded payload (see :mod:`icm_lib.entropy`).

Layout (all integers big-endian)::

    offset  size  field
    0       4     magic  b"ICMb"
    4       1     format version (2)
    5       1     length n of the codec name
    6       n     codec name, ASCII (e.g. "bmshj2018-hyperprior")
    .       1     quality (0 when N/M are explicit)
    .       2+2   N, M
    .       2+2   original height, width (before padding)
    .       2+2   padding added at the bottom and on the right
    .       1     number of latent-shape dims d, then d x 2 bytes: ẑ's (ŷ's for factorized models)
    .       8     fingerprint of the coding state that wrote the payload (tables, exact-path weights)
    .       1     number of string groups g (1: the ANS payload)
            per group: 4-byte length, then the bytes
    end-4   4     CRC-32 of everything before it

Any truncation, bit flip or foreign file raises :class:`~icm_lib.errors.BitstreamError` before a
single byte reaches the entropy decoder. The CRC catches accidents only; what a crafted file could
do beyond it is stopped by :meth:`icm_lib.codec.ICMCodec.decompress`, which checks every field
against the others and against the codec, and by the bounded, memory-safe decoder.

Version 1 (icm_lib before the device-independent coder) held CompressAI's two rANS strings; it is
refused with a message to re-encode.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from .errors import BitstreamError

MAGIC = b"ICMb"
VERSION = 2
FINGERPRINT_BYTES = 8
_MAX_U16 = 0xFFFF


@dataclass(frozen=True)
class Header:
    """What a decoder needs besides the strings.

    Attributes:
        codec: CompressAI model name.
        quality: zoo quality, 0 for a codec built from explicit N/M.
        N, M: channel counts of the model that wrote the stream.
        height, width: original image size.
        pad_h, pad_w: padding added at the bottom / right to reach a multiple of 64.
        latent_shape: spatial shape of ẑ (of ŷ for factorized models).
        fingerprint: identifies the coding state (:attr:`icm_lib.entropy.CodingState.fingerprint`).
    """

    codec: str
    quality: int
    N: int
    M: int
    height: int
    width: int
    pad_h: int
    pad_w: int
    latent_shape: tuple[int, ...]
    fingerprint: bytes = bytes(FINGERPRINT_BYTES)


def pack(header: Header, strings: list[bytes]) -> bytes:
    """Serialize a header and the entropy-coded strings (one per group) to bytes."""
    name = header.codec.encode("ascii")
    for label, value in [
        ("N", header.N),
        ("M", header.M),
        ("height", header.height),
        ("width", header.width),
        ("pad_h", header.pad_h),
        ("pad_w", header.pad_w),
        *[("latent", v) for v in header.latent_shape],
    ]:
        if not 0 <= value <= _MAX_U16:
            raise BitstreamError(f"{label}={value} does not fit the container (0..65535)")
    if len(name) > 255 or not 0 <= header.quality <= 255:
        raise BitstreamError("codec name longer than 255 bytes or quality out of 0..255")
    if len(header.fingerprint) != FINGERPRINT_BYTES:
        raise BitstreamError(f"fingerprint must be {FINGERPRINT_BYTES} bytes")
    if len(header.latent_shape) > 255:
        raise BitstreamError("a latent shape has at most 255 dimensions")
    out = bytearray(MAGIC)
    out += struct.pack(">BB", VERSION, len(name)) + name
    out += struct.pack(">BHH", header.quality, header.N, header.M)
    out += struct.pack(">HHHH", header.height, header.width, header.pad_h, header.pad_w)
    out += struct.pack(">B", len(header.latent_shape))
    out += b"".join(struct.pack(">H", v) for v in header.latent_shape)
    out += header.fingerprint
    out += struct.pack(">B", len(strings))
    for s in strings:
        out += struct.pack(">I", len(s)) + s
    out += struct.pack(">I", zlib.crc32(out))
    return bytes(out)


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise BitstreamError(
                f"bitstream truncated: needed {n} bytes at offset {self.pos}, "
                f"only {len(self.data) - self.pos} left; re-send or re-encode the image"
            )
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))


def unpack(data: bytes) -> tuple[Header, list[bytes]]:
    """Parse and verify a container.

    Raises:
        BitstreamError: wrong magic or version, truncated, or checksum mismatch.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BitstreamError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < len(MAGIC) + 4 or data[:4] != MAGIC:
        raise BitstreamError(
            "not an icm_lib bitstream (bad magic); was it written by icm_lib.codec.compress?"
        )
    body, crc = data[:-4], struct.unpack(">I", data[-4:])[0]
    if zlib.crc32(body) != crc:
        raise BitstreamError(
            "bitstream checksum mismatch: the file is corrupt or truncated; "
            "re-send or re-encode the image"
        )
    r = _Reader(body)
    r.take(4)
    version, name_len = r.unpack(">BB")
    if version != VERSION:
        raise BitstreamError(
            f"bitstream format version {version}; this icm_lib reads version "
            f"{VERSION}: re-encode the image (or decode it with the icm_lib "
            "that wrote it)"
        )
    try:
        codec = r.take(name_len).decode("ascii")
    except UnicodeDecodeError as exc:
        raise BitstreamError("codec name in the header is not ASCII; the file is corrupt") from exc
    quality, n, m = r.unpack(">BHH")
    height, width, pad_h, pad_w = r.unpack(">HHHH")
    (ndim,) = r.unpack(">B")
    latent_shape = tuple(r.unpack(f">{ndim}H")) if ndim else ()
    fingerprint = r.take(FINGERPRINT_BYTES)
    (groups,) = r.unpack(">B")
    strings = []
    for _ in range(groups):
        (length,) = r.unpack(">I")
        strings.append(r.take(length))
    if r.pos != len(body):
        raise BitstreamError(
            f"{len(body) - r.pos} unexpected bytes after the last string; the file is corrupt"
        )
    header = Header(codec, quality, n, m, height, width, pad_h, pad_w, latent_shape, fingerprint)
    return header, strings
