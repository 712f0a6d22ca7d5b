"""Classifiers: label market state causally and announce changes.

Each classifier turns a causal reading (realized-volatility percentile, normalized trend distance,
VIX level) into one of three labels with hysteresis (a reading enters a band only once it is past the
band's edge by `hysteresis` times the edge's magnitude, and leaves it only once it is back past the
edge by as much: symmetric around every edge, the trend's negative one included) and a minimum dwell
(a new label must hold for `min_dwell` bars before it becomes the regime). A CLASSIFICATION event
says the reading changed band; a REGIME_CHANGE event says the regime changed. Both are published at
the bar where they become known: nothing is dated back, so there is no look-ahead.

Readings and labels are computed once over the series (vectorized readings, one sequential pass for
hysteresis and dwell, which is inherently path-dependent); during the run the classifier container
only publishes at the rows where something changed.
"""

from __future__ import annotations

import numpy as np

from tradetrace.config import ClassifierConfig
from tradetrace.engine import _regimes
from tradetrace.engine.data import MarketData
from tradetrace.events.bus import TracedEventBus
from tradetrace.events.types import EventType
from tradetrace.strategies import indicators as ind

LABELS = {
    "volatility": ("low", "normal", "high"),
    "trend": ("down", "flat", "up"),
    "vix": ("low", "normal", "high"),
}


def hysteresis_labels(value: np.ndarray, lower: np.ndarray, upper: np.ndarray, margin: float,
                      min_dwell: int) -> tuple[np.ndarray, np.ndarray]:
    """Band readings (0/1/2 or -1 unknown) and confirmed regimes, both causal.

    The reading enters or leaves a band only when the value clears the band edge by `margin` times
    the edge's magnitude (so -1 and +1 get the same margin, 0 none); the regime takes a new reading
    only after it has held for `min_dwell` bars. One sequential pass in C (`_regimes.c`, rules
    there); tests check it against a Python loop.
    """
    arrays = [np.ascontiguousarray(a, dtype=np.float64) for a in (value, lower, upper)]
    reading, regime = _regimes.hysteresis(*arrays, float(margin), int(min_dwell))
    return np.frombuffer(reading, dtype=np.int8), np.frombuffer(regime, dtype=np.int8)


def rolling_quantiles(x: np.ndarray, window: int, qs: tuple[float, ...]) -> list[np.ndarray]:
    """The `qs` quantiles of each trailing `window` values of `x`, all in one pass (`_regimes.c`).

    Equal to pandas' `Series(x).rolling(window, min_periods=window).quantile(q)` for each q (linear
    interpolation; NaN unless the window holds `window` non-NaN values), bit for bit, which a test checks.
    Why not pandas: it makes one pass per quantile, 0.3 s each for 1M rows and the volatility classifier's
    3900-row lookback; here both bands take ~0.15 s (most of it the argsort that ranks the values).
    """
    x = np.ascontiguousarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")  # NaNs last
    out = _regimes.rolling_quantiles(x, order.astype(np.int64, copy=False), int(window), tuple(map(float, qs)))
    return [np.frombuffer(b, dtype=np.float64) for b in out]


