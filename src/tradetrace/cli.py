"""The `tradetrace` command line (typer). Exit codes: 0 ok, 1 run failed, 2 bad input.

Commands live next to the code they drive and register themselves here:
`run` (this file), store commands (`tradetrace.store.commands`), analytics and sweep commands
(`tradetrace.analytics.commands`, `tradetrace.sweep.commands`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

if TYPE_CHECKING:
    from tradetrace.engine.result import BacktestResult

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Event-driven backtests you can explain.")
console = Console(stderr=True)
out = Console()

PROGRESS_MIN_BARS = 200_000  # show a progress bar on runs at least this long


@app.callback()
def _root() -> None:
    """Event-driven backtests you can explain."""


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print a one-line error and return the Exit to raise."""
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:,.4f}" if abs(v) < 1e6 else f"{v:,.0f}"
    return str(v)


def metrics_table(result: BacktestResult) -> Table:
    t = Table(title=result.name, show_header=True, header_style="bold")
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
    from tradetrace.config import ConfigError, load_config
    from tradetrace.engine.backtest import RunFailed, load_data, run_backtest
    from tradetrace.engine.data import DataError

    try:
        cfg = load_config(config)
        if no_store:
            cfg = cfg.model_copy(update={"store": cfg.store.model_copy(update={"enabled": False})})
        md = load_data(cfg)
    except (ConfigError, DataError) as exc:
        raise fail(str(exc)) from None
    show = not as_json and len(md) >= PROGRESS_MIN_BARS and sys.stderr.isatty()
    try:
        if show:
            with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed:,}/"
                          "{task.total:,} bars"), TimeElapsedColumn(), TimeRemainingColumn(), console=console) as p:
                task = p.add_task(cfg.name, total=len(md))
                result = run_backtest(cfg, market=md, progress=lambda done, total: p.update(task, completed=done))
        else:
            result = run_backtest(cfg, market=md)
    except RunFailed as exc:
        if as_json:
            out.print_json(json.dumps(exc.result.to_dict(), default=str))
        raise fail(str(exc), 1) from None
    except (ConfigError, DataError, ValueError) as exc:
        raise fail(f"{config}: {exc}") from None
    if as_json:
        print(result.to_json())
        return
    out.print(f"run id: {result.run_id}  ({result.status}, {result.event_count:,} events)", highlight=False)
    out.print(metrics_table(result))
    if trace_one and result.closed_trades:
        t = result.trades.iloc[0]
        out.print(f"\n[bold]Why did trade {t.trade_id} ({t.side} {t.symbol}) close?[/] "
                  f"Lineage of its exit fill {t.exit_fill_id}:", highlight=False)
        out.print(str(result.trace(t.exit_fill_id)), markup=False, highlight=False)
    if cfg.tracing.enabled and cfg.store.enabled:
        run = result.run_id
        out.print(f"\nevents stored; explore them:\n  tradetrace events {run} --type FILL --limit 5\n"
                  f"  tradetrace trace {run}:<seq>\n  tradetrace latency {run}\n  tradetrace runs --top 10 --by sharpe",
                  markup=False, highlight=False)


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
