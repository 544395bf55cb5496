"""Prometheus metrics of one agent process (a registry per process, so tests get their own).

Served at `/metrics`. Every transport counts its bad input here (`bad_input_total{kind=...}`),
so malformed SIP, RTP, SDP or HTTP is visible to operators, not only in logs.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from agent.session import CallSummary

LATENCY_BUCKETS_S = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0, 1.5, 2.0, 3.0, 5.0)
STEP_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.calls_active = Gauge("lfmcall_calls_active", "Calls in progress", ["transport"], registry=r)
        self.calls_total = Counter("lfmcall_calls_total", "Calls ended, by transport and result",
                                   ["transport", "result"], registry=r)
        self.calls_refused = Counter("lfmcall_calls_refused_total", "Calls refused, by reason",
                                     ["transport", "reason"], registry=r)
        self.response_latency = Histogram("lfmcall_response_latency_seconds",
                                          "Caller's end of speech to the agent's first audio leaving",
                                          buckets=LATENCY_BUCKETS_S, registry=r)
        self.barge_in_stop = Histogram("lfmcall_barge_in_stop_seconds",
                                       "Caller speech onset to the agent's audio stopping (barge-in)",
                                       buckets=LATENCY_BUCKETS_S, registry=r)
        self.engine_step = Histogram("lfmcall_engine_step_seconds", "One batched generation step",
                                     buckets=STEP_BUCKETS_S, registry=r)
        self.dropped_frames = Counter("lfmcall_dropped_frames_total", "Audio frames dropped, by where",
                                      ["where"], registry=r)
        self.bad_input = Counter("lfmcall_bad_input_total", "Malformed input answered or dropped, by kind",
                                 ["kind"], registry=r)
        self.engine_errors = Counter("lfmcall_engine_errors_total", "Engine errors reported to calls",
                                     registry=r)
        self.engine_lost_calls = Counter("lfmcall_engine_lost_calls_total",
                                         "Live calls ended because the engine process died", registry=r)
        self.engine_restarts = Gauge("lfmcall_engine_restarts", "Engine process restarts since start",
                                     registry=r)
        self.engine_up = Gauge("lfmcall_engine_up", "1 while the engine is running and ready", registry=r)
        self.recordings = Counter("lfmcall_call_recordings_total",
                                  "Live call recordings (server.record_dir), by result: written or failed",
                                  ["result"], registry=r)
        self._step_seen = 0
        self._dropped_seen: dict[str, int] = {}
        self._recordings_seen: dict[str, int] = {}

    def observe_call(self, summary: CallSummary, transport: str) -> None:
        self.calls_total.labels(transport, "failed" if summary.error else "completed").inc()
        for turn in summary.turns:
            latency = turn.response_latency_ms
            if latency is not None:
                self.response_latency.observe(latency / 1000)
        for b in summary.barge_ins:
            self.barge_in_stop.observe(max(0, b.stopped_ms - b.speech_started_ms) / 1000)
        if summary.engine_errors:
            self.engine_errors.inc(summary.engine_errors)
        for where, count in summary.dropped_frames.items():
            if count:
                self.dropped_frames.labels(where).inc(count)
        from agent.engine_process import ENGINE_LOST

        if summary.ended_by == ENGINE_LOST:
            self.engine_lost_calls.inc()

    def observe_dropped(self, totals: dict[str, int]) -> None:
        """Add running drop totals (by where) to `dropped_frames`; each total only ever grows."""
        _add_totals(self.dropped_frames, self._dropped_seen, totals)

    def observe_recordings(self, totals: Mapping[str, int]) -> None:
        """Add the running totals of call recordings (by result) to `recordings`."""
        _add_totals(self.recordings, self._recordings_seen, totals)

    def observe_engine_steps(self, step_seconds: list[float], total_steps: int | None = None) -> None:
        """Record the engine's step times not yet recorded (call before rendering).

        `step_seconds` holds the most recent steps (the engine trims it); `total_steps` counts all.
        """
        total = len(step_seconds) if total_steps is None else total_steps
        new = max(0, min(total - self._step_seen, len(step_seconds)))
        for s in step_seconds[len(step_seconds) - new :]:
            self.engine_step.observe(s)
        self._step_seen = total

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _add_totals(counter: Counter, seen: dict[str, int], totals: Mapping[str, int]) -> None:
    """Increase `counter` (one label) by what each running total grew since `seen`."""
    for label, total in totals.items():
        new = total - seen.get(label, 0)
        if new > 0:
            counter.labels(label).inc(new)
        seen[label] = max(total, seen.get(label, 0))
