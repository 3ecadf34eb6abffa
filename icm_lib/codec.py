"""The learned codec: CompressAI models, the encoder/decoder split view, and real coding.

::

    x ─► g_a ─► y ─► (hyperprior, entropy models) ─► ŷ = latent_hat ─► g_s[:-1] ─► feature ─► g_s[-1] ─► x̂
         └────────────── encoder side ───────────────┘   │                  └ decoder_feature (aux-dec)
                                                         └ aux-enc branch input (Iino et al. Eq. 5)

:class:`ICMCodec` wraps an unmodified CompressAI model. Forward hooks record ŷ (the input of the
synthesis transform ``g_s``) and the decoder's penultimate feature (the input of ``g_s``'s last
layer) during CompressAI's own ``forward``, so no model code is copied and every CompressAI model
with ``g_a``/``g_s`` works. ``compress``/``decompress`` produce real bytes in the container of
:mod:`icm_lib.bitstream` through the device-independent, memory-safe coder of
:mod:`icm_lib.entropy` (CompressAI's tables, its transforms; symbols chosen in exact integers).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn
from compressai.zoo import image as zoo_image

from . import bitstream, entropy
from .data.images import ImageLike, to_rgb_tensor
from .data.transforms import crop_padding, pad_to_multiple
from .errors import (
    BitstreamError,
    CheckpointError,
    ConfigError,
    ImageError,
    WeightsUnavailableError,
)
from .metrics import bpp_from_bytes, bpp_from_likelihoods
from .runtime import forwards_in_bfloat16
from .weights import compressai_zoo_model

#: the four codecs the tutorial names; cheng2020-attn is Iino et al.'s default.
CODEC_NAMES = ("cheng2020-attn", "mbt2018-mean", "bmshj2018-hyperprior", "bmshj2018-factorized")
_DECODER_ATTR = "g_s"
#: the container's 16-bit size fields: the largest side a stream can hold
_MAX_SIDE = 0xFFFF


def build_compressai_model(
    name: str,
    quality: int | None = 3,
    N: int | None = None,
    M: int | None = None,
    pretrained: bool = False,
    metric: str = "mse",
    checkpoint: str | None = None,
) -> nn.Module:
    """A CompressAI model by zoo name and quality, or with explicit channel counts.

    Args:
        quality: zoo quality; it sets N and M where they are not given (``None``: 3's).
        N, M: explicit channel counts (cheng2020 models take N only).
        pretrained: CompressAI's weights through its zoo (cached by torch.hub); offline it raises
            :class:`WeightsUnavailableError` within a few seconds.
        checkpoint: with ``pretrained``, a local copy of the zoo's file, read instead.
    """
    if name not in zoo_image.model_architectures:
        raise ConfigError(f"unknown codec {name!r}; choose one of {CODEC_NAMES}")
    q = 3 if quality is None else quality
    if q not in zoo_image.cfgs[name]:
        raise ConfigError(f"{name} has qualities {sorted(zoo_image.cfgs[name])}, not {q}")
    if pretrained:
        if N is not None or M is not None:
            raise ConfigError("pretrained weights fix N and M; leave them None")
        # a local copy of the zoo's file (CodecConfig.checkpoint), else torch.hub's cache or the
        # download; offline, the error names the file torch.hub reads and the URL
        return compressai_zoo_model(name, q, metric, checkpoint)
    arch, default = zoo_image.model_architectures[name], zoo_image.cfgs[name][q]
    if name.startswith("cheng2020"):  # Cheng2020 models take N only
        return arch(N=N or default[0])
    return arch(N or default[0], M or default[-1])


@dataclass(frozen=True)
class CodedImage:
    """Result of :meth:`ICMCodec.roundtrip`.

    Attributes:
        x_hat: decoded image (1, 3, H, W) in [0, 1], padding removed.
        data: the container bytes.
        bpp: actual bits per (original) pixel, container included.
        bpp_payload: the entropy-coded strings only.
        bpp_estimate: the likelihood estimate -sum(log2 p) / pixels that training minimizes.
        bpp_coder_estimate: the same with the Gaussian scales rounded up to CompressAI's 64-entry
            scale table, as the range coder does; the real payload matches this one to within
            ~1 %, while ``bpp_estimate`` can be a few percent lower for small, briefly trained
            models (the table is coarse for the small scales they produce).
    """

    x_hat: torch.Tensor
    data: bytes
    bpp: float
    bpp_payload: float
    bpp_estimate: float
    bpp_coder_estimate: float

    def summary(self) -> dict:
        """The numbers without the image: bytes, the four bpp and the decoded shape."""
        return {
            "bytes": len(self.data),
            "bpp": self.bpp,
            "bpp_payload": self.bpp_payload,
            "bpp_estimate": self.bpp_estimate,
            "bpp_coder_estimate": self.bpp_coder_estimate,
            "decoded_shape": list(self.x_hat.shape),
        }


class ICMCodec(nn.Module):
    """A CompressAI model plus the views image coding for machines needs.

    Args:
        model: an unmodified CompressAI ``CompressionModel`` with ``g_a`` and ``g_s``.
        name, quality, N, M: recorded in checkpoints and bitstreams; ``quality`` is ``None`` for
            a model built from explicit channel counts.
    """

    #: ``decompress`` refuses streams of larger (padded) images unless told otherwise. The work
    #: and memory of decoding follow the size the header claims (an ANS decoder keeps producing
    #: symbols after a short payload ends; only then is the stream refused), so a crafted
    #: 100-byte stream can cost what a real image of the maximum size costs. 2^22 px (2048 x
    #: 2048) holds COCO at short edge 800 and Pascal-Context at 520; raise it for larger images.
    max_decode_pixels: int = 1 << 22

    #: run the transforms of real coding (g_a and h_a in :meth:`compress`, g_s in
    #: :meth:`decompress`) in channels-last layout: on this project's 2-core CPU 1.2-1.4x faster
    #: (README "Real coding"). The stream format is unchanged and the decoder's ŷ is what the
    #: stream holds, on every device; g_a's float rounding differs from the NCHW path by ~1e-6,
    #: which can move a rounding of y: another, equally valid stream of the same image.
    channels_last: bool = False

    #: run the same transforms under bfloat16 autocast (the codec's weights stay float32; ŷ's
    #: rounding and the entropy parameters stay exact). Fast only where the hardware multiplies
    #: bfloat16 (a CPU with AVX512-BF16 or AMX, a GPU with tensor cores): 2-3x on such a CPU,
    #: 10-20x slower on one without (README "Real coding"). g_a in bfloat16 writes another,
    #: equally valid stream of the same image (y moves by ~1e-2, a few roundings of ŷ change);
    #: g_s in bfloat16 costs x̂ a small PSNR (``bench codec`` prints it); any decoder reads either
    #: layout's or precision's streams and reconstructs the encoder's ŷ exactly.
    bf16: bool = False

    def __init__(
        self,
        model: nn.Module,
        name: str,
        quality: int | None = None,
        N: int | None = None,
        M: int | None = None,
    ):
        super().__init__()
        self._coding: entropy.CodingState | None = None
        if not hasattr(model, _DECODER_ATTR) or not hasattr(model, "g_a"):
            raise TypeError("ICMCodec needs a CompressAI model with g_a and g_s")
        self.model = model
        self.name, self.quality = name, quality
        self.N = N if N is not None else int(getattr(model, "N", 0))
        self.M = M if M is not None else int(getattr(model, "M", self.N))
        self._captured: dict[str, torch.Tensor] = {}
        self._stop_at_decoder = False
        self.decoder.register_forward_pre_hook(self._capture_latent)
        self.decoder_last_layer.register_forward_pre_hook(self._capture_feature)

    # ------------------------------------------------------------------ split view
    @property
    def decoder(self) -> nn.Module:
        """The synthesis transform g_s (decoder side)."""
        return getattr(self.model, _DECODER_ATTR)

    @property
    def decoder_last_layer(self) -> nn.Module:
        """The last layer of g_s (its input is the aux-dec position of Iino et al. section 4.2)."""
        return list(self.decoder.children())[-1]

    @property
    def decoder_last_layer_channels(self) -> int:
        """Channels of the last layer's input (the aux-dec branch's input)."""
        conv = next(
            m
            for m in self.decoder_last_layer.modules()
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))
        )
        return conv.in_channels

    def decoder_parameters(self) -> Iterator[nn.Parameter]:
        return self.decoder.parameters()

    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter outside g_s: analysis transform, hyperprior, entropy models."""
        dec = {id(p) for p in self.decoder.parameters()}
        return (p for p in self.model.parameters() if id(p) not in dec)

    def encoder_named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        dec = {id(p) for p in self.decoder.parameters()}
        return ((n, p) for n, p in self.model.named_parameters() if id(p) not in dec)

    def _capture_latent(self, module, args):
        self._captured["latent_hat"] = args[0]
        if self._stop_at_decoder:
            raise _StopAtDecoder

    def _capture_feature(self, module, args):
        self._captured["decoder_feature"] = args[0]

    def forward(self, x: torch.Tensor) -> dict[str, object]:
        """CompressAI's forward plus what the split view needs.

        Args:
            x: (B, 3, H, W) in [0, 1], H and W multiples of 64.

        Returns:
            ``{"x_hat": (B, 3, H, W), "likelihoods": {"y": ..., "z": ...},
            "latent_hat": ŷ (B, M, H/16, W/16), "decoder_feature": (B, C, H/2, W/2)}``.
            In train mode ŷ carries CompressAI's training quantization (additive noise).
        """
        self._captured.clear()
        out = dict(self.model(x))
        out["latent_hat"] = self._captured.pop("latent_hat")
        out["decoder_feature"] = self._captured.pop("decoder_feature")
        return out

    #: the transforms :meth:`transforms_in_bf16` runs in bfloat16 (the entropy models, and
    #: where a family has them its context model and entropy parameters, stay float32)
    TRANSFORMS = ("g_a", "h_a", "h_s", "g_s")

    @contextmanager
    def transforms_in_bf16(self, device_type: str, enabled: bool = True) -> Iterator[None]:
        """Inside, the training forward runs g_a, h_a, h_s and g_s under bfloat16 autocast, each
        returning float32, so that the likelihoods, the quantization noise and everything after
        the codec see float32 tensors (an option of the training step, ``ICMObjective``'s
        ``codec_amp``: fast only where the hardware multiplies bfloat16; the losses it changes
        stay within the tolerance ``tests/test_stepbench.py`` states). The weights stay float32."""
        if not enabled:
            yield
            return
        wrapped = [getattr(self.model, n) for n in self.TRANSFORMS if hasattr(self.model, n)]
        with forwards_in_bfloat16(wrapped, device_type):
            yield

    def encode(self, x: torch.Tensor) -> dict[str, object]:
        """Encoder side only: ``{"latent_hat": ŷ, "likelihoods": {...}}`` without running g_s."""
        self._captured.clear()
        likelihoods: dict[str, torch.Tensor] = {}
        handles = [
            m.register_forward_hook(self._likelihood_hook(likelihoods, key))
            for key, m in self._entropy_modules()
        ]
        gc_args: dict[str, object] = {}
        if hasattr(self.model, "gaussian_conditional"):
            handles.append(
                self.model.gaussian_conditional.register_forward_pre_hook(
                    lambda mod, args, kwargs: gc_args.update(args=args, kwargs=kwargs),
                    with_kwargs=True,
                )
            )
        self._stop_at_decoder = True
        try:
            self.model(x)
        except _StopAtDecoder:
            pass
        finally:
            self._stop_at_decoder = False
            for h in handles:
                h.remove()
        out = {"latent_hat": self._captured.pop("latent_hat"), "likelihoods": likelihoods}
        if gc_args:
            out["gaussian_params"] = gc_args
        return out

    @torch.no_grad()
    def coder_likelihoods(
        self, x: torch.Tensor, enc: dict | None = None
    ) -> dict[str, torch.Tensor]:
        """Likelihoods as the range coder sees them: each Gaussian scale rounded up to the
        entry of CompressAI's scale table that ``compress`` uses (eval mode). ``enc``: the
        output of :meth:`encode` on ``x`` when the caller has it already."""
        enc = enc if enc is not None else self.encode(x)
        likelihoods = dict(enc["likelihoods"])
        if "gaussian_params" in enc:
            gc = self.model.gaussian_conditional
            args, kwargs = enc["gaussian_params"]["args"], dict(enc["gaussian_params"]["kwargs"])
            inputs, scales = args[0], args[1] if len(args) > 1 else kwargs.pop("scales")
            means = args[2] if len(args) > 2 else kwargs.get("means")
            table = gc.scale_table.to(scales)[gc.build_indexes(scales).long()]
            likelihoods["y"] = gc(inputs, table, means=means, training=False)[1]
        return likelihoods

    def decode(self, latent_hat: torch.Tensor) -> torch.Tensor:
        """Decoder side only: g_s(ŷ) (unclamped, as in CompressAI's forward). What the split
        view's hooks capture on the way is dropped (a training's activation is not kept alive
        until the next step)."""
        try:
            return self.decoder(latent_hat)
        finally:
            self._captured.clear()

    def _entropy_modules(self):
        if hasattr(self.model, "gaussian_conditional"):
            return [("y", self.model.gaussian_conditional), ("z", self.model.entropy_bottleneck)]
        return [("y", self.model.entropy_bottleneck)]

    @staticmethod
    def _likelihood_hook(store, key):
        def hook(module, args, output):
            store[key] = output[1]

        return hook

    # ------------------------------------------------------------------ losses
    def quantile_loss(self) -> torch.Tensor:
        """CompressAI's ``aux_loss()``: trains the entropy bottleneck's quantiles (not Iino et al.'s
        auxiliary branch)."""
        return self.model.aux_loss()

    def quantile_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.model.named_parameters() if n.endswith(".quantiles")]

    def main_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.model.named_parameters() if not n.endswith(".quantiles")]

    bpp_estimate = staticmethod(bpp_from_likelihoods)

    # ------------------------------------------------------------------ real coding
    def update(self, force: bool = True) -> None:
        """Build the entropy tables and the coding state; call after training, before coding.

        The tables are computed on the CPU whatever the codec's device, stored in the model's
        buffers (so :meth:`codec_state` saves them) and never recomputed by :func:`load_codec`.
        ``force`` is accepted for CompressAI compatibility; tables are always rebuilt.

        Raises:
            CheckpointError: the weights hold NaN or infinite values (a diverged run).
        """
        self.require_finite_weights()
        entropy.update_tables(self.model)
        self._coding = entropy.CodingState.from_model(self.model)

    def coding_state(self) -> entropy.CodingState:
        """What decides the symbols of this codec's streams (built once; see :meth:`update`).

        Weights changed after it was built (training on) are not seen until :meth:`update`.
        """
        if self._coding is None:
            self.require_finite_weights()
            if not entropy.has_tables(self.model):
                entropy.update_tables(self.model)
            self._coding = entropy.CodingState.from_model(self.model)
        return self._coding

    @property
    def fingerprint(self) -> bytes:
        """8 bytes identifying the coding state; every stream carries the writer's."""
        return self.coding_state().fingerprint

    def nonfinite_weights(self) -> list[str]:
        """Names of the model's floating-point parameters and buffers holding NaN or ±inf
        (empty for a usable codec; one sync whatever the device)."""
        tensors = [
            (name, t)
            for name, t in (*self.model.named_parameters(), *self.model.named_buffers())
            if t.is_floating_point() and t.numel()
        ]
        flags: dict[torch.device, list[torch.Tensor]] = {}
        for _, t in tensors:  # one stacked flag vector per device: one host sync each
            flags.setdefault(t.device, []).append(torch.isfinite(t).all())
        finite = {dev: iter(torch.stack(f).tolist()) for dev, f in flags.items()}
        return [name for name, t in tensors if not next(finite[t.device])]

    def require_finite_weights(self) -> None:
        """Raise :class:`CheckpointError` if any weight is NaN or infinite.

        Such a codec (a diverged training run) cannot code: its latents are NaN. Checked before
        every coding call, by :meth:`update` and by :func:`load_codec`.
        """
        bad = self.nonfinite_weights()
        if bad:
            shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
            raise CheckpointError(
                f"the {self.name} codec's weights hold NaN or infinite values ({shown}): it "
                "comes from a diverged training run and cannot code images; resume from an "
                "earlier checkpoint or retrain (lower learning rate, gradient clipping)"
            )

    def _prepare(self, image: ImageLike) -> tuple[torch.Tensor, int, int, tuple[int, int]]:
        """Any image form through :func:`~icm_lib.data.images.to_rgb_tensor` (the same rules
        for a path, a PIL image, an array and a 3-D or 4-D tensor), padded to 64."""
        x = to_rgb_tensor(image, batch=True)
        h, w = x.shape[-2:]
        if max(h, w) > _MAX_SIDE:
            raise ImageError(
                f"the image is {h}x{w}; a stream holds at most {_MAX_SIDE} pixels a side: "
                "split it into tiles or downscale it"
            )
        param = next(self.model.parameters())
        x = x.to(param.device, param.dtype if param.is_floating_point() else torch.float32)
        x, pad = pad_to_multiple(x)
        return x, h, w, pad

    @torch.no_grad()
    def compress(self, image: ImageLike) -> bytes:
        """Entropy-code one image to container bytes.

        Args:
            image: a path, PIL image, array, (C, H, W) or (1, C, H, W) tensor, converted by
                :func:`~icm_lib.data.images.to_rgb_tensor` (its table of rules per dtype and
                mode); any size is padded to a multiple of 64 (and cropped back by
                ``decompress``).

        Raises:
            ImageError: what ``to_rgb_tensor`` refuses (NaN or infinite values, floats outside
                [0, 1], integer types other than uint8 / uint16, empty, unreadable), or a side
                longer than 65535.
            CheckpointError: the codec's weights hold NaN or infinite values.
        """
        return self.compress_with_latent(image)[0]

    @torch.no_grad()
    def compress_with_latent(self, image: ImageLike) -> tuple[bytes, torch.Tensor]:
        """:meth:`compress`, also returning the ŷ (1, M, h, w) that every decoder of the bytes
        will reconstruct (on the codec's device)."""
        x, h, w, (pad_h, pad_w) = self._prepare(image)
        self.require_finite_weights()
        state = self.coding_state()
        was_training = self.training
        self.eval()
        try:
            with self._precision(x):
                y, z = entropy.analysis(self.model, self._layout(x))
        finally:
            self.train(was_training)
        y, z = y.float().contiguous(), None if z is None else z.float().contiguous()
        payload, latent = state.encode(y, z)
        header = bitstream.Header(
            self.name,
            self.quality or 0,
            self.N,
            self.M,
            h,
            w,
            pad_h,
            pad_w,
            state.latent_shape(h + pad_h, w + pad_w),
            state.fingerprint,
        )
        return bitstream.pack(header, [payload]), latent.to(x.device)

    def _check(
        self,
        header: bitstream.Header,
        strings: list[bytes],
        state: entropy.CodingState,
        max_pixels: int,
    ) -> None:
        """Every header field against the others and against this codec, before decoding."""
        if (header.codec, header.quality, header.N, header.M) != (
            self.name,
            self.quality or 0,
            self.N,
            self.M,
        ):
            raise BitstreamError(
                f"bitstream was written by {header.codec} q{header.quality} (N={header.N}, "
                f"M={header.M}); this codec is {self.name} q{self.quality} (N={self.N}, "
                f"M={self.M}): load the matching model"
            )
        if header.fingerprint != state.fingerprint:
            raise BitstreamError(
                f"bitstream was written by a {self.name} codec with other weights or entropy "
                f"tables (fingerprint {header.fingerprint.hex()}, this codec "
                f"{state.fingerprint.hex()}): decode it with the saved codec that wrote it"
            )
        if len(strings) != 1:
            raise BitstreamError(f"bitstream has {len(strings)} payloads; {self.name} writes 1")
        ph, pw = header.height + header.pad_h, header.width + header.pad_w
        if (
            header.height == 0
            or header.width == 0
            or not 0 <= header.pad_h < 64
            or not 0 <= header.pad_w < 64
            or ph % 64
            or pw % 64
        ):
            raise BitstreamError(
                f"image {header.height}x{header.width} with padding "
                f"{header.pad_h}/{header.pad_w} is not padded to a multiple of "
                "64; the header is corrupt"
            )
        if ph * pw > max_pixels:
            raise BitstreamError(
                f"the stream claims a {ph}x{pw} image, more than the "
                f"{max_pixels} pixels this decoder accepts; pass max_pixels= "
                "to decompress (or set codec.max_decode_pixels) if it is real"
            )
        expected = state.latent_shape(ph, pw)
        if tuple(header.latent_shape) != expected:
            raise BitstreamError(
                f"latent shape {header.latent_shape} does not match a "
                f"{ph}x{pw} image ({expected}); the header is corrupt"
            )

    def _precision(self, x: torch.Tensor):
        """The autocast context the transforms of real coding run in (:attr:`bf16`)."""
        return torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the memory layout the transforms of real coding run in
        (:attr:`channels_last`)."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    @torch.no_grad()
    def decompress(
        self, data: bytes, max_pixels: int | None = None, tile: int | None = None
    ) -> torch.Tensor:
        """Decode container bytes to (1, 3, H, W) in [0, 1] at the original size.

        Args:
            data: bytes written by :meth:`compress` of this codec (same saved weights) on any
                device.
            max_pixels: largest padded image accepted (default :attr:`max_decode_pixels`).
            tile: run g_s on latent tiles of this side (16·tile pixels) with the codec's exact
                overlap (:func:`~icm_lib.tiling.synthesize_tiled`): the synthesis's peak memory
                no longer grows with the image, the pixels equal the whole-image synthesis to
                float rounding. ``None``: the whole latent at once.

        Raises:
            BitstreamError: corrupt, truncated or crafted data, or data written by another codec.
        """
        header, strings = bitstream.unpack(data)
        self.require_finite_weights()
        state = self.coding_state()
        self._check(header, strings, state, max_pixels or self.max_decode_pixels)
        latent = state.decode(strings[0], tuple(header.latent_shape))
        param = next(self.model.parameters())
        was_training = self.training
        self.eval()
        latent = latent.to(param.device, param.dtype)
        try:
            with self._precision(latent):
                if tile is not None and max(latent.shape[-2:]) > tile:
                    from .tiling import exact_overlap, synthesize_tiled

                    overlap = exact_overlap(self.name)
                    x_hat = synthesize_tiled(self.decoder, latent, tile, overlap)
                    self._captured["latent_hat"] = latent  # the tiles' hook kept the last one
                else:
                    x_hat = self.decoder(self._layout(latent))
        finally:
            self.train(was_training)
        x_hat = x_hat.float().contiguous()
        if not torch.isfinite(x_hat).all():
            raise BitstreamError("decoding produced non-finite pixels: the payload is corrupt")
        return crop_padding(x_hat.clamp(0, 1), header.height, header.width)

    @torch.no_grad()
    def decoded_latent(self, data: bytes) -> torch.Tensor:
        """Decode ``data`` and return the quantized latent ŷ the decoder received from it
        (the input of g_s), e.g. to check it equals the encoder's."""
        self.decompress(data)
        return self._captured.pop("latent_hat")

    @torch.no_grad()
    def roundtrip(self, image: ImageLike) -> CodedImage:
        """Compress and decompress one image; report actual and estimated bpp side by side."""
        data = self.compress(image)
        x, h, w, _ = self._prepare(image)
        was_training = self.training
        self.eval()
        try:
            enc = self.encode(x)
            likelihoods = enc["likelihoods"]
            coder = self.coder_likelihoods(x, enc)
        finally:
            self.train(was_training)
        header, strings = bitstream.unpack(data)
        return CodedImage(
            x_hat=self.decompress(data),
            data=data,
            bpp=bpp_from_bytes(len(data), h, w),
            bpp_payload=bpp_from_bytes(sum(len(s) for s in strings), h, w),
            bpp_estimate=float(self.bpp_estimate(likelihoods, h * w)),
            bpp_coder_estimate=float(self.bpp_estimate(coder, h * w)),
        )

    # ------------------------------------------------------------------ persistence
    def config(self) -> dict[str, object]:
        return {"name": self.name, "quality": self.quality, "N": self.N, "M": self.M}

    def codec_state(self) -> dict[str, object]:
        """What a saved codec holds: its config and the CompressAI model's weights only."""
        return {"codec_config": self.config(), "state_dict": self.model.state_dict()}


