"""The analytics schema on both backends: fresh creation, upgrades of old databases, clear refusals."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

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
    with pytest.raises(DatabaseError, match=f"needs upgrading to {schema.LATEST}: open it once for writing"):
        connect(db_url, read_only=True)


def test_a_newer_database_is_refused_with_the_reason(db_url: str) -> None:
    with connect(db_url) as db:
        db.execute("INSERT INTO schema_migrations VALUES (?, ?, now())", [schema.LATEST + 1, "from the future"])
    with pytest.raises(DatabaseError, match=f"schema version {schema.LATEST + 1}, newer than this tradetrace"):
        connect(db_url)


def test_read_only_connection_refuses_writes(db_url: str) -> None:
    connect(db_url).close()
    with connect(db_url, read_only=True) as db, pytest.raises(DatabaseError, match="found|starts with 'DELETE'"):
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


def test_the_strategy_regime_summary_counts_a_single_run_at_once(db_url: str) -> None:
    """The summary was a materialized view on PostgreSQL that only sweeps and etl refreshed: a plain
    `run_backtest` left it stale. Now a plain view on both backends."""
    from tradetrace import run_backtest

    cfg = {"name": "summary", "data": {"synthetic": {"bars": 2000, "seed": 3}}, "strategy": {"type": "sma_crossover"},
           "database": {"url": db_url}, "store": {"enabled": False}}
    for k in range(2):
        run_backtest(cfg)
        with connect(db_url, read_only=True) as db:
            assert db.scalar("SELECT sum(runs) FROM strategy_regime_summary") == k + 1
            assert db.scalar("SELECT count(*) FROM optimization_runs") == k + 1


def test_an_upgraded_version_2_database_gets_a_current_summary(db_url: str) -> None:
    """Version 2 made the summary a materialized view on PostgreSQL; version 3 replaces it with a view."""
    from tradetrace.analytics import etl

    with connect(db_url, target_version=2) as db:
        row = {"run_id": str(uuid.UUID(int=1)), "correlation_id": str(uuid.UUID(int=1)), "strategy_type": "alpha",
               "status": "completed", "sharpe": 1.5}
        etl.write_runs(db, [etl.RunRecords(row["correlation_id"], etl.run_table([row]))])
    with connect(db_url) as db:
        assert schema.current_version(db) == schema.LATEST
        summary = db.query("SELECT strategy_type, runs, best_sharpe FROM strategy_regime_summary")[1]
        assert summary == [("alpha", 1, 1.5)]
        if db.dialect == "postgres":
            assert db.scalar("SELECT count(*) FROM pg_matviews WHERE matviewname = 'strategy_regime_summary'") == 0


@pytest.fixture
def unprivileged_pg_url(postgres_ready: None) -> Iterator[str]:
    """A URL into a fresh schema for a login role that may create tables there but not extensions."""
    import psycopg

    from tradetrace.analytics.testing import SESSION_TAG, pg_url, temp_schema

    role = f"tt_plain_{SESSION_TAG}_{uuid.uuid4().hex[:6]}"
    with temp_schema() as url, psycopg.connect(pg_url(), autocommit=True) as admin:
        with psycopg.connect(url) as con:
            schema_name = con.execute("SELECT current_schema()").fetchone()[0]
        admin.execute(f'CREATE ROLE "{role}" LOGIN')
        try:
            admin.execute(f'GRANT USAGE, CREATE ON SCHEMA "{schema_name}" TO "{role}"')
            parts = urlsplit(url)
            yield urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port}"))
        finally:
            admin.execute(f'DROP OWNED BY "{role}" CASCADE')
            admin.execute(f'DROP ROLE "{role}"')


def test_an_extension_that_cannot_be_created_leaves_plain_tables_and_a_warning(unprivileged_pg_url: str) -> None:
    """TimescaleDB available but not creatable (not preloaded, no rights) used to abort the first migration.
    TimescaleDB cannot be installed here, so the same path runs on an extension this server has and this
    login may not create (file_fdw is untrusted): the failure is real, warned about in one line, and the
    migration's transaction goes on."""
    with connect(unprivileged_pg_url) as db:  # migrates as the unprivileged login (timescaledb absent)
        assert schema.current_version(db) == schema.LATEST
        with db.transaction():
            db.execute("CREATE TABLE before_ext (x INTEGER)")
            with pytest.warns(UserWarning, match=r"^file_fdw is available in .* but could not be enabled "
                                                 r"\(permission denied to create extension \"file_fdw\"\): "
                                                 r"trades and event_latencies stay plain tables$"):
                assert schema._hypertables(db, extension="file_fdw") is False
            db.execute("CREATE TABLE after_ext (x INTEGER)")
        assert db.scalar("SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema() "
                         "AND table_name IN ('before_ext', 'after_ext')") == 2
        assert not schema.is_timescale(db)


