"""TracedEventBus: the only way containers talk, and the place where tracing happens.

Dispatch model (why it looks like this):
- BARs are not queued. The bus walks market-data rows and calls the bar handlers in a fixed order
  (execution, risk, classifiers), then the decision handlers (the strategy); after each handler it
  drains the queue of events that handler published. So a FILL at this bar's open has updated the
  portfolio before the strategy sees the bar, which is backtrader's order of play. With several
  symbols the rows of one bar time run as a group: bar handlers for every row, then decisions for
  every row (backtrader advances every feed before `next`), so a decision sees all of this time's
  fills whatever the symbols' order. Events are then recorded at the last dispatched row, which keeps
  seq in publish order; a decision's cause is still the BAR of its own row.
- Every other event is queued (FIFO) and dispatched to its subscribers in publish order.
- Causation is automatic: the event being dispatched when `publish` is called is the cause. During
  a bar handler that is the BAR, whose seq is not yet known (BARs are recorded in bulk), so the
  cause is kept as `~row` and resolved at flush.
- seq is gapless and in publish order: BAR of row i is published when its dispatch starts, so a
  non-BAR event published while row i is handled gets seq = (i + 1) + (non-BAR events before it).

Tracing cost (the hot path is written for speed):
- A BAR costs nothing to trace: its seq, payload and market time are recovered from the market data
  at flush. Its clocks are measured on every `bar_clock_every`-th bar (received/processed); the
  others carry null received/processed clocks. Their created/emitted clock is the time the feed
  emitted the chunk they belong to (they are emitted in bulk).
- A non-BAR event is recorded as int64 words as it is published and dispatched: its row/type, cause,
  source and every payload field (strings as codes into a per-chunk dictionary), a clock read at
  publish and one at dispatch, row-major in a few buffers. Nothing per event stays a Python object: a
  chunk is handed over as those buffers themselves (bytes objects, no copy) and becomes Arrow tables
  with vectorized numpy work, off the hot path (the store's writer, or a first read). A payload
  that does not fit its type's schema is rejected at publish (TypeError naming type and field).
- Clocks are the C core's ticks (the CPU's time-stamp counter on x86-64), mapped to monotonic and
  then wall-clock nanoseconds at each flush from clock pairs read at run start and at the flush.

Where the code is: publish, dispatch (drain), the bar loop and the recording are the C extension
`_hotbus.c` (the per-event budget is well under 0.1 us; see its header). This class adds what is not
per event: wiring, counts, handing recorded chunks to the recorder, and BAR seqs for error messages.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from time import time_ns

import numpy as np
import pyarrow as pa

from tradetrace.events._hotbus import NTYPES, TICKS_ARE_NS, BusCore, clock_pair
from tradetrace.events.event import NO_CAUSE, Event
from tradetrace.events.recorder import BarBlock, ChunkLog, EventBatch, Recorder
from tradetrace.events.types import PAYLOAD_FIELDS, EventType

BarHandler = Callable[[int], None]


def _kind(typ: pa.DataType) -> str:
    """How the C core records a payload field: float64 bits, an integer, or a string code."""
    if pa.types.is_floating(typ):
        return "f"
    if pa.types.is_integer(typ):
        return "i"
    if pa.types.is_string(typ):
        return "s"
    raise TypeError(f"payload field type {typ} is not recordable")


#: The C core's payload schema: per type value, None or (type name, field kinds, field names).
_SCHEMA = tuple(
    (EventType(t).name, "".join(_kind(typ) for _, typ in PAYLOAD_FIELDS[EventType(t)]),
     tuple(name for name, _ in PAYLOAD_FIELDS[EventType(t)])) if t in EventType._value2member_map_ else None
    for t in range(NTYPES))
EventHandler = Callable[[Event], None]


class TracedEventBus(BusCore):
    """Publish/subscribe with gapless seq, automatic causation and monotonic clocks.

    Inherited from the C core (hot path): `publish(event_type, source, payload, cause=None,
    links=None) -> Event`, `drain()`, `run_bars(start, stop, budget_ns=0, max_events=0) -> row reached`,
    `current` (the non-BAR event being dispatched, or None while a bar handler runs), `traced`,
    `bar_clock_every`.
    """

    def __init__(self, correlation_id: str, *, traced: bool = True, recorder: Recorder | None = None,
                 bar_clock_every: int = 1) -> None:
        super().__init__(Event, _SCHEMA, traced, bar_clock_every)
        self.correlation_id = correlation_id
        self.recorder = recorder
        self._flushed_rows = 0  # BAR rows already flushed
        self._flushed_nonbar = 0  # non-BAR events already flushed
        self._last_bar_seq: int | None = None  # seq of the BAR of row _flushed_rows - 1
        self._flushed_counts = [0] * NTYPES  # non-BAR events per type value already flushed
        self.anchor_wall_ns = time_ns()  # one wall-clock anchor per run (DESIGN.md)
        self.anchor_tick, self.anchor_mono_ns = clock_pair()  # the recorded clocks are ticks: see _hotbus.c

    # -- wiring ----------------------------------------------------------------------------------
    def subscribe_bars(self, handler: BarHandler) -> None:
        """Add a bar handler (fills, stops, classifiers); handlers run in subscription order for every row."""
        self._bar_handlers.append(handler)

    def subscribe_decisions(self, handler: BarHandler) -> None:
        """Add a decision handler (a strategy's `next`): it runs for a row once every row of that row's bar time
        has been through the bar handlers (see `group_rows_by_time`), so a decision sees all of this time's
        fills and closes whatever the symbols' order. With one symbol it simply runs after the bar handlers."""
        self._decide_handlers.append(handler)

    def group_rows_by_time(self, times: np.ndarray | None) -> None:
        """Give the bar time of each row (int64, several symbols): `run_bars` then runs the rows of one time in
        two phases, bar handlers for all of them, then decision handlers. None: each row on its own."""
        self._set_bar_times(None if times is None else np.ascontiguousarray(times, dtype=np.int64))

    def subscribe(self, event_type: EventType, handler: EventHandler) -> None:
        if event_type == EventType.BAR:
            raise ValueError("BAR handlers take a row index: use subscribe_bars")
        self._subs[int(event_type)].append(handler)

    def unsubscribe_all(self) -> None:
        """Drop every handler (the run is over): what they reference (a strategy's indicator arrays,
        hundreds of MB in a 10M-bar run) is freed before the run's metrics are built, not after."""
        self._bar_handlers.clear()
        self._decide_handlers.clear()
        for handlers in self._subs:
            handlers.clear()

    # -- state -----------------------------------------------------------------------------------
    #: Market-data row being dispatched (-1 before the first bar). The C member itself, not a property:
    #: portfolio and strategy read it on every signal and fill (~120k times per 1M bars), and a Python
    #: property call cost ~60 ns more each.
    current_row = BusCore._cur_bar

    @property
    def rows_dispatched(self) -> int:
        """Rows whose BAR was dispatched. Not `current_row + 1`: a decision for an earlier row of the same
        bar time runs after the later rows' BARs (see `group_rows_by_time`)."""
        return self._log_row + 1

    @property
    def published(self) -> int:
        """Events published so far (BARs included); the next seq."""
        return self._log_row + 1 + self._nonbar

    def publish_start(self, source: str, payload: tuple) -> Event:
        """RUN_START: seq 0, no cause. Dispatched immediately."""
        if self.published != 0:
            raise RuntimeError("RUN_START must be the first event of a run")
        ev = self.publish(EventType.RUN_START, source, payload, cause=NO_CAUSE)
        self.drain()
        return ev

    @property
    def counts(self) -> dict[str, int]:
        """Exact events published per type so far."""
        out = {"BAR": self._log_row + 1} if self._log_row >= 0 else {}
        out.update({EventType(t).name: n for t, n in enumerate(self._type_counts()) if n})
        return out

    def settle(self) -> None:
        """End of a failed run: queued events stay recorded (never received) and are not dispatched."""
        self._clear_queue()

    def bar_seq(self, row: int) -> int | None:
        """seq of the BAR of a dispatched `row` (traced runs; rows of the unflushed chunk or the last flushed one).

        Off the hot path (error messages): the BAR of row r follows the non-BAR events of earlier rows.
        """
        if not self.traced or row < 0 or row > self._log_row:
            return None
        if row == self._flushed_rows - 1:
            return self._last_bar_seq
        if row < self._flushed_rows:
            return None
        rows = np.frombuffer(self._log_rt(), dtype=np.int64) >> 4
        return row + self._flushed_nonbar + int(np.searchsorted(rows, row, side="left"))

    # -- recording -------------------------------------------------------------------------------
    def take_batch(self, rows_done: int) -> EventBatch | None:
        """Hand over everything recorded since the last call, for rows [flushed, rows_done). O(1).

        Called between chunks (queue empty) and at the end of a run. BAR seqs are not computed
        here: the batch carries what is needed to compute them off the hot path.
        """
        if not self.traced:
            return None
        if self._queued:
            raise RuntimeError("take_batch with undispatched events (drain or settle first)")
        log = ChunkLog(*self._take_log())
        bars = BarBlock(self._flushed_rows, rows_done, self._take_bar_clocks(), self._chunk_emitted)
        before = self._flushed_nonbar
        prev_bar_seq = self._last_bar_seq
        if rows_done > self._flushed_rows:
            # BAR of the batch's last row: after the events of earlier rows. rt = row << 4 | type is ordered by
            # row, so one binary search over the recorded words (no array made: this runs on the hot path).
            last = rows_done - 1
            rt = memoryview(log.common).cast("q")[0::4]
            self._last_bar_seq = last + before + bisect_left(rt, last << 4)
        self._flushed_rows = rows_done
        self._flushed_nonbar += len(log)
        counts = self._type_counts()
        batch_counts = [now - then for now, then in zip(counts, self._flushed_counts, strict=True)]
        self._flushed_counts = counts
        return EventBatch(self.correlation_id, self.anchor_wall_ns, self.anchor_tick, self.ns_per_tick(), bars, log,
                          before, prev_bar_seq, batch_counts)

    def ns_per_tick(self) -> float:
        """Rate of the recorded clock, measured from the run's start to now (1.0 where ticks are ns)."""
        if TICKS_ARE_NS:
            return 1.0
        tick, mono = clock_pair()
        return (mono - self.anchor_mono_ns) / (tick - self.anchor_tick) if tick > self.anchor_tick else 1.0

    def flush(self, rows_done: int) -> None:
        """Pass the pending batch to the recorder, if any."""
        batch = self.take_batch(rows_done)
        if batch is not None and self.recorder is not None:
            self.recorder.append(batch)
