"""Intelligent sampling: critical events and lineage kept, weights unbiased, reduction reported."""

from __future__ import annotations

import pyarrow.compute as pc

import tradetrace as tt
from tradetrace.store import EventStore

from .conftest import run_config


def test_sampling_keeps_critical_events_and_their_lineage(store: EventStore) -> None:
    cfg = run_config(bars=60_000, chunk=8_000, sampling={"enabled": True, "context": 2, "base_rate": 0.05})
    res = tt.run_backtest(cfg)
    rec = store.run(res.run_id)
    assert rec["counts"] == res.counts  # exact per-type counts are kept
    assert rec["stored_count"] < 0.6 * res.event_count  # a real reduction
    tab = store.load_events(res.run_id)
    kept = {}
    for t in tab.column("event_type").to_pylist():
        kept[t] = kept.get(t, 0) + 1
    for t in ("SIGNAL", "ORDER", "FILL", "POSITION_OPEN", "POSITION_CLOSE", "RUN_START", "RUN_END"):
        assert kept[t] == res.counts[t]
    bars = store.load_events(res.run_id, types=["BAR"])
    est = pc.sum(bars.column("weight")).as_py()
    assert abs(est - res.counts["BAR"]) < 0.1 * res.counts["BAR"]  # sum of 1/p estimates the count
    assert store.verify(res.run_id)[0]["ok"]  # every kept event's causes were kept
    t = res.trades.iloc[0]
    assert [e.event_type for e in store.find_signal_to_fill_path(t.exit_fill_id).chain] == ["FILL", "ORDER", "SIGNAL"]
