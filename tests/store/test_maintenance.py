"""Compaction, retention, verification."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import tradetrace as tt
from tradetrace.cli import app
from tradetrace.events.recorder import RunInfo
from tradetrace.store import DamagedRun, EventStore, StoreError, StoreRecorder, StoreWarning, layout

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


class _StoredAs(StoreRecorder):
    """The store's recorder writing a run under an id of the caller's choosing. The engine now accepts only
    UUID run ids, but the store takes the id its RunInfo gives (and stores written before that check hold
    any id): this writes real runs whose ids share a prefix, through the real writer."""

    def __init__(self, root: Path, run_id: str, **kw: Any) -> None:
        super().__init__(root, **kw)
        self.store_id = run_id

    def begin(self, info: RunInfo, market: Any) -> None:
        super().begin(dataclasses.replace(info, correlation_id=self.store_id), market)


def _stage_tmp(store: EventStore, run_id: str) -> Path:
    """A temporary file of the run's next segment, named as the writer names it while writing."""
    final = next(store.root.glob("date=*/event_type=BAR")) / f"{run_id}-s000099.parquet"
    tmp = layout.tmp_name(final)
    tmp.write_bytes(b"half-written segment")
    return tmp


def test_compact_and_prune_touch_only_the_runs_own_files(store: EventStore) -> None:
    """Run "run-a-s1"'s files start with "run-a-s": globs of run "run-a" (`run-a-s*.parquet`, `.run-a*.tmp`)
    matched them, so compacting or pruning run-a deleted the other run's segments and temporary files."""
    for rid, sweep in (("run-a", "sw"), ("run-a-s1", None)):
        rec = _StoredAs(store.root, rid, durability_events=2_500, mode="thread")
        tt.run_backtest(run_config(bars=8_000, chunk=2_000), recorder=rec, sweep_id=sweep)
    other = sorted(p.name for p in store.root.rglob("run-a-s1-s*.parquet"))
    assert len(other) > 10  # several segments of several types
    other_tmp, own_tmp = _stage_tmp(store, "run-a-s1"), _stage_tmp(store, "run-a")
    assert store.compact("run-a") == ["run-a"]
    assert sorted(p.name for p in store.root.rglob("run-a-s1-s*.parquet")) == other
    assert store.verify("run-a-s1")[0]["ok"] and store.verify("run-a")[0]["ok"]
    assert store.prune(sweep_id="sw") == ["run-a"]
    assert other_tmp.exists() and not own_tmp.exists()
    assert [r["run_id"] for r in store.runs()] == ["run-a-s1"]
    report = store.verify("run-a-s1")[0]
    assert report["ok"], report["problems"]
    assert not list(store.root.rglob("run-a.parquet")) and not list(store.root.rglob("run-a-s0*.parquet"))


def test_a_run_id_named_like_a_segment_file_is_refused(store: EventStore) -> None:
    """Run "x-s000001"'s compacted file would be run "x"'s segment 1: the two runs would overwrite each other."""
    with pytest.raises(StoreError, match="may not end with '-s' and 6 or more digits"):
        layout.check_run_id("run-a-s000001")
    assert layout.check_run_id("run-a-s1") == "run-a-s1"
    rec = _StoredAs(store.root, "run-a-s000000", mode="thread")
    with pytest.raises(StoreError, match="'run-a-s000000'"):
        tt.run_backtest(run_config(bars=1_000), recorder=rec)
    assert not (store.root / "_runs").exists() or not list((store.root / "_runs").iterdir())


def _tamper(store: EventStore, run_id: str, **changes: Any) -> None:
    path = layout.manifest_path(store.root, run_id)
    layout.write_json(path, {**json.loads(path.read_text()), **changes})


def test_prune_never_deletes_what_a_manifest_lists_outside_the_run(store: EventStore) -> None:
    res = [tt.run_backtest(run_config(bars=3_000)) for _ in range(2)]
    files = json.loads(layout.manifest_path(store.root, res[0].run_id).read_text())["files"]
    other = next(store.root.glob(f"date=*/event_type=BAR/{res[1].run_id}-s*.parquet")).relative_to(store.root)
    _tamper(store, res[0].run_id, files={**files, "BAR": [str(other)]})  # inside the store, another run's file
    with pytest.raises(DamagedRun, match=f"BAR file '{other}' is not one of the run's files"):
        store.run(res[0].run_id)
    victim = store.root.parent / "victim.txt"
    victim.write_text("not the store's")
    _tamper(store, res[0].run_id, files={**files, "BAR": files["BAR"] + ["../victim.txt"]})
    with pytest.warns(StoreWarning) as caught:
        assert store.prune(keep_last=0) == [res[1].run_id]
    first, second = (str(w.message) for w in caught)
    assert first.startswith(f"not pruned: damaged run {res[0].run_id}: "
                            f"{layout.manifest_path(store.root, res[0].run_id)}: BAR file '../victim.txt' is not "
                            "one of the run's files")
    assert second == "market sets not collected while a run's manifest is damaged"
    assert victim.read_text() == "not the store's"
    assert not list(store.root.rglob(f"{res[1].run_id}*"))
    assert all((store.root / f).exists() for f in files["BAR"])  # the damaged run is left as it is
    with pytest.raises(DamagedRun, match="victim.txt"):
        store.load_events(res[0].run_id)  # never opened either
    report = store.verify()
    assert [(r["run_id"], r["status"], r["ok"]) for r in report] == [(res[0].run_id, "damaged", False)]
    assert "victim.txt" in report[0]["problems"][0]
    r = CliRunner().invoke(app, ["store", "prune", "--keep-last", "0"])
    assert r.exit_code == 1 and f"{res[0].run_id}.json" in r.output, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)
    assert victim.exists()


