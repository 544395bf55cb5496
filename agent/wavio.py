"""WAV files: read any common PCM/float WAV as mono int16, write int16 WAV atomically.

``read_wav`` parses the RIFF chunks itself (the stdlib ``wave`` module rejects float and most
WAVE_FORMAT_EXTENSIBLE files) and accepts integer PCM of 8 (unsigned), 16, 24 and 32 bits and IEEE
float of 32 or 64 bits, plain or extensible, with any number of channels (averaged to mono). Every
other input raises ``AudioError`` naming the file and the problem. ``write_wav`` writes 16-bit PCM
to a temporary file in the target folder and moves it into place with ``os.replace``, so readers
never see half a file.
"""

from __future__ import annotations

import contextlib
import os
import struct
import tempfile
from pathlib import Path

import numpy as np
import numpy.typing as npt

from agent.audio import AudioError, float32_to_int16

WAVE_FORMAT_PCM = 0x0001
WAVE_FORMAT_IEEE_FLOAT = 0x0003
WAVE_FORMAT_ALAW = 0x0006
WAVE_FORMAT_MULAW = 0x0007
WAVE_FORMAT_EXTENSIBLE = 0xFFFE
# Every KSDATAFORMAT_SUBTYPE_* GUID is the format code followed by this fixed tail.
_EXTENSIBLE_GUID_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
_FORMAT_NAMES = {
    WAVE_FORMAT_ALAW: "A-law",
    WAVE_FORMAT_MULAW: "µ-law",
    0x0002: "MS ADPCM",
    0x0011: "IMA ADPCM",
    0x0055: "MP3",
}
# Some streaming writers put this in the data size when the length is unknown.
_UNKNOWN_SIZE = 0xFFFFFFFF
_WAV_HEADER_BYTES = 44
_MAX_DATA_BYTES = 0xFFFFFFFF - _WAV_HEADER_BYTES

PathLike = str | os.PathLike[str]


def _fail(path: PathLike, problem: str) -> AudioError:
    return AudioError(f"{os.fspath(path)}: {problem}")


def _find_chunks(path: PathLike, blob: bytes) -> tuple[bytes, memoryview]:
    """Return (fmt chunk body, data chunk body), checking the RIFF/WAVE structure."""
    if len(blob) < 12:
        raise _fail(path, f"not a WAV file: only {len(blob)} bytes")
    if blob[:4] == b"RIFX":
        raise _fail(path, "big-endian RIFX WAV is not supported")
    if blob[:4] != b"RIFF":
        raise _fail(path, f"not a RIFF file (starts with {blob[:4]!r})")
    if blob[8:12] != b"WAVE":
        raise _fail(path, f"RIFF file is not WAVE (form type {blob[8:12]!r})")
    view = memoryview(blob)
    fmt: bytes | None = None
    data: memoryview | None = None
    offset = 12
    while offset + 8 <= len(blob) and (fmt is None or data is None):
        chunk_id = blob[offset : offset + 4]
        (size,) = struct.unpack_from("<I", blob, offset + 4)
        body_start = offset + 8
        available = len(blob) - body_start
        if chunk_id == b"data":
            if size == _UNKNOWN_SIZE:
                size = available
            elif size > available:
                raise _fail(path, f"truncated: data chunk says {size} bytes but only {available} follow")
            data = view[body_start : body_start + size]
        elif chunk_id == b"fmt ":
            if size > available:
                raise _fail(path, f"truncated: fmt chunk says {size} bytes but only {available} follow")
            fmt = blob[body_start : body_start + size]
        offset = body_start + size + (size & 1)  # chunks are padded to even length
    if fmt is None:
        raise _fail(path, "no fmt chunk")
    if data is None:
        raise _fail(path, "no data chunk")
    return fmt, data


