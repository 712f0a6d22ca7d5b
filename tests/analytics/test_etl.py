"""Events -> SQL: the SQL metrics equal those computed from the events and the engine's own; loads are
idempotent; the end-of-run sink and the event-store backfill give the same rows."""

from __future__ import annotations

import math
from typing import Any

import pytest

from tradetrace import RunFailed, run_backtest
from tradetrace.analytics import etl
from tradetrace.analytics.backfill import backfill
from tradetrace.analytics.db import Database, connect
from tradetrace.engine.result import BacktestResult
from tradetrace.store import EventStore
from tradetrace.strategies import Strategy, StrategyParams, register


@register
class ExplodingCrossover(Strategy):
    """Trades a fast/slow crossover, then raises at a chosen bar (a run that fails midway)."""

    name = "etl_test_exploding"

    class Params(StrategyParams):
        fail_at: int = 1500

    def init(self) -> None:
        from tradetrace.strategies.indicators import crossover, sma

        self.cross = self.I(lambda c: crossover(sma(c, 5), sma(c, 20)))

    def next(self, i: int) -> None:
        if i == self.p.fail_at:
            raise RuntimeError("planted failure")
        if self.cross[i]:
            self.signal(1 if self.cross[i] > 0 else -1, reason="cross")


def config(db_url: str | None = None, **over: Any) -> dict[str, Any]:
    cfg = {
        "name": "etl-test",
        "data": {"synthetic": {"bars": 6000, "seed": 5, "symbols": ["AAA", "BBB"]}},
        "strategy": {"type": "sma_crossover", "params": {"fast": 5, "slow": 20}},
        "execution": {"commission": {"per_share": 0.005, "minimum": 1.0}, "slippage_bps": 2},
        "risk": {"stop_loss_pct": 0.3},
        "classifiers": [{"type": "volatility", "window": 30, "lookback": 300}, {"type": "vix"}],
        "store": {"enabled": False},
        "database": {"enabled": db_url is not None, "url": db_url},
    }
    cfg.update(over)
    return cfg


@pytest.fixture(scope="module")
def result() -> BacktestResult:
    """A two-symbol run with commissions, slippage, stop-loss exits and two classifiers (events in memory)."""
    return run_backtest(config(), record_db=False)


def meta() -> etl.RunMeta:
    return etl.RunMeta.from_config({"portfolio": {"initial_cash": 100_000.0}})


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-9, abs=1e-12)
    return a == b


def snapshot(db: Database, table: str) -> list[tuple]:
    cols = {"optimization_runs": "correlation_id", "trades": "correlation_id, close_seq",
            "event_latencies": "correlation_id, event_type, source_container"}[table]
    return db.query(f"SELECT * FROM {table} ORDER BY {cols}")[1]


ENGINE_KEYS = {"sharpe": "sharpe", "sortino": "sortino", "max_drawdown": "max_drawdown",
               "total_return": "total_return", "annual_return": "annual_return", "win_rate": "win_rate",
               "profit_factor": "profit_factor", "total_trades": "trade_count", "total_commission": "total_commission",
               "total_slippage": "total_slippage", "avg_bars_held": "avg_bars_held", "final_equity": "final_equity"}


def test_sql_metrics_equal_event_metrics_and_engine_metrics(db_url: str, result: BacktestResult) -> None:
    assert result.metrics["trade_count"] > 50  # the run exercises trades, stops and both symbols
    assert {t["symbol"] for t in result.closed_trades} == {"AAA", "BBB"}
    rec = etl.records_from_events(result.events(), meta())
    with connect(db_url) as db:
        etl.write_runs(db, [rec])
        cols, rows = db.query("SELECT * FROM optimization_runs WHERE correlation_id = ?", [result.run_id])
    sql = dict(zip(cols, rows[0], strict=True))
    from_events = rec.metrics
    for col, key in ENGINE_KEYS.items():
        engine = float(result.metrics[key])
        assert same(float(from_events[col]), engine), (col, from_events[col], engine)
        assert same(float(sql[col]), engine), (col, sql[col], engine)
    assert sql["status"] == "completed" and sql["event_count"] == result.event_count
    assert sql["last_event_id"] == f"{result.run_id}:{result.event_count - 1}"
    assert sql["market_regime"] is not None and sql["volatility_regime"] is not None


