"""Store maintenance: compaction (one file per run and type), retention, and verification.

Compaction rewrites a finished run's segments as one file per type, then switches the manifest to the
new files atomically, then deletes the segments: a reader or a crash at any point sees either the old
complete set or the new one. Verification checks what "zero loss" means (DESIGN.md): gapless seq
(for unsampled runs), every causation_seq and link pointing at a stored event, per-type counts equal
to the counts the bus reported.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tradetrace.events.types import EventType
from tradetrace.store import codec, layout, market
from tradetrace.store.reader import RunReader, SeqIndex, run_record

FINISHED = ("completed", "failed", "incomplete")


def run_ids(root: Path) -> list[str]:
    d = root / layout.RUNS_DIR
    return sorted(p.stem for p in d.glob("*.json")) if d.is_dir() else []


def compact_run(root: Path, run_id: str) -> bool:
    """Rewrite a finished run as one file per type; False if it was already compact or is running."""
    m = run_record(root, run_id)
    if m["status"] not in FINISHED or m.get("compacted"):
        return False
    reader = RunReader(root, run_id)
    new_files: dict[str, list[str]] = {}
    old = [f for fs in m["files"].values() for f in fs]
    causal: dict[EventType, pa.Table] = {}
    written = []  # (final path, Parquet bytes): committed together, as a writer's segment is
    for t in reader.types:
        paths = reader.files(t)
        final = layout.type_dir(root, m["date"], t.name) / layout.compact_name(run_id)
        if len(paths) == 1 and paths[0] == final:
            new_files[t.name] = [str(final.relative_to(root))]
            if t != EventType.BAR:
                causal[t] = codec.read_parquet(final, ["seq", "causation_seq"])
            continue
        stored = [codec.read_parquet(p) for p in paths]
        if "market_row" in stored[0].column_names:  # BARs stored with market set references: kept so
            table = pa.concat_tables(stored, promote_options="default")
        else:
            table = pa.concat_tables([codec.from_disk(s, t) for s in stored], promote_options="default")
        rows = codec.ROW_GROUP if t == EventType.BAR else codec.POINT_ROW_GROUP
        written.append((final, codec.parquet_bytes(table, t, m.get("compression", "zstd"), row_group_size=rows)))
        new_files[t.name] = [str(final.relative_to(root))]
        if t != EventType.BAR:
            causal[t] = table.select(["seq", "causation_seq"])
    index = layout.seq_index_path(root, run_id)
    sink = pa.BufferOutputStream()
    pq.write_table(SeqIndex.build(causal).table(), sink, compression="zstd",
                   column_encoding={"seq": "DELTA_BINARY_PACKED", "causation_seq": "DELTA_BINARY_PACKED"},
                   use_dictionary=["type"])
    written.append((index, sink.getvalue()))
    layout.write_all_durably(root, written)
    m.update({"files": new_files, "compacted": True, "compacted_wall_ns": time.time_ns(),
              "seq_index": str(index.relative_to(root))})
    m.setdefault("event_count", m.get("durable_seq_hi", -1) + 1)
    layout.write_json(layout.manifest_path(root, run_id), m)
    keep = {f for fs in new_files.values() for f in fs}
    for f in old:
        if f not in keep:
            (root / f).unlink(missing_ok=True)
    _remove_orphans(root, m["date"], run_id, keep)
    return True


def _remove_orphans(root: Path, date: str, run_id: str, keep: set[str]) -> None:
    """Segments a killed writer left uncommitted (not in the journal) and temporary files."""
    base = root / f"date={date}"
    if not base.is_dir():
        return
    for d in base.glob("event_type=*"):
        for p in d.glob(f"{run_id}-s*.parquet"):
            if str(p.relative_to(root)) not in keep:
                p.unlink(missing_ok=True)
        for p in d.glob(f".{run_id}*.tmp"):
            p.unlink(missing_ok=True)


def compact(root: Path, run_id: str | None = None) -> list[str]:
    """Compact one run or every finished run; returns the runs rewritten."""
    ids = [layout.check_run_id(run_id)] if run_id else run_ids(root)
    return [r for r in ids if compact_run(root, r)]


def prune(root: Path, older_than_days: float | None = None, keep_last: int | None = None,
          sweep_id: str | None = None) -> list[str]:
    """Delete finished runs older than N days, beyond the newest N, or of one sweep; returns the ids deleted."""
    if older_than_days is None and keep_last is None and sweep_id is None:
        raise layout.StoreError("prune needs --older-than-days, --keep-last or --sweep")
    if keep_last is not None and keep_last < 0:
        raise layout.StoreError(f"keep_last must be >= 0, got {keep_last}")
    recs = [run_record(root, r) for r in run_ids(root)]
    recs = [m for m in recs if m["status"] in FINISHED]
    recs.sort(key=lambda m: m.get("started_wall_ns", 0), reverse=True)
    now = time.time_ns()
    doomed = set()
    for i, m in enumerate(recs):
        if older_than_days is not None and now - m.get("started_wall_ns", now) > older_than_days * 86_400e9:
            doomed.add(m["run_id"])
        if keep_last is not None and i >= keep_last:
            doomed.add(m["run_id"])
        if sweep_id is not None and m.get("sweep_id") == sweep_id:
            doomed.add(m["run_id"])
    for r in sorted(doomed):
        delete_run(root, r)
    if doomed:
        market.collect(root)  # the BAR prices of data sets no remaining run refers to
    return sorted(doomed)


def delete_run(root: Path, run_id: str) -> None:
    """Remove a run's files, then its journal and manifest (the manifest last: it is the catalog entry)."""
    m = run_record(root, run_id)
    for fs in m["files"].values():
        for f in fs:
            (root / f).unlink(missing_ok=True)
    _remove_orphans(root, m["date"], run_id, set())
    base = root / f"date={m['date']}"
    if base.is_dir():
        for d in base.glob("event_type=*"):
            if d.is_dir() and not any(d.iterdir()):
                shutil.rmtree(d, ignore_errors=True)
        if not any(base.iterdir()):
            shutil.rmtree(base, ignore_errors=True)
    layout.journal_path(root, run_id).unlink(missing_ok=True)
    layout.seq_index_path(root, run_id).unlink(missing_ok=True)
    layout.manifest_path(root, run_id).unlink(missing_ok=True)


