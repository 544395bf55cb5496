"""The settings schema: one frozen dataclass per section of the YAML files.

Every field carries its unit in its name and, where a value is constrained, a `spec(...)` in its
metadata (range or choices). `config/default.yaml` documents every field with a comment; a unit
test checks that the file and these defaults agree key for key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def spec(
    default: Any,
    *,
    min: float | None = None,
    max: float | None = None,
    choices: tuple[str, ...] | None = None,
) -> Any:
    """A dataclass field with validation limits attached as metadata."""
    meta = {"min": min, "max": max, "choices": choices}
    return field(default=default, metadata=meta)


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class LoggingSettings:
    level: str = spec("INFO", choices=LOG_LEVELS)
    format: str = spec("text", choices=("text", "json"))


@dataclass(frozen=True)
class AudioSettings:
    frame_ms: int = spec(80, min=80, max=80)
    model_input_rate_hz: int = spec(16000, min=16000, max=16000)
    model_output_rate_hz: int = spec(24000, min=24000, max=24000)
    packet_ms: int = spec(20, min=20, max=20)  # fixed: RTP, WebRTC and the playout send 20 ms packets
    jitter_buffer_ms: int = spec(60, min=0, max=1000)
    output_latency_ms: int = spec(60, min=0, max=1000)


@dataclass(frozen=True)
class VadSettings:
    backend: str = spec("silero", choices=("silero", "energy"))
    start_threshold: float = spec(0.5, min=0.0, max=1.0)
    stop_threshold: float = spec(0.35, min=0.0, max=1.0)
    start_ms: int = spec(64, min=0, max=2000)
    stop_ms: int = spec(160, min=0, max=5000)


@dataclass(frozen=True)
class TurnSettings:
    end_of_turn_silence_ms: int = spec(1200, min=100, max=10000)
    early_response_silence_ms: int = spec(300, min=0, max=10000)
    barge_in_word_ms: int = spec(0, min=0, max=5000)
    backchannel_max_ms: int = spec(1200, min=20, max=10000)
    barge_in_min_speech_ms: int = spec(600, min=20, max=5000)
    hold_at_voice_onset: bool = spec(True)
    barge_in_gap_ms: int = spec(400, min=0, max=5000)
    false_interruption_timeout_ms: int = spec(1500, min=100, max=10000)
    max_turn_ms: int = spec(30000, min=1000, max=600000)
    response_timeout_ms: int = spec(5000, min=500, max=60000)
    speech_preroll_ms: int = spec(240, min=0, max=1000)
    dtmf_end_of_input_ms: int = spec(1500, min=100, max=10000)
    echo_gate: bool = spec(True)


@dataclass(frozen=True)
class EndpointingSettings:
    detectors: tuple[str, ...] = spec(("silence",))
    combine: str = spec("mean", choices=("min", "max", "mean"))
    min_silence_ms: int = spec(250, min=50, max=10000)
    max_silence_ms: int = spec(1600, min=50, max=10000)
    unsure_probability: float = spec(0.55, min=0.0, max=1.0)
    sure_probability: float = spec(0.75, min=0.0, max=1.0)
    adaptive_initial_ms: int = spec(800, min=50, max=10000)
    adaptive_min_ms: int = spec(500, min=50, max=10000)
    adaptive_max_ms: int = spec(1600, min=50, max=10000)
    adaptive_margin_ms: int = spec(250, min=0, max=5000)
    learned_model_path: str = spec("")
    learned_window_s: float = spec(8.0, min=0.5, max=30.0)
    speculative_window_ms: int = spec(0, min=0, max=5000)


@dataclass(frozen=True)
class ModelSettings:
    ref: str = spec("LiquidAI/LFM2.5-Audio-1.5B")
    offline_fallback: str = spec("tiny", choices=("tiny", "error"))
    audio_decoder: str = spec("auto", choices=("auto", "mimi", "detokenizer"))
    device: str = spec("auto")
    dtype: str = spec("auto", choices=("auto", "float32", "bfloat16", "float16"))
    input_mode: str = spec("chunked", choices=("chunked", "turn"))
    chunk_frames: int = spec(8, min=1, max=256)
    chunk_left_context_frames: int = spec(16, min=0, max=1024)
    chunk_right_context_frames: int = spec(2, min=0, max=64)
    system_prompt: str = spec("Respond with interleaved text and audio.")
    instructions: str = spec("")
    greeting: str = spec("Hello, you are speaking with an AI assistant. How can I help?")
    max_context_tokens: int = spec(32768, min=512, max=32768)
    max_reply_ms: int = spec(60000, min=1000, max=600000)
    tiny_max_reply_ms: int = spec(4000, min=1000, max=600000)
    text_temperature: float = spec(0.0, min=0.0, max=5.0)
    text_top_k: int = spec(0, min=0, max=65536)
    audio_temperature: float = spec(1.0, min=0.0, max=5.0)
    audio_top_k: int = spec(4, min=0, max=2049)


@dataclass(frozen=True)
class SipSettings:
    enabled: bool = spec(False)
    listen_host: str = spec("127.0.0.1")
    listen_port: int = spec(5080, min=1, max=65535)
    advertised_address: str = spec("")
    rtp_port_min: int = spec(20000, min=1024, max=65535)
    rtp_port_max: int = spec(20999, min=1024, max=65535)
    trusted_sources: tuple[str, ...] = spec(("127.0.0.1/32",))
    codecs: tuple[str, ...] = spec(("G722", "PCMU", "PCMA"))
    rtp_timeout_s: float = spec(30.0, min=1.0, max=3600.0)
    auth_username: str = spec("")
    auth_password: str = spec("")
    registrar: str = spec("")
    register_expires_s: int = spec(3600, min=60, max=86400)


@dataclass(frozen=True)
class HttpSettings:
    enabled: bool = spec(True)
    host: str = spec("127.0.0.1")
    port: int = spec(8080, min=1, max=65535)
    auth: str = spec("auto", choices=("auto", "on", "off"))
    auth_token: str = spec("")
    cors_origins: tuple[str, ...] = spec(())
    max_body_bytes: int = spec(65536, min=1024, max=10485760)


@dataclass(frozen=True)
class ServerSettings:
    max_calls: int = spec(8, min=1, max=10000)
    drain_timeout_s: float = spec(300.0, min=0.0, max=86400.0)
    admission_step_margin: float = spec(0.8, min=0.0, max=1.0)
    record_dir: str = spec("")


@dataclass(frozen=True)
class WatermarkSettings:
    enabled: bool = spec(True)
    secret: str = spec("")
    node_id: int = spec(0, min=0, max=65535)
    strength_db: float = spec(-14.0, min=-30.0, max=-6.0)


@dataclass(frozen=True)
class ProvenanceSettings:
    enabled: bool = spec(True)
    node_name: str = spec("")
    signing_key_file: str = spec("")
    signing_secret: str = spec("")
    trusted_public_keys: tuple[str, ...] = spec(())


@dataclass(frozen=True)
class Settings:
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    audio: AudioSettings = field(default_factory=AudioSettings)
    vad: VadSettings = field(default_factory=VadSettings)
    turn: TurnSettings = field(default_factory=TurnSettings)
    endpointing: EndpointingSettings = field(default_factory=EndpointingSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    sip: SipSettings = field(default_factory=SipSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    watermark: WatermarkSettings = field(default_factory=WatermarkSettings)
    provenance: ProvenanceSettings = field(default_factory=ProvenanceSettings)
