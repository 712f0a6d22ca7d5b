"""CLI commands of the analytics database: sql, runs, etl.

User values (filters, `--param`) are always bound as parameters; the only identifier a user picks
(`--by`) comes from a fixed list of columns.
"""

from __future__ import annotations

import json
import math
from typing import Any

import typer
from rich.table import Table
from rich.text import Text

from tradetrace.analytics.queries import SORTABLE, top_runs

DB_OPTION = typer.Option(None, "--db", help="database URL (default: TRADETRACE_DB or the DuckDB file)")


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:,.4f}" if math.isfinite(v) else str(v)
    if isinstance(v, dict | list):
        return json.dumps(v, sort_keys=True)
    return str(v)


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else str(v)
    if isinstance(v, dict | list | int | float | str | bool) or v is None:
        return v
    return str(v)


def _print_rows(cols: list[str], rows: list[tuple], as_json: bool, title: str | None = None) -> None:
    from tradetrace.cli import out

    if as_json:
        for r in rows:
            print(json.dumps({c: _jsonable(v) for c, v in zip(cols, r, strict=True)}))
        return
    t = Table(title=title, header_style="bold")
    for c in cols:
        t.add_column(c, overflow="fold")
    for r in rows:
        t.add_row(*(Text(_cell(v)) for v in r))  # values as text: a strategy name or parameter is never markup
    out.print(t)


def _print_top(cols: list[str], rows: list[tuple], title: str, by: str) -> None:
    """Runs as a table that stays readable at 80 columns: full run id, params as k=v, key metrics, and the
    sort column when it is not one of them (sorted by sortino, the table showed no sortino)."""
    from tradetrace.cli import out

    shown = {"sharpe": "sharpe", "total_return": "return", "max_drawdown": "max dd", "total_trades": "trades"}
    if by not in shown:
        shown[by] = by
    t = Table(title=title, header_style="bold", show_lines=True)
    t.add_column("run id (correlation_id)\nstrategy and parameters", overflow="fold")
    for c in shown.values():
        t.add_column(c, justify="right", no_wrap=c != by, overflow="fold")  # the extra may wrap (created_at)
    for r in rows:
        d = dict(zip(cols, r, strict=True))
        params = d["parameters"]
        if isinstance(params, str):
            params = json.loads(params)
        kv = " ".join(f"{k}={v}" for k, v in sorted((params or {}).items()))
        status = "" if d["status"] == "completed" else f" [{d['status']}]"
        t.add_row(f"{d['correlation_id']}\n{d['strategy_type']} {kv}{status}", *(_cell(d[c]) for c in shown))
    out.print(t, markup=False, highlight=False)


def sql(
    query: str = typer.Argument(..., help="one SQL statement ('?' binds the next --param; on PostgreSQL write "
                                          "the jsonb operators ?, ?|, ?& as ??, ??|, ??&)"),
    write: bool = typer.Option(False, "--write", help="allow statements that change the database"),
    params: list[str] = typer.Option(None, "--param", "-p", help="value bound to the next ? placeholder"),
    db: str = DB_OPTION,
    as_json: bool = typer.Option(False, "--json", help="one JSON object per row"),
) -> None:
    """Run SQL on the analytics database (read-only unless --write: one query, nothing written anywhere)."""
    from tradetrace.analytics import sqltext
    from tradetrace.analytics.db import DatabaseError, connect, driver_errors
    from tradetrace.cli import fail

    if not sqltext.statements(query):
        raise fail("sql: no SQL statement (the text is empty or only comments)")
    try:
        with connect(db, read_only=not write) as conn:
            cols, rows = conn.query(query, list(params) if params else None)
    except DatabaseError as exc:
        raise fail(str(exc)) from None
    except driver_errors() as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise fail(f"sql: {first}") from None
    if cols:
        _print_rows(cols, rows, as_json)


#: Statuses `--status` accepts: the database's (completed, failed) and the event store's (also incomplete, running).
STATUSES = ("completed", "failed", "incomplete", "running")
#: What the event store's runs can be sorted by (they have no metrics until `tradetrace etl` loads them).
STORE_SORTABLE = {"event_count": "event_count", "created_at": "started_wall_ns"}