def test_trade_rows_equal_the_engine_trades_with_lineage_ids(db_url: str, result: BacktestResult) -> None:
    with connect(db_url) as db:
        etl.write_runs(db, [etl.records_from_events(result.events(), meta())])
        cols, rows = db.query("SELECT * FROM trades WHERE correlation_id = ? ORDER BY close_seq", [result.run_id])
    got = [dict(zip(cols, r, strict=True)) for r in rows]
    want = result.closed_trades
    assert len(got) == len(want)
    stops = 0
    for g, w in zip(got, want, strict=True):
        assert g["close_seq"] == w["close_seq"] and g["symbol"] == w["symbol"] and g["direction"] == w["side"]
        for k in ("quantity", "entry_price", "exit_price", "pnl", "pnl_pct", "commission"):
            assert same(float(g[k]), float(w[k])), (k, g[k], w[k])
        assert g["bars_held"] == w["bars_held"] and g["exit_reason"] == w["exit_reason"]
        assert int(g["entry_time"].timestamp() * 1e6) == w["entry_time"] // 1000
        assert int(g["exit_time"].timestamp() * 1e6) == w["exit_time"] // 1000
        for k in ("entry_signal_seq", "entry_fill_seq", "exit_signal_seq", "exit_fill_seq"):
            assert g[k] == w[k], (k, g[k], w[k])
        assert g["entry_regime"] == w["entry_regimes"].get("vix")
        assert g["entry_volatility"] == w["entry_regimes"].get("volatility")
        assert g["exit_regime"] == w["exit_regimes"].get("vix")
        assert g["exit_volatility"] == w["exit_regimes"].get("volatility")
        assert g["slippage"] > 0
        stops += w["exit_signal_seq"] is None
    assert stops > 0  # stop-loss exits have no exit SIGNAL


def test_loading_twice_changes_nothing(db_url: str, result: BacktestResult) -> None:
    rec = etl.records_from_events(result.events(), meta())
    with connect(db_url) as db:
        etl.write_runs(db, [rec])
        first = {t: snapshot(db, t) for t in ("optimization_runs", "trades", "event_latencies")}
        etl.write_runs(db, [etl.records_from_events(result.events(), meta())])
        second = {t: snapshot(db, t) for t in ("optimization_runs", "trades", "event_latencies")}
        latency_types = {r[0] for r in db.query("SELECT event_type FROM event_latencies")[1]}
    assert first == second
    assert len(first["trades"]) == result.metrics["trade_count"]
    assert latency_types >= {"BAR", "SIGNAL", "ORDER", "FILL", "POSITION_CLOSE"}


def test_end_of_run_sink_and_store_backfill_give_the_same_rows(db_url: str) -> None:
    res = run_backtest(config(db_url, store={"enabled": True}))
    with connect(db_url) as db:
        runs_before, trades_before = snapshot(db, "optimization_runs"), snapshot(db, "trades")
        assert len(runs_before) == 1 and len(trades_before) == res.metrics["trade_count"]
        assert backfill(db, EventStore()) == 1
        assert backfill(db, EventStore()) == 1  # twice: still one row per run and trade
        runs_after, trades_after = snapshot(db, "optimization_runs"), snapshot(db, "trades")
    assert len(runs_after) == 1 and len(trades_after) == len(trades_before)
    for before, after in ((runs_before, runs_after), (trades_before, trades_after)):
        for rb, ra in zip(before, after, strict=True):
            assert all(same(x, y) for x, y in zip(rb, ra, strict=True)), (rb, ra)


