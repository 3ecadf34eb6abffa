"""Device-independent, memory-safe entropy coding of CompressAI latents.

Real coding has one hard requirement: the decoder must pick, for every symbol, *exactly* the
probability table the encoder picked. CompressAI picks a Gaussian's table from the float output
of the hyper-decoder ``h_s`` (and, for autoregressive models, of the context model and the
entropy-parameter network). Floats differ between a GPU and a CPU, between thread counts and
between library versions, so a stream written on one machine can decode to garbage on another
(CompressAI issues #279, #309, #320). This module removes floats from every decision::

    z ─► round ─► symbols ─► ANS ─┐            ┌─► ANS ─► symbols ─► ẑ (integers / 2^12)
                                  │  payload   │                      │
    y ─► round(y - μ) ─► ANS ─────┘            └─► ANS ─► symbols     ▼  exact integer h_s
                ▲                                      ▲          scales, means (integers / 2^12)
                └── table index, μ ◄── exact path ─────┴── table index, μ ◄──┘
                                      (context model + entropy parameters, wavefront order,
                                       for autoregressive codecs)

* **Exact path.** ``h_s``, the masked context convolution and the entropy-parameter network are
  evaluated in fixed point: activations are integers in units of 2^-12 (|a| ≤ 4096.0), weights
  are integers in units of 2^-s per layer, and every layer is requantized by rounding. The
  integers are held in float64 and the shift ``s`` of each layer is chosen so that the sum of the
  absolute values of all products stays below 2^52: then every partial sum is an exactly
  representable integer, so the result does not depend on summation order, blocking, threads or
  the BLAS library. It runs on the CPU (the hyper-decoder reads ẑ at 1/64 of the image's
  resolution and writes at 1/16, a fraction of g_s's work); ``g_a`` and ``g_s`` run on any
  device.
* **Tables travel.** The integer CDF tables are CompressAI's own (``update()``), computed once on
  the CPU and saved with the codec; loading never recomputes them.
* **Fingerprint.** The hash of the tables, the integer weights of the exact path and the format
  constants goes into every stream; a decoder with anything different refuses the stream.
* **Memory-safe coder.** Symbols are coded with the ANS coder of ``constriction`` (Rust, bounds
  checked), grouped by table. Values outside a table's range are escaped as in CompressAI and
  their overflow is coded with uniform models of bounded size. The number of symbols decoded is
  fixed by the (validated) latent shape, so no input can make the decoder read out of bounds,
  run unbounded, or allocate beyond the image's size. A payload that does not end exactly where
  the last symbol ends is refused.

Autoregressive codecs (``mbt2018``, ``cheng2020-*``) are coded in **wavefront order**: with the
5x5 causal mask, position (i, j) depends only on positions with a smaller ``3 i + j``, so all
positions on one anti-diagonal ``3 i + j = t`` are coded together (3 H + W steps instead of H W).
The context model and the 1x1 entropy-parameter network run as float64 matrix products on the
wavefront's positions only (:class:`_ARStep`, the same integers as the fixed-point layers); the
hyper-decoder's share of the first layer is computed for the whole latent at once. The encoder
needs only the means inside its loop (ŷ = round(y - μ) + μ is the next wavefronts' context); it
computes the scales, the tables and the order of all symbols in one pass after it. The symbols'
order in the stream -- per wavefront, table by table, row-major within a table -- is unchanged.

The guarantee: a stream written by a codec on any device and thread count decodes, with the same
saved codec on any other device and thread count, to the identical ŷ. The pixels then differ
only by the float arithmetic of ``g_s`` on the two devices (far below one 8-bit level).
Limits: the encoder's ŷ itself depends on its device (``g_a`` is float), so two devices may
write different (equally valid) streams for one image; ŷ saturates at ±4096 (never reached by
trained codecs); and the scales and means are those of the fixed-point network, which differ from
CompressAI's float ones by a few 2^-12 (measured in the tests): ŷ of a mean-scale model moves by
as much, a rounding decision y - μ near .5 can flip, and a scale near a table boundary can pick
the neighbouring table (a negligible change of the rate).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import BitstreamError, CheckpointError

#: fractional bits of every value on the exact path: ŷ, ẑ, scales and means are multiples of 2^-12
FRAC_BITS = 12
ONE = 1 << FRAC_BITS
#: |activation| ≤ 4096.0, i.e. ≤ 2^24 in integer units (float32 holds every such ŷ exactly)
ACT_LIMIT = float(1 << 24)
#: Σ|products| of one output stays below 2^52, so float64 sums of integers are exact in any order
_EXACT = float(1 << 52)
_LEAKY_BITS = 16
#: an escaped value's overflow is coded as its bit length (≤ _ESCAPE_BITS) then its low bits
_ESCAPE_BITS = 22
#: CompressAI's tables have 16-bit precision
_CDF_PRECISION = 16
#: changes whenever what decides a symbol changes; part of every fingerprint
CODER_VERSION = b"icm-entropy-1 frac12 ans-constriction0.5"


def _constriction():
    try:
        import constriction
    except ImportError as exc:  # a declared dependency; say how to get it
        raise ImportError(
            "real coding needs the 'constriction' package (pip install "
            "constriction); it is a dependency of icm_lib"
        ) from exc
    return constriction


# ---------------------------------------------------------------------- the exact path
def _floor_shift(acc: torch.Tensor, shift: int) -> torch.Tensor:
    """floor(acc / 2^shift), exact for integer-valued float64 (a power-of-two scaling)."""
    return torch.floor(acc * (2.0**-shift))


@dataclass
class _ExactConv:
    """A (transposed) convolution in fixed point: out = round((W·a + b) / 2^shift)."""

    weight: torch.Tensor  # float64 integers, units 2^-shift
    bias: torch.Tensor  # float64 integers, units 2^-(FRAC_BITS + shift)
    shift: int
    transposed: bool
    stride: tuple
    padding: tuple
    output_padding: tuple

    @classmethod
    def from_module(cls, conv: nn.Module, weight: torch.Tensor | None = None) -> _ExactConv:
        w = (conv.weight if weight is None else weight).detach().to("cpu", torch.float64)
        if conv.groups != 1 or any(d != 1 for d in conv.dilation):
            raise NotImplementedError("the exact path supports plain convolutions only")
        transposed = isinstance(conv, nn.ConvTranspose2d)
        fan_in = (w.shape[0] if transposed else w.shape[1]) * w.shape[2] * w.shape[3]
        b = (
            conv.bias.detach().to("cpu", torch.float64)
            if conv.bias is not None
            else torch.zeros(w.shape[1] if transposed else w.shape[0], dtype=torch.float64)
        )
        if not (torch.isfinite(w).all() and torch.isfinite(b).all()):
            raise CheckpointError(
                "a layer of the hyper-decoder / context model holds NaN or infinite weights "
                "(a diverged training run): the codec cannot code; resume from an earlier "
                "checkpoint or retrain"
            )
        wmax = float(w.abs().max())
        # the largest shift whose worst case Σ|w a| + |b| stays below 2^52
        top = (
            30
            if wmax == 0
            else min(30, math.floor(math.log2(_EXACT / (2 * fan_in * ACT_LIMIT * wmax))))
        )
        # a huge bias (never seen in trained codecs) lowers the shift: give up precision. Every
        # finite float64 fits below 2^52 by shift -1100, so the loop is bounded.
        for shift in range(top, -1100, -1):
            w_int = torch.round(w * 2.0**shift)
            # the bias carries half a unit of the result, so floor() rounds to nearest
            b_int = torch.round(b * 2.0 ** (FRAC_BITS + shift)) + (
                2.0 ** (shift - 1) if shift > 0 else 0.0
            )
            bound = fan_in * ACT_LIMIT * float(w_int.abs().max()) + float(b_int.abs().max())
            if bound < _EXACT:
                break
        else:
            raise CheckpointError("a layer's weights are too large for the exact path")
        return cls(
            w_int,
            b_int,
            shift,
            transposed,
            tuple(conv.stride),
            tuple(conv.padding),
            tuple(getattr(conv, "output_padding", (0, 0))),
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.transposed:
            acc = F.conv_transpose2d(
                x, self.weight, None, self.stride, self.padding, self.output_padding
            )
        else:
            acc = F.conv2d(x, self.weight, None, self.stride, self.padding)
        acc = acc + self.bias.view(1, -1, 1, 1)
        return _floor_shift(acc, self.shift).clamp_(-ACT_LIMIT, ACT_LIMIT)

    def digest(self, h) -> None:
        h.update(
            f"conv{self.transposed}{self.stride}{self.padding}{self.output_padding}"
            f"{self.shift}{tuple(self.weight.shape)}".encode()
        )
        h.update(self.weight.to(torch.int64).numpy().astype("<i8").tobytes())
        h.update(self.bias.to(torch.int64).numpy().astype("<i8").tobytes())


@dataclass
class _ExactLeakyReLU:
    slope: int  # units 2^-16

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x >= 0, x, _floor_shift(x * self.slope, _LEAKY_BITS))

    def digest(self, h) -> None:
        h.update(f"leaky{self.slope}".encode())


@dataclass
class _ExactPixelShuffle:
    factor: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(x, self.factor)

    def digest(self, h) -> None:
        h.update(f"shuffle{self.factor}".encode())


class ExactNet:
    """A CompressAI hyper-decoder (or entropy-parameter network) evaluated in fixed point.

    Supports ``nn.Sequential`` of ``Conv2d``, ``ConvTranspose2d``, ``ReLU``, ``LeakyReLU`` and
    ``PixelShuffle`` (what ``h_s`` and ``entropy_parameters`` of every CompressAI model in
    :data:`icm_lib.codec.CODEC_NAMES` are made of).

    Call it with integers in units of 2^-12 held in float64 (N, C, H, W) on the CPU; it returns
    the same, bit-identical on every machine.
    """

    def __init__(self, module: nn.Module):
        self.layers: list = []
        self._add(module)

    def _add(self, module: nn.Module) -> None:
        if isinstance(module, nn.Sequential):
            for child in module:
                self._add(child)
        elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            self.layers.append(_ExactConv.from_module(module))
        elif isinstance(module, nn.ReLU):
            self.layers.append(_ExactLeakyReLU(0))
        elif isinstance(module, nn.LeakyReLU):
            self.layers.append(_ExactLeakyReLU(round(module.negative_slope * 2**_LEAKY_BITS)))
        elif isinstance(module, nn.PixelShuffle):
            self.layers.append(_ExactPixelShuffle(module.upscale_factor))
        else:
            raise NotImplementedError(
                f"real coding evaluates the hyper-decoder in exact fixed point and supports "
                f"Conv2d, ConvTranspose2d, ReLU, LeakyReLU and PixelShuffle; got "
                f"{type(module).__name__}"
            )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def digest(self, h) -> None:
        for layer in self.layers:
            layer.digest(h)


class _CausalContext:
    """The masked 5x5 context convolution in fixed point: only the taps the mask keeps (their
    order is part of the fingerprint); :class:`_ARStep` evaluates it at chosen positions."""

    def __init__(self, conv: nn.Module):
        mask = conv.mask.detach().cpu()
        self.exact = _ExactConv.from_module(conv, conv.weight * conv.mask)
        keep = mask.flatten(0, 1).any(0)  # (kh, kw)
        self.taps = [(int(i), int(j)) for i, j in keep.nonzero()]
        self.pad = conv.padding[0]

    def digest(self, h) -> None:
        h.update(f"taps{self.taps}".encode())
        self.exact.digest(h)


def _wavefront_order(h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions of an (h, w) latent in coding order: by wavefront ``t = 3 i + j``, then by row.

    Returns:
        rows, cols: (h·w,) int64 in that order; starts: (3 (h - 1) + w + 1,) the first index of
        every wavefront (and the end).
    """
    i, j = np.divmod(np.arange(h * w, dtype=np.int64), w)
    t = 3 * i + j
    order = np.lexsort((i, t))
    starts = np.zeros(3 * (h - 1) + w + 1, dtype=np.int64)
    np.cumsum(np.bincount(t, minlength=3 * (h - 1) + w), out=starts[1:])
    return i[order], j[order], starts


