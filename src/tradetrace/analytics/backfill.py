"""`tradetrace etl`: backfill the analytics database from the Parquet event store.

Why: the database is a derived summary; the event store is the record. Any run the database lacks
(written with the database off, or before it existed, or to another database) is rebuilt from its
events with the same code as the end-of-run sink, and reloading a run replaces its rows (idempotent).

Same rows as the sink wrote: the run's manifest holds its config (initial cash, annualization, strategy
type), sweep id, and what only the sweep knew: its `run_hash` (resume depends on it) and its grid values
outside the strategy params (`sweep_values`, dotted keys such as `risk.stop_loss_pct`, stored in
`parameters`). A run the database already has keeps both from its row. Runs stored before manifests kept
them get the hash recomputed with the sweep's own function (when the data files are not newer than the
run; else none, and a resumed sweep reruns it), and as dotted keys the config values that differ between
the runs of its sweep in the store (a grid key with a single value cannot be told from the base config).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from tradetrace.analytics import etl
from tradetrace.analytics.db import Database
from tradetrace.events.event import is_run_id

BATCH_RUNS = 64


class BackfillError(ValueError):
    """A bad backfill request (a missing store, an unknown or malformed run id); the message is one line."""


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


def check_request(store: Any, run_ids: Iterable[str] | None) -> list[str] | None:
    """The run ids asked for, checked: BackfillError (one line) for a missing store folder, an id that is not a
    UUID (the database keys runs by UUID; this also refuses paths such as `../../etc/passwd`) or not in it."""
    root = Path(store.root)
    if not root.is_dir():
        raise BackfillError(f"no event store at {root} (give --store, or set TRADETRACE_EVENTS)")
    if run_ids is None:
        return None
    ids = list(dict.fromkeys(run_ids))
    for rid in ids:
        if not is_run_id(rid):
            raise BackfillError(f"run id {rid!r}: not a UUID in canonical lowercase form (the analytics database "
                                "keys runs by UUID)")
        try:
            store.run(rid)
        except ValueError as exc:  # the store's StoreError: unknown run, or a damaged manifest
            raise BackfillError(str(exc)) from None
    return ids


def meta_of(record: Mapping[str, Any], storage_path: str | None, *, run_hash: str | None = None,
            extra_params: Mapping[str, Any] | None = None) -> etl.RunMeta:
    """What the sink knew about a run, from its manifest (`record`, with its `config`)."""
    config = _config(record)
    strategy = (config.get("strategy") or {}).get("type") or record.get("strategy")
    return etl.RunMeta.from_config(config, sweep_id=record.get("sweep_id"), run_hash=run_hash,
                                   strategy_version=etl.strategy_version(strategy),
                                   event_storage_path=storage_path, extra_params=dict(extra_params or {}))


def backfill(db: Database, store: Any, run_ids: Iterable[str] | None = None,
             on_run: Callable[[str], None] | None = None, skipped: list[str] | None = None) -> int:
    """Load every run of the store (or only `run_ids`) into `db`; returns the number of runs loaded.

    Runs whose events are incomplete (sampled store, lost events) or whose id is not a UUID are not loaded;
    why goes to `skipped`. BackfillError for a bad request (see `check_request`).
    """
    from tradetrace.store.reader import run_record

    skipped = skipped if skipped is not None else []
    checked = check_request(store, run_ids)
    wanted = set(checked) if checked is not None else None
    root = Path(store.root)
    path = str(root.resolve())
    records = run_records(store)
    chosen = [r for r in records if wanted is None or str(r.get("run_id")) in wanted]
    for rec in [r for r in chosen if not is_run_id(r.get("run_id"))]:
        skipped.append(f"run {rec.get('run_id')!r}: its id is not a UUID in canonical lowercase form (the analytics "
                       "database keys runs by UUID)")
    chosen = [r for r in chosen if is_run_id(r.get("run_id"))]  # stores made before ids were checked
    known = _known_rows(db, [str(r.get("run_id")) for r in chosen])
    swept = _SweptKeys(root, records)
    batch: list[etl.RunRecords] = []
    n = 0
    for rec in chosen:
        rid = str(rec.get("run_id"))
        manifest = run_record(root, rid)
        # What only the sweep knew is kept from the row it wrote, else derived (see the module docstring).
        run_hash, extra = known.get(rid, (None, {}))
        run_hash = run_hash or manifest.get("run_hash") or _sweep_hash(manifest)
        if not extra:
            extra = manifest["sweep_values"] if manifest.get("sweep_values") is not None else swept.values(manifest)
        meta = meta_of(manifest, path, run_hash=run_hash, extra_params=extra)
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


def _config(record: Mapping[str, Any]) -> dict[str, Any]:
    config = record.get("config") or {}
    return json.loads(config) if isinstance(config, str) else dict(config)


def _known_rows(db: Database, ids: list[str]) -> dict[str, tuple[str | None, dict[str, Any]]]:
    """run id -> (run_hash, dotted `parameters` keys) of the runs `db` already has."""
    out: dict[str, tuple[str | None, dict[str, Any]]] = {}
    for k in range(0, len(ids), 500):
        part = ids[k:k + 500]
        if not part:
            continue
        marks = ", ".join("?" for _ in part)
        _, rows = db.query(f"SELECT correlation_id, run_hash, parameters FROM optimization_runs "
                           f"WHERE correlation_id IN ({marks})", part)
        for cid, run_hash, params in rows:
            params = json.loads(params) if isinstance(params, str) else (params or {})
            out[str(cid)] = (run_hash, {k: v for k, v in params.items() if "." in k})
    return out


def _sweep_hash(manifest: Mapping[str, Any]) -> str | None:
    """The `run_hash` the sweep gave this run (its function, on the run's config), or None: not a sweep run,
    a config this build cannot read, or data files changed since the run (the hash would name other data)."""
    if not manifest.get("sweep_id"):
        return None
    from tradetrace.config import ConfigError, parse_config
    from tradetrace.sweep.grid import data_fingerprint, run_hash

    try:
        cfg = parse_config(_config(manifest))
        fingerprint = data_fingerprint(cfg)
    except (ConfigError, OSError):
        return None
    started = manifest.get("started_wall_ns") or 0
    for section in ("symbols", "aux"):
        for files in (fingerprint.get(section) or {}).values():
            if any(mtime_ns > started for _, _, mtime_ns in files):
                return None
    return run_hash(cfg, fingerprint)


class _SweptKeys:
    """Per sweep: the dotted config keys (outside the strategy params) whose values differ between its runs
    in the store, i.e. the grid keys a sweep stores in `parameters`. Read only for sweeps that need it."""

    def __init__(self, root: Path, records: list[dict[str, Any]]) -> None:
        self.root = root
        self.members: dict[str, list[str]] = {}
        for r in records:
            if r.get("sweep_id") and is_run_id(r.get("run_id")):
                self.members.setdefault(str(r["sweep_id"]), []).append(str(r["run_id"]))
        self.keys: dict[str, list[str]] = {}

    def values(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        sid = manifest.get("sweep_id")
        if not sid:
            return {}
        if sid not in self.keys:
            self.keys[sid] = self._differing(self.members.get(str(sid), []))
        leaves = _leaves(_config(manifest))
        return {k: leaves[k] for k in self.keys[sid] if k in leaves}

    def _differing(self, run_ids: list[str]) -> list[str]:
        from tradetrace.store.reader import run_record

        seen: dict[str, set[str]] = {}
        for rid in run_ids:
            for k, v in _leaves(_config(run_record(self.root, rid))).items():
                seen.setdefault(k, set()).add(json.dumps(v, sort_keys=True))
        return sorted(k for k, vs in seen.items() if len(vs) > 1)


def _leaves(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config's values a grid may address with a dotted key (`sweep.grid.SECTIONS`, strategy params
    excepted: those are the run's own parameters), as dotted key -> value."""
    from tradetrace.sweep.grid import SECTIONS

    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(f"{prefix}.{k}", v)
        else:
            out[prefix] = node

    for section in SECTIONS:
        if section != "strategy.params" and isinstance(config.get(section), Mapping):
            walk(section, config[section])
    return out
