"""Execution, costs, sizing, stops, risk limits and portfolio accounting on hand-computed cases.

Bars (rows 0..5), one symbol, daily:
    row  open high low close
     0    10   11   9   10
     1    11   12  10   11
     2    12   13  11   12
     3    13   14  12   13
     4    12   13  11   12
     5    11   12  10   11
Script: long at row 0, short at row 2, flat at row 4 (fixed 100 shares unless said otherwise).
Next-open fills: buy 100 @ 11 (row 1), sell 200 @ 13 (row 3: close long, open short), buy 100 @ 11 (row 5).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tradetrace import Strategy, run_backtest

ROWS = [(10, 11, 9, 10), (11, 12, 10, 11), (12, 13, 11, 12), (13, 14, 12, 13), (12, 13, 11, 12), (11, 12, 10, 11)]
SCRIPT = {0: 1, 2: -1, 4: 0}


class Scripted(Strategy):
    name = "scripted"

    def __init__(self, plan: dict[int, int]) -> None:
        super().__init__()
        self.plan = plan

    def next(self, i: int) -> None:
        if i in self.plan:
            self.signal(self.plan[i], reason=f"row {i}")


def _data(tmp_path: Path, rows=ROWS) -> str:
    p = tmp_path / "bars.csv"
    lines = ["date,open,high,low,close,volume"]
    for k, (o, h, lo, c) in enumerate(rows):
        lines.append(f"{(pd.Timestamp('2020-01-06') + pd.Timedelta(days=k)).date()},{o},{h},{lo},{c},1000")
    p.write_text("\n".join(lines) + "\n")
    return str(p)


def _run(tmp_path: Path, plan=None, rows=ROWS, **cfg):
    base = {"data": {"symbols": {"X": _data(tmp_path, rows)}}, "strategy": {"type": "sma_crossover"},
            "store": {"enabled": False}, "database": {"enabled": False}}
    base.update(cfg)
    return run_backtest(base, strategy=Scripted(SCRIPT if plan is None else plan))


def _fills(res) -> list[tuple]:
    f = res.events(["FILL"]).to_pydict()
    return list(zip(f["side"], f["quantity"], f["price"], f["commission"], strict=True))


def test_next_open_long_short_and_equity_curve(tmp_path: Path) -> None:
    res = _run(tmp_path)
    assert _fills(res) == [(1, 100, 11, 0), (-1, 200, 13, 0), (1, 100, 11, 0)]
    t = res.trades
    assert t.side.tolist() == ["long", "short"]
    assert t.entry_price.tolist() == [11, 13] and t.exit_price.tolist() == [13, 11]
    assert t.pnl.tolist() == [200, 200]  # (13-11)*100 long, (13-11)*100 short
    # Equity marked at closes: cash + position * close (see module docstring).
    # r0 100000; r1 98900+100*11; r2 98900+100*12; r3 101500-100*13; r4 101500-100*12; r5 flat 100400.
    assert res.equity.tolist() == [100000, 100000, 100100, 100200, 100300, 100400]
    assert res.final_equity == 100400
    assert res.metrics["exposure"] == pytest.approx(4 / 6)  # positioned at the close of rows 1..4
    assert res.metrics["win_rate"] == 1.0 and res.metrics["trade_count"] == 2


@pytest.mark.parametrize(("commission", "fees", "pnls"), [
    # per share 0.01: fills 100/200/100 shares -> 1, 2, 1; each trade pays its entry and half the 200-share fill.
    ({"per_share": 0.01}, [1.0, 2.0, 1.0], [198.0, 198.0]),
    # per order 1: 1 per fill; the 200-share fill is split half to each trade.
    ({"per_order": 1.0}, [1.0, 1.0, 1.0], [198.5, 198.5]),
    # 10 bps of notional: 1100 -> 1.1, 2600 -> 2.6, 1100 -> 1.1; trades 200-1.1-1.3 each.
    ({"bps": 10.0}, [1.1, 2.6, 1.1], [197.6, 197.6]),
    # minimum 5 per order on top of per share: 1 -> 5, 2 -> 5, 1 -> 5; trades 200-5-2.5.
    ({"per_share": 0.01, "minimum": 5.0}, [5.0, 5.0, 5.0], [192.5, 192.5]),
])
def test_commission_models(tmp_path: Path, commission: dict, fees: list, pnls: list) -> None:
    res = _run(tmp_path, execution={"commission": commission})
    assert [f[3] for f in _fills(res)] == pytest.approx(fees)
    assert res.trades.pnl.tolist() == pytest.approx(pnls)
    assert res.final_equity == pytest.approx(100_400 - sum(fees))
    assert res.metrics["total_commission"] == pytest.approx(sum(fees))
    closes = res.events(["POSITION_CLOSE"]).column("pnl").to_pylist()
    assert closes == pytest.approx(pnls)


def test_slippage_moves_price_against_the_trader(tmp_path: Path) -> None:
    res = _run(tmp_path, execution={"slippage_bps": 10})
    # buy 11*1.001=11.011, sell 13*0.999=12.987, buy 11.011
    assert [f[2] for f in _fills(res)] == pytest.approx([11.011, 12.987, 11.011])
    assert res.trades.pnl.tolist() == pytest.approx([197.6, 197.6])  # (12.987-11.011)*100 each
    assert res.metrics["total_slippage"] == pytest.approx(0.011 * 100 + 0.013 * 200 + 0.011 * 100)


def test_same_bar_close_fill_option(tmp_path: Path) -> None:
    res = _run(tmp_path, execution={"fill": "close"})
    assert [f[2] for f in _fills(res)] == [10, 12, 12]  # closes of rows 0, 2, 4
    assert res.trades.pnl.tolist() == [200, 0]


def test_percent_of_equity_sizing(tmp_path: Path) -> None:
    res = _run(tmp_path, sizing={"type": "percent_equity", "percent": 50})
    # row 0: 50% of 100000 at close 10 -> 5000 long; fills 11.
    # row 2: equity 45000+5000*12=105000 -> 4375 short; order -9375 fills 13.
    assert [(f[0], f[1]) for f in _fills(res)] == [(1, 5000), (-1, 9375), (1, 4375)]
    assert res.trades.pnl.tolist() == [10_000, 8_750]  # 2*5000, 2*4375
    assert res.final_equity == 118_750


def test_long_only_portfolio_turns_short_signals_into_flat(tmp_path: Path) -> None:
    res = _run(tmp_path, portfolio={"allow_short": False})
    assert [(f[0], f[1]) for f in _fills(res)] == [(1, 100), (-1, 100)]
    assert res.final_equity == 100_200


def test_stop_loss_exits_with_risk_breach(tmp_path: Path) -> None:
    rows = [(10, 11, 9, 10), (11, 12, 10.8, 11), (11.5, 12, 10, 11), (11, 12, 10, 11)]
    res = _run(tmp_path, plan={0: 1}, rows=rows, risk={"stop_loss_pct": 5})
    # Entry 11; stop 11*0.95 = 10.45; row 2 low 10 breaches, open 11.5 above -> exit at 10.45.
    br = res.events(["RISK_BREACH"]).to_pylist()
    assert [(b["rule"], b["action"]) for b in br] == [("stop_loss", "close")]
    assert br[0]["exit_price"] == pytest.approx(10.45)
    assert res.trades.exit_reason.tolist() == ["stop_loss"]
    assert res.trades.exit_price.tolist() == pytest.approx([10.45])
    assert res.trades.pnl.tolist() == pytest.approx([-55.0])
    lin = res.trace(res.trades.close_id[0])
    assert [e.event_type for e in lin.chain] == ["POSITION_CLOSE", "FILL", "ORDER", "RISK_BREACH", "BAR"]
    assert lin.root.data["low"] == 10


def test_gap_through_stop_fills_at_open_and_take_profit(tmp_path: Path) -> None:
    rows = [(10, 11, 9, 10), (11, 12, 10.8, 11), (10, 10.5, 9.5, 10), (11, 12, 10, 11)]
    res = _run(tmp_path, plan={0: 1}, rows=rows, risk={"stop_loss_pct": 5})
    assert res.trades.exit_price.tolist() == [10]  # opened below 10.45: filled at the open
    rows = [(10, 11, 9, 10), (11, 12, 10.8, 11), (11.5, 13, 11, 12), (11, 12, 10, 11)]
    res = _run(tmp_path, plan={0: 1}, rows=rows, risk={"take_profit_pct": 10})
    # target 11*1.1 = 12.1, row 2 high 13 -> exit 12.1
    assert res.trades.exit_reason.tolist() == ["take_profit"]
    assert res.trades.exit_price.tolist() == pytest.approx([12.1])
    assert res.trades.pnl.tolist() == pytest.approx([110.0])


def test_short_stop_loss(tmp_path: Path) -> None:
    rows = [(10, 11, 9, 10), (10, 10.2, 9.8, 10), (10.1, 10.8, 10, 10.5), (10, 11, 9, 10)]
    res = _run(tmp_path, plan={0: -1}, rows=rows, risk={"stop_loss_pct": 5})
    # short at 10, stop 10.5, row 2 high 10.8 -> exit 10.5: pnl -0.5*100
    assert res.trades.side.tolist() == ["short"]
    assert res.trades.exit_price.tolist() == pytest.approx([10.5])
    assert res.trades.pnl.tolist() == pytest.approx([-50.0])


def test_max_position_cuts_and_blocks_with_risk_breach(tmp_path: Path) -> None:
    res = _run(tmp_path, risk={"max_position": 60})
    br = res.events(["RISK_BREACH"]).to_pylist()
    assert [b["action"] for b in br] == ["cut", "cut"]
    # +100 -> +60; -160 (to -100) -> -120 (to -60); flat: +60 allowed.
    assert [(f[0], f[1]) for f in _fills(res)] == [(1, 60), (-1, 120), (1, 60)]
    sig = res.events(["SIGNAL"]).column("seq").to_pylist()
    assert [b["causation_seq"] for b in br] == [sig[0], sig[1]]


def test_max_gross_exposure_blocks_orders(tmp_path: Path) -> None:
    res = _run(tmp_path, plan={0: 1}, risk={"max_gross_exposure": 0.001},
               sizing={"type": "fixed", "quantity": 100})
    # 100 shares * 10 = 1000 > 0.001 * 100000 = 100 -> cut to 10 shares (room 100/10)
    br = res.events(["RISK_BREACH"]).to_pylist()
    assert br[0]["rule"] == "max_gross_exposure" and br[0]["action"] == "cut"
    assert [(f[0], f[1]) for f in _fills(res)] == [(1, 10)]


def test_close_at_end_and_cancel_at_end(tmp_path: Path) -> None:
    res = _run(tmp_path, plan={0: 1, 5: -1}, portfolio={"close_at_end": True})
    # long 100 @ 11 (row 1); the row-5 signal has no later bar (cancelled); closed at the last close 11.
    br = res.events(["RISK_BREACH"]).to_pylist()
    assert {b["detail"] for b in br} == {"close_at_end", "1 order(s) had no later bar to fill"}
    assert res.trades.pnl.tolist() == [0.0]
    assert res.open_positions == []
    open_res = _run(tmp_path, plan={0: 1})
    assert open_res.open_positions[0]["quantity"] == 100
    assert open_res.final_equity == 100_000  # marked at the last close 11 = entry


def test_max_position_blocks_an_order_that_would_only_add_beyond_the_limit(tmp_path: Path) -> None:
    res = _run(tmp_path, plan={0: 1, 2: 1}, risk={"max_position": 60})
    # row 0: target 100 -> cut to 60; row 2: target 100 again, held 60 -> +40 would exceed: blocked.
    br = res.events(["RISK_BREACH"]).to_pylist()
    assert [(b["rule"], b["action"]) for b in br] == [("max_position", "cut"), ("max_position", "block")]
    assert res.counts["ORDER"] == 1 and [(f[0], f[1]) for f in _fills(res)] == [(1, 60)]
    sig = res.events(["SIGNAL"]).column("seq").to_pylist()
    assert br[1]["causation_seq"] == sig[1]


def test_accounting_identities_on_a_multi_symbol_run() -> None:
    """Cash, realized P&L and equity agree with each other and with the fills, to rounding."""
    res = run_backtest({
        "data": {"synthetic": {"bars": 8_000, "seed": 31, "freq": "5min", "symbols": ["A", "B", "C"]}},
        "strategy": {"type": "zscore_reversion", "params": {"window": 30, "entry": 1.8, "exit": 0.4}},
        "sizing": {"type": "percent_equity", "percent": 20},
        "execution": {"commission": {"per_share": 0.005, "per_order": 0.5}, "slippage_bps": 1},
        "risk": {"stop_loss_pct": 1.0},
        "store": {"enabled": False}, "database": {"enabled": False},
    })
    fills = res.events(["FILL"]).to_pydict()
    cash = 100_000 - sum(s * q * p + c for s, q, p, c in
                         zip(fills["side"], fills["quantity"], fills["price"], fills["commission"], strict=True))
    upd = res.events(["PORTFOLIO_UPDATE"]).to_pydict()
    assert upd["cash"][-1] == pytest.approx(cash, rel=1e-12)
    pnls = [t["pnl"] for t in res.closed_trades]
    assert upd["realized_pnl"][-1] == pytest.approx(sum(pnls), rel=1e-9)
    assert res.metrics["total_commission"] == pytest.approx(sum(fills["commission"]), rel=1e-12)
    # Final equity = cash + open positions at their symbol's last close.
    bars = res.events(["BAR"]).to_pydict()
    last_close = dict(zip(bars["symbol"], bars["close"], strict=True))
    open_value = sum((1 if p["side"] == "long" else -1) * p["quantity"] * last_close[p["symbol"]]
                     for p in res.open_positions)
    assert res.final_equity == pytest.approx(cash + open_value, rel=1e-12)
    # Realized P&L + unrealized (against entry prices, net of the open legs' entry commission) = equity change.
    unrealized = sum((1 if p["side"] == "long" else -1) * p["quantity"] * (last_close[p["symbol"]] - p["entry_price"])
                     for p in res.open_positions)
    open_fees = res.metrics["total_commission"] - sum(t["commission"] for t in res.closed_trades)
    assert res.final_equity - 100_000 == pytest.approx(sum(pnls) + unrealized - open_fees, abs=1e-6)
    assert len(pnls) > 20 and res.counts["RISK_BREACH"] > 0
    # ... which the result and the events say themselves: per open position, in total, and after every fill.
    assert res.open_positions
    for p in res.open_positions:
        sign = 1 if p["side"] == "long" else -1
        assert p["mark_price"] == last_close[p["symbol"]]
        gross = sign * p["quantity"] * (p["mark_price"] - p["entry_price"])
        assert gross - open_fees - 1e-6 <= p["unrealized_pnl"] <= gross  # net of its own entry commission
    assert sum(p["unrealized_pnl"] for p in res.open_positions) == pytest.approx(unrealized - open_fees, abs=1e-6)
    assert res.realized_pnl == pytest.approx(sum(pnls), rel=1e-9)
    assert res.unrealized_pnl == pytest.approx(unrealized - open_fees, abs=1e-6)
    for eq, real, unreal in zip(upd["equity"], upd["realized_pnl"], upd["unrealized_pnl"], strict=True):
        assert eq - 100_000 == pytest.approx(real + unreal, abs=1e-6)
    out = res.to_dict()
    assert out["unrealized_pnl"] == pytest.approx(res.unrealized_pnl)
    assert [p["symbol"] for p in out["open_positions"]] == [p["symbol"] for p in res.open_positions]
    assert all(p["entry_event_id"].startswith(res.run_id + ":") for p in out["open_positions"])


def test_untraced_result_points_to_no_events() -> None:
    """With tracing off nothing was recorded: the result's trades and open positions carry no event ids."""
    res = run_backtest({"data": {"synthetic": {"bars": 3_000, "seed": 4}},
                        "strategy": {"type": "sma_crossover", "params": {"fast": 5, "slow": 20}},
                        "tracing": {"enabled": False}, "store": {"enabled": False}, "database": {"enabled": False}})
    d = res.to_dict()
    assert d["trades"] and d["open_positions"]
    for row in (*d["trades"], *d["open_positions"]):
        assert all(v is None for k, v in row.items() if k.endswith("_id"))


