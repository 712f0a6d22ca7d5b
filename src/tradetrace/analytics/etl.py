"""Events -> SQL rows: one run's traced events become its `optimization_runs` row, its `trades` and its
`event_latencies`; `write_runs` loads them idempotently.

Why from the events: the events are the record of what happened (and *why*); the SQL rows are a
summary of them for questions across many runs. Building the rows from the events (not from the
engine's in-memory state) means the end-of-run sink and `tradetrace etl` (backfill from the event
store) produce the same rows, and a test checks they equal the engine's own metrics. Everything here
works on Arrow tables with the per-type schemas of `events/types.py`: `result.events()` and the
store's `load_events(run_id)` both qualify.

Definitions: `market_regime` is the dominant label (by bars of the run's first symbol) of the `trend`
classifier, else the `vix` one, else of the first other non-volatility classifier; `volatility_regime`
that of the `volatility` classifier. A trade's regimes are the labels in effect when its position
opened / closed (as-of by seq). `avg_trade_duration` is in seconds of market time; `avg_slippage` is
the mean slippage cost per FILL; a trade's `slippage` is its fills' slippage pro rata to quantity.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tradetrace.analytics.db import Database
from tradetrace.analytics.metrics import compute_metrics
from tradetrace.events.recorder import const_str
from tradetrace.events.types import COMMON_FIELDS, PAYLOAD_FIELDS, EventType

NS_PER_DAY = 86_400_000_000_000
_TS = pa.timestamp("ns", tz="UTC")

RUN_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("correlation_id", pa.string()), ("sweep_id", pa.string()), ("run_name", pa.string()),
    ("strategy_type", pa.string()), ("strategy_version", pa.string()), ("parameters", pa.string()),
    ("run_hash", pa.string()),
    ("sharpe", pa.float64()), ("sortino", pa.float64()), ("max_drawdown", pa.float64()),
    ("total_return", pa.float64()), ("annual_return", pa.float64()), ("win_rate", pa.float64()),
    ("profit_factor", pa.float64()), ("total_trades", pa.int64()), ("avg_trade_duration", pa.float64()),
    ("avg_bars_held", pa.float64()), ("total_commission", pa.float64()), ("total_slippage", pa.float64()),
    ("avg_slippage", pa.float64()), ("final_equity", pa.float64()),
    ("market_regime", pa.string()), ("volatility_regime", pa.string()),
    ("event_count", pa.int64()), ("first_event_id", pa.string()), ("last_event_id", pa.string()),
    ("event_storage_path", pa.string()), ("status", pa.string()), ("error", pa.string()),
    ("created_at", _TS), ("completed_at", _TS),
])

TRADE_SCHEMA = pa.schema([
    ("correlation_id", pa.string()), ("close_seq", pa.int64()), ("trade_id", pa.int64()),
    ("symbol", pa.string()), ("direction", pa.string()), ("quantity", pa.float64()),
    ("entry_time", _TS), ("exit_time", _TS), ("entry_price", pa.float64()), ("exit_price", pa.float64()),
    ("pnl", pa.float64()), ("pnl_pct", pa.float64()), ("commission", pa.float64()), ("slippage", pa.float64()),
    ("bars_held", pa.int64()), ("exit_reason", pa.string()),
    ("entry_regime", pa.string()), ("entry_volatility", pa.string()),
    ("exit_regime", pa.string()), ("exit_volatility", pa.string()),
    ("entry_signal_seq", pa.int64()), ("entry_fill_seq", pa.int64()), ("exit_signal_seq", pa.int64()),
    ("exit_fill_seq", pa.int64()),
])

LATENCY_SCHEMA = pa.schema([
    ("correlation_id", pa.string()), ("measured_at", _TS), ("event_type", pa.string()),
    ("source_container", pa.string()), ("event_count", pa.int64()), ("sampled", pa.int64()),
    ("mean_us", pa.float64()), ("p50_us", pa.float64()), ("p95_us", pa.float64()), ("p99_us", pa.float64()),
    ("max_us", pa.float64()), ("queue_mean_us", pa.float64()),
])

#: Metrics stored as NULL when undefined (NaN): NaN would sort above every number in SQL.
_NULL_IF_NAN = ("sharpe", "sortino", "max_drawdown", "total_return", "annual_return", "win_rate", "profit_factor",
                "avg_trade_duration", "avg_bars_held", "avg_slippage", "final_equity")


class IncompleteEvents(ValueError):
    """The events of a run are not all there (a sampled store, or events lost): metrics would be wrong."""


@dataclass
class RunMeta:
    """What the events alone do not say about a run (from its config, or the sweep that ran it)."""

    initial_cash: float | None = None
    periods_per_year: float | None = None
    risk_free: float = 0.0
    sweep_id: str | None = None
    run_hash: str | None = None
    strategy_version: str | None = None
    event_storage_path: str | None = None
    #: Non-strategy values a sweep varied (dotted keys, e.g. `risk.stop_loss_pct`), stored in `parameters`
    #: beside the strategy's own so runs of a sweep differ visibly there.
    extra_params: dict[str, Any] = field(default_factory=dict)

    def parameters(self, strategy_params: Mapping[str, Any]) -> str:
        return json.dumps({**strategy_params, **self.extra_params}, sort_keys=True, default=str)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], **extra: Any) -> RunMeta:
        """From a run config as a dict (`RunConfig.model_dump()`); absent values are derived from the events."""
        port = config.get("portfolio") or {}
        met = config.get("metrics") or {}
        return cls(initial_cash=port.get("initial_cash"), periods_per_year=met.get("periods_per_year"),
                   risk_free=met.get("risk_free", 0.0) or 0.0, **extra)


@dataclass
class RunRecords:
    """One run's rows for the three tables."""

    correlation_id: str
    run: pa.Table
    trades: pa.Table = field(default_factory=TRADE_SCHEMA.empty_table)
    latencies: pa.Table = field(default_factory=LATENCY_SCHEMA.empty_table)

    @property
    def metrics(self) -> dict[str, Any]:
        return self.run.to_pylist()[0]


