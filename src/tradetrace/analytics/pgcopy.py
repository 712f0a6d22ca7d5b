"""Arrow table -> PostgreSQL binary COPY stream, vectorized with numpy (no Python loop per row).

Why binary: PostgreSQL parses binary COPY about twice as fast as CSV (no float/timestamp text
parsing; measured here: 0.77 s vs 1.5 s for 316k trade rows), and numpy builds the stream faster than
Arrow formats CSV. The encoding follows the target column types (read from the catalog), so an Arrow
string becomes a PostgreSQL uuid, jsonb or text as the table says. Unsupported types raise TypeError.

Format: signature, flags, extension length; per row an int16 field count then per field an int32
length (-1 = NULL) and the bytes; int16 -1 at the end. All integers big-endian.

How a chunk is built (the client shares the machine's cores with the server, so its CPU time is load
throughput): every stretch of bytes whose width is the same in every row (the field count, a NOT NULL
number's length and value, any field's length prefix) goes into one numpy structured array, so a run
of fixed columns is a few strided assignments; only variable bytes (strings, values of nullable fixed
columns) are separate Arrow arrays. Arrow's C++ `binary_join_element_wise` then interleaves the few
pieces row by row. For the trades table this is 15 pieces instead of 31 (one per field and length);
with UUIDs parsed once per distinct value and reused buffers, encoding 633k trade rows went from
0.48 s to 0.21 s of client CPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
TRAILER = b"\xff\xff"
PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in Unix microseconds
CHUNK_ROWS = 16_384  # ~5 MB of trade rows: big enough to amortize per-chunk work, small enough that
#   the allocator reuses its buffers (64k-row chunks took fresh pages each time: a third of the client CPU)

_HEX = np.full(256, 255, dtype=np.uint8)
for _k, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _k
for _k, _c in enumerate(b"ABCDEF"):
    _HEX[_c] = 10 + _k
_HEX_COLS = [k for k in range(36) if k not in (8, 13, 18, 23)]
_INT_WIDTH = {"bigint": ">i8", "integer": ">i4", "smallint": ">i2"}


def _valid(col: pa.Array) -> np.ndarray:
    if col.null_count == 0:
        return np.ones(len(col), dtype=bool)
    return np.asarray(col.is_valid().to_numpy(zero_copy_only=False), dtype=bool)


def _parse_uuids(s: pa.Array) -> np.ndarray:
    """n x 16 bytes of n non-null 36-character UUID strings."""
    n = len(s)
    if n and not pc.all(pc.equal(pc.binary_length(s), 36)).as_py():
        raise TypeError("uuid column holds strings that are not 36-character UUIDs")
    lo = int(np.frombuffer(s.buffers()[1], dtype=np.int32)[s.offset]) if n else 0
    chars = np.frombuffer(s.buffers()[2], dtype=np.uint8)[lo:lo + 36 * n].reshape(n, 36) if n else np.zeros((0, 36),
                                                                                                           np.uint8)
    nib = _HEX[chars[:, _HEX_COLS]]
    if n and nib.max() == 255:
        raise TypeError("uuid column holds a string with non-hex characters")
    return np.ascontiguousarray((nib[:, 0::2] << 4) | nib[:, 1::2], dtype=np.uint8)


def _uuid(col: pa.Array) -> np.ndarray:
    """n x 16 bytes (zeros where NULL). Parsed once per distinct value: a run id repeats on all its rows."""
    enc = pc.dictionary_encode(col.cast(pa.string()))
    uniq = _parse_uuids(enc.dictionary)
    idx = enc.indices.fill_null(0).to_numpy(zero_copy_only=False)
    return uniq[idx] if len(uniq) else np.zeros((len(col), 16), dtype=np.uint8)


def _fixed_values(col: pa.Array, pg_type: str) -> tuple[Any, np.ndarray]:
    """(numpy field dtype, values) of a fixed-width column; NULL slots hold a placeholder."""
    t = col.type
    if pg_type == "uuid":
        return np.dtype((np.uint8, 16)), _uuid(col)
    if pg_type == "double precision":
        return np.dtype(">f8"), col.cast(pa.float64()).fill_null(0.0).to_numpy()
    if pg_type in _INT_WIDTH:
        return np.dtype(_INT_WIDTH[pg_type]), col.cast(pa.int64()).fill_null(0).to_numpy()
    if pg_type == "boolean":
        return np.dtype("u1"), col.fill_null(False).to_numpy(zero_copy_only=False)
    if pg_type == "timestamp with time zone" and pa.types.is_timestamp(t):
        us = col.cast(pa.timestamp(t.unit)).cast(pa.int64()).fill_null(0).to_numpy()
        factor = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": None}[t.unit]
        us = us // 1_000 if factor is None else us * factor
        return np.dtype(">i8"), us - PG_EPOCH_US
    raise TypeError(f"binary COPY of Arrow {t} into PostgreSQL {pg_type} is not supported")


@dataclass
class _Chunk:
    """The pieces of a chunk's rows, in order: fixed-width runs (structured-array fields) and variable parts."""

    n: int
    pieces: list[Any] = field(default_factory=list)  # list of (dtype, values) fields, or a pa.BinaryArray

    def fixed(self, dtype: Any, values: Any) -> None:
        """Append a field of the same width in every row (`values`: one per row, or one for all)."""
        if not self.pieces or not isinstance(self.pieces[-1], list):
            self.pieces.append([])
        self.pieces[-1].append((np.dtype(dtype), values))

    def variable(self, arr: pa.Array) -> None:
        """Append bytes of varying width (NULL entries contribute none)."""
        self.pieces.append(arr)

    def arrays(self, spare: dict[int, np.ndarray] | None = None) -> list[pa.Array]:
        """The pieces as Arrow binary arrays. Fixed runs are built in the byte buffers of `spare` (by
        piece index) when they fit, and the buffers used are left there for the next chunk."""
        spare = {} if spare is None else spare
        out = []
        for k, p in enumerate(self.pieces):
            if isinstance(p, list):
                mat = _struct(self.n, p, spare.get(k))
                spare[k] = mat.reshape(-1)
                p = _rows_of(mat)
            out.append(p)
        return out


