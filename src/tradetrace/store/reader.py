"""Reading a run back: its files from the manifest/journal (no tree listing), events, point lookups.

A run's files are found from `_runs/<run>.json` (after the run ended or was compacted) or from its
journal (while running, or after a crash), so loading one run never lists the whole store.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tradetrace.events.types import COMMON_FIELDS, EventType
from tradetrace.store import codec, layout


def run_record(root: Path, run_id: str) -> dict[str, Any]:
    """The manifest of a run, with status `incomplete` and the lost range when its writer died."""
    mpath = layout.manifest_path(root, run_id)
    if not mpath.exists():
        raise layout.StoreError(f"unknown run {run_id!r} in the event store {root}")
    m = layout.read_json(mpath)
    if m.get("files") is None:  # not ended: rebuild from the journal
        journal = layout.read_journal(layout.journal_path(root, run_id))
        files: dict[str, list[str]] = {}
        counts: dict[str, int] = {}
        stored = 0
        hi = -1
        for rec in journal:
            if rec["seq_lo"] != hi + 1:
                break  # a gap would mean a lost segment: only the gapless prefix is durable
            hi = rec["seq_hi"]
            for t, f in rec["files"].items():
                files.setdefault(t, []).append(f)
            for t, n in rec["counts"].items():
                counts[t] = counts.get(t, 0) + n
            stored += sum(rec["stored"].values())
        m["files"] = files
        m["durable_seq_hi"] = hi
        m["stored_count"] = stored
        m.setdefault("counts", counts)
        m["durable_counts"] = counts
        if m["status"] == "running" and not _alive(m):
            m["status"] = "incomplete"
            m["lost_seq"] = [hi + 1, None]  # the end is unknown: the process died before reporting it
            m["reason"] = f"writer process {m.get('pid')} died; events from seq {hi + 1} on were not durable"
        m.setdefault("event_count", hi + 1)
    m.setdefault("lost_seq", None)
    return m


def _alive(m: dict[str, Any]) -> bool:
    import os
    import socket

    if m.get("host") != socket.gethostname():
        return True  # another machine's run: assume it is still being written
    try:
        os.kill(int(m["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _not_zombie(int(m["pid"]))


def _not_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True  # no /proc: the pid answered, take it as alive


class RunReader:
    """Reads one run's events (whole tables, filtered loads, point lookups by seq)."""

    def __init__(self, root: Path, run_id: str) -> None:
        self.root = Path(root)
        self.run_id = layout.check_run_id(run_id)
        self.record = run_record(self.root, self.run_id)
        self._row_groups: dict[str, pa.Table] = {}

    def files(self, etype: EventType) -> list[Path]:
        return [self.root / f for f in self.record["files"].get(etype.name, [])]

    @property
    def types(self) -> list[EventType]:
        return sorted(EventType[name] for name in self.record["files"])

    def load(self, types: list[EventType] | None = None, start: Any = None, end: Any = None,
             columns: list[str] | None = None) -> dict[EventType, pa.Table]:
        """Per-type tables, sorted by seq, optionally limited to market time [start, end)."""
        out = {}
        for t in types or self.types:
            paths = self.files(t)
            if not paths:
                continue
            parts = [pq.read_table(p, columns=columns, partitioning=None) for p in paths]
            tab = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
            if columns is None:
                tab = codec.from_disk(tab, t)
            if start is not None or end is not None:
                tab = tab.filter(_time_mask(tab, start, end))
            out[t] = tab
        return out

    def tables(self) -> dict[EventType, pa.Table]:
        return self.load()

    @cached_property
    def _seq_index(self) -> dict[EventType, np.ndarray]:
        """seq arrays of the small (non-BAR) types, to find which type a seq belongs to."""
        return {t: tab.column("seq").to_numpy() for t, tab in
                self.load([t for t in self.types if t != EventType.BAR], columns=["seq"]).items()}

    def lookup(self, seq: int) -> pa.Table | None:
        """One event (a one-row table in its type's schema), or None."""
        for t, seqs in self._seq_index.items():
            k = int(np.searchsorted(seqs, seq))
            if k < len(seqs) and seqs[k] == seq:
                return self._row(t, seq)
        if EventType.BAR in self.types:
            return self._row(EventType.BAR, seq)
        return None

    def _row(self, t: EventType, seq: int) -> pa.Table | None:
        for path in self.files(t):
            pf = pq.ParquetFile(path)
            md = pf.metadata
            seq_col = md.schema.to_arrow_schema().get_field_index("seq")
            for g in range(md.num_row_groups):
                st = md.row_group(g).column(seq_col).statistics
                if st is not None and st.has_min_max and not st.min <= seq <= st.max:
                    continue
                key = f"{path}#{g}"
                if key not in self._row_groups:
                    self._row_groups[key] = pf.read_row_group(g)
                rg = self._row_groups[key]
                seqs = rg.column("seq").to_numpy()
                k = int(np.searchsorted(seqs, seq))
                if k < len(seqs) and seqs[k] == seq:
                    return codec.from_disk(rg.slice(k, 1), t)
        return None


def _time_mask(tab: pa.Table, start: Any, end: Any) -> pa.Array:
    ts = tab.column("timestamp")
    mask = pa.array(np.ones(tab.num_rows, dtype=bool))
    if start is not None:
        mask = pc.and_(mask, pc.greater_equal(ts, pa.scalar(_ns(start), type=ts.type)))
    if end is not None:
        mask = pc.and_(mask, pc.less(ts, pa.scalar(_ns(end), type=ts.type)))
    return mask


def _ns(v: Any) -> int:
    import pandas as pd

    t = pd.Timestamp(v)
    if t.tzinfo is None:
        t = t.tz_localize("UTC")
    return int(t.value)


def concat_by_seq(tables: dict[EventType, pa.Table]) -> pa.Table:
    """Per-type tables -> one table sorted by seq (payload columns of other types are null)."""
    if not tables:
        return pa.schema([pa.field(n, t) for n, t in COMMON_FIELDS]).empty_table()
    tab = pa.concat_tables(list(tables.values()), promote_options="default")
    return tab.sort_by("seq") if len(tables) > 1 else tab
