"""Everything one agent process runs on: its engine (by default in its own process) and the call manager.

Built once at an entry point (`lfm-call serve`, `lfm-call simulate`, tests), never inside a
constructor; `Runtime.close()` stops the engine.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.calls import CallManager
from agent.commands import choice_is_tiny, choose_for_settings, engine_settings
from agent.engine_process import EngineHost
from agent.errors import CliError
from agent.model_choice import ModelChoice
from agent.session import SessionOptions
from agent.vad import EnergyVad, SileroVad, VoiceDetector
from config.schema import Settings

if TYPE_CHECKING:
    from agent.call_recording import CallRecordings
    from model.checkpoint import LoadedModel


@dataclass
class Runtime:
    settings: Settings
    choice: ModelChoice
    engine: EngineHost
    calls: CallManager
    loaded: LoadedModel | None = None  # only with the in-thread engine (a model loaded in this process)

    @property
    def model_info(self) -> dict[str, Any]:
        """What the engine loaded: description, device, dtype, decoder."""
        return self.engine.model_info

    @property
    def model_label(self) -> str:
        """The model as call reports and provenance records name it."""
        return f"{self.choice.description}; audio decoder: {self.model_info.get('decoder', 'none')}"

    def close(self) -> None:
        self.engine.stop()


def detector_factory(settings: Settings) -> Callable[[], VoiceDetector]:
    """One VAD per call: Silero (its model loaded once, forked per call) or the energy detector."""
    if settings.vad.backend == "energy":
        return EnergyVad
    # one intra-op thread: the VAD runs on the event loop's thread beside the engine's worker, and
    # two OpenMP pools spinning on the same cores stall the event loop for hundreds of ms
    shared = SileroVad.load(num_threads=1)

    return shared.fork


def build_runtime(settings: Settings, loaded: LoadedModel | None = None, choice: ModelChoice | None = None,
                  ) -> Runtime:
    """Start the engine and make the call manager (needs a running loop).

    By default the engine runs in its own spawned process, which loads the model
    (``agent.engine_process``); given an already `loaded` model (tests, benchmarks), the engine
    runs in a thread of this process instead.
    """
    from agent.engine_process import EngineProcessClient, EngineStartError, InThreadEngine, StepBudget

    # the signing key is read (or made) before anything starts: a key that cannot be used fails here
    recordings = call_recordings(settings, lambda: runtime.model_label) if settings.server.record_dir else None
    engine: EngineHost
    # Any other thread here (the in-thread engine's worker, torch or library threads) holds the GIL
    # for its Python work; with the default 5 ms switch interval every GIL hand-back to the event loop
    # (each numpy call in the audio path) can wait that long. 0.5 ms keeps the loop live.
    sys.setswitchinterval(0.0005)
    if loaded is not None:
        from model.engine import Engine

        choice = choice or ModelChoice(Path("."), "a model loaded by the caller", False)
        tiny = choice_is_tiny(loaded)
        engine = InThreadEngine(Engine(loaded, engine_settings(settings.model, tiny,
                                                                   slots=settings.server.max_calls)),
                                    choice.description)
    else:
        choice = choice or choose_for_settings(settings.model)
        engine = EngineProcessClient(settings, choice, slots=settings.server.max_calls,
                                     budget=StepBudget(margin=settings.server.admission_step_margin))
    try:
        engine.start()
    except EngineStartError as exc:
        raise CliError(f"the engine could not start: {exc}") from None
    if engine.model_info.get("tiny", loaded is not None and choice_is_tiny(loaded)):
        print(f"model: tiny model: replies capped at {settings.model.tiny_max_reply_ms} ms "
              "(model.tiny_max_reply_ms)", file=sys.stderr)
    manager = CallManager(engine, SessionOptions.from_settings(settings), detector_factory(settings),
                          settings.server.max_calls)
    manager.recordings = recordings
    runtime = Runtime(settings, choice, engine, manager, loaded)
    return runtime


def call_recordings(settings: Settings, model: Callable[[], str]) -> CallRecordings:
    """Recordings of live calls into ``server.record_dir``, signed with the node's key (created on
    first use; ProvenanceError when it cannot be used)."""
    from agent.call_marks import EarMarkCheck
    from agent.call_recording import CallRecordings

    return CallRecordings(Path(settings.server.record_dir).expanduser(), EarMarkCheck.from_settings(settings), model)
