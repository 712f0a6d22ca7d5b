"""The C hot path of the bus (`_hotbus.c`): clocks, payload typing and validation, string dictionary.

The property tests (test_bus_properties.py) check seq, causation and payload round trips on random
cascades; these check what the C core adds: clock ticks mapped to wall time, payloads checked
against their schema at publish (nothing recorded when one is wrong), nulls, and the per-chunk
string dictionary with its identity cache.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from tradetrace.engine.data import MarketData
from tradetrace.events.bus import TracedEventBus
from tradetrace.events.event import NO_CAUSE, Event
from tradetrace.events.recorder import MemoryRecorder, RunInfo, RunTotals
from tradetrace.events.types import EventType


def market(n: int) -> MarketData:
    ts = np.arange(n, dtype=np.int64) * 60_000_000_000 + 1_700_000_000_000_000_000
    px = 100.0 + np.arange(n, dtype=np.float64)
    return MarketData(["S"], ts, np.zeros(n, dtype=np.int32), px, px + 1, px - 1, px, np.ones(n), daily=False)


def recorded_run(n: int, on_bar, subs=(), chunk: int = 7, every: int = 3):
    """A bare traced run over n rows with the given bar handler; returns (tables, wall before, wall after)."""
    md = market(n)
    rec = MemoryRecorder()
    bus = TracedEventBus("run", recorder=rec, bar_clock_every=every)
    rec.begin(RunInfo("run", "t", "t", {}), md)
    bus.subscribe_bars(lambda i: on_bar(bus, i))
    for t, h in subs:
        bus.subscribe(t, lambda ev, h=h: h(bus, ev))
    before = time.time_ns()
    bus.publish_start("engine", ("t", "t", "{}", "S"))
    for start in range(0, n, chunk):
        bus.run_bars(start, min(start + chunk, n))
        time.sleep(0.001)  # chunks apart in time: the tick rate is measured across them
        bus.flush(min(start + chunk, n))
    bus.publish(EventType.RUN_END, "engine", ("completed", "", bus.published + 1), cause=NO_CAUSE)
    bus.drain()
    bus.flush(n)
    after = time.time_ns()
    rec.end(RunTotals("completed", None, bus.published, bus.counts))
    return rec.tables(), before, after


def ns(col) -> np.ndarray:
    return col.cast("int64").to_numpy(zero_copy_only=False)


def test_clocks_are_wall_times_in_order_within_the_run() -> None:
    def on_bar(bus: TracedEventBus, i: int) -> None:
        bus.publish(EventType.SIGNAL, "strategy", ("S", 1, 1.0, "r"))

    def on_signal(bus: TracedEventBus, ev: Event) -> None:
        bus.publish(EventType.ORDER, "portfolio", ("S", ev.seq, 1, 10.0, "market", float("nan"), "x"))

    tables, before, after = recorded_run(50, on_bar, [(EventType.SIGNAL, on_signal)])
    sig, order, bars = tables[EventType.SIGNAL], tables[EventType.ORDER], tables[EventType.BAR]
    for tab in (sig, order):
        em, rx, px = ns(tab["emitted_at"]), ns(tab["received_at"]), ns(tab["processed_at"])
        # a few microseconds of slack: the anchor pair and the tick rate are measured, not exact
        assert np.all(em >= before - 50_000) and np.all(px <= after + 50_000)
        assert np.all(em <= rx + 1_000) and np.all(rx <= px + 1_000)
    # an ORDER is published while its SIGNAL is being handled: after the SIGNAL was received
    sig_rx = dict(zip(sig["seq"].to_pylist(), ns(sig["received_at"]), strict=True))
    for cause, em in zip(order["causation_seq"].to_pylist(), ns(order["emitted_at"]), strict=True):
        assert em + 1_000 >= sig_rx[cause]
    sampled = bars.filter(bars["received_at"].is_valid())
    assert len(sampled) >= 50 // 3  # every 3rd row of each chunk
    assert np.all(ns(sampled["received_at"]) <= ns(sampled["processed_at"]) + 1_000)
    assert np.all(ns(sampled["received_at"]) >= before - 50_000)


def test_bad_payload_raises_naming_type_and_field_and_records_nothing() -> None:
    bus = TracedEventBus("run")
    with pytest.raises(TypeError, match=r"FILL payload field 'price': expected a number, got 'abc'"):
        bus.publish(EventType.FILL, "execution", ("S", 1, 1, 10.0, "abc", 0.0, 0.0))
    with pytest.raises(TypeError, match=r"SIGNAL payload must be a tuple of 4 fields"):
        bus.publish(EventType.SIGNAL, "strategy", ("S", 1, 1.0))
    with pytest.raises(TypeError, match=r"ORDER payload field 'order_id': expected an integer, got 1.5"):
        bus.publish(EventType.ORDER, "portfolio", ("S", 1.5, 1, 10.0, "market", 0.0, ""))
    with pytest.raises(TypeError, match=r"SIGNAL payload field 'symbol': expected a string, got 7"):
        bus.publish(EventType.SIGNAL, "strategy", (7, 1, 1.0, ""))
    with pytest.raises(TypeError, match="source must be a container name"):
        bus.publish(EventType.SIGNAL, None, ("S", 1, 1.0, ""))
    with pytest.raises(TypeError, match=r"links must be a list of event seqs \(int\), got \['x'\]"):
        bus.publish(EventType.SIGNAL, "strategy", ("S", 1, 1.0, ""), links=["x"])
    with pytest.raises(TypeError, match="links must be a list of event seqs"):
        bus.publish(EventType.SIGNAL, "strategy", ("S", 1, 1.0, ""), links=3)
    with pytest.raises(TypeError, match="out of int64 range"):
        bus.publish(EventType.SIGNAL, "strategy", ("S", 1, 1.0, ""), links=[2**70])
    assert bus._logged == 0 and bus._queued == 0 and bus.published == 0
    untraced = TracedEventBus("run", traced=False)  # nothing is recorded, so nothing is checked
    assert untraced.publish(EventType.SIGNAL, "strategy", ("S", 1)).payload == ("S", 1)


def test_nulls_numpy_scalars_and_rebuilt_strings_round_trip() -> None:
    reasons = ["alpha", "beta", "gamma"]

    def on_bar(bus: TracedEventBus, i: int) -> None:
        # strings built anew each time (equal, not identical), None for a string and a float, numpy scalars
        reason = "".join(reasons[i % 3])
        bus.publish(EventType.RISK_BREACH, "risk", ("stop", None, f"{'cut'}", np.float64(i), np.int64(i),
                                                    None if i % 2 else 1.5, reason))

    tables, _, _ = recorded_run(20, on_bar, chunk=6)
    rb = tables[EventType.RISK_BREACH]
    assert rb["detail"].to_pylist() == [reasons[i % 3] for i in range(20)]
    assert rb["symbol"].null_count == 20
    assert rb["action"].to_pylist() == ["cut"] * 20
    assert rb["value"].to_pylist() == [float(i) for i in range(20)]
    assert rb["limit"].to_pylist() == [float(i) for i in range(20)]
    assert rb["exit_price"].to_pylist() == [None if i % 2 else 1.5 for i in range(20)]
    assert rb["source_container"].to_pylist() == ["risk"] * 20


def test_event_is_read_only_and_built_from_python() -> None:
    ev = Event(EventType.FILL, 5, ~3, "execution", ("S",), 3)
    assert (ev.type, ev.seq, ev.cause, ev.source, ev.payload, ev.row, ev.links) == (4, 5, -4, "execution", ("S",), 3,
                                                                                    None)
    with pytest.raises(AttributeError):
        ev.seq = 6  # type: ignore[misc]
    assert "FILL" in repr(ev)


def test_handler_error_leaves_the_failing_event_current_and_the_queue_for_settle() -> None:
    bus = TracedEventBus("run")

    def bad(ev: Event) -> None:
        raise RuntimeError("boom")

    bus.subscribe(EventType.SIGNAL, bad)
    bus.run_bars(0, 0)
    sig = bus.publish(EventType.SIGNAL, "strategy", ("S", 1, 1.0, ""))
    bus.publish(EventType.SIGNAL, "strategy", ("S", 0, 1.0, ""))
    with pytest.raises(RuntimeError, match="boom"):
        bus.drain()
    assert bus.current is sig and bus._queued == 2
    bus.settle()
    assert bus.current is None and bus._queued == 0
    assert bus.counts == {"SIGNAL": 2}


def test_links_round_trip_in_event_order() -> None:
    """Links are recorded as flat (event, link) pairs: several per event, none, a BAR by ~row, tuples too."""
    def on_bar(bus, i):
        if i == 2:
            bus.publish(EventType.SIGNAL, "strategy", ("S", 1, 1.0, "a"), links=[~1, ~0])
            bus.publish(EventType.SIGNAL, "strategy", ("S", -1, 1.0, "b"))
            bus.publish(EventType.SIGNAL, "strategy", ("S", 1, 1.0, "c"), links=(~2,))
        if i == 4:
            bus.publish(EventType.SIGNAL, "strategy", ("S", 0, 1.0, "d"), links=[])

    tabs, _, _ = recorded_run(6, on_bar, chunk=3)
    sig = tabs[EventType.SIGNAL].to_pydict()
    bar_seq = dict(zip(tabs[EventType.BAR].column("seq").to_pylist(), range(6), strict=True))
    rows = {v: k for k, v in bar_seq.items()}  # market row -> BAR seq
    assert sig["reason"] == ["a", "b", "c", "d"]
    assert sig["links"] == [[rows[1], rows[0]], None, [rows[2]], None]  # an empty list records no link


def test_taken_logs_are_the_recording_buffers_and_stay_intact() -> None:
    """`_take_log` hands over the C core's buffers themselves (no copy); a buffer is written again only once
    nobody else holds it. A log kept while the bus records more, one dropped and reused, and the tables built
    from both: every chunk reads back what was published in it."""
    md = market(40)
    bus = TracedEventBus("run", recorder=None)
    bus.subscribe_bars(lambda i: bus.publish(EventType.SIGNAL, "strategy", ("S", i % 3 - 1, float(i), f"r{i}")))
    bus.publish_start("engine", ("t", "t", "{}", "S"))
    kept = []
    for start in range(0, 40, 10):
        bus.run_bars(start, start + 10)
        batch = bus.take_batch(start + 10)
        assert batch is not None and len(batch.log) == 10 + (start == 0)  # RUN_START in the first
        if start % 20 == 0:
            kept.append(batch)  # held: the next chunk records into a new buffer
        else:
            del batch  # dropped: its buffer records the next chunk
    for batch in kept:
        sig = batch.tables(md)[EventType.SIGNAL].to_pydict()
        rows = list(range(batch.bars.row_start, batch.bars.row_stop))
        assert sig["strength"] == [float(i) for i in rows]
        assert sig["reason"] == [f"r{i}" for i in rows]
        assert sig["direction"] == [i % 3 - 1 for i in rows]


def test_run_bars_stops_after_whole_rows_on_its_event_budget() -> None:
    """A recorder's durability window in events (engine/backtest.py): run_bars returns the row it reached once
    `max_events` (BARs included) were published, never inside a row, and the rows left run on the next call."""
    bus = TracedEventBus("run", recorder=None)
    seen = []
    bus.subscribe_bars(lambda i: (seen.append(i), bus.publish(EventType.SIGNAL, "strategy", ("S", 1, 1.0, ""))))
    bus.publish_start("engine", ("t", "t", "{}", "S"))
    assert bus.run_bars(0, 100) == 100  # no budget: the whole range
    stops = []
    row = 100
    while row < 1_000:
        row = bus.run_bars(row, 1_000, 0, 50)  # 2 events a row: at least 25 rows, checked every few rows
        stops.append(row)
    assert seen == list(range(1_000))  # every row once, in order, whatever the stops
    assert stops[-1] == 1_000 and len(stops) > 1
    assert all(b - a >= 25 for a, b in zip([100, *stops[:-2]], stops[:-1], strict=True))  # the last may be short
    with pytest.raises(ValueError, match="must be >= 0"):
        bus.run_bars(0, 1, -1)


def test_run_bars_stops_on_its_time_budget_when_rows_are_slow() -> None:
    """Rows of 2 ms and a 20 ms budget: the call returns long before its 500 rows, after at least one row."""
    bus = TracedEventBus("run", recorder=None)
    bus.subscribe_bars(lambda i: time.sleep(0.002))
    reached = bus.run_bars(0, 500, 20_000_000)
    assert 1 <= reached < 500


def test_grouped_rows_stop_only_between_bar_times_and_reject_a_split_group() -> None:
    """Rows of one bar time run in two phases (several symbols): an event budget ends a call between times, never
    inside one, and a range that starts or ends inside a time is refused (its rows would lose their order)."""
    times = np.repeat(np.arange(300, dtype=np.int64), 3)  # 3 symbols, 300 times
    bus = TracedEventBus("run", recorder=None)
    bus.group_rows_by_time(times)
    order = []
    bus.subscribe_bars(lambda i: order.append(("bar", i)))
    bus.subscribe_decisions(lambda i: (order.append(("decide", i)),
                                       bus.publish(EventType.SIGNAL, "strategy", ("S", 1, 1.0, ""))))
    bus.publish_start("engine", ("t", "t", "{}", "S"))
    assert order[:6] == [] and bus.rows_dispatched == 0
    row = 0
    while row < 900:
        row = bus.run_bars(row, 900, 0, 40)
        assert row % 3 == 0 and bus.rows_dispatched == row
    assert order[:6] == [("bar", 0), ("bar", 1), ("bar", 2), ("decide", 0), ("decide", 1), ("decide", 2)]
    assert [i for k, i in order if k == "bar"] == [i for k, i in order if k == "decide"] == list(range(900))
    with pytest.raises(ValueError, match="split the rows of one bar time"):
        bus.run_bars(1, 6)
    with pytest.raises(ValueError, match="split the rows of one bar time"):
        bus.run_bars(0, 4)
    with pytest.raises(ValueError, match="outside the 900 rows"):
        bus.run_bars(0, 903)