class _ARStep:
    """The context model and the entropy-parameter network of an autoregressive codec as float64
    matrices for wavefront coding: the same integer weights, biases and shifts as
    :class:`_CausalContext` and the 1x1 layers of the :class:`ExactNet`, so the same integers
    (every sum is exact, whatever its order). The hyper-decoder's share of the first layer is
    computed for every position at once (:meth:`first`); a wavefront then costs a gather of its
    causal neighbourhoods and one small matrix product per layer (:meth:`params`).
    """

    def __init__(self, context: _CausalContext, net: ExactNet):
        conv = context.exact
        w = conv.weight[:, :, [i for i, _ in context.taps], [j for _, j in context.taps]]
        # rows ordered (tap, channel), as a gather of channels-last neighbourhoods gives them
        self.ctx = (w.permute(2, 1, 0).reshape(-1, w.shape[0]).contiguous(), conv.bias, conv.shift)
        self.pad, self.taps = context.pad, context.taps
        self.layers: list = []  # (weight (in, out), bias, shift) or a leaky slope (int)
        for layer in net.layers:
            if isinstance(layer, _ExactLeakyReLU):
                self.layers.append(layer.slope)
            elif (
                isinstance(layer, _ExactConv)
                and not layer.transposed
                and tuple(layer.weight.shape[-2:]) == (1, 1)
                and layer.padding == (0, 0)
            ):
                self.layers.append(
                    (layer.weight[:, :, 0, 0].T.contiguous(), layer.bias, layer.shift)
                )
            else:
                raise NotImplementedError(
                    "wavefront coding needs an entropy-parameter network of 1x1 convolutions "
                    "and (leaky) ReLUs, as in CompressAI's autoregressive models"
                )
        if not self.layers or not isinstance(self.layers[0], tuple):
            raise NotImplementedError("the entropy-parameter network must start with a conv")
        w1, b1, shift1 = self.layers[0]
        n_ctx = self.ctx[0].shape[1]  # the context features come after the hyper-decoder's
        self.first_hyper = (w1[:-n_ctx].contiguous(), b1, shift1)
        self.first_ctx = w1[-n_ctx:].contiguous()

    def offsets(self, width: int) -> torch.Tensor:
        """(taps,) flat offsets of the taps in a padded channels-last latent of this width."""
        return torch.tensor([(i - self.pad) * width + (j - self.pad) for i, j in self.taps])

    def first(self, hyper: torch.Tensor) -> torch.Tensor:
        """(n, C) hyper-decoder outputs -> their share of the first layer, bias included
        (exact integers, not yet requantized)."""
        w, b, _ = self.first_hyper
        return torch.addmm(b, hyper, w)

    def context(self, neighbours: torch.Tensor) -> torch.Tensor:
        """(n, taps, M) causal neighbourhoods -> (n, 2M) context features."""
        return self._apply(self.ctx, neighbours.reshape(len(neighbours), -1))

    def params(self, first: torch.Tensor, ctx: torch.Tensor, upto: int | None = None):
        """The network on ``first`` (from :meth:`first`) and the context features (n, 2M);
        ``upto``: stop before that layer (e.g. -1: the last hidden activations)."""
        x = torch.addmm(first, ctx, self.first_ctx)
        x = x.mul_(2.0 ** -self.first_hyper[2]).floor_().clamp_(-ACT_LIMIT, ACT_LIMIT)
        for layer in self.layers[1:upto]:
            x = self._apply(layer, x)
        return x

    @staticmethod
    def _apply(layer, x: torch.Tensor) -> torch.Tensor:
        """One layer on (n, in): a requantized 1x1 conv (as :class:`_ExactConv`) or a leaky
        ReLU (as :class:`_ExactLeakyReLU`)."""
        if isinstance(layer, tuple):
            w, b, shift = layer
            return torch.addmm(b, x, w).mul_(2.0**-shift).floor_().clamp_(-ACT_LIMIT, ACT_LIMIT)
        return torch.where(x >= 0, x, _floor_shift(x * layer, _LEAKY_BITS))


