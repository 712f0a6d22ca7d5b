"""`tradetrace etl` on runs a sweep wrote: it rebuilds exactly the rows the sweep wrote (every column:
the dotted grid values in `parameters`, the `run_hash` resume depends on, the absolute event path), both
over the sweep's own rows and for runs the database lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tradetrace.analytics.db import connect
from tradetrace.cli import app
from tradetrace.sweep.runner import run_sweep

runner = CliRunner()


def runs_table(url: str) -> list[tuple]:
    with connect(url) as db:
        return [tuple(str(v) if k < 2 else v for k, v in enumerate(r))
                for r in db.query("SELECT * FROM optimization_runs ORDER BY correlation_id")[1]]


def etl(url: str) -> None:
    res = runner.invoke(app, ["etl", "--db", url])
    assert res.exit_code == 0 and "not loaded" not in res.output, res.output


def test_etl_after_a_sweep_rebuilds_the_rows_it_wrote(db_url: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRADETRACE_HOME", "relative-home")  # a relative store path, made absolute by both
    grid = {"name": "zgrid", "data": {"synthetic": {"bars": 3000, "seed": 11}},
            "strategy": {"type": "zscore_reversion", "params": {"exit": 0.5}},
            "classifiers": [{"type": "volatility", "window": 30, "lookback": 300}],
            "database": {"url": db_url}, "grid": {"window": [20], "risk.stop_loss_pct": [1.0, 2.0]}}
    summary = run_sweep(grid, workers=1)
    assert summary.completed == 2
    swept = runs_table(db_url)
    with connect(db_url) as db:
        cols = [c for c in db.query("SELECT * FROM optimization_runs LIMIT 0")[0]]
    rows = [dict(zip(cols, r, strict=True)) for r in swept]
    params = [json.loads(r["parameters"]) if isinstance(r["parameters"], str) else r["parameters"] for r in rows]
    assert sorted(p["risk.stop_loss_pct"] for p in params) == [1.0, 2.0]
    assert all(r["run_hash"] and r["sweep_id"] == summary.sweep_id for r in rows)
    assert {r["event_storage_path"] for r in rows} == {str((tmp_path / "relative-home" / "events").resolve())}

    etl(db_url)
    assert runs_table(db_url) == swept  # over the sweep's own rows: nothing changes
    with connect(db_url) as db:
        db.execute("DELETE FROM optimization_runs")
    etl(db_url)
    assert runs_table(db_url) == swept  # runs the database lost: rebuilt as the sweep wrote them

    again = run_sweep(grid, workers=1)  # the rebuilt run_hash is the sweep's: a rerun resumes past them
    assert (again.skipped, again.completed) == (2, 0)


def test_a_single_run_stores_an_absolute_event_path_and_etl_keeps_its_row(db_url: str, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from tradetrace import run_backtest

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRADETRACE_HOME", "relative-home")
    # writer thread: a writer process started by an earlier test would resolve the relative path against its
    # own working directory (a store issue, reported separately)
    run_backtest({"name": "one", "data": {"synthetic": {"bars": 3000, "seed": 2}},
                  "strategy": {"type": "sma_crossover"}, "store": {"writer": "thread"}, "database": {"url": db_url}})
    written = runs_table(db_url)
    with connect(db_url) as db:
        path = db.scalar("SELECT event_storage_path FROM optimization_runs")
    assert path == str((tmp_path / "relative-home" / "events").resolve())
    for _ in range(2):
        etl(db_url)
        assert runs_table(db_url) == written


def test_etl_rebuilds_a_single_valued_grid_key_from_the_runs_manifest(db_url: str, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A grid key with one value is in no run's config difference: the store keeps the sweep's values and
    run_hash with each run (its manifest), so rows the database lost come back whole."""
    monkeypatch.chdir(tmp_path)
    grid = {"name": "one-valued", "data": {"synthetic": {"bars": 3000, "seed": 12}},
            "strategy": {"type": "sma_crossover", "params": {"slow": 20}},
            "database": {"url": db_url}, "grid": {"fast": [4, 6], "risk.stop_loss_pct": [1.5]}}
    summary = run_sweep(grid, workers=1)
    assert summary.completed == 2
    swept = runs_table(db_url)
    with connect(db_url) as db:
        params = [json.loads(p) if isinstance(p, str) else p
                  for (p,) in db.query("SELECT parameters FROM optimization_runs")[1]]
        db.execute("DELETE FROM optimization_runs")
    assert all(p["risk.stop_loss_pct"] == 1.5 for p in params)
    etl(db_url)
    assert runs_table(db_url) == swept
