"""Property tests of the TracedEventBus and the recorder's BAR seq reconstruction.

Random containers on a bare bus: bar handlers, decision handlers and event handlers publish random
children (to a bounded depth), with the rows of one bar time grouped or not (decisions after every row
of their time); the run is chunked at random sizes (a flush per chunk), with events published
outside bars (RUN_START, between chunks, end of data, RUN_END) on multi-symbol data. The handlers
keep their own log of what was published, in order, and what was being handled at the time; the
recorded tables must agree with that log exactly.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from tradetrace.engine.data import MarketData
from tradetrace.events.bus import TracedEventBus
from tradetrace.events.event import NO_CAUSE, Event
from tradetrace.events.recorder import MemoryRecorder, RunInfo, RunTotals
from tradetrace.events.types import PAYLOAD_FIELDS, EventType

CHILD_TYPES = [t for t in EventType if t not in (EventType.BAR, EventType.RUN_START, EventType.RUN_END)]
MAX_DEPTH = 3


def market(n: int, n_symbols: int) -> MarketData:
    """n rows; several symbols may share a timestamp (aligned multi-symbol data)."""
    sym = np.arange(n, dtype=np.int32) % n_symbols
    ts = (np.arange(n, dtype=np.int64) // n_symbols) * 60_000_000_000 + 1_700_000_000_000_000_000
    px = 100.0 + np.arange(n, dtype=np.float64)
    return MarketData([f"S{k}" for k in range(n_symbols)], ts, sym, px, px + 1, px - 1, px, np.ones(n), daily=False)


def payload(t: EventType, k: int) -> tuple:
    vals = []
    for _name, typ in PAYLOAD_FIELDS[t]:
        if pa.types.is_string(typ):
            vals.append(f"v{k}")
        elif pa.types.is_floating(typ):
            vals.append(float(k))
        else:
            vals.append(k % 100)
    return tuple(vals)


class Harness:
    """Builds the random containers and keeps the independent publish log."""

    def __init__(self, bus: TracedEventBus, plan: list[int], n_bar_handlers: int, subs: dict[int, int],
                 n_decide: int = 0, last_row_of_time: np.ndarray | None = None) -> None:
        self.bus = bus
        self.last_row_of_time = last_row_of_time  # grouped rows: a decision runs after its time's last BAR
        self.plan = plan
        self.k = 0
        self.log: list[tuple] = []  # ("BAR", row) or ("EV", Event, expected cause, depth)
        self.depth: dict[int, int] = {}
        self.bar_started = -1
        self.published: dict[str, int] = {}
        for h in range(n_bar_handlers):
            bus.subscribe_bars(self._bar_handler(h))
        for _ in range(n_decide):
            bus.subscribe_decisions(self._decide)
        for t, count in subs.items():
            for _ in range(count):
                bus.subscribe(EventType(t), self.on_event)

    def _next_children(self) -> list[EventType]:
        """The next few plan entries: how many children, then their types."""
        if not self.plan:
            return []
        n = self.plan[self.k % len(self.plan)] % 3
        out = [CHILD_TYPES[self.plan[(self.k + 1 + j) % len(self.plan)] % len(CHILD_TYPES)] for j in range(n)]
        self.k += 1 + n
        return out

    def _publish(self, t: EventType, cause_key: tuple, depth: int, **kw) -> Event:
        ev = self.bus.publish(t, f"c{depth}", payload(t, len(self.log)), **kw)
        self.log.append(("EV", ev, cause_key, depth))
        self.depth[ev.seq] = depth
        self.published[t.name] = self.published.get(t.name, 0) + 1
        return ev

    def _bar_handler(self, h: int):
        def on_bar(i: int) -> None:
            if self.bar_started != i:  # the BAR of row i is published when its dispatch starts
                self.bar_started = i
                self.log.append(("BAR", i))
            assert self.bus.current is None and self.bus.current_row == i
            for t in self._next_children():
                self._publish(t, ("bar", i), 1)
        return on_bar

    def _decide(self, i: int) -> None:
        assert self.bus.current is None and self.bus.current_row == i
        last = i if self.last_row_of_time is None else self.last_row_of_time[i]
        assert self.bar_started == last  # every BAR of this time was dispatched, and no later one
        for t in self._next_children():
            self._publish(t, ("bar", i), 1)

    def on_event(self, ev: Event) -> None:
        assert self.bus.current is ev
        d = self.depth[ev.seq]
        if d >= MAX_DEPTH:
            return
        for t in self._next_children():
            self._publish(t, ("seq", ev.seq), d + 1)


@settings(max_examples=150, deadline=None)
@given(
    n_rows=st.integers(1, 40),
    n_symbols=st.integers(1, 3),
    n_bar_handlers=st.integers(1, 3),
    plan=st.lists(st.integers(0, 1000), max_size=60),
    subs=st.dictionaries(st.sampled_from([int(t) for t in CHILD_TYPES]), st.integers(1, 2), max_size=6),
    chunks=st.lists(st.integers(1, 15), min_size=1, max_size=8),
    between=st.lists(st.integers(0, 2), min_size=1, max_size=8),
    end_events=st.integers(0, 3),
    clock_every=st.integers(1, 5),
    n_decide=st.integers(0, 2),
    grouped=st.booleans(),
)
def test_random_cascades_are_traced_exactly(n_rows, n_symbols, n_bar_handlers, plan, subs, chunks, between,
                                            end_events, clock_every, n_decide, grouped) -> None:
    md = market(n_rows, n_symbols)
    rec = MemoryRecorder()
    bus = TracedEventBus("run-p", recorder=rec, bar_clock_every=clock_every)
    rec.begin(RunInfo("run-p", "prop", "none", {}), md)
    last_row = np.searchsorted(md.ts, md.ts, side="right") - 1 if grouped else None
    if grouped:
        bus.group_rows_by_time(md.ts)
    hx = Harness(bus, plan, n_bar_handlers, subs, n_decide, last_row)

    start_ev = bus.publish_start("engine", payload(EventType.RUN_START, 0))
    hx.log.insert(0, ("EV", start_ev, None, 0))
    hx.published["RUN_START"] = 1
    hx.depth[start_ev.seq] = 0
    # Handlers of RUN_START's children ran during publish_start; their log entries came after it.
    pos, c = 0, 0
    clocked: list[int] = []  # rows whose BAR clocks are measured: every k-th row of each run_bars call
    while pos < n_rows:
        stop = min(pos + chunks[c % len(chunks)], n_rows)
        if grouped:  # a chunk ends after its last time's last row
            stop = int(last_row[stop - 1]) + 1
        bus.run_bars(pos, stop)
        clocked += range(pos, stop, clock_every)
        bus.flush(stop)
        # Events between chunks (after the flush): caused by the last BAR dispatched, explicitly.
        for _ in range(between[c % len(between)] if stop < n_rows else 0):
            hx._publish(EventType.RISK_BREACH, ("bar", stop - 1), 1, cause=~(stop - 1))
            bus.drain()
        pos = stop
        c += 1
    for j in range(end_events):  # end of data: caused by the last BAR, one with the BAR in links too
        hx._publish(EventType.RISK_BREACH, ("bar", n_rows - 1), 1, cause=~(n_rows - 1),
                    links=[~(n_rows - 1)] if j == 0 else None)
        bus.drain()
    end = bus.publish(EventType.RUN_END, "engine", payload(EventType.RUN_END, 0), cause=NO_CAUSE)
    hx.log.append(("EV", end, None, 0))
    hx.published["RUN_END"] = 1
    bus.drain()
    bus.flush(n_rows)
    rec.end(RunTotals("completed", None, end.seq + 1, bus.counts))

    tables = rec.tables()
    allt = pa.concat_tables(list(tables.values()), promote_options="default").sort_by("seq")
    seq = allt.column("seq").to_numpy()
    n = len(hx.log)
    # Gapless, and every event in the independent log is recorded, at its position in publish order.
    assert np.array_equal(seq, np.arange(n))
    assert end.seq == n - 1
    bars = tables[EventType.BAR]
    bar_seq = bars.column("seq").to_numpy()
    expected_bar_seq = [k for k, e in enumerate(hx.log) if e[0] == "BAR"]
    assert bar_seq.tolist() == expected_bar_seq
    assert [e[1] for e in hx.log if e[0] == "BAR"] == list(range(n_rows))
    assert set(bars.column("causation_seq").to_pylist()) == {0}
    # BAR clocks: measured on the sampled rows only, received before processed (after its decisions too).
    rx = bars.column("received_at").cast(pa.int64()).to_numpy(zero_copy_only=False)
    px = bars.column("processed_at").cast(pa.int64()).to_numpy(zero_copy_only=False)
    has = bars.column("received_at").is_valid().to_numpy(zero_copy_only=False)
    assert np.flatnonzero(has).tolist() == (clocked if n_bar_handlers + n_decide else [])
    assert (rx[has] <= px[has]).all()
    # BAR payload and market time are the market data of their row.
    assert np.array_equal(bars.column("close").to_numpy(), md.close)
    assert bars.column("symbol").to_pylist() == [md.symbols[s] for s in md.symbol_idx]
    # Counts per type match what the handlers published.
    counts = {t.name: tab.num_rows for t, tab in tables.items()}
    assert counts == {**hx.published, "BAR": n_rows}
    assert bus.counts == counts
    # Every non-BAR event: seq = its log position; cause = what was being handled when it was published.
    etype = allt.column("event_type").to_pylist()
    cause = allt.column("causation_seq").to_pylist()
    links = allt.column("links").to_pylist()
    ts = allt.column("timestamp").cast(pa.int64()).to_numpy()
    for k, entry in enumerate(hx.log):
        if entry[0] == "BAR":
            continue
        _, ev, key, _ = entry
        assert ev.seq == k and etype[k] == EventType(ev.type).name
        if key is None:
            assert cause[k] is None
        elif key[0] == "seq":
            assert cause[k] == key[1]
        else:
            assert cause[k] == bar_seq[key[1]], f"event {k} caused by BAR of row {key[1]}"
            assert ts[k] == md.ts[key[1]]
        if cause[k] is not None:
            assert 0 <= cause[k] < k
        if links[k]:
            assert all(0 <= x < k for x in links[k])
            assert links[k] == [cause[k]]
    # Only RUN_START and RUN_END lack a cause.
    assert {etype[k] for k in range(n) if cause[k] is None} <= {"RUN_START", "RUN_END"}


def test_bar_seq_with_hand_computed_layout() -> None:
    """Two symbols, 3 rows; the strategy publishes on row 1, the end of data publishes after the last flush.

    Publish order: RUN_START(0), BAR r0(1), BAR r1(2), SIGNAL(3) caused by BAR r1, BAR r2(4),
    [flush], RISK_BREACH(5) caused by BAR r2 (seq 4), RUN_END(6).
    """
    md = market(3, 2)
    rec = MemoryRecorder()
    bus = TracedEventBus("r", recorder=rec)
    rec.begin(RunInfo("r", "t", "s", {}), md)

    def on_bar(i: int) -> None:
        if i == 1:
            bus.publish(EventType.SIGNAL, "strategy", ("S1", 1, 1.0, "x"))

    bus.subscribe_bars(on_bar)
    bus.publish_start("engine", payload(EventType.RUN_START, 0))
    bus.run_bars(0, 3)
    bus.flush(3)
    bus.publish(EventType.RISK_BREACH, "portfolio", payload(EventType.RISK_BREACH, 1), cause=~2)
    bus.drain()
    bus.publish(EventType.RUN_END, "engine", payload(EventType.RUN_END, 2), cause=NO_CAUSE)
    bus.drain()
    bus.flush(3)
    t = rec.tables()
    assert t[EventType.BAR].column("seq").to_pylist() == [1, 2, 4]
    assert t[EventType.SIGNAL].column("seq").to_pylist() == [3]
    assert t[EventType.SIGNAL].column("causation_seq").to_pylist() == [2]
    assert t[EventType.RISK_BREACH].column("seq").to_pylist() == [5]
    assert t[EventType.RISK_BREACH].column("causation_seq").to_pylist() == [4]
    assert t[EventType.RUN_END].column("seq").to_pylist() == [6]
    assert rec.lookup(4).column("event_type").to_pylist() == ["BAR"]
