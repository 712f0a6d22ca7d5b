"""Market data: CSV/Parquet loading, time column detection, alignment, VIX as-of, validation, synthetic."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tradetrace.engine import synthetic
from tradetrace.engine.data import DataError, DataWarning, load_market, load_series

HEAD = "date,open,high,low,close,volume\n"


def _csv(tmp_path: Path, body: str, name: str = "x.csv", head: str = HEAD) -> Path:
    p = tmp_path / name
    p.write_text(head + body)
    return p


def test_daily_csv_and_parquet_load_identically(tmp_path: Path) -> None:
    p = _csv(tmp_path, "2020-01-02,10,11,9,10.5,100\n2020-01-03,10.5,12,10,11,200\n")
    s = load_series(p)
    assert s.daily and list(s.close) == [10.5, 11.0]
    assert s.ts[0] == pd.Timestamp("2020-01-02", tz="UTC").value
    pq = tmp_path / "x.parquet"
    pd.read_csv(p, parse_dates=["date"]).to_parquet(pq)
    q = load_series(pq)
    assert np.array_equal(q.ts, s.ts) and np.array_equal(q.close, s.close) and q.daily


def test_timestamp_column_with_offsets_is_utc(tmp_path: Path) -> None:
    p = _csv(tmp_path, "2020-01-02T09:30:00-05:00,1,2,0.5,1.5,1\n2020-01-02T09:31:00-05:00,1,2,0.5,1.5,1\n",
             head="timestamp,open,high,low,close,volume\n")
    s = load_series(p)
    assert not s.daily
    assert s.ts[0] == pd.Timestamp("2020-01-02T14:30:00Z").value
    assert s.ts[1] - s.ts[0] == 60_000_000_000


def test_folder_of_parts_read_in_name_order(tmp_path: Path) -> None:
    d = tmp_path / "parts"
    d.mkdir()
    _csv(d, "2020-01-03,1,1,1,1,1\n", "b.csv")
    _csv(d, "2020-01-02,2,2,2,2,2\n", "a.csv")
    s = load_series(d)
    assert list(s.close) == [2.0, 1.0]


def test_several_symbols_aligned_by_time_and_vix_joined_causally(tmp_path: Path) -> None:
    a = _csv(tmp_path, "2020-01-02,1,1,1,1,1\n2020-01-03,2,2,2,2,1\n2020-01-06,3,3,3,3,1\n", "a.csv")
    b = _csv(tmp_path, "2020-01-03,20,20,20,20,1\n2020-01-06,30,30,30,30,1\n", "b.csv")
    vix = _csv(tmp_path, "2020-01-02,15,15,15,15,0\n2020-01-06,25,25,25,25,0\n", "v.csv")
    md = load_market({"A": a, "B": b}, {"VIX": vix})
    assert md.symbols == ["A", "B"]
    assert md.symbol_idx.tolist() == [0, 0, 1, 0, 1]  # time order, then symbol order
    assert md.close.tolist() == [1, 2, 20, 3, 30]
    assert md.aux["VIX"].tolist() == [15, 15, 15, 25, 25]  # daily on daily: the same day's close is known


def test_daily_vix_on_intraday_bars_is_known_the_next_day(tmp_path: Path) -> None:
    bars = _csv(tmp_path, "2020-01-02T15:00:00Z,1,1,1,1,1\n2020-01-03T15:00:00Z,1,1,1,1,1\n", "m.csv",
                head="timestamp,open,high,low,close,volume\n")
    vix = _csv(tmp_path, "2020-01-02,15,15,15,15,0\n2020-01-03,25,25,25,25,0\n", "v.csv")
    md = load_market({"M": bars}, {"VIX": vix})
    v = md.aux["VIX"]
    assert np.isnan(v[0]) and v[1] == 15  # the 01-02 close is not known during the 01-02 session


@pytest.mark.parametrize(("body", "needles"), [
    ("2020-01-02,10,11,9,nan,1\n", ["row 2", "close", "nan"]),
    ("2020-01-02,10,11,9,10,1\n2020-01-03,-1,11,-2,10,1\n", ["row 3", "open", "-1"]),
    ("2020-01-02,10,11,9,10,1\n2020-01-03,10,9,11,10,1\n", ["row 3", "high", "9.0", "below low 11"]),
    ("2020-01-03,10,11,9,10,1\n2020-01-02,10,11,9,10,1\n", ["row 3", "timestamp", "out of order"]),
    ("2020-01-02,10,11,9,10,1\n2020-01-02,10,11,9,10,1\n", ["row 3", "timestamp", "duplicate"]),
    ("2020-01-02,10,11,9,ten,1\n", ["row 2", "close", "'ten'"]),
    ("2020-01-02,10,11,9,10,-5\n", ["row 2", "volume", "-5"]),
])
def test_validation_rejects_with_file_row_and_value(tmp_path: Path, body: str, needles: list[str]) -> None:
    p = _csv(tmp_path, body)
    with pytest.raises(DataError) as info:
        load_series(p)
    msg = str(info.value)
    assert "\n" not in msg and str(p) in msg
    for n in needles:
        assert n in msg, msg


def test_missing_columns_and_missing_file(tmp_path: Path) -> None:
    p = _csv(tmp_path, "2020-01-02,10,11,9,1\n", head="date,open,high,low,volume\n")
    with pytest.raises(DataError, match="missing column 'close'"):
        load_series(p)
    q = _csv(tmp_path, "10,11,9,1,1\n", "q.csv", head="open,high,low,close,volume\n")
    with pytest.raises(DataError, match="missing column 'date' or 'timestamp'"):
        load_series(q)
    with pytest.raises(DataError, match="file not found"):
        load_series(tmp_path / "nope.csv")


def test_open_outside_range_warns_not_rejects(tmp_path: Path) -> None:
    p = _csv(tmp_path, "2020-01-02,12,11,9,10,1\n")
    with pytest.warns(DataWarning, match="row 2"):
        s = load_series(p)
    assert s.open[0] == 12


def test_real_vix_warns_on_47_rows_and_loads(shared_data: Path) -> None:
    with pytest.warns(DataWarning, match="47 rows"):
        s = load_series(shared_data / "vix/VIX_1d_1990-2026_cboe.csv")
    assert len(s.ts) == 9_235


def test_real_files_load_clean(shared_data: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spy = load_series(shared_data / "daily/SPY_1d_1998-2021_lean.csv")
        minute = load_series(shared_data / "intraday/SPY_1m_2024-03-26_2025-04-02_admfpc")
    assert len(spy.ts) == 5_849 and spy.daily
    assert len(minute.ts) == sum([1_173, 8_602, 8_602, 7_429, 8_560, 8_602, 7_820, 8_993, 7_774, 8_152, 7_820,
                                  7_429, 9_811, 1_469]) and not minute.daily


def test_synthetic_same_seed_same_data_and_seed_matters() -> None:
    a, ta = synthetic.generate(5_000, seed=3, freq="5min", symbols=["X", "Y"])
    b, tb = synthetic.generate(5_000, seed=3, freq="5min", symbols=["X", "Y"])
    c, _ = synthetic.generate(5_000, seed=4, freq="5min", symbols=["X", "Y"])
    for col in ("ts", "open", "high", "low", "close", "volume", "symbol_idx"):
        assert np.array_equal(getattr(a, col), getattr(b, col))
    assert np.array_equal(a.aux["VIX"], b.aux["VIX"])
    assert np.array_equal(ta["vol_regime"], tb["vol_regime"])
    assert not np.array_equal(a.close, c.close)
    assert len(a) == 10_000 and (a.high >= np.maximum(a.open, a.close)).all()
    assert (a.low <= np.minimum(a.open, a.close)).all() and (a.low > 0).all()
    assert (np.diff(a.ts) >= 0).all()


@pytest.mark.parametrize("bars", [2, 10, 49, 50, 51])
def test_synthetic_short_series(bars: int) -> None:
    """The config allows bars >= 2: the generator must produce them (it used to fail below 50 bars)."""
    md, truth = synthetic.generate(bars, seed=1, freq="1min", symbols=["X", "Y"])
    assert len(md) == 2 * bars and len(md.aux["VIX"]) == 2 * bars
    assert len(truth["vol_regime"]) == bars and np.isfinite(md.aux["VIX"]).all()


def test_parquet_tz_aware_timestamps_and_uppercase_headers(tmp_path: Path) -> None:
    idx = pd.date_range("2021-03-01 09:30", periods=3, freq="min", tz="America/New_York")
    df = pd.DataFrame({"Timestamp": idx, "Open": [1.0, 2, 3], "High": [1.5, 2.5, 3.5], "Low": [0.5, 1.5, 2.5],
                       "Close": [1.2, 2.2, 3.2], "Volume": [10, 20, 30]})
    p = tmp_path / "m.parquet"
    df.to_parquet(p)
    s = load_series(p)
    assert not s.daily
    assert s.ts.tolist() == [pd.Timestamp("2021-03-01 14:30Z").value + k * 60_000_000_000 for k in range(3)]
    assert s.close.tolist() == [1.2, 2.2, 3.2]


def test_parquet_validation_names_file_and_row(tmp_path: Path) -> None:
    df = pd.DataFrame({"date": pd.to_datetime(["2020-01-02", "2020-01-03"]), "open": [1.0, 1.0],
                       "high": [2.0, 2.0], "low": [0.5, float("nan")], "close": [1.0, 1.0], "volume": [1, 1]})
    p = tmp_path / "bad.parquet"
    df.to_parquet(p)
    with pytest.raises(DataError, match=r"bad\.parquet: row 3: field 'low' value nan"):
        load_series(p)


def test_distinct_days_block_by_block_equal_a_full_unique() -> None:
    """periods_per_year finds the distinct days in blocks (no full-length temporaries for 10M-bar runs)."""
    from tradetrace.engine.data import NS_PER_DAY, _distinct_sorted

    rng = np.random.default_rng(4)
    for n in (1, 2, 999, 20_000):
        ts = np.sort(rng.integers(0, 400 * NS_PER_DAY, n))
        for block in (1, 7, 1000, 1 << 20):
            assert np.array_equal(_distinct_sorted(ts, NS_PER_DAY, block), np.unique(ts // NS_PER_DAY)), (n, block)


@pytest.mark.parametrize(("body", "row"), [
    ("2020-01-02,10,11,9,10,1\n2020-01-03,10,11,9,10,1\n,10,11,9,10,1\n", 4),  # last row: loaded as 1677 before
    ("2020-01-02,10,11,9,10,1\n,10,11,9,10,1\n2020-01-06,10,11,9,10,1\n", 3),  # middle: was "out of order", row 4
    (",10,11,9,10,1\n,10,11,9,10,1\n", 2),  # every one blank: a column of type null
])
def test_blank_date_is_rejected_on_its_row(tmp_path: Path, body: str, row: int) -> None:
    p = _csv(tmp_path, body)
    with pytest.raises(DataError) as info:
        load_series(p)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{p}: row {row}: field 'date' value '' is empty"), msg


def test_blank_timestamp_in_parquet_is_rejected_on_its_row(tmp_path: Path) -> None:
    df = pd.DataFrame({"timestamp": pd.to_datetime(["2020-01-02 15:00", None, "2020-01-02 15:02"], utc=True),
                       "open": [1.0] * 3, "high": [1.0] * 3, "low": [1.0] * 3, "close": [1.0] * 3})
    p = tmp_path / "n.parquet"
    df.to_parquet(p)
    with pytest.raises(DataError, match=r"n\.parquet: row 3: field 'timestamp' value '' is empty"):
        load_series(p)


@pytest.mark.parametrize(("body", "row", "value"), [
    ("01/02/2020,10,11,9,10,1\n01/03/2020,10,11,9,10,1\n", 2, "'01/02/2020'"),
    ("2020-01-02,10,11,9,10,1\nsoon,10,11,9,10,1\n", 3, "'soon'"),
    ("2020-01-02T10:00:00Z,10,11,9,10,1\n2020-01-02T10:01:00Z,10,11,9,10,1\n2020-01-02 25:00,10,11,9,10,1\n", 4,
     "'2020-01-02 25:00'"),
])
def test_unparseable_date_names_file_row_field_and_value_on_one_line(tmp_path: Path, body: str, row: int,
                                                                      value: str) -> None:
    p = _csv(tmp_path, body)
    with pytest.raises(DataError) as info:
        load_series(p)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{p}: row {row}: field 'date' value {value} is not an ISO date"), msg


def test_header_only_file_says_it_has_no_rows(tmp_path: Path) -> None:
    p = _csv(tmp_path, "")
    with pytest.raises(DataError, match=r"x\.csv: no rows") as info:
        load_series(p)
    assert "unsupported type" not in str(info.value)


def test_close_outside_range_warning_shows_the_close(tmp_path: Path) -> None:
    p = _csv(tmp_path, "2020-01-02,10,11,9,10,1\n2020-01-03,10,11,9,12.5,1\n")
    with pytest.warns(DataWarning) as record:
        load_series(p)
    (w,) = record
    assert str(w.message).startswith(f"{p}: row 3: open 10.0 or close 12.5 outside low 9.0 - high 11.0 (1 rows")


def test_load_market_errors_name_the_config_key(tmp_path: Path) -> None:
    ok = _csv(tmp_path, "2020-01-02,10,11,9,10,1\n")
    with pytest.raises(DataError, match=r"^data\.symbols\.SPY: .*nope\.csv: file not found$"):
        load_market({"SPY": tmp_path / "nope.csv"})
    with pytest.raises(DataError, match=r"^data\.aux\.VIX: .*vix\.csv: file not found$"):
        load_market({"SPY": ok}, {"VIX": tmp_path / "vix.csv"})


def test_synthetic_bad_start_says_which_argument() -> None:
    with pytest.raises(ValueError, match=r"synthetic start 'notadate' is not a day \(YYYY-MM-DD\)"):
        synthetic.generate(10, start="notadate")


def test_duplicate_column_is_a_one_line_error_naming_it(tmp_path: Path) -> None:
    """A column given twice (also as `Close` and `close`) was pyarrow's KeyError: a traceback from the CLI."""
    for head in ("date,open,high,low,close,volume,date\n", "date,open,high,low,close,Close,volume\n"):
        p = _csv(tmp_path, "2020-01-02,10,11,9,10,10,1\n", head=head)
        with pytest.raises(DataError) as info:
            load_series(p)
        msg = str(info.value)
        assert "\n" not in msg and str(p) in msg and "appears 2 times" in msg, msg


