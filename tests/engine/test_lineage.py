"""Lineage of real runs: FILL -> ORDER -> SIGNAL -> BAR, causation order, result.trace, trade event ids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from tradetrace import run_backtest

BASE = {
    "strategy": {"type": "sma_crossover", "params": {"fast": 5, "slow": 20}},
    "execution": {"commission": {"per_share": 0.01}, "slippage_bps": 2},
    "risk": {"stop_loss_pct": 0.3, "take_profit_pct": 0.5, "max_position": 150},
    "sizing": {"type": "fixed", "quantity": 100},
    "classifiers": [{"type": "volatility", "window": 30, "lookback": 300}, {"type": "vix"}],
    "tracing": {"chunk_bars": 3_000, "bar_clock_every": 7},
    "store": {"enabled": False}, "database": {"enabled": False},
}


def _run(data: dict) -> object:
    return run_backtest({**BASE, "data": data, "portfolio": {"close_at_end": True}})


@pytest.fixture(scope="module")
def synth_run():
    return _run({"synthetic": {"bars": 12_000, "seed": 21, "freq": "1min", "symbols": ["A", "B"]}})


def _check_lineage(res) -> None:
    t = res.events()
    seq = t.column("seq").to_numpy()
    n = len(seq)
    assert np.array_equal(seq, np.arange(n))
    types = np.array(t.column("event_type").to_pylist())
    cause = t.column("causation_seq").to_pylist()
    # Every cause exists and precedes its effect; only RUN_START/RUN_END have none; BARs are caused by seq 0.
    for k in range(n):
        c = cause[k]
        if c is None:
            assert types[k] in ("RUN_START", "RUN_END")
        else:
            assert 0 <= c < k
    assert set(np.array(cause, dtype=object)[types == "BAR"]) == {0}
    for k, links in enumerate(t.column("links").to_pylist()):
        for x in links or []:
            assert 0 <= x < k
    ctype = {k: types[c] for k, c in enumerate(cause) if c is not None}
    by = {name: np.flatnonzero(types == name) for name in set(types)}
    # FILL <- ORDER <- (SIGNAL | RISK_BREACH) <- BAR: every fill traces to exactly one decision.
    assert len(by["FILL"]) > 0
    for k in by["FILL"]:
        assert ctype[k] == "ORDER"
    fill_orders = [cause[k] for k in by["FILL"]]
    assert len(set(fill_orders)) == len(fill_orders), "one FILL per ORDER"
    for k in by["ORDER"]:
        assert ctype[k] in ("SIGNAL", "RISK_BREACH")
    for k in by["SIGNAL"]:
        assert ctype[k] == "BAR"
    for k in by.get("POSITION_CLOSE", []):
        assert ctype[k] == "FILL"
    for k in by.get("POSITION_OPEN", []):
        assert ctype[k] == "FILL"
    for k in by.get("CLASSIFICATION", []):
        assert ctype[k] == "BAR"
    # Trades: entry/exit ids resolve to events of the right type; trace reaches a SIGNAL (or a breach) and a BAR.
    trades = res.trades
    assert len(trades) > 0
    for _, tr in trades.iterrows():
        assert res.event(tr.entry_fill_id).event_type == "FILL"
        assert res.event(tr.exit_fill_id).event_type == "FILL"
        assert res.event(tr.close_id).event_type == "POSITION_CLOSE"
        lin = res.trace(tr.close_id)
        kinds = [e.event_type for e in lin.chain]
        assert kinds[:3] == ["POSITION_CLOSE", "FILL", "ORDER"]
        assert kinds[-1] == "BAR"
        assert kinds[3] in ("SIGNAL", "RISK_BREACH")
        if kinds[3] == "SIGNAL":
            assert lin.find("SIGNAL").event_id == tr.exit_signal_id
        hops = lin.hops()
        assert len(hops) == len(kinds) - 1
        # Market time never runs backwards along causation; latencies are measured (not null).
        for h in hops:
            assert h["market_delay"].total_seconds() >= 0
            assert h["latency_us"] is not None and h["latency_us"] >= 0
        assert lin.total_latency_us() is not None
        entry = res.trace(tr.entry_fill_id)
        assert [e.event_type for e in entry.chain][:2] == ["FILL", "ORDER"]
        assert entry.find("SIGNAL").event_id == tr.entry_signal_id


def test_synthetic_run_lineage(synth_run) -> None:
    assert synth_run.counts.get("RISK_BREACH", 0) > 0
    _check_lineage(synth_run)


def test_next_open_fill_is_priced_by_the_next_bar_of_its_symbol(synth_run) -> None:
    res = synth_run
    fills = res.events(["FILL"]).to_pylist()
    bars = res.events(["BAR"])
    bar_by_seq = {s: k for k, s in enumerate(bars.column("seq").to_pylist())}
    opens = bars.column("open").to_pylist()
    syms = bars.column("symbol").to_pylist()
    checked = 0
    for f in fills:
        order = res.event(f["causation_seq"])
        if order.data["order_type"] != "market" or order.causation_id is None:
            continue
        lin = res.trace(f"{res.run_id}:{f['seq']}")
        decision_bar = lin.root
        assert decision_bar.event_type == "BAR"
        if not f["links"]:
            continue  # close_at_end exit: priced at the last close, no later bar
        (priced_by,) = f["links"]
        k = bar_by_seq[priced_by]
        k0 = bar_by_seq[decision_bar.sequence_number]
        assert syms[k] == syms[k0] == f["symbol"]
        assert k > k0 and f["symbol"] not in syms[k0 + 1:k], "the symbol's next bar"
        slip = 2e-4 * opens[k]
        assert f["price"] == pytest.approx(opens[k] + slip if f["side"] > 0 else opens[k] - slip, rel=1e-12)
        checked += 1
    assert checked > 10


def test_trace_accepts_seq_and_rejects_foreign_ids(synth_run) -> None:
    tr = synth_run.trades.iloc[0]
    seq = int(tr.exit_fill_id.rsplit(":", 1)[1])
    assert synth_run.trace(seq).chain[0].event_id == tr.exit_fill_id
    with pytest.raises(KeyError):
        synth_run.trace("not-this-run:5")
    with pytest.raises(ValueError):
        synth_run.trace("garbage")


def test_partition_key_names_the_store_partition_of_the_run(synth_run) -> None:
    """The store partitions a run's events by its wall-clock start date (UTC) and type, not by market time."""
    from tradetrace.store.layout import start_date

    chain = synth_run.trace(synth_run.trades.iloc[0].exit_fill_id).chain
    day = start_date(synth_run.started_wall_ns)
    assert [e.partition_key for e in chain] == [f"date={day}/event_type={e.event_type}" for e in chain]
    assert chain[-1].timestamp.date().isoformat() != day  # market time (synthetic, years ago) is another date


