"""Market data: loading, validation, alignment of several symbols, auxiliary series.

`MarketData` is columnar: one row per (time, symbol) bar, sorted by time then symbol order, with
numpy arrays for vectorized work (indicators, equity curve, event tables) and Python lists for the
per-bar hot path (indexing a list is several times faster than indexing a numpy array from Python).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

NS_PER_DAY = 86_400_000_000_000
_TIME_COLUMNS = ("timestamp", "datetime", "date", "time")
_PRICE_COLUMNS = ("open", "high", "low", "close")
#: What an ISO 8601 date or date-time looks like (before pandas parses it): YYYY-MM-DD, then optionally a time
#: (T or a space), fractional seconds and an offset.
_ISO_SHAPE = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}(:?\d{2})?)?$"


class DataError(ValueError):
    """Bad market data: the message is one line naming file, row, field and value."""


class DataWarning(UserWarning):
    """Data that is odd but known to come like that from its publisher."""


@dataclass(slots=True)
class Series:
    """One symbol's bars as loaded from its file(s)."""

    ts: np.ndarray  # int64 ns UTC
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    daily: bool  # timestamps are dates (no time of day)
    source: str


@dataclass
class MarketData:
    """Bars of one or more symbols aligned by time, plus auxiliary series aligned causally."""

    symbols: list[str]
    ts: np.ndarray  # int64 ns UTC, one per row
    symbol_idx: np.ndarray  # int32 index into symbols, one per row
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    daily: bool
    aux: dict[str, np.ndarray] = field(default_factory=dict)  # row-aligned, NaN before first value
    sources: dict[str, str] = field(default_factory=dict)
    #: Values computed from this data alone (classifier labels, by settings), shared by every run over it.
    #: Kept on the data so they travel with it: forked sweep workers inherit them, Ray workers receive them
    #: with the data, and they are dropped with it. The data must not be modified in place once used.
    derived: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.ts)

    def column(self, name: str) -> memoryview:
        """A column for per-bar code: indexing gives a Python float/int (no numpy scalar), zero-copy.

        A memoryview costs ~35 ns per index against ~18 ns for a list, but a list of floats takes four
        times the memory (32 B per value): on 10M-bar runs that is gigabytes. Code that reads a column
        on every bar keeps its own list (see Strategy.I).
        """
        arr = self.aux[name] if name in self.aux else getattr(self, name)
        return memoryview(np.ascontiguousarray(arr))

    def rows_of(self, symbol: int) -> np.ndarray:
        """Row indices of one symbol, in time order."""
        return np.flatnonzero(self.symbol_idx == symbol)

    def periods_per_year(self) -> float:
        """Bar times per year, for annualizing: 252 for daily data, observed otherwise.

        Counted over the distinct times of all symbols, the points of the equity curve whose returns are
        annualized: the first symbol's own bars undercounted them when symbols trade different hours (a
        24-hour future beside a stock), and made the figure depend on the order symbols are listed in.
        """
        if self.daily:
            return 252.0
        t = self.ts if len(self.symbols) == 1 else _distinct_sorted(self.ts, 1)  # no copy for one symbol
        if len(t) < 2:
            return 252.0
        days = _distinct_sorted(t, NS_PER_DAY)
        bars_per_day = len(t) / len(days)
        # Trading days per year: 252 for data that skips weekends, 365 for 24/7 data.
        weekdays = ((days + 3) % 7) < 5  # 1970-01-01 was a Thursday
        per_year = 252.0 if weekdays.all() else 365.0
        return bars_per_day * per_year


def _distinct_sorted(t: np.ndarray, unit: int, block: int = 1 << 20) -> np.ndarray:
    """The distinct values of sorted `t // unit`, in order: where they change, found block by block
    (no full sort, and no full-length temporaries for 10M-bar runs)."""
    parts = []
    prev = None
    for s in range(0, len(t), block):
        d = t[s:s + block] // unit
        change = np.flatnonzero(np.diff(d)) + 1
        if prev is None or d[0] != prev:
            parts.append(d[:1])
        parts.append(d[change])
        prev = d[-1]
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


