"""Classifiers: causal labels (truncating data changes no earlier event), hysteresis, minimum dwell."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tradetrace import run_backtest
from tradetrace.engine import _regimes, synthetic
from tradetrace.engine.classifiers import hysteresis_labels, rolling_quantiles
from tradetrace.engine.data import MarketData, load_market

CLASSIFIERS = [
    {"type": "volatility", "window": 20, "lookback": 100, "min_dwell": 3},
    {"type": "trend", "window": 30, "threshold": 0.5},
    {"type": "vix", "bands": [15, 25], "min_dwell": 2},
]


def _cut(md: MarketData, n: int) -> MarketData:
    return MarketData(md.symbols, md.ts[:n], md.symbol_idx[:n], md.open[:n], md.high[:n], md.low[:n],
                      md.close[:n], md.volume[:n], md.daily, {k: v[:n] for k, v in md.aux.items()})


def _label_events(md: MarketData) -> list[tuple]:
    res = run_backtest({"data": {"synthetic": {"bars": 2}}, "strategy": {"type": "sma_crossover"},
                        "classifiers": CLASSIFIERS, "store": {"enabled": False}, "database": {"enabled": False}},
                       market=md)
    out = []
    for t in ("CLASSIFICATION", "REGIME_CHANGE"):
        tab = res.events([t])
        d = tab.to_pydict()
        for k in range(tab.num_rows):
            label = d["label"][k] if t == "CLASSIFICATION" else (d["from_label"][k], d["to_label"][k])
            out.append((d["timestamp"][k], t, d["classifier"][k], d["symbol"][k], label, d["value"][k]))
    return sorted(out, key=lambda e: (e[0], e[1], e[2], e[3]))


def _check_truncation(md: MarketData, cuts: list[int]) -> None:
    full = _label_events(md)
    assert {e[1] for e in full} == {"CLASSIFICATION", "REGIME_CHANGE"}
    assert {e[2] for e in full} == {"volatility", "trend", "vix"}
    for n in cuts:
        part = _label_events(_cut(md, n))
        last_ts = md.ts[n - 1]
        expected = [e for e in full if e[0].value <= last_ts]
        assert part == expected, f"truncating to {n} rows changed earlier labels"


def test_truncation_changes_no_earlier_label_synthetic() -> None:
    md, _ = synthetic.generate(3_000, seed=8, freq="15min", symbols=["A", "B"])
    _check_truncation(md, [400, 1_501, 2_999])


@pytest.mark.slow
def test_truncation_changes_no_earlier_label_real(shared_data: Path) -> None:
    md = load_market({"SPY": shared_data / "daily/SPY_1d_1998-2021_lean.csv"},
                     {"VIX": shared_data / "vix/VIX_1d_1990-2026_cboe.csv"})
    _check_truncation(md, [1_000, 4_321])


def test_regime_changes_are_caused_by_bars_and_follow_labels() -> None:
    md, truth = synthetic.generate(20_000, seed=2, freq="5min")
    res = run_backtest({"data": {"synthetic": {"bars": 2}}, "strategy": {"type": "sma_crossover"},
                        "classifiers": [{"type": "volatility", "window": 78, "lookback": 780}],
                        "store": {"enabled": False}, "database": {"enabled": False}}, market=md)
    rc = res.events(["REGIME_CHANGE"]).to_pydict()
    # Consecutive changes chain: each one leaves the label the previous one entered.
    assert rc["from_label"][0] == ""
    assert rc["from_label"][1:] == rc["to_label"][:-1]
    assert all(a != b for a, b in zip(rc["from_label"][1:], rc["to_label"][1:], strict=True))
    for c in rc["causation_seq"]:
        assert res.event(c).event_type == "BAR"


def test_hysteresis_by_hand() -> None:
    lo, up = np.full(8, 10.0), np.full(8, 20.0)
    # margin 10%: leaving "high" (2) needs v < 20*0.9 = 18; entering it from "normal" needs v > 22.
    v = np.array([15, 21, 23, 19, 18.5, 17.9, 21.9, 22.1])
    reading, regime = hysteresis_labels(v, lo, up, 0.10, 1)
    # 15 normal; 21 stays normal (not > 22); 23 high; 19 and 18.5 stay high (>= 18); 17.9 normal;
    # 21.9 stays normal; 22.1 high.
    assert reading.tolist() == [1, 1, 2, 2, 2, 1, 1, 2]
    assert regime.tolist() == reading.tolist()  # dwell 1: regime follows the reading


def test_hysteresis_is_symmetric_around_negative_and_positive_edges() -> None:
    """The trend's bands are -T and +T: 5% hysteresis means enter beyond T*1.05, leave inside T*0.95, on
    both sides (the old shifted reading entered "up" above +1.55 and "down" below -1.45)."""
    lo, up = np.full(13, -1.0), np.full(13, 1.0)
    v = np.array([0.0, 1.05, 1.0501, 0.9501, 0.95, 0.9499, -1.05, -1.0501, -0.9501, -0.95, -0.9499, 1.3, -1.3])
    reading, _ = hysteresis_labels(v, lo, up, 0.05, 1)
    # flat; 1.05 not above 1.05; up; 0.9501 and 0.95 stay up (>= 0.95); 0.9499 flat; -1.05 not below -1.05;
    # down; -0.9501 and -0.95 stay down (<= -0.95); -0.9499 flat; 1.3 up; -1.3 down (straight through flat).
    assert reading.tolist() == [1, 1, 2, 2, 2, 1, 1, 0, 0, 0, 1, 2, 0]
    # The mirror image of any series gets the mirror labels.
    rng = np.random.default_rng(4)
    w = np.cumsum(rng.normal(size=2_000)) * 0.2
    a, ra = hysteresis_labels(w, lo[:1].repeat(len(w)), up[:1].repeat(len(w)), 0.05, 3)
    b, rb = hysteresis_labels(-w, lo[:1].repeat(len(w)), up[:1].repeat(len(w)), 0.05, 3)
    assert (2 - a).tolist() == b.tolist() and (2 - ra).tolist() == rb.tolist()
    assert set(a.tolist()) == {0, 1, 2}


def test_trend_classifier_thresholds_are_threshold_times_one_plus_minus_hysteresis() -> None:
    """The trend classifier as configured (threshold 1, hysteresis 0.05): every reading change and every
    reading kept obeys +-1.05 to enter and +-0.95 to leave, checked on the recorded value of each row."""
    from tradetrace.config import ClassifierConfig
    from tradetrace.engine import classifiers as cl

    md, _ = synthetic.generate(30_000, seed=11, freq="5min")
    reading, regime, value = cl._labels(ClassifierConfig(type="trend", window=50, threshold=1.0,
                                                         hysteresis=0.05, min_dwell=3), md)
    prev, cur, v = reading[:-1], reading[1:], value[1:]
    ok = ~np.isnan(v) & (prev >= 0)
    enter_up, enter_down = 1.0 * 1.05, -1.0 * 1.05
    stay_up, stay_down = 1.0 * 0.95, -1.0 * 0.95
    assert np.all(v[ok & (prev != 2) & (cur == 2)] > enter_up)
    assert np.all(v[ok & (prev != 0) & (cur == 0)] < enter_down)
    assert np.all(v[ok & (prev == 1) & (cur == 1)] <= enter_up)
    assert np.all(v[ok & (prev == 1) & (cur == 1)] >= enter_down)
    assert np.all(v[ok & (prev == 2) & (cur == 2)] >= stay_up)
    assert np.all(v[ok & (prev == 2) & (cur != 2)] < stay_up)
    assert np.all(v[ok & (prev == 0) & (cur == 0)] <= stay_down)
    assert np.all(v[ok & (prev == 0) & (cur != 0)] > stay_down)
    for label in (0, 1, 2):  # every transition kind happened, and the regime is the dwell-filtered reading
        assert np.any(ok & (prev != label) & (cur == label))
    assert np.array_equal(regime, hysteresis_labels(value, np.full(len(md), -1.0), np.full(len(md), 1.0),
                                                    0.05, 3)[1])


def test_min_dwell_by_hand() -> None:
    lo, up = np.full(9, 10.0), np.full(9, 20.0)
    v = np.array([15, 25, 25, 15, 25, 25, 25, 25, 5])
    reading, regime = hysteresis_labels(v, lo, up, 0.0, 3)
    assert reading.tolist() == [1, 2, 2, 1, 2, 2, 2, 2, 0]
    # The first reading sets the regime at once; "high" becomes the regime only after 3 bars in a row
    # (rows 4, 5, 6 -> at row 6); the single "low" at row 8 is not confirmed.
    assert regime.tolist() == [1, 1, 1, 1, 1, 1, 2, 2, 2]


def _reference_hysteresis(value, lower, upper, margin: float, min_dwell: int) -> tuple[list[int], list[int]]:
    """The rules of `hysteresis_labels`, as a plain Python loop (the C pass must give exactly this)."""
    reading, regime = [], []
    r = g = -1
    run = 0

    def down(e: float) -> float:  # the edge moved down by margin * |edge|
        return e * (1 - margin) if e >= 0 else e * (1 + margin)

    def up_(e: float) -> float:  # ... and up
        return e * (1 + margin) if e >= 0 else e * (1 - margin)

    for v, lo, up in zip(value.tolist(), lower.tolist(), upper.tolist(), strict=True):
        if v != v or lo != lo or up != up:
            reading.append(r)
            regime.append(g)
            continue
        if r == -1:
            new = 0 if v < lo else (2 if v > up else 1)
        elif r == 2:
            new = 2 if v >= down(up) else (0 if v < down(lo) else 1)
        elif r == 0:
            new = 0 if v <= up_(lo) else (2 if v > up_(up) else 1)
        else:
            new = 2 if v > up_(up) else (0 if v < down(lo) else 1)
        if new == r:
            run += 1
        else:
            r, run = new, 1
        if g == -1 or (r != g and run >= min_dwell):
            g = r
        reading.append(r)
        regime.append(g)
    return reading, regime


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 400), st.integers(0, 2**32 - 1), st.sampled_from([0.0, 0.05, 0.2]), st.integers(1, 6))
def test_hysteresis_matches_the_reference_loop(n: int, seed: int, margin: float, dwell: int) -> None:
    rng = np.random.default_rng(seed)
    v = np.cumsum(rng.normal(size=n)) * 3 + 15
    lo = 10 + rng.normal(size=n)
    up = 20 + rng.normal(size=n)
    for a in (v, lo, up):  # unknown values and band edges (warm-up, gaps)
        a[rng.random(n) < 0.05] = np.nan
    reading, regime = hysteresis_labels(v, lo, up, margin, dwell)
    assert (reading.tolist(), regime.tolist()) == _reference_hysteresis(v, lo, up, margin, dwell)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([0.0, 0.05, 0.2]), st.integers(1, 4), st.data())
def test_hysteresis_on_band_edges_matches_the_reference_loop(margin: float, dwell: int, data: st.DataObject) -> None:
    """Values exactly on the edges and their margins, where `>` against `>=` decides."""
    edges = [10 * (1 - margin), 10, 10 * (1 + margin), 15, 20 * (1 - margin), 20, 20 * (1 + margin), 5, 25]
    v = np.array(data.draw(st.lists(st.sampled_from(edges), min_size=1, max_size=60)))
    lo, up = np.full(len(v), 10.0), np.full(len(v), 20.0)
    reading, regime = hysteresis_labels(v, lo, up, margin, dwell)
    assert (reading.tolist(), regime.tolist()) == _reference_hysteresis(v, lo, up, margin, dwell)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 300), st.integers(1, 40), st.integers(0, 2**32 - 1), st.sampled_from([0.0, 0.05, 0.4]),
       st.booleans(), st.lists(st.floats(0, 1), min_size=0, max_size=3))
def test_rolling_quantiles_equal_pandas_bit_for_bit(n: int, window: int, seed: int, nan_rate: float, ties: bool,
                                                    extra: list[float]) -> None:
    """The volatility bands' one-pass quantiles against pandas' rolling quantile (the reference), on NaN gaps,
    ties, windows longer than the data, and the edge quantiles 0 and 1."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    if ties:
        x = np.round(x, 1)
    x[rng.random(n) < nan_rate] = np.nan
    qs = (1 / 3, 2 / 3, 0.0, 1.0, 0.5, *extra)
    for q, got in zip(qs, rolling_quantiles(x, window, qs), strict=True):
        want = pd.Series(x).rolling(window, min_periods=window).quantile(q).to_numpy()
        np.testing.assert_array_equal(got, want)