def test_gross_exposure_limit_counts_orders_still_in_flight(tmp_path: Path) -> None:
    """Two symbols signal on the same day; with next-open fills the first one's order is still in flight when
    the second is sized. The limit ignored it: two 60% entries under a 1.0 cap both passed (120% gross; on the
    three ETFs of examples/multi_breakout.yaml at 50% each, 150%)."""
    a = _data(tmp_path)
    (tmp_path / "b").mkdir()
    b = _data(tmp_path / "b")
    res = run_backtest({"data": {"symbols": {"A": a, "B": b}}, "strategy": {"type": "sma_crossover"},
                        "sizing": {"type": "percent_equity", "percent": 60}, "risk": {"max_gross_exposure": 1.0},
                        "store": {"enabled": False}, "database": {"enabled": False}},
                       strategy=Scripted({0: 1, 1: 1}))  # rows 0 and 1: A's and B's first bar (close 10)
    # A: 60% of 100,000 at 10 = 6,000 shares; B: the cap leaves 100,000 - 60,000 = 40,000, i.e. 4,000 shares.
    f = res.events(["FILL"]).to_pydict()
    assert list(zip(f["symbol"], f["quantity"], strict=True)) == [("A", 6000), ("B", 4000)]
    br = res.events(["RISK_BREACH"]).to_pylist()
    assert [(b["rule"], b["symbol"], b["action"]) for b in br] == [("max_gross_exposure", "B", "cut")]
