"""Sweeps with real process pools into a real DuckDB file and a real PostgreSQL, plus the event store.

4 workers write runs at once: no lost or duplicated rows, every run's events verify in the store;
failed runs are recorded and do not stop the sweep; a finished or interrupted sweep resumes.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tradetrace.analytics.db import connect
from tradetrace.cli import app
from tradetrace.store import EventStore
from tradetrace.strategies import Strategy, StrategyParams, register
from tradetrace.sweep.runner import run_sweep

ROOT = Path(__file__).resolve().parents[2]


@register
class SweepProbe(Strategy):
    """A crossover that raises at bar `fail_at` when it is > 0 (planted failures for the sweep)."""

    name = "sweep_test_probe"

    class Params(StrategyParams):
        fast: int = 5
        slow: int = 20
        fail_at: int = 0

    def init(self) -> None:
        from tradetrace.strategies.indicators import crossover, sma

        fast, slow = self.p.fast, self.p.slow
        if fast >= slow:
            raise ValueError(f"fast ({fast}) must be below slow ({slow})")
        self.cross = self.I(lambda c: crossover(sma(c, fast), sma(c, slow)))

    def next(self, i: int) -> None:
        if self.p.fail_at and i == self.p.fail_at:
            raise RuntimeError("planted failure")
        if self.cross[i]:
            self.signal(1 if self.cross[i] > 0 else -1, reason="cross")


def grid(url: str, **axes: Any) -> dict[str, Any]:
    return {"name": "probe-grid", "data": {"synthetic": {"bars": 3000, "seed": 4}},
            "strategy": {"type": "sweep_test_probe"}, "classifiers": [{"type": "vix"}],
            "database": {"url": url}, "grid": axes or {"fast": [3, 5], "slow": [13, 21], "fail_at": [0, 700]}}


def db_rows(url: str, sweep_id: str) -> list[dict]:
    with connect(url) as db:
        cols, rows = db.query("SELECT r.correlation_id, r.sweep_id, r.status, r.error, r.run_hash, r.total_trades, "
                              "r.event_count, (SELECT count(*) FROM trades t WHERE t.correlation_id = r.correlation_id)"
                              " AS trade_rows FROM optimization_runs r WHERE r.sweep_id = ?", [sweep_id])
    out = [dict(zip(cols, r, strict=True)) for r in rows]
    for r in out:
        r["correlation_id"] = str(r["correlation_id"])  # a UUID column: uuid.UUID from both drivers
    return out


def test_four_workers_lose_and_duplicate_nothing(db_url: str) -> None:
    summary = run_sweep(grid(db_url), workers=4)
    assert (summary.completed, summary.failed, summary.skipped, summary.invalid) == (4, 4, 0, 0)
    rows = db_rows(db_url, summary.sweep_id)
    assert len(rows) == 8 and len({r["correlation_id"] for r in rows}) == 8 and len({r["run_hash"] for r in rows}) == 8
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 4 and all("planted failure" in r["error"] for r in failed)
    assert all(r["trade_rows"] == r["total_trades"] for r in rows)
    store = EventStore()
    stored = {r["run_id"]: r for r in store.runs()}
    assert set(stored) == {r["correlation_id"] for r in rows}
    assert all(stored[r["correlation_id"]]["sweep_id"] == summary.sweep_id for r in rows)
    assert all(stored[r["correlation_id"]]["event_count"] == r["event_count"] for r in rows)
    report = store.verify()
    assert len(report) == 8 and all(v["ok"] for v in report), [v["problems"] for v in report]
    # the data set's BAR prices: one market set, written by the coordinator, named by every run
    sets = [p.stem for p in (store.root / "_market").glob("*.parquet")]
    assert len(sets) == 1 and {r["market_set"] for r in stored.values()} == set(sets)


def test_non_strategy_grid_values_are_stored_in_parameters(db_url: str) -> None:
    summary = run_sweep(grid(db_url, fast=[3], slow=[21], **{"risk.stop_loss_pct": [0.5, 1.0]}), workers=2)
    assert summary.completed == 2
    with connect(db_url) as db:
        params = [json.loads(r[0]) if isinstance(r[0], str) else r[0]
                  for r in db.query("SELECT parameters FROM optimization_runs")[1]]
    assert sorted(p["risk.stop_loss_pct"] for p in params) == [0.5, 1.0]
    assert all(p["fast"] == 3 and p["slow"] == 21 for p in params)


def test_a_finished_sweep_is_skipped_and_a_partial_one_resumes(db_url: str) -> None:
    cfg = grid(db_url, fast=[3, 5, 8], slow=[21])
    cfg["store"] = {"enabled": False}  # the deleted rows' runs are nowhere else (see the next test)
    first = run_sweep(cfg, workers=2)
    assert first.completed == 3
    again = run_sweep(cfg, workers=2)
    assert (again.sweep_id, again.skipped, again.completed) == (first.sweep_id, 3, 0)
    with connect(db_url) as db:
        db.execute("DELETE FROM optimization_runs WHERE correlation_id IN (SELECT correlation_id FROM "
                   "optimization_runs WHERE sweep_id = ? ORDER BY correlation_id LIMIT 2)", [first.sweep_id])
    resumed = run_sweep(cfg, workers=2)
    assert (resumed.skipped, resumed.completed) == (1, 2)
    rows = db_rows(db_url, first.sweep_id)
    assert len(rows) == 3 and len({r["run_hash"] for r in rows}) == 3


def test_a_resumed_sweep_loads_runs_that_completed_in_the_store_instead_of_running_them_again(db_url: str) -> None:
    """A coordinator killed hard loses the rows of its last finished runs (and its workers finish the runs
    queued in them): those runs are complete in the event store. Resuming ran them again, and a later
    `tradetrace etl` loaded both: one combination twice. Their rows are now loaded from their events."""
    cfg = grid(db_url, fast=[3, 5, 8], slow=[21])
    first = run_sweep(cfg, workers=2)
    before = sorted(db_rows(db_url, first.sweep_id), key=lambda r: r["correlation_id"])
    with connect(db_url) as db:
        for table in ("trades", "event_latencies", "optimization_runs"):
            db.execute(f"DELETE FROM {table} WHERE correlation_id IN (SELECT correlation_id FROM optimization_runs "
                       "WHERE sweep_id = ? ORDER BY correlation_id LIMIT 2)", [first.sweep_id])
    resumed = run_sweep(cfg, workers=2)
    assert (resumed.skipped, resumed.completed, resumed.failed) == (3, 0, 0)
    assert sorted(db_rows(db_url, first.sweep_id), key=lambda r: r["correlation_id"]) == before
    assert len(EventStore().runs()) == 3  # nothing ran again
    res = CliRunner().invoke(app, ["etl", "--db", db_url])
    assert res.exit_code == 0, res.output
    with connect(db_url) as db:
        assert db.scalar("SELECT count(*) FROM optimization_runs") == 3


class Interrupt(Exception):
    """Stands in for Ctrl-C in the middle of a sweep."""


def test_an_interrupted_sweep_resumes_without_duplicates(db_url: str) -> None:
    cfg = grid(db_url, fast=[2, 3, 4, 5, 6, 7], slow=[21])
    seen: list[str] = []

    def stop_after_two(out: Any) -> None:
        seen.append(out.correlation_id)
        if len(seen) == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_sweep(cfg, workers=2, on_outcome=stop_after_two)
    with connect(db_url) as db:
        recorded = db.scalar("SELECT count(*) FROM optimization_runs")
    assert 2 <= recorded < 6
    resumed = run_sweep(cfg, workers=2)
    assert resumed.skipped == recorded and resumed.completed == 6 - recorded
    rows = db_rows(db_url, resumed.sweep_id)
    assert len(rows) == 6 and len({r["run_hash"] for r in rows}) == 6 and all(r["status"] == "completed" for r in rows)


def test_workers_exit_after_a_sweep_and_before_an_interrupted_one_raises(tmp_path: Path) -> None:
    """A finished sweep returns without waiting for its workers to exit, but they do exit (nothing is left
    running); an interrupted one waits for them before the interruption propagates."""
    url = str(tmp_path / "analytics.duckdb")
    summary = run_sweep(grid(url, fast=[3, 5, 8], slow=[21]), workers=2)
    assert summary.completed == 3
    deadline = time.monotonic() + 30
    while multiprocessing.active_children() and time.monotonic() < deadline:  # reaps the exited ones
        time.sleep(0.05)
    assert multiprocessing.active_children() == []

    def interrupt(out: Any) -> None:
        raise Interrupt

    with pytest.raises(Interrupt):
        run_sweep(grid(url, fast=[2, 4, 6, 7], slow=[21]), workers=2, on_outcome=interrupt)
    assert multiprocessing.active_children() == []


def test_optimize_cli_on_the_example_then_runs_lists_the_sweep() -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["optimize", str(ROOT / "examples" / "momentum_grid.yaml"), "--workers", "2", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output.strip().splitlines()[-1])
    assert summary["completed"] == 9 and summary["failed"] == 0
    res = runner.invoke(app, ["runs", "--sweep", summary["sweep_id"], "--top", "3", "--by", "sharpe", "--json"])
    top = [json.loads(x) for x in res.output.splitlines()]
    assert len(top) == 3 and [t["sharpe"] for t in top] == sorted((t["sharpe"] for t in top), reverse=True)


def test_optimize_cli_bad_grid_is_exit_2() -> None:
    res = CliRunner().invoke(app, ["optimize", str(ROOT / "examples" / "momentum.yaml")])
    assert res.exit_code == 2 and "missing key 'grid'" in res.output


def test_a_grid_without_one_valid_combination_is_exit_2_naming_the_first_reason(tmp_path: Path) -> None:
    """A dotted key the config does not have (`sizing.nope`) made every combination invalid, and the sweep
    still exited 0 with nothing run. Now it is bad input: one line, exit 2, nothing written."""
    path = tmp_path / "grid.yaml"
    path.write_text("name: g\ndata: {synthetic: {bars: 500, seed: 1}}\nstrategy: {type: sma_crossover}\n"
                    "grid: {sizing.nope: [1, 2]}\n")
    res = CliRunner().invoke(app, ["optimize", str(path), "--workers", "1"])
    assert res.exit_code == 2
    assert res.output.strip() == (f"error: {path}: none of the grid's 2 combination(s) is valid; the first, "
                                  "{'sizing.nope': 1}: unknown key 'sizing.nope' (value 1)")
    assert not (tmp_path / "tt-home").exists()
