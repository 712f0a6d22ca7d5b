"""The seam between the bus and wherever traced events go.

The bus hands a `Recorder` one `EventBatch` per chunk of bars. A batch is cheap to make on the hot
path (a list of non-BAR `Event` objects plus a `BarBlock` that describes BARs by market-data rows);
turning it into typed Arrow tables (`EventBatch.tables`) is left to the recorder, which may do it in
a background thread. `MemoryRecorder` keeps the tables in memory (issue 2); the Parquet event store
implements the same protocol.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pyarrow as pa

from tradetrace.events.event import NO_CAUSE, Event
from tradetrace.events.types import (
    PAYLOAD_FIELDS,
    SCHEMA_VERSION,
    EventType,
    event_schema,
)

if TYPE_CHECKING:
    from tradetrace.engine.data import MarketData


@dataclass(slots=True)
class RunInfo:
    """What a recorder needs to know about a run before its first batch."""

    correlation_id: str
    name: str
    strategy: str
    params: dict[str, Any]
    sweep_id: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    started_wall_ns: int = 0


@dataclass(slots=True)
class RunTotals:
    """How a run ended: status, reason and exact per-type counts."""

    status: str  # completed | failed
    reason: str | None
    event_count: int
    counts: dict[str, int]


@dataclass(slots=True)
class BarBlock:
    """BAR events of rows [row_start, row_stop), described, not materialized."""

    row_start: int
    row_stop: int
    sampled_flat: list[int]  # row, received_ns, processed_ns (monotonic), flattened
    emitted_ns: int  # monotonic clock when the feed emitted this chunk

    @property
    def sampled(self) -> np.ndarray:
        return np.asarray(self.sampled_flat, dtype=np.int64).reshape(-1, 3)


class Recorder(Protocol):
    """Where a run's traced events go. Implemented by MemoryRecorder and the Parquet EventStore."""

    def begin(self, info: RunInfo, market: MarketData) -> None: ...

    def append(self, batch: EventBatch) -> None: ...

    def end(self, totals: RunTotals) -> None: ...


def _col(values: tuple | list, typ: pa.DataType) -> pa.Array:
    """Python values -> Arrow. Integers go through numpy: pa.array on Python ints is ~100x slower."""
    if pa.types.is_integer(typ):
        return pa.array(np.array(values, dtype=typ.to_pandas_dtype()))
    return pa.array(values, type=typ)


def _ts(values: np.ndarray, mask: np.ndarray | None = None) -> pa.Array:
    return pa.array(values.astype("datetime64[ns]"), type=pa.timestamp("ns", tz="UTC"), mask=mask)


