"""analytics/metrics.py against empyrical-reloaded on the same returns, and trade stats by hand."""

from __future__ import annotations

import math

import empyrical as ep
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tradetrace.analytics import metrics as m
from tradetrace.engine.backtest import run_backtest


def _same(a: float, b: float, rel: float = 1e-10) -> None:
    if math.isnan(b):
        assert math.isnan(a), (a, b)
    elif math.isinf(b):
        assert a == b
    else:
        assert a == pytest.approx(b, rel=rel, abs=1e-12)


def _check_all(r: np.ndarray, ppy: float, rf: float = 0.0) -> None:
    _same(m.sharpe(r, ppy, rf), ep.sharpe_ratio(r, risk_free=rf, annualization=ppy))
    _same(m.sortino(r, ppy, rf), ep.sortino_ratio(r, required_return=rf, annualization=ppy))
    _same(m.max_drawdown(r), ep.max_drawdown(r))
    _same(m.annual_volatility(r, ppy), ep.annual_volatility(r, annualization=ppy))
    if np.prod(1 + r) > 0:
        _same(m.annual_return(r, ppy), ep.annual_return(r, annualization=ppy))


@pytest.mark.parametrize("ppy", [252.0, 252.0 * 390, 365.0 * 1440, 12.0])
@pytest.mark.parametrize("seed", range(4))
def test_random_returns_match_empyrical(seed: int, ppy: float) -> None:
    rng = np.random.default_rng(seed)
    r = rng.normal(0.0003, 0.01, 1000)
    _check_all(r, ppy)
    _check_all(r, ppy, rf=0.0001)


returns = arrays(np.float64, st.integers(2, 60), elements=st.floats(-0.5, 0.5, allow_nan=False))


@settings(max_examples=200, deadline=None)
@given(returns, st.sampled_from([12.0, 52.0, 252.0, 98280.0]))
def test_property_matches_empyrical(r: np.ndarray, ppy: float) -> None:
    _check_all(r, ppy)


def test_max_drawdown_counts_the_starting_point() -> None:
    """A first-bar loss is a drawdown from the initial capital: 1.0 -> 0.9 -> 0.99 is -10%."""
    r = np.array([-0.1, 0.1])
    assert m.max_drawdown(r) == pytest.approx(-0.1)
    assert ep.max_drawdown(r) == pytest.approx(-0.1)


def test_metrics_of_a_real_run_match_empyrical() -> None:
    """The run's own metrics equal empyrical's on the run's equity-curve returns and annualization."""
    res = run_backtest({
        "data": {"synthetic": {"bars": 6_006, "seed": 5, "freq": "5min"}},
        "strategy": {"type": "sma_crossover", "params": {"fast": 5, "slow": 20}},
        "sizing": {"type": "percent_equity", "percent": 80},
        "execution": {"commission": {"per_share": 0.01}},
        "store": {"enabled": False}, "database": {"enabled": False},
    })
    ppy = res.metrics["periods_per_year"]
    assert ppy == pytest.approx(252 * 78)  # 6006 = 77 full sessions of 78 5-min bars, weekdays
    r = m.returns_from_equity(res.equity.to_numpy(), res.initial_cash)
    assert len(r) == 6_006
    _same(res.metrics["sharpe"], ep.sharpe_ratio(r, annualization=ppy))
    _same(res.metrics["sortino"], ep.sortino_ratio(r, annualization=ppy))
    _same(res.metrics["max_drawdown"], ep.max_drawdown(r))
    _same(res.metrics["annual_return"], ep.annual_return(r, annualization=ppy))
    _same(res.metrics["annual_volatility"], ep.annual_volatility(r, annualization=ppy))
    assert res.metrics["total_return"] == pytest.approx(res.final_equity / res.initial_cash - 1, rel=1e-12)
    # Realized P&L of closed trades + open position mark = equity change.
    pnls = [t["pnl"] for t in res.closed_trades]
    assert res.metrics["trade_count"] == len(pnls) > 0
    assert res.metrics["win_rate"] == pytest.approx(sum(p > 0 for p in pnls) / len(pnls))


def test_returns_from_equity_first_return_is_from_initial_cash() -> None:
    eq = np.array([110.0, 99.0, 99.0])
    # 110/100-1 = 0.1, 99/110-1 = -0.1, 99/99-1 = 0
    assert m.returns_from_equity(eq, 100.0) == pytest.approx([0.1, -0.1, 0.0])


def test_trade_stats_by_hand() -> None:
    s = m.trade_stats([100.0, -50.0, 25.0, -25.0, 0.0])
    assert s["trade_count"] == 5
    assert s["win_rate"] == pytest.approx(2 / 5)  # 100 and 25 win; 0 is not a win
    assert s["profit_factor"] == pytest.approx(125 / 75)  # gross profit 125 / gross loss 75
    assert s["avg_trade_pnl"] == pytest.approx(50 / 5)
    assert math.isnan(m.trade_stats([])["win_rate"])
    assert m.trade_stats([10.0])["profit_factor"] == math.inf


def test_compute_metrics_exposure_and_total_return_by_hand() -> None:
    equity = np.array([100.0, 102.0, 101.0, 103.0])
    gross = np.array([0.0, 50.0, 50.0, 0.0])
    out = m.compute_metrics(equity, gross, 100.0, [3.0], 252.0)
    assert out["exposure"] == pytest.approx(0.5)  # in the market on 2 of 4 bars
    assert out["total_return"] == pytest.approx(0.03)
    assert out["trade_count"] == 1
    # Max drawdown: peak 102 -> 101 = -0.98039...%
    assert out["max_drawdown"] == pytest.approx(101 / 102 - 1)


def test_flat_equity_gives_nan_ratios_not_errors() -> None:
    out = m.compute_metrics(np.full(10, 100.0), np.zeros(10), 100.0, [], 252.0)
    assert math.isnan(out["sharpe"]) and math.isnan(out["sortino"])
    assert out["max_drawdown"] == 0.0 and out["total_return"] == 0.0
    assert math.isnan(ep.sharpe_ratio(np.zeros(10)))


def test_blockwise_metrics_equal_whole_array_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    """Long runs are reduced block by block (bounded memory); the result must not depend on the blocks."""
    rng = np.random.default_rng(3)
    equity = 100_000.0 * np.cumprod(1 + rng.normal(0.0002, 0.01, 10_007))
    gross = np.abs(rng.normal(0, 1, len(equity)))
    whole = m.compute_metrics(equity, gross, 100_000.0, [1.0, -2.0], 252.0 * 390, 0.00001)
    monkeypatch.setattr(m, "_BLOCK", 1000)
    blocks = m.compute_metrics(equity, gross, 100_000.0, [1.0, -2.0], 252.0 * 390, 0.00001)
    assert whole.keys() == blocks.keys()
    for k in whole:
        _same(blocks[k], whole[k], rel=1e-12)
    r = m.returns_from_equity(equity, 100_000.0)  # blocks concatenated: the same returns
    assert r[0] == equity[0] / 100_000.0 - 1 and np.array_equal(r[1:], equity[1:] / equity[:-1] - 1)
    _same(blocks["sharpe"], ep.sharpe_ratio(r, risk_free=0.00001, annualization=252.0 * 390))
    _same(blocks["max_drawdown"], ep.max_drawdown(r))