# ---------------------------------------------------------------------- tables and the coder
class _Tables:
    """CompressAI's integer CDF tables (one row per channel or per Gaussian scale) as
    constriction models. ``values - offset`` is the symbol; the last symbol of each row escapes."""

    def __init__(self, quantized_cdf: torch.Tensor, cdf_length: torch.Tensor, offset: torch.Tensor):
        cdf = quantized_cdf.detach().cpu().to(torch.int64).numpy()
        self.lengths = cdf_length.detach().cpu().to(torch.int64).numpy()
        self.offsets = offset.detach().cpu().to(torch.int64).numpy()
        if cdf.ndim != 2 or len(cdf) == 0 or (self.lengths < 3).any():
            raise BitstreamError("the codec has no entropy tables: call codec.update() first")
        self._cdf = cdf
        self.escape = self.lengths - 2
        self._models: list | None = None

    @property
    def models(self) -> list:
        """One constriction model per row (built on first use; not copied or pickled)."""
        if self._models is None:
            categorical = _constriction().stream.model.Categorical
            self._models = [
                categorical(
                    np.diff(row[:n]).astype(np.float64) / float(1 << _CDF_PRECISION), perfect=False
                )
                for row, n in zip(self._cdf, self.lengths)
            ]
        return self._models

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_models": None}

    def digest(self, h) -> None:
        for row, n, off in zip(self._cdf, self.lengths, self.offsets):
            h.update(np.asarray([n, off], "<i8").tobytes())
            h.update(row[:n].astype("<i8").tobytes())