def _read_table(path: Path) -> pa.Table:
    if path.suffix.lower() in (".parquet", ".pq"):
        return pq.read_table(path)
    try:
        return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
    except pa.ArrowInvalid as exc:
        raise DataError(f"{path}: cannot parse CSV: {str(exc).splitlines()[0]}") from None


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".csv", ".parquet", ".pq"))
        if not files:
            raise DataError(f"{path}: folder has no .csv or .parquet files")
        return files
    if not path.exists():
        raise DataError(f"{path}: file not found")
    return [path]


def _column(table: pa.Table, path: Path, name: str, required: bool = True) -> pa.ChunkedArray | None:
    matches = [k for k, c in enumerate(table.column_names) if c.lower().strip() == name]
    if len(matches) > 1:  # which one holds the prices? (pyarrow's own KeyError was a traceback)
        raise DataError(f"{path}: column '{name}' appears {len(matches)} times "
                        f"(columns: {', '.join(table.column_names)})")
    if matches:
        return table.column(matches[0])
    if required:
        raise DataError(f"{path}: missing column '{name}' (columns: {', '.join(table.column_names)})")
    return None


def _timestamps(col: pa.ChunkedArray, path: Path, name: str = "timestamp") -> tuple[np.ndarray, bool]:
    """Timestamps as int64 ns UTC, and whether they are plain dates.

    Blanks are rejected here, by row: a null cast to int64 becomes year 1677 (NaT), which would load
    as a bar or be reported as "out of order" on the next row.
    """
    if col.null_count:
        i = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{path}: row {i + 2}: field '{name}' value '' is empty (expected a date/time)")
    typ = col.type
    if pa.types.is_date(typ):
        return col.cast(pa.timestamp("ns")).to_numpy().astype(np.int64), True
    if pa.types.is_timestamp(typ):
        arr = col if typ.tz is None else col.cast(pa.timestamp("ns", tz="UTC"))
        ns = arr.cast(pa.timestamp("ns", tz=arr.type.tz)).to_numpy().astype("datetime64[ns]")
        vals = ns.astype(np.int64)
        return vals, bool(np.all(vals % NS_PER_DAY == 0))
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        parsed = pc.strptime(col, format="%Y-%m-%d", unit="ns", error_is_null=True)
        if parsed.null_count == 0:
            return parsed.to_numpy().astype(np.int64), True
        import pandas as pd

        shape = pc.match_substring_regex(col, _ISO_SHAPE)
        if not pc.all(shape).as_py():  # pandas' "ISO8601" also takes 2020/01/03, 2020.01.03, 20200103
            i = int(np.flatnonzero(~shape.to_numpy(zero_copy_only=False))[0])
            raise DataError(f"{path}: row {i + 2}: field '{name}' value {col[i].as_py()!r} is not an ISO date/time "
                            "(expected YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS, optionally with an offset)")
        strings = col.to_pylist()
        try:
            idx = pd.to_datetime(pd.Series(strings), utc=True, format="ISO8601")
            # Integers straight from the index: `to_numpy()` of a tz-aware column makes Timestamp objects, whose
            # conversion warns (numpy has no time zones) and drops nanoseconds.
            return pd.DatetimeIndex(idx).as_unit("ns").asi8.copy(), False
        except (ValueError, TypeError) as exc:
            i = next((i for i, s in enumerate(strings) if not _parses(s)), None)
            if i is None:  # every value parses on its own (e.g. mixed formats): pandas' first line says why
                raise DataError(f"{path}: field '{name}': {str(exc).splitlines()[0]}") from None
            raise DataError(f"{path}: row {i + 2}: field '{name}' value {strings[i]!r} is not an ISO date/time "
                            "(expected YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS, optionally with an offset)") from None
    if pa.types.is_integer(typ):
        raise DataError(f"{path}: field '{name}' is an integer column; expected ISO dates/times")
    raise DataError(f"{path}: field '{name}' has unsupported type {typ}")


