"""User-facing errors of the command line (one module, so `python -m agent.cli` sees the same class)."""

from __future__ import annotations


class CliError(Exception):
    """A user-facing failure: printed as one line `lfm-call: error: ...`, exit status 1."""
