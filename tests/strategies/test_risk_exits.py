"""Strategies act on the position risk left them: after a stop-loss or take-profit they are flat.

The built-in rules are replayed here against the portfolio's actual position (rebuilt from the FILLs:
with next-open fills every fill of row j, stops included, lands before the strategy sees row j), and
the SIGNALs of a run must be exactly the ones the rules give on that position.
"""

from __future__ import annotations

import numpy as np
import pytest

from tradetrace import Strategy, run_backtest
from tradetrace.engine import synthetic
from tradetrace.engine.data import MarketData
from tradetrace.strategies import indicators as ind

RISK = {"stop_loss_pct": 0.3, "take_profit_pct": 0.6}


def _run(md: MarketData, stype: str, params: dict, strategy: Strategy | None = None):
    res = run_backtest({"data": {"synthetic": {"bars": 2}}, "strategy": {"type": stype, "params": params},
                        "risk": RISK, "store": {"enabled": False}, "database": {"enabled": False}},
                       market=md, strategy=strategy)
    assert res.status == "completed"
    return res


def _rows(md: MarketData, ts: list) -> np.ndarray:
    return np.searchsorted(md.ts, np.array([t.value for t in ts], dtype=np.int64))


def _held(md: MarketData, res) -> np.ndarray:
    """Signed position the strategy faces at row j (every fill at or before row j applied)."""
    f = res.events(["FILL"]).to_pydict()
    delta = np.zeros(len(md))
    np.add.at(delta, _rows(md, f["timestamp"]), np.array(f["side"]) * np.array(f["quantity"]))
    return np.cumsum(delta)


def _signals(md: MarketData, res) -> dict[int, set[int]]:
    s = res.events(["SIGNAL"]).to_pydict()
    out: dict[int, set[int]] = {1: set(), 0: set(), -1: set()}
    for row, d in zip(_rows(md, s["timestamp"]).tolist(), s["direction"], strict=True):
        out[d].add(row)
    return out


def _entries_after_risk_exits(md: MarketData, res, entries: set[int]) -> int:
    """Entry signals sent while flat after a position that risk closed (the case the old code missed)."""
    exits = _rows(md, [t for t, r in zip(res.trades.exit_time, res.trades.exit_reason, strict=True)
                       if r in ("stop_loss", "take_profit")])
    return sum(1 for e in entries if np.any((exits <= e) & (exits > e - 50)))


def _md() -> MarketData:
    return synthetic.generate(20_000, seed=3, freq="5min")[0]


def test_donchian_reenters_after_a_stop_and_never_exits_a_position_it_does_not_hold() -> None:
    """The audit's case: long-only breakout with a 0.3% stop; every bar is checked against the rule."""
    md = _md()
    res = _run(md, "donchian_breakout", {"entry": 20, "exit": 10, "allow_short": False})
    held = _held(md, res)
    up, exit_low = ind.highest(md.high, 20), ind.lowest(md.low, 10)
    c = md.close
    with np.errstate(invalid="ignore"):
        want_entry = set(np.flatnonzero((held == 0) & (c > up)).tolist())
        want_exit = set(np.flatnonzero((held > 0) & ~(c > up) & (c < exit_low)).tolist())
    got = _signals(md, res)
    assert got[1] == want_entry
    assert got[0] == want_exit
    assert not got[-1]
    assert set(res.trades.exit_reason) >= {"stop_loss", "take_profit"}
    assert _entries_after_risk_exits(md, res, got[1]) > 20


def test_zscore_reversion_follows_the_actual_position() -> None:
    md = _md()
    res = _run(md, "zscore_reversion", {"window": 20, "entry": 2.0, "exit": 0.5, "allow_short": False})
    held, z = _held(md, res), ind.zscore(md.close, 20)
    with np.errstate(invalid="ignore"):
        want_entry = set(np.flatnonzero((held == 0) & (z < -2.0)).tolist())
        want_exit = set(np.flatnonzero((held > 0) & (z > -0.5)).tolist())
    got = _signals(md, res)
    assert (got[1], got[0], got[-1]) == (want_entry, want_exit, set())
    assert _entries_after_risk_exits(md, res, got[1]) > 20