def _reading(cfg: ClassifierConfig, md: MarketData, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(value, lower band, upper band) for one symbol's rows."""
    close = md.close[rows]
    if cfg.type == "volatility":
        vol = ind.rolling_std(ind.log_returns(close), cfg.window)
        lower, upper = rolling_quantiles(vol, cfg.lookback, (1 / 3, 2 / 3))
        return vol, lower, upper
    if cfg.type == "trend":
        m = ind.sma(close, cfg.window)
        vol = ind.rolling_std(ind.log_returns(close), cfg.window) * np.sqrt(cfg.window)
        with np.errstate(invalid="ignore", divide="ignore"):
            value = (close / m - 1.0) / vol
        value[~np.isfinite(value)] = np.nan
        # Edges -T and +T: margins are relative to |edge|, so T(1 +- h) and -T(1 +- h), symmetric.
        return value, np.full(len(rows), -cfg.threshold), np.full(len(rows), cfg.threshold)
    if cfg.series not in md.aux:
        raise ValueError(f"classifier vix: auxiliary series {cfg.series!r} not loaded "
                         f"(data.aux has: {', '.join(md.aux) or 'nothing'})")
    v = md.aux[cfg.series][rows]
    lo, up = cfg.bands
    return v, np.full(len(rows), lo), np.full(len(rows), up)


def _labels(cfg: ClassifierConfig, md: MarketData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(reading, regime, value) per row, read-only, computed once per market data and settings.

    Why cache: labels depend on the data and the classifier's settings only, not on the strategy, so
    every run of a sweep over one data set would recompute them (in a 40k-bar sweep run, ~30% of the
    run). They are kept in `md.derived` (see MarketData); a sweep computes them before its workers
    start (`prepare`), so each worker does not compute them again.
    """
    key = "labels:" + cfg.model_dump_json(exclude={"name"})
    hit = md.derived.get(key)
    if hit is not None:
        return hit
    n = len(md)
    reading = np.full(n, -1, dtype=np.int8)
    regime = np.full(n, -1, dtype=np.int8)
    values = np.full(n, np.nan)
    for s in range(len(md.symbols)):
        rows = md.rows_of(s)
        value, lo, up = _reading(cfg, md, rows)
        rd, rg = hysteresis_labels(value, lo, up, cfg.hysteresis, cfg.min_dwell)
        reading[rows] = rd
        regime[rows] = rg
        values[rows] = value
    for a in (reading, regime, values):
        a.flags.writeable = False
    md.derived[key] = (reading, regime, values)
    return md.derived[key]


def prepare(cfgs: list[ClassifierConfig], md: MarketData) -> None:
    """Compute the labels of `cfgs` over `md` now (a sweep, before it starts its workers).

    Settings that cannot be computed over this data (a VIX classifier without its series) are left to
    the runs: each fails with that error and is recorded as failed, as a sweep's failing runs are.
    """
    for cfg in cfgs:
        try:
            _labels(cfg, md)
        except ValueError:
            continue


class Classifier:
    """One configured classifier over every symbol."""

    def __init__(self, cfg: ClassifierConfig, md: MarketData) -> None:
        self.cfg = cfg
        self.name = cfg.name or cfg.type
        self.labels = LABELS[cfg.type]
        self.reading, self.regime, self.value = _labels(cfg, md)


class ClassifierSet:
    """The classifier container: publishes CLASSIFICATION / REGIME_CHANGE where labels change."""

    container = "classifier"

    def __init__(self, bus: TracedEventBus, md: MarketData, cfgs: list[ClassifierConfig]) -> None:
        self.bus = bus
        self.md = md
        self.items = [Classifier(c, md) for c in cfgs]
        names = [c.name for c in self.items]
        if len(set(names)) != len(names):
            raise ValueError(f"classifier names must be unique, got {names}; set `name:` on each")
        self.current: list[dict[str, str]] = [{} for _ in md.symbols]
        sym = md.symbol_idx
        events: list[tuple[int, int, int]] = []  # row, classifier index, kind (0 reading, 1 regime)
        for k, c in enumerate(self.items):
            for kind, arr in ((0, c.reading), (1, c.regime)):
                for s in range(len(md.symbols)):
                    rows = np.flatnonzero(sym == s)
                    a = arr[rows]
                    changed = np.flatnonzero((a[1:] != a[:-1]) & (a[1:] >= 0)) + 1
                    if len(a) and a[0] >= 0:
                        changed = np.concatenate([[0], changed])
                    events.extend((int(rows[j]), k, kind) for j in changed)
        events.sort()
        self._events = events
        self._pos = 0
        self._next = events[0][0] if events else -1

    def on_bar(self, i: int) -> None:
        if i != self._next:
            return
        ev = self._events
        md = self.md
        while self._pos < len(ev) and ev[self._pos][0] == i:
            _, k, kind = ev[self._pos]
            self._pos += 1
            c = self.items[k]
            s = int(md.symbol_idx[i])
            sym = md.symbols[s]
            if kind == 0:
                self.bus.publish(EventType.CLASSIFICATION, self.container,
                                 (c.name, sym, c.labels[c.reading[i]], float(c.value[i])))
            else:
                old = self.current[s].get(c.name, "")
                new = c.labels[c.regime[i]]
                self.current[s][c.name] = new
                self.bus.publish(EventType.REGIME_CHANGE, self.container,
                                 (c.name, sym, old, new, float(c.value[i])))
        self._next = ev[self._pos][0] if self._pos < len(ev) else -1

    def labels_for(self, s: int) -> dict[str, str]:
        """Current confirmed regimes of symbol s (as announced so far)."""
        return dict(self.current[s])