class EventBatch:
    """One chunk of a run's events in publish order, convertible to per-type Arrow tables."""

    __slots__ = ("correlation_id", "anchor_wall_ns", "anchor_mono_ns", "bars", "events", "nonbar_before",
                 "_bar_seq_arr")

    def __init__(self, correlation_id: str, anchor_wall_ns: int, anchor_mono_ns: int, bars: BarBlock,
                 events: list[Event], nonbar_before: int) -> None:
        self.correlation_id = correlation_id
        self.anchor_wall_ns = anchor_wall_ns
        self.anchor_mono_ns = anchor_mono_ns
        self.bars = bars
        self.events = events
        self.nonbar_before = nonbar_before
        self._bar_seq_arr: np.ndarray | None = None

    def __len__(self) -> int:
        return (self.bars.row_stop - self.bars.row_start) + len(self.events)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        n_bars = self.bars.row_stop - self.bars.row_start
        if n_bars:
            out["BAR"] = n_bars
        for e in self.events:
            name = EventType(e.type).name
            out[name] = out.get(name, 0) + 1
        return out

    def _wall(self, mono: np.ndarray) -> np.ndarray:
        return mono - self.anchor_mono_ns + self.anchor_wall_ns

    @property
    def bar_seq(self) -> np.ndarray:
        """seq of each BAR: its row + the non-BAR events published before its dispatch started."""
        if self._bar_seq_arr is None:
            b = self.bars
            log = self.events
            nonbar_rows = np.fromiter((e.row for e in log), dtype=np.int64, count=len(log))
            rows = np.arange(b.row_start, b.row_stop, dtype=np.int64)
            self._bar_seq_arr = rows + self.nonbar_before + np.searchsorted(nonbar_rows, rows, side="left")
        return self._bar_seq_arr

    def _bar_seq(self, row: int) -> int:
        b = self.bars
        if not b.row_start <= row < b.row_stop:
            raise ValueError(f"cause refers to BAR row {row} outside batch rows [{b.row_start}, {b.row_stop})")
        return int(self.bar_seq[row - b.row_start])

    def _resolve(self, ref: int) -> int | None:
        if ref == NO_CAUSE:
            return None
        return ref if ref >= 0 else self._bar_seq(~ref)

    def tables(self, market: MarketData) -> dict[EventType, pa.Table]:
        """Typed Arrow tables, one per event type present, rows in seq order."""
        out: dict[EventType, pa.Table] = {}
        b = self.bars
        n = b.row_stop - b.row_start
        if n:
            out[EventType.BAR] = self._bar_table(market)
        by_type: dict[int, list[Event]] = {}
        for e in self.events:
            by_type.setdefault(e.type, []).append(e)
        for t, evs in by_type.items():
            out[EventType(t)] = self._event_table(EventType(t), evs, market)
        return out

    def _bar_table(self, market: MarketData) -> pa.Table:
        b = self.bars
        sl = slice(b.row_start, b.row_stop)
        n = b.row_stop - b.row_start
        emitted = np.full(n, self._wall(np.int64(b.emitted_ns)), dtype=np.int64)
        received = np.zeros(n, dtype=np.int64)
        processed = np.zeros(n, dtype=np.int64)
        mask = np.ones(n, dtype=bool)  # True = null
        sampled = b.sampled
        if len(sampled):
            idx = sampled[:, 0] - b.row_start
            received[idx] = self._wall(sampled[:, 1])
            processed[idx] = self._wall(sampled[:, 2])
            mask[idx] = False
        rx = pa.array(received.astype("datetime64[ns]"), type=pa.timestamp("ns", tz="UTC"), mask=mask)
        px = pa.array(processed.astype("datetime64[ns]"), type=pa.timestamp("ns", tz="UTC"), mask=mask)
        sym = pa.DictionaryArray.from_arrays(pa.array(market.symbol_idx[sl].astype(np.int32)),
                                             pa.array(market.symbols)).cast(pa.string())
        cols = [
            pa.repeat(self.correlation_id, n),
            pa.array(self.bar_seq),
            pa.repeat("BAR", n),
            _ts(market.ts[sl]),
            pa.array(np.zeros(n, dtype=np.int64)),  # a BAR's cause is the run start (seq 0)
            pa.repeat("data", n),
            _ts(emitted),
            _ts(emitted),
            rx,
            px,
            pa.array(np.full(n, SCHEMA_VERSION, dtype=np.int16)),
            pa.nulls(n, type=pa.list_(pa.int64())),
            sym,
            pa.array(market.open[sl]),
            pa.array(market.high[sl]),
            pa.array(market.low[sl]),
            pa.array(market.close[sl]),
            pa.array(market.volume[sl]),
        ]
        return pa.Table.from_arrays(cols, schema=event_schema(EventType.BAR))

    def _event_table(self, t: EventType, evs: list[Event], market: MarketData) -> pa.Table:
        # Transpose with C-level iteration (attrgetter + zip): this runs once per recorded event and,
        # with a store, competes with the engine for the GIL.
        n = len(evs)
        seqs, causes, sources, rows, emitted, rx, px, links, payloads = zip(*map(_FIELDS, evs), strict=True)
        rows_a = np.maximum(np.array(rows, dtype=np.int64), 0)
        ts = market.ts[rows_a] if len(market.ts) else np.zeros(n, dtype=np.int64)
        rx_mono = np.array(rx, dtype=np.int64)
        px_mono = np.array(px, dtype=np.int64)
        cause_arr = np.array(causes, dtype=np.int64)
        cause_null = cause_arr == NO_CAUSE
        bar_refs = (cause_arr < 0) & ~cause_null
        if bar_refs.any():
            cause_arr[bar_refs] = self._bar_seqs(~cause_arr[bar_refs])
        links_col = self._links(links, n)
        cols: list[Any] = [
            pa.repeat(self.correlation_id, n),
            pa.array(np.array(seqs, dtype=np.int64)),
            pa.repeat(t.name, n),
            _ts(ts),
            pa.array(cause_arr, mask=cause_null),
            pa.array(sources, type=pa.string()),
            _ts(self._wall(np.array(emitted, dtype=np.int64))),  # created == emitted: built as published
            _ts(self._wall(np.array(emitted, dtype=np.int64))),
            _ts(self._wall(rx_mono), rx_mono == 0),  # never received: published, then the run failed
            _ts(self._wall(px_mono), px_mono == 0),
            pa.array(np.full(n, SCHEMA_VERSION, dtype=np.int16)),
            links_col,
        ]
        fields = PAYLOAD_FIELDS[t]
        columns = list(zip(*payloads, strict=True))
        for (_, typ), values in zip(fields, columns, strict=True):
            cols.append(_col(values, typ))
        return pa.Table.from_arrays(cols, schema=event_schema(t))

    def _links(self, links: tuple, n: int) -> pa.Array:
        if all(x is None for x in links):
            return pa.nulls(n, type=pa.list_(pa.int64()))
        sizes = np.fromiter((0 if x is None else len(x) for x in links), dtype=np.int32, count=n)
        flat = np.fromiter((v for x in links if x is not None for v in x), dtype=np.int64, count=int(sizes.sum()))
        bar = flat < 0
        if bar.any():
            flat[bar] = self._bar_seqs(~flat[bar])
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)
        mask = pa.array(np.fromiter((x is None for x in links), dtype=bool, count=n))
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat), mask=mask)

    def _bar_seqs(self, rows: np.ndarray) -> np.ndarray:
        b = self.bars
        if len(rows) and (rows.min() < b.row_start or rows.max() >= b.row_stop):
            raise ValueError(f"cause refers to a BAR row outside batch rows [{b.row_start}, {b.row_stop})")
        return self.bar_seq[rows - b.row_start]


