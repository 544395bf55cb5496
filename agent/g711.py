"""ITU-T G.711 µ-law (PCMU) and A-law (PCMA) between int16 PCM and bytes, vectorised with numpy.

The quantisers follow the ITU-T G.191 reference implementation (``ulaw_compress``/``alaw_compress``):
the magnitude of a negative sample is its one's complement (``~x``), so the int16 range
[-32768, 32767] maps symmetrically onto the sign-magnitude code space; µ-law then works on 14 bits
(``x >> 2``) with the bias of 33, A-law on 12 bits (``x >> 4``) with the even-bit inversion 0x55.
Decoding returns the middle of each quantisation interval scaled to 16 bits (µ-law peak ±32124,
A-law ±32256), identical to the classic Sun/CCITT tables.

Encoding is arithmetic over whole arrays (no per-sample Python); decoding is a 256-entry table built
once at import.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from agent.audio import AudioError

Int16Array = npt.NDArray[np.int16]

ULAW_BIAS = 33  # in 14-bit units (0x84 in 16-bit units)
ULAW_MAX_BIASED = 0x1FFF
ALAW_XOR_MASK = 0x55
SIGN_BIT = 0x80

# Bit length of 0..255, so segments are found with one table lookup instead of a search.
_BIT_LENGTH = np.array([int(i).bit_length() for i in range(256)], dtype=np.int32)


def _check_pcm(pcm: Int16Array) -> npt.NDArray[np.int32]:
    if not isinstance(pcm, np.ndarray):
        raise AudioError(f"G.711 encoder needs a numpy array, got {type(pcm).__name__}")
    if pcm.dtype != np.int16:
        raise AudioError(f"G.711 encoder needs int16 PCM, got {pcm.dtype}")
    if pcm.ndim != 1:
        raise AudioError(f"G.711 encoder needs mono (1-D) PCM, got shape {pcm.shape}")
    return pcm.astype(np.int32)


def _split_sign(x: npt.NDArray[np.int32]) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int32]]:
    """(magnitude, sign bit) with the one's-complement magnitude for negative samples (G.191)."""
    negative = x < 0
    magnitude = np.where(negative, ~x, x)
    sign = np.where(negative, 0, SIGN_BIT).astype(np.int32)
    return magnitude, sign


def _codes(data: bytes | bytearray | memoryview) -> npt.NDArray[np.uint8]:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise AudioError(f"G.711 decoder needs bytes, got {type(data).__name__}")
    return np.frombuffer(data, dtype=np.uint8)


def ulaw_encode(pcm: Int16Array) -> bytes:
    """int16 PCM -> µ-law bytes, one per sample."""
    magnitude, sign = _split_sign(_check_pcm(pcm))
    biased = np.minimum((magnitude >> 2) + ULAW_BIAS, ULAW_MAX_BIASED)
    segment = _BIT_LENGTH[biased >> 6]
    mantissa = (biased >> (segment + 1)) & 0x0F
    code = (((7 - segment) << 4) | (0x0F - mantissa) | sign).astype(np.uint8)
    return bytes(code.tobytes())


def alaw_encode(pcm: Int16Array) -> bytes:
    """int16 PCM -> A-law bytes, one per sample."""
    magnitude, sign = _split_sign(_check_pcm(pcm))
    level = magnitude >> 4  # 0..2047
    segment = _BIT_LENGTH[level >> 4]  # 0..7
    mantissa = np.where(segment == 0, level, level >> np.maximum(segment - 1, 0)) & 0x0F
    code = (((segment << 4) | mantissa | sign) ^ ALAW_XOR_MASK).astype(np.uint8)
    return bytes(code.tobytes())


def _build_ulaw_table() -> Int16Array:
    code = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (code >> 4) & 0x07
    mantissa = code & 0x0F
    magnitude = (((mantissa << 3) + (ULAW_BIAS << 2)) << exponent) - (ULAW_BIAS << 2)
    return np.where(code & SIGN_BIT, -magnitude, magnitude).astype(np.int16)


def _build_alaw_table() -> Int16Array:
    code = np.arange(256, dtype=np.int32) ^ ALAW_XOR_MASK
    exponent = (code & 0x7F) >> 4
    mantissa = code & 0x0F
    step_units = np.where(exponent > 0, mantissa + 16, mantissa)
    magnitude = ((step_units << 4) + 8) << np.maximum(exponent - 1, 0)
    table: Int16Array = np.where(code & SIGN_BIT, magnitude, -magnitude).astype(np.int16)
    return table


ULAW_DECODE_TABLE: Int16Array = _build_ulaw_table()
ALAW_DECODE_TABLE: Int16Array = _build_alaw_table()
ULAW_DECODE_TABLE.flags.writeable = False
ALAW_DECODE_TABLE.flags.writeable = False

# Codes of digital silence, for filling packets.
ULAW_SILENCE = 0xFF
ALAW_SILENCE = 0xD5


def ulaw_decode(data: bytes | bytearray | memoryview) -> Int16Array:
    """µ-law bytes -> int16 PCM."""
    pcm: Int16Array = ULAW_DECODE_TABLE[_codes(data)]
    return pcm


def alaw_decode(data: bytes | bytearray | memoryview) -> Int16Array:
    """A-law bytes -> int16 PCM."""
    pcm: Int16Array = ALAW_DECODE_TABLE[_codes(data)]
    return pcm
