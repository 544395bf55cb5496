"""Which checkpoint a command runs on, and saying so.

`model.ref` names a local folder or a Hugging Face repo id. When it is a repo id whose files are
not on this machine, `model.offline_fallback: tiny` switches to the project's tiny random
checkpoint (built once into the cache folder), so the main job and the tests run offline; every
command prints which model it used. An explicit `--model` never falls back.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from config.schema import ModelSettings

TINY_SEED = 0
TINY_HIDDEN_SIZE = 256  # a backbone narrower than this is a tiny random model, not LFM2-Audio


class ModelChoiceError(Exception):
    """The configured model cannot be used and no fallback is allowed."""


@dataclass(frozen=True)
class ModelChoice:
    path: Path
    description: str
    is_tiny_fallback: bool


def cache_dir() -> Path:
    """$LFM_CALL_CACHE, else $XDG_CACHE_HOME/lfm-call, else ~/.cache/lfm-call."""
    explicit = os.environ.get("LFM_CALL_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) / "lfm-call" if xdg else Path.home() / ".cache" / "lfm-call"


def _local_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot folder of repo_id if huggingface_hub already has it, else None."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - a declared dependency
        return None
    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # offline / not cached: every hub error means "not here"
        return None


def download_command(ref: str) -> str:
    """How to fetch the weights named by model.ref (a Hugging Face repo id; a folder: the default repo)."""
    looks_like_repo = ref.count("/") == 1 and not ref.startswith((".", "/", "~"))
    repo = ref if looks_like_repo else "LiquidAI/LFM2.5-Audio-1.5B"
    return f"{Path(sys.executable).parent / 'hf'} download {repo}"  # huggingface_hub's CLI


def checkpoint_is_tiny(folder: Path) -> bool:
    """A checkpoint far too small to be the real model (the offline tiny model, test fixtures), by its
    config.json alone (the same rule as `agent.commands.choice_is_tiny` on a loaded model)."""
    try:
        config = json.loads((folder / "config.json").read_text())
        return int(config["lfm"]["hidden_size"]) < TINY_HIDDEN_SIZE
    except (OSError, ValueError, KeyError, TypeError):
        return False  # not readable here: the loader reports what is wrong with it


def choose_model(settings: ModelSettings) -> ModelChoice:
    ref = settings.ref
    path = Path(ref).expanduser()
    if path.is_dir():
        return ModelChoice(path, f"checkpoint folder {path}", False)
    looks_like_repo = ref.count("/") == 1 and not ref.startswith((".", "/", "~"))
    if looks_like_repo:
        snapshot = _local_snapshot(ref)
        if snapshot is not None:
            return ModelChoice(snapshot, f"{ref} (local Hugging Face cache {snapshot})", False)
    if settings.offline_fallback != "tiny":
        hint = download_command(ref) if looks_like_repo else "check the path"
        raise ModelChoiceError(f"model {ref!r} is not available on this machine ({hint})")
    tiny = cache_dir() / f"tiny-demo-v2-seed{TINY_SEED}"  # v2: ships the LFM2.5 detokenizer too
    if not (tiny / "config.json").is_file():
        from model.tiny import make_tiny_checkpoint

        make_tiny_checkpoint(tiny, seed=TINY_SEED, long_replies=True)
    return ModelChoice(
        tiny,
        f"OFFLINE TINY MODEL (random weights, words are noise) at {tiny}; {ref} is not on this "
        f"machine (get it with: {download_command(ref)})",
        True,
    )
