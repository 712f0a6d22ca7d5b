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
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tradetrace.events.types import EventType
from tradetrace.store import codec, layout, market
from tradetrace.store.reader import RunReader, SeqIndex, run_record
from tradetrace.store.sampling import CRITICAL

FINISHED = ("completed", "failed", "incomplete")


def run_ids(root: Path) -> list[str]:
    d = root / layout.RUNS_DIR
    return sorted(p.stem for p in d.glob("*.json")) if d.is_dir() else []


def scan(root: Path) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Every run's record, and the runs whose manifest or journal cannot be trusted: {run_id: one-line
    problem naming the file}. Why both: one damaged run must not stop listing, verifying or pruning the others,
    and nothing a damaged manifest lists is ever read or deleted (`run_record`)."""
    records: list[dict[str, Any]] = []
    damaged: dict[str, str] = {}
    for r in run_ids(root):
        try:
            layout.check_run_id(r)
        except layout.StoreError as exc:
            damaged[r] = f"damaged run {r}: {root / layout.RUNS_DIR / (r + '.json')}: {exc}"
            continue
        try:
            records.append(run_record(root, r))
        except layout.DamagedRun as exc:
            damaged[r] = str(exc)
    return records, damaged


def _resolved(root: Path, files: dict[str, list[str]]) -> dict[str, Path]:
    """The files a run's record lists, each resolved and checked to be inside the store (symlinks included),
    before any is deleted."""
    return {f: layout.inside(root, root / f) for fs in files.values() for f in fs}


def compact_run(root: Path, run_id: str) -> bool:
    """Rewrite a finished run as one file per type; False if it was already compact or is running."""
    m = run_record(root, run_id)
    if m["status"] not in FINISHED or m.get("compacted"):
        return False
    reader = RunReader(root, run_id)
    new_files: dict[str, list[str]] = {}
    old = _resolved(root, m["files"])
    causal: dict[EventType, pa.Table] = {}
    written = []  # (final path, Parquet bytes): committed together, as a writer's segment is
    for t in reader.types:
        paths = reader.files(t)
        final = layout.type_dir(root, m["date"], t.name) / layout.compact_name(run_id)
        if len(paths) == 1 and paths[0] == final:
            new_files[t.name] = [str(final.relative_to(root))]
            if t != EventType.BAR:
                causal[t] = reader.read(final, ["seq", "causation_seq", "links"])
            continue
        stored = [reader.read(p) for p in paths]
        if "market_row" in stored[0].column_names:  # BARs stored with market set references: kept so
            table = pa.concat_tables(stored, promote_options="default")
        else:
            table = pa.concat_tables([codec.from_disk(s, t) for s in stored], promote_options="default")
        rows = codec.ROW_GROUP if t == EventType.BAR else codec.POINT_ROW_GROUP
        written.append((final, codec.parquet_bytes(table, t, m.get("compression", "zstd"), row_group_size=rows)))
        new_files[t.name] = [str(final.relative_to(root))]
        if t != EventType.BAR:
            causal[t] = table.select(["seq", "causation_seq", "links"])
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
    for f, path in old.items():
        if f not in keep:
            path.unlink(missing_ok=True)
    _remove_orphans(root, m["date"], run_id, keep)
    return True


def _remove_orphans(root: Path, date: str, run_id: str, keep: set[str]) -> None:
    """Segments a killed writer left uncommitted (not in the journal) and temporary files: this run's names
    exactly (`layout.own_file`), never another run's whose id starts the same."""
    base = root / f"date={date}"
    if not base.is_dir():
        return
    own, own_tmp = layout.own_file(run_id), layout.own_tmp_file(run_id)
    for d in base.glob("event_type=*"):
        for p in d.iterdir():
            if own_tmp.match(p.name) or (own.match(p.name) and str(p.relative_to(root)) not in keep):
                p.unlink(missing_ok=True)


def compact(root: Path, run_id: str | None = None) -> list[str]:
    """Compact one run or every finished run; returns the runs rewritten (a damaged run is skipped with a
    warning when compacting all)."""
    if run_id:
        one = layout.check_run_id(run_id)
        return [one] if compact_run(root, one) else []
    done = []
    for r in run_ids(root):
        try:
            if compact_run(root, layout.check_run_id(r)):
                done.append(r)
        except layout.StoreError as exc:
            warnings.warn(f"not compacted: {_as_damage(root, r, exc)}", layout.StoreWarning, stacklevel=3)
    return done


def _as_damage(root: Path, run_id: str, exc: layout.StoreError) -> str:
    """The one-line problem of a listed run whose record is damaged or whose id is not valid."""
    if isinstance(exc, layout.DamagedRun):
        return str(exc)
    return f"damaged run {run_id}: {root / layout.RUNS_DIR / (run_id + '.json')}: {exc}"


def prune(root: Path, older_than_days: float | None = None, keep_last: int | None = None,
          sweep_id: str | None = None) -> list[str]:
    """Delete finished runs older than N days, beyond the newest N, or of one sweep; returns the ids deleted.

    A damaged run (see `scan`) is neither deleted nor counted among the newest N: a warning names it, and
    market sets are then not collected (the damaged manifest may be the one naming a set)."""
    if older_than_days is None and keep_last is None and sweep_id is None:
        raise layout.StoreError("prune needs --older-than-days, --keep-last or --sweep")
    if keep_last is not None and not keep_last >= 0:
        raise layout.StoreError(f"keep_last must be >= 0, got {keep_last}")
    if older_than_days is not None and not older_than_days >= 0:  # also NaN
        raise layout.StoreError(f"older_than_days must be >= 0, got {older_than_days}")
    recs, damaged = scan(root)
    for problem in damaged.values():
        warnings.warn(f"not pruned: {problem}", layout.StoreWarning, stacklevel=3)
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
    if doomed and not damaged:
        market.collect(root)  # the BAR prices of data sets no remaining run refers to
    elif doomed:
        warnings.warn("market sets not collected while a run's manifest is damaged", layout.StoreWarning, stacklevel=3)
    return sorted(doomed)


