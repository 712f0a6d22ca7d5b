"""Shared fixtures: real market data from ../shared/data, an isolated data home per test, and the
analytics databases (a DuckDB file and PostgreSQL) that database and sweep tests run on."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tradetrace.analytics.testing import must_have_pg, pg_unreachable_reason, temp_schema

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


@pytest.fixture(scope="session")
def postgres_ready() -> None:
    """PostgreSQL must answer: fail under CI (or an explicit TRADETRACE_PG_URL), skip otherwise."""
    reason = pg_unreachable_reason()
    if reason is not None:
        if must_have_pg():
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(params=["duckdb", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty analytics database URL: a DuckDB file, or a throwaway PostgreSQL schema."""
    if request.param == "duckdb":
        yield str(tmp_path / "analytics.duckdb")
        return
    request.getfixturevalue("postgres_ready")
    with temp_schema() as url:
        yield url
