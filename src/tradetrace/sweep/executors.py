"""Where a sweep's runs execute: a local process pool (default) or a Ray cluster.

Market data is loaded once and shared, not copied per task:
- process pool: the data is a module global set before the pool forks its workers (fork start
  method), so every worker reads the parent's pages copy-on-write;
- Ray: `ray.put` once; tasks receive the object reference and read the arrays zero-copy from the
  node's shared-memory object store.

A task returns a `TaskOutcome`. Where the rows go is decided by the runner (see runner.py): with
PostgreSQL each worker writes its own runs (many writers are fine); with DuckDB (one writer per file)
workers return the rows and the coordinator writes them in batches.

A worker that dies (killed, out of memory, a crash in native code) fails only the run it held
("worker crashed: killed by SIGKILL"), a new worker takes its place and the sweep goes on (`_Pool`).
Ctrl-C or an error recording a run stops the sweep without losing the runs in flight (`_drive`).
The first workers are forked before the runner's DuckDB writer thread starts (see rowwriter.py). A
replacement is forked while that thread may be inside DuckDB or Arrow; the worker never uses the
thread's connection, and replacements happen only after a worker died.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_ready
from typing import Any

from tradetrace.analytics import etl
from tradetrace.engine.data import MarketData


@dataclass(frozen=True)
class RunTask:
    """One run of a sweep, as sent to a worker (small: the market data travels separately)."""

    correlation_id: str
    sweep_id: str
    run_hash: str
    values: dict[str, Any]
    config: dict[str, Any]  # RunConfig.model_dump(mode="json")
    write_url: str | None = None  # set: the worker writes its rows there itself


@dataclass
class TaskOutcome:
    correlation_id: str
    run_hash: str
    status: str  # completed | failed
    error: str | None
    elapsed_s: float
    records: etl.RunRecords | None  # None when the worker wrote them itself


#: What an executor's `run` returns: outcomes as runs finish; `throw()` stops it gently (see `_drive`).
Outcomes = Generator[TaskOutcome, None, None]

_MARKET: MarketData | None = None  # the sweep's data, inherited by forked workers
_DB: dict[str, Any] = {}  # per-process connection cache for workers that write themselves
#: Seconds a worker has to exit (its pipe closed, or terminated) before it is killed.
_GRACE_S = 5.0


def execute(task: RunTask, market: MarketData) -> TaskOutcome:
    """Run one task; never raises for a failing run (it is recorded as failed with its error)."""
    from tradetrace.analytics import sink
    from tradetrace.config import parse_config
    from tradetrace.engine.backtest import RunFailed, run_backtest

    started = time.perf_counter()
    extra = {k: v for k, v in task.values.items() if "." in k}  # grid keys outside the strategy params
    try:
        cfg = parse_config(task.config)
        if cfg.store.writer == "auto":  # parallel runs already use the cores: no writer process per run
            cfg = cfg.model_copy(update={"store": cfg.store.model_copy(update={"writer": "thread"})})
        try:
            result = run_backtest(cfg, market=market, correlation_id=task.correlation_id, sweep_id=task.sweep_id,
                                  run_hash=task.run_hash, sweep_values=extra, record_db=False)
        except RunFailed as exc:
            result = exc.result
        records = sink.records_for(cfg, result, run_hash=task.run_hash, extra_params=extra)
    except Exception as exc:  # a run that could not even start is still recorded, as failed
        records = _failed_records(task, f"{type(exc).__name__}: {exc}".splitlines()[0])
    row = records.metrics
    outcome = TaskOutcome(task.correlation_id, task.run_hash, row["status"], row["error"],
                          time.perf_counter() - started, records)
    if task.write_url is not None and _write_here(task.write_url, records):
        outcome.records = None
    return outcome


def _write_here(url: str, records: etl.RunRecords) -> bool:
    """Write a run's rows from its worker; False if that failed: the outcome then keeps the rows and the
    coordinator writes them (runner.py), so the run's row is not lost with the worker's connection."""
    from tradetrace.analytics.db import connect

    try:
        db = _DB.get(url)
        if db is None:
            db = _DB[url] = connect(url)
        etl.write_runs(db, [records])
    except Exception as exc:  # the database's error, told on stderr; the next run reconnects
        stale = _DB.pop(url, None)
        if stale is not None:
            stale.close()
        print(f"tradetrace: run {records.correlation_id}: the worker could not write its rows "
              f"({_format_crash(exc)}); the coordinator writes them", file=sys.stderr)
        return False
    return True


def _execute_global(task: RunTask) -> TaskOutcome:
    if _MARKET is None:
        raise RuntimeError("worker has no market data: the pool must fork after it is set")
    return execute(task, _MARKET)


def _failed_records(task: RunTask, error: str) -> etl.RunRecords:
    """The row of a task that produced no events (it could not start, or its worker died)."""
    strategy = task.config.get("strategy", {})
    meta = etl.RunMeta(sweep_id=task.sweep_id, run_hash=task.run_hash,
                       extra_params={k: v for k, v in task.values.items() if "." in k})
    return etl.failed_run(task.correlation_id, strategy=strategy.get("type", "?"), params=strategy.get("params", {}),
                          error=error, run_name=task.config.get("name"), meta=meta)


def _crashed(task: RunTask, error: str) -> TaskOutcome:
    return TaskOutcome(task.correlation_id, task.run_hash, "failed", error, 0.0, _failed_records(task, error))


def _format_crash(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(exc)).strip().splitlines()[-1]


class _Sigint:
    """Ctrl-C during a sweep, raised only where it loses nothing.

    Python raises KeyboardInterrupt at any bytecode: between reading a finished run's outcome from its
    worker and handing it over (the run is in the store but its row is lost), or in the middle of
    reading it (the pipe is left mid-message). While installed, Ctrl-C raises at once only while the
    coordinator is blocked waiting for workers; elsewhere it is noted and raised at the executor's
    next safe point (`check`). Installed only over Python's own handler, from the main thread."""

    def __init__(self) -> None:
        self.waiting = False
        self.pending = 0  # Ctrl-C noted, not raised yet (a second one stops the runs in flight: see `_drive`)
        self.installed = False

    def __enter__(self) -> _Sigint:
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            signal.signal(signal.SIGINT, self._handle)
            self.installed = True
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if self.installed:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            self.installed = False
        if exc_type is None:
            self.check()  # noted after the last safe point: not lost

    def _handle(self, signum: int, frame: Any) -> None:
        if self.waiting:
            raise KeyboardInterrupt
        self.pending += 1

    def check(self) -> None:
        if self.pending:
            self.pending -= 1
            raise KeyboardInterrupt


