"""G.711 µ-law / A-law: decoded-audio quality on speech, idempotence, reference points, audioop cross-check."""

from __future__ import annotations

import shutil
import subprocess
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import numpy.typing as npt
import pytest

from agent.audio import AudioError
from agent.g711 import (
    ALAW_SILENCE,
    ULAW_SILENCE,
    alaw_decode,
    alaw_encode,
    ulaw_decode,
    ulaw_encode,
)
from agent.resample import resample_offline
from agent.wavio import read_wav

Encode = Callable[[npt.NDArray[np.int16]], bytes]
Decode = Callable[[bytes], npt.NDArray[np.int16]]
LAWS: dict[str, tuple[Encode, Decode]] = {
    "ulaw": (ulaw_encode, ulaw_decode),
    "alaw": (alaw_encode, alaw_decode),
}
ESPEAK_INSTALL = "apt-get install -y espeak-ng sox"
ALL_INT16 = np.arange(-32768, 32768, dtype=np.int16)


def speak(text: str, folder: Path) -> tuple[npt.NDArray[np.int16], int]:
    """Synthesize ``text`` with espeak-ng; fails (does not skip) when espeak-ng is missing."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        pytest.fail(f"espeak-ng is not installed; install it with: {ESPEAK_INSTALL}")
    wav = folder / "speech.wav"
    subprocess.run([espeak, "-v", "en-us", "-w", str(wav), text], check=True, capture_output=True, timeout=60)
    return read_wav(wav)


@pytest.fixture(scope="module")
def phone_speech(tmp_path_factory: pytest.TempPathFactory) -> npt.NDArray[np.int16]:
    """Synthetic speech at 8 kHz, as a telephone line carries it."""
    pcm, rate = speak(
        "Thank you for calling. Your appointment is on Tuesday at three fifteen in the afternoon.",
        tmp_path_factory.mktemp("espeak"),
    )
    assert rate > 8000 and pcm.shape[0] > rate
    return resample_offline(pcm, rate, 8000)


def snr_db(reference: npt.NDArray[np.int16], decoded: npt.NDArray[np.int16]) -> float:
    ref = reference.astype(np.float64)
    err = ref - decoded.astype(np.float64)
    return float(10 * np.log10(np.sum(ref**2) / np.sum(err**2)))


@pytest.mark.integration  # espeak-ng speech: runs with the peers, not under -m unit
@pytest.mark.parametrize("law", sorted(LAWS))
def test_round_trip_snr_on_speech(law: str, phone_speech: npt.NDArray[np.int16]) -> None:
    encode, decode = LAWS[law]
    encoded = encode(phone_speech)
    assert len(encoded) == phone_speech.shape[0]
    assert snr_db(phone_speech, decode(encoded)) >= 35.0


@pytest.mark.integration  # espeak-ng speech: runs with the peers, not under -m unit
@pytest.mark.parametrize("law", sorted(LAWS))
def test_quiet_speech_keeps_a_usable_snr(law: str, phone_speech: npt.NDArray[np.int16]) -> None:
    # Companding keeps the SNR nearly flat over 20 dB of level; a linear 8-bit code would lose 20 dB.
    encode, decode = LAWS[law]
    quiet = np.rint(phone_speech * 0.1).astype(np.int16)
    assert snr_db(quiet, decode(encode(quiet))) >= 30.0


@pytest.mark.parametrize("law", sorted(LAWS))
def test_decode_encode_decode_is_stable(law: str) -> None:
    encode, decode = LAWS[law]
    every_code = bytes(range(256))
    decoded = decode(every_code)
    np.testing.assert_array_equal(decode(encode(decoded)), decoded)


@pytest.mark.parametrize("law", sorted(LAWS))
def test_quantisation_error_is_bounded_by_half_a_step(law: str) -> None:
    encode, decode = LAWS[law]
    decoded = decode(encode(ALL_INT16)).astype(np.int64)
    levels = np.unique(decode(bytes(range(256))).astype(np.int64))
    # Half the distance to the neighbouring level, plus one for the one's-complement magnitude of negatives.
    gaps = np.diff(levels)
    bound = np.concatenate([[gaps[0]], np.maximum(gaps[:-1], gaps[1:]), [gaps[-1]]]) // 2 + 1
    index = np.searchsorted(levels, decoded)
    x = ALL_INT16.astype(np.int64)
    inside = np.abs(x) <= levels[-1]  # beyond the top level the error is clipping
    assert np.all(np.abs(decoded - x)[inside] <= bound[index][inside])
    assert np.all(np.diff(decoded) >= 0), "decoded value must be monotonic in the input"


def test_reference_points() -> None:
    # Silence: µ-law 0xFF (positive zero) and A-law 0xD5; both decode to 0 / ±8.
    assert ulaw_encode(np.zeros(3, dtype=np.int16)) == bytes([ULAW_SILENCE]) * 3
    assert alaw_encode(np.zeros(3, dtype=np.int16)) == bytes([ALAW_SILENCE]) * 3
    np.testing.assert_array_equal(ulaw_decode(bytes([0xFF, 0x7F])), [0, 0])
    np.testing.assert_array_equal(alaw_decode(bytes([0xD5, 0x55])), [8, -8])
    # Full scale: the extreme codes are µ-law 0x80/0x00 (±32124) and A-law 0xAA/0x2A (±32256).
    full = np.array([32767, -32768], dtype=np.int16)
    assert ulaw_encode(full) == bytes([0x80, 0x00])
    assert alaw_encode(full) == bytes([0xAA, 0x2A])
    np.testing.assert_array_equal(ulaw_decode(bytes([0x80, 0x00])), [32124, -32124])
    np.testing.assert_array_equal(alaw_decode(bytes([0xAA, 0x2A])), [32256, -32256])
    # Sign: the sign of the input survives, and the quantiser is odd-symmetric about -1/2 (the
    # one's complement ~x = -x - 1 is the mirror image of x), so the whole int16 range is used.
    tone = np.rint(20000 * np.sin(np.linspace(0, 20, 4000))).astype(np.int16)
    for encode, decode in LAWS.values():
        decoded = decode(encode(tone)).astype(np.int64)
        assert np.all(np.sign(decoded[np.abs(tone) > 64]) == np.sign(tone[np.abs(tone) > 64]))
        np.testing.assert_array_equal(decode(encode(~tone)), -decode(encode(tone)))


def test_empty_and_bad_input() -> None:
    for encode, decode in LAWS.values():
        assert encode(np.zeros(0, dtype=np.int16)) == b""
        assert decode(b"").shape == (0,)
        with pytest.raises(AudioError, match="int16"):
            encode(np.zeros(4, dtype=np.int32))
        with pytest.raises(AudioError, match="mono"):
            encode(np.zeros((4, 2), dtype=np.int16))
        with pytest.raises(AudioError, match="bytes"):
            decode("abc")  # type: ignore[arg-type]
    np.testing.assert_array_equal(ulaw_decode(bytearray([0x80])), [32124])
    np.testing.assert_array_equal(alaw_decode(memoryview(bytes([0xAA]))), [32256])


def load_audioop() -> ModuleType | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import audioop
        except ImportError:
            return None
    return audioop


audioop_module = load_audioop()
needs_audioop = pytest.mark.skipif(audioop_module is None, reason="stdlib audioop is gone (Python >= 3.13)")


@needs_audioop
def test_decode_tables_match_audioop() -> None:
    assert audioop_module is not None
    every_code = bytes(range(256))
    np.testing.assert_array_equal(
        ulaw_decode(every_code), np.frombuffer(audioop_module.ulaw2lin(every_code, 2), "<i2")
    )
    np.testing.assert_array_equal(
        alaw_decode(every_code), np.frombuffer(audioop_module.alaw2lin(every_code, 2), "<i2")
    )


@needs_audioop
def test_encoders_agree_with_audioop_on_decoded_audio() -> None:
    assert audioop_module is not None
    pcm = ALL_INT16.tobytes()
    theirs_a = np.frombuffer(audioop_module.alaw2lin(audioop_module.lin2alaw(pcm, 2), 2), "<i2")
    np.testing.assert_array_equal(alaw_decode(alaw_encode(ALL_INT16)), theirs_a)
    # audioop's µ-law takes the two's-complement magnitude of negative samples, G.191 the one's
    # complement: they may differ by one level, only for negative inputs on a decision boundary.
    theirs_u = np.frombuffer(audioop_module.ulaw2lin(audioop_module.lin2ulaw(pcm, 2), 2), "<i2").astype(
        np.int64
    )
    ours_u = ulaw_decode(ulaw_encode(ALL_INT16)).astype(np.int64)
    differ = ours_u != theirs_u
    assert np.count_nonzero(differ) <= 512
    assert np.all(ALL_INT16[differ] < 0)
    levels = np.unique(ulaw_decode(bytes(range(256))).astype(np.int64))
    assert np.all(
        np.abs(np.searchsorted(levels, ours_u[differ]) - np.searchsorted(levels, theirs_u[differ])) == 1
    )
