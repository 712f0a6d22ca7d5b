"""The run coordinator: builds the containers, gives the run its id, runs the bars, ends the run.

Data flow of one bar (read top to bottom; every arrow is an event on the TracedEventBus):

    DataFeed rows ──BAR──> ExecutionSimulator (fills orders pending from the last bar: FILL)
                     ├───> RiskManager (stops: RISK_BREACH -> exit ORDER -> FILL)
                     ├───> ClassifierSet (CLASSIFICATION, REGIME_CHANGE)
                     └───> Strategy.next (SIGNAL), once every symbol's row of this bar time is past the three above
    SIGNAL ──> Portfolio (sizing, risk limits) ──ORDER──> ExecutionSimulator (pending until next open)
    FILL   ──> Portfolio ──> POSITION_OPEN / POSITION_CLOSE (realized P&L) + PORTFOLIO_UPDATE

A failure in any handler ends the run: an ERROR event caused by the event being handled is
published, everything recorded so far is flushed, the run is marked failed, and `RunFailed` is
raised with a one-line reason.
"""

from __future__ import annotations

import gc
import json
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np

from tradetrace.allocator import tune_malloc
from tradetrace.analytics.metrics import compute_metrics
from tradetrace.analytics.sink import record_run
from tradetrace.config import RunConfig, as_config
from tradetrace.engine import synthetic
from tradetrace.engine.classifiers import ClassifierSet
from tradetrace.engine.costs import BpsSlippage, Commission, make_sizer
from tradetrace.engine.data import MarketData, load_market
from tradetrace.engine.execution import ExecutionSimulator
from tradetrace.engine.portfolio import Portfolio, PortfolioView
from tradetrace.engine.result import BacktestResult
from tradetrace.engine.risk import RiskManager
from tradetrace.events.bus import TracedEventBus
from tradetrace.events.event import NO_CAUSE, check_run_id, make_event_id, new_run_id
from tradetrace.events.recorder import MemoryRecorder, Recorder, RunInfo, RunTotals
from tradetrace.events.types import EventType
from tradetrace.store import recorder_for
from tradetrace.strategies.base import Strategy

Progress = Callable[[int, int], None]


class RunFailed(RuntimeError):
    """A run ended on an error; `result` holds what was computed and recorded up to it."""

    def __init__(self, message: str, result: BacktestResult) -> None:
        super().__init__(message)
        self.result = result


def load_data(cfg: RunConfig) -> MarketData:
    """The market data a config asks for (files or the synthetic generator)."""
    d = cfg.data
    if d.synthetic is not None:
        s = d.synthetic
        md, _truth = synthetic.generate(s.bars, s.seed, s.freq, s.symbols, s.start)
        if d.aux:
            from tradetrace.engine.data import asof, load_keyed

            for name, path in d.aux.items():
                a = load_keyed(f"data.aux.{name}", cfg.resolve(path))
                md.aux[name] = asof(md.ts, md.daily, a.ts, a.close, a.daily)
        return md
    return load_market({k: cfg.resolve(v) for k, v in d.symbols.items()},
                       {k: cfg.resolve(v) for k, v in d.aux.items()})


