"""Closed trades, kept columnar.

Why: a long run closes hundreds of thousands of trades; a dict per trade costs ~1.6 KB (half a gigabyte
for a 10M-event run), typed columns cost ~8 bytes per numeric field. Readers get the columns (for the
trades DataFrame, metrics, JSON) or, on request, one dict per trade.
"""

from __future__ import annotations

from array import array
from typing import Any

import numpy as np

FLOAT_FIELDS = ("quantity", "entry_price", "exit_price", "pnl", "pnl_pct", "commission")
INT_FIELDS = ("trade_id", "entry_time", "exit_time", "bars_held", "entry_order_seq", "entry_fill_seq",
              "exit_order_seq", "exit_fill_seq", "close_seq")
OPTIONAL_INT_FIELDS = ("entry_signal_seq", "exit_signal_seq")  # None when a stop, not a signal, caused it
TEXT_FIELDS = ("symbol", "side", "exit_reason")
OBJECT_FIELDS = ("entry_regimes", "exit_regimes")
FIELDS = ("trade_id", "symbol", "side", "quantity", "entry_time", "entry_price", "exit_time", "exit_price", "pnl",
          "pnl_pct", "commission", "bars_held", "exit_reason", "entry_signal_seq", "entry_order_seq",
          "entry_fill_seq", "exit_signal_seq", "exit_order_seq", "exit_fill_seq", "close_seq", "entry_regimes",
          "exit_regimes")
_NONE = -1  # stored for a missing optional seq


class TradeLog:
    """Append-only columns of closed trades (one row per POSITION_CLOSE)."""

    def __init__(self) -> None:
        self._cols: dict[str, Any] = {f: array("d") for f in FLOAT_FIELDS}
        self._cols.update({f: array("q") for f in INT_FIELDS + OPTIONAL_INT_FIELDS})
        self._cols.update({f: [] for f in TEXT_FIELDS + OBJECT_FIELDS})

    def append(self, **trade: Any) -> None:
        for f in OPTIONAL_INT_FIELDS:
            v = trade[f]
            self._cols[f].append(_NONE if v is None else v)
        for f in FLOAT_FIELDS + INT_FIELDS + TEXT_FIELDS + OBJECT_FIELDS:
            self._cols[f].append(trade[f])

    def __len__(self) -> int:
        return len(self._cols["trade_id"])

    def __bool__(self) -> bool:
        return len(self) > 0

    def column(self, name: str) -> np.ndarray | list:
        """One field for every trade: numpy for numbers (missing optional seqs as -1), a list otherwise."""
        c = self._cols[name]
        if isinstance(c, array):
            return np.frombuffer(c, dtype=np.float64 if c.typecode == "d" else np.int64)
        return c

    def optional_seq(self, name: str) -> list[int | None]:
        return [None if v == _NONE else v for v in self._cols[name]]

    def row(self, k: int) -> dict[str, Any]:
        out = {}
        for f in FIELDS:
            v = self._cols[f][k]
            out[f] = None if f in OPTIONAL_INT_FIELDS and v == _NONE else v
        return out

    def to_dicts(self) -> list[dict[str, Any]]:
        return [self.row(k) for k in range(len(self))]
