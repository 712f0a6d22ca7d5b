"""Market sets: a data set's BAR payloads (the OHLCV of every row) stored once, shared by every run on it.

Why: a BAR event's payload is a row of the market data, identical in every run on that data set. Stored
inline it was ~90% of a run's BAR bytes (8.2 of 9.1 MB for 1M bars) and ~64% of the BAR file's encoding
time, paid again by every run of a sweep, on the writer's core while the engine runs. On this machine's
2 vCPUs the writer's work slows the engine itself (a writer that received batches and did nothing with
them left a run as fast as tracing into memory), so writer CPU is run time: without the payloads a 1M-bar
run's writer went from ~435 to ~338 ms of CPU (same batches, in one process). So a data set's rows are
written once, content-addressed, to

    <root>/_market/<key>.parquet     market_set, market_row, timestamp, symbol, open, high, low, close, volume

and a run's BAR files carry, instead of the five payload columns, `market_set` (the key, a one-value
dictionary column) and `market_row` (the data set row, delta-encoded: both cost a few KB per 1M bars).
Every BAR event is still one row of its run's BAR file, with all its TracedEvent fields; readers
(`attach`) put the payload back, so `load_events` returns what it always did. Direct SQL joins on the two
columns (README: "BAR prices in SQL"):

    SELECT b.seq, m.close FROM read_parquet('<root>/*/event_type=BAR/*.parquet', hive_partitioning=true) b
    JOIN read_parquet('<root>/_market/*.parquet') m USING (market_set, market_row)

The key is a SHA-256 of the rows (timestamps, symbols, OHLCV): the same data gives the same key in any
process, on any day, so a sweep's runs, reruns and other sweeps share one file. The writer computes it (a
fork from the data it inherited, a writer process once per data set it receives, a writer thread once per
MarketData), not the engine: it cost a process's first run ~35 ms per 1M bars (~5% of the run). A data set's
arrays become read-only when its first run starts, so it cannot change under its key.

Data sets over `MAX_SET_BYTES` keep their payload inline in each run's BAR files: a writer process does not
hold them whole (service.py sends their rows batch by batch), so it could not write the set.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from tradetrace.store import layout

try:
    import fcntl
except ImportError:  # not a POSIX system: no lock (see collect: a concurrent prune may then drop a set in use)
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from tradetrace.engine.data import MarketData
    from tradetrace.events.recorder import MarketWindow

MARKET_DIR = "_market"
#: The BAR payload columns a market set holds (the run's BAR files hold the references instead).
PAYLOAD = ("open", "high", "low", "close", "volume")
#: The reference columns of a run's BAR files.
REFS = ("market_set", "market_row")
#: Data sets larger than this (market columns' bytes) keep their BAR payloads inline (see module docstring);
#: the same bound as the writer process's "send whole" rule.
MAX_SET_BYTES = 96 << 20
#: Temporary set files older than this are leftovers of killed writers (`collect` removes them).
STALE_TMP_S = 3600


def nbytes(market: MarketData) -> int:
    """Bytes of the market columns a run's BARs read (what a writer process would hold)."""
    return sum(a.nbytes for a in (market.ts, market.symbol_idx, market.open, market.high, market.low, market.close,
                                  market.volume))


def uses_set(market: MarketData) -> bool:
    """Whether a run on this data set stores its BAR payloads in a market set (not too big, not empty).

    If so, the data set's arrays become read-only now: a writer computes the set's key from them (`set_key`)
    while the run goes on, and the key stands for these values (an in-place edit would make later runs point
    at prices they did not see; make a new MarketData instead)."""
    if len(market.ts) == 0 or nbytes(market) > MAX_SET_BYTES:
        return False
    for a in (market.ts, market.symbol_idx, market.open, market.high, market.low, market.close, market.volume):
        a.flags.writeable = False
    return True


def content_key(market: MarketData | MarketWindow) -> str:
    """SHA-256 of the rows (timestamps, symbols, OHLCV), cut to 32 hex digits; ~35 ms per 1M bars."""
    h = hashlib.sha256()
    h.update(b"tradetrace-market-set-v1\0")
    h.update("\0".join(market.symbols).encode())
    for a in (market.ts, market.symbol_idx, market.open, market.high, market.low, market.close, market.volume):
        arr = np.ascontiguousarray(a)
        h.update(str(arr.dtype).encode())
        h.update(arr)
    return h.hexdigest()[:32]


