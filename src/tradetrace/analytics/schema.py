"""The analytics schema and its versioned migrations (one logical schema, two dialects).

Tables (DESIGN.md vocabulary; `correlation_id` is the run's id, a UUID in every table, which keeps the
rows narrow and the indexes cheap: a text correlation_id made PostgreSQL COPY into `trades` 25%
slower, mostly in index maintenance): `optimization_runs` (one row per run: params, metrics, regimes, event
range), `trades` (one row per closed trade with its lineage: the seqs of its entry/exit SIGNAL and FILL and of
its POSITION_CLOSE; with the row's correlation_id each is an event id `<correlation_id>:<seq>`, stored
as the pair like the event store does (DESIGN.md decision 2)), `event_latencies` (per run,
event type and container), `discovered_patterns` (filled by the pattern miner) and the
`strategy_regime_summary` view (a plain view on both backends since version 3: a materialized view went
stale after every run that did not refresh it, and the plain one answers in ~27 ms on 100k runs on
PostgreSQL here, within the 100 ms target; its metrics are those of completed runs since version 4).

Why versioned migrations: a database outlives the code that made it. `schema_migrations` records
every applied version; opening an older database applies the missing steps in one transaction
(PostgreSQL serializes concurrent openers with an advisory lock); a newer or read-only-and-old
database is refused with a message saying what to do. Never edit a released migration: add one.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

from tradetrace.analytics.db import Database, DatabaseError, NoDatabase, driver_errors, redact

_TYPES = {
    "duckdb": {"json": "JSON", "double": "DOUBLE", "text": "VARCHAR", "ts": "TIMESTAMPTZ"},
    "postgres": {"json": "JSONB", "double": "DOUBLE PRECISION", "text": "TEXT", "ts": "TIMESTAMPTZ"},
}

#: The tables and view the schema creates (a database holding one of them but no schema is refused).
NAMES = ("optimization_runs", "trades", "event_latencies", "discovered_patterns", "strategy_regime_summary")

_V1_TABLES = """
CREATE TABLE IF NOT EXISTS optimization_runs (
    run_id UUID PRIMARY KEY,
    correlation_id UUID NOT NULL UNIQUE,
    sweep_id {text},
    run_name {text},
    strategy_type {text} NOT NULL,
    strategy_version {text},
    parameters {json},
    sharpe {double}, sortino {double}, max_drawdown {double}, total_return {double}, annual_return {double},
    win_rate {double}, profit_factor {double}, total_trades BIGINT,
    avg_trade_duration {double}, avg_bars_held {double},
    total_commission {double}, total_slippage {double}, avg_slippage {double}, final_equity {double},
    market_regime {text}, volatility_regime {text},
    event_count BIGINT, first_event_id {text}, last_event_id {text}, event_storage_path {text},
    status {text} NOT NULL, error {text},
    created_at {ts}, completed_at {ts}
);
CREATE TABLE IF NOT EXISTS trades (
    correlation_id UUID NOT NULL,
    close_seq BIGINT NOT NULL,
    trade_id BIGINT NOT NULL,
    symbol {text}, direction {text}, quantity {double},
    entry_time {ts} NOT NULL, exit_time {ts},
    entry_price {double}, exit_price {double}, pnl {double}, pnl_pct {double},
    commission {double}, slippage {double}, bars_held BIGINT, exit_reason {text},
    entry_regime {text}, entry_volatility {text}, exit_regime {text}, exit_volatility {text},
    entry_signal_seq BIGINT, entry_fill_seq BIGINT, exit_signal_seq BIGINT, exit_fill_seq BIGINT
);
CREATE TABLE IF NOT EXISTS event_latencies (
    correlation_id UUID NOT NULL,
    measured_at {ts} NOT NULL,
    event_type {text} NOT NULL,
    source_container {text} NOT NULL,
    event_count BIGINT, sampled BIGINT,
    mean_us {double}, p50_us {double}, p95_us {double}, p99_us {double}, max_us {double},
    queue_mean_us {double}
);
CREATE TABLE IF NOT EXISTS discovered_patterns (
    pattern_id {text} PRIMARY KEY,
    pattern_type {text} NOT NULL,
    pattern_signature {json} NOT NULL,
    strategy_type {text},
    success_rate {double}, failure_rate {double}, avg_return {double}, sample_count BIGINT,
    ci_low {double}, ci_high {double}, anti_pattern BOOLEAN NOT NULL DEFAULT FALSE,
    discovery_method {text}, p_value {double}, q_value {double},
    example_correlation_ids {json},
    discovered_at {ts}, last_validated {ts}
)
"""

_SUMMARY_SELECT = """
SELECT strategy_type, market_regime, volatility_regime,
       count(*) AS runs,
       sum(CASE WHEN status = 'completed' THEN 1 ELSE 0 END) AS completed_runs,
       avg(sharpe) AS avg_sharpe, max(sharpe) AS best_sharpe, avg(total_return) AS avg_total_return,
       avg(max_drawdown) AS avg_max_drawdown, avg(win_rate) AS avg_win_rate, sum(total_trades) AS total_trades
