"""Everything one agent process runs on: the loaded model, its engine and the call manager.

Built once at an entry point (`lfm-call serve`, `lfm-call simulate`, tests), never inside a
constructor; `Runtime.close()` stops the engine's worker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.calls import CallManager
from agent.commands import engine_settings, load_for_settings
from agent.model_choice import ModelChoice
from agent.session import SessionOptions
from agent.vad import EnergyVad, SileroVad, VoiceDetector
from config.schema import Settings

if TYPE_CHECKING:
    from model.checkpoint import LoadedModel
    from model.engine import Engine


@dataclass
class Runtime:
    settings: Settings
    loaded: LoadedModel
    choice: ModelChoice
    engine: Engine
    calls: CallManager

    def close(self) -> None:
        self.engine.stop()


def detector_factory(settings: Settings) -> Callable[[], VoiceDetector]:
    """One VAD per call: Silero (its model loaded once, forked per call) or the energy detector."""
    if settings.vad.backend == "energy":
        return EnergyVad
    shared = SileroVad.load(num_threads=None)
    return shared.fork


def build_runtime(settings: Settings, loaded: LoadedModel | None = None, choice: ModelChoice | None = None,
                  ) -> Runtime:
    """Load the model (unless given), start the engine and make the call manager (needs a running loop)."""
    from model.engine import Engine

    if loaded is None or choice is None:
        loaded, choice = load_for_settings(settings.model)
    engine = Engine(loaded, engine_settings(settings.model))
    engine.start()
    manager = CallManager(engine, SessionOptions.from_settings(settings), detector_factory(settings),
                          settings.server.max_calls)
    return Runtime(settings, loaded, choice, engine, manager)