def set_key(market: MarketData) -> str | None:
    """The data set's content key, or None when its BAR payloads stay inline (too big, or empty). Computed once
    per MarketData (kept in `derived`). A run leaves it to its writer (see the module docstring)."""
    if not uses_set(market):
        return None
    key = market.derived.get("market_set")
    if key is None:
        key = market.derived["market_set"] = content_key(market)
    return key


def is_key(key: Any) -> bool:
    """Whether `key` is a market set key (32 lowercase hex digits, see content_key)."""
    return isinstance(key, str) and len(key) == 32 and all(c in "0123456789abcdef" for c in key)


def set_path(root: Path, key: str) -> Path:
    if not is_key(key):
        raise layout.StoreError(f"invalid market set key {key!r}")
    return Path(root) / MARKET_DIR / f"{key}.parquet"


def set_table(key: str, market: MarketData | MarketWindow) -> pa.Table:
    """A whole data set as the rows of its market set file (market rows in order: position == market_row)."""
    from tradetrace.events.recorder import const_code

    if getattr(market, "start", 0) != 0:
        raise ValueError("a market set is written from the whole data set")
    n = len(market.ts)
    sym = pa.DictionaryArray.from_arrays(pa.array(np.asarray(market.symbol_idx, dtype=np.int32)),
                                         pa.array(list(market.symbols), pa.string()))
    return pa.table({
        "market_set": const_code(key, n),
        "market_row": pa.array(np.arange(n, dtype=np.int64)),
        "timestamp": pa.array(np.asarray(market.ts, dtype=np.int64)).view(pa.timestamp("ns", tz="UTC")),
        "symbol": sym,
        **{c: pa.array(np.asarray(getattr(market, c), dtype=np.float64)) for c in PAYLOAD},
    })


def file_to_write(root: Path, key: str, market: MarketData | MarketWindow,
                  compression: str) -> tuple[Path, pa.Buffer] | None:
    """(path, Parquet bytes) of the market set if the store lacks it, for the run's first segment commit (so
    no BAR row is durable before the rows it refers to); None if it is there (written atomically: present
    means complete)."""
    from tradetrace.store import codec

    path = set_path(root, key)
    layout.make_dirs(path.parent)
    with _lock(root, exclusive=False):  # not while `prune` collects sets no manifest names (see collect)
        if path.exists():
            return None
    return path, codec.market_bytes(set_table(key, market), compression)


def ensure(root: Path, market: MarketData, compression: str = "zstd") -> str | None:
    """Store the data set's market set now if the store lacks it; returns its key (None: payloads stay inline).

    A sweep's coordinator calls this before its workers start: otherwise each worker's first run writes the
    same set (a 40k-bar sweep run's writer spent ~6 ms on it, a 1M-bar one ~150 ms)."""
    key = set_key(market)
    if key is not None:
        got = file_to_write(root, key, market, compression)
        if got is not None:
            layout.write_durably(*got)
    return key


