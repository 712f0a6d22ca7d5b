"""Compaction, retention, verification."""

from __future__ import annotations

import tradetrace as tt
from tradetrace.store import EventStore

from .conftest import run_config


def test_compact_makes_one_file_per_run_and_type(store: EventStore) -> None:
    res = tt.run_backtest(run_config(bars=20_000, chunk=2_000, durability_events=2_500))
    before = store.load_events(res.run_id)
    assert len(list(store.root.rglob(f"{res.run_id}-s*.parquet"))) > len(res.counts)
    assert store.compact() == [res.run_id]
    files = sorted(p.parent.name for p in store.root.rglob("*.parquet"))
    assert files == sorted(f"event_type={t}" for t in res.counts)
    assert store.load_events(res.run_id).to_pandas().equals(before.to_pandas())  # NaN-aware
    assert store.verify(res.run_id)[0]["ok"]
    assert store.compact(res.run_id) == []


def test_verify_reports_a_missing_segment(store: EventStore) -> None:
    res = tt.run_backtest(run_config(bars=20_000, chunk=2_000, durability_events=2_500))
    victim = sorted(store.root.rglob(f"event_type=BAR/{res.run_id}-s*.parquet"))[2]
    victim.unlink()
    with_gap = store.root / "x"
    assert not with_gap.exists()
    try:
        report = store.verify(res.run_id)[0]
    except FileNotFoundError as exc:  # the manifest lists the file: the reader names it
        assert victim.name in str(exc)
        return
    assert not report["ok"]


def test_prune_by_count_and_by_sweep(store: EventStore) -> None:
    ids = [tt.run_backtest(run_config(bars=3_000), sweep_id="sw1" if k < 2 else None).run_id for k in range(4)]
    assert store.prune(sweep_id="sw1") == sorted(ids[:2])
    assert {r["run_id"] for r in store.runs()} == set(ids[2:])
    gone = store.prune(keep_last=1)
    assert gone == [ids[2]]
    assert [r["run_id"] for r in store.runs()] == [ids[3]]
    assert not list(store.root.rglob(f"{ids[0]}*"))
