"""StoreRecorder: the bus's batches -> durable Parquet segments, off the engine's thread, never dropping.

Flow: the engine hands over what it recorded at the end of each chunk of bars, or sooner once half the
durability window has passed since the last hand-over (`handover_limits`: half of `durability_ms`, or
`durability_events / 2` events). `append` hands a batch to the writer and returns; the writer converts
batches to typed Arrow tables, buffers them, and writes a *segment* (one file per event type, each
written to a temporary name, fsynced, renamed, directory fsynced) once half the durability window
(`durability_events / 2`, so that writing runs ahead of the window) or half of `durability_ms` of
events are pending: an event waits at most half the window in the engine and half in the writer. The
segment counts only when its line in the run's journal is fsynced. A writer with nothing waiting
writes smaller segments (half of that) so that little is left when the run ends.
Backpressure: `append` blocks while `queue_batches` batches are in flight or while the events not
yet durable would exceed the durability window, so a slow disk slows the producer and bounds
memory; nothing is ever dropped.

Where the writer runs (why): converting events and encoding Parquet is Python and C work that, in a
thread, competes with the engine for the GIL; measured on the reference workload this made a
persisted run about twice as slow as an untraced one. So by default the writer is a separate process
(`mode="process"`, see `service.py`): a forked child for a process's first runs (it starts at once),
then one writer started from a fresh interpreter and reused by every later run (it shares no pages with
the engine, so the engine pays no copy-on-write). Batches go through reused shared-memory buffers;
the writer answers with acknowledgements. It dies with its parent (PR_SET_PDEATHSIG), so a SIGKILL of
the run leaves exactly what a killed thread would: the durable segments. `mode="thread"` is the
fallback off Linux or off the main thread, and what sweep workers use (their cores are taken by other
runs); a thread keeps a small run's tables after writing them, so the run's analytics rows need not
read its files back.

Ends: `end` flushes everything and marks the run completed or failed with its reason; `end(wait=False)`
then `wait()` lets the caller compute metrics while the last segment is written. SIGTERM during
a run becomes a `Terminated` exception in the main thread (run_backtest records it as the failure);
an interpreter exit with a run still open flushes it and marks it failed. After SIGKILL the journal
still lists every durable segment: the store reports the run incomplete and the lost seq range.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import sys
import threading
import time
import weakref
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from tradetrace.events.recorder import EventBatch, MarketWindow, RunInfo, RunTotals
from tradetrace.events.types import EventType
from tradetrace.store import codec, layout, service
from tradetrace.store import market as market_sets
from tradetrace.store.sampling import SamplerState, Sampling, sample

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from tradetrace.engine.data import MarketData

_END = object()
_PR_SET_PDEATHSIG = 1


class Terminated(SystemExit):
    """SIGTERM/SIGINT-style termination raised in the main thread so the run ends failed, with its reason."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum

    def __str__(self) -> str:
        return f"terminated by {signal.Signals(self.signum).name}"


