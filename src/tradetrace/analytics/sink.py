"""Writes a finished run into the analytics database (issue 4): called by `run_backtest` at its end.

The rows are built from the run's traced events (`etl.records_from_events`), the same code the
`tradetrace etl` backfill runs on the event store, so both give identical rows. A run traced off (or
whose store samples events) lacks whole events: its row comes from the engine's metrics and it has no
trades or latency rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tradetrace.analytics import etl

if TYPE_CHECKING:
    from tradetrace.config import RunConfig
    from tradetrace.engine.result import BacktestResult


def storage_path(cfg: RunConfig) -> str | None:
    """Where the run's events are kept (None when they are only in memory), as an absolute path: the same
    whichever folder the run, a sweep's worker or `tradetrace etl` started in."""
    if not (cfg.tracing.enabled and cfg.store.enabled):
        return None
    from tradetrace.paths import events_dir

    return str(events_dir(cfg.store.path).resolve())


def records_for(cfg: RunConfig, result: BacktestResult, *, run_hash: str | None = None,
                extra_params: dict[str, Any] | None = None) -> etl.RunRecords:
    """The SQL rows of one finished run (`extra_params`: non-strategy values a sweep varied)."""
    meta = etl.RunMeta.from_config(cfg.model_dump(mode="json"), sweep_id=result.sweep_id, run_hash=run_hash,
                                   strategy_version=etl.strategy_version(cfg.strategy.type),
                                   event_storage_path=storage_path(cfg), extra_params=dict(extra_params or {}))
    rec = result.recorder
    tables = getattr(rec, "tables", None)
    if tables is not None:
        try:
            return etl.records_from_events(tables(), meta)
        except etl.IncompleteEvents:
            # A sampled store keeps a subset of the events: the run row comes from the engine instead.
            return _untraced(result, meta)
    return _untraced(result, meta)


def _untraced(result: BacktestResult, meta: etl.RunMeta) -> etl.RunRecords:
    m: dict[str, Any] = result.metrics
    row = {"run_id": result.run_id, "correlation_id": result.run_id, "sweep_id": meta.sweep_id,
           "run_name": result.name, "strategy_type": result.strategy, "strategy_version": meta.strategy_version,
           "parameters": meta.parameters(result.params), "run_hash": meta.run_hash,
           "total_trades": int(m.get("trade_count", 0)), "total_commission": m.get("total_commission"),
           "total_slippage": m.get("total_slippage"), "avg_bars_held": m.get("avg_bars_held"),
           "event_count": result.event_count, "status": result.status, "error": result.error}
    for k in ("sharpe", "sortino", "max_drawdown", "total_return", "annual_return", "win_rate", "profit_factor",
              "final_equity"):
        row[k] = m.get(k)
    return etl.RunRecords(result.run_id, etl.run_table([row]))


def record_run(cfg: RunConfig, result: BacktestResult) -> None:
    """Load one run's metrics, trades and latencies into the configured database."""
    from tradetrace.analytics.db import connect

    records = records_for(cfg, result)
    with connect(cfg.database.url) as db:
        etl.write_runs(db, [records])