def delete_run(root: Path, run_id: str) -> None:
    """Remove a run's files, then its journal and manifest (the manifest last: it is the catalog entry)."""
    m = run_record(root, run_id)
    for path in _resolved(root, m["files"]).values():
        path.unlink(missing_ok=True)
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
    reader = RunReader(root, run_id)
    m = reader.record
    problems: list[str] = []
    # A file the manifest or journal lists but the disk lacks, or that cannot be read, is a finding, not a
    # crash: report it, then check the rest of the run (the gap and count checks show what it took with it).
    tabs, bad = _read_checked(reader)
    missing_files = [f for f, why in bad.items() if why is None]
    if missing_files:
        problems.append(f"{len(missing_files)} listed file(s) missing: {', '.join(missing_files)}")
    problems += [f"unreadable file {f}: {why}" for f, why in bad.items() if why is not None]
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
    if sampled and expected is not None:  # sampling keeps every critical event and never more than were published
        off = {k: f"{n} stored of {expected.get(k, 0)}" for k, n in stored.items()
               if n > expected.get(k, 0) or (EventType[k] in CRITICAL and n != expected[k])}
        off.update({k: f"0 stored of {v}" for k, v in expected.items()
                    if v and k not in stored and k in EventType.__members__ and EventType[k] in CRITICAL})
        if off:
            problems.append(f"per-type counts of a sampled run (critical types are kept whole): "
                            f"{', '.join(f'{k} {v}' for k, v in sorted(off.items()))}")
    if m["status"] in ("completed", "failed") and m.get("event_count") is not None and not sampled \
            and len(seq) != m["event_count"]:
        problems.append(f"{len(seq)} events stored, run published {m['event_count']}")
    causes = [t.column("causation_seq").drop_null().to_numpy() for t in tabs.values()]
    causes_all = np.concatenate(causes) if causes else np.array([], dtype=np.int64)
    missing = causes_all[~np.isin(causes_all, seq)]
    if len(missing):
        problems.append(f"{len(missing)} causation_seq values point at no stored event (first {int(missing[0])})")
    problems += _market_problems(root, m, tabs.get(EventType.BAR))
    links = [t.column("links").combine_chunks().flatten().to_numpy(zero_copy_only=False)
             for t in tabs.values() if "links" in t.column_names]
    if links:
        flat = np.concatenate(links)
        bad_links = flat[~np.isin(flat, seq)]
        if len(bad_links):
            problems.append(f"{len(bad_links)} links point at no stored event (first {int(bad_links[0])})")
    return {"run_id": run_id, "status": m["status"], "events": int(len(seq)), "counts": stored,
            "lost_seq": m.get("lost_seq"), "problems": problems, "ok": not problems}


def _read_checked(reader: RunReader) -> tuple[dict[EventType, pa.Table], dict[str, str | None]]:
    """The columns verification needs, per type, from every listed file that exists and reads; and the files
    that do not: {relative path: None if missing, else why it cannot be read (one line)}."""
    tabs: dict[EventType, pa.Table] = {}
    bad: dict[str, str | None] = {}
    for t in reader.types:
        parts = []
        for rel in reader.record["files"][t.name]:
            path = reader.root / rel
            if not path.exists():
                bad[rel] = None
                continue
            try:
                names = pq.read_schema(path).names
                cols = ["seq", "causation_seq"] + [c for c in ("links", "market_row") if c in names]
                parts.append(codec.read_parquet(path, cols))
            except (pa.ArrowException, OSError) as exc:
                bad[rel] = layout.one_line(exc)
        if parts:
            tabs[t] = pa.concat_tables(parts, promote_options="default") if len(parts) > 1 else parts[0]
    return tabs, bad


def _market_problems(root: Path, m: dict[str, Any], bars: pa.Table | None) -> list[str]:
    """A run stored with a market set: the set exists and every BAR's market_row is one of its rows."""
    key = m.get("market_set")
    if not key or bars is None or "market_row" not in bars.column_names:
        return []
    path = market.set_path(root, key)
    if not path.exists():
        return [f"market set {key} (the run's BAR prices) is missing: {path.relative_to(root)}"]
    try:
        n = pq.ParquetFile(path).metadata.num_rows
    except (pa.ArrowException, OSError) as exc:
        return [f"unreadable market set {path.relative_to(root)}: {layout.one_line(exc)}"]
    rows = bars.column("market_row").to_numpy()
    bad = rows[(rows < 0) | (rows >= n)]
    return [f"{len(bad)} BAR market_row values outside market set {key} ({n} rows)"] if len(bad) else []


def verify(root: Path, run_id: str | None = None) -> list[dict[str, Any]]:
    """verify_run for one run or every run of the store; a damaged run is a report (status "damaged") with
    its problem, and the other runs are still checked."""
    ids = [layout.check_run_id(run_id)] if run_id else run_ids(root)
    out = []
    for r in ids:
        try:
            layout.check_run_id(r)
            out.append(verify_run(root, r))
        except layout.StoreError as exc:
            if not isinstance(exc, layout.DamagedRun) and run_id:
                raise  # the one run asked for is unknown: bad input, not a finding
            out.append({"run_id": r, "status": "damaged", "events": 0, "counts": {}, "lost_seq": None,
                        "problems": [_as_damage(root, r, exc)], "ok": False})
    return out
