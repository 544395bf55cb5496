"""What a scripted caller says: espeak-ng speech, DTMF tones and WAV clips as int16 mono audio.

Speech is synthesised by ``espeak-ng`` (a subprocess with a bounded timeout, text on stdin so it can
never be read as an option), resampled to the requested rate and scaled so that its active speech
level is ``NOMINAL_SPEECH_LEVEL_DBFS + volume_db``. Results are cached on disk, keyed by every
argument and the espeak-ng version, under ``$LFM_CALL_CACHE/caller_voice`` (default
``~/.cache/lfm-call/caller_voice``).

DTMF tones are the ITU-T Q.23 frequency pairs, each tone at -10 dBFS peak, with 5 ms raised-cosine
edges so that they do not click.
"""

from __future__ import annotations

import functools
import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from agent.audio import INT16_FULL_SCALE, AudioError, Int16Array, samples_per_ms
from agent.line import NOMINAL_SPEECH_LEVEL_DBFS, db_to_gain
from agent.resample import resample_offline
from agent.scenario import CallerConfig, DtmfStep, SayStep
from agent.wavio import read_wav, write_wav

ESPEAK_TIMEOUT_S = 30.0
ESPEAK_INSTALL_HINT = "apt-get install -y espeak-ng"
DTMF_LOW_HZ = {"1": 697, "2": 697, "3": 697, "A": 697, "4": 770, "5": 770, "6": 770, "B": 770,
               "7": 852, "8": 852, "9": 852, "C": 852, "*": 941, "0": 941, "#": 941, "D": 941}
DTMF_HIGH_HZ = {"1": 1209, "4": 1209, "7": 1209, "*": 1209, "2": 1336, "5": 1336, "8": 1336, "0": 1336,
                "3": 1477, "6": 1477, "9": 1477, "#": 1477, "A": 1633, "B": 1633, "C": 1633, "D": 1633}
DTMF_TONE_PEAK = 0.316  # -10 dBFS per tone
DTMF_EDGE_MS = 5
ACTIVE_FRAME_MS = 20
ACTIVE_RANGE_DB = 35.0  # frames quieter than the loudest frame minus this are pauses


class CallerVoiceError(RuntimeError):
    """espeak-ng is missing or failed."""


def default_cache_dir() -> Path:
    from agent.model_choice import cache_dir

    return cache_dir() / "caller_voice"