def _parses(s: str) -> bool:
    """Whether one value parses as the whole column would (pandas ISO 8601, UTC, in nanosecond range).

    The cheap standard-library check runs first; pandas (slower per value) only on what it rejects.
    """
    from datetime import datetime

    import pandas as pd

    try:
        datetime.fromisoformat(s)
        pd.Timestamp(s)  # out of the ns range (years before 1677, after 2262) fails here
        return True
    except ValueError:
        pass
    try:
        pd.to_datetime(pd.Series([s]), utc=True, format="ISO8601")
        return True
    except (ValueError, TypeError):
        return False


def _floats(col: pa.ChunkedArray, path: Path, name: str) -> np.ndarray:
    try:
        return col.cast(pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        values = col.to_pylist()
        for i, v in enumerate(values):
            try:
                float(v)
            except (TypeError, ValueError):
                raise DataError(f"{path}: row {i + 2}: field '{name}' value {v!r} is not a number") from None
        raise


def load_series(path: str | Path, *, warn_open_outside: bool = True) -> Series:
    """Load one symbol from a CSV/Parquet file or a folder of parts (read in file-name order)."""
    path = Path(path)
    tables = []
    for f in _files(path):
        tables.append((f, _read_table(f)))
    parts: list[Series] = []
    for f, t in tables:
        parts.append(_series_from_table(t, f, warn_open_outside))
    if len(parts) == 1:
        return parts[0]
    daily = all(p.daily for p in parts)
    s = Series(*(np.concatenate([getattr(p, k) for p in parts]) for k in
                 ("ts", "open", "high", "low", "close", "volume")), daily=daily, source=str(path))
    bad = np.flatnonzero(np.diff(s.ts) <= 0)
    if len(bad):
        raise DataError(f"{path}: parts overlap or are out of order at "
                        f"{np.datetime64(int(s.ts[bad[0] + 1]), 'ns')}")
    return s


def _series_from_table(t: pa.Table, path: Path, warn_open_outside: bool) -> Series:
    if t.num_rows == 0:  # a header only: its columns have no type to complain about
        raise DataError(f"{path}: no rows (columns: {', '.join(t.column_names)})")
    tcol = None
    for name in _TIME_COLUMNS:
        tcol = _column(t, path, name, required=False)
        if tcol is not None:
            break
    if tcol is None:
        raise DataError(f"{path}: missing column 'date' or 'timestamp' (columns: {', '.join(t.column_names)})")
    ts, daily = _timestamps(tcol, path, name)
    cols = {n: _floats(_column(t, path, n), path, n) for n in _PRICE_COLUMNS}
    vcol = _column(t, path, "volume", required=False)
    volume = _floats(vcol, path, "volume") if vcol is not None else np.zeros(len(ts))
    validate(path, ts, cols["open"], cols["high"], cols["low"], cols["close"], volume, warn_open_outside)
    return Series(ts, cols["open"], cols["high"], cols["low"], cols["close"], volume, daily, str(path))


def validate(path: Path | str, ts: np.ndarray, o: np.ndarray, h: np.ndarray, lo: np.ndarray, c: np.ndarray,
             v: np.ndarray, warn_open_outside: bool = True) -> None:
    """Reject what no backtest should run on; warn on publisher quirks. Rows are file line numbers."""
    if len(ts) == 0:
        raise DataError(f"{path}: no rows")
    for name, arr in (("open", o), ("high", h), ("low", lo), ("close", c)):
        bad = np.flatnonzero(~np.isfinite(arr))
        if len(bad):
            raise DataError(f"{path}: row {bad[0] + 2}: field '{name}' value {arr[bad[0]]} is not a number")
        bad = np.flatnonzero(arr <= 0)
        if len(bad):
            raise DataError(f"{path}: row {bad[0] + 2}: field '{name}' value {arr[bad[0]]} is not positive")
    bad = np.flatnonzero(~np.isfinite(v) | (v < 0))
    if len(bad):
        raise DataError(f"{path}: row {bad[0] + 2}: field 'volume' value {v[bad[0]]} is negative or not a number")
    bad = np.flatnonzero(h < lo)
    if len(bad):
        r = bad[0]
        raise DataError(f"{path}: row {r + 2}: field 'high' value {h[r]} is below low {lo[r]}")
    d = np.diff(ts)
    bad = np.flatnonzero(d <= 0)
    if len(bad):
        r = bad[0] + 1
        what = "duplicate" if d[bad[0]] == 0 else "out of order"
        raise DataError(f"{path}: row {r + 2}: field 'timestamp' value "
                        f"{np.datetime64(int(ts[r]), 'ns')} is {what}")
    outside = np.flatnonzero((o > h) | (o < lo) | (c > h) | (c < lo))
    if len(outside) and warn_open_outside:
        r = outside[0]
        warnings.warn(f"{path}: row {r + 2}: open {o[r]} or close {c[r]} outside low {lo[r]} - high {h[r]} "
                      f"({len(outside)} rows in all; kept as published)", DataWarning, stacklevel=3)


def align(series: dict[str, Series], aux: dict[str, Series] | None = None) -> MarketData:
    """Merge symbols into one time-sorted row stream; attach auxiliary series causally.

    Every symbol keeps all its own bars (no forward fill): a timestamp where one symbol has no bar
    simply has fewer rows. Auxiliary series are joined as-of: a row sees the last auxiliary value
    known at its time. A daily auxiliary value joined to intraday bars becomes known only the next
    day (its close is not known during the session), which keeps it free of look-ahead.
    """
    if not series:
        raise DataError("no symbols to load")
    names = list(series)
    if len(names) == 1:  # already in time order: no merge, no copies (matters for 10M-bar runs)
        s = series[names[0]]
        md = MarketData(symbols=names, ts=s.ts, symbol_idx=np.zeros(len(s.ts), dtype=np.int32), open=s.open,
                        high=s.high, low=s.low, close=s.close, volume=s.volume, daily=s.daily,
                        sources={names[0]: s.source})
        for name, a in (aux or {}).items():
            md.aux[name] = asof(md.ts, md.daily, a.ts, a.close, a.daily)
            md.sources[name] = a.source
        return md
    ts = np.concatenate([series[n].ts for n in names])
    sym = np.concatenate([np.full(len(series[n].ts), i, dtype=np.int32) for i, n in enumerate(names)])
    order = np.lexsort((sym, ts))
    md = MarketData(
        symbols=names,
        ts=ts[order],
        symbol_idx=sym[order],
        open=np.concatenate([series[n].open for n in names])[order],
        high=np.concatenate([series[n].high for n in names])[order],
        low=np.concatenate([series[n].low for n in names])[order],
        close=np.concatenate([series[n].close for n in names])[order],
        volume=np.concatenate([series[n].volume for n in names])[order],
        daily=all(series[n].daily for n in names),
        sources={n: series[n].source for n in names},
    )
    for name, s in (aux or {}).items():
        md.aux[name] = asof(md.ts, md.daily, s.ts, s.close, s.daily)
        md.sources[name] = s.source
    return md


def asof(ts: np.ndarray, daily: bool, aux_ts: np.ndarray, aux_values: np.ndarray, aux_daily: bool) -> np.ndarray:
    """Last auxiliary value known at each of `ts` (NaN before the first)."""
    known_at = aux_ts + NS_PER_DAY if (aux_daily and not daily) else aux_ts
    pos = np.searchsorted(known_at, ts, side="right") - 1
    out = np.where(pos >= 0, aux_values[np.clip(pos, 0, None)], np.nan)
    return out.astype(np.float64)


def load_keyed(key: str, path: str | Path) -> Series:
    """`load_series` for a config entry: its errors also name the config key (`data.aux.VIX: ...`), as
    the file alone does not say which entry of a config pointed at it."""
    try:
        return load_series(path)
    except DataError as exc:
        raise DataError(f"{key}: {exc}") from None


def load_market(symbols: dict[str, str | Path], aux: dict[str, str | Path] | None = None) -> MarketData:
    """Load and align the files of a config's `data.symbols` and `data.aux`."""
    series = {name: load_keyed(f"data.symbols.{name}", p) for name, p in symbols.items()}
    aux_series = {name: load_keyed(f"data.aux.{name}", p) for name, p in (aux or {}).items()}
    return align(series, aux_series)
