"""CLI commands of parameter sweeps: optimize."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class RunsPerSecond(ProgressColumn):
    """Throughput of the sweep (runs finished per second, rich's moving estimate)."""

    def render(self, task) -> Text:  # noqa: ANN001 - rich's Task
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.2f} runs/s" if speed else "- runs/s", style="cyan")


def optimize(
    grid: Path = typer.Argument(..., help="YAML run config with a grid: section"),
    workers: int = typer.Option(None, "--workers", "-w", min=1, help="parallel runs (default: CPU count)"),
    executor: str = typer.Option("process", "--executor", help="process (local pool) or ray"),
    ray_address: str = typer.Option(None, "--ray-address", help="join an existing Ray cluster (with --executor ray)"),
    db: str = typer.Option(None, "--db", help="database URL (default: TRADETRACE_DB or the DuckDB file)"),
    no_resume: bool = typer.Option(False, "--no-resume", help="run every combination, even ones already completed"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as one JSON object"),
) -> None:
    """Run a parameter sweep: every grid combination is a traced run recorded in the database."""
    from tradetrace.analytics.db import DatabaseError
    from tradetrace.cli import console, fail, out
    from tradetrace.config import ConfigError
    from tradetrace.engine.data import DataError
    from tradetrace.sweep.runner import run_sweep

    if executor not in ("process", "ray"):
        raise fail(f"--executor value {executor!r}: use process or ray")
    if ray_address and executor != "ray":
        raise fail("--ray-address needs --executor ray")
    show = not as_json and sys.stderr.isatty()
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), RunsPerSecond(),
                        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
                        disable=not show)
    state: dict[str, int] = {}

    def on_start(n: int) -> None:
        state["task"] = progress.add_task(grid.stem, total=n)

    def on_outcome(_out: object) -> None:
        progress.advance(state["task"])

    try:
        with progress:
            summary = run_sweep(grid, workers=workers, executor=executor, ray_address=ray_address, db_url=db,
                                resume=not no_resume, on_start=on_start, on_outcome=on_outcome)
    except (ConfigError, DataError, DatabaseError, RuntimeError) as exc:
        raise fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    if as_json:
        print(json.dumps(summary.to_dict(), default=str))
        return
    out.print(f"sweep {summary.sweep_id}: {summary.combinations} combinations, {summary.completed} completed, "
              f"{summary.failed} failed, {summary.skipped} skipped (already done), {summary.invalid} invalid; "
              f"{summary.runs_per_s:.2f} runs/s with {summary.workers} {summary.executor} worker(s)", highlight=False)
    for line in summary.invalid_examples:
        out.print(f"  invalid: {line}", markup=False, highlight=False)
    for line in summary.errors:
        out.print(f"  failed: {line}", markup=False, highlight=False)
    out.print(f"top runs: tradetrace runs --sweep {summary.sweep_id} --top 10 --by sharpe", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the sweep commands to the `tradetrace` app."""
    app.command("optimize")(optimize)
