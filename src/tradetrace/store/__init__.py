"""The Parquet event store (issue 3): durable, compact, queryable lineage for every run.

`EventStore` is the one entry point: it hands out recorders (the writing side, `writer.py`) and
answers questions about stored runs (`reader.py`, `queries.py`, `maintenance.py`). Layout and the
partitioning decision: `layout.py`; encodings: `codec.py`; BAR prices stored once per data set:
`market.py`; sampling: `sampling.py`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from tradetrace.allocator import tune_malloc
from tradetrace.events.event import parse_event_id
from tradetrace.events.lineage import Lineage
from tradetrace.events.recorder import Recorder
from tradetrace.events.types import EventType
from tradetrace.paths import events_dir, folder_problem
from tradetrace.store import maintenance, queries
from tradetrace.store.layout import DamagedRun, StoreError, StoreWarning, check_run_id
from tradetrace.store.reader import RunReader, concat_by_seq, market_ns, run_record
from tradetrace.store.sampling import Sampling
from tradetrace.store.writer import StoreRecorder, Terminated

if TYPE_CHECKING:
    import pandas as pd
    import polars as pl

    from tradetrace.config import RunConfig

__all__ = ["DamagedRun", "EventStore", "StoreError", "StoreRecorder", "StoreWarning", "Sampling", "Terminated",
           "recorder_for"]


class EventStore:
    """A folder of runs' events (hive-partitioned Parquet) plus a small per-run catalog."""

    def __init__(self, root: str | Path | None = None, *, compression: str = "zstd") -> None:
        if compression not in ("zstd", "snappy"):
            raise StoreError(f"compression {compression!r} not one of zstd, snappy")
        tune_malloc()  # once per process: a run's load allocates hundreds of MB (see allocator.py)
        self.root = events_dir(str(root) if root is not None else None)
        problem = folder_problem(self.root)
        if problem:  # e.g. TRADETRACE_EVENTS pointing at a file: one line here, not an OSError from the writer
            source = "" if root is not None or not os.environ.get("TRADETRACE_EVENTS") else " (TRADETRACE_EVENTS)"
            raise StoreError(f"event store {self.root}{source}: {problem}")
        self.compression = compression

    def __repr__(self) -> str:
        return f"EventStore({str(self.root)!r})"

    # -- writing ---------------------------------------------------------------------------------
    def recorder(self, durability_events: int = 524_288, durability_ms: int = 1_000, queue_batches: int = 8,
                 sampling: Sampling | None = None, compression: str | None = None,
                 compact_on_end: bool = False, mode: str | None = None) -> StoreRecorder:
        """A recorder for one run (pass it to run_backtest, or let `recorder_for` build it from config).

        `mode`: where the writer runs, "process" (a writer process, see service.py; the default on Linux in the
        main thread) or "thread".
        """
        return StoreRecorder(self.root, compression=compression or self.compression,
                             durability_events=durability_events, durability_ms=durability_ms,
                             queue_batches=queue_batches, sampling=sampling, compact_on_end=compact_on_end,
                             mode=mode)

    # -- catalog ---------------------------------------------------------------------------------
    def runs(self) -> list[dict[str, Any]]:
        """Every run: run_id, name, strategy, sweep_id, status, reason, event_count, counts, start/end
        wall time (ns), lost_seq ([first, last or None]) when incomplete, stored_count (< event_count
        when sampled), market_set (the stored data set holding its BAR prices, or None). Newest first.
        A run whose manifest or journal is damaged is left out with a warning naming the file."""
        records, damaged = maintenance.scan(self.root)
        for problem in damaged.values():
            warnings.warn(f"{problem} (left out; `tradetrace store verify` checks the store)", StoreWarning,
                          stacklevel=2)
        out = [self._public(m) for m in records]
        return sorted(out, key=lambda m: m.get("started_wall_ns") or 0, reverse=True)

    def run(self, run_id: str) -> dict[str, Any]:
        """One run's record (see `runs`); StoreError for an unknown or invalid id."""
        return self._public(run_record(self.root, check_run_id(run_id)))

    @staticmethod
    def _public(m: dict[str, Any]) -> dict[str, Any]:
        keys = ("run_id", "name", "strategy", "sweep_id", "status", "reason", "event_count", "counts",
                "stored_count", "started_wall_ns", "ended_wall_ns", "lost_seq", "durable_seq_hi", "date",
                "sampling", "compacted", "params", "market_set")
        return {k: m.get(k) for k in keys}

    def _reader(self, run_id: str) -> RunReader:
        return RunReader(self.root, check_run_id(run_id))

    # -- reading ---------------------------------------------------------------------------------
    def load_events(self, run_id: str, types: str | list[str] | None = None, start: Any = None,
                    end: Any = None, limit: int | None = None) -> pa.Table:
        """All events of a run (optionally some types, market time in [start, end)) as one Arrow table
        sorted by seq; payload columns of other types are null, string columns are dictionary-encoded
        (pandas: Categorical), as in `BacktestResult.events()`. `types`: names (any case), or one name.
        `start`/`end`: anything pandas reads as a timestamp (naive = UTC). `limit`: only the first `limit`
        events (without a time window only the row groups holding them are read)."""
        if limit is not None and limit < 0:
            raise StoreError(f"limit must be >= 0, not {limit}")
        start, end = market_ns(start, end)
        reader = self._reader(run_id)
        wanted = None
        if types is not None:
            wanted = [t for t in dict.fromkeys(_event_types(types)) if t in reader.types]  # a type named twice: once
            if not wanted:
                return concat_by_seq({})
        return reader.events(wanted, start, end, limit)

    def load_events_df(self, run_id: str, types: str | list[str] | None = None, start: Any = None,
                       end: Any = None, limit: int | None = None) -> pd.DataFrame:
        """`load_events` as a pandas DataFrame (same arguments)."""
        return self.load_events(run_id, types, start, end, limit).to_pandas()

    def load_events_pl(self, run_id: str, types: str | list[str] | None = None, start: Any = None,
                       end: Any = None, limit: int | None = None) -> pl.DataFrame:
        """`load_events` as a Polars DataFrame (same arguments)."""
        import polars as pl

        return pl.from_arrow(self.load_events(run_id, types, start, end, limit))

    def _split(self, event_id: str) -> tuple[RunReader, int]:
        try:
            run, seq = parse_event_id(event_id)
        except ValueError as exc:
            raise StoreError(str(exc)) from None
        return self._reader(run), seq

    def event(self, event_id: str) -> pa.Table:
        """One event as a one-row table; StoreError if absent."""
        reader, seq = self._split(event_id)
        row = reader.lookup(seq)
        if row is None:
            raise _unknown(reader, event_id, seq)
        return row

    def lineage(self, event_id: str) -> queries.EventLineage:
        """The event, its ancestors (causes up to the run start), the events it and they link to (further causes:
        a FILL's pricing BAR) and its descendants through causation or links."""
        reader, seq = self._split(event_id)
        try:
            return queries.lineage(reader, seq)
        except KeyError:
            raise _unknown(reader, event_id, seq) from None

    def trace(self, event_id: str) -> Lineage:
        """The causation chain from an event back to the BAR that started it (as `result.trace`)."""
        from tradetrace.events.lineage import walk_back

        reader, seq = self._split(event_id)
        try:
            return walk_back(reader.lookup, seq, run_date=reader.record["date"])
        except KeyError:
            raise _unknown(reader, event_id, seq) from None

    def trade_lineage(self, run_id: str) -> pa.Table:
        """One row per trade: entry/exit SIGNAL, ORDER, FILL ids, the close event id, P&L; closed trades first,
        then any position still open at the run's end (null exit ids, close_id, pnl and exit_reason)."""
        return queries.trade_lineage(self._reader(run_id))

    def find_signal_to_fill_path(self, fill_id: str) -> Lineage:
        """FILL -> ORDER -> SIGNAL chain of one fill (ends at the triggering BAR for stop exits)."""
        reader, seq = self._split(fill_id)
        try:
            return queries.signal_to_fill_path(reader, seq)
        except KeyError:
            raise _unknown(reader, fill_id, seq) from None
        except ValueError as exc:
            raise StoreError(str(exc)) from None

    def latency_report(self, run_id: str) -> pa.Table:
        """Per event type: the run's exact count, mean/p50/p95/p99/max of queue and processing time in
        microseconds (weighted estimates, `estimated` true, for a sampled run's thinned types)."""
        return queries.latency_report(self._reader(run_id))

    # -- maintenance -----------------------------------------------------------------------------
    def verify(self, run_id: str | None = None) -> list[dict[str, Any]]:
        """Gapless seq, causation integrity, per-type counts, for one run or the whole store."""
        return maintenance.verify(self.root, run_id)

    def compact(self, run_id: str | None = None) -> list[str]:
        """One file per run and type for finished runs; returns the runs rewritten."""
        return maintenance.compact(self.root, run_id)

    def prune(self, older_than_days: float | None = None, keep_last: int | None = None,
              sweep_id: str | None = None) -> list[str]:
        """Retention: delete finished runs by age, beyond the newest N, or of one sweep."""
        return maintenance.prune(self.root, older_than_days, keep_last, sweep_id)


