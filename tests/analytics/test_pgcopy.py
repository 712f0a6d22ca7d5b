"""Binary COPY encoding: byte-exact against a plain per-row encoder, and round trips through PostgreSQL
(NULLs in every column type, NaN/inf, unicode, jsonb, several chunks, sliced multi-chunk tables)."""

from __future__ import annotations

import json
import math
import struct
import uuid
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from tradetrace.analytics import pgcopy
from tradetrace.analytics.db import connect
from tradetrace.analytics.testing import temp_schema

PG_TYPES = ["uuid", "bigint", "integer", "smallint", "double precision", "boolean", "timestamp with time zone",
            "text", "jsonb"]
COLUMNS = ["id", "big", "int", "small", "x", "flag", "ts", "label", "doc"]


def sample(n: int, seed: int = 3) -> pa.Table:
    """`n` rows with NULLs in every column (about one in five), special floats and awkward strings."""
    rng = np.random.default_rng(seed)
    null = rng.random((len(COLUMNS), n)) < 0.2
    ids = [str(uuid.UUID(bytes=rng.bytes(16), version=4)) for _ in range(n // 3 + 1)]
    ids = [ids[k // 3].upper() if k % 7 == 0 else ids[k // 3] for k in range(n)]  # repeats, as run ids do
    special = [math.nan, math.inf, -math.inf, -0.0, 5e-324]
    xs = [special[k % 5] if k % 11 == 0 else float(v) for k, v in enumerate(rng.normal(0, 1e6, n))]
    labels = ["", "é€😀", "a\tb\nc", "plain", "x" * 300]
    cols: dict[str, list[Any]] = {
        "id": ids, "big": rng.integers(-2**62, 2**62, n).tolist(), "int": rng.integers(-2**31, 2**31, n).tolist(),
        "small": rng.integers(-2**15, 2**15, n).tolist(), "x": xs, "flag": (rng.random(n) < 0.5).tolist(),
        "ts": (rng.integers(0, 2**50, n) * 1000).tolist(), "label": [labels[k % 5] for k in range(n)],
        "doc": [json.dumps({"k": k, "s": labels[k % 5]}) for k in range(n)],
    }
    types = [pa.string(), pa.int64(), pa.int64(), pa.int64(), pa.float64(), pa.bool_(), pa.timestamp("ns", tz="UTC"),
             pa.string(), pa.string()]
    arrays = [pa.array([None if null[j, k] else v for k, v in enumerate(cols[c])], t)
              for j, (c, t) in enumerate(zip(COLUMNS, types, strict=True))]
    return pa.Table.from_arrays(arrays, names=COLUMNS)


def reference_rows(table: pa.Table) -> bytes:
    """The rows of the binary COPY stream, built one field at a time (the format, spelled out)."""
    fmt = {"bigint": ">q", "integer": ">i", "smallint": ">h", "double precision": ">d", "boolean": ">?"}
    out = bytearray()
    for row in table.cast(table.schema.set(6, pa.field("ts", pa.int64()))).to_pylist():
        out += struct.pack(">h", len(COLUMNS))
        for name, pg in zip(COLUMNS, PG_TYPES, strict=True):
            v = row[name]
            if v is None:
                out += struct.pack(">i", -1)
                continue
            if pg == "uuid":
                data = uuid.UUID(v).bytes
            elif pg == "timestamp with time zone":
                data = struct.pack(">q", v // 1000 - pgcopy.PG_EPOCH_US)
            elif pg == "text":
                data = v.encode()
            elif pg == "jsonb":
                data = b"\x01" + v.encode()
            else:
                data = struct.pack(fmt[pg], v)
            out += struct.pack(">i", len(data)) + data
    return bytes(out)


def test_encoding_is_byte_exact_with_the_format() -> None:
    table = sample(2 * pgcopy.CHUNK_ROWS + 100)
    chunks = list(pgcopy.encode(table, PG_TYPES))  # all held at once: none may share memory
    stream = b"".join(bytes(c) for c in chunks)
    same = stream == pgcopy.HEADER + reference_rows(table) + pgcopy.TRAILER  # (a bool: no megabyte diff on failure)
    assert same


def test_a_table_of_fixed_width_not_null_columns_is_encoded_without_joining() -> None:
    table = sample(3 * pgcopy.CHUNK_ROWS).select(["big", "x"]).drop_null()
    chunks = list(pgcopy.encode(table, ["bigint", "double precision"]))  # all held at once: none may share memory
    stream = b"".join(bytes(c) for c in chunks)
    expected = b"".join(struct.pack(">hiqid", 2, 8, b, 8, x) for b, x in zip(
        table.column("big").to_pylist(), table.column("x").to_pylist(), strict=True))
    same = stream == pgcopy.HEADER + expected + pgcopy.TRAILER
    assert same


def test_bad_uuid_strings_are_refused() -> None:
    with pytest.raises(TypeError, match="36-character"):
        list(pgcopy.encode(pa.table({"id": ["not-a-uuid"]}), ["uuid"]))
    with pytest.raises(TypeError, match="non-hex"):
        list(pgcopy.encode(pa.table({"id": ["zzzzzzzz-0000-0000-0000-000000000000"]}), ["uuid"]))


@pytest.mark.usefixtures("postgres_ready")
def test_round_trip_through_postgres_over_several_chunks() -> None:
    whole = sample(2 * pgcopy.CHUNK_ROWS + 4321)
    # Several Arrow chunks, and a slice that starts inside one: offsets must be honoured.
    table = pa.concat_tables([whole.slice(0, 7000), whole.slice(7000)]).slice(5)
    with temp_schema() as url, connect(url) as db:
        db.execute("CREATE TABLE copy_probe (n BIGSERIAL, id UUID, big BIGINT, int INTEGER, small SMALLINT, "
                   "x DOUBLE PRECISION, flag BOOLEAN, ts TIMESTAMPTZ, label TEXT, doc JSONB)")
        assert db.load("copy_probe", table) == table.num_rows
        _, rows = db.query("SELECT id::text, big, int, small, x, flag, ts, label, doc::text FROM copy_probe "
                           "ORDER BY n")
    assert len(rows) == table.num_rows
    expected = table.set_column(6, "ts", table.column("ts").cast(pa.timestamp("us", tz="UTC"))).to_pylist()
    for got, want in zip(rows, expected, strict=True):
        assert got[0] == (want["id"].lower() if want["id"] is not None else None)
        assert got[1:4] == (want["big"], want["int"], want["small"])
        x = want["x"]
        assert (got[4] is None and x is None) or (math.isnan(got[4]) and math.isnan(x)) or got[4] == x
        assert got[5] == want["flag"]
        assert got[6] == want["ts"]
        assert got[7] == want["label"]
        assert (got[8] is None and want["doc"] is None) or json.loads(got[8]) == json.loads(want["doc"])
