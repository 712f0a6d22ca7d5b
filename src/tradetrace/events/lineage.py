"""Lineage: walk causation from any event back to the BAR that started it, with latencies.

Works over any `EventSource` (seq -> one-row Arrow table): the in-memory recorder and the Parquet
store both provide one, so "why did this fill happen" is answered the same way for both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa

from tradetrace.events.event import TracedEvent, make_event_id
from tradetrace.events.types import COMMON_FIELDS

_COMMON = {name for name, _ in COMMON_FIELDS}

#: seq -> a one-row table with that event (common + payload columns), or None if absent.
EventSource = Callable[[int], pa.Table | None]


def to_traced(row: pa.Table, run_date: str | None = None) -> TracedEvent:
    """A one-row event table as a TracedEvent. `run_date`: the run's partition date in the event store (its
    wall-clock start date, UTC: store/layout.py `start_date`); without it, the date the event was created."""
    d = {k: v[0] for k, v in row.to_pydict().items()}
    run = d["correlation_id"]
    ts: datetime = d["timestamp"]
    cause = d["causation_seq"]
    return TracedEvent(
        event_id=make_event_id(run, d["seq"]),
        event_type=d["event_type"],
        timestamp=ts,
        correlation_id=run,
        causation_id=None if cause is None else make_event_id(run, cause),
        source_container=d["source_container"],
        created_at=d["created_at"],
        emitted_at=d["emitted_at"],
        received_at=d["received_at"],
        processed_at=d["processed_at"],
        data={k: v for k, v in d.items() if k not in _COMMON},
        version=d["version"],
        sequence_number=d["seq"],
        partition_key=f"date={run_date or _date_of(d['created_at'])}/event_type={d['event_type']}",
        links=[make_event_id(run, x) for x in (d["links"] or [])],
    )


def _date_of(t: datetime | None) -> str:
    return t.date().isoformat() if t is not None else "unknown"


def _us(a: datetime | None, b: datetime | None) -> float | None:
    if a is None or b is None:
        return None
    return (b - a).total_seconds() * 1e6


@dataclass(frozen=True, slots=True)
class Lineage:
    """An event and its causes, newest first, ending at a BAR (or the run start)."""

    chain: list[TracedEvent]

    @property
    def root(self) -> TracedEvent:
        return self.chain[-1]

    def find(self, event_type: str) -> TracedEvent | None:
        return next((e for e in self.chain if e.event_type == event_type), None)

    def hops(self) -> list[dict]:
        """Per cause -> effect step: wall-clock latency (us) from the cause's emission to the effect's."""
        out = []
        for effect, cause in zip(self.chain, self.chain[1:], strict=False):
            out.append({
                "from": cause.event_id, "from_type": cause.event_type,
                "to": effect.event_id, "to_type": effect.event_type,
                "latency_us": _us(cause.emitted_at, effect.emitted_at),
                "market_delay": effect.timestamp - cause.timestamp,
            })
        return out

    def total_latency_us(self) -> float | None:
        return _us(self.root.emitted_at, self.chain[0].emitted_at)

    def __str__(self) -> str:
        lines = []
        for depth, e in enumerate(reversed(self.chain)):
            data = ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}"
                             for k, v in e.data.items() if v is not None and v != "")
            q = _us(e.emitted_at, e.received_at)
            p = _us(e.received_at, e.processed_at)
            timing = f" queue {q:.1f}us proc {p:.1f}us" if q is not None and p is not None else ""
            also = f" (also caused by {', '.join(e.links)})" if e.links else ""  # e.g. the BAR that priced a FILL
            lines.append(f"{'  ' * depth}{e.event_type} {e.event_id} @ {e.timestamp:%Y-%m-%d %H:%M} "
                         f"[{e.source_container}]{timing} {data}{also}")
        total = self.total_latency_us()
        if total is not None:
            lines.append(f"total latency {self.root.event_type} -> {self.chain[0].event_type}: {total:.1f}us")
        return "\n".join(lines)


def walk_back(source: EventSource, seq: int, stop_at: str = "BAR", run_date: str | None = None) -> Lineage:
    """Follow causation_seq from `seq` until an event of type `stop_at` or one without a cause (`run_date`: see
    `to_traced`)."""
    chain: list[TracedEvent] = []
    seen = set()
    cur: int | None = seq
    while cur is not None:
        if cur in seen:
            raise ValueError(f"causation cycle at seq {cur}")
        seen.add(cur)
        row = source(cur)
        if row is None:
            if not chain:
                raise KeyError(f"no event with seq {seq}")
            raise KeyError(f"broken lineage: seq {cur} (cause of {chain[-1].event_id}) is missing")
        ev = to_traced(row, run_date)
        chain.append(ev)
        if ev.event_type == stop_at and len(chain) > 1:
            break
        cur = row.column("causation_seq")[0].as_py()
    return Lineage(chain)