@contextmanager
def _lock(root: Path, exclusive: bool) -> Iterator[None]:
    """The market sets' lock: shared while a writer checks a set exists, exclusive while `collect` deletes."""
    if fcntl is None:
        yield
        return
    d = Path(root) / MARKET_DIR
    layout.make_dirs(d)
    fd = os.open(d / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock


class Payloads:
    """Where `attach` finds a market set's rows: the store's files (read once per object) or, for tables a
    writer keeps in memory, the run's own MarketData."""

    #: At most this many rows are looked up by reading only their row groups (a lineage step's BAR), not the set.
    POINT_ROWS = 64

    def __init__(self, root: Path | None = None, market: MarketData | None = None) -> None:
        self.root = root
        self.market = market
        self._sets: dict[str, pa.Table] = {}
        self._groups: dict[tuple[str, int], pa.Table] = {}

    def _path(self, key: str) -> Path:
        if self.root is None:
            raise layout.StoreError(f"market set {key} is not available here")
        path = set_path(self.root, key)
        if not path.exists():
            raise layout.StoreError(f"market set {key} (the BAR prices of this run) is missing from the event "
                                    f"store {self.root}: {path}")
        return path

    def _in_memory(self, key: str) -> bool:
        return self.market is not None and set_key(self.market) == key

    def rows(self, key: str) -> pa.Table:
        """The set's payload columns (as stored: DECIMAL prices where exact), row i = market_row i."""
        got = self._sets.get(key)
        if got is None:
            if self._in_memory(key):
                got = pa.table({c: getattr(self.market, c) for c in PAYLOAD})
            else:
                from tradetrace.store.codec import read_parquet

                got = read_parquet(self._path(key), list(PAYLOAD))
            self._sets[key] = got
        return got

    def take(self, key: str, idx: np.ndarray) -> pa.Table:
        """The payload rows `idx` (increasing market rows): a slice when they are a range; a few rows are read
        from their row groups only (a BAR at the end of a lineage walk: ~2 ms, not a whole 1M-row set)."""
        if len(idx) <= self.POINT_ROWS and key not in self._sets and not self._in_memory(key):
            return self._point_rows(key, idx)
        rows = self.rows(key)
        if len(idx) and (idx.min() < 0 or idx.max() >= rows.num_rows):
            raise layout.StoreError(f"BAR market_row out of range of market set {key} ({rows.num_rows} rows): "
                                    f"{int(idx.max())}")
        lo = int(idx[0]) if len(idx) else 0
        # A run's BARs are distinct rows in increasing order, so first and last tell whether they are a range
        # (every unsampled run: a slice, no copy) or a subset (sampled: a take).
        if len(idx) and idx[-1] - lo == len(idx) - 1:
            return rows.slice(lo, len(idx))
        return rows.take(pa.array(idx))

    def _point_rows(self, key: str, idx: np.ndarray) -> pa.Table:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(self._path(key))
        starts = np.cumsum([0] + [pf.metadata.row_group(g).num_rows for g in range(pf.metadata.num_row_groups)])
        parts = []
        for i in idx.tolist():
            g = int(np.searchsorted(starts, i, side="right")) - 1
            if i < 0 or not 0 <= g < pf.metadata.num_row_groups:
                raise layout.StoreError(f"BAR market_row {i} out of range of market set {key} ({starts[-1]} rows)")
            rg = self._groups.get((key, g))
            if rg is None:
                rg = self._groups[(key, g)] = pf.read_row_group(g, columns=list(PAYLOAD), use_threads=False)
            parts.append(rg.slice(i - int(starts[g]), 1))
        return pa.concat_tables(parts) if parts else pf.schema_arrow.empty_table().select(list(PAYLOAD))


def attach(table: pa.Table, payloads: Payloads) -> pa.Table:
    """A BAR table stored with references -> the same table with its payload columns instead (the order of
    the old inline files); a table without references is returned as it is."""
    if "market_row" not in table.column_names:
        return table
    distinct: set[str | None] = set()
    for chunk in table.column("market_set").chunks:  # a one-value dictionary per chunk: no pass over the rows
        one = isinstance(chunk, pa.DictionaryArray) and len(chunk.dictionary) == 1 and not chunk.null_count
        distinct.update(chunk.dictionary.to_pylist() if one else chunk.unique().to_pylist())
    base = table.drop_columns(list(REFS))
    if not distinct:  # no rows
        return _empty_payload(base)
    if len(distinct) > 1 or None in distinct:
        raise layout.StoreError(f"a BAR table refers to {len(distinct)} market sets; expected one")
    key = distinct.pop()
    picked = payloads.take(key, table.column("market_row").to_numpy())
    for c in PAYLOAD:
        base = base.append_column(c, picked.column(c))
    return base


def _empty_payload(base: pa.Table) -> pa.Table:
    for c in PAYLOAD:
        base = base.append_column(c, pa.array([], pa.float64()))
    return base


def collect(root: Path) -> list[str]:
    """Delete the market sets no run of the store refers to (after `prune`); returns their keys.

    Why it is safe beside running writers: a run's manifest names its set before its writer checks that
    the set exists, and that check and this scan exclude each other (`_lock`). A writer that checked
    first has its manifest seen here; one that checks after finds the set gone and writes it again."""
    from tradetrace.store import maintenance

    d = Path(root) / MARKET_DIR
    if not d.is_dir():
        return []
    with _lock(root, exclusive=True):
        used = set()
        for run in maintenance.run_ids(root):
            try:
                m = layout.read_json(layout.manifest_path(root, run))
            except FileNotFoundError:  # deleted meanwhile
                continue
            if m.get("market_set"):
                used.add(m["market_set"])
        gone = []
        for p in d.glob("*.parquet"):
            if p.stem not in used:
                p.unlink(missing_ok=True)
                gone.append(p.stem)
        # A writer killed while writing a set leaves its temporary file; one that is still writing renames its
        # file within a second, so only old ones are removed.
        for p in d.glob(".*.tmp"):
            try:
                if time.time() - p.stat().st_mtime > STALE_TMP_S:
                    p.unlink(missing_ok=True)
            except FileNotFoundError:
                continue
    return sorted(gone)
