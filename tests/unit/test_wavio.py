"""read_wav / write_wav: every supported sample format, downmix, malformed files, atomic writes."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from agent.audio import AudioError
from agent.wavio import read_wav, wav_bytes, write_wav

GUID_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
SOX_INSTALL = "apt-get install -y espeak-ng sox"


def fmt_chunk(
    format_code: int,
    channels: int,
    rate: int,
    bits: int,
    *,
    extensible: bool = False,
    guid_tail: bytes = GUID_TAIL,
) -> bytes:
    block_align = channels * bits // 8
    if not extensible:
        body = struct.pack("<HHIIHH", format_code, channels, rate, rate * block_align, block_align, bits)
    else:
        body = struct.pack("<HHIIHH", 0xFFFE, channels, rate, rate * block_align, block_align, bits)
        body += struct.pack("<HHI", 22, bits, 0x3 if channels == 2 else 0x4)
        body += struct.pack("<H", format_code) + guid_tail
    return b"fmt " + struct.pack("<I", len(body)) + body


def riff(*chunks: bytes) -> bytes:
    body = b"WAVE" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def data_chunk(payload: bytes, declared: int | None = None) -> bytes:
    size = len(payload) if declared is None else declared
    return b"data" + struct.pack("<I", size) + payload + (b"\x00" if len(payload) & 1 else b"")


def encode_samples(unit: npt.NDArray[np.float64], format_code: int, bits: int) -> bytes:
    """Float samples in [-1, 1) to little-endian WAV sample bytes."""
    if format_code == 3:
        return unit.astype("<f4" if bits == 32 else "<f8").tobytes()
    if bits == 8:
        return np.clip(np.rint(unit * 128 + 128), 0, 255).astype(np.uint8).tobytes()
    if bits == 16:
        return np.clip(np.rint(unit * 32768), -32768, 32767).astype("<i2").tobytes()
    if bits == 24:
        v = np.clip(np.rint(unit * 2**23), -(2**23), 2**23 - 1).astype(np.int64) & 0xFFFFFF
        return np.stack([v & 0xFF, (v >> 8) & 0xFF, v >> 16], axis=1).astype(np.uint8).tobytes()
    return np.clip(np.rint(unit * 2**31), -(2**31), 2**31 - 1).astype("<i4").tobytes()


def write(path: Path, blob: bytes) -> Path:
    path.write_bytes(blob)
    return path


@pytest.fixture
def tone() -> npt.NDArray[np.float64]:
    return 0.6 * np.sin(2 * np.pi * 440 * np.arange(800) / 8000)


def expected_int16(unit: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    return np.clip(np.rint(unit * 32768), -32768, 32767).astype(np.int64)


@pytest.mark.parametrize(
    ("format_code", "bits", "tolerance"),
    [(1, 8, 128), (1, 16, 0), (1, 24, 1), (1, 32, 1), (3, 32, 1), (3, 64, 0)],
)
@pytest.mark.parametrize("extensible", [False, True])
def test_reads_every_supported_format(
    tmp_path: Path,
    tone: npt.NDArray[np.float64],
    format_code: int,
    bits: int,
    tolerance: int,
    extensible: bool,
) -> None:
    blob = riff(
        fmt_chunk(format_code, 1, 8000, bits, extensible=extensible),
        data_chunk(encode_samples(tone, format_code, bits)),
    )
    samples, rate = read_wav(write(tmp_path / "in.wav", blob))
    assert rate == 8000 and samples.dtype == np.int16 and samples.shape == tone.shape
    assert np.max(np.abs(samples.astype(np.int64) - expected_int16(tone))) <= tolerance


def test_stereo_and_multichannel_are_averaged(tmp_path: Path) -> None:
    left = np.array([1000, -2000, 32767, 3], dtype=np.int16)
    right = np.array([3000, -2000, 32767, 4], dtype=np.int16)
    write_wav(tmp_path / "st.wav", np.stack([left, right], axis=1), 16000)
    samples, rate = read_wav(tmp_path / "st.wav")
    assert rate == 16000
    np.testing.assert_array_equal(samples, [2000, -2000, 32767, 4])  # 3.5 rounds half to even
    quad = np.tile(np.array([[0.5, -0.5, 0.25, 0.25]]), (10, 1))
    blob = riff(
        fmt_chunk(3, 4, 48000, 32, extensible=True), data_chunk(encode_samples(quad.reshape(-1), 3, 32))
    )
    samples, _ = read_wav(write(tmp_path / "quad.wav", blob))
    np.testing.assert_array_equal(samples, np.full(10, 4096))


def test_write_then_read_round_trips_and_stdlib_agrees(tmp_path: Path) -> None:
    pcm = np.random.default_rng(0).integers(-32768, 32768, 1001).astype(np.int16)
    path = tmp_path / "out.wav"
    write_wav(path, pcm, 8000)
    samples, rate = read_wav(str(path))
    np.testing.assert_array_equal(samples, pcm)
    assert rate == 8000
    with wave.open(str(path), "rb") as reader:
        assert (reader.getnchannels(), reader.getsampwidth(), reader.getframerate()) == (1, 2, 8000)
        np.testing.assert_array_equal(np.frombuffer(reader.readframes(2000), "<i2"), pcm)
    assert [p.name for p in tmp_path.iterdir()] == ["out.wav"]  # no temp file left behind


def test_skips_unknown_and_odd_sized_chunks(tmp_path: Path, tone: npt.NDArray[np.float64]) -> None:
    odd = b"LIST" + struct.pack("<I", 5) + b"INFOx" + b"\x00"
    blob = riff(
        odd,
        fmt_chunk(1, 1, 8000, 16),
        b"fact" + struct.pack("<I", 4) + b"\x00" * 4,
        data_chunk(encode_samples(tone, 1, 16)),
    )
    samples, _ = read_wav(write(tmp_path / "odd.wav", blob))
    np.testing.assert_array_equal(samples, expected_int16(tone))


def test_unknown_data_size_means_to_end_of_file(tmp_path: Path, tone: npt.NDArray[np.float64]) -> None:
    blob = riff(fmt_chunk(1, 1, 8000, 16), data_chunk(encode_samples(tone, 1, 16), declared=0xFFFFFFFF))
    samples, _ = read_wav(write(tmp_path / "stream.wav", blob))
    assert samples.shape == tone.shape


PCM16 = encode_samples(np.zeros(8), 1, 16)


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "not a WAV file: only 0 bytes"),
        (b"ID3\x03" + b"\x00" * 40, "not a RIFF file"),
        (b"RIFX" + b"\x00" * 40, "big-endian"),
        (b"RIFF\x10\x00\x00\x00AVI LIST", "not WAVE"),
        (riff(data_chunk(PCM16)), "no fmt chunk"),
        (riff(fmt_chunk(1, 1, 8000, 16)), "no data chunk"),
        (
            riff(b"fmt " + struct.pack("<I", 8) + b"\x01\x00\x01\x00\x40\x1f\x00\x00", data_chunk(PCM16)),
            "needs at least 16",
        ),
        (riff(fmt_chunk(1, 0, 8000, 16), data_chunk(PCM16)), "zero channels"),
        (riff(fmt_chunk(1, 1, 0, 16), data_chunk(PCM16)), "sample rate is 0"),
        (riff(fmt_chunk(7, 1, 8000, 8), data_chunk(b"\xff" * 8)), "µ-law WAV is not supported"),
        (riff(fmt_chunk(6, 1, 8000, 8), data_chunk(b"\xd5" * 8)), "A-law WAV is not supported"),
        (riff(fmt_chunk(7, 1, 8000, 8, extensible=True), data_chunk(b"\xff" * 8)), "µ-law"),
        (riff(fmt_chunk(1, 1, 8000, 16, extensible=True, guid_tail=b"\x01" * 14), data_chunk(PCM16)), "GUID"),
        (riff(fmt_chunk(1, 1, 8000, 12), data_chunk(PCM16)), "12-bit integer PCM"),
        (riff(fmt_chunk(3, 1, 8000, 16), data_chunk(PCM16)), "16-bit float"),
        (riff(fmt_chunk(1, 1, 8000, 16), data_chunk(PCM16, declared=400)), "truncated: data chunk says 400"),
        (riff(fmt_chunk(1, 2, 8000, 16), data_chunk(PCM16[:6])), "not a whole number of 4-byte frames"),
        (riff(fmt_chunk(3, 1, 8000, 32), data_chunk(np.array([0.0, np.nan], "<f4").tobytes())), "NaN"),
    ],
)
def test_malformed_files_name_the_file_and_the_problem(tmp_path: Path, blob: bytes, message: str) -> None:
    path = write(tmp_path / "bad.wav", blob)
    with pytest.raises(AudioError, match=message) as caught:
        read_wav(path)
    assert str(path) in str(caught.value)


def test_truncated_fmt_chunk_and_block_align_mismatch(tmp_path: Path) -> None:
    blob = riff(fmt_chunk(1, 1, 8000, 16))[:-4]
    with pytest.raises(AudioError, match="truncated: fmt chunk"):
        read_wav(write(tmp_path / "cut.wav", blob[:4] + struct.pack("<I", len(blob) - 8) + blob[8:]))
    fmt = bytearray(fmt_chunk(1, 2, 8000, 16))
    fmt[20:22] = struct.pack("<H", 3)
    with pytest.raises(AudioError, match="block align 3"):
        read_wav(write(tmp_path / "align.wav", riff(bytes(fmt), data_chunk(PCM16))))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match=r"nothing\.wav: cannot read"):
        read_wav(tmp_path / "nothing.wav")


def test_write_rejects_bad_input_without_touching_the_target(tmp_path: Path) -> None:
    path = tmp_path / "keep.wav"
    write_wav(path, np.ones(10, dtype=np.int16), 8000)
    before = path.read_bytes()
    with pytest.raises(AudioError, match="int16"):
        write_wav(path, np.ones(10, dtype=np.float32), 8000)
    with pytest.raises(AudioError, match="shaped"):
        write_wav(path, np.ones((2, 2, 2), dtype=np.int16), 8000)
    with pytest.raises(AudioError, match="sample rate"):
        write_wav(path, np.ones(10, dtype=np.int16), 0)
    with pytest.raises(AudioError, match="channels"):
        write_wav(path, np.ones((10, 0), dtype=np.int16), 8000)
    assert path.read_bytes() == before


def test_write_is_atomic_when_the_rename_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "keep.wav"
    write_wav(path, np.ones(10, dtype=np.int16), 8000)
    before = path.read_bytes()
    seen: list[str] = []

    def failing_replace(src: str, dst: object) -> None:
        seen.append(os.path.dirname(src))
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_wav(path, np.zeros(5000, dtype=np.int16), 8000)
    assert seen == [str(tmp_path)]  # the temporary file lives next to the target
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.wav"]


def test_wav_bytes_pads_odd_payloads() -> None:
    blob = wav_bytes(np.zeros((3, 1), dtype=np.int16), 8000)
    assert len(blob) == 44 + 6
    assert struct.unpack_from("<I", blob, 4)[0] == len(blob) - 8


@pytest.mark.parametrize(
    ("sox_args", "tolerance"),
    [
        (["-b", "24"], 1),
        (["-e", "floating-point", "-b", "32"], 1),
        (["-D", "-b", "8", "-e", "unsigned"], 128),
        (["-c", "3"], 1),
    ],
)
@pytest.mark.integration  # sox speech: runs with the peers, not under -m unit
def test_files_written_by_sox(tmp_path: Path, sox_args: list[str], tolerance: int) -> None:
    sox = shutil.which("sox")
    if sox is None:
        pytest.fail(f"sox is not installed; install it with: {SOX_INSTALL}")
    pcm = np.rint(12000 * np.sin(2 * np.pi * 300 * np.arange(1600) / 16000)).astype(np.int16)
    source = tmp_path / "src.wav"
    write_wav(source, pcm, 16000)
    converted = tmp_path / "conv.wav"
    subprocess.run([sox, str(source), *sox_args, str(converted)], check=True, capture_output=True, timeout=60)
    samples, rate = read_wav(converted)
    assert rate == 16000
    assert np.max(np.abs(samples.astype(np.int64) - pcm)) <= tolerance