def _drive(step: Callable[[bool, deque[TaskOutcome]], bool], sigint: _Sigint) -> Outcomes:
    """The executors' common loop. `step(stopping, ready)` starts runs (unless stopping), blocks until
    some finish and appends their outcomes to `ready` as it reads each (so none is lost if it raises
    after); False once nothing is in flight and nothing is left to start.

    An exception raised while stepping (Ctrl-C while waiting) or thrown in by the caller at a `yield` (it
    could not record an outcome) stops the sweep gently: no run starts any more, the runs in flight finish
    and are still yielded (their events are in the store, their rows belong in the database), then the
    exception propagates. A second one while finishing propagates at once."""
    ready: deque[TaskOutcome] = deque()
    stop: BaseException | None = None
    while True:
        try:
            sigint.check()
            if ready:
                yield ready.popleft()
                continue
            if not step(stop is not None, ready):
                break
        except GeneratorExit:  # the caller left without taking the rest: nothing would record it
            raise
        except BaseException as exc:
            if stop is not None:
                raise
            stop = exc
            if isinstance(exc, KeyboardInterrupt):
                print("tradetrace: interrupted: the runs in flight finish and are recorded "
                      "(Ctrl-C again stops them)", file=sys.stderr)
    if stop is not None:
        raise stop


class ProcessExecutor:
    """A local pool of forked processes sharing the parent's market data (see `_Pool`)."""

    name = "process"

    def __init__(self, workers: int | None = None) -> None:
        self.workers = max(1, workers or os.cpu_count() or 1)

    def run(self, tasks: Iterable[RunTask], market: MarketData) -> Outcomes:
        """Yield each task's outcome as it finishes; on an exception or Ctrl-C see `_drive`."""
        global _MARKET
        _MARKET = market
        todo = deque(tasks)
        with _Sigint() as sigint:
            pool = _Pool(min(self.workers, len(todo)), sigint)  # forked before the runner's writer thread starts
            finished = False

            def step(stopping: bool, ready: deque[TaskOutcome]) -> bool:
                if stopping:
                    pool.stop()
                else:
                    pool.dispatch(todo)
                if not pool.busy():
                    return False
                pool.collect(ready, todo)
                if not stopping:  # the freed workers get their next runs before these outcomes are recorded
                    pool.dispatch(todo)
                return True

            try:
                yield from _drive(step, sigint)
                finished = True
            finally:
                pool.close(wait=not finished)
                _MARKET = None


