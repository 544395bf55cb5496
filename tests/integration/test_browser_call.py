"""A real headless Chromium calls the page of an in-process agent server (tiny model, silero VAD).

The fake microphone plays an espeak-ng question after 2 s of silence, then a second utterance that
cuts in on the agent's reply. Asserted: the server ended the caller's turn, the agent answered, the
browser's WebAudio analyser heard the agent after that end of turn, the second utterance was a
barge-in on the server and the agent's audio went quiet in the browser. A screenshot of the page
after the call is saved under tests/integration/artifacts/ (path printed).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from agent.caller_voice import render_say
from agent.runtime import build_runtime
from agent.server import AgentServer
from agent.wavio import write_wav
from config.loader import load_settings

CHROMIUM = Path("/usr/lib/chromium/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
INSTALL = ("apt-get install -y --no-install-recommends chromium chromium-driver espeak-ng "
           "&& pip install selenium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
RATE = 48000
LEAD_SILENCE_S = 2.0
BARGE_IN_AFTER_S = 2.6  # the second utterance starts this long after the first one ends (the tiny
# model's replies last up to 4 s; end of turn plus answer take ~0.7-1.3 s)
AUDIBLE_RMS = 0.004  # WebAudio float RMS above which the agent counts as heard


def require_peers() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if shutil.which("espeak-ng") is None:
        missing.append("espeak-ng")
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium")
    if missing:
        pytest.fail(f"browser test peers missing ({', '.join(missing)}): {INSTALL}")


def caller_audio(cache: Path) -> tuple[np.ndarray, float, float]:
    """The fake microphone's audio; returns (samples, first utterance end s, second utterance start s)."""
    first = render_say("Hello there. Can you tell me what the weather will be like tomorrow?", sample_rate=RATE,
                       volume_db=6.0, cache_dir=cache)
    second = render_say("No wait, stop please, I want to ask you something else about my bank account.",
                        sample_rate=RATE, volume_db=6.0, cache_dir=cache)
    lead = np.zeros(int(LEAD_SILENCE_S * RATE), np.int16)
    gap = np.zeros(int(BARGE_IN_AFTER_S * RATE), np.int16)
    tail = np.zeros(3 * RATE, np.int16)
    audio = np.concatenate([lead, first, gap, second, tail])
    first_end = (lead.size + first.size) / RATE
    return audio, first_end, first_end + BARGE_IN_AFTER_S


