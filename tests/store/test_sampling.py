"""Intelligent sampling: critical events and lineage kept, weights unbiased, reduction reported."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import pytest
from typer.testing import CliRunner

import tradetrace as tt
from tradetrace.cli import app
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


def test_latency_report_of_a_sampled_run_has_exact_counts_and_weighted_statistics(store: EventStore) -> None:
    cfg = run_config(bars=60_000, chunk=8_000, sampling={"enabled": True, "context": 2, "base_rate": 0.05})
    res = tt.run_backtest(cfg)
    rep = {r["event_type"]: r for r in store.latency_report(res.run_id).to_pylist()}
    assert {t: r["count"] for t, r in rep.items()} == res.counts  # the run's counts, not the rows kept
    bar = rep["BAR"]
    assert bar["estimated"] and bar["stored"] < 0.5 * bar["count"]
    assert not rep["FILL"]["estimated"] and rep["FILL"]["stored"] == res.counts["FILL"]  # kept whole: exact
    # the BAR statistics are the weighted ones: each kept BAR stands for `weight` BARs of the run
    bars = store.load_events(res.run_id, types=["BAR"]).to_pandas()
    timed = bars.dropna(subset=["emitted_at", "received_at", "processed_at"])
    proc = ((timed["processed_at"] - timed["received_at"]).dt.total_seconds() * 1e6).to_numpy()
    w = timed["weight"].to_numpy(dtype=float)
    assert bar["timed"] == len(timed) and len(set(w)) > 1
    assert bar["proc_mean_us"] == pytest.approx(float((proc * w).sum() / w.sum()), rel=1e-6)
    order = np.argsort(proc, kind="stable")
    cum = np.cumsum(w[order])
    for q in (50, 95, 99):  # the smallest value with at least q% of the weight at or below it
        assert bar[f"proc_p{q}_us"] == pytest.approx(float(proc[order][np.searchsorted(cum, q / 100 * cum[-1])]))
    r = CliRunner().invoke(app, ["latency", res.run_id])
    assert r.exit_code == 0 and "estimated from a sample" in r.output and "BAR*" in r.output
    assert "FILL*" not in r.output
