"""Compaction, retention, verification."""

from __future__ import annotations

import pyarrow.parquet as pq

import tradetrace as tt
from tradetrace.store import EventStore

from .conftest import run_config


def test_compact_makes_one_file_per_run_and_type(store: EventStore) -> None:
    res = tt.run_backtest(run_config(bars=20_000, chunk=2_000, durability_events=2_500))
    before = store.load_events(res.run_id)
    assert len(list(store.root.rglob(f"{res.run_id}-s*.parquet"))) > len(res.counts)
    assert store.compact() == [res.run_id]
    files = sorted(p.parent.name for p in store.root.glob("date=*/*/*.parquet"))
    assert files == sorted(f"event_type={t}" for t in res.counts)
    assert [p.name for p in (store.root / "_runs").glob("*.parquet")] == [f"{res.run_id}.seqindex.parquet"]
    assert store.load_events(res.run_id).to_pandas().equals(before.to_pandas())  # NaN-aware
    assert store.verify(res.run_id)[0]["ok"]
    assert store.compact(res.run_id) == []


def test_verify_reports_a_missing_segment(store: EventStore) -> None:
    res = tt.run_backtest(run_config(bars=20_000, chunk=2_000, durability_events=2_500))
    victim = sorted(store.root.rglob(f"event_type=BAR/{res.run_id}-s*.parquet"))[2]
    lost = pq.read_metadata(victim).num_rows
    victim.unlink()
    report = store.verify(res.run_id)[0]
    assert report["ok"] is False
    assert any("missing" in p and victim.name in p for p in report["problems"])
    assert report["events"] == res.event_count - lost  # the rest of the run was still checked
    assert any("not gapless" in p for p in report["problems"])


def test_prune_by_count_and_by_sweep(store: EventStore) -> None:
    ids = [tt.run_backtest(run_config(bars=3_000), sweep_id="sw1" if k < 2 else None).run_id for k in range(4)]
    assert store.prune(sweep_id="sw1") == sorted(ids[:2])
    assert {r["run_id"] for r in store.runs()} == set(ids[2:])
    gone = store.prune(keep_last=1)
    assert gone == [ids[2]]
    assert [r["run_id"] for r in store.runs()] == [ids[3]]
    assert not list(store.root.rglob(f"{ids[0]}*"))


def test_compacted_run_answers_lineage_from_its_seq_index(store: EventStore) -> None:
    res = tt.run_backtest(run_config(bars=20_000, chunk=2_000, durability_events=2_500))
    fill = res.trades.iloc[2].exit_fill_id
    before = [e.event_id for e in store.find_signal_to_fill_path(fill).chain]
    desc_before = store.lineage(res.trades.iloc[2].exit_order_id).descendants
    store.compact(res.run_id)
    assert [e.event_id for e in store.find_signal_to_fill_path(fill).chain] == before
    assert store.lineage(res.trades.iloc[2].exit_order_id).descendants.equals(desc_before)
    fills = next(store.root.glob("date=*/event_type=FILL/*.parquet"))
    assert all(rg.num_rows <= 8_192 for rg in (pq.ParquetFile(fills).metadata.row_group(g)
                                                for g in range(pq.ParquetFile(fills).metadata.num_row_groups)))
