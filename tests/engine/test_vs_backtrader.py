"""Differential tests: tradetrace against backtrader on the same bars and the same rules.

Rules on both sides: SMA fast/slow crossover (backtrader's CrossOver), market orders decided on a
bar fill at the next bar's open, fixed size, long/short (target +size on a cross up, -size on a
cross down), commission per share or in basis points. Compared: every fill (time, price, signed
size) and the final equity (backtrader's broker value) to 1e-9 relative.
"""

from __future__ import annotations

import math
from pathlib import Path

import backtrader as bt
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tradetrace import Strategy
from tradetrace.engine import synthetic
from tradetrace.engine.backtest import run_backtest
from tradetrace.engine.data import MarketData, load_market

CASH = 100_000.0


def _frame(md: MarketData) -> pd.DataFrame:
    """One symbol's bars as the DataFrame backtrader's PandasData reads (naive UTC index)."""
    assert len(md.symbols) == 1
    idx = pd.to_datetime(md.ts, utc=True).tz_localize(None)
    return pd.DataFrame({"open": md.open, "high": md.high, "low": md.low, "close": md.close,
                         "volume": md.volume}, index=idx)


class _BtCross(bt.Strategy):
    params = (("fast", 10), ("slow", 30), ("size", 100), ("allow_short", True))

    def __init__(self) -> None:
        self.cross = bt.ind.CrossOver(bt.ind.SMA(self.data.close, period=self.p.fast),
                                      bt.ind.SMA(self.data.close, period=self.p.slow))
        self.fills: list[tuple[pd.Timestamp, float, float]] = []
        self.rejected = 0

    def notify_order(self, order: bt.Order) -> None:
        if order.status == order.Completed:
            self.fills.append((pd.Timestamp(bt.num2date(order.executed.dt)), order.executed.price,
                               order.executed.size))
        elif order.status in (order.Margin, order.Rejected):
            self.rejected += 1

    def next(self) -> None:
        if self.cross[0] > 0:
            self.order_target_size(target=self.p.size)
        elif self.cross[0] < 0:
            self.order_target_size(target=-self.p.size if self.p.allow_short else 0)


def _run_bt(md: MarketData, fast: int, slow: int, size: float, commission: dict[str, float],
            allow_short: bool = True) -> tuple[list, float]:
    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(bt.feeds.PandasData(dataname=_frame(md), openinterest=None))
    cerebro.addstrategy(_BtCross, fast=fast, slow=slow, size=size, allow_short=allow_short)
    cerebro.broker.setcash(CASH)
    if commission.get("per_share"):
        cerebro.broker.setcommission(commission=commission["per_share"], commtype=bt.CommInfoBase.COMM_FIXED,
                                     stocklike=True)
    elif commission.get("bps"):
        cerebro.broker.setcommission(commission=commission["bps"] * 1e-4, commtype=bt.CommInfoBase.COMM_PERC,
                                     percabs=True, stocklike=True)
    strat = cerebro.run()[0]
    assert strat.rejected == 0, "backtrader rejected orders: the comparison would be meaningless"
    return strat.fills, cerebro.broker.getvalue()


def _run_tt(md: MarketData, fast: int, slow: int, size: float, commission: dict[str, float],
            allow_short: bool = True):
    cfg = {
        "data": {"synthetic": {"bars": 2}},  # replaced by `market`
        "strategy": {"type": "sma_crossover", "params": {"fast": fast, "slow": slow, "allow_short": allow_short}},
        "portfolio": {"initial_cash": CASH},
        "sizing": {"type": "fixed", "quantity": size},
        "execution": {"fill": "next_open", "commission": commission},
        "store": {"enabled": False},
        "database": {"enabled": False},
    }
    return run_backtest(cfg, market=md)


