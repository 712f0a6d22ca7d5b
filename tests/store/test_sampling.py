"""Intelligent sampling: critical events and lineage kept, weights unbiased, reduction reported."""

from __future__ import annotations

import re

import numpy as np
import pyarrow.compute as pc
import pytest
from typer.testing import CliRunner

import tradetrace as tt
from tradetrace.cli import app
from tradetrace.store import EventStore, StoreError

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


def test_weights_are_unbiased_over_seeds_and_certain_ancestors_weigh_one(store: EventStore) -> None:
    """Weighted counts and sums of a sampled run are unbiased (Horvitz-Thompson). An event kept for certain (the
    BAR a FILL links to, the BAR behind a SIGNAL with no context window) weighs 1 whatever the draws, and a BAR
    kept as the cause of a sampled CLASSIFICATION weighs 1 / its probability of being kept that way. Before, such
    ancestors kept 1/p when drawn (expected weight 2 - p): the BAR count came out ~4% high, 50 standard errors."""
    from tradetrace.events.types import EventType
    from tradetrace.store.sampling import Sampling, sample

    cfg = run_config(bars=12_000, chunk=12_000)
    cfg["classifiers"] = [{"type": "volatility", "window": 20, "lookback": 100}]
    res = tt.run_backtest(cfg)
    tables = store._reader(res.run_id).load()
    assert 0 < res.counts["REGIME_CHANGE"] < res.counts["CLASSIFICATION"]  # CLASSIFICATIONs that are sampled
    bars = tables[EventType.BAR]
    volume = np.asarray(bars.column("volume"))
    bar_seq = bars.column("seq").to_numpy()
    fills = tables[EventType.FILL]
    certain = set(fills.column("links").combine_chunks().flatten().to_pylist())  # the BARs that priced fills
    certain |= set(tables[EventType.SIGNAL].column("causation_seq").to_pylist())  # the BARs behind signals
    estimates: dict[str, list[float]] = {t.name: [] for t in tables}
    volumes = []
    seeds = 200
    for seed in range(seeds):
        out = sample(tables, Sampling(context=0, base_rate=0.05, seed=seed))
        for t, tab in out.items():
            estimates[t.name].append(float(np.sum(tab.column("weight").to_numpy(), dtype=np.float64)))
        kept = out[EventType.BAR]
        seq, w = kept.column("seq").to_numpy(), kept.column("weight").to_numpy().astype(np.float64)
        assert np.all(w[np.isin(seq, list(certain))] == 1.0), seed
        volumes.append(float(np.sum(w * volume[np.searchsorted(bar_seq, seq)])))
    for name, exact in res.counts.items():
        e = np.asarray(estimates[name])
        se = e.std(ddof=1) / np.sqrt(seeds)
        assert abs(e.mean() - exact) <= 4 * se + 1e-6, (name, e.mean(), exact, se)
    v = np.asarray(volumes)
    assert abs(v.mean() - volume.sum()) <= 4 * v.std(ddof=1) / np.sqrt(seeds)


def test_the_rate_follows_each_symbols_own_returns_in_a_multi_symbol_run(store: EventStore) -> None:
    """Two symbols' BARs interleave: the rate must come from each symbol's own returns. It came from differences
    across symbols (log of their price ratio, the same every bar), so big moves were kept no more than quiet ones."""
    from tradetrace.events.types import EventType
    from tradetrace.store.sampling import Sampling, sample

    cfg = run_config(bars=8_000, chunk=8_000)
    cfg["data"]["synthetic"]["symbols"] = ["A", "B"]
    cfg["strategy"]["params"] = {"fast": 50, "slow": 200}
    res = tt.run_backtest(cfg)
    tables = store._reader(res.run_id).load()
    bars = tables[EventType.BAR].to_pandas()
    ret = bars.groupby("symbol", observed=True)["close"].transform(lambda c: np.log(c).diff().abs())
    quiet, busy = set(bars.seq[ret <= ret.quantile(0.1)]), set(bars.seq[ret >= ret.quantile(0.9)])
    kept_quiet = kept_busy = 0
    for seed in range(20):
        kept = set(sample(tables, Sampling(context=0, base_rate=0.02, seed=seed))[EventType.BAR]
                   .column("seq").to_pylist())
        kept_quiet += len(kept & quiet)
        kept_busy += len(kept & busy)
    assert kept_busy > 3 * kept_quiet, (kept_busy, kept_quiet)


def test_an_event_the_sampling_dropped_is_named_as_such(store: EventStore) -> None:
    """`trace RUN:SEQ` of a BAR the sampling did not keep said only "unknown event id", as for a seq that never
    existed: the error now says why."""
    res = tt.run_backtest(run_config(bars=6_000, sampling={"enabled": True, "context": 1}))
    kept = set(store.load_events(res.run_id).column("seq").to_pylist())
    gone = min(set(range(res.event_count)) - kept)
    rec = store.run(res.run_id)
    why = f"not kept by the run's sampling ({rec['stored_count']} of {res.event_count} events stored)"
    for call in (store.trace, store.lineage, store.event):
        with pytest.raises(StoreError, match=f"^unknown event id '{res.run_id}:{gone}': {re.escape(why)}$"):
            call(f"{res.run_id}:{gone}")
    with pytest.raises(StoreError, match=f"^unknown event id '{res.run_id}:{res.event_count}'$"):
        store.trace(f"{res.run_id}:{res.event_count}")  # past the run's end: never existed
    r = CliRunner().invoke(app, ["trace", f"{res.run_id}:{gone}"])
    assert r.exit_code == 2 and "not kept by the run's sampling" in r.output


def test_the_context_window_holds_across_writer_batches(store: EventStore) -> None:
    """+-k events around every critical event are kept, also where the event lies within k of a batch edge: the
    batch before it was written before this one existed, the batch after it did not exist yet. Small chunks make
    many edges (a batch per 300 bars), and a critical event falls within k of some of them."""
    k = 3
    cfg = run_config(bars=30_000, chunk=300, sampling={"enabled": True, "context": k, "base_rate": 0.02})
    res = tt.run_backtest(cfg)
    tab = store.load_events(res.run_id)
    kept = set(tab.column("seq").to_pylist())
    critical = {"SIGNAL", "ORDER", "FILL", "POSITION_OPEN", "POSITION_CLOSE", "RUN_START", "RUN_END"}
    crit = [s for s, t in zip(tab.column("seq").to_pylist(), tab.column("event_type").to_pylist(), strict=True)
            if t in critical]
    n = res.event_count
    missing = sorted({s + d for s in crit for d in range(-k, k + 1) if 0 <= s + d < n} - kept)
    assert not missing, f"{len(missing)} events of context windows dropped, e.g. seqs {missing[:5]}"
    assert len(kept) < 0.5 * n  # still a real reduction
