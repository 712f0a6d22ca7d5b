"""BacktestResult: what a run returns: ids, metrics, trades, equity, and its traced events."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from tradetrace.engine.trades import OPTIONAL_INT_FIELDS, TradeLog
from tradetrace.events.event import make_event_id, parse_event_id
from tradetrace.events.lineage import Lineage, to_traced, walk_back
from tradetrace.events.types import EventType, event_schema
from tradetrace.store.layout import start_date
from tradetrace.store.reader import concat_by_seq

_TRADE_ID_COLS = ("entry_signal", "entry_order", "entry_fill", "exit_signal", "exit_order", "exit_fill", "close")


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, np.generic):
        return _clean(v.item())
    return v


@dataclass
class BacktestResult:
    run_id: str
    name: str
    status: str  # completed | failed
    strategy: str
    params: dict[str, Any]
    metrics: dict[str, float]
    final_equity: float
    initial_cash: float
    equity_curve: tuple[np.ndarray, np.ndarray]  # (market time ns, equity): `equity` builds the Series
    trade_log: TradeLog
    open_positions: list[dict]
    event_count: int
    counts: dict[str, int]
    elapsed_s: float
    bars: int
    error: str | None = None
    realized_pnl: float = 0.0  # closed trades' P&L, net of commission
    started_wall_ns: int = 0  # the run's wall-clock start: its events' partition date in the store
    sweep_id: str | None = None
    recorder: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def equity(self) -> pd.Series:
        """Mark-to-market equity per bar time (UTC index). Built on first access: its time index is a copy
        of the market times, which a 10M-bar run should not pay for unless it is looked at."""
        times, values = self.equity_curve
        return pd.Series(values, index=pd.DatetimeIndex(times.view("datetime64[ns]"), dtype="datetime64[ns, UTC]"),
                         name="equity", copy=False)

    def _eid(self, seq: int | None) -> str | None:
        """An event id, or None where there is no event to point to (no seq, or tracing was off)."""
        return None if seq is None or self.recorder is None else make_event_id(self.run_id, seq)

    # -- trades ----------------------------------------------------------------------------------
    @property
    def closed_trades(self) -> list[dict]:
        """Closed trades as one dict each (built on request; `trades` is the columnar view)."""
        return self.trade_log.to_dicts()

    @property
    def trades(self) -> pd.DataFrame:
        """Closed trades, one row each, with the event ids of their lineage."""
        log = self.trade_log
        cols = ["trade_id", "symbol", "side", "quantity", "entry_time", "entry_price", "exit_time",
                "exit_price", "pnl", "pnl_pct", "commission", "bars_held", "exit_reason"]
        df = pd.DataFrame({c: log.column(c) for c in cols})
        for c in ("entry_time", "exit_time"):
            df[c] = pd.to_datetime(np.asarray(df[c], dtype=np.int64), utc=True)
        prefix = f"{self.run_id}:"
        for k in _TRADE_ID_COLS:
            name = f"{k}_seq"
            if name in OPTIONAL_INT_FIELDS:
                df[f"{k}_id"] = [None if v is None else prefix + str(v) for v in log.optional_seq(name)]
            else:
                df[f"{k}_id"] = [prefix + str(v) for v in log.column(name).tolist()]
        for side in ("entry", "exit"):
            regimes = log.column(f"{side}_regimes")
            for name in sorted({n for r in regimes for n in r}):
                df[f"{side}_{name}"] = [r.get(name) for r in regimes]
        return df

    @property
    def unrealized_pnl(self) -> float:
        """P&L of the positions still open at the end, marked at the last close and net of their entry
        commission: final_equity = initial_cash + realized_pnl + unrealized_pnl."""
        return self.final_equity - self.initial_cash - self.realized_pnl

    def trades_json(self) -> list[dict]:
        out = []
        for t in self.trade_log.to_dicts():
            out.append({
                "symbol": t["symbol"], "side": t["side"], "quantity": t["quantity"],
                "entry_time": pd.Timestamp(t["entry_time"], tz="UTC").isoformat(),
                "entry_price": t["entry_price"],
                "exit_time": pd.Timestamp(t["exit_time"], tz="UTC").isoformat(),
                "exit_price": t["exit_price"], "pnl": t["pnl"],
                "entry_event_id": self._eid(t["entry_fill_seq"]),
                "exit_event_id": self._eid(t["exit_fill_seq"]),
                "entry_signal_id": self._eid(t["entry_signal_seq"]),
                "exit_signal_id": self._eid(t["exit_signal_seq"]),
                "close_event_id": self._eid(t["close_seq"]),
            })
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "name": self.name, "status": self.status, "error": self.error,
            "strategy": self.strategy, "params": self.params,
            "metrics": {k: _clean(v) for k, v in self.metrics.items()},
            "final_equity": _clean(self.final_equity), "realized_pnl": _clean(self.realized_pnl),
            "unrealized_pnl": _clean(self.unrealized_pnl), "event_count": self.event_count, "bars": self.bars,
            "trades": self.trades_json(),
            "open_positions": [{
                "symbol": p["symbol"], "side": p["side"], "quantity": p["quantity"],
                "entry_time": pd.Timestamp(p["entry_time"], tz="UTC").isoformat(), "entry_price": p["entry_price"],
                "mark_price": _clean(p["mark_price"]), "unrealized_pnl": _clean(p["unrealized_pnl"]),
                "entry_event_id": self._eid(p["entry_fill_seq"]), "entry_signal_id": self._eid(p["entry_signal_seq"]),
            } for p in self.open_positions],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), default=str)

    # -- events ----------------------------------------------------------------------------------
    def _tables(self) -> dict[EventType, pa.Table]:
        """Per-type event tables from wherever the run recorded them (memory or the event store)."""
        if self.recorder is None or not hasattr(self.recorder, "tables"):
            raise RuntimeError(f"run {self.run_id} recorded no readable events (tracing was off)")
        return self.recorder.tables()

    def events(self, types: list[str] | None = None) -> pa.Table:
        """Traced events as one Arrow table sorted by seq (payload columns of absent types are null; string
        columns dictionary-encoded, as the event store's `load_events` returns them)."""
        tabs = self._tables()
        unknown = [n for n in types or () if n not in EventType.__members__]
        if unknown:
            raise ValueError(f"unknown event type {unknown[0]!r} (known: {', '.join(EventType.__members__)})")
        wanted = {t: tab for t, tab in tabs.items() if types is None or t.name in types}
        if not wanted:  # none recorded: an empty table with the requested types' columns
            if not types:
                return pa.table({})
            wanted = {EventType[n]: event_schema(EventType[n]).empty_table() for n in types}
        return concat_by_seq(wanted)

    def events_df(self, types: list[str] | None = None) -> pd.DataFrame:
        return self.events(types).to_pandas()

    def _row(self, seq: int) -> pa.Table | None:
        if self.recorder is None:
            raise RuntimeError(f"run {self.run_id} recorded no readable events (tracing was off)")
        return self.recorder.lookup(seq)

    def _seq(self, event_id: str | int) -> int:
        if isinstance(event_id, int):
            return event_id
        run, seq = parse_event_id(event_id)
        if run != self.run_id:
            raise KeyError(f"event {event_id} belongs to run {run}, not {self.run_id}")
        return seq

    def event(self, event_id: str | int):
        """One event (by `<run>:<seq>` or seq) as a TracedEvent."""
        row = self._row(self._seq(event_id))
        if row is None:
            raise KeyError(f"no event {event_id} in run {self.run_id}")
        return to_traced(row, self._run_date())

    def trace(self, event_id: str | int) -> Lineage:
        """The chain from an event (a FILL, a POSITION_CLOSE, ...) back to its SIGNAL and BAR."""
        return walk_back(self._row, self._seq(event_id), run_date=self._run_date())

    def _run_date(self) -> str | None:
        return start_date(self.started_wall_ns) if self.started_wall_ns else None
