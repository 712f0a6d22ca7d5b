"""Indicators against backtrader's on the same closes; causality; registry and built-in strategy rules."""

from __future__ import annotations

from pathlib import Path

import backtrader as bt
import numpy as np
import pandas as pd
import pytest

from tradetrace import run_backtest, strategies
from tradetrace.engine import synthetic
from tradetrace.engine.data import load_series
from tradetrace.strategies import indicators as ind


def _bt_lines(close: np.ndarray, make) -> np.ndarray:
    """Run backtrader over `close` and return the indicator built by `make(data)` for every bar."""
    idx = pd.date_range("2000-01-03", periods=len(close), freq="D")
    df = pd.DataFrame({"open": close, "high": close, "low": close, "close": close, "volume": 1.0}, index=idx)
    out: list[float] = []

    class S(bt.Strategy):
        def __init__(self) -> None:
            self.x = make(self.data)

        def prenext(self) -> None:
            out.append(float("nan"))

        def nextstart(self) -> None:
            self.next()

        def next(self) -> None:
            out.append(self.x[0])

    c = bt.Cerebro(stdstats=False)
    c.adddata(bt.feeds.PandasData(dataname=df, openinterest=None))
    c.addstrategy(S)
    c.run()
    return np.array(out)


@pytest.fixture(scope="module")
def closes(shared_data: Path) -> np.ndarray:
    return load_series(shared_data / "daily/MSFT_1d_2012-2014_zipline.csv").close


def test_sma_ema_match_backtrader(closes: np.ndarray) -> None:
    np.testing.assert_allclose(ind.sma(closes, 15), _bt_lines(closes, lambda d: bt.ind.SMA(d.close, period=15)),
                               rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(ind.ema(closes, 12), _bt_lines(closes, lambda d: bt.ind.EMA(d.close, period=12)),
                               rtol=1e-10, equal_nan=True)


def test_rsi_matches_backtrader(closes: np.ndarray) -> None:
    ours = ind.rsi(closes, 14)
    theirs = _bt_lines(closes, lambda d: bt.ind.RSI(d.close, period=14, safediv=True))
    np.testing.assert_allclose(ours, theirs, rtol=1e-9, equal_nan=True)


def test_crossover_matches_backtrader(closes: np.ndarray) -> None:
    ours = ind.crossover(ind.sma(closes, 5), ind.sma(closes, 20)).astype(float)
    theirs = _bt_lines(closes, lambda d: bt.ind.CrossOver(bt.ind.SMA(d.close, period=5),
                                                          bt.ind.SMA(d.close, period=20)))
    theirs = np.nan_to_num(theirs, nan=0.0)
    assert np.array_equal(ours, theirs) and np.abs(ours).sum() > 10


def test_crossover_touch_is_not_a_cross_and_cross_through_equality_counts_once() -> None:
    a = np.array([1.0, 2.0, 2.0, 3.0, 2.0, 2.0, 1.0])
    b = np.full(7, 2.0)
    # d = -1, 0, 0, +1, 0, 0, -1: up at index 3 (last non-zero was -1), down at 6.
    assert ind.crossover(a, b).tolist() == [0, 0, 0, 1, 0, 0, -1]
    touch = np.array([3.0, 2.0, 3.0])  # touches from above and goes back: no cross
    assert ind.crossover(touch, np.full(3, 2.0)).tolist() == [0, 0, 0]


@pytest.mark.parametrize("fn,args", [(ind.sma, (10,)), (ind.ema, (10,)), (ind.rsi, (14,)), (ind.zscore, (20,)),
                                     (ind.highest, (20,)), (ind.lowest, (20,)), (ind.rolling_std, (10,))])
def test_indicators_are_causal(fn, args) -> None:
    x = np.random.default_rng(0).lognormal(0, 0.02, 400).cumprod() * 100
    full = fn(x, *args)
    for n in (50, 201, 399):
        np.testing.assert_array_equal(fn(x[:n], *args), full[:n])


def test_donchian_levels_exclude_current_bar() -> None:
    x = np.array([1.0, 5.0, 2.0, 3.0, 9.0])
    assert np.isnan(ind.highest(x, 3)[:3]).all()
    assert ind.highest(x, 3)[3:].tolist() == [5.0, 5.0]  # max(1,5,2), max(5,2,3)


def test_registry_unknown_strategy_and_builtins() -> None:
    assert {"sma_crossover", "ema_crossover", "zscore_reversion", "rsi_reversion", "donchian_breakout"} <= set(
        strategies.names())
    with pytest.raises(KeyError, match="unknown strategy 'nope'"):
        strategies.get("nope")


@pytest.mark.parametrize("stype,params", [
    ("zscore_reversion", {"window": 20, "entry": 1.5, "exit": 0.3}),
    ("rsi_reversion", {"period": 14}),
    ("donchian_breakout", {"entry": 20, "exit": 10}),
    ("ema_crossover", {"fast": 5, "slow": 20}),
])
def test_builtin_signals_only_on_target_changes(stype: str, params: dict) -> None:
    md, _ = synthetic.generate(5_000, seed=13, freq="5min", symbols=["A", "B"])
    res = run_backtest({"data": {"synthetic": {"bars": 2}}, "strategy": {"type": stype, "params": params},
                        "store": {"enabled": False}, "database": {"enabled": False}}, market=md)
    sig = res.events(["SIGNAL"]).to_pydict()
    assert len(sig["direction"]) > 4
    for sym in ("A", "B"):
        dirs = [d for s, d in zip(sig["symbol"], sig["direction"], strict=True) if s == sym]
        assert all(a != b for a, b in zip(dirs, dirs[1:], strict=False)), f"{stype}: repeated target for {sym}"


def test_rolling_std_equals_the_per_window_formula() -> None:
    """numpy's std of each window as the reference (pandas' online algorithm is within 1e-9 relative)."""
    from numpy.lib.stride_tricks import sliding_window_view

    x = np.cumsum(np.random.default_rng(5).normal(size=3_000)) + 100.0
    for n in (1, 2, 30, 2_999, 3_000):
        ref = np.full(len(x), np.nan)
        ref[n - 1:] = sliding_window_view(x, n).std(axis=1)
        np.testing.assert_allclose(ind.rolling_std(x, n), ref, rtol=1e-9, atol=1e-12, equal_nan=True)
    assert np.isnan(ind.rolling_std(x[:5], 30)).all()
    flat = ind.rolling_std(np.full(100, 7.25), 10)
    assert np.isnan(flat[:9]).all() and (flat[9:] == 0.0).all()  # constant windows: exactly 0, not noise