def _struct(n: int, fields: list[tuple[np.dtype, Any]], spare: np.ndarray | None = None) -> np.ndarray:
    """An n x w byte matrix whose rows are the given fields packed back to back (values converted to
    their big-endian field types by numpy's assignment). Built in the uint8 buffer `spare` when it is
    big enough: reusing one buffer per run of fields across chunks spares the kernel from handing out
    (and zeroing) fresh pages every chunk, a quarter of the encoder's time under load."""
    offsets = np.cumsum([0] + [d.itemsize for d, _ in fields])
    w = int(offsets[-1])
    dt = np.dtype({"names": [f"f{k}" for k in range(len(fields))], "formats": [d for d, _ in fields],
                   "offsets": offsets[:-1].tolist(), "itemsize": w})
    buf = spare[:n * w] if spare is not None and len(spare) >= n * w else np.empty(n * w, dtype=np.uint8)
    rec = buf.view(dt)
    for k, (_, values) in enumerate(fields):
        rec[f"f{k}"] = values
    return buf.reshape(n, w)


def _rows_of(mat: np.ndarray) -> pa.Array:
    """An n x w byte matrix as an Arrow binary array, one w-byte value per row (zero-copy)."""
    n, w = mat.shape
    data = pa.py_buffer(np.ascontiguousarray(mat, dtype=np.uint8))
    offsets = pa.py_buffer(np.arange(0, (n + 1) * w, w, dtype=np.int32))
    return pa.BinaryArray.from_buffers(pa.binary(), n, [None, offsets, data])


def _compact(mat: np.ndarray, valid: np.ndarray) -> pa.Array:
    """The rows of an n x w byte matrix as a binary array, empty where not `valid` (a NULL field's bytes)."""
    n, w = mat.shape
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(valid * w, out=offsets[1:])
    data = pa.py_buffer(np.ascontiguousarray(mat[valid], dtype=np.uint8))
    return pa.BinaryArray.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), data])


def _add_column(chunk: _Chunk, col: pa.Array, pg_type: str) -> None:
    valid = _valid(col)
    if pg_type in ("text", "character varying", "jsonb"):
        s = col.cast(pa.string())
        extra = 1 if pg_type == "jsonb" else 0  # jsonb's binary form is a version byte then the text
        lens = pc.binary_length(s).fill_null(0).to_numpy(zero_copy_only=False) + extra
        chunk.fixed(">i4", np.where(valid, lens, -1))
        data = pc.binary_join_element_wise(b"\x01", s.cast(pa.binary()), b"") if extra else s.cast(pa.binary())
        chunk.variable(data)  # NULL entries: skipped by the final join (no bytes)
        return
    dtype, values = _fixed_values(col, pg_type)
    w = dtype.itemsize
    if valid.all():
        chunk.fixed(">i4", w)  # a scalar: broadcast by the assignment
        chunk.fixed(dtype, values)
        return
    chunk.fixed(">i4", np.where(valid, w, -1))
    mat = _struct(len(col), [(dtype, values)])
    chunk.variable(_compact(mat, valid))


def _chunk(table: pa.Table, pg_types: list[str], spare: dict[int, np.ndarray]) -> bytes | memoryview:
    """The rows of one chunk of the stream (`spare`: reusable buffers, see `_Chunk.arrays`)."""
    n = table.num_rows
    chunk = _Chunk(n)
    chunk.fixed(">i2", table.num_columns)
    for k in range(table.num_columns):
        _add_column(chunk, table.column(k).combine_chunks(), pg_types[k])
    parts = chunk.arrays(spare)
    if len(parts) == 1:
        # Every field fixed-width and NOT NULL: the matrix is the stream. It leaves with the chunk,
        # so the next chunk must not build in it.
        spare.clear()
        rows = parts[0]
    else:
        # Interleave the parts row by row (into a new buffer: the spare ones are free again after).
        # NULL text entries are skipped: they contribute no bytes.
        rows = pc.binary_join_element_wise(*parts, b"", null_handling="skip")
    offsets = np.frombuffer(rows.buffers()[1], dtype=np.int32)
    lo, hi = int(offsets[rows.offset]), int(offsets[rows.offset + len(rows)])
    return memoryview(rows.buffers()[2])[lo:hi]


def encode(table: pa.Table, pg_types: list[str]) -> Iterator[bytes | memoryview]:
    """The binary COPY stream of `table` for columns of the given PostgreSQL types, in chunks."""
    if len(pg_types) != table.num_columns:
        raise ValueError(f"{table.num_columns} columns but {len(pg_types)} PostgreSQL types")
    yield HEADER
    spare: dict[int, np.ndarray] = {}
    for k in range(0, table.num_rows, CHUNK_ROWS):
        yield _chunk(table.slice(k, CHUNK_ROWS), pg_types, spare)
    yield TRAILER
