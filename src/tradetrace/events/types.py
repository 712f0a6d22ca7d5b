"""Event types and their typed payloads.

Every event type has a fixed payload schema (field name -> Arrow type). Payloads travel through the
bus as plain tuples in schema order (cheap to build on the hot path) and become typed columns when a
batch is recorded: the store never sees JSON strings (DESIGN.md decision 2).
"""

from __future__ import annotations

import functools
from enum import IntEnum

import pyarrow as pa


class EventType(IntEnum):
    """The kinds of event a run publishes. Values are stable: they are stored."""

    RUN_START = 0
    BAR = 1
    SIGNAL = 2
    ORDER = 3
    FILL = 4
    POSITION_OPEN = 5
    POSITION_CLOSE = 6
    PORTFOLIO_UPDATE = 7
    CLASSIFICATION = 8
    REGIME_CHANGE = 9
    RISK_BREACH = 10
    ERROR = 11
    RUN_END = 12


#: Payload schema of each event type, in the order payload tuples are built.
PAYLOAD_FIELDS: dict[EventType, tuple[tuple[str, pa.DataType], ...]] = {
    EventType.RUN_START: (
        ("run_name", pa.string()),
        ("strategy", pa.string()),
        ("params_json", pa.string()),
        ("symbols", pa.string()),
    ),
    EventType.BAR: (
        ("symbol", pa.string()),
        ("open", pa.float64()),
        ("high", pa.float64()),
        ("low", pa.float64()),
        ("close", pa.float64()),
        ("volume", pa.float64()),
    ),
    EventType.SIGNAL: (
        ("symbol", pa.string()),
        ("direction", pa.int8()),  # target: +1 long, -1 short, 0 flat
        ("strength", pa.float64()),
        ("reason", pa.string()),
    ),
    EventType.ORDER: (
        ("symbol", pa.string()),
        ("order_id", pa.int64()),
        ("side", pa.int8()),  # +1 buy, -1 sell
        ("quantity", pa.float64()),  # always positive
        ("order_type", pa.string()),  # market | stop | limit
        ("price", pa.float64()),  # trigger price for stop/limit, NaN for market
        ("reason", pa.string()),
    ),
    EventType.FILL: (
        ("symbol", pa.string()),
        ("order_id", pa.int64()),
        ("side", pa.int8()),
        ("quantity", pa.float64()),
        ("price", pa.float64()),  # executed price, slippage included
        ("commission", pa.float64()),
        ("slippage", pa.float64()),  # cost of slippage in currency, >= 0
    ),
    EventType.POSITION_OPEN: (
        ("symbol", pa.string()),
        ("trade_id", pa.int64()),
        ("side", pa.int8()),
        ("quantity", pa.float64()),
        ("price", pa.float64()),
    ),
    EventType.POSITION_CLOSE: (
        ("symbol", pa.string()),
        ("trade_id", pa.int64()),
        ("side", pa.int8()),
        ("quantity", pa.float64()),
        ("entry_price", pa.float64()),
        ("exit_price", pa.float64()),
        ("pnl", pa.float64()),  # realized, net of both legs' commission
        ("pnl_pct", pa.float64()),
        ("commission", pa.float64()),
        ("entry_seq", pa.int64()),  # the FILL that opened the trade
        ("exit_reason", pa.string()),
    ),
    EventType.PORTFOLIO_UPDATE: (
        ("cash", pa.float64()),
        ("equity", pa.float64()),
        ("gross_exposure", pa.float64()),
        ("realized_pnl", pa.float64()),
        # equity - initial cash - realized: open positions marked at the last close, net of their entry
        # commission (so realized + unrealized always adds up to the run's P&L)
        ("unrealized_pnl", pa.float64()),
    ),
    EventType.CLASSIFICATION: (
        ("classifier", pa.string()),
        ("symbol", pa.string()),
        ("label", pa.string()),
        ("value", pa.float64()),
    ),
    EventType.REGIME_CHANGE: (
        ("classifier", pa.string()),
        ("symbol", pa.string()),
        ("from_label", pa.string()),
        ("to_label", pa.string()),
        ("value", pa.float64()),
    ),
    EventType.RISK_BREACH: (
        ("rule", pa.string()),
        ("symbol", pa.string()),
        ("action", pa.string()),  # block | cut | close
        ("value", pa.float64()),
        ("limit", pa.float64()),
        ("exit_price", pa.float64()),  # for action close: the price the exit fills at; else NaN
        ("detail", pa.string()),
    ),
    EventType.ERROR: (
        ("error_type", pa.string()),
        ("message", pa.string()),
        ("container", pa.string()),
        ("traceback", pa.string()),
    ),
    EventType.RUN_END: (
        ("status", pa.string()),  # completed | failed
        ("reason", pa.string()),
        ("event_count", pa.int64()),
    ),
}

#: Field names only, for building dicts from payload tuples.
PAYLOAD_NAMES: dict[EventType, tuple[str, ...]] = {
    t: tuple(name for name, _ in fields) for t, fields in PAYLOAD_FIELDS.items()
}

#: Columns every stored event has, whatever its type (DESIGN.md vocabulary).
COMMON_FIELDS: tuple[tuple[str, pa.DataType], ...] = (
    ("correlation_id", pa.string()),
    ("seq", pa.int64()),
    ("event_type", pa.string()),
    ("timestamp", pa.timestamp("ns", tz="UTC")),  # market time
    ("causation_seq", pa.int64()),  # null only for RUN_START
    ("source_container", pa.string()),
    ("created_at", pa.timestamp("ns", tz="UTC")),  # wall clock derived from monotonic ns
    ("emitted_at", pa.timestamp("ns", tz="UTC")),
    ("received_at", pa.timestamp("ns", tz="UTC")),
    ("processed_at", pa.timestamp("ns", tz="UTC")),
    ("version", pa.int16()),
    ("links", pa.list_(pa.int64())),
)

#: Version of the event schema, stored on every event.
SCHEMA_VERSION = 1


def event_schema(event_type: EventType) -> pa.Schema:
    """Arrow schema of one event type's table: common columns then payload columns."""
    return pa.schema([pa.field(n, t) for n, t in COMMON_FIELDS + PAYLOAD_FIELDS[event_type]])


#: How event tables hold string columns: int32 codes into a dictionary of the distinct values.
DICT_STRING = pa.dictionary(pa.int32(), pa.string())


def dict_type(t: pa.DataType) -> pa.DataType:
    """`t`, with a string type held as DICT_STRING."""
    return DICT_STRING if pa.types.is_string(t) else t


@functools.cache
def recorded_schema(event_type: EventType) -> pa.Schema:
    """`event_schema` as recorded and loaded: string columns dictionary-encoded (DICT_STRING).

    Why: event strings are few distinct values repeated (one run id, a dozen container and type names,
    symbols, sides): codes cost 4 bytes a row and no string copies, and Parquet writes a dictionary
    column as it is, where a plain one is hashed value by value (~10 ms per 1M rows and column).
    """
    return pa.schema([f.with_type(dict_type(f.type)) for f in event_schema(event_type)])


def type_name(event_type: int) -> str:
    return EventType(event_type).name