class SegmentWriter:
    """Batches of one run -> durable segments + journal + final manifest. Runs in the writer (thread or child)."""

    def __init__(self, root: Path, run_id: str, date: str, compression: str, market: MarketData | None,
                 sampling: Sampling | None, keep_events: int = 0, use_set: bool = False,
                 market_set: str | None = None) -> None:
        self.root = root
        # `use_set`: BAR payloads go to the store's market set (written with the first segment if the store lacks
        # it) instead of each BAR file (see market.py). Its key is `market_set` if the engine knew it, else
        # computed here from the first batch's rows, and named in the manifest before the set is checked.
        self.use_set = use_set
        self.market_set = market_set
        self._set_named = market_set is not None
        self._set_checked = not use_set
        self._set_rows: MarketData | MarketWindow | None = None
        # Tables of a small run kept after writing (thread mode): the run's own process reads them back
        # (analytics rows, result.events()) without decoding the files it just wrote.
        self.kept: dict[EventType, list[pa.Table]] | None = {} if keep_events > 0 else None
        self.keep_events = keep_events
        self.run_id = run_id
        self.date = date
        self.compression = compression
        self.market = market
        self.sampling = sampling
        self.sampler_state = SamplerState()  # the run's batches are sampled in order, each after the last
        self.segment = 0
        self.durable_hi = -1
        self.manifest_durable = False  # the engine creates it without syncing (see StoreRecorder.begin)
        self.stored = 0
        self.files: dict[str, list[str]] = {}
        self._reset()

    def _reset(self) -> None:
        self.pending: dict[EventType, list[pa.Table]] = {}
        self.events = 0  # events buffered, not yet durable
        self.since = 0.0  # monotonic time of the first buffered batch
        self.counts: dict[str, int] = {}
        self.lo: int | None = None

    def add(self, batch: EventBatch, market: MarketWindow | None = None) -> None:
        """Buffer a batch; `market` is the batch's market rows where the writer has no data set of its own."""
        rows = market if market is not None else self.market
        if self.use_set and self._set_rows is None:
            self._set_rows = rows  # the whole data set (market.MAX_SET_BYTES: a writer process gets it whole)
            if self.market_set is None:
                assert rows is not None
                self.market_set = rows.key if isinstance(rows, MarketWindow) else market_sets.set_key(rows)
        tables = batch.tables(rows, self.market_set)
        if self.sampling is not None:
            tables = sample(tables, self.sampling, rows, self.sampler_state)
        for t, tab in tables.items():
            self.pending.setdefault(t, []).append(tab)
        if self.kept is not None:
            if self.stored + self.events + len(batch) > self.keep_events:
                self.kept = None  # too big to hold: readers read the files
            else:
                for t, tab in tables.items():
                    self.kept.setdefault(t, []).append(tab)
        if not self.events:
            self.since = time.monotonic()
            self.lo = batch.bars.row_start + batch.nonbar_before
        self.events += len(batch)
        for k, v in batch.counts().items():
            self.counts[k] = self.counts.get(k, 0) + v

    def segment_due(self, segment_events: int, idle: bool) -> bool:
        """A full segment is pending, or half of one while nothing else waits (see _IDLE_FRACTION)."""
        return self.events >= segment_events or (idle and self.events >= segment_events // _IDLE_FRACTION)

    def write_segment(self) -> int:
        """Make everything buffered durable; returns how many events that was."""
        if not self.events:
            return 0
        if not self.manifest_durable:  # before any segment counts, the run's manifest must survive a crash
            layout.make_durable(layout.manifest_path(self.root, self.run_id))
            self.manifest_durable = True
        files: dict[str, str] = {}
        stored: dict[str, int] = {}
        written = []
        if not self._set_checked:  # no BAR row is durable before the market set it refers to
            assert self.market_set is not None and self._set_rows is not None
            if not self._set_named:  # named first: `market.collect` keeps the sets that manifests name
                mpath = layout.manifest_path(self.root, self.run_id)
                layout.write_json(mpath, {**layout.read_json(mpath), "market_set": self.market_set})
                self._set_named = True
            got = market_sets.file_to_write(self.root, self.market_set, self._set_rows, self.compression)
            if got is not None:
                written.append(got)
            self._set_checked = True
        for t, parts in sorted(self.pending.items()):
            table = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
            d = layout.type_dir(self.root, self.date, t.name)
            layout.make_dirs(d)
            final = d / layout.segment_name(self.run_id, self.segment)
            written.append((final, codec.parquet_bytes(table, t, self.compression)))
            rel = str(final.relative_to(self.root))
            files[t.name] = rel
            stored[t.name] = table.num_rows
        layout.write_all_durably(self.root, written)
        for name, rel in files.items():
            self.files.setdefault(name, []).append(rel)
        assert self.lo is not None
        hi = self.lo + self.events - 1
        layout.append_journal(layout.journal_path(self.root, self.run_id), {
            "segment": self.segment, "seq_lo": self.lo, "seq_hi": hi, "events": self.events,
            "counts": self.counts, "stored": stored, "files": files, "wall_ns": time.time_ns()})
        self.segment += 1
        self.durable_hi = hi
        self.stored += sum(stored.values())
        n = self.events
        self._reset()
        return n

    def finish(self, totals: RunTotals) -> None:
        """Write what is left and the final manifest: completed / failed / incomplete with the lost range."""
        self.write_segment()
        mpath = layout.manifest_path(self.root, self.run_id)
        m = layout.read_json(mpath)
        durable = self.durable_hi + 1
        lost = None if durable >= totals.event_count else [durable, totals.event_count - 1]
        m.update({
            "status": totals.status if lost is None else "incomplete",
            "reason": totals.reason if lost is None else
            f"{totals.reason or totals.status}; events {lost[0]}..{lost[1]} were never handed to the store",
            "event_count": totals.event_count, "counts": totals.counts, "stored_count": self.stored,
            "durable_seq_hi": self.durable_hi, "lost_seq": lost, "segments": self.segment,
            "files": self.files, "ended_wall_ns": time.time_ns(),
        })
        layout.write_json(mpath, m)

    def mark_failed(self, exc: BaseException) -> None:
        mpath = layout.manifest_path(self.root, self.run_id)
        m = layout.read_json(mpath)
        m.update({"status": "failed", "reason": f"event store writer failed: {type(exc).__name__}: {exc}",
                  "durable_seq_hi": self.durable_hi, "ended_wall_ns": time.time_ns()})
        layout.write_json(mpath, m)


#: Events of a run a writer thread keeps in memory after writing them (see SegmentWriter.kept): a sweep's
#: runs are read back for their analytics rows; ~200 B per event.
KEEP_EVENTS = 500_000

#: A writer with nothing waiting writes a segment once it holds 1/_IDLE_FRACTION of a full one. Keeping up, it
#: writes smaller segments, so little is left to write when the run ends (the run's end waits for it);
#: falling behind, it writes full ones (fewer files and fsyncs per event). Compaction merges them later.
#: Why a half, not smaller: every segment is a file per type, and a small type's file costs ~2x per row at
#: ~2k rows what it costs at ~10k (Parquet's per-file and per-column work). On a 1M-bar run, 16 quarter
#: segments took 460-504 ms of writer CPU, 8 half segments 389-405 ms; the last segment (31 ms) is still
#: written while the engine computes the run's metrics (~50 ms).
_IDLE_FRACTION = 2


def _segment_events(durability_events: int) -> int:
    """Events per segment: half the durability window, so segments are written ahead of the window and
    the producer (which blocks only when the window is full) does not wait for every segment."""
    return max(1, durability_events // 2)


def process_available() -> bool:
    """Process mode needs the writer service (Linux) and the main thread: signals, and PR_SET_PDEATHSIG
    follows the thread that started the writer, which must live as long as the process."""
    return service.available() and threading.current_thread() is threading.main_thread()


class StoreRecorder:
    """Recorder protocol implementation writing one run into an event store (see module docstring)."""

    def __init__(self, root: Path, *, compression: str = "zstd", durability_events: int = 524_288,
                 durability_ms: int = 1_000, queue_batches: int = 8, sampling: Sampling | None = None,
                 compact_on_end: bool = False, mode: str | None = None) -> None:
        if compression not in ("zstd", "snappy"):
            raise layout.StoreError(f"compression {compression!r} not one of zstd, snappy")
        if durability_events < 1 or durability_ms < 1 or queue_batches < 1:
            raise layout.StoreError(f"durability_events, durability_ms and queue_batches must be >= 1, got "
                                    f"{durability_events}, {durability_ms}, {queue_batches}")
        if mode not in (None, "process", "thread"):
            raise layout.StoreError(f"writer mode {mode!r} not one of process, thread")
        self.root = Path(root).absolute()  # the writer process may have another working directory
        self.compression = compression
        self.durability_events = durability_events
        self.durability_ms = durability_ms
        # Half the window on each side (see `handover_limits`): events wait at most half of it in the engine
        # and half in the writer, so none is older than the window when it becomes durable.
        self.durability_s = durability_ms / 2000
        self.queue_batches = queue_batches
        self.sampling = sampling
        self.compact_on_end = compact_on_end
        self.requested_mode = mode
        self.mode = ""
        self.info: RunInfo | None = None
        self.run_id = ""
        self.date = ""
        self.market_set: str | None = None
        self.totals: RunTotals | None = None
        self._market: MarketData | None = None
        self._undurable = 0  # events handed over and not yet in a committed segment
        self._inflight = 0  # batches handed over and not yet taken by the writer
        self._received = 0
        self._received_counts: dict[str, int] = {}
        self._error: BaseException | None = None
        self._raised = False  # the error reaches the engine once; the run is failed from then on
        self._writer_lost = False  # the writer process died without marking the run (killed, out of memory)
        self._prev_handler: dict[int, Any] | None = None
        self._pending_signal: int | None = None
        self._ended = False
        self._waited = False
        # observable backpressure (tests, diagnostics): how often the producer waited, the most in flight
        self.producer_waits = 0
        self.max_inflight = 0
        # thread mode
        self._cond = threading.Condition()
        self._queue: deque[Any] = deque()
        self._waiting = False
        self._thread: threading.Thread | None = None
        self._writer: SegmentWriter | None = None
        # process mode
        self._conn: Connection | None = None
        self._service: service.WriterService | None = None
        self._done = False

    # -- Recorder protocol -----------------------------------------------------------------------
    def begin(self, info: RunInfo, market: MarketData) -> None:
        """Create the run's manifest (status running) and start the writer."""
        self.run_id = layout.check_run_id(info.correlation_id)
        self.info = info
        self._market = market
        started = info.started_wall_ns or time.time_ns()
        self.date = layout.start_date(started)
        # The set's key, if known already (a sweep's coordinator computed it); else the writer computes it.
        self.use_set = market_sets.uses_set(market)
        self.market_set = market.derived.get("market_set") if self.use_set else None
        mpath = layout.manifest_path(self.root, self.run_id)
        if mpath.exists():
            raise layout.StoreError(f"run {self.run_id} already exists in the event store {self.root}")
        # Written, not synced: its two fsyncs (file, directory) cost the run ~2 ms on the engine's thread. The
        # writer syncs it before its first segment counts; a crash before that has nothing durable to lose.
        layout.write_json(mpath, {
            "run_id": self.run_id, "name": info.name, "strategy": info.strategy, "params": info.params,
            "config": info.config, "sweep_id": info.sweep_id, "run_hash": info.run_hash,
            "sweep_values": info.sweep_values, "status": "running", "reason": None, "date": self.date,
            "started_wall_ns": started, "ended_wall_ns": None, "pid": os.getpid(), "host": socket.gethostname(),
            "compression": self.compression, "market_set": self.market_set,
            "sampling": None if self.sampling is None else {
                "context": self.sampling.context, "base_rate": self.sampling.base_rate, "seed": self.sampling.seed},
        }, durable=False)
        self.mode = self.requested_mode or ("process" if process_available() else "thread")
        if self.mode == "process":
            if not service.available():
                raise layout.StoreError("writer mode 'process' needs Linux (memfd); use mode 'thread'")
            self._service = service.for_run(market)
            self._conn = self._service.conn
            self._send(("begin", {
                "root": self.root, "run_id": self.run_id, "date": self.date, "compression": self.compression,
                "sampling": self.sampling, "use_set": self.use_set, "market_set": self.market_set,
                "segment_events": _segment_events(self.durability_events),
                "durability_s": self.durability_s}))
        else:
            self._writer = SegmentWriter(self.root, self.run_id, self.date, self.compression, market, self.sampling,
                                         keep_events=KEEP_EVENTS, use_set=self.use_set, market_set=self.market_set)
            self._thread = threading.Thread(target=self._run, name=f"tradetrace-store-{self.run_id[:8]}",
                                            daemon=True)
            self._thread.start()
        _OPEN.add(self)
        self._install_signals()

    def handover_limits(self) -> tuple[int, int]:
        """(nanoseconds, events): the engine hands over what it recorded at least this often, not only at the
        end of a chunk of bars. Half the durability window each (the writer writes within the other half), so a
        slow strategy's events are durable within the window, and a SIGKILL loses at most the window."""
        return self.durability_ms * 500_000, _segment_events(self.durability_events)

    def append(self, batch: EventBatch) -> None:
        """Hand a batch to the writer; blocks (never drops) while too much is in flight or not durable."""
        n = len(batch)
        if self.mode == "process":
            self._append_process(batch, n)
        else:
            self._append_thread(batch, n)
        self._received += n
        for k, v in batch.counts().items():
            self._received_counts[k] = self._received_counts.get(k, 0) + v
        self._raise_error()
        self._raise_pending_signal()

    def end(self, totals: RunTotals, wait: bool = True) -> None:
        """Flush everything and mark the run completed/failed with its reason; with `wait`, until durable.

        `wait=False` only tells the writer: the caller does other work (metrics) while the last segment
        is written, then calls `wait()`, which raises what `end` would have.
        """
        if self._ended:
            if wait:
                self.wait()
            return
        self._ended = True
        self.totals = totals
        if self.mode == "process":
            self._send(("end", self.run_id, totals))
        else:
            with self._cond:
                self._queue.append(_END)
                self._cond.notify_all()
        if wait:
            self.wait()

    def wait(self) -> None:
        """Block until the run ended by `end` is durable and marked; raise the writer's error if any."""
        if not self._ended or self._waited:
            return
        if self.mode == "process":
            self._wait_process()
        elif self._thread is not None:
            self._thread.join()
        self._waited = True
        _OPEN.discard(self)
        self._restore_signals()
        self._raise_error()
        if self.compact_on_end:
            from tradetrace.store.maintenance import compact_run

            compact_run(self.root, self.run_id)
        self._raise_pending_signal()

    # -- reading back (BacktestResult) -------------------------------------------------------------
    def tables(self) -> dict[EventType, pa.Table]:
        """Per-type tables of the run as stored, sorted by seq: kept in memory for a small run written by a
        thread (after it is durable), else read back from the store."""
        w = self._writer
        if self._waited and w is not None and w.kept is not None and self._error is None:
            payloads = market_sets.Payloads(market=self._market)
            return {t: market_sets.attach(pa.concat_tables(parts) if len(parts) > 1 else parts[0], payloads)
                    for t, parts in sorted(w.kept.items())}
        from tradetrace.store.reader import RunReader

        return RunReader(self.root, self.run_id).tables()

    def lookup(self, seq: int) -> pa.Table | None:
        """One event by seq, read from the store."""
        from tradetrace.store.reader import RunReader

        return RunReader(self.root, self.run_id).lookup(seq)

    def _raise_error(self) -> None:
        """The writer's error, once: the engine then fails the run (ERROR event, RUN_END), and what it still
        hands over is counted, not raised again, so the run ends and is marked with its reason."""
        if self._error is not None and not self._raised:
            self._raised = True
            raise RuntimeError(f"event store writer failed for run {self.run_id}: {self._error}") from self._error

    def _mark_writer_lost(self) -> None:
        """The writer process died and could not mark the run: the engine does, from the journal (what is
        durable) and its own count of what was published."""
        from tradetrace.store.reader import run_record

        mpath = layout.manifest_path(self.root, self.run_id)
        m = layout.read_json(mpath)
        if m.get("status") != "running":  # the writer marked it before it went
            return
        hi = int(run_record(self.root, self.run_id)["durable_seq_hi"])
        total = self.totals.event_count if self.totals is not None else self._received
        lost = [hi + 1, total - 1] if total > hi + 1 else None
        m.update({"status": "failed", "event_count": total, "durable_seq_hi": hi, "lost_seq": lost,
                  "reason": f"event store writer process died: {self._error}"
                            + (f"; events {lost[0]}..{lost[1]} were not durable" if lost else ""),
                  "ended_wall_ns": time.time_ns()})
        layout.write_json(mpath, m)

    # -- process mode (parent side) --------------------------------------------------------------
    def _append_process(self, batch: EventBatch, n: int) -> None:
        self._read_acks(block=False)
        while self._error is None and (self._inflight >= self.queue_batches or (
                self._undurable and self._undurable + n > self.durability_events)):
            self.producer_waits += 1
            if self._inflight < self.queue_batches:  # waiting on durability: ask for a segment now
                self._send(("flush", self.run_id))
            self._read_acks(block=True)
        if self._error is not None:
            return
        self._send(batch)
        if self._error is not None:
            return
        self._inflight += 1
        self._undurable += n
        self.max_inflight = max(self.max_inflight, self._inflight)

    def _send(self, msg: tuple | EventBatch) -> None:
        """A message to the writer process (a batch goes through a shared buffer, see service.py); a dead
        writer becomes the run's error."""
        assert self._conn is not None and self._service is not None and self._market is not None
        try:
            if isinstance(msg, EventBatch):
                self._service.hand_over(self.run_id, msg, self._market)
            else:
                self._conn.send(msg)
        except (BrokenPipeError, ConnectionResetError, EOFError) as exc:
            self._service.broken = True
            self._writer_lost = True
            self._error = self._error or RuntimeError(f"writer process exited: {exc}")

    def _read_acks(self, block: bool) -> None:
        """Apply the writer's acknowledgements: taken batches, durable events, errors, done (`block`: wait
        for at least one)."""
        service = self._service
        assert service is not None
        if self._done:  # what comes after "done" is another run's (its recorder reads it)
            return
        try:
            messages = service.inbox.take(block)
        except (EOFError, ConnectionResetError, OSError) as exc:
            service.broken = True
            self._writer_lost = True
            self._error = self._error or RuntimeError(f"writer process exited (code {service.proc.poll()}): {exc!r}")
            return
        for msg in messages:
            kind, run = msg[0], msg[1]
            if kind == "ready":  # a forked writer's first message (see service.main)
                service.said_ready(bool(run))
                continue
            if kind == "taken":
                service.taken()  # every batch's buffer comes back, whichever run it was
            if run != self.run_id:  # a late answer about an earlier run of this process
                continue
            if kind == "taken":
                self._inflight -= 1
            elif kind == "durable":
                self._undurable -= msg[2]
            elif kind == "error":
                self._error = RuntimeError(msg[2])
            elif kind == "done":
                self._done = True

    def _wait_process(self) -> None:
        while self._error is None and not self._done:
            self._read_acks(block=True)
        if self._writer_lost:
            self._mark_writer_lost()
        elif self.use_set and self.market_set is None and self._market is not None:
            self._learn_market_set(self._market)
        if self._service is not None and not self._service.fresh:  # a forked writer serves one run
            self._service.close()

    def _learn_market_set(self, market: MarketData) -> None:
        """Keep the data set's key, which the writer process computed (its manifest names it), with the data:
        the next run passes it on, and its writer (a fork, whose copy of `derived` the engine never sees) does
        not hash the data again (35-70 ms per 1M bars, while the run goes on)."""
        key = layout.read_json(layout.manifest_path(self.root, self.run_id)).get("market_set")
        if market_sets.is_key(key):
            market.derived.setdefault("market_set", key)

    @property
    def writer_pid(self) -> int | None:
        """The writer process's pid in process mode (tests stop it with real signals), else None."""
        return self._service.pid if self._service is not None else None

    # -- thread mode -----------------------------------------------------------------------------
    def _append_thread(self, batch: EventBatch, n: int) -> None:
        with self._cond:
            try:
                while self._error is None and (len(self._queue) >= self.queue_batches or (
                        self._undurable and self._undurable + n > self.durability_events)):
                    self.producer_waits += 1
                    self._waiting = True  # tells the writer to flush now rather than at its timer
                    self._cond.notify_all()
                    self._cond.wait()
                self._waiting = False
            finally:  # even if a signal interrupts the wait, the batch is kept: never drop
                self._queue.append(batch)
                self._undurable += n
                self.max_inflight = max(self.max_inflight, len(self._queue))
                self._cond.notify_all()

    def _run(self) -> None:
        w = self._writer
        assert w is not None
        try:
            while True:
                with self._cond:
                    while not self._queue:
                        if w.events:
                            if self._waiting:
                                break
                            left = self.durability_s - (time.monotonic() - w.since)
                            if left <= 0:
                                break
                            self._cond.wait(left)
                        else:
                            self._cond.wait()
                    item = self._queue.popleft() if self._queue else None
                    self._cond.notify_all()
                if item is not None and item is not _END:
                    w.add(item)
                seg = _segment_events(self.durability_events)
                with self._cond:
                    idle = not self._queue
                due = (item is _END or self._waiting or w.segment_due(seg, idle)
                       or (w.events and time.monotonic() - w.since >= self.durability_s))
                if item is _END:
                    assert self.totals is not None
                    w.finish(self.totals)
                    return
                if due:
                    done = w.write_segment()
                    with self._cond:
                        self._undurable -= done
                        self._cond.notify_all()
        except BaseException as exc:  # noqa: BLE001 - reported to the producer by append/end
            with self._cond:
                self._error = exc
                self._cond.notify_all()
            mark_failed(w, exc)

    # -- signals and exit ------------------------------------------------------------------------
    def _install_signals(self) -> None:
        """SIGTERM, and SIGINT while it has Python's default handler (Ctrl-C), are held off during a hand-over.
        Why SIGINT too: a KeyboardInterrupt between writing a batch's buffer and sending it left the writer's
        accounting one batch short, and the run's end then waited for an acknowledgement that never came."""
        if threading.current_thread() is not threading.main_thread():
            return
        self._prev_handler = {signal.SIGTERM: signal.getsignal(signal.SIGTERM)}
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._prev_handler[signal.SIGINT] = signal.default_int_handler
        for signum in self._prev_handler:
            signal.signal(signum, self._on_signal)

    def _restore_signals(self) -> None:
        if self._prev_handler is not None and threading.current_thread() is threading.main_thread():
            for signum, handler in self._prev_handler.items():
                signal.signal(signum, handler)
            self._prev_handler = None

    def _on_signal(self, signum: int, frame: Any) -> None:
        """SIGTERM -> Terminated, SIGINT -> KeyboardInterrupt in the main thread, except while a batch is being
        handed over: then right after it (`_raise_pending_signal`), so nothing is lost."""
        f = frame
        while f is not None:
            if f.f_code in _DEFER_CODES:
                self._pending_signal = signum
                return
            f = f.f_back
        _raise_for(signum)

    def _raise_pending_signal(self) -> None:
        if self._pending_signal is not None:
            signum, self._pending_signal = self._pending_signal, None
            _raise_for(signum)

    def close_at_exit(self) -> None:
        """Interpreter exit with the run still open: flush what was handed over, mark it failed."""
        if self.info is None:
            return
        if self._ended:  # ended without waiting: let the last segment land
            self.wait()
            return
        # What the engine published after its last hand-over never reached the recorder: the reason says where
        # the stored run stops (at most the durability window, see `handover_limits`).
        self.end(RunTotals("failed", f"interpreter exited before the run ended; events from seq {self._received} "
                                     "on (the last durability window at most) were never handed to the store",
                           self._received, dict(self._received_counts)))


def _raise_for(signum: int) -> None:
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signum)


def mark_failed(w: SegmentWriter, exc: BaseException) -> None:
    try:
        w.mark_failed(exc)
    except OSError as exc2:  # the disk that failed the segment may fail this too; the producer is told
        print(f"tradetrace: could not mark run {w.run_id} failed: {exc2}", file=sys.stderr)


def _defer_codes() -> frozenset:
    from tradetrace.events.bus import TracedEventBus

    return frozenset({TracedEventBus.flush.__code__, TracedEventBus.take_batch.__code__,
                      StoreRecorder.append.__code__, StoreRecorder.end.__code__, StoreRecorder.wait.__code__,
                      StoreRecorder._append_process.__code__, StoreRecorder._append_thread.__code__,
                      StoreRecorder._wait_process.__code__, StoreRecorder._read_acks.__code__,
                      StoreRecorder._send.__code__, service.WriterService.hand_over.__code__})


_DEFER_CODES = _defer_codes()
_OPEN: weakref.WeakSet[StoreRecorder] = weakref.WeakSet()


@atexit.register
def _close_open_runs() -> None:
    for rec in list(_OPEN):
        rec.close_at_exit()
