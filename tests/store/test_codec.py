"""BAR prices stored as DECIMAL(18,4): exact where the float is a 4-decimal price, float64 otherwise."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pyarrow as pa
import pytest

from tradetrace.store import codec


def _col(values: np.ndarray) -> pa.ChunkedArray:
    return pa.chunked_array([pa.array(values)])


def test_four_decimal_prices_become_exact_decimals() -> None:
    rng = np.random.default_rng(5)
    x = np.round(np.concatenate([rng.random(50_000) * 500, -rng.random(1_000) * 5, [0.0, 1e-4, 9.99e12]]), 4)
    arr = codec._as_decimal(_col(x))
    assert arr is not None and arr.type == pa.decimal128(18, 4)
    # Python's decimal module as the reference: each stored value is the float's shortest repr, exactly
    sample = rng.choice(len(x), 2_000, replace=False)
    for i, stored in zip(sample.tolist(), arr.take(pa.array(sample)).to_pylist(), strict=True):
        assert stored == Decimal(repr(float(x[i]))).quantize(Decimal("0.0001"))
    assert np.array_equal(codec.decimal_to_float(arr), x)


@pytest.mark.parametrize("bad", [1.00001, np.nan, np.inf, -np.inf, 2e13])
def test_a_price_that_is_not_a_four_decimal_value_keeps_the_column_float(bad: float) -> None:
    x = np.array([100.25, 101.5, bad, 99.0])
    assert codec._as_decimal(_col(x)) is None


def test_empty_and_null_columns_stay_float() -> None:
    assert codec._as_decimal(_col(np.zeros(0))) is None
    assert codec._as_decimal(pa.chunked_array([pa.array([1.5, None])])) is None


def test_never_null_columns_are_stored_required_and_read_back_as_recorded() -> None:
    """Columns every event has a value in are REQUIRED in the file (no definition levels to encode); a column
    that may be null stays OPTIONAL, and one of the never-null columns holding a null anyway is kept OPTIONAL
    rather than refused. Reading back gives the recorded (nullable) schema."""
    import pyarrow.parquet as pq

    from tradetrace.events.types import EventType, recorded_schema

    schema = recorded_schema(EventType.SIGNAL)
    n = 3
    cols = {f.name: pa.nulls(n, f.type) for f in schema}
    cols.update({"correlation_id": pa.array(["r"] * n).dictionary_encode(), "seq": pa.array([4, 5, None]),
                 "timestamp": pa.array([1, 2, 3], pa.timestamp("ns", tz="UTC")),
                 "received_at": pa.array([1, None, 3], pa.timestamp("ns", tz="UTC"))})
    table = pa.Table.from_arrays([cols[f.name] for f in schema], schema=schema)
    stored = pq.read_schema(pa.BufferReader(codec.parquet_bytes(table, EventType.SIGNAL, "zstd")))
    assert not stored.field("correlation_id").nullable and not stored.field("timestamp").nullable
    assert stored.field("seq").nullable  # it holds a null: kept OPTIONAL
    assert stored.field("received_at").nullable and stored.field("causation_seq").nullable
    back = codec.from_disk(pq.read_table(pa.BufferReader(codec.parquet_bytes(table, EventType.SIGNAL, "zstd"))),
                           EventType.SIGNAL)
    assert back.schema.equals(schema)
    assert back.column("seq").to_pylist() == [4, 5, None]