def test_verify_and_runs_report_damaged_runs_and_check_the_others(store: EventStore) -> None:
    truncated, corrupt, sound = (tt.run_backtest(run_config(bars=3_000)).run_id for _ in range(3))
    fill = next(store.root.glob(f"date=*/event_type=FILL/{truncated}-s*.parquet"))
    with open(fill, "r+b") as f:
        f.truncate(100)
    manifest = layout.manifest_path(store.root, corrupt)
    manifest.write_text('{"run_id": "' + corrupt + '", "status": "compl')  # torn by hand, not by the store
    reports = {r["run_id"]: r for r in store.verify()}
    assert reports[sound]["ok"]
    assert not reports[truncated]["ok"] and reports[truncated]["events"] > 0  # the rest of it was checked
    rel = fill.relative_to(store.root)
    assert any(p.startswith(f"unreadable file {rel}: ") for p in reports[truncated]["problems"])
    assert reports[corrupt]["status"] == "damaged"
    assert len(reports[corrupt]["problems"]) == 1
    assert reports[corrupt]["problems"][0].startswith(f"damaged run {corrupt}: {manifest}: unreadable (Unterminated")
    r = CliRunner().invoke(app, ["store", "verify"])
    assert r.exit_code == 1 and (r.exception is None or isinstance(r.exception, SystemExit)), r.output
    lines = r.output.strip().splitlines()
    assert sum(line.startswith((truncated, corrupt, sound)) for line in lines) == 3
    assert any(line.startswith(f"{sound} completed") and line.endswith(": ok") for line in lines)
    with pytest.warns(StoreWarning, match=f"damaged run {corrupt}: {manifest}: unreadable"):
        listed = {r["run_id"] for r in store.runs()}
    assert listed == {truncated, sound}
    r = CliRunner().invoke(app, ["runs", "--json"])
    assert r.exit_code == 0, r.output
    assert {json.loads(line)["run_id"] for line in r.stdout.strip().splitlines()} == {truncated, sound}


def test_prune_by_age_and_negative_retention_is_refused(store: EventStore) -> None:
    ids = [tt.run_backtest(run_config(bars=3_000)).run_id for _ in range(3)]
    old = store.run(ids[0])["started_wall_ns"] - 10 * 86_400 * 10**9  # started ten days ago
    _tamper(store, ids[0], started_wall_ns=old)
    for bad in ({"older_than_days": -1}, {"older_than_days": float("nan")}, {"keep_last": -1}):
        with pytest.raises(StoreError, match=f"{next(iter(bad))} must be >= 0"):
            store.prune(**bad)
    for opt in ("--older-than-days", "--keep-last"):
        r = CliRunner().invoke(app, ["store", "prune", opt, "-1"])
        assert r.exit_code == 2 and f"{opt} must be >= 0, got -1" in r.output, r.output
    assert len(store.runs()) == 3
    assert store.prune(older_than_days=11) == []
    assert store.prune(older_than_days=9.5) == [ids[0]]
    assert {r["run_id"] for r in store.runs()} == set(ids[1:])
    assert not list(store.root.rglob(f"{ids[0]}*"))


def test_verify_checks_the_per_type_counts_of_a_sampled_run(store: EventStore) -> None:
    """A sampled run keeps every critical event: verify compares those counts with the recorded ones (it checked no
    count of a sampled run, so POSITION_CLOSE rows lost from a file, which nothing points at, went unnoticed)."""
    res = tt.run_backtest(run_config(bars=20_000, sampling={"enabled": True, "context": 1}))
    store.compact(res.run_id)
    assert store.verify(res.run_id)[0]["ok"]
    (path,) = store.root.glob(f"date=*/event_type=POSITION_CLOSE/{res.run_id}.parquet")
    table = pq.read_table(path)
    pq.write_table(table.slice(0, table.num_rows - 3), path)
    report = store.verify(res.run_id)[0]
    n = res.counts["POSITION_CLOSE"]
    assert not report["ok"]
    assert report["problems"] == [f"per-type counts of a sampled run (critical types are kept whole): "
                                  f"POSITION_CLOSE {n - 3} stored of {n}"]
