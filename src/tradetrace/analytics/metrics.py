"""Performance metrics from an equity curve and a trade list.

Definitions follow empyrical (tests check them against empyrical-reloaded on the same returns):
Sharpe = mean(r - rf) / std(r, ddof=1) * sqrt(periods per year); Sortino uses the downside deviation
sqrt(mean(min(r - rf, 0)^2)); max drawdown is the worst fall of cumulative returns from their peak.
Periods per year come from the bar frequency (`MarketData.periods_per_year`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def returns_from_equity(equity: np.ndarray, initial: float) -> np.ndarray:
    """Simple returns per bar; the first is measured from the initial cash. Built in place (10M-bar runs)."""
    r = np.empty(len(equity))
    with np.errstate(invalid="ignore", divide="ignore"):
        if len(r):
            r[0] = equity[0] / initial
            np.divide(equity[1:], equity[:-1], out=r[1:])
        r -= 1.0
    r[~np.isfinite(r)] = 0.0
    return r


def sharpe(r: np.ndarray, periods_per_year: float, risk_free: float = 0.0) -> float:
    if len(r) < 2:
        return float("nan")
    ex = r - risk_free if risk_free else r
    mean = ex.mean()
    sd = 0.0 if ex.max() == ex.min() else ex.std(ddof=1)  # identical returns: exactly 0, not a ~1e-18 residue
    if sd == 0:
        return float("nan") if mean == 0 else math.copysign(math.inf, mean)
    if not np.isfinite(sd):
        return float("nan")
    return float(mean / sd * math.sqrt(periods_per_year))


def sortino(r: np.ndarray, periods_per_year: float, risk_free: float = 0.0) -> float:
    if len(r) < 2:
        return float("nan")
    ex = r - risk_free if risk_free else r
    down = np.minimum(ex, 0.0)
    np.square(down, out=down)
    downside = np.sqrt(np.mean(down))
    del down
    if downside == 0:
        mean = ex.mean()
        return float("nan") if mean == 0 else math.copysign(math.inf, mean)
    return float(ex.mean() * periods_per_year / (downside * math.sqrt(periods_per_year)))


def max_drawdown(r: np.ndarray, overwrite: bool = False) -> float:
    """Worst peak-to-trough fall of cumulative returns (negative number, 0 when none).

    `overwrite=True` builds the wealth curve in `r`'s own buffer (one long array less at the peak).
    """
    if len(r) == 0:
        return 0.0
    if overwrite:
        wealth = r
        wealth += 1.0
    else:
        wealth = 1.0 + r
    np.cumprod(wealth, out=wealth)
    peak = np.maximum.accumulate(wealth)
    np.maximum(peak, 1.0, out=peak)  # the starting wealth (1.0) is the first peak
    np.divide(wealth, peak, out=peak)
    # min(w/p - 1) == min(w/p) - 1 exactly (x - 1 rounds monotonically); the start contributes 0
    return min(0.0, float(peak.min()) - 1.0)


def annual_return(r: np.ndarray, periods_per_year: float) -> float:
    if len(r) == 0:
        return float("nan")
    total = float(np.prod(1.0 + r))
    years = len(r) / periods_per_year
    if total <= 0:
        return -1.0
    with np.errstate(over="ignore"):  # a short, strongly compounding run overflows to inf (not an error)
        return float(np.power(total, 1.0 / years)) - 1.0


def annual_volatility(r: np.ndarray, periods_per_year: float) -> float:
    if len(r) < 2:
        return float("nan")
    return float(r.std(ddof=1) * math.sqrt(periods_per_year))


def trade_stats(pnls: Sequence[float]) -> dict[str, float]:
    p = np.asarray(pnls, dtype=np.float64)
    n = len(p)
    wins = p[p > 0]
    losses = p[p < 0]
    gross_loss = -losses.sum()
    if n == 0:
        pf = float("nan")
    elif gross_loss == 0:
        pf = float("inf") if wins.sum() > 0 else float("nan")
    else:
        pf = float(wins.sum() / gross_loss)
    return {
        "trade_count": n,
        "win_rate": float(len(wins) / n) if n else float("nan"),
        "profit_factor": pf,
        "avg_trade_pnl": float(p.mean()) if n else float("nan"),
    }


def compute_metrics(equity: np.ndarray, gross: np.ndarray, initial: float, pnls: Sequence[float],
                    periods_per_year: float, risk_free: float = 0.0) -> dict[str, float]:
    """All run metrics; NaN where a metric is undefined (no trades, flat equity)."""
    r = returns_from_equity(equity, initial)
    final = float(equity[-1]) if len(equity) else initial
    out = {
        "total_return": final / initial - 1.0,
        "annual_return": annual_return(r, periods_per_year),
        "annual_volatility": annual_volatility(r, periods_per_year),
        "sharpe": sharpe(r, periods_per_year, risk_free),
        "sortino": sortino(r, periods_per_year, risk_free),
        "exposure": float(np.mean(gross > 0)) if len(gross) else 0.0,
        "periods_per_year": float(periods_per_year),
        "final_equity": final,
    }
    out["max_drawdown"] = max_drawdown(r, overwrite=True)  # last: it consumes r
    out.update(trade_stats(pnls))
    return out