#: Runs sent to a worker ahead: the one it runs and the next. Why: with as many workers as cores, a worker
#: that finished waited for the coordinator to be scheduled, read its outcome and send it the next run (one
#: run at a time: 48 runs of a 40k-bar sweep on 2 workers went 22.0-23.0 -> 19.9-21.7 runs/s against
#: ProcessPoolExecutor, which queues ahead); with the next run already in its pipe it starts at once.
_AHEAD = 2
_SKIPPED = "skipped"  # a worker's answer for a run it did not start because the sweep is stopping


@dataclass
class _Worker:
    process: Any  # a forked multiprocessing Process
    conn: Connection  # the coordinator's end of this worker's own pipe
    tasks: deque[RunTask]  # the runs it holds, in order: sent, their outcomes not read yet (the first is running)


class _Pool:
    """Forked workers, each with its own pipe and up to `_AHEAD` runs, run in the order sent.

    Why not ProcessPoolExecutor: when one of its workers dies it fails every pending future (the runs of
    the live workers and queued runs that never started), terminates the other workers, and its
    shutdown could wait forever on a live worker blocked writing a result into a pipe nobody reads any
    more. Here the coordinator knows which runs each worker holds: a dead worker fails only the run it was
    running, the runs queued behind it go back to the queue, it is replaced, and the coordinator reads every
    busy worker's pipe, so no worker blocks on it. A stopping sweep (`stop`) raises a flag the workers share:
    they skip the runs queued behind the one they run, so no run starts once the sweep stops.
    """

    def __init__(self, size: int, sigint: _Sigint) -> None:
        self.ctx = mp.get_context("fork")
        self.sigint = sigint
        self.stopping = self.ctx.RawValue("b", 0)  # shared with the workers (forked after it)
        self.workers: list[_Worker] = []
        for _ in range(size):
            self.workers.append(self._spawn())

    def _spawn(self) -> _Worker:
        parent, child = self.ctx.Pipe()
        inherited = [parent, *(w.conn for w in self.workers)]  # closed in the child: each pipe has one reader
        # SIGINT stays blocked across the fork, so no Ctrl-C lands in a worker before it ignores it (_serve).
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            proc = self.ctx.Process(target=_serve, args=(child, inherited, self.stopping),
                                    name="tradetrace-sweep-worker")
            proc.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        child.close()
        return _Worker(proc, parent, deque())

    def busy(self) -> bool:
        return any(w.tasks for w in self.workers)

    def stop(self) -> None:
        """No run starts any more: the workers skip what is queued behind their current run."""
        self.stopping.value = 1

    def dispatch(self, todo: deque[RunTask]) -> None:
        """Give the next tasks to the workers, up to `_AHEAD` each (replacing a dead idle one first)."""
        for w in self.workers:
            while todo and len(w.tasks) < _AHEAD:
                if not w.tasks and not w.process.is_alive():
                    self._replace(w)
                try:
                    w.conn.send(todo[0])
                except OSError:  # it died since the check above
                    if w.tasks:
                        break  # `collect` sees it dead and settles what it holds
                    self._replace(w)
                    w.conn.send(todo[0])
                w.tasks.append(todo.popleft())

    def collect(self, ready: deque[TaskOutcome], todo: deque[RunTask]) -> None:
        """Block until busy workers hand back outcomes or die; append those outcomes to `ready`. An outcome
        that arrived is kept even if its worker died afterwards; a worker that died fails the run it was
        running, and the runs queued behind it go back to the front of `todo` (they never started)."""
        busy = [w for w in self.workers if w.tasks]
        self.sigint.waiting = True
        try:
            wait_ready([w.conn for w in busy] + [w.process.sentinel for w in busy])
        finally:
            self.sigint.waiting = False
        for w in busy:
            dead = False
            while w.tasks and w.conn.poll():
                try:
                    out = w.conn.recv()
                except (EOFError, OSError):  # the pipe closed before a whole outcome: the worker died
                    dead = True
                    break
                except Exception as exc:  # a whole message that does not load: the run is failed, not lost
                    ready.append(_crashed(w.tasks.popleft(), f"worker's outcome unreadable: {_format_crash(exc)}"))
                    continue
                w.tasks.popleft()
                if isinstance(out, TaskOutcome):  # else _SKIPPED: it never started, nothing to record
                    ready.append(out)
            if not w.tasks or (not dead and w.process.is_alive()):
                continue
            ready.append(_crashed(w.tasks.popleft(), f"worker crashed: {self._reap(w)}"))
            todo.extendleft(reversed(w.tasks))
            w.tasks.clear()

    @staticmethod
    def _reap(w: _Worker) -> str:
        """Let a dead or dying worker exit (bounded: killed after a grace period), say why it ended."""
        w.conn.close()
        w.process.join(_GRACE_S)
        if w.process.exitcode is None:
            w.process.kill()
            w.process.join()
        code = w.process.exitcode
        return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"

    def _replace(self, w: _Worker) -> None:
        self._reap(w)
        new = self._spawn()
        w.process, w.conn = new.process, new.conn

    def close(self, wait: bool) -> None:
        """End the workers. An idle worker exits when its pipe closes; one still holding a run (stopped a
        second time, or the caller left) is terminated: its run ends failed in the store, the runs queued
        behind it never start. A finished sweep does not wait for its workers to tear down their address
        spaces (13-24 ms of serial tail with 2 workers): their runs are durable and they hold no database.
        Otherwise it waits (bounded): nothing outlives the sweep half-done."""
        for w in self.workers:
            if w.tasks:
                w.process.terminate()
                wait = True
            w.conn.close()
        if wait:
            for w in self.workers:
                w.process.join(_GRACE_S)
                if w.process.exitcode is None:
                    w.process.kill()
                    w.process.join()


