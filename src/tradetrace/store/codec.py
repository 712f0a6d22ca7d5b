"""Event tables <-> Parquet files: the encodings that make an event cost ~10 bytes on disk.

Why each choice (DESIGN.md figures: 16 B/event with int ids + delta encoding):
- `event_type` is not a file column: it is the hive partition (`event_type=FILL/`), so DuckDB and
  Polars read it from the path; the reader adds it back as a column.
- seq, causation_seq, integer payloads and every timestamp use DELTA_BINARY_PACKED (seq and market
  time step by small constants); strings use dictionaries (the run id is stored once per file).
- BAR prices rounded to at most 4 decimals (every real or synthetic feed we read) are stored as
  DECIMAL(18,4) on INT64 with delta encoding: lossless (checked per file; otherwise float64 with
  byte-stream-split), and 2.5x smaller than float64. Readers get float64 back.
- Other float columns (P&L, equity, fills) use BYTE_STREAM_SPLIT: they rarely repeat, so a dictionary
  costs hashing for nothing (measured on the reference run: 6% smaller and ~10% faster to write).
- Big row groups (128k rows): few of them per file, yet a point lookup decodes one, not the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tradetrace.events.recorder import const_code
from tradetrace.events.types import EventType, recorded_schema
from tradetrace.store._prices import decimal_words

ROW_GROUP = 131_072
#: Row groups of the small (non-BAR) types in compacted files: a lineage step reads one row group of
#: the type it lands on, so it decodes ~8k rows instead of a whole 40k-row file.
POINT_ROW_GROUP = 8_192
PRICE_SCALE = 4
_DECIMAL = pa.decimal128(18, PRICE_SCALE)
_DECIMAL_COLUMNS = {EventType.BAR: ("open", "high", "low", "close")}
_NO_DELTA = {"version"}
#: Timestamp columns stored with a dictionary instead of deltas. A BAR's created/emitted clock is its chunk's
#: emission (one value per chunk) except on clock-sampled bars (every 64th), so deltas jump twice per 64 rows
#: and every delta block is wide; a dictionary holds a few thousand values per row group (measured on 1M
#: BARs: file 114 -> 84 ms to encode, 864 -> 486 KB).
_DICT_COLUMNS = {EventType.BAR: ("created_at", "emitted_at")}


def _as_decimal(col: pa.ChunkedArray) -> pa.Array | None:
    """float64 prices -> DECIMAL(18,4) if exactly representable (and no NaN), else None.

    One pass in C (`_prices.decimal_words`, ~4x faster than the numpy passes it replaced): the writer
    runs this on every BAR file's four price columns."""
    if len(col) == 0 or col.null_count:
        return None
    x = np.ascontiguousarray(col.to_numpy(), dtype=np.float64)
    words = decimal_words(x, PRICE_SCALE)
    if words is None:
        return None
    return pa.Array.from_buffers(_DECIMAL, len(x), [None, pa.py_buffer(words)])


def decimal_to_float(arr: pa.Array, out: np.ndarray | None = None) -> np.ndarray:
    """A DECIMAL(18,s) array written by `_as_decimal` as float64 (null slots hold garbage: mask them).

    Only the low word of each int128 is read: `_as_decimal` keeps |ticks| < 1e17, inside int64."""
    words = np.frombuffer(arr.buffers()[1], dtype=np.int64)[2 * arr.offset: 2 * (arr.offset + len(arr))]
    return np.divide(words[0::2], 10**arr.type.scale, out=out)


def _from_decimal(col: pa.ChunkedArray) -> pa.Array:
    arr = col.combine_chunks()
    mask = np.asarray(arr.is_null()) if arr.null_count else None
    return pa.array(decimal_to_float(arr), mask=mask)


def to_disk(table: pa.Table, etype: EventType) -> tuple[pa.Table, dict[str, str], list[str], list[str]]:
    """The table as stored: (table, column encodings, dictionary columns, byte-stream-split columns)."""
    if "event_type" in table.column_names:  # the hive partition, not a file column
        table = table.drop_columns(["event_type"])
    return _encodings(table, _DECIMAL_COLUMNS.get(etype, ()), _DICT_COLUMNS.get(etype, ()))


#: Columns every event has a value in: stored REQUIRED. Why: Parquet encodes a definition level per value of
#: an OPTIONAL column, even when none is null; for these 9 columns that was ~17% of the writer's encoding time
#: (a segment of 262k BARs and 61k other events: 48 -> 40 ms). Readers give them back nullable, as recorded.
NEVER_NULL = frozenset({"correlation_id", "seq", "timestamp", "source_container", "created_at", "emitted_at",
                        "version", "market_set", "market_row"})


def _required(table: pa.Table) -> pa.Table:
    """`table` with its NEVER_NULL columns marked non-nullable (no copy); one that holds a null stays as it is."""
    fields = [f.with_nullable(False) if f.name in NEVER_NULL and f.nullable and table.column(i).null_count == 0
              else f for i, f in enumerate(table.schema)]
    return pa.Table.from_arrays(table.columns, schema=pa.schema(fields, metadata=table.schema.metadata))


