"""The Mimi codec: codes <-> 24 kHz waveform, one-shot and streaming with explicit per-stream state.

Decoding (codes [B, K, T] at 12.5 Hz): sum of codebook vectors (semantic + acoustic parts, each
projected out) -> learnt channel-wise transposed conv x2 (25 Hz) -> causal transformer -> SEANet
decoder (x960) -> [B, 1, T * 1920]. Encoding runs the mirror path (SEANet encoder, transformer,
learnt strided conv /2, greedy residual quantization).

Streaming: `new_decoder_state(batch_size)` returns a `MimiDecoderState` that holds every tensor the
decoder remembers between frames (conv histories, transposed-conv overlaps, attention ring caches
and positions). `decode_step(codes, state)` decodes the next frame(s) of each stream and updates the
state IN PLACE (tensor storage never moves). Nothing streaming is kept on the module, so one model
serves any number of calls, each with its own state, and states of batch 1 can be stacked into one
batch (`MimiDecoderState.stack`) and split again (`unstack`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.mimi.config import MimiConfig, MimiError
from model.mimi.conv import StreamingLeaf, StreamTensors, init_stream_tensors
from model.mimi.quantizer import SplitResidualVectorQuantizer
from model.mimi.seanet import ConvDownsample1d, ConvTrUpsample1d, SeanetDecoder, SeanetEncoder
from model.mimi.transformer import ProjectedTransformer

DEFAULT_NUM_CODEBOOKS = 8  # LFM2-Audio uses the first 8 of the 32 codebooks (1 semantic + 7 acoustic)


@dataclass(eq=False)
class MimiDecoderState:
    """Decoder memory of `batch_size` independent streams; row i of every tensor is stream i.

    Updated in place by `Mimi.decode_step`. All tensors start at zero, so `reset()` restarts
    streams. States are only valid for the Mimi (config, device, dtype) that created them.
    """

    tensors: dict[str, Tensor]
    batch_size: int

    def reset(self, rows: Sequence[int] | None = None) -> None:
        """Restart every stream, or only the given batch rows."""
        for tensor in self.tensors.values():
            if rows is None:
                tensor.zero_()
            else:
                tensor[list(rows)] = 0

    def clone(self) -> MimiDecoderState:
        return MimiDecoderState({k: v.clone() for k, v in self.tensors.items()}, self.batch_size)

    @staticmethod
    def stack(states: Sequence[MimiDecoderState]) -> MimiDecoderState:
        """Concatenate states on the batch axis (copies); streams may be at different positions."""
        if not states:
            raise MimiError("cannot stack an empty list of Mimi decoder states")
        keys = states[0].tensors.keys()
        for state in states[1:]:
            if state.tensors.keys() != keys:
                raise MimiError("cannot stack Mimi decoder states of different models")
        tensors = {key: torch.cat([s.tensors[key] for s in states], dim=0) for key in keys}
        return MimiDecoderState(tensors, sum(s.batch_size for s in states))

    def unstack(self) -> list[MimiDecoderState]:
        """Split into batch-1 states (copies), in row order."""
        return [
            MimiDecoderState({k: v[i : i + 1].clone() for k, v in self.tensors.items()}, 1)
            for i in range(self.batch_size)
        ]


class Mimi(nn.Module):
    """Kyutai's Mimi codec with the state-dict names of moshi's MimiModel."""

    def __init__(self, config: MimiConfig, *, num_codebooks: int = DEFAULT_NUM_CODEBOOKS) -> None:
        super().__init__()
        q = config.quantizer
        if not q.n_q_semantic <= num_codebooks <= q.n_q:
            raise MimiError(f"num_codebooks must be in [{q.n_q_semantic}, {q.n_q}], got {num_codebooks}")
        self.config = config
        self._num_codebooks = num_codebooks
        # Registration order = moshi's, so state_dict() lists keys as the published file does.
        self.encoder = SeanetEncoder(config.seanet)
        self.decoder = SeanetDecoder(config.seanet)
        self.encoder_transformer = ProjectedTransformer(config.transformer)
        self.decoder_transformer = ProjectedTransformer(config.transformer)
        self.quantizer = SplitResidualVectorQuantizer(q)
        self.downsample: ConvDownsample1d | None = None
        self.upsample: ConvTrUpsample1d | None = None
        if config.resample_stride > 1:
            self.downsample = ConvDownsample1d(config.resample_stride, config.seanet.dimension)
            self.upsample = ConvTrUpsample1d(config.resample_stride, config.seanet.dimension)
        for name, module in self.named_modules():
            if isinstance(module, StreamingLeaf):
                module.state_name = name
        self._state_layout: dict[str, tuple[tuple[int, ...], torch.dtype]] | None = None

    # -- facts -------------------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def frame_rate(self) -> float:
        return self.config.frame_rate

    @property
    def frame_size(self) -> int:
        """Output samples per code frame (1920 = 80 ms at 24 kHz)."""
        return self.config.frame_size

    @property
    def channels(self) -> int:
        return self.config.channels

    @property
    def num_codebooks(self) -> int:
        """Codebooks per frame that decode() expects and encode() returns (8)."""
        return self._num_codebooks

    @property
    def total_codebooks(self) -> int:
        return self.config.quantizer.n_q

    @property
    def cardinality(self) -> int:
        """Codes per codebook (2048); valid codes are 0 .. cardinality - 1."""
        return self.config.quantizer.bins

    def _param_device_dtype(self) -> tuple[torch.device, torch.dtype]:
        weight = next(self.decoder.parameters())
        return weight.device, weight.dtype

    # -- decoding ----------------------------------------------------------------------------
    def _check_codes(self, codes: Tensor) -> Tensor:
        if not isinstance(codes, Tensor) or codes.dtype.is_floating_point or codes.dtype == torch.bool:
            raise MimiError("Mimi codes must be an integer tensor [batch, codebooks, frames]")
        if codes.dim() != 3 or codes.shape[1] != self.num_codebooks or codes.shape[2] == 0:
            raise MimiError(
                f"Mimi codes must have shape [batch, {self.num_codebooks}, frames >= 1], got {list(codes.shape)}"
            )
        bad = (codes < 0) | (codes >= self.cardinality)
        if bool(bad.any()):
            b, k, t = (int(i) for i in bad.nonzero()[0])
            raise MimiError(
                f"Mimi code {int(codes[b, k, t])} at [batch {b}, codebook {k}, frame {t}] is outside "
                f"[0, {self.cardinality}); {self.cardinality} is the end-of-audio marker and must be "
                "filtered out before decoding"
            )
        device, _ = self._param_device_dtype()
        return codes.to(device=device, dtype=torch.long)

    def _decode(self, codes: Tensor, state: StreamTensors | None) -> Tensor:
        latent = self.quantizer.decode(codes)
        if self.upsample is not None:
            latent = self.upsample(latent, state)
        latent = self.decoder_transformer(latent, state)
        out: Tensor = self.decoder(latent, state)
        return out

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """One-shot decode: codes [B, num_codebooks, T] in [0, 2048) -> waveform [B, 1, T * 1920]."""
        return self._decode(self._check_codes(codes), None)

    def _decoder_modules(self) -> list[nn.Module]:
        modules: list[nn.Module] = [self.decoder_transformer, self.decoder]
        if self.upsample is not None:
            modules.insert(0, self.upsample)
        return modules

    def _new_state_tensors(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> StreamTensors:
        tensors: StreamTensors = {}
        for module in self._decoder_modules():
            tensors.update(init_stream_tensors(module, batch_size, device, dtype))
        return tensors

    @torch.no_grad()
    def new_decoder_state(self, batch_size: int = 1) -> MimiDecoderState:
        """A fresh streaming state for `batch_size` streams, on this model's device and dtype."""
        if batch_size < 1:
            raise MimiError(f"batch_size must be >= 1, got {batch_size}")
        device, dtype = self._param_device_dtype()
        return MimiDecoderState(self._new_state_tensors(batch_size, device, dtype), batch_size)

    def _check_state(self, state: MimiDecoderState) -> None:
        device, dtype = self._param_device_dtype()
        layout = self._state_layout
        if layout is None or next(iter(layout.values()))[1] != dtype:
            meta = self._new_state_tensors(1, torch.device("meta"), dtype)
            layout = self._state_layout = {k: (tuple(v.shape[1:]), v.dtype) for k, v in meta.items()}
        if state.tensors.keys() != layout.keys():
            raise MimiError("the decoder state belongs to another Mimi model (different modules)")
        for key, (shape, state_dtype) in layout.items():
            tensor = state.tensors[key]
            if (
                tuple(tensor.shape[1:]) != shape
                or tensor.shape[0] != state.batch_size
                or tensor.dtype != state_dtype
                or tensor.device != device
            ):
                raise MimiError(
                    f"decoder state tensor {key} {list(tensor.shape)} {tensor.dtype} on {tensor.device} does not "
                    f"fit this Mimi (batch {state.batch_size}, {list(shape)} {state_dtype} on {device}): "
                    "it belongs to another model"
                )

    @torch.no_grad()
    def decode_step(self, codes: Tensor, state: MimiDecoderState) -> Tensor:
        """Streaming decode of the next frame(s): codes [B, num_codebooks, T] (usually T = 1) ->
        waveform [B, 1, T * 1920]. `state` (batch B) is updated in place.

        Frame by frame, the concatenated outputs equal `decode()` of the whole sequence (exactly
        for streams shorter than the transformer context, 10 s; see transformer.py beyond).
        """
        codes = self._check_codes(codes)
        if codes.shape[0] != state.batch_size:
            raise MimiError(f"codes have batch {codes.shape[0]} but the decoder state has {state.batch_size}")
        self._check_state(state)
        return self._decode(codes, state.tensors)

    # -- encoding ----------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, wav: Tensor) -> Tensor:
        """One-shot encode: waveform [B, 1, N] at 24 kHz -> codes [B, num_codebooks, ceil(N / 1920)].

        The waveform is zero-padded at the end to a whole number of frames.
        """
        if not isinstance(wav, Tensor) or not wav.dtype.is_floating_point or wav.dim() != 3:
            raise MimiError("Mimi encode expects a float waveform [batch, channels, samples]")
        if wav.shape[1] != self.channels or wav.shape[2] == 0:
            raise MimiError(
                f"Mimi encode expects [batch, {self.channels}, samples >= 1], got {list(wav.shape)}"
            )
        device, dtype = self._param_device_dtype()
        wav = wav.to(device=device, dtype=dtype)
        extra = -wav.shape[-1] % self.frame_size
        if extra:
            wav = F.pad(wav, (0, extra))
        latent = self.encoder_transformer(self.encoder(wav))
        if self.downsample is not None:
            latent = self.downsample(latent)
        return self.quantizer.encode(latent, self.num_codebooks)