def _sample_format(path: PathLike, fmt: bytes, allow_g711: bool = False) -> tuple[int, int, int, int]:
    """Return (format code, channels, sample rate, bits per sample) from a fmt chunk."""
    if len(fmt) < 16:
        raise _fail(path, f"fmt chunk is {len(fmt)} bytes, needs at least 16")
    format_code, channels, sample_rate, _byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", fmt)
    if format_code == WAVE_FORMAT_EXTENSIBLE:
        if len(fmt) < 40:
            raise _fail(path, f"WAVE_FORMAT_EXTENSIBLE fmt chunk is {len(fmt)} bytes, needs 40")
        valid_bits, _channel_mask = struct.unpack_from("<HI", fmt, 18)
        subformat = fmt[24:40]
        if subformat[2:] != _EXTENSIBLE_GUID_TAIL:
            raise _fail(path, f"unknown WAVE_FORMAT_EXTENSIBLE sub-format GUID {subformat.hex()}")
        (format_code,) = struct.unpack_from("<H", subformat)
        if valid_bits > bits:
            raise _fail(path, f"{valid_bits} valid bits in a {bits}-bit container")
    if channels == 0:
        raise _fail(path, "zero channels")
    if sample_rate == 0:
        raise _fail(path, "sample rate is 0")
    if allow_g711 and format_code in (WAVE_FORMAT_ALAW, WAVE_FORMAT_MULAW):
        if bits != 8 or block_align != channels:
            raise _fail(path, f"G.711 WAV must have 8 bits per sample, got {bits} (block align {block_align})")
        return format_code, channels, sample_rate, bits
    if format_code not in (WAVE_FORMAT_PCM, WAVE_FORMAT_IEEE_FLOAT):
        name = _FORMAT_NAMES.get(format_code, f"format code 0x{format_code:04x}")
        raise _fail(path, f"{name} WAV is not supported (only integer PCM and IEEE float)")
    supported_bits = (8, 16, 24, 32) if format_code == WAVE_FORMAT_PCM else (32, 64)
    kind = "integer PCM" if format_code == WAVE_FORMAT_PCM else "float"
    if bits not in supported_bits:
        raise _fail(path, f"{bits}-bit {kind} is not supported (only {supported_bits})")
    if block_align != channels * bits // 8:
        raise _fail(path, f"block align {block_align} does not match {channels} channels of {bits} bits")
    return format_code, channels, sample_rate, bits


def _to_unit_float(format_code: int, bits: int, raw: memoryview) -> npt.NDArray[np.float64]:
    """Interleaved sample bytes to float64 in [-1, 1)."""
    if format_code == WAVE_FORMAT_IEEE_FLOAT:
        return np.frombuffer(raw, dtype="<f4" if bits == 32 else "<f8").astype(np.float64)
    if bits == 8:
        return (np.frombuffer(raw, dtype=np.uint8).astype(np.float64) - 128.0) / 128.0
    if bits == 16:
        return np.frombuffer(raw, dtype="<i2").astype(np.float64) / 32768.0
    if bits == 24:
        triplets = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        value = triplets[:, 0] | (triplets[:, 1] << 8) | (triplets[:, 2] << 16)
        value = np.where(value >= 1 << 23, value - (1 << 24), value)
        return value.astype(np.float64) / float(1 << 23)
    return np.frombuffer(raw, dtype="<i4").astype(np.float64) / float(1 << 31)


def read_wav(path: PathLike) -> tuple[npt.NDArray[np.int16], int]:
    """Read a WAV file as (mono int16 samples, sample rate); channels are averaged."""
    try:
        blob = Path(path).read_bytes()
    except OSError as exc:
        raise _fail(path, f"cannot read: {exc.strerror or exc}") from exc
    fmt, data = _find_chunks(path, blob)
    format_code, channels, sample_rate, bits = _sample_format(path, fmt)
    block_align = channels * bits // 8
    if len(data) % block_align:
        raise _fail(
            path, f"truncated: data is {len(data)} bytes, not a whole number of {block_align}-byte frames"
        )
    if format_code == WAVE_FORMAT_PCM and bits == 16 and channels == 1:
        return np.frombuffer(data, dtype="<i2").astype(np.int16), sample_rate
    x = _to_unit_float(format_code, bits, data).reshape(-1, channels)
    if not np.all(np.isfinite(x)):
        raise _fail(path, "float samples contain NaN or infinity")
    mono = x.mean(axis=1) if channels > 1 else x[:, 0]
    return float32_to_int16(mono), sample_rate