FROM optimization_runs
GROUP BY strategy_type, market_regime, volatility_regime
"""

#: Version 4's summary: the metrics of completed runs only. A failed run's metrics are those of the part that
#: ran before its error (a strategy that raised at bar 500 of 3000 had a Sharpe of 3.7 here), and each retry
#: of a failed combination adds a row: they went into the averages and could be the best Sharpe.
_SUMMARY_SELECT_V4 = """
SELECT strategy_type, market_regime, volatility_regime,
       count(*) AS runs,
       sum(CASE WHEN status = 'completed' THEN 1 ELSE 0 END) AS completed_runs,
       avg(CASE WHEN status = 'completed' THEN sharpe END) AS avg_sharpe,
       max(CASE WHEN status = 'completed' THEN sharpe END) AS best_sharpe,
       avg(CASE WHEN status = 'completed' THEN total_return END) AS avg_total_return,
       avg(CASE WHEN status = 'completed' THEN max_drawdown END) AS avg_max_drawdown,
       avg(CASE WHEN status = 'completed' THEN win_rate END) AS avg_win_rate,
       sum(CASE WHEN status = 'completed' THEN total_trades END) AS total_trades
FROM optimization_runs
GROUP BY strategy_type, market_regime, volatility_regime
"""

_V2_COMMON = """
ALTER TABLE optimization_runs ADD COLUMN run_hash {text};
CREATE INDEX IF NOT EXISTS idx_runs_strategy_sharpe ON optimization_runs (strategy_type, sharpe);
CREATE INDEX IF NOT EXISTS idx_runs_regime_sharpe ON optimization_runs (market_regime, sharpe);
CREATE INDEX IF NOT EXISTS idx_runs_sweep ON optimization_runs (sweep_id);
CREATE INDEX IF NOT EXISTS idx_runs_hash ON optimization_runs (run_hash);
CREATE INDEX IF NOT EXISTS idx_trades_corr ON trades (correlation_id);
CREATE INDEX IF NOT EXISTS idx_latencies_corr ON event_latencies (correlation_id)
"""

_V2_POSTGRES = """
CREATE INDEX IF NOT EXISTS idx_runs_regime_sharpe_desc ON optimization_runs (market_regime, sharpe DESC NULLS LAST);
CREATE INDEX IF NOT EXISTS idx_runs_sharpe_desc ON optimization_runs (sharpe DESC NULLS LAST);
CREATE INDEX IF NOT EXISTS idx_runs_parameters ON optimization_runs USING GIN (parameters);
CREATE INDEX IF NOT EXISTS idx_patterns_signature ON discovered_patterns USING GIN (pattern_signature);
CREATE MATERIALIZED VIEW IF NOT EXISTS strategy_regime_summary AS {summary}
"""


def _statements(text: str, dialect: str) -> list[str]:
    sql = text.format(summary=_SUMMARY_SELECT, **_TYPES[dialect])
    return [s.strip() for s in sql.split(";") if s.strip()]


def _v1(db: Database) -> None:
    for stmt in _statements(_V1_TABLES, db.dialect):
        db.execute(stmt)
    if db.dialect == "postgres":
        _hypertables(db)


def _hypertables(db: Database, extension: str = "timescaledb") -> bool:
    """Make the time-series tables hypertables when TimescaleDB is available (no unique keys on them, so the
    partitioning column need not be part of any key); True if they are.

    Available is not usable: the extension may not be preloaded, or the login may not create extensions.
    Then the tables stay plain, with a one-line warning, rather than the database never opening: the
    attempt runs in a savepoint, so its failure leaves the migration's transaction intact. `extension`
    exists for the test of that path (TimescaleDB cannot be installed where the tests run)."""
    if not db.scalar("SELECT count(*) FROM pg_available_extensions WHERE name = ?", [extension]):
        return False
    try:
        with db.transaction():
            db.execute(f'CREATE EXTENSION IF NOT EXISTS "{extension}"')
            if extension == "timescaledb":
                db.execute("SELECT create_hypertable('trades', 'entry_time', if_not_exists => TRUE, "
                           "migrate_data => TRUE)")
                db.execute("SELECT create_hypertable('event_latencies', 'measured_at', if_not_exists => TRUE, "
                           "migrate_data => TRUE)")
    except driver_errors() as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        warnings.warn(f"{extension} is available in {redact(db.url)} but could not be enabled ({first}): "
                      f"trades and event_latencies stay plain tables", stacklevel=2)
        return False
    return True


def _v2(db: Database) -> None:
    for stmt in _statements(_V2_COMMON, db.dialect):
        db.execute(stmt)
    if db.dialect == "postgres":
        for stmt in _statements(_V2_POSTGRES, db.dialect):
            db.execute(stmt)
    else:
        db.execute(f"CREATE OR REPLACE VIEW strategy_regime_summary AS {_SUMMARY_SELECT}")


def _v3(db: Database) -> None:
    if db.dialect == "postgres":
        db.execute("DROP MATERIALIZED VIEW IF EXISTS strategy_regime_summary")
        db.execute(f"CREATE VIEW strategy_regime_summary AS {_SUMMARY_SELECT}")


def _v4(db: Database) -> None:
    db.execute(f"CREATE OR REPLACE VIEW strategy_regime_summary AS {_SUMMARY_SELECT_V4}")


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable[[Database], None]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "tables: optimization_runs, trades, event_latencies, discovered_patterns", _v1),
    Migration(2, "run_hash for sweep resume; indexes; strategy x regime summary view", _v2),
    Migration(3, "strategy x regime summary: a plain (always current) view on PostgreSQL too", _v3),
    Migration(4, "strategy x regime summary: metrics of completed runs only (runs still counts every run)", _v4),
)
LATEST = MIGRATIONS[-1].version


def is_timescale(db: Database) -> bool:
    """True when the TimescaleDB extension is installed in this database."""
    return db.dialect == "postgres" and bool(db.scalar("SELECT count(*) FROM pg_extension WHERE extname = ?",
                                                      ["timescaledb"]))


def current_version(db: Database) -> int:
    """The schema version of an open database (0 when it has no tradetrace schema yet)."""
    exists = db.scalar("SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema() "
                       "AND table_name = ?", ["schema_migrations"])
    if not exists:
        return 0
    return int(db.scalar("SELECT coalesce(max(version), 0) FROM schema_migrations") or 0)


def migrate(db: Database, *, read_only: bool = False, target: int | None = None) -> int:
    """Bring the schema to `target` (default: the latest); returns the version now in place."""
    target = LATEST if target is None else target
    version = current_version(db)
    if version > LATEST:
        raise DatabaseError(f"analytics database {redact(db.url)} has schema version {version}, newer than this "
                            f"tradetrace knows ({LATEST}): upgrade tradetrace to use it")
    if version >= target:
        return version
    if read_only and version == 0:
        raise NoDatabase(f"no tradetrace schema in {redact(db.url)}: run a backtest or `tradetrace etl` to create it")
    if read_only:
        raise DatabaseError(f"analytics database {redact(db.url)} has schema version {version} and needs "
                            f"upgrading to {target}: open it once for writing (e.g. `tradetrace etl`) to migrate")
    with db.transaction():
        if db.dialect == "postgres":
            db.execute("SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.tradetrace_migrations'))")
        db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
                   "description VARCHAR NOT NULL, applied_at TIMESTAMPTZ NOT NULL)")
        version = current_version(db)  # another process may have migrated while we waited for the lock
        if version == 0:
            _refuse_foreign_tables(db)
        for m in MIGRATIONS:
            if version < m.version <= target:
                try:
                    m.apply(db)
                except driver_errors() as exc:  # rolled back with the transaction: nothing half-made
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    raise DatabaseError(f"analytics database {redact(db.url)}: migration {m.version} "
                                        f"({m.description}) failed: {first}") from None
                db.execute("INSERT INTO schema_migrations VALUES (?, ?, now())", [m.version, m.description])
                version = m.version
    return version


def _refuse_foreign_tables(db: Database) -> None:
    """A database without tradetrace's schema but with a table of one of its names (a user's own `trades`)
    is not one to create the schema in: `CREATE TABLE IF NOT EXISTS` would keep that table, and the first
    load into it failed with a driver traceback (or, with matching columns, mixed the two)."""
    marks = ", ".join("?" for _ in NAMES)
    _, rows = db.query("SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() "
                       f"AND table_name IN ({marks}) ORDER BY table_name", list(NAMES))
    if rows:
        raise DatabaseError(f"analytics database {redact(db.url)} has no tradetrace schema but already has a table "
                            f"{rows[0][0]!r} (not made by tradetrace): use another database (or PostgreSQL schema)")
