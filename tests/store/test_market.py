"""Market sets: a data set's BAR prices stored once, shared by its runs, joined back by every reader."""

from __future__ import annotations

import os
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

import tradetrace as tt
from tradetrace.engine import synthetic
from tradetrace.store import EventStore, StoreError, market, service

from .conftest import run_config


def _bar_files(store: EventStore, run_id: str) -> list[Path]:
    from tradetrace.store.reader import run_record

    return [store.root / f for f in run_record(store.root, run_id)["files"]["BAR"]]


@pytest.mark.parametrize("mode", ["process", "thread"])
def test_runs_on_one_data_set_share_one_market_set(store: EventStore, mode: str) -> None:
    md, _ = synthetic.generate(12_000, seed=5, freq="1min")
    runs = [tt.run_backtest(run_config(bars=12_000, chunk=5_000, writer=mode), market=md) for _ in range(2)]
    if mode == "process":  # the third run's writer is the fresh process: it gets the data set whole
        service.service().ready(wait=True)
        runs.append(tt.run_backtest(run_config(bars=12_000, chunk=5_000, writer=mode), market=md))
        # the first run's writer computed the key; the engine kept it from that run's manifest for later runs
        assert md.derived["market_set"] == store.run(runs[0].run_id)["market_set"]
    with pytest.raises(ValueError, match="read-only"):  # from its first run on, a data set cannot change
        md.close[0] = 1.0
    key = market.content_key(md)
    assert [store.run(r.run_id)["market_set"] for r in runs] == [key] * len(runs)
    sets = list((store.root / market.MARKET_DIR).glob("*.parquet"))
    assert [p.stem for p in sets] == [key]
    stored = pq.read_table(sets[0])
    assert stored.num_rows == len(md)
    np.testing.assert_array_equal(stored.column("close").to_numpy().astype(float), md.close)  # DECIMAL, exact
    for r in runs:
        for f in _bar_files(store, r.run_id):  # the run's BAR files: every event, references instead of prices
            names = pq.read_schema(f).names
            assert "market_row" in names and "close" not in names
        loaded = store.load_events(r.run_id)
        mem = tt.run_backtest({**run_config(bars=12_000, chunk=5_000), "store": {"enabled": False}}, market=md)
        assert loaded.schema.equals(mem.events().schema)  # prices back: the in-memory events' schema and values
        same = ["seq", "event_type", "timestamp", "symbol", "open", "high", "low", "close", "volume", "pnl"]
        assert loaded.select(same).to_pandas().equals(mem.events().select(same).to_pandas())  # NaN-aware
        bars = store.load_events(r.run_id, types=["BAR"])
        np.testing.assert_array_equal(bars.column("close").to_numpy(), md.close)


def test_sql_joins_bar_events_to_their_prices(store: EventStore) -> None:
    md, _ = synthetic.generate(6_000, seed=8, freq="1min")
    run = tt.run_backtest(run_config(bars=6_000), market=md)
    sql = (f"SELECT b.seq, m.open, m.close FROM read_parquet('{store.root}/*/event_type=BAR/*.parquet', "
           f"hive_partitioning=true) b JOIN read_parquet('{store.root}/_market/*.parquet') m "
           f"USING (market_set, market_row) WHERE b.correlation_id = '{run.run_id}' ORDER BY b.seq")
    seq, opens, closes = (np.array(c) for c in zip(*duckdb.sql(sql).fetchall(), strict=True))
    bars = store.load_events(run.run_id, types=["BAR"])
    np.testing.assert_array_equal(seq, bars.column("seq").to_numpy())
    np.testing.assert_array_equal(closes.astype(float), bars.column("close").to_numpy())
    np.testing.assert_array_equal(opens.astype(float), md.open)


