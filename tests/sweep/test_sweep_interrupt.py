"""Ctrl-C on a real `tradetrace optimize` process (SIGINT to its whole process group, as a terminal sends
it), then a resume and a backfill: every run that completed in the event store has its row, once; after
the resume there is one row per combination and no run_hash twice. Ctrl-C again stops runs in flight."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tradetrace.analytics.db import connect
from tradetrace.cli import app
from tradetrace.paths import events_dir
from tradetrace.store import EventStore
from tradetrace.store.layout import RUNS_DIR
from tradetrace.sweep.grid import load_grid
from tradetrace.sweep.runner import run_sweep, sweep_id_for

HERE = Path(__file__).resolve().parent
# `tradetrace` with the test strategies of test_sweep_workers.py registered (sweep_test_fragile)
WITH_TEST_STRATEGIES = (f"import sys; sys.path.insert(0, {str(HERE)!r}); import test_sweep_workers; "
                        "from tradetrace.cli import app; sys.argv[0] = 'tradetrace'; app()")

TRADETRACE = Path(sys.executable).with_name("tradetrace")
FAST = list(range(2, 17))  # x 2 slow values: 30 runs of 20k bars, seconds of work on 2 workers

GRID = f"""
name: ctrl-c-grid
data: {{synthetic: {{bars: 20000, seed: 7, freq: 1min, symbols: [SYN]}}}}
strategy: {{type: sma_crossover, params: {{ma: sma}}}}
sizing: {{type: fixed, quantity: 100}}
grid:
  fast: {FAST}
  slow: [30, 60]
"""


def sweep_state(db: str, sweep_id: str) -> tuple[list[tuple[str, str]], list[dict]]:
    """(rows as (correlation_id, run_hash), the sweep's runs in the event store)."""
    with connect(db) as con:
        rows = [(str(c), h) for c, h in con.query("SELECT correlation_id, run_hash FROM optimization_runs "
                                                  "WHERE sweep_id = ?", [sweep_id])[1]]
    return rows, [r for r in EventStore().runs() if r["sweep_id"] == sweep_id]


def test_ctrl_c_records_the_runs_in_flight_and_resume_adds_no_duplicates(tmp_path: Path) -> None:
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(GRID)
    db = str(tmp_path / "analytics.duckdb")
    sweep_id = sweep_id_for(load_grid(grid_file))
    n = len(FAST) * 2
    proc = subprocess.Popen([str(TRADETRACE), "optimize", str(grid_file), "--workers", "2", "--db", db, "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        manifests = events_dir() / RUNS_DIR
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline and len(list(manifests.glob("*.json"))) < 6:
            time.sleep(0.02)
        assert proc.poll() is None, "the sweep ended before it could be interrupted"
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal: the coordinator and its workers
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err  # interrupted (128 + SIGINT)

    rows, stored = sweep_state(db, sweep_id)
    assert 6 <= len(rows) < n
    assert all(r["status"] == "completed" for r in stored)  # the runs in flight finished
    assert {r["run_id"] for r in stored} == {c for c, _ in rows}  # ... and have their rows
    assert len({h for _, h in rows}) == len(rows)

    resumed = run_sweep(grid_file, workers=2, db_url=db)
    assert (resumed.skipped, resumed.completed, resumed.failed) == (len(rows), n - len(rows), 0)
    res = CliRunner().invoke(app, ["etl", "--db", db])  # the backfill finds no run without its row
    assert res.exit_code == 0, res.output
    rows, stored = sweep_state(db, sweep_id)
    assert len(rows) == n and len({h for _, h in rows}) == n and None not in {h for _, h in rows}
    assert len(stored) == n and {r["run_id"] for r in stored} == {c for c, _ in rows}


def test_ctrl_c_again_stops_a_run_that_does_not_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run hangs (its worker sleeps, pid in a file): the first Ctrl-C waits for it, the next ones stop it;
    the sweep exits, its workers are gone, and the runs that completed have their rows."""
    pid_file = tmp_path / "hung.pid"
    monkeypatch.setenv("TT_TEST_HANG_PID_FILE", str(pid_file))
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text("name: hang-grid\ndata: {synthetic: {bars: 3000, seed: 4}}\n"
                         "strategy: {type: sweep_test_fragile, params: {hang_fast: 5}}\n"
                         "grid: {fast: [2, 3, 4, 5, 6, 7, 8, 9]}\n")
    db = str(tmp_path / "analytics.duckdb")
    proc = subprocess.Popen([sys.executable, "-c", WITH_TEST_STRATEGIES, "optimize", str(grid_file), "--workers", "2",
                             "--db", db], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert pid_file.exists() and proc.poll() is None
        hung = int(pid_file.read_text())
        while proc.poll() is None and time.monotonic() < deadline:  # Ctrl-C, and again, until it stops
            os.killpg(proc.pid, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1)
        assert proc.returncode == 130, proc.communicate()[1]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert not Path(f"/proc/{hung}").exists()  # the hung worker was stopped (and reaped), not left behind
    with connect(db) as con:  # this test's own database and store: one sweep
        rows = {str(r[0]) for r in con.query("SELECT correlation_id FROM optimization_runs")[1]}
    stored = EventStore().runs()
    assert {r["run_id"] for r in stored if r["status"] == "completed"} == rows and len(rows) < 8