def test_a_database_with_a_foreign_table_of_a_schema_name_is_refused_and_left_as_it_was(db_url: str) -> None:
    """A user's own `trades` table in the database `--db` names: `CREATE TABLE IF NOT EXISTS` kept it and the
    first load failed with a driver traceback. Now one line naming the table, and no schema is half-made."""
    with connect(db_url, migrate=False) as db:
        db.execute("CREATE TABLE trades (x INTEGER)")
    with pytest.raises(DatabaseError, match=r"has no tradetrace schema but already has a table 'trades' "
                                            r"\(not made by tradetrace\): use another database"):
        connect(db_url)
    with connect(db_url, migrate=False) as db:
        assert schema.current_version(db) == 0
        assert db.query("SELECT * FROM trades")[0] == ["x"]


def test_a_failing_migration_is_one_line_naming_it_and_rolled_back(db_url: str) -> None:
    """A step the database refuses (here: version 2's column already added by hand) is a DatabaseError naming
    the migration, not a driver traceback; the versions before it stay as they were."""
    with connect(db_url, target_version=1) as db:
        db.execute("ALTER TABLE optimization_runs ADD COLUMN run_hash VARCHAR")
    with pytest.raises(DatabaseError, match=r"migration 2 \(run_hash for sweep resume.*\) failed: "):
        connect(db_url)
    with connect(db_url, migrate=False) as db:
        assert schema.current_version(db) == 1


def test_an_unknown_url_scheme_is_refused_not_taken_for_a_file(tmp_path, monkeypatch) -> None:
    """`mysql://...` was a DuckDB path: a folder `mysql:` appeared and DuckDB tried to download an extension."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatabaseError, match=r"^database URL mysql://me:\*\*\*@host/db: unknown scheme 'mysql://'"):
        connect("mysql://me:secret@host/db")
    assert list(tmp_path.iterdir()) == []


def test_a_postgres_url_psycopg_cannot_parse_is_one_clear_error() -> None:
    with pytest.raises(DatabaseError, match=r"^cannot connect to PostgreSQL at postgresql://bad url: .*spaces"):
        connect("postgresql://bad url")


def test_query_arrow_returns_the_rows(db_url: str) -> None:
    """On DuckDB 2 the executed statement has no Arrow fetch any more (`fetch_arrow_table`, `arrow`)."""
    with connect(db_url) as db:
        db.execute("INSERT INTO discovered_patterns (pattern_id, pattern_type, pattern_signature) VALUES (?, ?, ?)",
                   ["p1", "success", '{"vix": "low"}'])
    with connect(db_url, read_only=True) as db:
        table = db.query_arrow("SELECT pattern_id, sample_count FROM discovered_patterns WHERE pattern_type = ?",
                               ["success"])
        assert table.to_pylist() == [{"pattern_id": "p1", "sample_count": None}]
        with pytest.raises(DatabaseError):
            db.query_arrow("DELETE FROM discovered_patterns")


def test_the_summary_metrics_are_those_of_completed_runs(db_url: str) -> None:
    """A failed run's metrics cover only the bars before its error, and every retry adds a row: they went into
    the summary's averages and best Sharpe. An upgraded version 3 database gets the new summary too."""
    from tradetrace.analytics import etl

    def row(k: int, status: str, sharpe: float, trades: int) -> etl.RunRecords:
        cid = str(uuid.UUID(int=k))
        r = {"run_id": cid, "correlation_id": cid, "strategy_type": "alpha", "status": status, "sharpe": sharpe,
             "total_return": sharpe / 10, "total_trades": trades}
        return etl.RunRecords(cid, etl.run_table([r]))

    with connect(db_url, target_version=3) as db:
        etl.write_runs(db, [row(1, "completed", 1.0, 10), row(2, "failed", 5.0, 3), row(3, "failed", 4.0, 2)])
    with connect(db_url) as db:
        summary = db.query("SELECT runs, completed_runs, avg_sharpe, best_sharpe, avg_total_return, total_trades "
                           "FROM strategy_regime_summary WHERE strategy_type = 'alpha'")[1]
    assert [tuple(float(v) for v in r) for r in summary] == [(3, 1, 1.0, 1.0, 0.1, 10)]
