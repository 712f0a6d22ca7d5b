"""Performance metrics from an equity curve and a trade list.

Definitions follow empyrical (tests check them against empyrical-reloaded on the same returns):
Sharpe = mean(r - rf) / std(r, ddof=1) * sqrt(periods per year); Sortino uses the downside deviation
sqrt(mean(min(r - rf, 0)^2)); max drawdown is the worst fall of cumulative returns from their peak.
Periods per year come from the bar frequency (`MarketData.periods_per_year`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np

#: Returns are reduced in blocks of this many bars: a 10M-bar run's metrics never hold a second
#: full-length array (the equity curve is already two), which set the run's peak memory.
_BLOCK = 1 << 20


def returns_from_equity(equity: np.ndarray, initial: float) -> np.ndarray:
    """Simple returns per bar; the first is measured from the initial cash."""
    blocks = list(return_blocks(equity, initial))
    return np.concatenate(blocks) if len(blocks) != 1 else blocks[0]


def return_blocks(equity: np.ndarray, initial: float) -> Iterator[np.ndarray]:
    """`returns_from_equity` one block at a time (the first return of a block uses the previous block's
    last equity, so the values are the same)."""
    prev = initial
    for s in range(0, len(equity), _BLOCK):
        e = equity[s:s + _BLOCK]
        r = np.empty(len(e))
        with np.errstate(invalid="ignore", divide="ignore"):
            r[0] = e[0] / prev
            np.divide(e[1:], e[:-1], out=r[1:])
            r -= 1.0
        r[~np.isfinite(r)] = 0.0
        prev = e[-1]
        yield r


class ReturnStats:
    """The return-based metrics from blocks of returns, in two passes (moments need the mean first).

    Definitions as empyrical's (see the module docstring); `sharpe` and friends below feed a whole array as
    one block, `compute_metrics` feeds an equity curve's returns block by block.
    """

    def __init__(self, blocks: Callable[[], Iterable[np.ndarray]], risk_free: float = 0.0) -> None:
        n = 0
        total = 0.0
        lo, hi = math.inf, -math.inf
        down_sq = 0.0
        growth = 1.0
        peak = 1.0  # the starting wealth is the first peak
        worst = 1.0  # min(wealth / peak)
        for r in blocks():
            if not len(r):
                continue
            n += len(r)
            ex = r - risk_free if risk_free else r
            total += float(ex.sum())
            lo, hi = min(lo, float(ex.min())), max(hi, float(ex.max()))
            d = np.minimum(ex, 0.0)
            down_sq += float(np.square(d, out=d).sum())  # not np.dot: BLAS threads spin in parallel sweeps
            wealth = 1.0 + r
            np.cumprod(wealth, out=wealth)
            if growth != 1.0:
                wealth *= growth  # the wealth carried from earlier blocks
            growth = float(wealth[-1])
            p = np.maximum.accumulate(wealth)
            np.maximum(p, peak, out=p)
            peak = float(p[-1])
            np.divide(wealth, p, out=p)
            worst = min(worst, float(p.min()))
        self.n = n
        self.mean = total / n if n else math.nan
        self.constant = lo == hi
        self.down_sq = down_sq
        self.growth = growth
        self.worst = worst
        dev = 0.0
        if n >= 2 and not self.constant:
            mean_r = self.mean + risk_free
            for r in blocks():
                d = r - mean_r
                dev += float(np.square(d, out=d).sum())
        self.sd = math.sqrt(dev / (n - 1)) if n >= 2 else math.nan

    def sharpe(self, periods_per_year: float) -> float:
        if self.n < 2:
            return float("nan")
        sd = 0.0 if self.constant else self.sd  # identical returns: exactly 0, not a ~1e-18 residue
        if sd == 0:
            return float("nan") if self.mean == 0 else math.copysign(math.inf, self.mean)
        if not math.isfinite(sd):
            return float("nan")
        return float(self.mean / sd * math.sqrt(periods_per_year))

    def sortino(self, periods_per_year: float) -> float:
        if self.n < 2:
            return float("nan")
        downside = math.sqrt(self.down_sq / self.n)
        if downside == 0:
            return float("nan") if self.mean == 0 else math.copysign(math.inf, self.mean)
        return float(self.mean * periods_per_year / (downside * math.sqrt(periods_per_year)))

    def max_drawdown(self) -> float:
        """Worst peak-to-trough fall of cumulative returns (negative number, 0 when none)."""
        return min(0.0, self.worst - 1.0) if self.n else 0.0

    def annual_return(self, periods_per_year: float) -> float:
        if self.n == 0:
            return float("nan")
        years = self.n / periods_per_year
        if self.growth <= 0:
            return -1.0
        with np.errstate(over="ignore"):  # a short, strongly compounding run overflows to inf (not an error)
            return float(np.power(self.growth, 1.0 / years)) - 1.0

    def annual_volatility(self, periods_per_year: float) -> float:
        if self.n < 2:
            return float("nan")
        return float((0.0 if self.constant else self.sd) * math.sqrt(periods_per_year))


def _stats(r: np.ndarray, risk_free: float = 0.0) -> ReturnStats:
    return ReturnStats(lambda: [r[s:s + _BLOCK] for s in range(0, len(r), _BLOCK)], risk_free)


def sharpe(r: np.ndarray, periods_per_year: float, risk_free: float = 0.0) -> float:
    return _stats(r, risk_free).sharpe(periods_per_year)


def sortino(r: np.ndarray, periods_per_year: float, risk_free: float = 0.0) -> float:
    return _stats(r, risk_free).sortino(periods_per_year)


def max_drawdown(r: np.ndarray) -> float:
    return _stats(r).max_drawdown()


def annual_return(r: np.ndarray, periods_per_year: float) -> float:
    return _stats(r).annual_return(periods_per_year)


def annual_volatility(r: np.ndarray, periods_per_year: float) -> float:
    return _stats(r).annual_volatility(periods_per_year)


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
    st = ReturnStats(lambda: return_blocks(equity, initial), risk_free)
    final = float(equity[-1]) if len(equity) else initial
    out = {
        "total_return": final / initial - 1.0,
        "annual_return": st.annual_return(periods_per_year),
        "annual_volatility": st.annual_volatility(periods_per_year),
        "sharpe": st.sharpe(periods_per_year),
        "sortino": st.sortino(periods_per_year),
        "max_drawdown": st.max_drawdown(),
        "exposure": float(np.count_nonzero(gross > 0) / len(gross)) if len(gross) else 0.0,
        "periods_per_year": float(periods_per_year),
        "final_equity": final,
    }
    out.update(trade_stats(pnls))
    return out
