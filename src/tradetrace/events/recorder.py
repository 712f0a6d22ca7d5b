"""The seam between the bus and wherever traced events go.

The bus hands a `Recorder` one `EventBatch` per chunk of bars. A batch is cheap to make on the hot
path (a list of non-BAR `Event` objects plus a `BarBlock` that describes BARs by market-data rows);
turning it into typed Arrow tables (`EventBatch.tables`) is left to the recorder, which may do it in
a background thread. `MemoryRecorder` keeps the tables in memory (issue 2); the Parquet event store
implements the same protocol.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np
import pyarrow as pa

from tradetrace.events._hotbus import NTYPES, NULL_FLOAT_BITS  # rt packs the type in 4 bits; null float bits
from tradetrace.events.event import NO_CAUSE
from tradetrace.events.types import (
    PAYLOAD_FIELDS,
    SCHEMA_VERSION,
    EventType,
    recorded_schema,
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
    # What only a sweep knows of its run: the hash it resumes by and its grid values outside the strategy
    # params (dotted keys); kept with the run so that its database row can be rebuilt exactly from the store.
    run_hash: str | None = None
    sweep_values: dict[str, Any] | None = None


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
    sampled_flat: bytes  # int64 row, received, processed (clock ticks), flattened
    emitted_ns: int  # clock (ticks) when the feed emitted this chunk

    @property
    def sampled(self) -> np.ndarray:
        return np.frombuffer(self.sampled_flat, dtype=np.int64).reshape(-1, 3)


class Recorder(Protocol):
    """Where a run's traced events go. Implemented by MemoryRecorder and the Parquet EventStore.

    Optional: `handover_limits() -> (nanoseconds, events)`, how often the engine must hand over what it
    recorded within a chunk of bars (a recorder with a durability window; see engine/backtest.py)."""

    def begin(self, info: RunInfo, market: MarketData) -> None: ...

    def append(self, batch: EventBatch) -> None: ...

    def end(self, totals: RunTotals, wait: bool = True) -> None:
        """The run is over. `wait=False` may return before everything is stored: call `wait()` later."""
        ...

    def wait(self) -> None:
        """Block until everything handed over is stored and the run is marked (after `end`)."""
        ...


_TS = pa.timestamp("ns", tz="UTC")


def const_code(value: str, n: int) -> pa.DictionaryArray:
    """A dictionary string column (DICT_STRING) of one repeated value: n zero codes, the value once."""
    # safe=False: the codes are ours and in range; the check is a pass over them (called per column and batch)
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)), pa.array([value], pa.string()),
                                          safe=False)


def codes_of(codes: np.ndarray, strings: pa.Array) -> pa.DictionaryArray:
    """int64 codes into `strings` (negative = null) as a dictionary column (DICT_STRING), no string copied.

    The dictionary keeps only the values this column uses (`strings` is a whole batch's list: sources,
    symbols, sides, reasons...): a stored column's dictionary is then the same however the run was cut
    into batches, and readers merging files need not filter (measured: that cost a 1M-event load ~25 ms).
    """
    null = codes < 0
    used = np.bincount(codes[~null] if null.any() else codes, minlength=len(strings)) > 0
    if not used.all():
        remap = (np.cumsum(used) - 1).astype(np.int64)
        codes = remap[np.where(null, 0, codes)]
        strings = strings.filter(pa.array(used))
    return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32), mask=null if null.any() else None),
                                          strings, safe=False)


def const_str(value: str, n: int) -> pa.Array:
    """A string column of one repeated value, built from its buffers.

    pa.repeat materializes it value by value (~3.7 ms per 16k rows of a run id, measured) and
    expanding a one-entry dictionary is a cast (~0.12 ms); offsets and data buffers take ~0.02 ms."""
    b = value.encode()
    if n * len(b) >= 2**31 - 1:  # beyond int32 offsets: let Arrow build it
        codes = pa.array(np.zeros(n, dtype=np.int32))
        return pa.DictionaryArray.from_arrays(codes, pa.array([value])).cast(pa.string())
    offsets = np.arange(0, (n + 1) * len(b), len(b), dtype=np.int32) if b else np.zeros(n + 1, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(b * n)])


def _ts(values: np.ndarray, mask: np.ndarray | None = None) -> pa.Array:
    """int64 ns -> timestamp[ns, UTC] without a copy; `mask` True = null."""
    values = np.ascontiguousarray(values, dtype=np.int64)
    validity = pa.array(~mask).buffers()[1] if mask is not None and mask.any() else None
    return pa.Array.from_buffers(_TS, len(values), [validity, pa.py_buffer(values)],
                                 null_count=-1 if validity is not None else 0)


class ChunkLog:
    """The non-BAR events of one chunk, recorded by the bus's C core as they happen.

    The C core's buffers arrive as they were recorded, row-major int64 bytes (no copy on the hot path, see
    `_hotbus.c`); the columns are numpy views into them, made contiguous by whoever builds tables (the store's
    writer process, or a first read of a run's events). Nothing per event is a Python object, so a chunk
    pickles at memcpy speed. `common` holds 4 values per event: row << 4 | type, cause (seq, ~row for a BAR,
    NO_CAUSE), publish clock, source (code into `strings`). `payload[type]` holds that type's schema fields
    per event of the type, in their order: float64 bits (a null is `NULL_FLOAT_BITS`), int64, or int64 codes
    into `strings` (-1 for None). Dispatch is FIFO, so the k-th `received` clock is the k-th published
    event's; an event's processing ends when the next one is received, or at the clock recorded in
    `drain_ends` for the last event of a drain.
    """

    __slots__ = ("common", "payload", "links", "received", "drain_ends", "strings", "_words")

    def __init__(self, common: bytes = b"", payload: list[bytes | None] | None = None,
                 links: tuple[bytes, bytes] = (b"", b""), received: bytes = b"", drain_ends: bytes = b"",
                 strings: list[str] | None = None) -> None:
        self.common = common
        self.payload: list[bytes | None] = payload if payload is not None else [None] * NTYPES
        self.links = links  # flat pairs: (index in chunk of the event, one of its links), int64 bytes each
        self.received = received  # clock at dispatch
        self.drain_ends = drain_ends  # flat (index of a drain's last event, clock)
        self.strings: list[str] = strings if strings is not None else []
        self._words = np.frombuffer(common, dtype=np.int64).reshape(-1, 4)

    def __len__(self) -> int:
        return len(self._words)

    @property
    def rt(self) -> np.ndarray:
        """row << 4 | event type, per event (a strided view)."""
        return self._words[:, 0]

    @property
    def cause(self) -> np.ndarray:
        return self._words[:, 1]

    @property
    def emitted(self) -> np.ndarray:
        """Clock at publish."""
        return self._words[:, 2]

    @property
    def source(self) -> np.ndarray:
        return self._words[:, 3]

    def payload_fields(self, event_type: int) -> np.ndarray | None:
        """That type's recorded payload: one row per event, one column per schema field (int64 words)."""
        raw = self.payload[event_type]
        if raw is None:
            return None
        return np.frombuffer(raw, dtype=np.int64).reshape(-1, len(PAYLOAD_FIELDS[EventType(event_type)]))

    def __reduce_ex__(self, protocol: int) -> tuple:
        """Pickled with protocol 5, big buffers are PickleBuffers: a pickler with a buffer_callback (the store's
        writer transport) passes them out of band, so they are copied once, straight into shared memory, not
        first into the pickle. (A Pickler's reducer_override never sees bytes: CPython pickles them directly.)"""
        big = _out_of_band if protocol >= 5 else _same
        payload = [None if raw is None else big(raw) for raw in self.payload]
        return (ChunkLog, (big(self.common), payload, (big(self.links[0]), big(self.links[1])), big(self.received),
                           big(self.drain_ends), self.strings))


_OUT_OF_BAND_MIN = 1 << 12  # smaller columns cost more to frame (a length, a slice) than to copy


def _out_of_band(b: bytes) -> Any:
    return pickle.PickleBuffer(b) if len(b) >= _OUT_OF_BAND_MIN else b


def _same(b: bytes) -> bytes:
    return b


def _payload_col(v: np.ndarray, typ: pa.DataType, strings: pa.Array) -> pa.Array:
    """One recorded payload column (int64 words, maybe a strided view) -> Arrow, vectorized."""
    v = np.ascontiguousarray(v)
    if pa.types.is_floating(typ):
        null = v == NULL_FLOAT_BITS
        return pa.array(v.view(np.float64), mask=null if null.any() else None)
    if pa.types.is_integer(typ):
        return pa.array(v.astype(typ.to_pandas_dtype(), copy=False))
    return codes_of(v, strings)


assert len(EventType) <= NTYPES
_TYPE_NAMES = [EventType(t).name if t < len(EventType) else "" for t in range(NTYPES)]


class MarketWindow(NamedTuple):
    """Rows [start, start + len(ts)) of the market columns that a batch's tables read.

    A writer in another process receives the whole data set once (`whole`) and keeps it for the runs
    that follow: see store/service.py for why it is not forked."""

    start: int
    symbols: list[str]
    ts: np.ndarray
    symbol_idx: np.ndarray
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    key: str | None = None  # the data set's market set key, once a writer process has computed it

    @classmethod
    def whole(cls, market: MarketData) -> MarketWindow:
        """Every row of `market` (views, no copy)."""
        return cls(0, list(market.symbols), market.ts, market.symbol_idx, market.open, market.high, market.low,
                   market.close, market.volume)


class EventBatch:
    """One chunk of a run's events in publish order, convertible to per-type Arrow tables."""

    __slots__ = ("correlation_id", "anchor_wall_ns", "anchor_tick", "ns_per_tick", "bars", "log", "nonbar_before",
                 "prev_bar_seq", "type_counts", "_bar_seq_arr", "_rows_arr", "_types_arr")

    def __init__(self, correlation_id: str, anchor_wall_ns: int, anchor_tick: int, ns_per_tick: float,
                 bars: BarBlock, log: ChunkLog, nonbar_before: int, prev_bar_seq: int | None = None,
                 type_counts: list[int] | None = None) -> None:
        self.correlation_id = correlation_id
        # Recorded clocks are the C core's ticks (see _hotbus.c): wall = anchor_wall + (tick - anchor_tick) * rate
        self.anchor_wall_ns = anchor_wall_ns
        self.anchor_tick = anchor_tick
        self.ns_per_tick = ns_per_tick
        self.bars = bars
        self.log = log
        self.nonbar_before = nonbar_before
        # seq of the BAR of row `bars.row_start - 1` (flushed in an earlier batch): events published after
        # that flush while it was the current row (end of data, between chunks) are caused by it.
        self.prev_bar_seq = prev_bar_seq
        # Non-BAR events per type value (the bus counts them as it publishes), or None: counted from the log.
        self.type_counts = type_counts
        # Derived arrays, made when first needed: not on the engine's side of a store run (flush is on the hot path).
        self._bar_seq_arr: np.ndarray | None = None
        self._rows_arr: np.ndarray | None = None
        self._types_arr: np.ndarray | None = None

    def __len__(self) -> int:
        return (self.bars.row_stop - self.bars.row_start) + len(self.log)

    _STATE = ("correlation_id", "anchor_wall_ns", "anchor_tick", "ns_per_tick", "bars", "log", "nonbar_before",
              "prev_bar_seq", "type_counts")

    def __getstate__(self) -> tuple:
        """Pickle only what is recorded (a store's writer process receives batches); derived arrays are rebuilt."""
        return tuple(getattr(self, k) for k in self._STATE)

    def __setstate__(self, state: tuple) -> None:
        self.__init__(*state)

    @property
    def _rows(self) -> np.ndarray:
        """Market-data row of each non-BAR event."""
        if self._rows_arr is None:
            self._rows_arr = self.log.rt >> 4
        return self._rows_arr

    @property
    def _types(self) -> np.ndarray:
        """Event type value of each non-BAR event."""
        if self._types_arr is None:
            self._types_arr = self.log.rt & 15
        return self._types_arr

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        n_bars = self.bars.row_stop - self.bars.row_start
        if n_bars:
            out["BAR"] = n_bars
        per_type = (self.type_counts if self.type_counts is not None
                    else np.bincount(self._types, minlength=NTYPES).tolist())  # Python ints: they go to JSON
        for t, c in enumerate(per_type):
            if c:
                out[_TYPE_NAMES[t]] = c
        return out

    def _wall(self, ticks: np.ndarray) -> np.ndarray:
        """Recorded clock ticks -> wall-clock ns (one anchor per run, a rate measured at each flush)."""
        if self.ns_per_tick == 1.0:
            return ticks - self.anchor_tick + self.anchor_wall_ns
        ns = np.rint((np.asarray(ticks, dtype=np.int64) - self.anchor_tick) * self.ns_per_tick).astype(np.int64)
        return ns + self.anchor_wall_ns

    @property
    def bar_seq(self) -> np.ndarray:
        """seq of each BAR: its row + the non-BAR events published before its dispatch started."""
        if self._bar_seq_arr is None:
            # Counted, not searched: the events are in row order, so the events before row r's BAR are those
            # of earlier batches, those of rows before this batch, and a running sum of events per row.
            b = self.bars
            n = b.row_stop - b.row_start
            rel = self._rows - b.row_start
            earlier = int(np.searchsorted(rel, 0))  # events of rows before this batch's (published after its flush)
            per_row = np.bincount(rel[earlier:], minlength=n)[:n]
            before = np.cumsum(per_row) - per_row
            rows = np.arange(b.row_start, b.row_stop, dtype=np.int64)
            self._bar_seq_arr = rows + (self.nonbar_before + earlier) + before
        return self._bar_seq_arr

    def _bar_seqs(self, rows: np.ndarray) -> np.ndarray:
        """seq of the BARs of `rows` (rows of this batch, or the row just before it)."""
        b = self.bars
        prev = rows == b.row_start - 1
        if self.prev_bar_seq is not None and prev.any():
            out = np.full(len(rows), self.prev_bar_seq, dtype=np.int64)
            out[~prev] = self._bar_seqs(rows[~prev])
            return out
        if len(rows) and (rows.min() < b.row_start or rows.max() >= b.row_stop):
            raise ValueError(f"cause refers to a BAR row outside batch rows [{b.row_start}, {b.row_stop})")
        return self.bar_seq[rows - b.row_start]

    def _resolve(self, refs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Causes/links as seqs: (values, null mask). Negative refs are BAR rows (~row)."""
        out = refs.copy()
        null = out == NO_CAUSE
        bar = (out < 0) & ~null
        if bar.any():
            out[bar] = self._bar_seqs(~out[bar])
        return out, null

    def window(self, market: MarketData) -> MarketWindow:
        """The market rows this batch's tables read (its bars and the rows its other events refer to);
        views, no copy."""
        lo, hi = self.bars.row_start, self.bars.row_stop
        if len(self._rows):
            lo = min(lo, max(int(self._rows.min()), 0))
            hi = max(hi, int(self._rows.max()) + 1)
        hi = min(hi, len(market.ts))
        lo = min(lo, hi)
        sl = slice(lo, hi)
        return MarketWindow(lo, list(market.symbols), market.ts[sl], market.symbol_idx[sl], market.open[sl],
                            market.high[sl], market.low[sl], market.close[sl], market.volume[sl])

    def tables(self, market: MarketData | MarketWindow, market_set: str | None = None) -> dict[EventType, pa.Table]:
        """Typed Arrow tables, one per event type present, rows in seq order.

        `market_set`: the BAR table carries references to that stored market set (`market_set`,
        `market_row`) instead of its payload columns (the event store's form, see store/market.py)."""
        if not isinstance(market, MarketWindow):
            market = self.window(market)
        out: dict[EventType, pa.Table] = {}
        if self.bars.row_stop > self.bars.row_start:
            out[EventType.BAR] = self._bar_table(market, market_set)
        log = self.log
        n = len(log)
        if not n:
            return out
        # Columns of every event at once (vectorized), then one take per type.
        rows = self._rows
        seq = rows + 1 + self.nonbar_before + np.arange(n, dtype=np.int64)
        ts = market.ts[np.maximum(rows, 0) - market.start] if len(market.ts) else np.zeros(n, dtype=np.int64)
        cause, cause_null = self._resolve(log.cause)
        emitted = self._wall(log.emitted)
        received = np.zeros(n, dtype=np.int64)
        processed = np.zeros(n, dtype=np.int64)
        rx = np.frombuffer(log.received, dtype=np.int64)
        m = len(rx)  # events dispatched (all of them unless the run failed)
        received[:m] = self._wall(rx)
        if m > 1:
            processed[: m - 1] = received[1:m]
        ends = np.frombuffer(log.drain_ends, dtype=np.int64).reshape(-1, 2)
        if len(ends):
            processed[ends[:, 0]] = self._wall(ends[:, 1])
        rx_null = np.arange(n) >= m
        px_null = rx_null | ~self._processed_known(m, ends, n)
        strings = pa.array(log.strings, type=pa.string())
        sources = np.ascontiguousarray(log.source)
        links = self._links(n)
        for t in np.unique(self._types).tolist():
            idx = np.flatnonzero(self._types == t)
            etype = EventType(t)
            k = len(idx)
            pick = pa.array(idx)
            cols: list[Any] = [
                const_code(self.correlation_id, k),
                pa.array(seq[idx]),
                const_code(etype.name, k),
                _ts(ts[idx]),
                pa.array(cause[idx], mask=cause_null[idx]),
                codes_of(sources[idx], strings),  # per type: its dictionary holds the sources it has
                em := _ts(emitted[idx]),  # created == emitted: events are published as they are built
                em,
                _ts(received[idx], rx_null[idx]),  # never received: published, then the run failed
                _ts(processed[idx], px_null[idx]),
                pa.array(np.full(k, SCHEMA_VERSION, dtype=np.int16)),
                links.take(pick),
            ]
            fields = log.payload_fields(t)
            assert fields is not None, f"{etype.name} events without recorded payload"
            for f, (_, typ) in enumerate(PAYLOAD_FIELDS[etype]):
                cols.append(_payload_col(fields[:, f], typ, strings))
            out[etype] = pa.Table.from_arrays(cols, schema=recorded_schema(etype))
        return dict(sorted(out.items()))

    @staticmethod
    def _processed_known(m: int, ends: np.ndarray, n: int) -> np.ndarray:
        """Which events have a known end of processing: followed in their drain, or ending one."""
        known = np.zeros(n, dtype=bool)
        if m == 0:
            return known
        is_end = np.zeros(m, dtype=bool)
        if len(ends):
            is_end[ends[:, 0]] = True
        known[:m] = is_end
        # k < m-1 not ending a drain: the next event k+1 was received in the same drain
        known[: m - 1] |= ~is_end[: m - 1]
        return known

    def _links(self, n: int) -> pa.Array:
        """Each event's links as a list column (null where it has none); pairs arrive in event order."""
        idx = np.frombuffer(self.log.links[0], dtype=np.int64)
        if not len(idx):
            return pa.nulls(n, type=pa.list_(pa.int64()))
        values, _ = self._resolve(np.frombuffer(self.log.links[1], dtype=np.int64))
        sizes = np.bincount(idx, minlength=n)
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values), mask=pa.array(sizes == 0))

    def _bar_table(self, market: MarketWindow, market_set: str | None = None) -> pa.Table:
        b = self.bars
        sl = slice(b.row_start - market.start, b.row_stop - market.start)
        n = b.row_stop - b.row_start
        emitted = np.full(n, self._wall(np.int64(b.emitted_ns)), dtype=np.int64)
        received = np.zeros(n, dtype=np.int64)
        processed = np.zeros(n, dtype=np.int64)
        mask = np.ones(n, dtype=bool)  # True = null: BAR clocks are sampled; others keep the chunk's emission
        sampled = b.sampled
        if len(sampled):
            idx = sampled[:, 0] - b.row_start
            received[idx] = self._wall(sampled[:, 1])
            processed[idx] = self._wall(sampled[:, 2])
            emitted[idx] = received[idx]  # a bar is dispatched as the feed emits it: no queue
            mask[idx] = False
        sym = pa.DictionaryArray.from_arrays(pa.array(market.symbol_idx[sl].astype(np.int32, copy=False)),
                                             pa.array(market.symbols, pa.string()))
        cols = [
            const_code(self.correlation_id, n),
            pa.array(self.bar_seq),
            const_code("BAR", n),
            _ts(market.ts[sl]),
            pa.array(np.zeros(n, dtype=np.int64)),  # a BAR's cause is the run start (seq 0)
            const_code("data", n),
            em := _ts(emitted),  # created == emitted
            em,
            _ts(received, mask),
            _ts(processed, mask),
            pa.array(np.full(n, SCHEMA_VERSION, dtype=np.int16)),
            pa.nulls(n, type=pa.list_(pa.int64())),
            sym,
        ]
        schema = recorded_schema(EventType.BAR)
        if market_set is not None:  # the payload is the stored market set's rows [row_start, row_stop)
            names = schema.names[:len(cols)] + ["market_set", "market_row"]
            cols += [const_code(market_set, n), pa.array(np.arange(b.row_start, b.row_stop, dtype=np.int64))]
            return pa.Table.from_arrays(cols, names=names)
        cols += [pa.array(market.open[sl]), pa.array(market.high[sl]), pa.array(market.low[sl]),
                 pa.array(market.close[sl]), pa.array(market.volume[sl])]
        return pa.Table.from_arrays(cols, schema=schema)


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

    def end(self, totals: RunTotals, wait: bool = True) -> None:
        self.totals = totals

    def wait(self) -> None:
        """Nothing to wait for: the events are in memory."""

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
