"""Response latency at the caller's ear: scripted calls on the tiny demo model, inproc and SIP.

Each call asks two questions (espeak-ng) and listens to each answer; per turn the simulator's
report gives caller speech end, the agent's end-of-turn mark and agent audio at the caller's ear.
Configurations: the default (chunked input, early answer at ``turn.early_response_silence_ms``,
held until the end of turn), and the baselines `turn` input and early answer off, over inproc and
SIP (G.711 u-law, resampled both ways). A second table breaks the latency down; the parts that a
simulated call cannot separate are timed alone in the same run (engine first audio, Mimi decode,
resampling, packetisation, G.711), and each row says what it includes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import SENTENCES, median, speech_clip
from bench.results import Metric, Section, ratio
from bench.simrun import SimCall, SimConfig, offset_ms, run_calls, scenario_from_yaml

REPLY_MS = 1600  # tiny demo replies are capped at this (model.tiny_max_reply_ms)
REFERENCE = "inproc chunked, early answer"

SCENARIO = """\
name: {name}
timeout_s: 45
steps:
  - say: "{first}"
    when: {{after_silence_ms: 400}}
  - say: "{second}"
    when: {{after_agent_done: {{silence_ms: 600, max_wait_ms: 8000}}}}
  - hangup: {{}}
    when: {{after_agent_done: {{silence_ms: 300, max_wait_ms: 8000}}}}
