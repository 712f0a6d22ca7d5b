"""Where a sweep's runs execute: a local process pool (default) or a Ray cluster.

Market data is loaded once and shared, not copied per task:
- process pool: the data is a module global set before the pool forks its workers (fork start
  method), so every worker reads the parent's pages copy-on-write;
- Ray: `ray.put` once; tasks receive the object reference and read the arrays zero-copy from the
  node's shared-memory object store.

A task returns a `TaskOutcome`. Where the rows go is decided by the runner (see runner.py): with
PostgreSQL each worker writes its own runs (many writers are fine); with DuckDB (one writer per file)
workers return the rows and the coordinator writes them in batches.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import traceback
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
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


_MARKET: MarketData | None = None  # the sweep's data, inherited by forked workers
_DB: dict[str, Any] = {}  # per-process connection cache for workers that write themselves


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
                                  record_db=False)
        except RunFailed as exc:
            result = exc.result
        records = sink.records_for(cfg, result, run_hash=task.run_hash, extra_params=extra)
    except Exception as exc:  # a run that could not even start is still recorded, as failed
        records = _failed_records(task, f"{type(exc).__name__}: {exc}".splitlines()[0])
    row = records.metrics
    outcome = TaskOutcome(task.correlation_id, task.run_hash, row["status"], row["error"],
                          time.perf_counter() - started, records)
    if task.write_url is not None:
        _write_here(task.write_url, records)
        outcome.records = None
    return outcome


def _write_here(url: str, records: etl.RunRecords) -> None:
    from tradetrace.analytics.db import connect

    db = _DB.get(url)
    if db is None:
        db = _DB[url] = connect(url)
    etl.write_runs(db, [records])


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


class ProcessExecutor:
    """A local pool of forked processes sharing the parent's market data."""

    name = "process"

    def __init__(self, workers: int | None = None) -> None:
        self.workers = max(1, workers or os.cpu_count() or 1)

    def run(self, tasks: Iterable[RunTask], market: MarketData) -> Iterator[TaskOutcome]:
        global _MARKET
        _MARKET = market
        ctx = mp.get_context("fork")
        tasks = list(tasks)
        pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx)
        finished = False
        try:
            # Bounded in flight: an interrupted sweep loses at most a few queued runs.
            it = iter(tasks)
            pending: dict[Future, RunTask] = {}
            for task in it:
                pending[pool.submit(_execute_global, task)] = task
                if len(pending) >= self.workers * 2:
                    break
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    task = pending.pop(fut)
                    yield self._outcome(fut, task)
                    nxt = next(it, None)
                    if nxt is not None:
                        pending[pool.submit(_execute_global, nxt)] = nxt
            finished = True
        finally:
            # Every outcome is in: the workers exit on their own (their runs are durable, they hold no
            # database), and the sweep does not wait for them to tear down their address spaces (13-24 ms
            # of serial tail with 2 workers). Interrupted or failing, it waits: nothing outlives the sweep
            # half-done.
            pool.shutdown(wait=not finished, cancel_futures=True)
            _MARKET = None

    @staticmethod
    def _outcome(fut: Future, task: RunTask) -> TaskOutcome:
        exc = fut.exception()
        if exc is None:
            return fut.result()
        # The worker process itself died (e.g. killed): the run is failed, the sweep goes on.
        return _crashed(task, f"worker crashed: {_format_crash(exc)}")


def _ray_execute(market: MarketData, task: RunTask) -> TaskOutcome:
    return execute(task, market)


class RayExecutor:
    """Runs on a Ray cluster: `address` joins an existing one, else a local one is started (and stopped)."""

    name = "ray"

    def __init__(self, workers: int | None = None, address: str | None = None) -> None:
        self.workers = workers
        self.address = address

    def run(self, tasks: Iterable[RunTask], market: MarketData) -> Iterator[TaskOutcome]:
        try:
            import ray
        except ImportError:
            raise RuntimeError("the Ray executor needs ray: pip install 'tradetrace[ray]'") from None
        started_here = not ray.is_initialized()
        if started_here:
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if self.address:
                kwargs["address"] = self.address
            elif self.workers:
                kwargs["num_cpus"] = self.workers
            ray.init(**kwargs)
        try:
            market_ref = ray.put(market)  # once: tasks read it from the object store, zero-copy
            remote = ray.remote(num_cpus=1, max_retries=0)(_ray_execute)
            tasks = list(tasks)
            limit = max(2, int(ray.cluster_resources().get("CPU", 2)) * 2)
            it = iter(tasks)
            pending: dict[Any, RunTask] = {}
            for task in it:
                pending[remote.remote(market_ref, task)] = task
                if len(pending) >= limit:
                    break
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                ref = done[0]
                task = pending.pop(ref)
                try:
                    yield ray.get(ref)
                except ray.exceptions.RayError as exc:
                    yield _crashed(task, f"ray task failed: {_format_crash(exc)}")
                nxt = next(it, None)
                if nxt is not None:
                    pending[remote.remote(market_ref, nxt)] = nxt
        finally:
            if started_here:
                ray.shutdown()


def make_executor(name: str, workers: int | None = None, address: str | None = None) -> ProcessExecutor | RayExecutor:
    """The executor by name: `process` (default) or `ray`."""
    if name == "process":
        if address:
            raise ValueError("--ray-address needs --executor ray")
        return ProcessExecutor(workers)
    if name == "ray":
        return RayExecutor(workers, address)
    raise ValueError(f"unknown executor {name!r}: use process or ray")
