"""Line model: loss rate, jitter buffer, echo delay and gain, noise SNR, codec quality, determinism."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest

from agent.audio import AudioError, rms_dbfs
from agent.line import NOMINAL_SPEECH_LEVEL_DBFS, LineModel
from agent.scenario import Codec, Concealment, EchoConfig, LineConfig, NoiseKind

RATE = 16000
PACKET = 320


def _tone(seconds: float, level: float = 0.25, rate: int = RATE) -> npt.NDArray[np.int16]:
    t = np.arange(int(seconds * rate)) / rate
    x = level * (np.sin(2 * np.pi * 440 * t) + 0.5 * np.sin(2 * np.pi * 1230 * t)) / 1.5
    return np.rint(x * 32767).astype(np.int16)


def _marked_packets(count: int) -> list[npt.NDArray[np.int16]]:
    """Packet i is a constant i + 1 (so a received packet tells which one it was)."""
    return [np.full(PACKET, i + 1, dtype=np.int16) for i in range(count)]


def _run_downlink(line: LineModel, packets: list[npt.NDArray[np.int16]]) -> list[npt.NDArray[np.int16]]:
    return [line.downlink(p, now_ms=20.0 * i) for i, p in enumerate(packets)]


def test_clean_line_is_transparent() -> None:
    line = LineModel(LineConfig(), RATE)
    x = _tone(0.5)
    for i in range(len(x) // PACKET):
        pkt = x[i * PACKET:(i + 1) * PACKET]
        assert np.array_equal(line.downlink(pkt, 20.0 * i), pkt)
        assert np.array_equal(line.uplink(pkt, None, 20.0 * i), pkt)
    assert line.jitter_buffer_ms == 0


@pytest.mark.parametrize("burst", [1.0, 3.0])
def test_loss_rate_within_tolerance(burst: float) -> None:
    line = LineModel(LineConfig(loss_pct=5.0, loss_burst_packets=burst, plc=Concealment.SILENCE, seed=1), RATE)
    out = _run_downlink(line, _marked_packets(20000))
    lost = [int(p[0] == 0) for p in out]
    assert line.downlink_stats.lost == sum(lost)
    assert abs(100.0 * sum(lost) / len(lost) - 5.0) < 1.0
    runs, run = [], 0
    for flag in lost:
        if flag:
            run += 1
        elif run:
            runs.append(run)
            run = 0
    assert abs(float(np.mean(runs)) - burst) < 0.25 * burst


def test_repeat_concealment_fades_last_packet() -> None:
    line = LineModel(LineConfig(loss_pct=0.0), RATE)
    direction = line._down  # drive losses by hand through the public process path
    direction._loss._p = 1.0
    first = line.downlink(np.full(PACKET, 1000, dtype=np.int16), 0.0)
    assert not first.any()  # nothing received yet: silence
    direction._loss._p = 0.0
    good = line.downlink(np.full(PACKET, 1000, dtype=np.int16), 20.0)
    direction._loss._p = 1.0
    c1, c2, c3 = (line.downlink(good, 20.0 * k) for k in (2, 3, 4))
    assert c1[0] == 1000 and 490 <= c1[-1] <= 510
    assert c2[0] == 500 and abs(int(c2[-1])) <= 5
    assert not c3.any()


def test_jitter_buffer_delays_and_drops_late_packets() -> None:
    cfg = LineConfig(jitter_ms=20.0, seed=5, plc=Concealment.SILENCE)
    line = LineModel(cfg, RATE)
    assert line.jitter_buffer_ms == 40
    n = 20000
    out = _run_downlink(line, _marked_packets(n))
    delay = line.jitter_buffer_ms // 20
    assert all(not p.any() for p in out[:delay])
    received = [int(p[0]) for p in out[delay:] if p[0]]
    assert received == sorted(received)  # in order, never duplicated
    for i, p in enumerate(out[delay:]):
        assert p[0] in (0, i + 1)
    late_pct = 100.0 * line.downlink_stats.late / n
    expected = 100.0 * math.erfc(40.0 / (20.0 * math.sqrt(2.0)))  # P(|N(0, 20)| > 40)
    assert abs(late_pct - expected) < 1.0


def test_echo_delay_and_gain() -> None:
    cfg = LineConfig(echo=EchoConfig(delay_ms=120.0, gain_db=-12.0))
    line = LineModel(cfg, RATE)
    rng = np.random.default_rng(0)
    played = np.rint(rng.standard_normal(RATE * 2) * 3000).astype(np.int16)
    ref = played.astype(np.float64)
    received = np.concatenate([
        line.uplink(None, played[i * PACKET:(i + 1) * PACKET], 20.0 * i) for i in range(len(played) // PACKET)
    ]).astype(np.float64)
    corr = np.correlate(received[:12000], ref[:8000], mode="valid")  # lags 0..250 ms
    lag = int(np.argmax(corr))
    assert lag == 120 * RATE // 1000
    head = ref[: len(ref) - lag]
    gain = float(np.dot(received[lag:], head) / np.dot(head, head))
    assert 20 * math.log10(gain) == pytest.approx(-12.0, abs=0.1)


@pytest.mark.parametrize("kind", [NoiseKind.PINK, NoiseKind.WHITE])
def test_noise_snr_as_configured(kind: NoiseKind) -> None:
    cfg = LineConfig(noise_snr_db=15.0, noise=kind, seed=2)
    line = LineModel(cfg, RATE)
    noise = np.concatenate([line.uplink(None, None, 20.0 * i) for i in range(250)])
    assert rms_dbfs(noise) == pytest.approx(NOMINAL_SPEECH_LEVEL_DBFS - 15.0, abs=0.2)
    spectrum = np.abs(np.fft.rfft(noise.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(noise.size, 1.0 / RATE)
    low = spectrum[(freqs > 100) & (freqs < 400)].mean()
    high = spectrum[(freqs > 3000) & (freqs < 6000)].mean()
    if kind is NoiseKind.PINK:
        assert 10 * math.log10(low / high) > 8.0  # 1/f: about 12 dB between these bands
    else:
        assert abs(10 * math.log10(low / high)) < 1.5


@pytest.mark.parametrize("codec", [Codec.PCMU, Codec.PCMA])
def test_codec_round_trip_snr(codec: Codec) -> None:
    line = LineModel(LineConfig(codec=codec), RATE)
    spectrum = np.fft.rfft(np.random.default_rng(4).standard_normal(RATE))
    spectrum[np.fft.rfftfreq(RATE, 1.0 / RATE) > 3400] = 0  # telephone band, non-periodic
    noise = np.fft.irfft(spectrum, n=RATE)
    x = np.rint(noise / np.sqrt(np.mean(noise**2)) * 0.1 * 32767).astype(np.int16)
    y = np.concatenate([line.uplink(x[i * PACKET:(i + 1) * PACKET], None, 20.0 * i) for i in range(50)])
    xf, yf = x.astype(np.float64), y.astype(np.float64)
    corr = np.correlate(yf[:4000], xf[:2000], mode="valid")
    lag = int(np.argmax(corr))
    assert 0 < lag < 20 * RATE // 1000  # constant resampler delay, under 20 ms
    ref, got = xf[2000:12000], yf[2000 + lag:12000 + lag]
    snr = 10 * math.log10(float(np.sum(ref**2) / np.sum((got - ref) ** 2)))
    assert snr > 30.0  # G.711 in-band: about 37 dB
    assert not np.array_equal(y[lag:lag + 1000], x[:1000])  # the codec really quantised


def test_deterministic_with_seed_and_different_with_other_seed() -> None:
    cfg = LineConfig(codec=Codec.PCMU, loss_pct=10, jitter_ms=15, noise_snr_db=10, seed=9,
                     echo=EchoConfig(delay_ms=50, gain_db=-6))
    x = _tone(1.0)

    def run(seed: int | None) -> npt.NDArray[np.int16]:
        line = LineModel(cfg, RATE, seed=seed)
        outs = []
        for i in range(50):
            pkt = x[i * PACKET:(i + 1) * PACKET]
            heard = line.downlink(pkt, 20.0 * i)
            outs.append(line.uplink(pkt, heard, 20.0 * i))
        return np.concatenate(outs)

    assert np.array_equal(run(None), run(None))
    assert np.array_equal(run(None), run(9))
    assert not np.array_equal(run(None), run(10))


def test_rejects_bad_packets_and_time_going_backwards() -> None:
    line = LineModel(LineConfig(), RATE)
    with pytest.raises(AudioError, match="320 samples"):
        line.downlink(np.zeros(160, dtype=np.int16), 0.0)
    with pytest.raises(AudioError, match="int16"):
        line.uplink(np.zeros(PACKET, dtype=np.float32), None, 0.0)
    line.downlink(None, 40.0)
    with pytest.raises(ValueError, match="backwards"):
        line.downlink(None, 20.0)