class _Writer:
    """Collects (model, symbols) chunks in decoding order; ANS writes them in reverse."""

    def __init__(self):
        self.chunks: list = []
        self.uniform = _constriction().stream.model.Uniform

    def values(self, tables: _Tables, row: int, values: np.ndarray) -> None:
        v = values.astype(np.int64) - tables.offsets[row]
        esc_sym = tables.escape[row]
        escaped = (v < 0) | (v >= esc_sym)
        self.chunks.append((tables.models[row], np.where(escaped, esc_sym, v).astype(np.int32)))
        if escaped.any():
            self.escapes(v[escaped], esc_sym)

    def grouped(
        self, tables: _Tables, index: np.ndarray, values: np.ndarray, wave: np.ndarray | None = None
    ) -> None:
        """``values`` (n,) with table rows ``index`` (n,): the chunks of :meth:`values` for every
        row present, in ascending row order, the order within a row kept; with ``wave`` (n,)
        (non-decreasing), the same for each wavefront in turn."""
        n_rows = len(tables.lengths)
        key = index if wave is None else wave * n_rows + index
        order = np.argsort(key, kind="stable")
        index = index[order]
        v = values[order] - tables.offsets[index]
        esc_sym = tables.escape[index]
        escaped = (v < 0) | (v >= esc_sym)
        symbols = np.where(escaped, esc_sym, v).astype(np.int32)
        counts = np.bincount(key, minlength=1)
        keys = np.flatnonzero(counts)
        ends = np.cumsum(counts[keys]).tolist()
        models, any_escaped = tables.models, bool(escaped.any())
        start = 0
        for row, end in zip((keys % n_rows).tolist(), ends):
            self.chunks.append((models[row], symbols[start:end]))
            if any_escaped and escaped[start:end].any():
                sel = escaped[start:end]
                self.escapes(v[start:end][sel], int(tables.escape[row]))
            start = end

    def escapes(self, v: np.ndarray, esc_sym: int) -> None:
        """The overflow of escaped values ``v`` (value - offset, outside [0, esc_sym))."""
        if len(v):
            raw = np.where(v < 0, -2 * v - 1, 2 * (v - esc_sym))
            # bit lengths in closed form (no loop that a garbage value could keep going):
            # frexp(r) = (m, e) with r = m 2^e, m in [0.5, 1), so e is r's bit length for every
            # 1 <= r < 2^53, and 0 for r = 0. ŷ is clamped, so r < 2^_ESCAPE_BITS.
            if (raw < 0).any() or raw.max() >= 1 << _ESCAPE_BITS:
                raise ValueError(  # unreachable: the doors refuse non-finite latents
                    "latent value too large to code; the latents were not finite or not clamped"
                )
            nbits = np.frexp(raw.astype(np.float64))[1].astype(np.int64)
            self.chunks.append((self.uniform(_ESCAPE_BITS + 1), nbits.astype(np.int32)))
            for n in np.unique(nbits[nbits >= 2]):
                low = raw[nbits == n] - (1 << (int(n) - 1))
                self.chunks.append((self.uniform(1 << (int(n) - 1)), low.astype(np.int32)))

    def finish(self) -> bytes:
        coder = _constriction().stream.stack.AnsCoder()
        for model, symbols in reversed(self.chunks):
            coder.encode_reverse(symbols, model)
        return coder.get_compressed().astype("<u4").tobytes()


