"""The recorded run does not depend on how it was chunked or sampled, and tracing does not change results."""

from __future__ import annotations

import numpy as np
import pytest

from tradetrace import run_backtest
from tradetrace.engine import synthetic

CFG = {
    "data": {"synthetic": {"bars": 2}},
    "strategy": {"type": "sma_crossover", "params": {"fast": 4, "slow": 15}},
    "portfolio": {"close_at_end": True},
    "risk": {"stop_loss_pct": 0.2},
    "classifiers": [{"type": "volatility", "window": 20, "lookback": 100}],
    "store": {"enabled": False}, "database": {"enabled": False},
}
COMPARED = ["seq", "event_type", "timestamp", "causation_seq", "source_container", "links", "symbol", "price",
            "quantity", "side", "label", "pnl", "rule"]


@pytest.fixture(scope="module")
def market():
    md, _ = synthetic.generate(4_001, seed=17, freq="1min", symbols=["A", "B", "C"])
    return md


def _events(md, **tracing) -> dict:
    res = run_backtest({**CFG, "tracing": tracing}, market=md)
    t = res.events()
    def norm(v):  # NaN (market orders' price) compares equal to itself here
        return "nan" if isinstance(v, float) and v != v else v

    return res, {c: [norm(v) for v in t.column(c).to_pylist()] for c in COMPARED if c in t.column_names}


def test_chunking_and_clock_sampling_do_not_change_the_record(market) -> None:
    ref_res, ref = _events(market, chunk_bars=65_536, bar_clock_every=16)
    assert ref_res.counts["RISK_BREACH"] > 0 and ref_res.counts["CLASSIFICATION"] > 0
    n = len(ref["seq"])
    assert ref["seq"] == list(range(n))
    for chunk, every in ((1, 1), (7, 3), (4_000, 1), (12_003, 5)):
        _, got = _events(market, chunk_bars=chunk, bar_clock_every=every)
        for c in ref:
            assert got[c] == ref[c], f"column {c} differs with chunk_bars={chunk}"


def test_tracing_off_gives_the_same_results(market) -> None:
    on = run_backtest({**CFG, "tracing": {"enabled": True}}, market=market)
    off = run_backtest({**CFG, "tracing": {"enabled": False}}, market=market)
    assert on.final_equity == off.final_equity
    assert on.counts == off.counts and on.event_count == off.event_count
    assert np.array_equal(on.equity.to_numpy(), off.equity.to_numpy())
    assert [t["pnl"] for t in on.closed_trades] == [t["pnl"] for t in off.closed_trades]
    with pytest.raises(RuntimeError, match="tracing was off"):
        off.events()