def runs(
    top: int = typer.Option(10, "--top", min=1, help="how many runs"),
    by: str = typer.Option(None, "--by", help=f"sort column (default sharpe): {', '.join(SORTABLE)}"),
    strategy: str = typer.Option(None, "--strategy", help="strategy type (e.g. sma_crossover), family (momentum, "
                                 "mean_reversion, breakout) or run name"),
    sweep: str = typer.Option(None, "--sweep", help="only runs of this sweep_id"),
    regime: str = typer.Option(None, "--regime", help="only runs whose market_regime is this"),
    volatility: str = typer.Option(None, "--volatility", help="only runs whose volatility_regime is this"),
    status: str = typer.Option(None, "--status", help=f"one of {', '.join(STATUSES)}, or all (default: completed "
                               "runs from the database, every run from the event store)"),
    ascending: bool = typer.Option(False, "--asc", help="lowest first"),
    db: str = DB_OPTION,
    as_json: bool = typer.Option(False, "--json", help="one JSON object per row"),
) -> None:
    """List the best runs from the database (or the event store's runs when the database has none).

    No run matching the filters is not an error (exit 0): a note on stderr names the filters and the
    strategies there are."""
    from tradetrace.analytics.db import DatabaseError, NoDatabase, connect
    from tradetrace.cli import fail

    if by is not None and by not in SORTABLE:
        raise fail(f"--by value {by!r}: not one of {', '.join(SORTABLE)}")
    if status is not None and status not in (*STATUSES, "all"):
        raise fail(f"--status value {status!r}: not one of {', '.join(STATUSES)}, all")
    every = status == "all"
    status = None if every else status
    filters = {"strategy": strategy, "sweep": sweep, "regime": regime, "volatility": volatility, "status": status}
    # The database's best runs are completed ones unless asked: a failed run's metrics are those of the part that
    # ran before its error, and such a partial Sharpe could top the list.
    db_status = "completed" if status is None and not every else status
    try:
        with connect(db, read_only=True) as conn:
            total = conn.scalar("SELECT count(*) FROM optimization_runs")
            cols, rows = top_runs(conn, top, by or "sharpe", strategy=strategy, sweep=sweep, regime=regime,
                                  volatility=volatility, status=db_status, ascending=ascending)
            strategies = [r[0] for r in conn.query("SELECT DISTINCT strategy_type FROM optimization_runs "
                                                   "ORDER BY 1")[1]] if total and not rows else []
    except NoDatabase:
        total, cols, rows, strategies = 0, [], [], []
    except DatabaseError as exc:
        raise fail(str(exc)) from None
    if not total:
        _store_runs(top, by, filters, ascending, as_json)
    elif not rows:
        _no_match({**filters, "status": db_status}, strategies, "the database"
                  + (" (--status all lists runs of any status)" if db_status != status else ""))
    elif as_json:
        _print_rows(cols, rows, True)
    else:
        _print_top(cols, rows, f"top {top} runs by {by or 'sharpe'}", by or "sharpe")


def _no_match(filters: dict[str, str | None], strategies: list[str], where: str) -> None:
    from tradetrace.cli import console

    given = ", ".join(f"{k}={v}" for k, v in filters.items() if v is not None)
    console.print(f"no runs match ({given}); strategies in {where}: {', '.join(strategies) or 'none'}",
                  highlight=False, markup=False, soft_wrap=True)


def _store_runs(top: int, by: str | None, filters: dict[str, str | None], ascending: bool, as_json: bool) -> None:
    """The event store's runs, when the database has none: the filters that apply to them (strategy, sweep,
    status; sorted newest first, or by event_count / created_at); the others are refused, one line each."""
    from tradetrace.analytics.backfill import open_store, run_records
    from tradetrace.cli import fail

    for key in ("regime", "volatility"):
        if filters[key] is not None:
            raise fail(f"--{key} needs the analytics database, which has no runs: load the event store's runs "
                       "with `tradetrace etl` first")
    if by is not None and by not in STORE_SORTABLE:
        raise fail(f"--by value {by!r}: the analytics database has no runs and the event store's runs have no "
                   f"{by} (they sort by {' or '.join(STORE_SORTABLE)}); load them with `tradetrace etl` first")
    try:
        records = run_records(open_store())
    except RuntimeError as exc:
        raise fail(f"the database has no runs and {exc}", 1) from None
    if not records:
        raise fail("no runs in the database or the event store", 1)
    strategy, sweep, status = filters["strategy"], filters["sweep"], filters["status"]
    from tradetrace.strategies import family

    kinds = None if strategy is None else {strategy, *family(strategy)}
    matched = [r for r in records if (kinds is None or r.get("strategy") in kinds or r.get("name") == strategy)
               and (sweep is None or r.get("sweep_id") == sweep) and (status is None or r.get("status") == status)]
    key = STORE_SORTABLE[by or "created_at"]
    matched.sort(key=lambda r: r.get(key) or 0, reverse=not ascending)
    if not matched:
        _no_match(filters, sorted({str(r.get("strategy")) for r in records}), "the event store")
        return
    cols = [c for c in ("run_id", "name", "strategy", "sweep_id", "status", "event_count") if c in matched[0]]
    _print_rows(cols, [tuple(r.get(c) for c in cols) for r in matched[:top]], as_json,
                title=None if as_json else "runs in the event store (database empty: `tradetrace etl` loads them)")


def etl_command(
    db: str = DB_OPTION,
    store: str = typer.Option(None, "--store", help="event store folder (default: TRADETRACE_EVENTS)"),
    run: list[str] = typer.Option(None, "--run", help="only this run id (repeatable)"),
) -> None:
    """Backfill the database from the event store: trades, run metrics, latencies (idempotent)."""
    from tradetrace.analytics.backfill import BackfillError, backfill, check_request, open_store
    from tradetrace.analytics.db import DatabaseError, connect
    from tradetrace.cli import fail, out

    try:
        event_store = open_store(store)
        wanted = check_request(event_store, run or None)  # before the database is opened: nothing half-done
        skipped: list[str] = []
        with connect(db) as conn:
            n = backfill(conn, event_store, wanted, skipped=skipped)
            url = conn.url
    except (RuntimeError, DatabaseError, BackfillError) as exc:
        raise fail(str(exc)) from None
    out.print(f"loaded {n} run(s) into {url}", highlight=False)
    for why in skipped:
        out.print(f"  not loaded: {why}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the analytics commands to the `tradetrace` app."""
    app.command("sql")(sql)
    app.command("runs")(runs)
    app.command("etl")(etl_command)