@pytest.mark.slow
def test_real_multi_symbol_run_lineage(shared_data: Path) -> None:
    res = _run({"symbols": {"SPY": str(shared_data / "daily/SPY_1d_1998-2021_lean.csv"),
                            "QQQ": str(shared_data / "daily/QQQ_1d_2011-2021_lean.csv")},
                "aux": {"VIX": str(shared_data / "vix/VIX_1d_1990-2026_cboe.csv")}})
    _check_lineage(res)
    bars = res.events(["BAR"])
    assert bars.num_rows == 5_849 + 2_523
    assert pa.compute.all(pa.compute.greater_equal(bars.column("seq").to_numpy()[1:] -
                                                   bars.column("seq").to_numpy()[:-1], 1)).as_py()


def test_events_of_absent_types_are_empty_typed_tables_and_unknown_types_raise() -> None:
    res = run_backtest({"data": {"synthetic": {"bars": 50}}, "strategy": {"type": "sma_crossover"},
                        "store": {"enabled": False}, "database": {"enabled": False}})
    assert res.counts.get("FILL", 0) == 0  # 50 bars, slow SMA 30: no cross before the data ends
    fills = res.events(["FILL"])
    assert fills.num_rows == 0 and {"seq", "timestamp", "price", "quantity"} <= set(fills.column_names)
    with pytest.raises(ValueError, match="unknown event type 'FILLS'"):
        res.events(["FILLS"])
