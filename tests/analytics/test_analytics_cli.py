"""`tradetrace sql`, `runs` and `etl` on both backends: read-only by default, values always bound."""

from __future__ import annotations

import json
import random
import uuid

import pytest
from typer.testing import CliRunner

from tradetrace import run_backtest
from tradetrace.analytics import etl
from tradetrace.analytics.db import connect
from tradetrace.cli import app

runner = CliRunner()


def seed_runs(url: str, n: int = 40, seed: int = 3) -> list[dict]:
    """n run rows with random metrics over two strategies and two regimes."""
    rng = random.Random(seed)
    rows = []
    for k in range(n):
        cid = str(uuid.UUID(int=rng.getrandbits(128)))
        rows.append({"run_id": cid, "correlation_id": cid, "strategy_type": ("alpha", "beta")[k % 2],
                     "market_regime": ("calm", "storm")[(k // 2) % 2], "status": "completed",
                     "parameters": json.dumps({"k": k}), "sharpe": rng.uniform(-2, 3) if k % 7 else None,
                     "total_return": rng.uniform(-0.2, 0.4), "total_trades": rng.randint(0, 500)})
    with connect(url) as db:
        etl.write_runs(db, [etl.RunRecords(r["correlation_id"], etl.run_table([r])) for r in rows])
    return rows


def lines(output: str) -> list[dict]:
    return [json.loads(x) for x in output.splitlines() if x.startswith("{")]


def test_runs_top_by_sharpe_with_strategy_and_regime_filters(db_url: str) -> None:
    rows = seed_runs(db_url)
    res = runner.invoke(app, ["runs", "--top", "5", "--by", "sharpe", "--strategy", "alpha", "--regime", "storm",
                              "--db", db_url, "--json"])
    assert res.exit_code == 0, res.output
    want = sorted((r for r in rows if r["strategy_type"] == "alpha" and r["market_regime"] == "storm"
                   and r["sharpe"] is not None), key=lambda r: -r["sharpe"])[:5]
    assert [g["correlation_id"] for g in lines(res.output)] == [w["correlation_id"] for w in want]


def test_runs_values_are_bound_never_pasted(db_url: str) -> None:
    seed_runs(db_url)
    res = runner.invoke(app, ["runs", "--strategy", "alpha' OR '1'='1", "--db", db_url, "--json"])
    assert res.exit_code == 0 and lines(res.output) == []
    res = runner.invoke(app, ["runs", "--by", "sharpe; DROP TABLE trades", "--db", db_url])
    assert res.exit_code == 2 and "--by value" in res.output
    with connect(db_url) as db:
        assert db.scalar("SELECT count(*) FROM optimization_runs") == 40
        assert db.scalar("SELECT count(*) FROM trades") == 0


@pytest.mark.parametrize("statement", ["DELETE FROM optimization_runs", "SELECT 1; DELETE FROM optimization_runs"])
def test_sql_is_read_only_unless_write(db_url: str, statement: str) -> None:
    seed_runs(db_url)
    res = runner.invoke(app, ["sql", statement, "--db", db_url])
    assert res.exit_code == 2 and "error" in res.output
    with connect(db_url) as db:
        assert db.scalar("SELECT count(*) FROM optimization_runs") == 40
    res = runner.invoke(app, ["sql", "DELETE FROM optimization_runs WHERE strategy_type = ?", "-p", "beta",
                              "--write", "--db", db_url])
    assert res.exit_code == 0, res.output
    with connect(db_url) as db:
        assert db.scalar("SELECT count(*) FROM optimization_runs") == 20


def test_sql_binds_parameters_and_prints_json(db_url: str) -> None:
    rows = seed_runs(db_url)
    res = runner.invoke(app, ["sql", "SELECT count(*) AS n FROM optimization_runs WHERE strategy_type = ? "
                              "AND total_trades > ?", "-p", "beta", "-p", "250", "--db", db_url, "--json"])
    assert res.exit_code == 0, res.output
    assert lines(res.output) == [{"n": sum(r["strategy_type"] == "beta" and r["total_trades"] > 250 for r in rows)}]


def test_sql_error_is_one_line_exit_2(db_url: str) -> None:
    res = runner.invoke(app, ["sql", "SELECT nope FROM optimization_runs", "--db", db_url])
    assert res.exit_code == 2 and res.output.count("error:") == 1


def test_etl_backfills_the_event_store_idempotently(db_url: str) -> None:
    cfg = {"name": "etl-cli", "data": {"synthetic": {"bars": 3000, "seed": 9}},
           "strategy": {"type": "sma_crossover", "params": {"fast": 5, "slow": 20}}, "database": {"enabled": False}}
    ids = {run_backtest(cfg).run_id, run_backtest(cfg).run_id}
    for _ in range(2):
        res = runner.invoke(app, ["etl", "--db", db_url])
        assert res.exit_code == 0 and "loaded 2 run(s)" in res.output, res.output
    with connect(db_url) as db:
        assert {str(r[0]) for r in db.query("SELECT correlation_id FROM optimization_runs")[1]} == ids
        per_run = db.query("SELECT r.correlation_id, r.total_trades, count(t.close_seq) FROM optimization_runs r "
                           "LEFT JOIN trades t ON t.correlation_id = r.correlation_id GROUP BY 1, 2")[1]
    assert all(total == n for _, total, n in per_run)


def test_runs_falls_back_to_the_event_store_when_the_database_is_empty() -> None:
    cfg = {"name": "store-only", "data": {"synthetic": {"bars": 2000, "seed": 9}},
           "strategy": {"type": "sma_crossover"}, "database": {"enabled": False}}
    rid = run_backtest(cfg).run_id
    res = runner.invoke(app, ["runs", "--json"])
    assert res.exit_code == 0, res.output
    assert [r["run_id"] for r in lines(res.output)] == [rid]