# -- splitting the events -----------------------------------------------------------------------------
def split_events(events: pa.Table | Mapping[Any, pa.Table]) -> dict[EventType, pa.Table]:
    """Per-type tables sorted by seq, from one combined table (`result.events()`) or a per-type mapping."""
    if isinstance(events, Mapping):
        return {EventType[k] if isinstance(k, str) else EventType(k): _by_seq(t) for k, t in events.items()}
    out: dict[EventType, pa.Table] = {}
    if events.num_rows == 0:
        return out
    types = pc.unique(events.column("event_type")).to_pylist()
    common = [n for n, _ in COMMON_FIELDS]
    for name in types:
        t = EventType[name]
        cols = common + [n for n, _ in PAYLOAD_FIELDS[t] if n in events.column_names]
        sub = events.filter(pc.equal(events.column("event_type"), name)).select(cols)
        out[t] = sub.sort_by("seq")
    return out


def _by_seq(table: pa.Table) -> pa.Table:
    """The table sorted by seq; as it is when it already is (a store's and a recorder's tables are), since
    sorting copies every column."""
    seq = _np(table, "seq", np.int64)
    return table if len(seq) < 2 or bool(np.all(seq[1:] > seq[:-1])) else table.sort_by("seq")


def _np(table: pa.Table | None, name: str, dtype: Any = None) -> np.ndarray:
    if table is None or table.num_rows == 0:
        return np.zeros(0, dtype=dtype or np.float64)
    col = table.column(name)
    if pa.types.is_timestamp(col.type):
        col = col.cast(pa.int64())
    arr = col.to_numpy(zero_copy_only=False)
    return arr.astype(dtype) if dtype is not None else arr


def _strings(table: pa.Table | None, name: str) -> list:
    return [] if table is None or table.num_rows == 0 else table.column(name).to_pylist()