"""


def configs(quick: bool) -> list[SimConfig]:
    reply = {"tiny_max_reply_ms": REPLY_MS}
    out = [
        SimConfig(REFERENCE, "inproc", {"model": dict(reply, input_mode="chunked")}, 2),
        SimConfig("inproc turn input, early answer", "inproc", {"model": dict(reply, input_mode="turn")}, 2),
        SimConfig("inproc chunked, early answer off", "inproc",
                  {"model": dict(reply, input_mode="chunked"), "turn": {"early_response_silence_ms": 0}}, 2),
        SimConfig("sip g711 chunked, early answer", "sip", {"model": dict(reply, input_mode="chunked")}, 2),
    ]
    if not quick:
        out.append(SimConfig("sip g711 chunked, early answer off", "sip",
                             {"model": dict(reply, input_mode="chunked"), "turn": {"early_response_silence_ms": 0}},
                             2))
    return out


def scenarios(count: int) -> list[Any]:
    return [scenario_from_yaml(SCENARIO.format(name=f"latency-{i}", first=SENTENCES[(2 * i) % len(SENTENCES)],
                                               second=SENTENCES[(2 * i + 1) % len(SENTENCES)]), f"latency-{i}")
            for i in range(count)]


def turn_parts(call: SimCall) -> list[dict[str, float]]:
    """Per answered turn: latency at the ear and its parts (ms)."""
    out = []
    offset = offset_ms(call)
    agent_turns = call.summary.turns if call.summary else []  # record.turns were made from these, in order
    for i, turn in enumerate(call.record.turns):
        latency = turn.response_latency_ms
        if latency is None or turn.end_of_turn_delay_ms is None or turn.end_of_turn_ms is None:
            continue
        parts = {"latency": latency, "endpointing": turn.end_of_turn_delay_ms}
        first_sent = agent_turns[i].first_audio_sent_ms if i < len(agent_turns) else None
        if offset is not None and first_sent is not None:
            sent = float(first_sent) + offset
            parts["agent"] = sent - turn.end_of_turn_ms
            parts["downlink"] = float(turn.agent_start_ms or 0.0) - sent
        out.append(parts)
    return out


async def measure(quick: bool, out_dir: Path | None, checkpoint: Path, loaded: Any, choice: Any,
                  ) -> tuple[Section, Section]:
    from config.loader import load_settings

    started = time.perf_counter()
    defaults = load_settings(environ={}).turn
    calls_per_config = 2 if quick else 4
    rows: list[list[object]] = []
    by_config: dict[str, dict[str, float]] = {}
    for config in configs(quick):
        folder = None if out_dir is None else out_dir / "sim_latency" / config.name.replace(" ", "_").replace(",", "")
        calls = await run_calls(scenarios(calls_per_config), config, checkpoint, loaded, choice, folder)
        parts = [p for c in calls for p in turn_parts(c)]
        lat = [p["latency"] for p in parts]
        errors = sum(1 for c in calls if c.record.error)
        med = {k: median([p[k] for p in parts if k in p]) for k in ("latency", "endpointing", "agent", "downlink")}
        by_config[config.name] = med
        rows.append([config.name, len(lat), med["latency"], _pct(lat, 95), max(lat, default=float("nan")),
                     med["endpointing"], med["agent"], med["downlink"], errors])
    ref = by_config[REFERENCE]["latency"]
    for row in rows:
        row.insert(5, ratio(float(row[2]), ref))  # type: ignore[arg-type]
    headers = ["configuration", "turns", "p50 ms", "p95 ms", "max ms", "p50 / reference", "endpointing p50 ms",
               "agent after end of turn p50 ms", "downlink to ear p50 ms", "call errors"]
    section = Section(
        key="sim_latency",
        title="Response latency at the caller's ear (simulated calls, tiny demo model)",
        command="lfm-call bench" + (" --quick" if quick else "") + "   # section sim_latency",
        headers=headers, rows=rows,
        notes=[
            f"reference: {REFERENCE}; the ratio column is each configuration's p50 over the reference's p50",
            "latency = agent audio at the caller's ear - end of the caller's speech (the simulator's report, "
            "response_latency_ms); endpointing = the agent's end-of-turn mark - end of speech (end_of_turn_delay_ms)",
            f"endpointing includes the configured silence turn.end_of_turn_silence_ms = "
            f"{defaults.end_of_turn_silence_ms} ms, the VAD's stop hangover (vad.stop_ms) and the uplink; the early "
            f"answer starts at turn.early_response_silence_ms = {defaults.early_response_silence_ms} ms of silence "
            "and is held until the end of turn",
            "agent after end of turn = first agent packet handed to the transport - end-of-turn mark (engine work "
            "still left + the 20 ms playout tick); downlink = caller's ear - that packet (packetisation, SIP "
            "pacing and jitter buffer, resampling, loopback network, the ear's 20 ms detection step)",
            f"{calls_per_config} calls of 2 questions per configuration, 2 calls at a time; tiny replies capped at "
            f"{REPLY_MS} ms",
            "agent-side and caller-side times share one timeline through the call's start offset (as the "
            "simulator merges them); the caller's clock is its packet count, so a stalled event loop shows as a "
            "few tens of ms of error (a negative downlink)",
        ],
    )
    section.metrics = {
        "reference_p50_ms": Metric(ref, "ms", "lower"),
        "reference_agent_after_eot_p50_ms": Metric(by_config[REFERENCE]["agent"], "ms", "lower"),
    }
    for name, med in by_config.items():
        if name.startswith("sip"):
            section.metrics[f"{name.split(',')[0].replace(' ', '_')}_{'off' if 'off' in name else 'on'}_p50_ms"] = \
                Metric(med["latency"], "ms", "lower")
    section.seconds = time.perf_counter() - started
    parts_section = await breakdown(loaded, by_config, defaults, quick)
    return section, parts_section


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def breakdown(loaded: Any, by_config: dict[str, dict[str, float]], defaults: Any, quick: bool) -> Section:
    """Table 2: the latency's parts, measured in the calls above or timed alone."""
    started = time.perf_counter()
    parts = component_timings(loaded, repeats=20 if quick else 100)
    eng = await engine_first_audio(loaded, repeats=2 if quick else 5)
    ref = by_config[REFERENCE]
    sip = by_config.get("sip g711 chunked, early answer", {})
    off = by_config.get("inproc chunked, early answer off", {})
    rows: list[list[object]] = [
        ["endpointing wait (end of speech -> end-of-turn mark)", ref["endpointing"],
         "simulated calls (reference)", f"configured silence {defaults.end_of_turn_silence_ms} ms + VAD hangover "
         f"+ uplink"],
        ["agent after end of turn, early answer on", ref["agent"], "simulated calls (reference)",
         "answer already generated and held: the playout tick"],
        ["agent after end of turn, early answer off", off.get("agent", float("nan")), "simulated calls",
         "encode/prefill of the last chunk + first audio frame + Mimi decode + playout tick"],
        ["encode/prefill + first audio frame, chunked (respond -> first chunk)", eng["chunked"],
         "engine alone, tiny model", "tail chunk encode, backbone prefill, 6 text steps, depthformer frame, Mimi"],
        ["encode/prefill + first audio frame, turn (respond -> first chunk)", eng["turn"],
         "engine alone, tiny model", "whole-turn encode + the same"],
        ["Mimi decode, one 80 ms frame", parts["mimi_ms"], "timed alone, tiny Mimi", "part of the two rows above"],
        ["resampling 24 kHz -> 8 kHz, one 20 ms packet", parts["resample_24k_8k_ms"], "timed alone",
         f"adds {parts['resample_delay_ms']:.1f} ms filter delay"],
        ["resampling 8 kHz -> 16 kHz, one 20 ms caller packet", parts["resample_8k_16k_ms"], "timed alone", ""],
        ["packetisation 80 ms chunk -> 20 ms packets at 8 kHz", parts["packetize_ms"], "timed alone",
         "includes its own resampling"],
        ["G.711 encode + decode, one 20 ms packet", parts["g711_ms"], "timed alone", ""],
        ["downlink, inproc (packet handed over -> caller's ear)", ref["downlink"], "simulated calls",
         "ear detection step (20 ms)"],
        ["downlink, SIP (packet handed over -> caller's ear)", sip.get("downlink", float("nan")), "simulated calls",
         "RTP pacing, loopback UDP, jitter buffer, G.711, resampling both ends, ear step"],
        ["network + SIP media, SIP - inproc latency", sip.get("latency", float("nan")) - ref["latency"],
         "difference of p50s", "uplink and downlink together"],
    ]
    section = Section(
        key="latency_parts", title="Response latency, part by part", headers=["part", "ms", "measured", "includes"],
        command="lfm-call bench" + (" --quick" if quick else "") + "   # section latency_parts", rows=rows,
        notes=["p50s of the simulated calls of the previous table, or medians of the part timed alone in this run",
               "the early answer hides encode/prefill and the first frame inside the endpointing wait: on the "
               "tiny model they are tens of ms; on the real model they are the GPU figures of bench/gpu.py"],
    )
    section.metrics = {"engine_first_audio_chunked_ms": Metric(eng["chunked"], "ms", "lower"),
                       "mimi_frame_ms": Metric(parts["mimi_ms"], "ms", "lower"),
                       "packetize_ms": Metric(parts["packetize_ms"], "ms", "lower")}
    section.seconds = time.perf_counter() - started
    return section