def test_compaction_lookup_and_sampling_keep_the_references(store: EventStore) -> None:
    md, _ = synthetic.generate(9_000, seed=6, freq="1min")
    run = tt.run_backtest(run_config(bars=9_000, chunk=2_000), market=md)
    before = store.load_events(run.run_id)
    assert store.compact(run.run_id) == [run.run_id]
    (f,) = _bar_files(store, run.run_id)
    assert "market_row" in pq.read_schema(f).names
    assert store.load_events(run.run_id).to_pandas().equals(before.to_pandas())
    bar = store.event(f"{run.run_id}:{before.column('seq')[100].as_py()}")  # a point lookup of a BAR
    assert bar.column("close")[0].as_py() == before.column("close")[100].as_py()
    from tradetrace.store.reader import RunReader

    reader = RunReader(store.root, run.run_id)  # a lineage step reads the BAR's row group, not the whole set
    last = before.num_rows - 2  # the last BAR (the run ends with RUN_END)
    assert reader.lookup(before.column("seq")[last].as_py()).column("close")[0].as_py() == md.close[-1]
    assert not reader._payloads._sets and len(reader._payloads._groups) == 1
    assert store.verify(run.run_id)[0]["ok"]
    sampled = tt.run_backtest(run_config(bars=9_000, sampling={"enabled": True, "base_rate": 0.05}), market=md)
    bars = store.load_events(sampled.run_id, types=["BAR"])
    assert 0 < bars.num_rows < 9_000
    rows = np.searchsorted(md.ts, bars.column("timestamp").cast("int64").to_numpy())
    np.testing.assert_array_equal(bars.column("close").to_numpy(), md.close[rows])  # each kept BAR its own price


def test_prune_deletes_sets_no_run_refers_to(store: EventStore) -> None:
    a, _ = synthetic.generate(3_000, seed=1, freq="1min")
    b, _ = synthetic.generate(3_000, seed=2, freq="1min")
    ra = tt.run_backtest(run_config(bars=3_000), market=a)
    tt.run_backtest(run_config(bars=3_000), market=b)
    assert len(list((store.root / market.MARKET_DIR).glob("*.parquet"))) == 2
    stale = store.root / market.MARKET_DIR / ".deadbeef.parquet.1.1.tmp"  # a killed writer's leftover
    stale.write_bytes(b"torn")
    os.utime(stale, (time.time() - 2 * market.STALE_TMP_S,) * 2)
    fresh = store.root / market.MARKET_DIR / ".cafe.parquet.2.2.tmp"  # a writer still writing
    fresh.write_bytes(b"partial")
    assert store.prune(keep_last=1) == [ra.run_id]
    assert [p.stem for p in (store.root / market.MARKET_DIR).glob("*.parquet")] == [market.set_key(b)]
    assert not stale.exists() and fresh.exists()
    ra2 = tt.run_backtest(run_config(bars=3_000), market=a)  # a set deleted is written again by its next run
    assert store.load_events(ra2.run_id, types=["BAR"]).column("close").to_numpy().tolist() == a.close.tolist()


def test_a_missing_market_set_is_a_clear_error_and_a_verify_finding(store: EventStore) -> None:
    md, _ = synthetic.generate(3_000, seed=4, freq="1min")
    run = tt.run_backtest(run_config(bars=3_000), market=md)
    market.set_path(store.root, market.set_key(md)).unlink()
    with pytest.raises(StoreError, match="market set .* is missing"):
        store.load_events(run.run_id)
    assert store.load_events(run.run_id, types=["FILL"]).num_rows == run.counts["FILL"]  # the rest still reads
    (report,) = store.verify(run.run_id)
    assert not report["ok"] and any("market set" in p for p in report["problems"])


def test_the_key_is_the_content() -> None:
    a, _ = synthetic.generate(2_000, seed=1, freq="1min")
    b, _ = synthetic.generate(2_000, seed=1, freq="1min")
    assert market.set_key(a) == market.set_key(b)  # same rows, another object (or process): one set
    c, _ = synthetic.generate(2_000, seed=1, freq="1min")
    c.close = c.close.copy()
    c.close[1_000] += 0.01
    c.derived.clear()
    assert market.set_key(c) != market.set_key(a)
    with pytest.raises(ValueError, match="read-only"):  # a hashed data set cannot change under its key
        a.close[0] = 1.0
    with pytest.raises(StoreError):
        market.set_path(Path("/tmp"), "../../etc")