def _assert_same(md: MarketData, fast: int = 10, slow: int = 30, size: float = 100.0,
                 commission: dict[str, float] | None = None, allow_short: bool = True) -> int:
    commission = commission or {}
    bt_fills, bt_value = _run_bt(md, fast, slow, size, commission, allow_short)
    res = _run_tt(md, fast, slow, size, commission, allow_short)
    assert res.status == "completed"
    fills = res.events(["FILL"]).to_pydict()
    ours = [(pd.Timestamp(t).tz_convert(None), p, s * q)
            for t, p, s, q in zip(fills["timestamp"], fills["price"], fills["side"], fills["quantity"], strict=True)]
    assert len(ours) == len(bt_fills) > 0
    for k, (a, b) in enumerate(zip(ours, bt_fills, strict=True)):
        assert a[0] == b[0], f"fill {k}: time {a[0]} vs backtrader {b[0]}"
        assert a[1] == pytest.approx(b[1], rel=1e-12, abs=0), f"fill {k}: price {a[1]} vs backtrader {b[1]}"
        assert a[2] == b[2], f"fill {k}: size {a[2]} vs backtrader {b[2]}"
    assert math.isclose(res.final_equity, bt_value, rel_tol=1e-9), (res.final_equity, bt_value)
    # The trade list agrees with the fills it was built from: every closing fill is a trade exit.
    exits = {(t["exit_time"], t["exit_price"]) for t in res.closed_trades}
    fill_keys = {(int(pd.Timestamp(t).value), p) for t, p in zip(fills["timestamp"], fills["price"], strict=True)}
    assert exits <= fill_keys
    # Commission total equals the sum over fills, with backtrader's formula.
    if commission.get("per_share"):
        expected = sum(abs(f[2]) * commission["per_share"] for f in bt_fills)
    elif commission.get("bps"):
        expected = sum(abs(f[2]) * f[1] * commission["bps"] * 1e-4 for f in bt_fills)
    else:
        expected = 0.0
    assert res.metrics["total_commission"] == pytest.approx(expected, rel=1e-9, abs=1e-9)
    return len(ours)


DAILY = [
    "daily/SPY_1d_1998-2021_lean.csv",
    "daily/AAPL_1d_1998-2021_lean.csv",  # raw prices with split jumps
    "daily/ORCL_1d_1995-2014_yahoo.csv",
    "daily/MSFT_1d_2012-2014_zipline.csv",
]
COMMISSIONS = [{}, {"per_share": 0.01}, {"bps": 5.0}]


@pytest.mark.slow
@pytest.mark.parametrize("rel", DAILY)
@pytest.mark.parametrize("commission", COMMISSIONS, ids=["nocomm", "per_share", "bps"])
def test_daily_real_data_matches_backtrader(shared_data: Path, rel: str, commission: dict) -> None:
    md = load_market({"X": shared_data / rel})
    _assert_same(md, commission=commission)


@pytest.mark.slow
def test_spy_momentum_example_matches_backtrader(shared_data: Path) -> None:
    """The lead's check: examples/spy_momentum.yaml itself (classifiers on) against backtrader."""
    root = Path(__file__).resolve().parents[2]
    res = run_backtest(_example(root))
    md = load_market({"SPY": shared_data / "daily/SPY_1d_1998-2021_lean.csv"})
    _, bt_value = _run_bt(md, 10, 30, 100.0, {})
    assert math.isclose(res.final_equity, bt_value, rel_tol=1e-9)


def _example(root: Path) -> dict:
    import yaml

    cfg = yaml.safe_load((root / "examples" / "spy_momentum.yaml").read_text())
    cfg["base_dir"] = str(root / "examples")
    cfg["data"]["symbols"] = {k: str((root / v).resolve()) for k, v in cfg["data"]["symbols"].items()}
    cfg["data"]["aux"] = {k: str((root / v).resolve()) for k, v in cfg["data"]["aux"].items()}
    cfg["store"] = {"enabled": False}
    cfg["database"] = {"enabled": False}
    return cfg


@pytest.mark.slow
@pytest.mark.parametrize("commission", [{}, {"per_share": 0.005}], ids=["nocomm", "per_share"])
def test_intraday_spy_hourly_matches_backtrader(shared_data: Path, commission: dict) -> None:
    md = load_market({"SPY": shared_data / "intraday/SPY_1h_1998-2021_lean.csv"})
    _assert_same(md, fast=20, slow=60, commission=commission)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("commission", COMMISSIONS, ids=["nocomm", "per_share", "bps"])