def test_rsi_reversion_follows_the_actual_position() -> None:
    md = _md()
    res = _run(md, "rsi_reversion", {"period": 14, "allow_short": False})
    held, r = _held(md, res), ind.rsi(md.close, 14)
    with np.errstate(invalid="ignore"):
        want_entry = set(np.flatnonzero((held == 0) & (r < 30.0)).tolist())
        want_exit = set(np.flatnonzero((held > 0) & (r >= 50.0)).tolist())
    got = _signals(md, res)
    assert (got[1], got[0], got[-1]) == (want_entry, want_exit, set())
    assert _entries_after_risk_exits(md, res, got[1]) > 20


@pytest.mark.parametrize("stype,params", [
    ("donchian_breakout", {"entry": 20, "exit": 10}),
    ("donchian_breakout", {"entry": 20, "exit": 10, "allow_short": False}),
    ("zscore_reversion", {"window": 20, "entry": 1.5, "exit": 0.3}),
    ("rsi_reversion", {"period": 14}),
    ("sma_crossover", {"fast": 5, "slow": 20}),
    ("ema_crossover", {"fast": 5, "slow": 20, "allow_short": False}),
])
def test_every_signal_changes_the_position_under_stops(stype: str, params: dict) -> None:
    """Fixed size, no limits: a SIGNAL that the portfolio's position already satisfies would make no
    ORDER. So one ORDER per SIGNAL means no exit for a position gone and no entry for one held."""
    md, _ = synthetic.generate(20_000, seed=5, freq="5min", symbols=["A", "B"])
    res = _run(md, stype, params)
    sig = res.events(["SIGNAL"]).column("seq").to_pylist()
    orders = res.events(["ORDER"]).to_pydict()
    from_signals = [c for c, reason in zip(orders["causation_seq"], orders["reason"], strict=True)
                    if reason not in ("stop_loss", "take_profit")]
    assert len(sig) > 50 and res.counts.get("RISK_BREACH", 0) > 20
    assert sorted(from_signals) == sig


def test_on_risk_exit_is_told_the_symbol_and_rule() -> None:
    """A user strategy hears of each risk exit once, for the right symbol, before its next bar."""

    class Always(Strategy):
        name = "always_long"

        def __init__(self) -> None:
            super().__init__()
            self.told: list[tuple[int, str, str]] = []

        def on_risk_exit(self, symbol: int, rule: str) -> None:
            assert self.targets[symbol] == 1
            super().on_risk_exit(symbol, rule)
            self.told.append((int(self.data.ts[self.bus.current_row]), self.data.symbols[symbol], rule))

        def next(self, i: int) -> None:
            s = self.symbol_of[i]
            if self.targets[s] == 0:
                self.signal(1, symbol=s)

    md, _ = synthetic.generate(5_000, seed=7, freq="5min", symbols=["A", "B"])
    strat = Always()
    res = _run(md, "sma_crossover", {}, strategy=strat)
    t = res.trades
    want = sorted(zip(t.exit_time.astype("int64").tolist(), t.symbol, t.exit_reason, strict=True))
    assert len(want) > 20 and sorted(strat.told) == want
    assert set(t.exit_reason) == {"stop_loss", "take_profit"}
    # One entry per symbol, then one re-entry on the very bar of each risk exit (it runs before `next`).
    assert res.counts["SIGNAL"] == 2 + len(want)
    sig = res.events(["SIGNAL"]).to_pydict()
    reentries = sorted(zip((ts.value for ts in sig["timestamp"]), sig["symbol"], strict=True))
    for sym in ("A", "B"):
        reentries.remove(next(x for x in reentries if x[1] == sym))  # the first entry of each symbol
    assert reentries == [(ts, sym) for ts, sym, _ in want]
