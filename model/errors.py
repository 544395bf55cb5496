"""Exceptions raised by the model package (one hierarchy)."""

from __future__ import annotations


class ModelError(Exception):
    """Base class of every error raised by model/."""


class CheckpointError(ModelError):
    """A checkpoint cannot be resolved, read or loaded; the message names the file or keys."""


class ConfigError(CheckpointError):
    """config.json (or one of its sections) is malformed."""


class GenerationError(ModelError):
    """Generation was asked for something impossible (bad chat, exhausted state)."""