def verify_run(root: Path, run_id: str) -> dict[str, Any]:
    """Problems of one run: seq gaps, broken causation, count mismatches (empty list = sound)."""
    m = run_record(root, run_id)
    reader = RunReader(root, run_id)
    problems: list[str] = []
    # A file the manifest or journal lists but the disk lacks is a finding, not a crash: report it,
    # then check the rest of the run (the gap and count checks below show what it took with it).
    missing_files = [f for fs in reader.record["files"].values() for f in fs if not (root / f).exists()]
    if missing_files:
        problems.append(f"{len(missing_files)} listed file(s) missing: {', '.join(missing_files)}")
        reader.record["files"] = {t: kept for t, fs in reader.record["files"].items()
                                  if (kept := [f for f in fs if f not in missing_files])}
    cols = ["seq", "causation_seq"]
    tabs = reader.load(columns=cols)
    stored = {t.name: tab.num_rows for t, tab in tabs.items()}
    seq = np.sort(np.concatenate([t.column("seq").to_numpy() for t in tabs.values()])) if tabs else np.array([])
    sampled = m.get("sampling") is not None
    if len(seq) and np.any(np.diff(seq) == 0):
        problems.append("duplicate seq")
    hi = int(seq[-1]) if len(seq) else -1
    if not sampled and len(seq) and (seq[0] != 0 or hi + 1 != len(seq)):
        problems.append(f"seq not gapless: {len(seq)} events, max seq {hi}")
    expected = m.get("counts") if m["status"] in ("completed", "failed") else m.get("durable_counts", m.get("counts"))
    if not sampled and expected is not None and stored != {k: v for k, v in expected.items() if v}:
        problems.append(f"per-type counts {stored} != recorded {expected}")
    if m["status"] in ("completed", "failed") and m.get("event_count") is not None and not sampled \
            and len(seq) != m["event_count"]:
        problems.append(f"{len(seq)} events stored, run published {m['event_count']}")
    causes = [t.column("causation_seq").drop_null().to_numpy() for t in tabs.values()]
    causes_all = np.concatenate(causes) if causes else np.array([], dtype=np.int64)
    missing = causes_all[~np.isin(causes_all, seq)]
    if len(missing):
        problems.append(f"{len(missing)} causation_seq values point at no stored event (first {int(missing[0])})")
    problems += _market_problems(root, m, reader)
    links = []
    for t in tabs:
        if t != EventType.BAR:
            lt = pa.concat_tables([codec.read_parquet(p, ["links"]) for p in reader.files(t)])
            flat = lt.column("links").combine_chunks().flatten().to_numpy(zero_copy_only=False)
            links.append(flat)
    if links:
        flat = np.concatenate(links)
        bad = flat[~np.isin(flat, seq)]
        if len(bad):
            problems.append(f"{len(bad)} links point at no stored event (first {int(bad[0])})")
    return {"run_id": run_id, "status": m["status"], "events": int(len(seq)), "counts": stored,
            "lost_seq": m.get("lost_seq"), "problems": problems, "ok": not problems}


def _market_problems(root: Path, m: dict[str, Any], reader: RunReader) -> list[str]:
    """A run stored with a market set: the set exists and every BAR's market_row is one of its rows."""
    key = m.get("market_set")
    if not key or EventType.BAR not in reader.types:
        return []
    path = market.set_path(root, key)
    if not path.exists():
        return [f"market set {key} (the run's BAR prices) is missing: {path.relative_to(root)}"]
    n = pq.ParquetFile(path).metadata.num_rows
    rows = reader.load([EventType.BAR], columns=["market_row"])[EventType.BAR].column("market_row").to_numpy()
    bad = rows[(rows < 0) | (rows >= n)]
    return [f"{len(bad)} BAR market_row values outside market set {key} ({n} rows)"] if len(bad) else []


def verify(root: Path, run_id: str | None = None) -> list[dict[str, Any]]:
    """verify_run for one run or every run of the store."""
    ids = [layout.check_run_id(run_id)] if run_id else run_ids(root)
    return [verify_run(root, r) for r in ids]
