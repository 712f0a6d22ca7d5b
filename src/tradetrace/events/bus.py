"""TracedEventBus: the only way containers talk, and the place where tracing happens.

Dispatch model (why it looks like this):
- BARs are not queued. The bus walks market-data rows and calls the bar handlers in a fixed order
  (execution, risk, classifiers, strategy); after each handler it drains the queue of events that
  handler published. So a FILL at this bar's open has updated the portfolio before the strategy
  sees the bar, which is backtrader's order of play.
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
- A non-BAR event is recorded columnar as it is published and dispatched (`ChunkLog`: a few appends
  to typed arrays and lists, a clock read at publish and one at dispatch), so turning a chunk into
  Arrow tables later is mostly vectorized numpy work rather than a walk over Python objects.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from time import monotonic_ns, time_ns

import numpy as np

from tradetrace.events.event import NO_CAUSE, Event
from tradetrace.events.recorder import BarBlock, ChunkLog, EventBatch, Recorder
from tradetrace.events.types import EventType

BarHandler = Callable[[int], None]
EventHandler = Callable[[Event], None]


class TracedEventBus:
    """Publish/subscribe with gapless seq, automatic causation and monotonic clocks."""

    def __init__(self, correlation_id: str, *, traced: bool = True, recorder: Recorder | None = None,
                 bar_clock_every: int = 1) -> None:
        if bar_clock_every < 1:
            raise ValueError(f"bar_clock_every must be >= 1, got {bar_clock_every}")
        self.correlation_id = correlation_id
        self.traced = traced
        self.recorder = recorder
        self.bar_clock_every = bar_clock_every
        self._bar_handlers: list[BarHandler] = []
        self._subs: dict[int, list[EventHandler]] = {int(t): [] for t in EventType}
        self._queue: list[Event] = []  # FIFO; emptied at the end of every drain
        self._log = ChunkLog()  # traced: the non-BAR events of the current chunk, columnar
        self._current: Event | None = None
        self._cur_bar = -1  # market-data row being dispatched (-1 before the first bar)
        self._nonbar = 0  # non-BAR events published so far
        self._type_counts = [0] * len(EventType)  # non-BAR events per type, exact
        self._bar_rx = array("q")  # sampled BAR clocks: row, received, processed (flat)
        self._flushed_rows = 0  # BAR rows already flushed
        self._flushed_nonbar = 0  # non-BAR events already flushed
        self._last_bar_seq: int | None = None  # seq of the BAR of row _flushed_rows - 1
        self.anchor_wall_ns = time_ns()  # one wall-clock anchor per run (DESIGN.md)
        self.anchor_mono_ns = monotonic_ns()
        self._chunk_emitted = self.anchor_mono_ns

    # -- wiring ----------------------------------------------------------------------------------
    def subscribe_bars(self, handler: BarHandler) -> None:
        """Add a bar handler; handlers run in subscription order for every row."""
        self._bar_handlers.append(handler)

    def subscribe(self, event_type: EventType, handler: EventHandler) -> None:
        if event_type == EventType.BAR:
            raise ValueError("BAR handlers take a row index: use subscribe_bars")
        self._subs[int(event_type)].append(handler)

    # -- publishing ------------------------------------------------------------------------------
    @property
    def current(self) -> Event | None:
        """The non-BAR event being dispatched, or None while a bar handler runs."""
        return self._current

    @property
    def current_row(self) -> int:
        return self._cur_bar

    @property
    def published(self) -> int:
        """Events published so far (BARs included); the next seq."""
        return self._cur_bar + 1 + self._nonbar

    def publish(self, event_type: EventType, source: str, payload: tuple, cause: int | None = None,
                links: list[int] | None = None) -> Event:
        """Publish a non-BAR event. Hot path: builds the Event; traced, appends its fields to the chunk log."""
        if cause is None:
            cur = self._current
            cause = cur.seq if cur is not None else ~self._cur_bar
        row = self._cur_bar
        ev = Event(event_type, row + 1 + self._nonbar, cause, source, payload, row, links)
        self._nonbar += 1
        self._type_counts[event_type] += 1
        if self.traced:
            log = self._log
            log.rt.append(row << 4 | event_type)  # row and type packed in one int64
            log.cause.append(cause)
            log.emitted.append(monotonic_ns())
            log.source.append(source)
            log.payload.append(payload)
            if links is not None:
                log.links.append((len(log.payload) - 1, links))
        self._queue.append(ev)
        return ev

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
        out = {"BAR": self._cur_bar + 1} if self._cur_bar >= 0 else {}
        out.update({EventType(t).name: n for t, n in enumerate(self._type_counts) if n})
        return out

    def settle(self) -> None:
        """End of a failed run: queued events stay recorded (never received) and are not dispatched."""
        self._queue.clear()
        self._current = None

    # -- dispatch (hot path) ---------------------------------------------------------------------
    def drain(self) -> None:
        """Dispatch queued events (FIFO, including those published meanwhile) until none is left.

        Traced: one clock read per dispatch. Dispatch is FIFO, so an event's processing ends when the
        next one is received; only the last event of a drain takes a clock of its own.
        """
        q = self._queue
        subs = self._subs
        k = 0
        if self.traced:
            clock = monotonic_ns
            log = self._log
            rx = log.received.append  # dispatch is FIFO: the k-th dispatch is the k-th published event
            while k < len(q):
                ev = q[k]
                k += 1
                rx(clock())
                self._current = ev
                for h in subs[ev.type]:
                    h(ev)
            if k:  # the last event's processing ends now; the others' when the next was received
                log.drain_ends.append(len(log.received) - 1)
                log.drain_ends.append(clock())
        else:
            while k < len(q):
                ev = q[k]
                k += 1
                self._current = ev
                for h in subs[ev.type]:
                    h(ev)
        q.clear()
        self._current = None

    def run_bars(self, start: int, stop: int) -> None:
        """Dispatch market-data rows [start, stop): the engine's inner loop."""
        handlers = tuple(self._bar_handlers)
        q = self._queue
        drain = self.drain
        if self.traced:
            self._chunk_emitted = monotonic_ns()
        if not self.traced or not handlers:
            for i in range(start, stop):
                self._cur_bar = i
                for h in handlers:
                    h(i)
                    if q:
                        drain()
            return
        # Traced: clock every k-th row (received before its handlers, processed after its cascade).
        k = self.bar_clock_every
        clock = monotonic_ns
        rx = self._bar_rx.extend
        for j in range(start, stop, k):
            self._cur_bar = j
            t0 = clock()
            for h in handlers:
                h(j)
                if q:
                    drain()
            rx((j, t0, clock()))
            for i in range(j + 1, min(j + k, stop)):
                self._cur_bar = i
                for h in handlers:
                    h(i)
                    if q:
                        drain()

    def bar_seq(self, row: int) -> int | None:
        """seq of the BAR of a dispatched `row` (traced runs; rows of the unflushed chunk or the last flushed one).

        Off the hot path (error messages): the BAR of row r follows the non-BAR events of earlier rows.
        """
        if not self.traced or row < 0 or row > self._cur_bar:
            return None
        if row == self._flushed_rows - 1:
            return self._last_bar_seq
        if row < self._flushed_rows:
            return None
        rows = np.frombuffer(self._log.rt, dtype=np.int64) >> 4
        return row + self._flushed_nonbar + int(np.searchsorted(rows, row, side="left"))

    # -- recording -------------------------------------------------------------------------------
    def take_batch(self, rows_done: int) -> EventBatch | None:
        """Hand over everything recorded since the last call, for rows [flushed, rows_done). O(1).

        Called between chunks (queue empty) and at the end of a run. BAR seqs are not computed
        here: the batch carries what is needed to compute them off the hot path.
        """
        if not self.traced:
            return None
        if self._queue:
            raise RuntimeError("take_batch with undispatched events (drain or settle first)")
        log = self._log
        self._log = ChunkLog()
        rx = self._bar_rx
        self._bar_rx = array("q")
        bars = BarBlock(self._flushed_rows, rows_done, rx, self._chunk_emitted)
        before = self._flushed_nonbar
        prev_bar_seq = self._last_bar_seq
        if rows_done > self._flushed_rows:
            # BAR of the batch's last row: after the events of earlier rows (the log is in row order).
            last = rows_done - 1
            rows = np.frombuffer(log.rt, dtype=np.int64) >> 4
            self._last_bar_seq = last + before + int(np.searchsorted(rows, last, side="left"))
        self._flushed_rows = rows_done
        self._flushed_nonbar += len(log)
        return EventBatch(self.correlation_id, self.anchor_wall_ns, self.anchor_mono_ns, bars, log, before,
                          prev_bar_seq)

    def flush(self, rows_done: int) -> None:
        """Pass the pending batch to the recorder, if any."""
        batch = self.take_batch(rows_done)
        if batch is not None and self.recorder is not None:
            self.recorder.append(batch)