def _time_ms(fn: Any, repeats: int) -> float:
    fn()
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    return float(np.median(samples))


def component_timings(loaded: Any, repeats: int) -> dict[str, float]:
    import torch

    from agent.audio import PcmFrame
    from agent.framer import Packetizer
    from agent.g711 import ulaw_decode, ulaw_encode
    from agent.resample import StreamingResampler

    rng = np.random.default_rng(0)
    pkt_24k = (rng.standard_normal(480) * 3000).astype(np.int16)
    pkt_8k = (rng.standard_normal(160) * 3000).astype(np.int16)
    chunk_24k = (rng.standard_normal(1920) * 3000).astype(np.int16)
    down = StreamingResampler(24000, 8000)
    up = StreamingResampler(8000, 16000)
    packetizer = Packetizer(24000, out_rate=8000, packet_ms=20)
    position = [0]

    def packetize() -> None:
        packetizer.push(PcmFrame(chunk_24k, 24000, position[0]))
        position[0] += chunk_24k.size

    mimi = loaded.mimi
    state = mimi.new_decoder_state(1)
    codes = torch.randint(0, 2048, (1, 8, 1))

    def mimi_step() -> None:
        with torch.no_grad():
            mimi.decode_step(codes, state)

    out = {
        "resample_24k_8k_ms": _time_ms(lambda: down.process(pkt_24k), repeats),
        "resample_8k_16k_ms": _time_ms(lambda: up.process(pkt_8k), repeats),
        "packetize_ms": _time_ms(packetize, repeats),
        "g711_ms": _time_ms(lambda: ulaw_decode(ulaw_encode(pkt_8k)), repeats),
        "mimi_ms": _time_ms(mimi_step, repeats),
    }
    out["resample_delay_ms"] = down.delay_ms
    return out


async def engine_first_audio(loaded: Any, repeats: int) -> dict[str, float]:
    """respond() -> first AgentAudio, 2 s utterance fed at once and prefilled (tiny model), median ms."""
    from bench.common import first_audio_latency
    from bench.engine_latency import make_engine

    out = {}
    for mode in ("chunked", "turn"):
        engine = make_engine(loaded, mode, 24)
        try:
            await first_audio_latency(engine, speech_clip(1.0, 7), paced=False)  # warm-up
            values = [await first_audio_latency(engine, speech_clip(2.0, r), paced=False) for r in range(repeats)]
        finally:
            engine.stop()
        out[mode] = median(values) * 1000
    return out