def test_a_failed_run_is_recorded_as_failed_with_its_error(db_url: str) -> None:
    cfg = config(db_url, strategy={"type": "etl_test_exploding", "params": {"fail_at": 1500}})
    with pytest.raises(RunFailed) as info:
        run_backtest(cfg)
    res = info.value.result
    with connect(db_url) as db:
        status, error, count = db.query("SELECT status, error, event_count FROM optimization_runs "
                                        "WHERE correlation_id = ?", [res.run_id])[1][0]
        trades = db.scalar("SELECT count(*) FROM trades WHERE correlation_id = ?", [res.run_id])
    assert status == "failed" and "planted failure" in error and count == res.event_count
    assert trades == res.metrics["trade_count"]


def test_sampled_store_runs_use_engine_metrics_and_are_not_backfilled(db_url: str) -> None:
    res = run_backtest(config(db_url, store={"enabled": True, "sampling": {"enabled": True, "base_rate": 0.1}}))
    with connect(db_url) as db:
        sharpe, trades = db.query("SELECT sharpe, total_trades FROM optimization_runs WHERE correlation_id = ?",
                                  [res.run_id])[1][0]
        assert same(sharpe, res.metrics["sharpe"]) and trades == res.metrics["trade_count"]
        skipped: list[str] = []
        assert backfill(db, EventStore(), skipped=skipped) == 0
    assert len(skipped) == 1 and "sampled or lost events" in skipped[0]


def test_run_regimes_are_the_labels_in_effect_at_most_bars(result: BacktestResult) -> None:
    """market_regime / volatility_regime: the label in effect at the most BARs of the first symbol, counted
    here bar by bar from the REGIME_CHANGE events (ties: the greatest label)."""
    from collections import Counter

    ev = result.events(["BAR", "REGIME_CHANGE"]).to_pylist()
    rec = etl.records_from_events(result.events(), meta()).metrics
    for classifier, col in (("vix", "market_regime"), ("volatility", "volatility_regime")):
        label, counts = None, Counter()
        for e in ev:
            if e["event_type"] == "REGIME_CHANGE" and e["classifier"] == classifier and e["symbol"] == "AAA":
                label = e["to_label"]
            elif e["event_type"] == "BAR" and e["symbol"] == "AAA" and label is not None:
                counts[label] += 1
        assert len(counts) >= 2, (classifier, counts)  # the run lives through several regimes
        assert rec[col] == max(counts, key=lambda k: (counts[k], k)), (classifier, counts)


def test_recorded_tables_and_merged_events_give_the_same_rows(result: BacktestResult) -> None:
    """A sweep worker loads rows from its run's recorded per-type tables, whose string dictionaries are
    each batch's whole string list; the merged events hold only the values used. Same rows either way, and
    every latency row counts events that exist."""
    from_tables = etl.records_from_events(result.recorder.tables(), meta())
    from_events = etl.records_from_events(result.events(), meta())
    for name in ("run", "trades", "latencies"):
        assert getattr(from_tables, name).equals(getattr(from_events, name)), name
    lat = from_tables.latencies.to_pylist()
    assert all(r["event_count"] > 0 for r in lat)
    per_type: dict[str, int] = {}
    for r in lat:
        per_type[r["event_type"]] = per_type.get(r["event_type"], 0) + r["event_count"]
    assert per_type == result.counts


def test_a_fresh_write_loads_the_same_rows_as_a_replacing_one(db_url: str, result: BacktestResult) -> None:
    """`fresh=True` (a sweep's coordinator: new run ids, each written once) skips the deletes, nothing else."""
    tables = ("optimization_runs", "trades", "event_latencies")
    with connect(db_url) as db:
        n = etl.write_runs(db, [etl.records_from_events(result.events(), meta())], fresh=True)
        fresh = {t: snapshot(db, t) for t in tables}
        etl.write_runs(db, [etl.records_from_events(result.events(), meta())])  # replaces them
        replaced = {t: snapshot(db, t) for t in tables}
    assert fresh == replaced
    assert n == sum(len(rows) for rows in fresh.values())