class _Reader:
    """Decodes chunks in order from a payload; every failure is a :class:`BitstreamError`."""

    def __init__(self, payload: bytes):
        if len(payload) % 4:
            raise BitstreamError(
                f"payload of {len(payload)} bytes is not a whole number of "
                "32-bit words; the bitstream is corrupt"
            )
        stream = _constriction().stream
        self.uniform = stream.model.Uniform
        try:
            self.coder = stream.stack.AnsCoder(np.frombuffer(payload, "<u4").astype(np.uint32))
        except ValueError as exc:
            raise BitstreamError(
                f"the payload is not a valid ANS stream ({exc}); the bitstream is corrupt"
            ) from exc

    def _take(self, model, n: int) -> np.ndarray:
        try:
            return np.asarray(self.coder.decode(model, int(n)), dtype=np.int64)
        except BaseException as exc:  # noqa: BLE001 -- a Rust panic arrives as BaseException
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            raise BitstreamError(
                f"entropy decoding failed ({type(exc).__name__}: {exc}); the bitstream is corrupt"
            ) from None

    def values(self, tables: _Tables, row: int, n: int) -> np.ndarray:
        v = self._take(tables.models[row], n)
        esc_sym = tables.escape[row]
        escaped = v == esc_sym
        if escaped.any():
            nbits = self._take(self.uniform(_ESCAPE_BITS + 1), int(escaped.sum()))
            raw = np.where(nbits == 1, 1, 0).astype(np.int64)
            for b in np.unique(nbits[nbits >= 2]):
                sel = nbits == b
                raw[sel] = (1 << (int(b) - 1)) + self._take(
                    self.uniform(1 << (int(b) - 1)), int(sel.sum())
                )
            v[escaped] = np.where(raw % 2 == 1, -(raw + 1) // 2, raw // 2 + esc_sym)
        return v + tables.offsets[row]

    def grouped(self, tables: _Tables, index: np.ndarray) -> np.ndarray:
        """Decode what :meth:`_Writer.grouped` wrote for table rows ``index`` (n,)."""
        counts = np.bincount(index, minlength=1)
        order = np.argsort(index, kind="stable")
        out = np.empty(len(index), dtype=np.int64)
        start = 0
        for row in np.flatnonzero(counts).tolist():
            end = start + int(counts[row])
            out[order[start:end]] = self.values(tables, row, end - start)
            start = end
        return out

    def finish(self) -> None:
        if not self.coder.is_empty():
            raise BitstreamError(
                "the payload does not end where its last symbol ends: it was "
                "damaged, or written by another codec; re-encode the image"
            )


# ---------------------------------------------------------------------- the coding state
FAMILIES = ("factorized", "scale", "mean-scale", "autoregressive")


def model_family(model: nn.Module) -> str:
    """Which of :data:`FAMILIES` a CompressAI model belongs to."""
    from compressai.models import (
        FactorizedPrior,
        JointAutoregressiveHierarchicalPriors,
        MeanScaleHyperprior,
        ScaleHyperprior,
    )

    if isinstance(model, JointAutoregressiveHierarchicalPriors):
        return "autoregressive"
    if isinstance(model, MeanScaleHyperprior):
        return "mean-scale"
    if isinstance(model, ScaleHyperprior):
        return "scale"
    if isinstance(model, FactorizedPrior):
        return "factorized"
    raise NotImplementedError(
        f"real coding supports CompressAI's factorized, hyperprior, "
        f"mean-scale and autoregressive models, not {type(model).__name__}"
    )


def analysis(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The encoder's transforms of a CompressAI model: ``(y, z)`` (``z`` is ``None`` for
    factorized models), on ``x``'s device. Scale-only hyperpriors analyse ``|y|``."""
    family = model_family(model)
    y = model.g_a(x)
    if family == "factorized":
        return y, None
    return y, model.h_a(torch.abs(y) if family == "scale" else y)


def update_tables(model: nn.Module) -> None:
    """Compute CompressAI's entropy tables on the CPU (whatever device ``model`` is on) and store
    them in the model's buffers, so that they are saved with it.

    Computing them on the CPU makes a GPU-trained codec's tables equal to those of its CPU copy;
    once saved they are never recomputed (see :func:`icm_lib.codec.load_codec`).
    """
    import copy

    from compressai.entropy_models import EntropyBottleneck, GaussianConditional
    from compressai.models.base import get_scale_table

    for _, module in model.named_modules():
        if isinstance(module, (EntropyBottleneck, GaussianConditional)):
            device = module._offset.device
            cpu = copy.deepcopy(module).cpu().float()
            if isinstance(cpu, GaussianConditional):
                cpu.update_scale_table(get_scale_table(), force=True)
                module.scale_table = cpu.scale_table.to(device)
            else:
                cpu.update(force=True)
            module._quantized_cdf = cpu._quantized_cdf.to(device)
            module._offset = cpu._offset.to(device)
            module._cdf_length = cpu._cdf_length.to(device)


def has_tables(model: nn.Module) -> bool:
    return model.entropy_bottleneck._quantized_cdf.numel() > 0 and (
        not hasattr(model, "gaussian_conditional")
        or model.gaussian_conditional._quantized_cdf.numel() > 0
    )


@dataclass
class CodingState:
    """Everything that decides the symbols of a stream, detached from the float model.

    Build it with :meth:`from_model` (after ``update_tables``); it is cheap to rebuild from a
    saved codec and identical on every machine. ``fingerprint`` (8 bytes) identifies it.
    """

    family: str
    M: int
    bottleneck: _Tables
    medians: torch.Tensor  # (C,) integers, units 2^-12
    y_tables: _Tables | None = None  # per Gaussian scale (hyperprior families)
    thresholds: torch.Tensor | None = None  # (63,) scale-table bounds, units 2^-12
    h_s: ExactNet | None = None
    context: _CausalContext | None = None
    entropy_parameters: ExactNet | None = None
    ar: _ARStep | None = None  # the two above as matrices (derived, not fingerprinted)
    fingerprint: bytes = field(default=b"")

    @classmethod
    def from_model(cls, model: nn.Module) -> CodingState:
        family = model_family(model)
        eb = model.entropy_bottleneck
        medians = eb.quantiles.detach()[:, 0, 1].to("cpu", torch.float64)
        if not bool(torch.isfinite(eb.quantiles).all()):
            raise CheckpointError(
                "the entropy bottleneck's quantiles hold NaN or infinite values (a diverged "
                "training run): the codec cannot code; resume from an earlier checkpoint"
            )
        state = cls(
            family,
            int(getattr(model, "M", eb.channels)),
            _Tables(eb._quantized_cdf, eb._cdf_length, eb._offset),
            torch.round(medians * ONE),
        )
        if family != "factorized":
            gc = model.gaussian_conditional
            state.y_tables = _Tables(gc._quantized_cdf, gc._cdf_length, gc._offset)
            table = gc.scale_table.detach().to("cpu", torch.float64)
            state.thresholds = torch.floor(table[:-1] * ONE)
            state.h_s = ExactNet(model.h_s)
        if family == "autoregressive":
            state.context = _CausalContext(model.context_prediction)
            state.entropy_parameters = ExactNet(model.entropy_parameters)
            state.ar = _ARStep(state.context, state.entropy_parameters)
        h = hashlib.sha256(CODER_VERSION + family.encode())
        state.bottleneck.digest(h)
        h.update(state.medians.to(torch.int64).numpy().astype("<i8").tobytes())
        for part in (state.y_tables, state.h_s, state.context, state.entropy_parameters):
            if part is not None:
                part.digest(h)
        if state.thresholds is not None:
            h.update(state.thresholds.to(torch.int64).numpy().astype("<i8").tobytes())
        state.fingerprint = h.digest()[:8]
        return state

    # -------------------------------------------------------------- shapes
    @property
    def hyper(self) -> bool:
        return self.family != "factorized"

    def latent_shape(self, padded_h: int, padded_w: int) -> tuple[int, int]:
        """The shape the container records: ẑ's for hyperprior families, ŷ's for factorized."""
        f = 64 if self.hyper else 16
        return padded_h // f, padded_w // f

    # -------------------------------------------------------------- per-channel coding (z, factorized y)
    def _channels(self, io, values: torch.Tensor | None, shape: tuple[int, int]) -> torch.Tensor:
        """Code a (C, h, w) tensor with one table per channel; returns exact integers."""
        c, hw = len(self.medians), shape[0] * shape[1]
        medians = self.medians.numpy()[:, None]
        index = np.repeat(np.arange(c), hw)
        if values is None:
            s = io.grouped(self.bottleneck, index).reshape(c, hw)
        else:
            s = _symbols(values.reshape(c, hw).numpy() - medians / ONE, medians)
            io.grouped(self.bottleneck, index, s.reshape(-1))
        out = np.clip(s * ONE + medians, -ACT_LIMIT, ACT_LIMIT)
        return torch.from_numpy(out.reshape(c, *shape))

    # -------------------------------------------------------------- Gaussian coding (y)
    def _gaussian(
        self, io, y: torch.Tensor | None, scales: torch.Tensor, means: torch.Tensor | None
    ) -> torch.Tensor:
        """Code one block of y: ``scales``/``means`` are exact integers of any (same) shape; the
        symbols are taken table by table, in row-major order within each table."""
        sc = scales.numpy().reshape(-1)
        index = np.searchsorted(self.thresholds.numpy(), sc, side="left")
        mu = np.zeros_like(sc) if means is None else means.numpy().reshape(-1)
        if y is None:
            s = io.grouped(self.y_tables, index)
        else:
            s = _symbols(y.numpy().reshape(-1) - mu / ONE, mu)
            io.grouped(self.y_tables, index, s)
        out = np.clip(s * ONE + mu, -ACT_LIMIT, ACT_LIMIT)
        return torch.from_numpy(out.reshape(scales.shape))

    def _code(
        self, io, y: torch.Tensor | None, z: torch.Tensor | None, shape: tuple[int, int]
    ) -> torch.Tensor:
        """The whole stream in decoding order; ``y``/``z`` given: encode, else decode."""
        if not self.hyper:
            return self._channels(io, y, shape)
        z_hat = self._channels(io, z, shape)
        params = self.h_s(z_hat[None])[0]  # (C, 4h, 4w)
        if self.family == "scale":
            return self._gaussian(io, y, params, None)
        if self.family == "mean-scale":
            scales, means = params.chunk(2, 0)
            return self._gaussian(io, y, scales, means)
        return self._wavefronts(io, y, params)

    def _wavefronts(self, io, y: torch.Tensor | None, params: torch.Tensor) -> torch.Tensor:
        """Autoregressive coding in wavefront order. The latent is kept channels-last and
        zero-padded, so a wavefront's causal neighbourhoods are one gather.

        Decoding runs the context model and the entropy parameters once per wavefront, at its
        positions only, then decodes its symbols. Encoding needs only the means inside the loop
        (ŷ = round(y - μ) + μ feeds the next wavefronts); the scales, the tables and the symbols'
        order are computed for the whole latent at once after it.
        """
        ar, m = self.ar, self.M
        h, w = params.shape[-2:]
        rows, cols, starts = (torch.from_numpy(a) for a in _wavefront_order(h, w))
        p = ar.pad
        wp = w + 2 * p
        pidx = (rows + p) * wp + cols + p  # flat positions in the padded latent, coding order
        neighbours = pidx[:, None] + ar.offsets(wp)  # (h w, taps)
        first = ar.first(params.reshape(len(params), -1).T[rows * w + cols])  # coding order
        latent = torch.zeros((h + 2 * p) * wp, m, dtype=torch.float64)
        waves = list(zip(starts[:-1].tolist(), starts[1:].tolist()))
        if y is None:
            for a, b in waves:
                gp = ar.params(first[a:b], ar.context(latent[neighbours[a:b]]))
                latent[pidx[a:b]] = self._gaussian(io, None, gp[:, :m], gp[:, m:])
        else:
            y_w = y.reshape(m, -1).T[rows * w + cols].numpy()  # (h w, M), coding order
            symbols, last = np.empty((h * w, m), dtype=np.int64), ar.layers[-1]
            split = len(ar.layers) > 1 and isinstance(last, tuple)
            if split:  # the last layer's means inside the loop, its scales after it
                means_layer = (last[0][:, m:].contiguous(), last[1][m:], last[2])
                hidden = torch.empty(h * w, last[0].shape[0], dtype=torch.float64)
            else:
                scales = torch.empty(h * w, m, dtype=torch.float64)
            for a, b in waves:
                ctx = ar.context(latent[neighbours[a:b]])
                if split:
                    hidden[a:b] = ar.params(first[a:b], ctx, upto=-1)
                    mu = ar._apply(means_layer, hidden[a:b]).numpy()
                else:
                    gp = ar.params(first[a:b], ctx)
                    scales[a:b], mu = gp[:, :m], gp[:, m:].numpy()
                s = symbols[a:b] = _symbols(y_w[a:b] - mu / ONE, mu)
                latent[pidx[a:b]] = torch.from_numpy(np.clip(s * ONE + mu, -ACT_LIMIT, ACT_LIMIT))
            if split:
                scales = ar._apply((last[0][:, :m].contiguous(), last[1][:m], last[2]), hidden)
            index = np.searchsorted(self.thresholds.numpy(), scales.numpy().reshape(-1))
            wave = np.repeat(np.arange(len(waves)), np.diff(starts.numpy()) * m)
            io.grouped(self.y_tables, index, symbols.reshape(-1), wave)
        out = latent.reshape(h + 2 * p, wp, m)[p : p + h, p : p + w].permute(2, 0, 1)
        return out.contiguous()

    # -------------------------------------------------------------- public
    @torch.no_grad()
    def encode(self, y: torch.Tensor, z: torch.Tensor | None) -> tuple[bytes, torch.Tensor]:
        """Entropy-code one image's latents.

        Args:
            y: (1, M, H/16, W/16) the analysis transform's output, any device.
            z: (1, N, H/64, W/64) the hyper-analysis output (``None`` for factorized models).

        Returns:
            The payload and ŷ (1, M, H/16, W/16) float32 on the CPU: what the decoder will get.

        Raises:
            CheckpointError: ``y`` or ``z`` holds NaN or infinite values.
        """
        for name, t in (("y", y), ("z", z)):
            if t is not None and not bool(torch.isfinite(t).all()):
                raise CheckpointError(
                    f"the latent {name} holds NaN or infinite values: the codec's weights are "
                    "not finite (a diverged run), or its analysis overflowed (float16?); it "
                    "cannot be coded -- load a codec with finite weights, in float32"
                )
        y64 = y.detach()[0].to("cpu", torch.float64).clamp(-4000.0, 4000.0)
        z64 = None if z is None else z.detach()[0].to("cpu", torch.float64).clamp(-4000.0, 4000.0)
        writer = _Writer()
        shape = tuple((z64 if self.hyper else y64).shape[-2:])
        latent = self._code(writer, y64, z64, shape)
        return writer.finish(), (latent / ONE).float()[None]

    @torch.no_grad()
    def decode(self, payload: bytes, shape: tuple[int, int]) -> torch.Tensor:
        """Decode a payload; ``shape``: the validated latent shape of the container.

        Returns:
            ŷ (1, M, H/16, W/16) float32 on the CPU.

        Raises:
            BitstreamError: anything inconsistent (bad words, unfinished or overlong payload).
        """
        reader = _Reader(payload)
        latent = self._code(reader, None, None, shape)
        reader.finish()
        return (latent / ONE).float()[None]


def _symbols(residual: np.ndarray, means: np.ndarray) -> np.ndarray:
    """round(y - μ), kept so that ŷ = s + μ stays within ±4096 (the exact path's range)."""
    s = np.round(residual)
    lo = np.ceil((-ACT_LIMIT - means) / ONE)
    hi = np.floor((ACT_LIMIT - means) / ONE)
    return np.minimum(np.maximum(s, lo), hi).astype(np.int64)


__all__ = [
    "CodingState",
    "ExactNet",
    "FAMILIES",
    "FRAC_BITS",
    "CODER_VERSION",
    "analysis",
    "model_family",
    "update_tables",
    "has_tables",
]