def chunk_bounds(n: int, chunk: int, times: np.ndarray | None = None) -> list[tuple[int, int]]:
    """[start, stop) of each chunk of bars: `chunk` rows, then halving over the last ones (down to chunk/16).

    Why taper: a run ends only when its last events are durable, and the store's writer persists a batch
    after the bars that made it have run. Small final batches leave little for the writer to do after
    the last bar, while full-size batches elsewhere keep the per-batch costs low. A run of at most one
    chunk is one batch: tapering it bought nothing (it is less than a segment, written when the run
    ends) and each batch has fixed costs (a 40k-bar sweep run: writer 33 -> 23 ms of CPU as one batch).

    `times` (several symbols: the sorted bar time of each row): a chunk never splits the rows of one time, which
    run together in two phases (see `TracedEventBus.group_rows_by_time`); a chunk ends after its time's last row.
    """
    if n <= chunk:
        return [(0, n)] if n > 0 else []
    out = []
    start = 0
    floor = max(1, chunk // 16)
    while start < n:
        left = n - start
        stop = min(start + (chunk if left > 2 * chunk else max(floor, (left + 1) // 2)), n)
        if times is not None and stop < n:
            stop = int(np.searchsorted(times, times[stop - 1], side="right"))
        out.append((start, stop))
        start = stop
    return out


def _run_chunks(bus: TracedEventBus, portfolio: Portfolio, execution: ExecutionSimulator, md: MarketData,
                cfg: RunConfig, run_id: str, progress: Progress | None) -> tuple[BaseException | None, str | None]:
    """Run every bar chunk by chunk, flushing each; on failure publish the ERROR and return it."""
    n = len(md)
    budget_ns, max_events = _handover_limits(bus.recorder)
    try:
        for start, stop in chunk_bounds(n, cfg.tracing.chunk_bars, md.ts if len(md.symbols) > 1 else None):
            row = start
            while row < stop:  # once, unless the recorder's durability window ends the chunk early
                row = bus.run_bars(row, stop, budget_ns, max_events)
                bus.flush(row)
            gc.freeze()
            if progress is not None:
                progress(stop, n)
        _end_of_data(bus, portfolio, execution, md, cfg.portfolio.close_at_end)
    except BaseException as exc:  # every failure, Ctrl-C included, must end the run with its reason
        cur = bus.current
        container = _failing_container(exc)
        cause = cur.seq if cur is not None else ~max(bus.current_row, 0)
        where = (f"{EventType(cur.type).name} {make_event_id(run_id, cur.seq)}" if cur is not None
                 else _bar_name(bus, run_id))
        error = f"{type(exc).__name__} in {container} while handling {where}: {exc}"
        bus.settle()  # events published but never dispatched stay recorded; nothing more runs
        bus.publish(EventType.ERROR, "engine",
                    (type(exc).__name__, str(exc), container, "".join(traceback.format_exception(exc))),
                    cause=cause)
        bus.settle()
        return exc, error
    return None, None


def _handover_limits(recorder: Recorder | None) -> tuple[int, int]:
    """(nanoseconds, events) after which recorded events are handed to the recorder within a chunk of bars;
    (0, 0): at chunk ends only. A recorder with a durability window (the event store) says how often it needs
    them (`handover_limits()`); without it a slow strategy's events would wait for a whole chunk (65,536 bars)
    and a SIGKILL could lose far more than the window."""
    limits = getattr(recorder, "handover_limits", None)
    return limits() if limits is not None else (0, 0)


def _bar_name(bus: TracedEventBus, run_id: str) -> str:
    """The BAR being dispatched, for error messages: its event id when traced, and its row."""
    row = bus.current_row
    seq = bus.bar_seq(row)
    return f"BAR of row {row}" if seq is None else f"BAR {make_event_id(run_id, seq)} (row {row})"


def _failing_container(exc: BaseException) -> str:
    tb = exc.__traceback__
    found = "engine"
    while tb is not None:
        obj = tb.tb_frame.f_locals.get("self")
        name = getattr(type(obj), "container", None) if obj is not None else None
        if isinstance(name, str):
            found = name
        tb = tb.tb_next
    return found


def run_backtest(config: RunConfig | dict[str, Any] | str, *, market: MarketData | None = None,
                 strategy: Strategy | None = None, recorder: Recorder | None = None,
                 correlation_id: str | None = None, sweep_id: str | None = None, run_hash: str | None = None,
                 sweep_values: dict[str, Any] | None = None,
                 progress: Progress | None = None, record_db: bool = True) -> BacktestResult:
    """Run one traced backtest.

    `config` is a RunConfig, a dict or a YAML path. `market` skips loading data (sweeps share it);
    `strategy` supplies a strategy instance (for strategies not in the registry); `recorder`
    receives the traced events (default: the event store when `store.enabled`, else memory).
    `record_db=False` leaves writing the analytics database to the caller (sweeps batch it). A sweep also
    gives `run_hash` and `sweep_values` (its grid values outside the strategy params): the event store keeps
    them with the run, so `tradetrace etl` rebuilds its database row exactly.
    """
    tune_malloc()  # once per process: see allocator.py
    cfg = as_config(config)
    md = market if market is not None else load_data(cfg)
    run_id = check_run_id(correlation_id) if correlation_id is not None else new_run_id()  # once per run
    traced = cfg.tracing.enabled
    if traced and recorder is None:
        recorder = recorder_for(cfg) if cfg.store.enabled else MemoryRecorder()
    bus = TracedEventBus(run_id, traced=traced, recorder=recorder if traced else None,
                         bar_clock_every=cfg.tracing.bar_clock_every)
    strat = strategy if strategy is not None else cfg.strategy_class()(cfg.strategy.params)

    # Containers, in bar-handler order (see module docstring).
    execution = ExecutionSimulator(bus, md, Commission.from_config(cfg.execution.commission),
                                   BpsSlippage(cfg.execution.slippage_bps), cfg.execution.fill)
    risk = RiskManager(bus, md, cfg.risk)
    classifiers = ClassifierSet(bus, md, cfg.classifiers) if cfg.classifiers else None
    portfolio = Portfolio(bus, md, cfg.portfolio, make_sizer(cfg.sizing), risk, classifiers)
    risk.portfolio = portfolio
    strat.bind(bus, md, PortfolioView(portfolio))
    strat.init()
    bus.subscribe_bars(execution.on_bar)
    if risk.watches_bars:
        bus.subscribe_bars(risk.on_bar)
    if classifiers is not None:
        bus.subscribe_bars(classifiers.on_bar)
    bus.subscribe_decisions(strat.next)
    if len(md.symbols) > 1:
        bus.group_rows_by_time(md.ts)

    params = strat.p.model_dump(mode="json")
    info = RunInfo(run_id, cfg.name, strat.name or type(strat).__name__, params, sweep_id,
                   cfg.model_dump(mode="json"), bus.anchor_wall_ns, run_hash, sweep_values)
    if recorder is not None and traced:
        recorder.begin(info, md)

    n = len(md)
    started = time.perf_counter()
    bus.publish_start("engine", (cfg.name, info.strategy, json.dumps(params, sort_keys=True),
                                 ",".join(md.symbols)))
    # GC policy (the same traced or not): the cyclic collector is paused while bars run and what
    # exists is frozen at each chunk boundary. Recorded events are long-lived and hold no cycles;
    # with the collector on, every collection rescans them (measured: +0.7 us per recorded event,
    # more than the tracing itself). Refcounting still frees everything; cycles made by user code
    # are collected when the run ends.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    gc.freeze()
    try:
        failure, error = _run_chunks(bus, portfolio, execution, md, cfg, run_id, progress)
        status = "failed" if failure is not None else "completed"
        rows_done = n if failure is None else bus.rows_dispatched
        end = bus.publish(EventType.RUN_END, "engine", (status, error or "", bus.published + 1), cause=NO_CAUSE)
        if failure is None:
            bus.drain()
        else:
            bus.settle()
        bus.flush(rows_done)
    finally:
        gc.unfreeze()
        if gc_was_enabled:
            gc.enable()
    elapsed = time.perf_counter() - started
    counts = bus.counts
    bus.unsubscribe_all()  # nothing runs any more: the strategy's arrays go before the metrics are built
    del strat
    if recorder is not None and traced:  # the store writes its last segment while the metrics are computed
        recorder.end(RunTotals(status, error, end.seq + 1, counts), wait=False)
    try:
        result = _result(cfg, md, portfolio, run_id, status, info, params, end.seq + 1, counts, elapsed, rows_done,
                         error, sweep_id, recorder if traced else None)
    finally:
        if recorder is not None and traced:
            recorder.wait()
    if cfg.database.enabled and record_db:
        record_run(cfg, result)
    if failure is not None:
        if isinstance(failure, KeyboardInterrupt | SystemExit):
            raise failure
        raise RunFailed(f"run {run_id} failed: {error}", result) from failure
    return result


def _result(cfg: RunConfig, md: MarketData, portfolio: Portfolio, run_id: str, status: str, info: RunInfo,
            params: dict[str, Any], event_count: int, counts: dict[str, int], elapsed: float, rows_done: int,
            error: str | None, sweep_id: str | None, recorder: Recorder | None) -> BacktestResult:
    """Metrics and the result object of a finished run."""
    times, equity, gross = portfolio.equity_curve()
    ppy = cfg.metrics.periods_per_year or md.periods_per_year()
    metrics = compute_metrics(equity, gross, cfg.portfolio.initial_cash, portfolio.closed.column("pnl"),
                              ppy, cfg.metrics.risk_free)
    metrics["total_commission"] = portfolio.commission_paid
    metrics["total_slippage"] = portfolio.slippage_paid
    if portfolio.closed:
        metrics["avg_bars_held"] = float(np.mean(portfolio.closed.column("bars_held")))
    return BacktestResult(
        run_id=run_id, name=cfg.name, status=status, strategy=info.strategy, params=params, metrics=metrics,
        final_equity=float(equity[-1]) if len(equity) else cfg.portfolio.initial_cash,
        initial_cash=cfg.portfolio.initial_cash,
        equity_curve=(times, equity),
        trade_log=portfolio.closed, open_positions=portfolio.open_positions(max(rows_done - 1, 0)),
        realized_pnl=portfolio.realized, started_wall_ns=info.started_wall_ns or 0,
        event_count=event_count, counts=counts, elapsed_s=elapsed, bars=rows_done, error=error,
        sweep_id=sweep_id, recorder=recorder,
    )


def _end_of_data(bus: TracedEventBus, portfolio: Portfolio, execution: ExecutionSimulator, md: MarketData,
                 close_at_end: bool) -> None:
    """After the last bar: optionally flatten at the last close; cancel orders that cannot fill."""
    last = len(md) - 1
    if close_at_end:
        for s, q in enumerate(portfolio.pos):
            if q:
                price = portfolio.last_price(s, last)
                bus.publish(EventType.RISK_BREACH, "portfolio",
                            ("end_of_data", md.symbols[s], "close", abs(q), 0.0, price, "close_at_end"),
                            cause=~last)
                bus.drain()
    dropped = execution.cancel_all()
    if dropped:
        bus.publish(EventType.RISK_BREACH, "execution",
                    ("end_of_data", "*", "cancel", float(dropped), 0.0, float("nan"),
                     f"{dropped} order(s) had no later bar to fill"), cause=~last)
        bus.drain()
