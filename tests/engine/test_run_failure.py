"""A handler exception ends the run: clear one-line error, ERROR caused by the failing event, nothing lost."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from tradetrace import RunFailed, Strategy, run_backtest
from tradetrace.events.types import EventType

CFG = {
    "data": {"synthetic": {"bars": 3_000, "seed": 4, "freq": "1min", "symbols": ["AAA", "BBB"]}},
    "strategy": {"type": "sma_crossover"},
    "tracing": {"chunk_bars": 1_000},  # the failure happens after earlier chunks were flushed
    "store": {"enabled": False}, "database": {"enabled": False},
}


class BoomInNext(Strategy):
    """Alternates long/flat every 50 rows, then raises in next() at row `fail_at`."""

    name = "boom_in_next"

    def __init__(self, fail_at: int = 2_345) -> None:
        super().__init__()
        self.fail_at = fail_at
        self.signals = 0

    def next(self, i: int) -> None:
        if i == self.fail_at:
            raise ZeroDivisionError("planted failure in next")
        if i % 50 == 0:
            self.signal(1 if (i // 50) % 2 == 0 else 0, reason="alt")
            self.signals += 1


class BoomInSignalHandler(Strategy):
    """Signals every 40 rows; its own SIGNAL subscriber raises on the 7th SIGNAL."""

    name = "boom_in_signal"

    def init(self) -> None:
        self.seen: list[int] = []
        self.bus.subscribe(EventType.SIGNAL, self.on_signal)

    def on_signal(self, ev) -> None:
        self.seen.append(ev.seq)
        if len(self.seen) == 7:
            raise KeyError("planted failure in SIGNAL handler")

    def next(self, i: int) -> None:
        if i % 40 == 0:
            self.signal(1 if (i // 40) % 2 == 0 else -1, reason="alt")


def _all_events(res) -> pa.Table:
    return res.events()


def _check_recording(res) -> pa.Table:
    t = _all_events(res)
    seq = t.column("seq").to_numpy()
    assert np.array_equal(seq, np.arange(len(seq))), "seq must be gapless"
    assert len(seq) == res.event_count
    assert res.counts == {k: v for k, v in zip(*np.unique(t.column("event_type").to_numpy(zero_copy_only=False),
                                                            return_counts=True), strict=True)}
    end = res.events(["RUN_END"])
    assert end.column("status").to_pylist() == ["failed"]
    assert end.column("event_count").to_pylist() == [res.event_count]
    return t


def test_exception_in_next_fails_the_run_with_error_event() -> None:
    strat = BoomInNext()
    with pytest.raises(RunFailed) as info:
        run_backtest(CFG, strategy=strat)
    msg = str(info.value)
    assert "\n" not in msg
    assert "ZeroDivisionError in strategy" in msg and "planted failure" in msg
    res = info.value.result
    assert res.status == "failed" and res.error in msg
    assert res.bars == 2_346  # rows dispatched, the failing one included
    t = _check_recording(res)
    err = res.events(["ERROR"])
    assert err.num_rows == 1
    assert err.column("container").to_pylist() == ["strategy"]
    assert err.column("error_type").to_pylist() == ["ZeroDivisionError"]
    # The ERROR is caused by the BAR of the failing row: the BAR recorded at that row's market time/symbol.
    cause = err.column("causation_seq")[0].as_py()
    bar = res.event(cause)
    assert bar.event_type == "BAR"
    md_row_ts = t.filter(pa.compute.equal(t.column("seq"), cause)).column("timestamp")[0]
    assert bar.timestamp == md_row_ts.as_py()
    bars = res.events(["BAR"])
    assert bars.num_rows == 2_346 and bars.column("seq")[-1].as_py() == cause
    # The message names that BAR by its event id (usable with result.trace) and its row.
    assert f"while handling BAR {res.run_id}:{cause} (row 2345)" in msg
    # Every SIGNAL the strategy published before failing is recorded.
    assert res.counts["SIGNAL"] == strat.signals


def test_exception_in_signal_handler_fails_with_error_caused_by_that_signal() -> None:
    strat = BoomInSignalHandler()
    with pytest.raises(RunFailed) as info:
        run_backtest(CFG, strategy=strat)
    res = info.value.result
    failing = strat.seen[-1]
    eid = f"{res.run_id}:{failing}"
    msg = str(info.value)
    assert "\n" not in msg
    assert f"KeyError in strategy while handling SIGNAL {eid}" in msg
    assert res.status == "failed"
    _check_recording(res)
    err = res.events(["ERROR"])
    assert err.column("causation_seq").to_pylist() == [failing]
    assert res.event(failing).event_type == "SIGNAL"
    # The failing SIGNAL's own dispatch started (received), and the portfolio subscriber ran before the
    # strategy's (subscription order), so its ORDER exists and is recorded, though never dispatched.
    orders = res.events(["ORDER"])
    last_order = orders.filter(pa.compute.equal(orders.column("causation_seq"), failing))
    assert last_order.num_rows == 1
    assert last_order.column("received_at")[0].as_py() is None
    # Lineage of the ERROR: ERROR -> SIGNAL -> BAR.
    chain = res.trace(err.column("seq")[0].as_py()).chain
    assert [e.event_type for e in chain] == ["ERROR", "SIGNAL", "BAR"]


def test_failure_in_first_chunk_and_untraced_run_also_fail_cleanly() -> None:
    strat = BoomInNext()
    strat_cfg = dict(CFG, tracing={"enabled": False})
    with pytest.raises(RunFailed) as info:
        run_backtest(strat_cfg, strategy=strat)
    assert info.value.result.status == "failed"
    assert "BAR of row 2345" in str(info.value)


@pytest.mark.parametrize("fail_at", [0, 1, 999, 1_000, 1_001, 2_999])
def test_failing_bar_is_named_by_its_recorded_id_at_chunk_edges(fail_at: int) -> None:
    """Rows at chunk edges (chunk_bars 1000): the id in the message is the BAR the ERROR is caused by."""
    strat = BoomInNext(fail_at)
    with pytest.raises(RunFailed) as info:
        run_backtest(CFG, strategy=strat)
    res = info.value.result
    _check_recording(res)
    cause = res.events(["ERROR"]).column("causation_seq")[0].as_py()
    assert res.event(cause).event_type == "BAR"
    assert f"BAR {res.run_id}:{cause} (row {fail_at})" in str(info.value)
    # Two symbols: a decision runs once both rows of its bar time were dispatched, so the BARs recorded are
    # those up to the failing row's time (rows 2k and 2k + 1), both of them even when the first one failed.
    assert res.events(["BAR"]).num_rows == (fail_at | 1) + 1


class BoomAtEndOfData(Strategy):
    """Goes long early; its RISK_BREACH subscriber raises on the end-of-data close (after the last flush)."""

    name = "boom_at_end"

    def init(self) -> None:
        self.bus.subscribe(EventType.RISK_BREACH, self.on_breach)

    def on_breach(self, ev) -> None:
        raise RuntimeError("planted failure at end of data")

    def next(self, i: int) -> None:
        if i == 5:
            self.signal(1)


def test_exception_at_end_of_data_after_the_last_flush() -> None:
    with pytest.raises(RunFailed) as info:
        run_backtest({**CFG, "portfolio": {"close_at_end": True}}, strategy=BoomAtEndOfData())
    res = info.value.result
    _check_recording(res)
    br = res.events(["RISK_BREACH"]).to_pydict()
    assert br["detail"] == ["close_at_end"]
    # The breach is caused by the last BAR (recorded in an earlier batch); the ERROR by the breach.
    last_bar = res.events(["BAR"]).column("seq")[-1].as_py()
    assert br["causation_seq"] == [last_bar]
    assert res.events(["ERROR"]).column("causation_seq").to_pylist() == br["seq"]
    assert f"RISK_BREACH {res.run_id}:{br['seq'][0]}" in str(info.value)
    assert res.bars == 6_000