def active_level_dbfs(samples: Int16Array, sample_rate: int) -> float:
    """Speech level over the active part: mean power of the 20 ms frames within 35 dB of the loudest.

    A simple stand-in for ITU-T P.56; pauses between words do not lower the level.
    """
    n = samples_per_ms(sample_rate, ACTIVE_FRAME_MS)
    frames = samples[: samples.size // n * n].astype(np.float64).reshape(-1, n) / INT16_FULL_SCALE
    if frames.size == 0:
        return -120.0
    power = np.mean(frames * frames, axis=1)
    peak = float(power.max())
    if peak <= 0.0:
        return -120.0
    active = power[power >= peak * 10.0 ** (-ACTIVE_RANGE_DB / 10.0)]
    return float(10.0 * np.log10(np.mean(active)))


def scale_to_level(samples: Int16Array, sample_rate: int, level_dbfs: float) -> Int16Array:
    """Scale so that ``active_level_dbfs`` is ``level_dbfs`` (clipped at full scale)."""
    current = active_level_dbfs(samples, sample_rate)
    if current <= -120.0:
        return samples.copy()
    x = samples.astype(np.float64) * db_to_gain(level_dbfs - current)
    return np.clip(np.rint(x), -INT16_FULL_SCALE, INT16_FULL_SCALE - 1).astype(np.int16)


def espeak_binary() -> str:
    path = shutil.which("espeak-ng")
    if path is None:
        raise CallerVoiceError(f"espeak-ng is not installed; the caller's voice needs it: {ESPEAK_INSTALL_HINT}")
    return path


@functools.lru_cache(maxsize=4)
def _espeak_version(binary: str) -> str:
    try:
        done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=ESPEAK_TIMEOUT_S,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CallerVoiceError(f"espeak-ng --version failed: {exc}") from None
    return done.stdout.strip()


@functools.lru_cache(maxsize=4)
def _known_voices(binary: str) -> frozenset[str]:
    """Lower-cased language codes, names and files of installed voices (``espeak-ng --voices``)."""
    try:
        done = subprocess.run([binary, "--voices"], capture_output=True, text=True, timeout=ESPEAK_TIMEOUT_S,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CallerVoiceError(f"espeak-ng --voices failed: {exc}") from None
    names: set[str] = set()
    for row in done.stdout.splitlines()[1:]:
        cols = row.split()
        if len(cols) >= 5:
            names.update(c.lower() for c in (cols[1], cols[3], cols[4], cols[4].rsplit("/", 1)[-1]))
            names.update(c.strip("()").split()[0].lower() for c in cols[5::2] if c.startswith("("))
    return frozenset(names)


def check_voice(voice: str) -> None:
    """Raise ``CallerVoiceError`` unless espeak-ng has ``voice`` (a ``+variant`` suffix is allowed);
    espeak-ng itself silently falls back to its default voice."""
    base = voice.split("+", 1)[0].lower()
    if base not in _known_voices(espeak_binary()):
        raise CallerVoiceError(f"espeak-ng has no voice {voice!r} (see `espeak-ng --voices`)")


def _synthesise(binary: str, text: str, voice: str, rate_wpm: int, ssml: bool = False) -> tuple[Int16Array, int]:
    with tempfile.TemporaryDirectory(prefix="lfmcall-espeak-") as tmp:
        out = Path(tmp) / "say.wav"
        cmd = [binary, "-v", voice, "-s", str(rate_wpm), "-w", str(out), *(["-m"] if ssml else []), "--stdin"]
        try:
            done = subprocess.run(cmd, input=text, capture_output=True, text=True, timeout=ESPEAK_TIMEOUT_S,
                                  check=False)
        except subprocess.TimeoutExpired:
            raise CallerVoiceError(f"espeak-ng took over {ESPEAK_TIMEOUT_S:.0f} s for {text[:40]!r}") from None
        except OSError as exc:
            raise CallerVoiceError(f"cannot run espeak-ng: {exc}") from None
        if done.returncode != 0 or not out.is_file():
            raise CallerVoiceError(
                f"espeak-ng failed (exit {done.returncode}) for voice {voice!r}: {done.stderr.strip()[:300]}"
            )
        return read_wav(out)


def trim_silence(samples: Int16Array, sample_rate: int, floor_dbfs: float = -55.0, keep_ms: int = 20) -> Int16Array:
    """Cut espeak-ng's leading and trailing silence (keeping ``keep_ms``), so that a scenario's timing
    (``after_silence_ms: 1000``) is the real gap between the caller's words."""
    block = sample_rate // 100  # 10 ms
    n = samples.size // block
    if n == 0:
        return samples
    energy = (samples[: n * block].astype(np.float64).reshape(n, block) ** 2).mean(axis=1)
    loud = np.nonzero(energy > (32768.0 ** 2) * 10 ** (floor_dbfs / 10))[0]
    if loud.size == 0:
        return samples
    keep = sample_rate * keep_ms // 1000
    start = max(0, int(loud[0]) * block - keep)
    end = min(samples.size, (int(loud[-1]) + 1) * block + keep)
    return samples[start:end].copy()


def render_say(text: str, voice: str = "en-us", rate_wpm: int = 160, volume_db: float = 0.0,
               sample_rate: int = 16000, cache_dir: Path | None = None) -> Int16Array:
    """Speak ``text`` with espeak-ng: mono int16 at ``sample_rate``, active level -26 dBFS + volume_db."""
    if not text.strip():
        raise ValueError("render_say needs non-empty text")
    binary = espeak_binary()
    check_voice(voice)
    key_src = "\0".join(["trimmed", _espeak_version(binary), text, voice, str(rate_wpm), f"{volume_db:.3f}", str(sample_rate)])
    key = hashlib.sha256(key_src.encode("utf-8")).hexdigest()[:32]
    cache = (cache_dir if cache_dir is not None else default_cache_dir()) / f"{key}.wav"
    if cache.is_file():
        try:
            cached, rate = read_wav(cache)
            if rate == sample_rate:
                return cached
        except AudioError:
            pass  # a damaged cache entry is rendered again
    raw, raw_rate = _synthesise(binary, text, voice, rate_wpm)
    audio = np.asarray(resample_offline(raw, raw_rate, sample_rate), dtype=np.int16)
    audio = trim_silence(scale_to_level(audio, sample_rate, NOMINAL_SPEECH_LEVEL_DBFS + volume_db), sample_rate)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_wav(cache, audio, sample_rate)
    except OSError:
        pass  # the cache is an optimisation only
    return audio


def render_wav(path: Path, volume_db: float = 0.0, sample_rate: int = 16000) -> Int16Array:
    """A WAV clip as mono int16 at ``sample_rate``, its level changed by ``volume_db`` (not normalised)."""
    samples, rate = read_wav(path)
    audio = np.asarray(resample_offline(samples, rate, sample_rate), dtype=np.int16)
    if volume_db == 0.0:
        return audio
    x = audio.astype(np.float64) * db_to_gain(volume_db)
    return np.clip(np.rint(x), -INT16_FULL_SCALE, INT16_FULL_SCALE - 1).astype(np.int16)


def render_dtmf(digits: str, tone_ms: int = 100, gap_ms: int = 80, sample_rate: int = 16000) -> Int16Array:
    """DTMF tones for ``digits`` (0-9 * # A-D): each ``tone_ms`` long, ``gap_ms`` of silence between."""
    if not digits:
        raise ValueError("render_dtmf needs at least one digit")
    tone_n = samples_per_ms(sample_rate, tone_ms)
    gap = np.zeros(samples_per_ms(sample_rate, gap_ms), dtype=np.int16)
    edge_n = min(samples_per_ms(sample_rate, DTMF_EDGE_MS), tone_n // 2)
    envelope = np.ones(tone_n)
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(edge_n) / max(1, edge_n))
    envelope[:edge_n], envelope[tone_n - edge_n:] = ramp, ramp[::-1]
    t = np.arange(tone_n) / sample_rate
    parts: list[Int16Array] = []
    for i, digit in enumerate(digits.upper()):
        if digit not in DTMF_LOW_HZ:
            raise ValueError(f"not a DTMF digit: {digit!r} (expected 0-9 * # A-D)")
        wave = np.sin(2 * np.pi * DTMF_LOW_HZ[digit] * t) + np.sin(2 * np.pi * DTMF_HIGH_HZ[digit] * t)
        if i:
            parts.append(gap)
        parts.append(np.rint(wave * envelope * DTMF_TONE_PEAK * (INT16_FULL_SCALE - 1)).astype(np.int16))
    return np.concatenate(parts)


def render_step(step: SayStep | DtmfStep, caller: CallerConfig, sample_rate: int = 16000,
                cache_dir: Path | None = None) -> Int16Array:
    """The audio a ``say``/``wav``/``dtmf`` scenario step sends, with the scenario's caller settings."""
    if isinstance(step, DtmfStep):
        return render_dtmf(step.digits, step.tone_ms, step.gap_ms, sample_rate)
    if step.wav is not None:
        return render_wav(step.wav, caller.volume_db, sample_rate)
    assert step.text is not None
    if step.unfinished and step.continuation is not None:
        return render_cut(step.text, step.continuation, caller.voice, caller.rate_wpm, caller.volume_db, sample_rate)
    return render_say(step.text, caller.voice, caller.rate_wpm, caller.volume_db, sample_rate, cache_dir)


def render_ssml(ssml: str, voice: str = "en-us", rate_wpm: int = 160, sample_rate: int = 16000) -> Int16Array:
    """Speak an SSML string (``<break time="800ms"/>`` pauses inside one utterance) with espeak-ng:
    mono int16 at ``sample_rate`` at the nominal level, leading and trailing silence cut. Not cached
    (the turn corpus tool renders each utterance once)."""
    binary = espeak_binary()
    check_voice(voice)
    raw, raw_rate = _synthesise(binary, f"<speak>{ssml}</speak>", voice, rate_wpm, ssml=True)
    audio = np.asarray(resample_offline(raw, raw_rate, sample_rate), dtype=np.int16)
    return trim_silence(scale_to_level(audio, sample_rate, NOMINAL_SPEECH_LEVEL_DBFS), sample_rate)


CUT_BREAK_MS = 1500


def render_cut(text: str, continuation: str, voice: str = "en-us", rate_wpm: int = 160, volume_db: float = 0.0,
               sample_rate: int = 16000) -> Int16Array:
    """``text`` as the start of the sentence ``text continuation``: espeak-ng says the whole sentence
    once with a break after ``text`` and the audio is cut there, so the words keep their
    mid-sentence intonation (an unfinished scenario step)."""
    whole = render_ssml(f'{text} <break time="{CUT_BREAK_MS}ms"/> {continuation}', voice, rate_wpm, sample_rate)
    block = sample_rate // 100
    n = whole.size // block
    energy = (whole[: n * block].astype(np.float64).reshape(n, block) ** 2).mean(axis=1)
    quiet = energy < (32768.0 ** 2) * 10 ** (-55.0 / 10)
    need = CUT_BREAK_MS * 2 // 3 // 10  # 10 ms blocks of silence that make the break
    run = 0
    for i, q in enumerate(quiet):
        run = run + 1 if q else 0
        if run >= need:
            cut = (i - run + 1) * block
            part = trim_silence(whole[:cut], sample_rate)
            gain = 10 ** (volume_db / 20)
            return np.clip(np.round(part.astype(np.float64) * gain), -32768, 32767).astype(np.int16)
    raise CallerVoiceError(f"espeak-ng made no break after {text!r}; cannot cut the sentence there")