def _dict_codes(col: pa.ChunkedArray) -> tuple[np.ndarray, list[str]]:
    """A string column as (int64 code per row, -1 for null; the distinct values the codes point into).

    Events hold strings dictionary-encoded (DICT_STRING), one dictionary per recorded chunk: unifying the
    dictionaries reads each distinct value once, where decoding the column copied every row's string."""
    if not pa.types.is_dictionary(col.type):
        col = col.dictionary_encode()
    col = col.unify_dictionaries()
    if col.num_chunks == 0:
        return np.zeros(0, dtype=np.int64), []
    names = col.chunk(0).dictionary.to_pylist()
    codes = [np.asarray(ch.indices.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64) for ch in col.chunks]
    return (codes[0] if len(codes) == 1 else np.concatenate(codes)), names


def _distinct(table: pa.Table | None, name: str) -> list:
    """A string column's distinct values, in order of first appearance."""
    if table is None or table.num_rows == 0:
        return []
    codes, names = _dict_codes(table.column(name))
    present, first = np.unique(codes, return_index=True)
    keep = present >= 0
    return [names[c] for c in present[keep][np.argsort(first[keep], kind="stable")].tolist()]


def _codes(table: pa.Table | None, name: str, values: list[str]) -> np.ndarray:
    """Each row's position of its string in `values` (-1 if absent or null), vectorized: runs have millions
    of BARs and a Python loop per row was most of a sweep run's analytics time."""
    if table is None or table.num_rows == 0:
        return np.zeros(0, dtype=np.int64)
    codes, names = _dict_codes(table.column(name))
    where = {v: k for k, v in enumerate(values)}
    to_values = np.array([where.get(n, -1) for n in names] + [-1], dtype=np.int64)  # last: null (-1)
    return to_values[codes]


def _lookup(sorted_seqs: np.ndarray, seqs: np.ndarray) -> np.ndarray:
    """Index of each seq in `sorted_seqs`, -1 where absent (or the seq is null, given as -1)."""
    if len(sorted_seqs) == 0:
        return np.full(len(seqs), -1, dtype=np.int64)
    k = np.searchsorted(sorted_seqs, seqs).clip(0, len(sorted_seqs) - 1)
    return np.where(sorted_seqs[k] == seqs, k, -1)


# -- market and equity from BAR and FILL events -----------------------------------------------------
def _periods_per_year(ts0: np.ndarray, daily: bool) -> float:
    """As `MarketData.periods_per_year`, from the first symbol's BAR times."""
    from tradetrace.engine.data import MarketData

    md = MarketData(symbols=["_"], ts=ts0, symbol_idx=np.zeros(len(ts0), dtype=np.int32), open=ts0, high=ts0,
                    low=ts0, close=ts0, volume=ts0, daily=daily)
    return md.periods_per_year()