@pytest.mark.parametrize("bad", ["2020/01/03", "2020.01.03", "20200103"])
def test_date_that_only_pandas_calls_iso_is_rejected_on_its_row(tmp_path: Path, bad: str) -> None:
    """pandas' format="ISO8601" also parses these; one in a daily file turned the whole file intraday (so a
    daily VIX reached it a day late) instead of being the error the README promises for a non-ISO date."""
    p = _csv(tmp_path, f"2020-01-02,10,11,9,10,1\n{bad},10,11,9,10,1\n")
    with pytest.raises(DataError) as info:
        load_series(p)
    msg = str(info.value)
    assert "\n" not in msg and "row 3" in msg and repr(bad) in msg and "ISO" in msg, msg


def test_mixed_iso_timestamps_keep_nanoseconds_and_do_not_warn(tmp_path: Path) -> None:
    """Timestamps pyarrow leaves as text (mixed forms) go through pandas: its tz-aware values became Timestamp
    objects, whose conversion warned ("no explicit representation of timezones") and dropped nanoseconds."""
    p = _csv(tmp_path, "2020-01-02,10,11,9,10,1\n2020-01-02T14:31:00.000000001+01:00,10,11,9,10,1\n",
             head="timestamp,open,high,low,close,volume\n")  # a date, then a time: pyarrow leaves them text
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = load_series(p)
    assert s.ts.tolist() == [pd.Timestamp("2020-01-02T00:00:00Z").value,
                             pd.Timestamp("2020-01-02T13:31:00.000000001Z").value]
    assert not s.daily


def test_periods_per_year_counts_every_symbol_bar_time_whatever_their_order(tmp_path: Path) -> None:
    """Returns are per distinct bar time over all symbols (the equity curve); annualizing by the first
    symbol's bars alone undercounted them when symbols trade different hours, and depended on the order."""
    head = "timestamp,open,high,low,close,volume\n"
    days = pd.bdate_range("2021-03-01", periods=10, tz="UTC")
    day = [d + pd.Timedelta(hours=14, minutes=30 + 30 * k) for d in days for k in range(13)]  # 13 bars a day
    full = [d + pd.Timedelta(hours=h) for d in days for h in range(24)]  # 24 bars a day
    a = _csv(tmp_path, "".join(f"{t.isoformat()},10,11,9,10,1\n" for t in day), "a.csv", head)
    b = _csv(tmp_path, "".join(f"{t.isoformat()},10,11,9,10,1\n" for t in full), "b.csv", head)
    times = len(set(day) | set(full)) / len(days) * 252
    assert load_market({"A": a, "B": b}).periods_per_year() == pytest.approx(times)
    assert load_market({"B": b, "A": a}).periods_per_year() == pytest.approx(times)
    assert load_market({"A": a}).periods_per_year() == pytest.approx(13 * 252)