def run_browser(url: str, wav: Path, listen_s: float, screenshot: Path) -> dict[str, Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    profile = tempfile.mkdtemp(prefix="lfmcall-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--use-fake-ui-for-media-stream",
                 "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={wav}%noloop",
                 "--autoplay-policy=no-user-gesture-required", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                 "--disable-dev-shm-usage", "--window-size=1000,900", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        driver.set_page_load_timeout(20)
        driver.set_script_timeout(10)
        driver.get(f"{url}/?raw=1")
        driver.find_element(By.ID, "call").click()
        deadline = time.monotonic() + 15
        while driver.execute_script("return window.lfmCall.state") != "in call":
            state = driver.execute_script("return [window.lfmCall.state, window.lfmCall.error]")
            if time.monotonic() > deadline or state[0] == "failed":
                raise AssertionError(f"the browser did not get into the call: {state}")
            time.sleep(0.1)
        time.sleep(listen_s)
        data = json.loads(driver.execute_script(
            "return JSON.stringify({levels: window.lfmCall.remoteLevels, mic: window.lfmCall.micLevels,"
            " events: window.lfmCall.events, callId: window.lfmCall.callId})"))
        driver.find_element(By.ID, "hangup").click()
        time.sleep(0.5)
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(screenshot))
        data["transcript"] = driver.find_element(By.ID, "transcript").text
        return data  # type: ignore[no-any-return]
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def level_between(levels: list[list[float]], start_ms: float, end_ms: float) -> np.ndarray:
    return np.array([lv for t, lv in levels if start_ms <= t < end_ms])


async def test_browser_calls_the_agent_and_barges_in(tiny_checkpoint_dir: Path, tmp_path: Path) -> None:
    require_peers()
    torch.set_num_threads(1)
    settings = load_settings(environ={}, overrides=[
        {"model": {"ref": str(tiny_checkpoint_dir), "offline_fallback": "error", "greeting": ""},
         "vad": {"backend": "silero"}, "http": {"host": "127.0.0.1", "auth": "off"}}])
    settings = dataclasses.replace(settings, http=dataclasses.replace(settings.http, port=0))
    audio, _, _ = caller_audio(tmp_path)
    wav = tmp_path / "caller.wav"
    write_wav(wav, audio, RATE)
    runtime = build_runtime(settings)
    server = AgentServer(settings, runtime)
    await server.start()
    screenshot = ARTIFACTS / "browser_call.png"
    try:
        listen_s = audio.size / RATE - 1.0
        data = await asyncio.wait_for(asyncio.to_thread(run_browser, server.http_url, wav, listen_s, screenshot),
                                      listen_s + 60)
        deadline = time.monotonic() + 5
        while runtime.calls.active and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    finally:
        await server.stop(drain_timeout_s=2.0)
        runtime.close()
    print(f"browser call screenshot: {screenshot}")
    summary = next(s for s in runtime.calls.summaries if s.call_id == data["callId"])
    print(f"summary: {summary}")
    assert summary.end_of_turns, "the server did not detect the end of the caller's turn"
    turn = summary.turns[0]
    assert turn.first_audio_sent_ms is not None, "the agent did not answer"
    t0_ms = summary.started_at * 1000  # browser timestamps are Date.now() on the same machine
    levels = data["levels"]
    assert levels, "the page recorded no agent levels"
    heard = level_between(levels, t0_ms + summary.end_of_turns[0], t0_ms + summary.end_of_turns[0] + 3000)
    assert heard.size and heard.max() > AUDIBLE_RMS, "the browser heard no agent audio after the end of turn"
    assert summary.barge_ins, f"the second utterance did not barge in (turns: {summary.turns})"
    barge = summary.barge_ins[0]
    assert barge.speech_started_ms > turn.first_audio_sent_ms
    speaking = level_between(levels, t0_ms + turn.first_audio_sent_ms + 300, t0_ms + barge.speech_started_ms + 100)
    loud = float(np.percentile(speaking, 75)) if speaking.size else 0.0  # the random tiny model has pauses
    assert loud > AUDIBLE_RMS, "the agent was not heard before the barge-in"
    quiet = 0.1 * loud
    stop_delay_ms = next((d for d in range(0, 1500, 20)
                          if np.mean(level_between(levels, t0_ms + barge.stopped_ms + d,
                                                   t0_ms + barge.stopped_ms + d + 300) + 0.0) < quiet), None)
    trace = [f"{(t - t0_ms - barge.stopped_ms) / 1000:+.1f}s:{np.mean(level_between(levels, t, t + 100)):.3f}"
             for t in np.arange(t0_ms + barge.stopped_ms - 500, t0_ms + barge.stopped_ms + 1500, 100)]
    print("agent level in the browser around the barge-in stop (100 ms means):", " ".join(trace))
    print(f"agent level in the browser: {loud:.4f} while speaking (75th percentile); silent {stop_delay_ms} ms after "
          f"the server stopped sending (the tiny model's reply would have gone on for seconds)")
    # loose on timing (a loaded 2-core box: Chrome's jitter buffer grows), firm on the audio stopping
    assert stop_delay_ms is not None and stop_delay_ms < 1000, "the agent's audio did not stop in the browser"
    kinds = {e["type"] for e in data["events"]}
    assert {"end_of_turn", "latency", "barge_in"} <= kinds
    assert "barge-in" in data["transcript"]
    assert screenshot.stat().st_size > 1000