def read_wav_channels(path: PathLike) -> tuple[npt.NDArray[np.float64], int]:
    """Read a WAV file as ([N, channels] float64 in [-1, 1), sample rate), channels kept apart.

    Accepts what ``read_wav`` accepts, plus G.711 A-law and µ-law WAV (telephone recordings).
    """
    try:
        blob = Path(path).read_bytes()
    except OSError as exc:
        raise _fail(path, f"cannot read: {exc.strerror or exc}") from exc
    fmt, data = _find_chunks(path, blob)
    format_code, channels, sample_rate, bits = _sample_format(path, fmt, allow_g711=True)
    block_align = channels * bits // 8
    if len(data) % block_align:
        raise _fail(
            path, f"truncated: data is {len(data)} bytes, not a whole number of {block_align}-byte frames"
        )
    if format_code in (WAVE_FORMAT_ALAW, WAVE_FORMAT_MULAW):
        from agent.g711 import alaw_decode, ulaw_decode

        decode = alaw_decode if format_code == WAVE_FORMAT_ALAW else ulaw_decode
        x = decode(bytes(data)).astype(np.float64) / 32768.0
    else:
        x = _to_unit_float(format_code, bits, data)
    x = x.reshape(-1, channels)
    if not np.all(np.isfinite(x)):
        raise _fail(path, "float samples contain NaN or infinity")
    return x, sample_rate


def wav_header(data_bytes: int, channels: int, sample_rate: int) -> bytes:
    """The 44-byte header of a 16-bit PCM WAV file whose data chunk holds ``data_bytes`` bytes."""
    if data_bytes > _MAX_DATA_BYTES:
        raise AudioError(f"{data_bytes} bytes of audio do not fit in a RIFF file")
    block_align = channels * 2
    return struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + data_bytes, b"WAVE", b"fmt ", 16, WAVE_FORMAT_PCM,
                       channels, sample_rate, sample_rate * block_align, block_align, 16, b"data", data_bytes)


def wav_bytes(samples: npt.NDArray[np.int16], sample_rate: int) -> bytes:
    """A complete 16-bit PCM WAV file for int16 samples shaped [N] (mono) or [N, channels]."""
    if not isinstance(samples, np.ndarray) or samples.dtype != np.int16:
        raise AudioError(
            f"WAV samples must be an int16 numpy array, got {getattr(samples, 'dtype', type(samples))}"
        )
    if samples.ndim not in (1, 2):
        raise AudioError(f"WAV samples must be shaped [N] or [N, channels], got {samples.shape}")
    channels = 1 if samples.ndim == 1 else samples.shape[1]
    if channels < 1 or channels > 0xFFFF:
        raise AudioError(f"WAV needs 1 to 65535 channels, got {channels}")
    if (
        isinstance(sample_rate, bool)
        or not isinstance(sample_rate, int | np.integer)
        or not 0 < sample_rate < 2**32
    ):
        raise AudioError(f"WAV sample rate must be a positive int, got {sample_rate!r}")
    payload = np.ascontiguousarray(samples, dtype="<i2").tobytes()
    header = wav_header(len(payload), channels, int(sample_rate))
    return header + payload + (b"\x00" if len(payload) & 1 else b"")


def write_wav(path: PathLike, samples: npt.NDArray[np.int16], sample_rate: int) -> None:
    """Write int16 samples ([N] mono or [N, channels]) as 16-bit PCM WAV, atomically."""
    blob = wav_bytes(samples, sample_rate)
    target = Path(path)
    handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed before the rename below
        dir=target.parent, prefix=f".{target.name}.", suffix=".tmp", delete=False
    )
    try:
        with handle:
            handle.write(blob)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(handle.name)
        raise
