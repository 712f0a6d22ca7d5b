"""Seeded synthetic market: volatility and trend regimes, OHLCV bars and a VIX-like index.

Why: the demo and most tests need data that ships with the package (vendors' terms on real data are
unclear) and that has known regimes, so classifiers and pattern mining have something true to find.
Regimes follow Markov chains (calm/volatile x up/flat/down) whose switching probabilities are set
per day, so the same seed gives the same market whatever the bar frequency.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tradetrace.engine.data import NS_PER_DAY, MarketData, Series, align

_FREQ_MINUTES = {"1min": 1, "5min": 5, "15min": 15, "30min": 30, "1h": 60, "1d": 390}
SESSION_MINUTES = 390  # 09:30-16:00 New York, expressed as 14:30-21:00 UTC
SESSION_OPEN_NS = (14 * 60 + 30) * 60 * 1_000_000_000

VOL_LEVELS = (0.12, 0.35)  # annualized: calm, volatile
TREND_LEVELS = (0.25, 0.0, -0.25)  # annualized drift: up, flat, down


def frequencies() -> tuple[str, ...]:
    return tuple(_FREQ_MINUTES)


def _timestamps(bars: int, freq: str, start: str) -> np.ndarray:
    minutes = _FREQ_MINUTES[freq]
    per_day = max(1, SESSION_MINUTES // minutes)
    days_needed = bars // per_day + 2
    try:
        first = np.datetime64(start, "D")
    except ValueError:  # numpy's own message does not say which argument
        raise ValueError(f"synthetic start {start!r} is not a day (YYYY-MM-DD)") from None
    # Business days: generous calendar span, then keep weekdays.
    cal = first + np.arange(int(days_needed * 7 / 5) + 7)
    weekday = (cal.astype("datetime64[D]").astype(np.int64) + 3) % 7 < 5
    days = cal[weekday][:days_needed].astype("datetime64[ns]").astype(np.int64)
    if freq == "1d":
        return days[:bars]
    offsets = SESSION_OPEN_NS + np.arange(per_day, dtype=np.int64) * minutes * 60_000_000_000
    return (days[:, None] + offsets[None, :]).ravel()[:bars]


def _markov(rng: np.random.Generator, n: int, states: int, p_switch: float) -> np.ndarray:
    """Regime path: at each step switch with probability p_switch to a uniformly chosen other state."""
    switches = rng.random(n) < p_switch
    jumps = np.where(switches, rng.integers(1, states, n), 0)
    return np.cumsum(jumps) % states


def generate(bars: int, seed: int = 7, freq: str = "1min", symbols: list[str] | None = None,
             start: str = "2020-01-02", start_price: float = 100.0) -> tuple[MarketData, dict[str, np.ndarray]]:
    """Bars for each symbol plus a VIX-like index; returns (market data, true regime labels).

    The true labels (`vol_regime`, `trend_regime` per row of the first symbol) let tests check that
    classifiers and the pattern miner recover what was planted.
    """
    if freq not in _FREQ_MINUTES:
        raise ValueError(f"synthetic freq {freq!r} not one of {', '.join(_FREQ_MINUTES)}")
    if bars < 2:
        raise ValueError(f"synthetic bars must be >= 2, got {bars}")
    symbols = symbols or ["SYN"]
    rng = np.random.default_rng(seed)
    minutes = _FREQ_MINUTES[freq]
    bars_per_day = max(1, SESSION_MINUTES // minutes)
    ts = _timestamps(bars, freq, start)
    dt = 1.0 / (252 * bars_per_day)  # years per bar
    # Regimes change on average every ~20 trading days (vol) and ~30 days (trend).
    vol_state = _markov(rng, bars, 2, 1.0 / (20 * bars_per_day)).astype(np.int8)
    trend_state = _markov(rng, bars, 3, 1.0 / (30 * bars_per_day)).astype(np.int8)
    sigma = np.asarray(VOL_LEVELS)[vol_state]
    mu = np.asarray(TREND_LEVELS)[trend_state]
    # Memory: long runs (8M+ bars) are generated in place, so the peak stays a few arrays above the
    # result; the operations keep the order of the original formulas (same seed, same numbers).
    drift = mu - 0.5 * sigma**2
    drift *= dt
    del mu
    sig_sqdt = sigma * np.sqrt(dt)
    series: dict[str, Series] = {}
    common = rng.standard_normal(bars)
    for k, name in enumerate(symbols):
        # Symbols share the regimes; other symbols share half of the first one's shocks.
        z = common if k == 0 else 0.5 * common + np.sqrt(0.75) * rng.standard_normal(bars)
        r = sig_sqdt * z
        r += drift  # (mu - sigma^2/2) dt + sigma sqrt(dt) z
        del z
        if k == len(symbols) - 1:  # the last user of the shared shocks and drift
            del common, drift
        close = np.cumsum(r)
        np.exp(close, out=close)
        close *= start_price * (1 + 0.2 * k)
        open_ = np.empty_like(close)  # previous close, then gapped
        open_[0] = close[0] / np.exp(r[0])
        open_[1:] = close[:-1]
        del r
        gap = sig_sqdt * 0.1
        gap *= rng.standard_normal(bars)
        np.exp(gap, out=gap)
        open_ *= gap
        del gap
        # Upper then lower wicks, drawn one after the other into one buffer (the same draws as one
        # (2, bars) array, one array less at the peak).
        wick = rng.standard_normal(bars)
        np.abs(wick, out=wick)
        wick *= sig_sqdt
        wick *= 0.6
        np.exp(wick, out=wick)
        high = np.maximum(open_, close)
        high *= wick
        rng.standard_normal(out=wick)
        np.abs(wick, out=wick)
        wick *= sig_sqdt
        wick *= 0.6
        np.negative(wick, out=wick)
        np.exp(wick, out=wick)
        low = np.minimum(open_, close)
        low *= wick
        del wick
        volume = rng.lognormal(8.0, 0.5, bars)
        volume *= sigma / VOL_LEVELS[0]
        np.round(volume, out=volume)
        for arr in (open_, high, low, close):
            np.round(arr, 4, out=arr)
        # Rounding can push open/close a hair outside high/low: widen the range to contain them.
        np.maximum(high, open_, out=high)
        np.maximum(high, close, out=high)
        np.minimum(low, open_, out=low)
        np.minimum(low, close, out=low)
        series[name] = Series(ts, open_, high, low, close, volume, freq == "1d",
                              f"synthetic(seed={seed}, freq={freq})")
    md = align(series)
    # VIX-like: implied vol tracks the regime's vol with a premium and slow noise, in vol points.
    noise = np.cumsum(rng.standard_normal(bars)) * 0.02
    w = min(50, bars)  # "same" mode returns max(len) values: the window must not exceed the series
    noise -= np.convolve(noise, np.ones(w) / w, mode="same")
    vix_first = 100 * sigma * 1.15 + 2.0 + noise
    vix_first = np.maximum(vix_first, 5.0)
    md.aux["VIX"] = np.repeat(vix_first, len(symbols)) if len(symbols) > 1 else vix_first
    md.sources["VIX"] = f"synthetic(seed={seed})"
    # Categoricals: one byte per bar (string arrays would take 16), compare with == "high" as usual.
    truth = {"vol_regime": pd.Categorical.from_codes(vol_state, ["low", "high"]),
             "trend_regime": pd.Categorical.from_codes(trend_state, ["up", "flat", "down"])}
    return md, truth


def days_spanned(md: MarketData) -> float:
    return float((md.ts[-1] - md.ts[0]) / NS_PER_DAY)
