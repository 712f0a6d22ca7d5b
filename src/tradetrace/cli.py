"""The `tradetrace` command line (typer). Exit codes: 0 ok, 1 run failed, 2 bad input.

Commands live next to the code they drive and register themselves here:
`run` (this file), store commands (`tradetrace.store.commands`), analytics and sweep commands
(`tradetrace.analytics.commands`, `tradetrace.sweep.commands`).
"""

from __future__ import annotations

import json
import shlex
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from tradetrace.config import RunConfig
    from tradetrace.engine.result import BacktestResult

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Event-driven backtests you can explain.")
console = Console(stderr=True)
out = Console()

PROGRESS_MIN_BARS = 200_000  # show a progress bar on runs at least this long


@app.callback()
def _root() -> None:
    """Event-driven backtests you can explain."""
    warnings.showwarning = show_warning


def show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: TextIO | None = None, line: str | None = None) -> None:
    """Warnings as one line each (`warning: <file>: row N ...`): Python's default format adds the warning's
    source file and line, which says nothing to someone running a config. Library users keep the
    warnings (DataWarning...) and Python's format."""
    kind = "" if issubclass(category, UserWarning) else f"{category.__name__}: "
    console.print(Text.assemble(("warning:", "bold yellow"), f" {kind}{message}"), highlight=False, soft_wrap=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print a one-line error and return the Exit to raise. The message is printed as text, never as rich
    markup: it echoes user values (keys, names, file paths) that may contain `[...]`."""
    console.print(Text.assemble(("error:", "bold red"), f" {message}"), highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:,.4f}" if abs(v) < 1e6 else f"{v:,.0f}"
    return str(v)


def metrics_table(result: BacktestResult) -> Table:
    t = Table(title=Text(result.name), show_header=True, header_style="bold")  # a user value: no markup
    t.add_column("metric")
    t.add_column("value", justify="right")
    keys = ["total_return", "annual_return", "sharpe", "sortino", "max_drawdown", "win_rate", "profit_factor",
            "trade_count", "exposure", "total_commission", "final_equity"]
    for k in keys:
        if k in result.metrics:
            t.add_row(k, _fmt(result.metrics[k]))
    t.add_row("events", f"{result.event_count:,}")
    t.add_row("bars/s", f"{result.bars / max(result.elapsed_s, 1e-9):,.0f}")
    return t


@app.command()
def run(
    config: Path = typer.Argument(..., help="YAML run config"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object (run_id, metrics, trades...)"),
    no_store: bool = typer.Option(False, "--no-store", help="keep events in memory only"),
    trace_one: bool = typer.Option(False, "--trace", help="also print the lineage of one trade"),
) -> None:
    """Run one traced backtest."""
    # The engine (and pandas, which it needs) is imported by the command that runs it, not by every command:
    # `tradetrace runs`, `sql`, `events`... start ~0.3 s sooner.
    from tradetrace.analytics.db import DatabaseError
    from tradetrace.config import ConfigError, load_config
    from tradetrace.engine.backtest import RunFailed, load_data, run_backtest
    from tradetrace.engine.data import DataError
    from tradetrace.events.event import new_run_id

    try:
        cfg = load_config(config)
        if no_store:
            cfg = cfg.model_copy(update={"store": cfg.store.model_copy(update={"enabled": False})})
    except ConfigError as exc:
        raise fail(str(exc)) from None
    if trace_one and not cfg.tracing.enabled:  # a usage error: found before running, not after
        raise fail(f"{config}: --trace needs the run's events, and 'tracing.enabled' is false")
    try:
        md = load_data(cfg)
    except DataError as exc:
        raise fail(f"{config}: {exc}") from None
    show = not as_json and len(md) >= PROGRESS_MIN_BARS and sys.stderr.isatty()
    run_id = new_run_id()  # chosen here: printed even when the run happened but its database row failed
    try:
        if show:
            with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed:,}/"
                          "{task.total:,} bars"), TimeElapsedColumn(), TimeRemainingColumn(), console=console) as p:
                task = p.add_task(escape(cfg.name), total=len(md))  # formatted as markup
                result = run_backtest(cfg, market=md, correlation_id=run_id,
                                      progress=lambda done, total: p.update(task, completed=done))
        else:
            result = run_backtest(cfg, market=md, correlation_id=run_id)
    except RunFailed as exc:
        if as_json:
            print(json.dumps(exc.result.to_dict(), default=str))
        raise fail(str(exc), 1) from None
    except DatabaseError as exc:  # the database is written last: the run and its events are done
        raise fail(_not_recorded(config, cfg, run_id, str(exc))) from None
    except (ConfigError, DataError, ValueError) as exc:
        raise fail(f"{config}: {exc}") from None
    stored = _stored_count(cfg, result.run_id)
    if as_json:
        d = result.to_dict()  # event ids are null when tracing was off (no events to point to)
        if stored is not None:
            d["stored_event_count"] = stored
        print(json.dumps(d, default=str))
        return
    kept = "" if stored is None else (f", {stored:,} stored by sampling: "
                                      f"{result.event_count / max(stored, 1):.1f}x fewer")
    out.print(f"run id: {result.run_id}  ({result.status}, {result.event_count:,} events{kept})", highlight=False)
    out.print(metrics_table(result))
    if trace_one and result.closed_trades:
        t = result.trades.iloc[0]
        out.print(Text.assemble((f"\nWhy did trade {t.trade_id} ({t.side} {t.symbol}) close?", "bold"),
                                f" Lineage of its exit fill {t.exit_fill_id}:"), highlight=False)
        out.print(str(result.trace(t.exit_fill_id)), markup=False, highlight=False)
    if cfg.tracing.enabled and cfg.store.enabled:
        run = result.run_id
        out.print(f"\nevents stored; explore them:\n  tradetrace events {run} --type FILL --limit 5\n"
                  f"  tradetrace trace {run}:<seq>\n  tradetrace latency {run}\n  tradetrace runs --top 10 --by sharpe",
                  markup=False, highlight=False)


def _stored_count(cfg: RunConfig, run_id: str) -> int | None:
    """Events the store kept of a sampled run (the reduction sampling achieved); None if it was not sampled."""
    if not (cfg.tracing.enabled and cfg.store.enabled and cfg.store.sampling.enabled):
        return None
    from tradetrace.store import EventStore

    return int(EventStore(cfg.store.path).run(run_id)["stored_count"])


def _not_recorded(config: Path, cfg: RunConfig, run_id: str, why: str) -> str:
    """One line for a run that happened but whose database row could not be written: its id, and how to
    load it later from its stored events (or why it cannot be)."""
    from tradetrace.analytics.db import redact

    run = f"run {run_id} happened but is not in the database"
    if not (cfg.tracing.enabled and cfg.store.enabled):
        return f"{config}: {why}; {run}, and its events were not stored (tracing or store off): it cannot be loaded"
    cmd = ["tradetrace", "etl", "--run", run_id]
    cmd += ["--store", cfg.store.path] if cfg.store.path else []
    cmd += ["--db", redact(cfg.database.url)] if cfg.database.url else []
    return f"{config}: {why}; {run}; its events are stored: once the database is reachable, load it with " \
           f"`{shlex.join(cmd)}`"


def _register_commands() -> None:
    from tradetrace.analytics import commands as analytics_commands
    from tradetrace.store import commands as store_commands
    from tradetrace.sweep import commands as sweep_commands

    store_commands.register(app)
    analytics_commands.register(app)
    sweep_commands.register(app)


_register_commands()


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
