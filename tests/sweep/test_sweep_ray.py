"""Sweeps on a real local Ray cluster (2 CPUs): market data put once, runs recorded on both backends."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tradetrace.analytics.db import connect
from tradetrace.store import EventStore
from tradetrace.sweep.runner import run_sweep

try:
    import ray
except ImportError:  # a developer's machine without the ray extra skips; CI installs it and must run these
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        raise
    pytest.skip("ray is not installed (pip install 'tradetrace[ray]')", allow_module_level=True)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    """One local Ray cluster for the module (init costs ~3 s)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def test_ray_sweep_records_every_run(ray_cluster: None, db_url: str) -> None:
    cfg = {"name": "ray-grid", "data": {"synthetic": {"bars": 3000, "seed": 6}},
           "strategy": {"type": "sma_crossover"}, "database": {"url": db_url},
           "grid": {"fast": [3, 5], "slow": {"start": 20, "stop": 30, "step": 10}, "ma": ["sma", "ema", "bad"]}}
    summary = run_sweep(cfg, executor="ray")
    assert (summary.executor, summary.completed, summary.failed, summary.invalid) == ("ray", 8, 0, 4)
    assert "'strategy.params.ma' value 'bad'" in summary.invalid_examples[0]
    with connect(db_url) as db:
        rows = [(str(c), s, st) for c, s, st in db.query("SELECT correlation_id, sweep_id, status "
                                                          "FROM optimization_runs")[1]]
    assert len(rows) == 8 and {r[1] for r in rows} == {summary.sweep_id} and {r[2] for r in rows} == {"completed"}
    assert {r["run_id"] for r in EventStore().runs()} == {r[0] for r in rows}
    assert all(v["ok"] for v in EventStore().verify())
    assert run_sweep(cfg, executor="ray").skipped == 8


def test_an_address_nobody_answers_at_is_one_line_exit_2(tmp_path) -> None:
    """`ray.init(address=...)` retried for ever (still waiting after 6.5 minutes) on an address without a
    cluster. A real CLI process, no cluster: it ends with one line naming the address."""
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    grid = Path(__file__).resolve().parents[2] / "examples" / "momentum_grid.yaml"
    res = subprocess.run([sys.executable, "-m", "tradetrace.cli", "optimize", str(grid), "--executor", "ray",
                          "--ray-address", f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "TRADETRACE_HOME": str(tmp_path / "home")})
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1] == (f"error: --ray-address 127.0.0.1:{port}: no Ray cluster answers "
                                                   "there (Connection refused)")
