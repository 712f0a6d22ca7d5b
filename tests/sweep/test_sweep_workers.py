"""Workers that die or fail to write, with real forked workers, real signals, a real DuckDB file and a
real PostgreSQL: the run they held is recorded as failed (or its rows written by the coordinator), the
other runs go on, the sweep returns, and every combination has its row."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tradetrace.analytics.db import connect
from tradetrace.analytics.testing import pg_url, temp_schema
from tradetrace.store import EventStore
from tradetrace.strategies import Strategy, StrategyParams, register
from tradetrace.sweep.runner import run_sweep

PID_FILE_ENV = "TT_TEST_HANG_PID_FILE"


@register
class Fragile(Strategy):
    """A crossover whose worker can be made to die (`die`), to hang until killed (when `fast == hang_fast`;
    it writes its pid to $TT_TEST_HANG_PID_FILE first), or to lose its database connection before it writes
    its rows (`cut`)."""

    name = "sweep_test_fragile"

    class Params(StrategyParams):
        fast: int = 5
        slow: int = 21
        die: int = 0
        hang_fast: int = 0
        cut: int = 0

    def init(self) -> None:
        from tradetrace.strategies.indicators import crossover, sma

        if self.p.die:
            os._exit(3)  # a worker dying mid-run (OOM killer, segfault...)
        if self.p.hang_fast and self.p.fast == self.p.hang_fast:
            Path(os.environ[PID_FILE_ENV]).write_text(str(os.getpid()))
            time.sleep(600)
        if self.p.cut:
            _cut_worker_connections()
        fast, slow = self.p.fast, self.p.slow
        self.cross = self.I(lambda c: crossover(sma(c, fast), sma(c, slow)))

    def next(self, i: int) -> None:
        if self.cross[i]:
            self.signal(1 if self.cross[i] > 0 else -1, reason="cross")


def _cut_worker_connections() -> None:
    """Have PostgreSQL end this worker's cached connection: its next write fails for real."""
    import psycopg

    from tradetrace.sweep import executors

    for db in executors._DB.values():
        with psycopg.connect(pg_url(), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", [db.con.info.backend_pid])


def grid(url: str, params: dict[str, Any] | None = None, **axes: Any) -> dict[str, Any]:
    return {"name": "fragile-grid", "data": {"synthetic": {"bars": 3000, "seed": 4}},
            "strategy": {"type": "sweep_test_fragile", "params": params or {}}, "database": {"url": url}, "grid": axes}


def rows_of(url: str, sweep_id: str) -> list[dict[str, Any]]:
    with connect(url) as db:
        cols, rows = db.query("SELECT r.correlation_id, r.status, r.error, r.run_hash, r.parameters, r.total_trades, "
                              "(SELECT count(*) FROM trades t WHERE t.correlation_id = r.correlation_id) AS trade_rows "
                              "FROM optimization_runs r WHERE r.sweep_id = ?", [sweep_id])
    out = [dict(zip(cols, r, strict=True)) for r in rows]
    for r in out:
        r["correlation_id"] = str(r["correlation_id"])
        r["parameters"] = json.loads(r["parameters"]) if isinstance(r["parameters"], str) else r["parameters"]
    return out


def assert_store_agrees(rows: list[dict[str, Any]], sweep_id: str) -> None:
    """Every run of the sweep that completed in the event store has its row."""
    stored = [r for r in EventStore().runs() if r["sweep_id"] == sweep_id and r["status"] == "completed"]
    assert {r["run_id"] for r in stored} <= {r["correlation_id"] for r in rows}


def test_a_worker_that_dies_fails_only_its_run(db_url: str) -> None:
    summary = run_sweep(grid(db_url, fast=[2, 3, 4, 5, 6, 7], die=[0, 1]), workers=2)
    assert (summary.completed, summary.failed) == (6, 6)
    rows = rows_of(db_url, summary.sweep_id)
    assert len(rows) == 12 and len({r["run_hash"] for r in rows}) == 12
    failed = [r for r in rows if r["status"] == "failed"]
    assert sorted(r["parameters"]["fast"] for r in failed) == [2, 3, 4, 5, 6, 7]
    assert all(r["parameters"]["die"] == 1 and r["error"] == "worker crashed: exited with code 3" for r in failed)
    assert all(r["trade_rows"] == r["total_trades"] for r in rows if r["status"] == "completed")
    assert_store_agrees(rows, summary.sweep_id)
    assert workers_exit()


def workers_exit() -> bool:
    """The sweep's workers are gone (a finished sweep does not wait for them: they exit on their own)."""
    deadline = time.monotonic() + 30
    while multiprocessing.active_children() and time.monotonic() < deadline:  # reaps the exited ones
        time.sleep(0.05)
    return multiprocessing.active_children() == []


def test_a_worker_killed_mid_run_fails_that_run_only(db_url: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGKILL, from outside, of the worker holding one run (it hangs until killed): that run is failed,
    every other one completes, a new worker takes over, the sweep returns with every combination's row."""
    pid_file = tmp_path / "hung.pid"
    monkeypatch.setenv(PID_FILE_ENV, str(pid_file))
    killed: list[int] = []

    def kill_the_hung_worker() -> None:
        deadline = time.monotonic() + 120
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        pid = int(pid_file.read_text())
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    killer = threading.Thread(target=kill_the_hung_worker, daemon=True)
    killer.start()
    summary = run_sweep(grid(db_url, {"hang_fast": 3}, fast=[2, 3, 4, 5, 6, 7, 8, 9]), workers=2)
    killer.join(timeout=10)
    assert len(killed) == 1
    assert (summary.completed, summary.failed) == (7, 1)
    rows = rows_of(db_url, summary.sweep_id)
    assert len(rows) == 8 and len({r["run_hash"] for r in rows}) == 8
    failed = [r for r in rows if r["status"] == "failed"]
    assert [(r["parameters"]["fast"], r["error"]) for r in failed] == [(3, "worker crashed: killed by SIGKILL")]
    assert all(r["trade_rows"] == r["total_trades"] for r in rows if r["status"] == "completed")
    assert_store_agrees(rows, summary.sweep_id)
    assert workers_exit()


@pytest.fixture()
def pg(postgres_ready: None) -> Any:
    with temp_schema() as url:
        yield url


def test_postgres_rows_a_worker_could_not_write_are_written_by_the_coordinator(
        pg: str, capfd: pytest.CaptureFixture[str]) -> None:
    """PostgreSQL ends a worker's connection before its write (`cut`): the write fails for real, the
    coordinator writes that run's rows (it completed: its events are in the store), the worker reconnects."""
    summary = run_sweep(grid(pg, fast=[3, 5, 7], cut=[0, 1]), workers=1)
    assert (summary.completed, summary.failed) == (6, 0)
    rows = rows_of(pg, summary.sweep_id)
    assert len(rows) == 6 and len({r["run_hash"] for r in rows}) == 6 and {r["status"] for r in rows} == {"completed"}
    assert all(r["trade_rows"] == r["total_trades"] for r in rows if r["status"] == "completed")
    assert_store_agrees(rows, summary.sweep_id)
    assert capfd.readouterr().err.count("the worker could not write its rows") == 3
