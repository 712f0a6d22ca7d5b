"""`tradetrace etl`: backfill the analytics database from the Parquet event store.

Why: the database is a derived summary; the event store is the record. Any run the database lacks
(written with the database off, or before it existed, or to another database) is rebuilt from its
events with the same code as the end-of-run sink, and reloading a run replaces its rows (idempotent).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from tradetrace.analytics import etl
from tradetrace.analytics.db import Database

BATCH_RUNS = 64


def open_store(root: str | None = None) -> Any:
    """The event store, or a RuntimeError saying it is not available in this build."""
    import tradetrace.store as store

    cls = getattr(store, "EventStore", None)
    if cls is None:
        raise RuntimeError("the Parquet event store is not available in this build (tradetrace.store.EventStore)")
    return cls(root)


def run_records(store: Any) -> list[dict[str, Any]]:
    """The store's run records as dicts, whatever container `runs()` returns (list, Arrow, pandas)."""
    runs = store.runs()
    if hasattr(runs, "to_pylist"):
        return runs.to_pylist()
    if hasattr(runs, "to_dict"):
        return runs.to_dict("records")
    return [dict(r) if isinstance(r, Mapping) else vars(r) for r in runs]


def meta_of(record: Mapping[str, Any], storage_path: str | None) -> etl.RunMeta:
    import json

    config = record.get("config") or {}
    if isinstance(config, str):
        config = json.loads(config)
    return etl.RunMeta.from_config(config, sweep_id=record.get("sweep_id"), run_hash=record.get("run_hash"),
                                   event_storage_path=storage_path)


def backfill(db: Database, store: Any, run_ids: Iterable[str] | None = None,
             on_run: Callable[[str], None] | None = None, skipped: list[str] | None = None) -> int:
    """Load every run of the store (or only `run_ids`) into `db`; returns the number of runs loaded.

    Runs whose events are incomplete (sampled store, lost events) are not loaded; why goes to `skipped`.
    """
    skipped = skipped if skipped is not None else []
    wanted = set(run_ids) if run_ids is not None else None
    path = str(getattr(store, "root", "")) or None
    records = [r for r in run_records(store) if wanted is None or str(r.get("run_id")) in wanted]
    known = _known_hashes(db, [str(r.get("run_id")) for r in records])
    batch: list[etl.RunRecords] = []
    n = 0
    for rec in records:
        rid = str(rec.get("run_id"))
        meta = meta_of(rec, path)
        # The store does not know a sweep run's hash: keep the one the sweep wrote (resume depends on it).
        meta.run_hash = meta.run_hash or known.get(rid)
        events = store.load_events(rid)
        try:
            batch.append(etl.records_from_events(events, meta))
        except etl.IncompleteEvents as exc:
            skipped.append(str(exc))
            continue
        n += 1
        if on_run is not None:
            on_run(rid)
        if len(batch) >= BATCH_RUNS:
            etl.write_runs(db, batch)
            batch = []
    etl.write_runs(db, batch)
    return n


def _known_hashes(db: Database, ids: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k in range(0, len(ids), 500):
        part = ids[k:k + 500]
        if not part:
            continue
        marks = ", ".join("?" for _ in part)
        _, rows = db.query(f"SELECT correlation_id, run_hash FROM optimization_runs WHERE correlation_id IN ({marks}) "
                           "AND run_hash IS NOT NULL", part)
        out.update({str(r[0]): r[1] for r in rows})
    return out