def _serve(conn: Connection, inherited: list[Connection], stopping: Any) -> None:
    """A worker: run the tasks sent on `conn`, one at a time, until the coordinator closes it.

    Ctrl-C is ignored here: it is the coordinator's to handle (it lets the runs in flight finish and
    records them). A terminal sends it to every process of the group, and a run cut short here would
    leave its events without a row."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    for c in inherited:
        c.close()
    while True:
        try:
            task = conn.recv()
        except EOFError:  # the sweep is over
            for db in _DB.values():
                db.close()
            return
        conn.send(_SKIPPED if stopping.value else _execute_global(task))  # stopping: queued runs do not start


def _ray_execute(market: MarketData, task: RunTask) -> TaskOutcome:
    return execute(task, market)


class RayExecutor:
    """Runs on a Ray cluster: `address` joins an existing one, else a local one is started (and stopped)."""

    name = "ray"

    def __init__(self, workers: int | None = None, address: str | None = None) -> None:
        self.workers = workers
        self.address = address

    def run(self, tasks: Iterable[RunTask], market: MarketData) -> Outcomes:
        try:
            import ray
        except ImportError:
            raise RuntimeError("the Ray executor needs ray: pip install 'tradetrace[ray]'") from None
        started_here = not ray.is_initialized()
        if started_here:
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if self.address:
                check_reachable(self.address)
                kwargs["address"] = self.address
            elif self.workers:
                kwargs["num_cpus"] = self.workers
            ray.init(**kwargs)
        try:
            market_ref = ray.put(market)  # once: tasks read it from the object store, zero-copy
            remote = ray.remote(num_cpus=1, max_retries=0)(_ray_execute)
            limit = max(2, int(ray.cluster_resources().get("CPU", 2)) * 2)
            todo = deque(tasks)
            pending: dict[Any, RunTask] = {}

            def step(stopping: bool, ready: deque[TaskOutcome]) -> bool:
                while not stopping and todo and len(pending) < limit:
                    task = todo.popleft()
                    pending[remote.remote(market_ref, task)] = task
                if not pending:
                    return False
                sigint.waiting = True
                try:
                    ref = ray.wait(list(pending), num_returns=1)[0][0]
                finally:
                    sigint.waiting = False
                try:
                    out = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    out = _crashed(pending[ref], f"ray task failed: {_format_crash(exc)}")
                ready.append(out)
                del pending[ref]
                return True

            with _Sigint() as sigint:
                yield from _drive(step, sigint)
        finally:
            if started_here:
                ray.shutdown()


#: Seconds to wait for a Ray cluster's address to accept a connection.
RAY_CONNECT_TIMEOUT_S = 10.0


def check_reachable(address: str, timeout: float = RAY_CONNECT_TIMEOUT_S) -> None:
    """RuntimeError (one line) unless a `host:port` (or `ray://host:port`) address accepts a TCP connection.

    Why: `ray.init(address=...)` with an address nobody listens on retries for ever (still waiting after 6.5 min
    here, printing warnings). Other forms (`auto`, `local`) are Ray's to resolve."""
    import socket

    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise RuntimeError(f"--ray-address {address}: no Ray cluster answers there "
                           f"({exc.strerror or type(exc).__name__})") from None


def make_executor(name: str, workers: int | None = None, address: str | None = None) -> ProcessExecutor | RayExecutor:
    """The executor by name: `process` (default) or `ray`."""
    if name == "process":
        if address:
            raise ValueError("--ray-address needs --executor ray")
        return ProcessExecutor(workers)
    if name == "ray":
        return RayExecutor(workers, address)
    raise ValueError(f"unknown executor {name!r}: use process or ray")