def test_synthetic_minute_bars_match_backtrader(seed: int, commission: dict) -> None:
    md, _ = synthetic.generate(20_000, seed=seed, freq="1min")
    _assert_same(md, fast=5, slow=20, size=50.0, commission=commission)


def test_long_only_matches_backtrader() -> None:
    md, _ = synthetic.generate(5_000, seed=9, freq="1min")
    n = _assert_same(md, fast=8, slow=21, allow_short=False, commission={"per_share": 0.01})
    assert n >= 4


def test_minute_timestamps_are_what_backtrader_sees() -> None:
    """Guard for the comparison itself: the frame handed to backtrader is the engine's bars."""
    md, _ = synthetic.generate(500, seed=3, freq="1min")
    df = _frame(md)
    assert np.array_equal(df.index.asi8, md.ts)
    assert np.array_equal(df["open"].to_numpy(), md.open)


class _BtScript(bt.Strategy):
    params = (("plan", None), ("size", 100))

    def __init__(self) -> None:
        self.fills: list[tuple[pd.Timestamp, float, float]] = []
        self.rejected = 0

    notify_order = _BtCross.notify_order

    def next(self) -> None:
        i = len(self) - 1
        if i in self.p.plan:
            self.order_target_size(target=self.p.plan[i] * self.p.size)


class _TtScript(Strategy):
    name = "scripted_vs_bt"

    def __init__(self, plan: dict[int, int]) -> None:
        super().__init__()
        self.plan = plan

    def next(self, i: int) -> None:
        d = self.plan.get(i)
        if d is not None and d != self.targets[0]:  # signals are decisions: only on target changes
            self.signal(d)


@settings(max_examples=25, deadline=None)
@given(plan=st.dictionaries(st.integers(0, 199), st.sampled_from([-1, 0, 1]), max_size=40),
       seed=st.integers(0, 5), per_share=st.sampled_from([0.0, 0.01]))
def test_random_signal_scripts_match_backtrader(plan: dict[int, int], seed: int, per_share: float) -> None:
    """Any target script (consecutive bars, last bar, repeats): same fills and final value as backtrader."""
    md, _ = synthetic.generate(200, seed=seed, freq="1min")
    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(bt.feeds.PandasData(dataname=_frame(md), openinterest=None))
    cerebro.addstrategy(_BtScript, plan=plan)
    cerebro.broker.setcash(CASH)
    if per_share:
        cerebro.broker.setcommission(commission=per_share, commtype=bt.CommInfoBase.COMM_FIXED, stocklike=True)
    strat = cerebro.run()[0]
    assert strat.rejected == 0
    res = run_backtest({"data": {"synthetic": {"bars": 2}}, "strategy": {"type": "sma_crossover"},
                        "portfolio": {"initial_cash": CASH}, "execution": {"commission": {"per_share": per_share}},
                        "store": {"enabled": False}, "database": {"enabled": False}},
                       market=md, strategy=_TtScript(plan))
    f = res.events(["FILL"]).to_pydict()
    ours = [(pd.Timestamp(t).tz_convert(None), p, s * q)
            for t, p, s, q in zip(f["timestamp"], f["price"], f["side"], f["quantity"], strict=True)]
    assert [(t, s) for t, _, s in ours] == [(t, s) for t, _, s in strat.fills]
    assert [p for _, p, _ in ours] == pytest.approx([p for _, p, _ in strat.fills], rel=1e-12, abs=0)
    assert math.isclose(res.final_equity, cerebro.broker.getvalue(), rel_tol=1e-9)