def _unknown(reader: RunReader, event_id: str, seq: int) -> StoreError:
    """The error for an event id the run's files lack, saying why when the run knows: its sampling did not keep
    the event, or it was published after the last durable one of a run whose writer died."""
    m = reader.record
    why = ""
    if m.get("sampling") is not None and 0 <= seq < (m.get("event_count") or 0):
        why = f": not kept by the run's sampling ({m.get('stored_count')} of {m['event_count']} events stored)"
    elif m.get("lost_seq") and seq >= m["lost_seq"][0] and (m["lost_seq"][1] is None or seq <= m["lost_seq"][1]):
        lo, hi = m["lost_seq"]
        lost = f"events from seq {lo} on" if hi is None else f"events {lo} to {hi}"
        why = f": the run is {m['status']}, {lost} were not durable"
    return StoreError(f"unknown event id {event_id!r}{why}")


def _event_types(types: str | list[str]) -> list[EventType]:
    """Event type names (any case; one name alone is one type, not its letters) -> EventTypes."""
    names = [types] if isinstance(types, str) else list(types)
    out = []
    for t in names:
        if isinstance(t, EventType):
            out.append(t)
        elif isinstance(t, str) and t.upper() in EventType.__members__:
            out.append(EventType[t.upper()])
        else:
            raise StoreError(f"unknown event type {t!r}")
    return out


def recorder_for(cfg: RunConfig) -> Recorder:
    """The recorder a traced run writes to when the caller gave none: the event store of `cfg.store`."""
    s = cfg.store
    sampling = None
    if s.sampling.enabled:
        sampling = Sampling(context=s.sampling.context, base_rate=s.sampling.base_rate, seed=s.sampling.seed)
    return EventStore(s.path).recorder(s.durability_events, s.durability_ms, s.queue_batches, sampling,
                                       s.compression, mode=None if s.writer == "auto" else s.writer)
