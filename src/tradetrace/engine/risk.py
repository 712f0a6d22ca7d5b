"""Risk: limits on orders (cut or block) and protective exits (stop-loss, take-profit).

Limits are checked by the portfolio before it publishes an ORDER: a cut or blocked order publishes
a RISK_BREACH caused by the SIGNAL being handled. Stops are checked on every bar of a symbol that
has an open trade (read from the portfolio's state): a breach publishes RISK_BREACH (caused by the
BAR) carrying the exit price (the stop, or the open when the bar gapped through it); the portfolio
answers it with an exit ORDER, so the whole exit is on the bus and in the lineage.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tradetrace.config import RiskConfig
from tradetrace.engine.data import MarketData
from tradetrace.events.bus import TracedEventBus
from tradetrace.events.types import EventType

if TYPE_CHECKING:
    from tradetrace.engine.portfolio import Portfolio

_BREACH = EventType.RISK_BREACH


class RiskManager:
    container = "risk"

    def __init__(self, bus: TracedEventBus, market: MarketData, cfg: RiskConfig) -> None:
        self.bus = bus
        self.cfg = cfg
        self.stop = cfg.stop_loss_pct / 100.0 if cfg.stop_loss_pct else None
        self.take = cfg.take_profit_pct / 100.0 if cfg.take_profit_pct else None
        self.portfolio: Portfolio | None = None
        self._open = market.column("open")
        self._high = market.column("high")
        self._low = market.column("low")
        self._sym = market.column("symbol_idx")
        self.breaches = 0

    @property
    def watches_bars(self) -> bool:
        return self.stop is not None or self.take is not None

    def limit_order(self, symbol: str, current: float, delta: float, price: float, equity: float,
                    gross: float) -> float:
        """Return the part of `delta` the limits allow (publishing RISK_BREACH if any is cut)."""
        cfg = self.cfg
        allowed = delta
        if cfg.max_position is not None and abs(current + allowed) > cfg.max_position + 1e-12:
            cap = cfg.max_position if current + allowed > 0 else -cfg.max_position
            new = cap - current
            if (new > 0) != (allowed > 0) or abs(new) < 1e-12:
                new = 0.0 if abs(current + allowed) >= abs(current) else new
            self._breach("max_position", symbol, "block" if new == 0 else "cut", abs(current + allowed),
                         cfg.max_position, f"order {delta:+g} -> {new:+g}")
            allowed = new
        if cfg.max_gross_exposure is not None and allowed and equity > 0:
            after = gross - abs(current) * price + abs(current + allowed) * price
            if after / equity > cfg.max_gross_exposure + 1e-12 and abs(current + allowed) > abs(current):
                room = max(cfg.max_gross_exposure * equity - (gross - abs(current) * price), 0.0) / price
                target_abs = min(abs(current + allowed), room)
                sign = 1.0 if current + allowed > 0 else -1.0
                new = sign * target_abs - current
                if abs(new) < 1e-9 or (new > 0) != (allowed > 0):
                    new = 0.0
                self._breach("max_gross_exposure", symbol, "block" if new == 0 else "cut", after / equity,
                             cfg.max_gross_exposure, f"order {allowed:+g} -> {new:+g}")
                allowed = new
        return allowed

    def _breach(self, rule: str, symbol: str, action: str, value: float, limit: float, detail: str,
                exit_price: float = float("nan")) -> None:
        self.breaches += 1
        self.bus.publish(_BREACH, self.container,
                         (rule, symbol, action, float(value), float(limit), float(exit_price), detail))

    def on_bar(self, i: int) -> None:
        """Check stops of the row's symbol (registered only when stops are configured)."""
        pf = self.portfolio
        tr = pf.open_trades.get(self._sym[i]) if pf is not None else None
        if tr is None:
            return
        side, entry = tr.side, tr.entry_price
        o, h, lo = self._open[i], self._high[i], self._low[i]
        if self.stop is not None:
            level = entry * (1.0 - self.stop) if side > 0 else entry * (1.0 + self.stop)
            if (side > 0 and lo <= level) or (side < 0 and h >= level):
                gapped = (side > 0 and o <= level) or (side < 0 and o >= level)
                price = o if gapped else level
                self._breach("stop_loss", tr.symbol, "close", lo if side > 0 else h, level,
                             "gap through stop" if gapped else "", price)
                return
        if self.take is not None:
            level = entry * (1.0 + self.take) if side > 0 else entry * (1.0 - self.take)
            if (side > 0 and h >= level) or (side < 0 and lo <= level):
                gapped = (side > 0 and o >= level) or (side < 0 and o <= level)
                price = o if gapped else level
                self._breach("take_profit", tr.symbol, "close", h if side > 0 else lo, level,
                             "gap through target" if gapped else "", price)