def equity_curve(ts: np.ndarray, sym: np.ndarray, close: np.ndarray, n_symbols: int, fill_row: np.ndarray,
                 fill_sym: np.ndarray, signed: np.ndarray, price: np.ndarray, fee: np.ndarray,
                 initial: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(times, equity, gross) marked at closes, the same construction as `Portfolio.equity_curve`."""
    n = len(ts)
    cash_delta = np.zeros(n)
    qty_delta = np.zeros((n_symbols, n))
    for row, s, q, p, f in zip(fill_row.tolist(), fill_sym.tolist(), signed.tolist(), price.tolist(), fee.tolist(),
                               strict=True):
        cash_delta[row] -= q * p + f
        qty_delta[s, row] += q
    cash = initial + np.cumsum(cash_delta)
    value = np.zeros(n)
    gross = np.zeros(n)
    for s in range(n_symbols):
        pos = np.cumsum(qty_delta[s])
        px = np.where(sym == s, close, np.nan)
        if n and math.isnan(px[0]):
            rows = np.flatnonzero(sym == s)
            px[0] = close[rows[0]] if len(rows) else 0.0
        idx = np.where(~np.isnan(px), np.arange(n), 0)
        np.maximum.accumulate(idx, out=idx)
        px = px[idx]
        value += pos * px
        gross += np.abs(pos) * px
    last = np.flatnonzero(np.append(ts[1:] != ts[:-1], True)) if n else np.zeros(0, dtype=np.int64)
    return ts[last], (cash + value)[last], gross[last]


def _market_classifier(names: Iterable[str]) -> str | None:
    names = sorted(set(names) - {"volatility"})
    for pref in ("trend", "vix"):
        if pref in names:
            return pref
    return names[0] if names else None


def _null_nan(v: Any) -> Any:
    return None if isinstance(v, float) and math.isnan(v) else v


# -- the records -----------------------------------------------------------------------------------
def records_from_events(events: pa.Table | Mapping[Any, pa.Table], meta: RunMeta | None = None) -> RunRecords:
    """A run's rows from its traced events (all types; at least RUN_START, BAR, FILL, POSITION_CLOSE)."""
    meta = meta or RunMeta()
    tabs = split_events(events)
    start = tabs.get(EventType.RUN_START)
    if start is None or start.num_rows == 0:
        raise IncompleteEvents("events have no RUN_START: not a whole run")
    stored = sum(t.num_rows for t in tabs.values())
    highest = max(int(pc.max(t.column("seq")).as_py()) for t in tabs.values() if t.num_rows)
    if stored != highest + 1:
        raise IncompleteEvents(f"run {start.column('correlation_id')[0].as_py()}: {stored} events stored but seq "
                               f"reaches {highest} (sampled or lost events): metrics cannot be rebuilt from them")
    cid = start.column("correlation_id")[0].as_py()
    run_name, strategy, params_json, symbols_csv = (start.column(c)[0].as_py()
                                                    for c in ("run_name", "strategy", "params_json", "symbols"))
    bars, fills = tabs.get(EventType.BAR), tabs.get(EventType.FILL)
    closes, opens = tabs.get(EventType.POSITION_CLOSE), tabs.get(EventType.POSITION_OPEN)
    orders, signals = tabs.get(EventType.ORDER), tabs.get(EventType.SIGNAL)
    changes, end = tabs.get(EventType.REGIME_CHANGE), tabs.get(EventType.RUN_END)

    # Market rows from BARs (row order == seq order).
    symbols = [s for s in (symbols_csv or "").split(",") if s]
    for s in _distinct(bars, "symbol"):
        if s not in symbols:
            symbols.append(s)
    bar_seq = _np(bars, "seq", np.int64)
    bar_ts = _np(bars, "timestamp", np.int64)
    bar_sym = _codes(bars, "symbol", symbols).astype(np.int32)
    bar_close = _np(bars, "close", np.float64)
    rows_of = [np.flatnonzero(bar_sym == k) for k in range(len(symbols))]

    # FILLs: the bar row being handled when each was published.
    fill_seq = _np(fills, "seq", np.int64)
    fill_row = np.maximum(np.searchsorted(bar_seq, fill_seq) - 1, 0)
    fill_sym = _codes(fills, "symbol", symbols)
    fill_qty = _np(fills, "quantity", np.float64)
    signed = _np(fills, "side", np.float64) * fill_qty
    fill_price = _np(fills, "price", np.float64)
    fill_fee = _np(fills, "commission", np.float64)
    fill_slip = _np(fills, "slippage", np.float64)
    fill_cause = _np(fills, "causation_seq", np.int64)
    fill_ts = _np(fills, "timestamp", np.int64)

    initial = meta.initial_cash
    if initial is None:  # derive from the first PORTFOLIO_UPDATE: cash after the first fill
        upd = tabs.get(EventType.PORTFOLIO_UPDATE)
        initial = (float(upd.column("cash")[0].as_py()) + signed[0] * fill_price[0] + fill_fee[0]
                   if upd is not None and upd.num_rows and len(fill_seq) else 100_000.0)
    daily = bool(len(bar_ts)) and bool(np.all(bar_ts % NS_PER_DAY == 0))
    ppy = meta.periods_per_year or (_periods_per_year(bar_ts[rows_of[0]], daily) if symbols else 252.0)
    _, equity, gross = equity_curve(bar_ts, bar_sym, bar_close, len(symbols), fill_row, fill_sym, signed,
                                    fill_price, fill_fee, initial)
    pnl = _np(closes, "pnl", np.float64)
    metrics = compute_metrics(equity, gross, initial, pnl, ppy, meta.risk_free)
    total_commission = sum(_strings(fills, "commission"), 0.0)
    total_slippage = sum(_strings(fills, "slippage"), 0.0)

    # Regimes: the label of each classifier in effect at a seq, per symbol.
    ch_seq = _np(changes, "seq", np.int64)
    ch_cls, ch_sym, ch_to = _strings(changes, "classifier"), _strings(changes, "symbol"), _strings(changes, "to_label")
    classifiers = sorted(set(ch_cls))
    by_key: dict[tuple[str, str], tuple[np.ndarray, list[str]]] = {}
    for c in classifiers:
        for s in symbols:
            idx = [k for k in range(len(ch_seq)) if ch_cls[k] == c and ch_sym[k] == s]
            by_key[(c, s)] = (ch_seq[idx], [ch_to[k] for k in idx])

    def labels_at(symbol: str, seqs: np.ndarray, classifier: str | None) -> np.ndarray:
        """The label in effect at each seq (object array, None before the first change)."""
        out = np.full(len(seqs), None, dtype=object)
        if classifier is None or (classifier, symbol) not in by_key:
            return out
        cs, lab = by_key[(classifier, symbol)]
        k = np.searchsorted(cs, seqs) - 1
        have = k >= 0
        out[have] = np.asarray(lab, dtype=object)[k[have]]
        return out

    def dominant_at(symbol: str, seqs: np.ndarray, classifier: str | None) -> str | None:
        """The label in effect at most of `seqs` (ties: the greatest label), counted without a label per seq."""
        if classifier is None or (classifier, symbol) not in by_key:
            return None
        cs, lab = by_key[(classifier, symbol)]
        k = np.searchsorted(cs, seqs) - 1
        k = k[k >= 0]
        if not len(k):
            return None
        names, code = np.unique(np.asarray(lab, dtype=object), return_inverse=True)
        counts = np.bincount(code[k], minlength=len(names))
        return max((int(c), str(names[j])) for j, c in enumerate(counts) if c)[1]

    market_cls = _market_classifier(classifiers)
    vol_cls = "volatility" if "volatility" in classifiers else None
    first_sym_bars = bar_seq[rows_of[0]] if symbols else bar_seq
    market_regime = dominant_at(symbols[0], first_sym_bars, market_cls) if symbols else None
    volatility_regime = dominant_at(symbols[0], first_sym_bars, vol_cls) if symbols else None

    trades = _trades(cid, closes, opens, orders, signals, fill_seq, fill_row, fill_ts, fill_qty, fill_slip,
                     fill_cause, rows_of, symbols, labels_at, market_cls, vol_cls)
    held = trades.column("bars_held").to_numpy() if trades.num_rows else np.zeros(0)
    dur = ((_np(trades, "exit_time", np.int64) - _np(trades, "entry_time", np.int64)) / 1e9
           if trades.num_rows else np.zeros(0))

    status, error = "completed", None
    event_count = int(max((int(pc.max(t.column("seq")).as_py()) for t in tabs.values()), default=-1)) + 1
    completed_at = None
    if end is not None and end.num_rows:
        status = end.column("status")[0].as_py() or "completed"
        error = end.column("reason")[0].as_py() or None
        event_count = int(end.column("event_count")[0].as_py() or event_count)
        completed_at = end.column("created_at")[0].as_py()
    row = {
        "run_id": cid, "correlation_id": cid, "sweep_id": meta.sweep_id, "run_name": run_name,
        "strategy_type": strategy, "strategy_version": meta.strategy_version or strategy_version(strategy),
        "parameters": meta.parameters(json.loads(params_json or "{}")), "run_hash": meta.run_hash,
        "sharpe": metrics["sharpe"], "sortino": metrics["sortino"], "max_drawdown": metrics["max_drawdown"],
        "total_return": metrics["total_return"], "annual_return": metrics["annual_return"],
        "win_rate": metrics["win_rate"], "profit_factor": metrics["profit_factor"],
        "total_trades": int(metrics["trade_count"]),
        "avg_trade_duration": float(dur.mean()) if len(dur) else float("nan"),
        "avg_bars_held": float(np.mean(held)) if len(held) else float("nan"),
        "total_commission": total_commission, "total_slippage": total_slippage,
        "avg_slippage": total_slippage / len(fill_seq) if len(fill_seq) else float("nan"),
        "final_equity": metrics["final_equity"],
        "market_regime": market_regime, "volatility_regime": volatility_regime,
        "event_count": event_count, "first_event_id": f"{cid}:0", "last_event_id": f"{cid}:{event_count - 1}",
        "event_storage_path": meta.event_storage_path, "status": status, "error": error,
        "created_at": start.column("created_at")[0].as_py(), "completed_at": completed_at,
    }
    return RunRecords(cid, run_table([row]), trades, _latencies(cid, tabs, start))


def strategy_version(strategy: str | None) -> str:
    """The strategy class's `version` attribute when it has one, else the tradetrace version."""
    import tradetrace
    from tradetrace import strategies

    try:
        cls = strategies.get(strategy or "")
    except KeyError:
        return tradetrace.__version__
    return str(getattr(cls, "version", None) or tradetrace.__version__)


def run_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """optimization_runs rows -> Arrow (NaN metrics become NULL)."""
    clean = [{k: (_null_nan(v) if k in _NULL_IF_NAN else v) for k, v in r.items()} for r in rows]
    return pa.Table.from_pylist(clean, schema=RUN_SCHEMA)


def failed_run(correlation_id: str, *, strategy: str, params: Mapping[str, Any], error: str,
               run_name: str | None = None, meta: RunMeta | None = None) -> RunRecords:
    """The row of a run that failed before it produced events (e.g. a config the strategy rejects)."""
    meta = meta or RunMeta()
    row = {"run_id": correlation_id, "correlation_id": correlation_id, "sweep_id": meta.sweep_id,
           "run_name": run_name, "strategy_type": strategy, "strategy_version": meta.strategy_version,
           "parameters": meta.parameters(params), "run_hash": meta.run_hash,
           "status": "failed", "error": error, "event_count": 0}
    return RunRecords(correlation_id, run_table([row]))


def _trades(cid: str, closes: pa.Table | None, opens: pa.Table | None, orders: pa.Table | None,
            signals: pa.Table | None, fill_seq: np.ndarray, fill_row: np.ndarray, fill_ts: np.ndarray,
            fill_qty: np.ndarray, fill_slip: np.ndarray, fill_cause: np.ndarray, rows_of: list[np.ndarray],
            symbol_names: list[str], labels_at: Any, market_cls: str | None, vol_cls: str | None) -> pa.Table:
    if closes is None or closes.num_rows == 0:
        return TRADE_SCHEMA.empty_table()
    n = closes.num_rows
    c_seq = _np(closes, "seq", np.int64)
    exit_fill = _np(closes, "causation_seq", np.int64)
    entry_fill = _np(closes, "entry_seq", np.int64)
    qty = _np(closes, "quantity", np.float64)
    ef = _lookup(fill_seq, exit_fill)
    nf = _lookup(fill_seq, entry_fill)
    order_seq = _np(orders, "seq", np.int64)
    order_cause = _np(orders, "causation_seq", np.int64) if orders is not None else np.zeros(0, dtype=np.int64)
    signal_seq = _np(signals, "seq", np.int64)

    def signal_of(fill_idx: np.ndarray) -> pa.Array:
        o = _lookup(order_seq, np.where(fill_idx >= 0, fill_cause[fill_idx], -1))
        sig = np.where(o >= 0, order_cause[o] if len(order_cause) else -1, -1)
        found = _lookup(signal_seq, sig)
        return pa.array(sig, pa.int64(), mask=found < 0)

    sym = _codes(closes, "symbol", symbol_names)
    # Entry regimes: as of the trade's POSITION_OPEN (when the portfolio read them).
    open_seqs = np.full(n, -1, dtype=np.int64)
    if opens is not None and opens.num_rows:
        k = pc.index_in(closes.column("trade_id"), value_set=opens.column("trade_id").combine_chunks())
        k = k.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        open_seqs[k >= 0] = _np(opens, "seq", np.int64)[k[k >= 0]]
    entry_reg, entry_vol, exit_reg, exit_vol = (np.full(n, None, dtype=object) for _ in range(4))
    a = np.where(nf >= 0, fill_row[nf], 0) if len(fill_row) else np.zeros(n, dtype=np.int64)
    b = np.where(ef >= 0, fill_row[ef], 0) if len(fill_row) else np.zeros(n, dtype=np.int64)
    bars_held = np.zeros(n, dtype=np.int64)
    for j in np.unique(sym).tolist():  # per symbol: a trade's bars are its own symbol's rows
        m = sym == j
        s = symbol_names[j]
        for out, seqs, cls in ((entry_reg, open_seqs, market_cls), (entry_vol, open_seqs, vol_cls),
                               (exit_reg, c_seq, market_cls), (exit_vol, c_seq, vol_cls)):
            out[m] = labels_at(s, seqs[m], cls)
        rows = rows_of[j]
        bars_held[m] = np.searchsorted(rows, b[m]) - np.searchsorted(rows, a[m])
    slip = np.where(ef >= 0, fill_slip[ef] * qty / np.where(ef >= 0, fill_qty[ef], 1.0), 0.0) + np.where(
        nf >= 0, fill_slip[nf] * np.minimum(qty / np.where(nf >= 0, fill_qty[nf], 1.0), 1.0), 0.0)
    side = _np(closes, "side", np.int64)
    cols = {
        "correlation_id": const_str(cid, n), "close_seq": pa.array(c_seq),
        "trade_id": closes.column("trade_id"), "symbol": closes.column("symbol"),
        "direction": pa.array(np.where(side > 0, "long", "short"), pa.string()), "quantity": closes.column("quantity"),
        "entry_time": pa.array(np.where(nf >= 0, fill_ts[nf], 0)).cast(_TS),
        "exit_time": closes.column("timestamp"),
        "entry_price": closes.column("entry_price"), "exit_price": closes.column("exit_price"),
        "pnl": closes.column("pnl"), "pnl_pct": closes.column("pnl_pct"), "commission": closes.column("commission"),
        "slippage": pa.array(slip), "bars_held": pa.array(bars_held, pa.int64()),
        "exit_reason": closes.column("exit_reason"),
        "entry_regime": pa.array(entry_reg, pa.string()), "entry_volatility": pa.array(entry_vol, pa.string()),
        "exit_regime": pa.array(exit_reg, pa.string()), "exit_volatility": pa.array(exit_vol, pa.string()),
        "entry_signal_seq": signal_of(nf), "entry_fill_seq": pa.array(entry_fill),
        "exit_signal_seq": signal_of(ef), "exit_fill_seq": pa.array(exit_fill),
    }
    return pa.Table.from_pydict({k: cols[k] for k in TRADE_SCHEMA.names}, schema=TRADE_SCHEMA)


def _latencies(cid: str, tabs: Mapping[EventType, pa.Table], start: pa.Table) -> pa.Table:
    """Per event type and container: publish -> handled latency (us) over the events whose clocks were taken."""
    measured = start.column("created_at")[0].as_py()
    rows = []
    for t, tab in sorted(tabs.items()):
        if tab.num_rows == 0:
            continue
        codes, names = _dict_codes(tab.column("source_container"))
        emitted = _np(tab, "emitted_at", np.int64)
        rx_null = np.asarray(tab.column("received_at").is_null().to_numpy(zero_copy_only=False))
        px_null = np.asarray(tab.column("processed_at").is_null().to_numpy(zero_copy_only=False))
        received = tab.column("received_at").cast(pa.int64()).fill_null(0).to_numpy()
        processed = tab.column("processed_at").cast(pa.int64()).fill_null(0).to_numpy()
        present = np.bincount(codes[codes >= 0], minlength=len(names)) > 0  # a dictionary may hold unused values
        for j in sorted(np.flatnonzero(present).tolist(), key=names.__getitem__):
            m = codes == j
            ok = m & ~rx_null & ~px_null
            total = (processed[ok] - emitted[ok]) / 1e3
            queue = (received[ok] - emitted[ok]) / 1e3
            has = len(total) > 0
            q = np.percentile(total, [50, 95, 99]) if has else [None] * 3
            rows.append({"correlation_id": cid, "measured_at": measured, "event_type": t.name,
                         "source_container": names[j], "event_count": int(m.sum()), "sampled": int(ok.sum()),
                         "mean_us": float(total.mean()) if has else None,
                         "p50_us": _f(q[0]), "p95_us": _f(q[1]), "p99_us": _f(q[2]),
                         "max_us": float(total.max()) if has else None,
                         "queue_mean_us": float(queue.mean()) if has else None})
    return pa.Table.from_pylist(rows, schema=LATENCY_SCHEMA)


def _f(v: Any) -> float | None:
    return None if v is None else float(v)


# -- loading ---------------------------------------------------------------------------------------
def write_runs(db: Database, records: Sequence[RunRecords], *, chunk: int = 500, fresh: bool = False) -> int:
    """Load runs idempotently: each run's old rows (same correlation_id) are replaced in one transaction.

    Running the same load twice leaves the same rows. Returns the number of rows loaded. `fresh=True` says
    the caller knows no run among `records` has rows yet (a sweep's coordinator writing runs it gave new
    ids, once each): the deletes are skipped. Why: the coordinator writes on the core the sweep's workers need
    (DuckDB, 48 runs of a 40k-bar sweep in 6 writes: 242 -> 229 ms of CPU).
    """
    total = 0
    for k in range(0, len(records), chunk):
        part = records[k:k + chunk]
        ids = [r.correlation_id for r in part]
        marks = ", ".join("?" for _ in ids)
        runs = pa.concat_tables([r.run for r in part])
        trades = pa.concat_tables([r.trades for r in part])
        lats = pa.concat_tables([r.latencies for r in part])
        with db.transaction():
            for table in () if fresh else ("trades", "event_latencies", "optimization_runs"):
                db.execute(f"DELETE FROM {table} WHERE correlation_id IN ({marks})", ids)
            total += db.load("optimization_runs", runs)
            total += db.load("trades", trades)
            total += db.load("event_latencies", lats)
    return total


def write_runs_concurrently(url: str, records: Sequence[RunRecords], *, streams: int = 2) -> int:
    """`write_runs` over `streams` PostgreSQL connections at once (whole runs per stream, so each run
    still commits atomically). Why: one COPY stream is bound by one server process parsing rows
    (~0.35M trade rows/s here); two use both cores. DuckDB (one writer) falls back to one stream."""
    from concurrent.futures import ThreadPoolExecutor

    from tradetrace.analytics.db import connect, is_postgres

    if not is_postgres(url) or streams <= 1 or len(records) < 2:
        with connect(url) as db:
            return write_runs(db, records)
    groups = [records[k::streams] for k in range(streams)]
    connections = [connect(url, migrate=k == 0) for k in range(streams)]
    try:
        with ThreadPoolExecutor(streams) as pool:
            return sum(pool.map(write_runs, connections, groups))
    finally:
        for db in connections:
            db.close()
