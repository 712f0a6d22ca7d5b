"""Shared fixtures: real market data from ../shared/data, an isolated data home per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test writes its event store and database under its own tmp folder."""
    home = tmp_path / "tt-home"
    monkeypatch.setenv("TRADETRACE_HOME", str(home))
    monkeypatch.delenv("TRADETRACE_EVENTS", raising=False)
    monkeypatch.delenv("TRADETRACE_DB", raising=False)
    return home


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data: skipped with a reason when absent, but never under CI=true."""
    if not SHARED_DATA.is_dir():
        if IN_CI:
            pytest.fail(f"CI=true but the shared market data is missing at {SHARED_DATA}")
        pytest.skip(f"shared market data not found at {SHARED_DATA} (needs ../shared beside the repo)")
    return SHARED_DATA