class _StopAtDecoder(Exception):
    """Raised by the g_s pre-hook to end a forward at the decoder's input (see ``encode``)."""


def build_codec(
    name: str = "bmshj2018-hyperprior",
    quality: int | None = 3,
    N: int | None = None,
    M: int | None = None,
    pretrained: bool = False,
    checkpoint: str | None = None,
) -> ICMCodec:
    """Build an :class:`ICMCodec` by name (see :data:`CODEC_NAMES`) and quality or N/M."""
    model = build_compressai_model(name, quality, N, M, pretrained, checkpoint=checkpoint)
    explicit = not pretrained and (N is not None or M is not None)
    return ICMCodec(model, name, None if explicit else quality)  # N, M read from the model


def codec_from_config(cfg) -> ICMCodec:
    """Build from a :class:`~icm_lib.profiles.CodecConfig`."""
    return build_codec(cfg.name, cfg.quality, cfg.N, cfg.M, cfg.pretrained, cfg.checkpoint)


def load_codec(state: dict) -> ICMCodec:
    """Rebuild a codec saved with :meth:`ICMCodec.codec_state` (e.g. from ``load_checkpoint``).

    Raises:
        CheckpointError: not a saved codec, incompatible weights, or weights holding NaN or
            infinite values (a diverged run).
    """
    try:
        cfg = state["codec_config"]
        quality = cfg["quality"] or None  # codecs saved before 2026-11 wrote 0 for "explicit N/M"
        model = build_compressai_model(
            cfg["name"], quality, *((None, None) if quality else (cfg["N"], cfg["M"]))
        )
        model.load_state_dict(state["state_dict"])
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:  # ValueError: a codec or
        # quality this CompressAI does not know (build_compressai_model's ConfigError)
        raise CheckpointError(f"not a saved icm_lib codec or incompatible weights: {exc}") from exc
    # the saved entropy tables are used as they are: recomputing them on another device or
    # machine could change them and make the codec's own streams undecodable
    codec = ICMCodec(model, cfg["name"], quality, cfg["N"], cfg["M"])
    codec.require_finite_weights()
    return codec


__all__ = [
    "CODEC_NAMES",
    "ICMCodec",
    "CodedImage",
    "build_codec",
    "build_compressai_model",
    "codec_from_config",
    "load_codec",
    "WeightsUnavailableError",
]