class _BtMultiCross(bt.Strategy):
    """The same crossover on every data feed, each traded on its own."""

    params = (("fast", 10), ("slow", 30), ("size", 100))

    def __init__(self) -> None:
        self.cross = {d._name: bt.ind.CrossOver(bt.ind.SMA(d.close, period=self.p.fast),
                                                bt.ind.SMA(d.close, period=self.p.slow)) for d in self.datas}
        self.fills: list[tuple[pd.Timestamp, str, float, float]] = []
        self.rejected = 0

    def notify_order(self, order: bt.Order) -> None:
        if order.status == order.Completed:
            self.fills.append((pd.Timestamp(bt.num2date(order.executed.dt)), order.data._name,
                               order.executed.price, order.executed.size))
        elif order.status in (order.Margin, order.Rejected):
            self.rejected += 1

    def next(self) -> None:
        for d in self.datas:
            x = self.cross[d._name][0]
            if x > 0:
                self.order_target_size(data=d, target=self.p.size)
            elif x < 0:
                self.order_target_size(data=d, target=-self.p.size)


@pytest.mark.slow
@pytest.mark.parametrize("commission", [{}, {"per_share": 0.01}], ids=["nocomm", "per_share"])
def test_two_symbols_aligned_by_date_match_backtrader(shared_data: Path, commission: dict) -> None:
    files = {"KO": "daily/KO_1d_2012-2014_zipline.csv", "MSFT": "daily/MSFT_1d_2012-2014_zipline.csv"}
    md = load_market({k: shared_data / v for k, v in files.items()})
    cerebro = bt.Cerebro(stdstats=False)
    for name in files:
        one = load_market({name: shared_data / files[name]})
        cerebro.adddata(bt.feeds.PandasData(dataname=_frame(one), openinterest=None), name=name)
    cerebro.addstrategy(_BtMultiCross)
    cerebro.broker.setcash(CASH)
    if commission:
        cerebro.broker.setcommission(commission=commission["per_share"], commtype=bt.CommInfoBase.COMM_FIXED,
                                     stocklike=True)
    strat = cerebro.run()[0]
    assert strat.rejected == 0
    res = _run_tt(md, 10, 30, 100.0, commission)
    f = res.events(["FILL"]).to_pydict()
    ours = sorted((pd.Timestamp(t).tz_convert(None), s, p, d * q) for t, s, p, d, q in
                  zip(f["timestamp"], f["symbol"], f["price"], f["side"], f["quantity"], strict=True))
    theirs = sorted(strat.fills)
    assert len(ours) == len(theirs) > 10 and {o[1] for o in ours} == {"KO", "MSFT"}
    for a, b in zip(ours, theirs, strict=True):
        assert (a[0], a[1], a[3]) == (b[0], b[1], b[3])
        assert a[2] == pytest.approx(b[2], rel=1e-12, abs=0)
    assert math.isclose(res.final_equity, cerebro.broker.getvalue(), rel_tol=1e-9)


def test_same_bar_close_matches_backtrader_cheat_on_close() -> None:
    """`fill: close` is backtrader's cheat-on-close: a market order fills at its decision bar's close."""
    md, _ = synthetic.generate(8_000, seed=6, freq="5min")
    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(bt.feeds.PandasData(dataname=_frame(md), openinterest=None))
    cerebro.addstrategy(_BtCross, fast=5, slow=20, size=100)
    cerebro.broker.setcash(CASH)
    cerebro.broker.set_coc(True)
    strat = cerebro.run()[0]
    res = run_backtest({"data": {"synthetic": {"bars": 2}},
                        "strategy": {"type": "sma_crossover", "params": {"fast": 5, "slow": 20}},
                        "execution": {"fill": "close"}, "store": {"enabled": False},
                        "database": {"enabled": False}}, market=md)
    f = res.events(["FILL"]).to_pydict()
    ours = [(pd.Timestamp(t).tz_convert(None), p, s * q)
            for t, p, s, q in zip(f["timestamp"], f["price"], f["side"], f["quantity"], strict=True)]
    assert len(ours) == len(strat.fills) > 10
    assert [(t, s) for t, _, s in ours] == [(t, s) for t, _, s in strat.fills]
    assert [p for _, p, _ in ours] == pytest.approx([p for _, p, _ in strat.fills], rel=1e-12, abs=0)
    assert math.isclose(res.final_equity, cerebro.broker.getvalue(), rel_tol=1e-9)
