"""Fixtures of the analytics tests: every database test runs on a DuckDB file and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tradetrace.analytics.testing import must_have_pg, pg_unreachable_reason, temp_schema


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
