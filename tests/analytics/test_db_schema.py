"""The analytics schema on both backends: fresh creation, upgrades of old databases, clear refusals."""

from __future__ import annotations

import pytest

from tradetrace.analytics import schema
from tradetrace.analytics.db import DatabaseError, connect, driver_errors

TABLES = ("optimization_runs", "trades", "event_latencies", "discovered_patterns", "strategy_regime_summary")


def test_fresh_database_has_every_table_at_the_latest_version(db_url: str) -> None:
    with connect(db_url) as db:
        assert schema.current_version(db) == schema.LATEST
        for table in TABLES:
            assert db.scalar(f"SELECT count(*) FROM {table}") == 0
        versions = [r[0] for r in db.query("SELECT version FROM schema_migrations ORDER BY version")[1]]
        assert versions == [m.version for m in schema.MIGRATIONS]


def test_opening_an_old_database_upgrades_it(db_url: str) -> None:
    with connect(db_url, target_version=1) as db:
        assert schema.current_version(db) == 1
        with pytest.raises(driver_errors()):
            db.query("SELECT run_hash FROM optimization_runs")
    with connect(db_url) as db:
        assert schema.current_version(db) == schema.LATEST
        assert db.query("SELECT run_hash FROM optimization_runs")[1] == []


def test_read_only_open_of_an_old_database_says_how_to_upgrade(db_url: str) -> None:
    connect(db_url, target_version=1).close()
    with pytest.raises(DatabaseError, match="needs upgrading to 2: open it once for writing"):
        connect(db_url, read_only=True)


def test_a_newer_database_is_refused_with_the_reason(db_url: str) -> None:
    with connect(db_url) as db:
        db.execute("INSERT INTO schema_migrations VALUES (?, ?, now())", [schema.LATEST + 1, "from the future"])
    with pytest.raises(DatabaseError, match=f"schema version {schema.LATEST + 1}, newer than this tradetrace"):
        connect(db_url)


def test_read_only_connection_refuses_writes(db_url: str) -> None:
    connect(db_url).close()
    with connect(db_url, read_only=True) as db, pytest.raises(driver_errors()):
        db.execute("DELETE FROM optimization_runs")


def test_migrating_twice_changes_nothing(db_url: str) -> None:
    with connect(db_url) as db:
        before = db.query("SELECT version, description FROM schema_migrations ORDER BY version")[1]
    with connect(db_url) as db:
        assert schema.migrate(db) == schema.LATEST
        assert db.query("SELECT version, description FROM schema_migrations ORDER BY version")[1] == before


def test_unreachable_postgres_is_one_clear_error() -> None:
    with pytest.raises(DatabaseError, match="cannot connect to PostgreSQL at postgresql://postgres@127.0.0.1:1/x"):
        connect("postgresql://postgres@127.0.0.1:1/x")


def test_missing_duckdb_file_read_only_is_one_clear_error(tmp_path) -> None:
    with pytest.raises(DatabaseError, match="no analytics database at"):
        connect(str(tmp_path / "absent.duckdb"), read_only=True)
