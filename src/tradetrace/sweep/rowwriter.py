"""The coordinator's writer for DuckDB sweeps: a thread that loads finished runs' rows while runs go on.

Why a thread: DuckDB allows one writing process per file, so the coordinator writes every run's rows.
Written on the coordinator's main thread in batches due every 2 s, a short sweep wrote everything,
connect and closing checkpoint included, after its last run had finished: with 2 workers that was
~0.1 s of serial tail in a 1.7 s sweep of 12 runs. Here rows are written as they arrive, at most one
write per `MIN_INTERVAL_S` (each write has a fixed cost: transaction, deletes, commit, ~8 ms), so when
the sweep ends only the last runs' rows remain. DuckDB releases the GIL while it works; the main
thread only enqueues.

The writes' CPU competes with the workers when there are as many workers as cores, so it is kept
small (measured on 12 runs of a 40k-bar sweep, 14.6k trade rows): the connection uses one DuckDB
thread (its parallel insert cost 60% more CPU for these small batches: 85 against 52 ms), and there is
no CHECKPOINT after each write (35 ms more): committed rows are already durable in DuckDB's WAL, and
closing the file checkpoints once.

At the end of a sweep the last runs are in flight on fewer workers than there are cores: the runner says
so (`flush_now`), and the thread writes what is queued and checkpoints then, on the idle core, so that
`close()` (serial: nothing else is left) writes only the last runs' rows and checkpoints little
(measured with 2 workers on a 48-run sweep, median of 8: close 79-95 ms before, 59-61 ms after; the last
runs often end before the early write and checkpoint do).

The thread starts on the first row, not before: the process pool forks its workers on its first
task, and forking while this thread is inside DuckDB could hand a worker a copy of a held lock.
"""

from __future__ import annotations

import queue
import threading
import time

from tradetrace.analytics import etl
from tradetrace.analytics.db import Database, connect

#: Most runs per transaction (bounds a write's memory and duration).
BATCH_RUNS = 64
#: Least time between two writes: rows of runs finishing meanwhile are written together.
MIN_INTERVAL_S = 0.5

_STOP = object()
_FLUSH = object()


class RowWriter:
    """Loads runs' rows into a DuckDB file from a background thread; `close()` writes what is left."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def add(self, rec: etl.RunRecords) -> None:
        """Queue one run's rows (raises the writer's error if an earlier write failed)."""
        self._raise_error()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sweep-row-writer", daemon=True)
            self._thread.start()
        self._queue.put(rec)

    def flush_now(self) -> None:
        """Write what is queued at once and checkpoint the file (a core is idle now: the sweep's last runs)."""
        if self._thread is not None:
            self._queue.put(_FLUSH)

    def close(self) -> None:
        """Write every queued row, close the database; raises the writer's error if a write failed."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None
        self._raise_error()

    def _raise_error(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def _run(self) -> None:
        db: Database | None = None
        stopping = False
        try:
            db = connect(self.url)
            if db.dialect == "duckdb":
                db.execute("SET threads = 1")  # the workers have the cores (see the module docstring)
            last = 0.0
            while not stopping:
                batch, stopping, flush = self._next_batch(last)
                if batch:
                    etl.write_runs(db, batch, fresh=True)  # the runner's new run ids, each sent once
                    last = time.monotonic()
                if flush and db.dialect == "duckdb":
                    db.execute("CHECKPOINT")
        except BaseException as exc:  # handed to the main thread, raised by its next add() or close()
            self._error = exc
            if not stopping:
                self._drain()
        finally:
            if db is not None:
                db.close()

    def _next_batch(self, last: float) -> tuple[list[etl.RunRecords], bool, bool]:
        """Block for a row, wait out the rest of `MIN_INTERVAL_S` since the last write (unless
        stopping or told to flush), then take everything queued (up to `BATCH_RUNS`). Returns (rows,
        stop seen, flush asked)."""
        item = self._queue.get()
        batch: list[etl.RunRecords] = []
        while True:
            if item is _STOP:
                return batch, True, False
            if item is _FLUSH:  # everything queued up to now goes in this write
                while len(batch) < BATCH_RUNS:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is _STOP:
                        return batch, True, False  # closing: the close checkpoints
                    if nxt is not _FLUSH:
                        batch.append(nxt)
                return batch, False, True
            batch.append(item)
            if len(batch) >= BATCH_RUNS:
                return batch, False, False
            wait = last + MIN_INTERVAL_S - time.monotonic()
            try:
                item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                return batch, False, False

    def _drain(self) -> None:
        """After a failed write: consume the queue up to the stop mark so `close()` does not hang."""
        item = None
        while item is not _STOP:
            item = self._queue.get()