_FIELDS = attrgetter("seq", "cause", "source", "row", "emitted", "received", "processed", "links", "payload")


class MemoryRecorder:
    """Keeps a run's events in memory; converts them to Arrow tables when first read.

    Conversion is deferred because it is the expensive part of tracing (about 1.5 us per non-BAR
    event, against about 0.1 us to record one during the run): a run whose events are never read
    does not pay it, and one whose events are read pays it once, after the run.
    """

    def __init__(self) -> None:
        self.info: RunInfo | None = None
        self.market: MarketData | None = None
        self.totals: RunTotals | None = None
        self._batches: list[EventBatch] = []
        self._tables: dict[EventType, pa.Table] | None = None

    def begin(self, info: RunInfo, market: MarketData) -> None:
        self.info = info
        self.market = market

    def append(self, batch: EventBatch) -> None:
        self._batches.append(batch)
        self._tables = None

    def end(self, totals: RunTotals) -> None:
        self.totals = totals

    def tables(self) -> dict[EventType, pa.Table]:
        """Per-type tables of the whole run, each sorted by seq."""
        if self._tables is None:
            assert self.market is not None, "begin() first"
            parts: dict[EventType, list[pa.Table]] = {}
            for b in self._batches:
                for t, tab in b.tables(self.market).items():
                    parts.setdefault(t, []).append(tab)
            self._tables = {t: pa.concat_tables(p) for t, p in sorted(parts.items())}
        return self._tables

    def lookup(self, seq: int) -> pa.Table | None:
        """One event by seq (for lineage)."""
        for tab in self.tables().values():
            seqs = tab.column("seq").to_numpy()
            k = int(np.searchsorted(seqs, seq))
            if k < len(seqs) and seqs[k] == seq:
                return tab.slice(k, 1)
        return None