def test_rolling_quantiles_refuse_bad_input() -> None:
    x = np.array([3.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="not an ascending argsort"):
        _regimes.rolling_quantiles(x, np.arange(3, dtype=np.int64), 2, (0.5,))
    for order in ([1, 2, 7], [1, 1, 0], [-1, 2, 0]):
        with pytest.raises(ValueError, match="not a permutation"):
            _regimes.rolling_quantiles(x, np.array(order, dtype=np.int64), 2, (0.5,))
    with pytest.raises(ValueError, match="not a permutation"):  # a NaN's index twice
        _regimes.rolling_quantiles(np.array([1.0, np.nan]), np.array([1, 1], dtype=np.int64), 2, (0.5,))
    with pytest.raises(ValueError, match=r"quantile 1\.5 not in \[0, 1\]"):
        rolling_quantiles(x, 2, (1.5,))
    with pytest.raises(ValueError, match="window must be >= 1"):
        rolling_quantiles(x, 0, (0.5,))


def test_unknown_readings_keep_the_last_label() -> None:
    v = np.array([np.nan, 5, np.nan, 25])
    reading, regime = hysteresis_labels(v, np.full(4, 10.0), np.full(4, 20.0), 0.0, 1)
    assert reading.tolist() == [-1, 0, 0, 2]
    assert regime.tolist() == [-1, 0, 0, 2]


def test_labels_are_computed_once_per_data_and_settings() -> None:
    """Runs on one data set share the labels (sweeps); other settings or other data compute their own."""
    import pickle

    from tradetrace.config import ClassifierConfig
    from tradetrace.engine import classifiers as cl

    md, _ = synthetic.generate(8_000, seed=3, freq="1min")
    vol = ClassifierConfig(type="volatility", window=30, lookback=300)
    first = cl._labels(vol, md)
    assert cl._labels(ClassifierConfig(type="volatility", window=30, lookback=300, name="other"), md) is first
    assert not first[0].flags.writeable
    trend = cl._labels(ClassifierConfig(type="trend", window=30), md)
    assert trend is not first and not np.array_equal(trend[2], first[2], equal_nan=True)
    cfg = {"data": {"synthetic": {"bars": 8_000, "seed": 3}}, "classifiers": [vol.model_dump()],
           "strategy": {"type": "sma_crossover", "params": {"fast": 5, "slow": 20}},
           "store": {"enabled": False}, "database": {"enabled": False}}
    a, b = run_backtest(cfg, market=md), run_backtest(cfg, market=md)
    fresh = run_backtest(cfg)  # its own data: computed again, same values
    for r in (b, fresh):
        assert r.events(types=["CLASSIFICATION", "REGIME_CHANGE"]).drop_columns(
            ["correlation_id", "created_at", "emitted_at", "received_at", "processed_at"]).equals(
            a.events(types=["CLASSIFICATION", "REGIME_CHANGE"]).drop_columns(
                ["correlation_id", "created_at", "emitted_at", "received_at", "processed_at"]))
    assert len(md.derived) == 2  # volatility (shared by both names) and trend
    copy = pickle.loads(pickle.dumps(md))  # travels with the data (Ray workers get it this way)
    assert np.array_equal(cl._labels(vol, copy)[1], first[1])
    assert copy.derived.keys() == md.derived.keys()


def test_prepare_computes_shared_labels_and_leaves_failures_to_the_runs() -> None:
    """A sweep prepares labels once before its workers start; a classifier that cannot be computed over
    the data (no VIX series) is left to the runs, which fail with the error and are recorded as failed."""
    from tradetrace.config import ClassifierConfig
    from tradetrace.engine import classifiers as cl

    md, _ = synthetic.generate(5_000, seed=4, freq="1min")
    vol = ClassifierConfig(type="volatility", window=30, lookback=300)
    vix = ClassifierConfig(type="vix", series="NOPE")
    cl.prepare([vix, vol], md)
    assert list(md.derived) == ["labels:" + vol.model_dump_json(exclude={"name"})]
    with pytest.raises(ValueError, match="auxiliary series 'NOPE' not loaded"):
        cl._labels(vix, md)
