"""The common questions asked of the analytics database, as bound, index-friendly SQL.

`top_runs` is what `tradetrace runs` and the benchmark run: the best runs by a metric with optional
filters. Filters are bound parameters; the sort column comes from `SORTABLE` (identifiers cannot be
bound, so they are whitelisted).
"""

from __future__ import annotations

from tradetrace.analytics.db import Database

SORTABLE = ("sharpe", "sortino", "total_return", "annual_return", "max_drawdown", "win_rate", "profit_factor",
            "total_trades", "avg_trade_duration", "final_equity", "event_count", "created_at")
RUN_COLUMNS = ("correlation_id", "strategy_type", "parameters", "sharpe", "total_return", "max_drawdown", "win_rate",
               "total_trades", "market_regime", "volatility_regime", "status")


def top_runs(db: Database, top: int = 10, by: str = "sharpe", *, strategy: str | None = None,
             sweep: str | None = None, regime: str | None = None, volatility: str | None = None,
             status: str | None = None, ascending: bool = False) -> tuple[list[str], list[tuple]]:
    """The `top` runs by `by` (NULLs last), filtered; `strategy` matches the strategy type, its family
    (`momentum`: every momentum strategy, see `strategies.family`) or the run name."""
    if by not in SORTABLE:
        raise ValueError(f"sort column {by!r} not one of {', '.join(SORTABLE)}")
    where, args = [], []
    if strategy is not None:
        from tradetrace import strategies  # here: importing the strategies (numpy...) costs `runs` ~0.15 s

        types = [strategy, *strategies.family(strategy)]
        where.append(f"(strategy_type IN ({', '.join('?' for _ in types)}) OR run_name = ?)")
        args.extend([*types, strategy])
    for cond, value in (("sweep_id = ?", sweep),
                        ("market_regime = ?", regime), ("volatility_regime = ?", volatility), ("status = ?", status)):
        if value is not None:
            where.append(cond)
            args.extend([value] * cond.count("?"))
    columns = RUN_COLUMNS if by in RUN_COLUMNS else (*RUN_COLUMNS, by)  # the sort value is shown with the rows
    sql = (f"SELECT {', '.join(columns)} FROM optimization_runs"
           + (f" WHERE {' AND '.join(where)}" if where else "")
           + f" ORDER BY {by} {'ASC' if ascending else 'DESC'} NULLS LAST LIMIT ?")
    return db.query(sql, [*args, int(top)])