def _encodings(table: pa.Table, decimal: tuple[str, ...],
               dictionary: tuple[str, ...] = ()) -> tuple[pa.Table, dict[str, str], list[str], list[str]]:
    table = _required(table)
    enc: dict[str, str] = {}
    bss: list[str] = []
    for i, f in enumerate(table.schema):
        if f.name in dictionary:
            continue
        if f.name in decimal:
            d = _as_decimal(table.column(i))
            if d is not None:
                table = table.set_column(i, pa.field(f.name, _DECIMAL), d)
                enc[f.name] = "DELTA_BINARY_PACKED"
                continue
            bss.append(f.name)
        elif (pa.types.is_integer(f.type) or pa.types.is_timestamp(f.type)) and f.name not in _NO_DELTA:
            enc[f.name] = "DELTA_BINARY_PACKED"
        elif pa.types.is_floating(f.type):  # prices, P&L, equity: rarely repeat, so no dictionary to hash
            bss.append(f.name)
    dict_cols = [f.name for f in table.schema
                 if f.name not in enc and f.name not in bss and not pa.types.is_list(f.type)]
    return table, enc, dict_cols, bss


def _write(t: pa.Table, enc: dict[str, str], dict_cols: list[str], bss: list[str], compression: str,
           row_group_size: int) -> pa.Buffer:
    sink = pa.BufferOutputStream()
    # a copy: pyarrow adds the byte-stream-split columns to the column_encoding dict it is given
    pq.write_table(t, sink, compression=compression, row_group_size=row_group_size, use_dictionary=dict_cols,
                   column_encoding=dict(enc) or None, use_byte_stream_split=bss or False,
                   store_decimal_as_integer=True, write_statistics=["seq"], data_page_version="2.0")
    return sink.getvalue()


def parquet_bytes(table: pa.Table, etype: EventType, compression: str, row_group_size: int = ROW_GROUP) -> pa.Buffer:
    """One event table as a whole Parquet file in memory (`layout.write_durably` puts it on disk)."""
    return _write(*to_disk(table, etype), compression, row_group_size)


def market_bytes(table: pa.Table, compression: str) -> pa.Buffer:
    """A market set (store/market.py) as a Parquet file: its prices encoded as a BAR file's were."""
    return _write(*_encodings(table, _DECIMAL_COLUMNS[EventType.BAR]), compression, ROW_GROUP)


def from_disk(table: pa.Table, etype: EventType) -> pa.Table:
    """A stored table back to the recorded schema (`recorded_schema`: dictionary strings; an event_type
    column; float64 prices), extra columns kept."""
    if "market_row" in table.column_names:  # a reader that forgot its market set would return null prices
        raise ValueError("BAR table stored with market set references: attach its payload first (store/market.py)")
    schema = recorded_schema(etype)
    cols = {}
    for f in table.schema:
        c = table.column(f.name)
        if pa.types.is_decimal(f.type):
            c = _from_decimal(c)
        elif pa.types.is_string(f.type):  # files written before string columns were recorded as dictionaries
            c = c.dictionary_encode()
        cols[f.name] = c
    n = table.num_rows
    arrays = []
    fields = []
    for f in schema:
        if f.name == "event_type":
            arrays.append(const_code(etype.name, n))
        elif f.name in cols:
            arrays.append(cols.pop(f.name))
        else:
            arrays.append(pa.nulls(n, f.type))
        fields.append(f)
    for name, c in cols.items():  # e.g. `weight` of sampled runs
        if name in ("date",):
            continue
        arrays.append(c)
        fields.append(pa.field(name, c.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def read_parquet(path: Path, columns: list[str] | None = None, *, dictionary_strings: bool = False,
                 head: int | None = None) -> pa.Table:
    """One stored file as stored (`from_disk` turns it into an event table), or only its first `head` rows
    (a file is sorted by seq: its earliest events; only the row groups holding them are decoded).

    Through `ParquetFile`, not `pq.read_table`: the latter goes through pyarrow.dataset, whose import alone
    costs ~170 ms, most of a CLI command's first load. `dictionary_strings` keeps string columns
    dictionary-encoded (decoding a run id a million times is the most expensive step of a plain read;
    `reader.merge_by_seq` decodes each distinct value once)."""
    names = None
    if dictionary_strings:
        with pq.ParquetFile(path) as pf:
            names = [f.name for f in pf.schema_arrow if pa.types.is_string(f.type)] or None
    with pq.ParquetFile(path, read_dictionary=names) as pf:
        if head is not None:
            first = next(pf.iter_batches(batch_size=max(head, 1), columns=columns, use_threads=False), None)
            if first is not None:
                return pa.Table.from_batches([first]).slice(0, head)
        return pf.read(columns=columns, use_threads=True)
