"""Shared test configuration: markers by folder, and the fixtures kept in ``tests/fixtures``."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES_DIR = REPO_ROOT / "tests" / "fixtures"
TINY_DIR = FIXTURES_DIR / "lfm2-audio-tiny"


KINDS = ("unit", "parity", "integration")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Each test gets its folder's marker, unless it carries one itself: a test in tests/unit that
    needs a peer program (espeak-ng, sox, ...) is marked ``integration``, so that ``-m unit`` runs on
    Python packages alone (scripts/setup.sh --minimal)."""
    for item in items:
        if any(item.get_closest_marker(kind) is not None for kind in KINDS):
            continue
        parts = Path(str(item.fspath)).parts
        for marker in KINDS:
            if marker in parts:
                item.add_marker(getattr(pytest.mark, marker))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES_DIR.is_dir():
        pytest.fail(f"fixtures not found at {FIXTURES_DIR} (they are part of the repository)")
    return FIXTURES_DIR


@pytest.fixture(scope="session")
def tiny_checkpoint_dir(fixtures_dir: Path) -> Path:
    return fixtures_dir / "lfm2-audio-tiny" / "checkpoint"


@pytest.fixture(scope="session")
def tiny_reference_dir(fixtures_dir: Path) -> Path:
    return fixtures_dir / "lfm2-audio-tiny" / "reference"
