"""Which checkpoint a command runs on, and saying so.

`model.ref` names a local folder or a Hugging Face repo id. When it is a repo id whose files are
not on this machine, `model.offline_fallback: tiny` switches to the project's tiny random
checkpoint (built once into the cache folder), so the main job and the tests run offline; every
command prints which model it used. An explicit `--model` never falls back.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from config.schema import ModelSettings

TINY_SEED = 0


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
        hint = f"huggingface-cli download {ref}" if looks_like_repo else "check the path"
        raise ModelChoiceError(f"model {ref!r} is not available on this machine ({hint})")
    tiny = cache_dir() / f"tiny-demo-v2-seed{TINY_SEED}"  # v2: ships the LFM2.5 detokenizer too
    if not (tiny / "config.json").is_file():
        from model.tiny import make_tiny_checkpoint

        make_tiny_checkpoint(tiny, seed=TINY_SEED, long_replies=True)
    return ModelChoice(
        tiny,
        f"OFFLINE TINY MODEL (random weights, words are noise) at {tiny}; {ref} is not on this "
        f"machine (get it with: huggingface-cli download {ref})",
        True,
    )
