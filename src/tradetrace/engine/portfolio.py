"""Portfolio: where a SIGNAL becomes an ORDER, and a FILL becomes positions, cash, trades and P&L.

On SIGNAL: the target (direction x size from the sizer) minus what is held and in flight is the
order; risk limits may cut it. On FILL: cash and position move; a fill that reduces a position
closes (part of) the open trade with a POSITION_CLOSE carrying realized P&L net of both legs'
commission; a fill that adds or reverses opens a trade with POSITION_OPEN. Every fill ends with a
PORTFOLIO_UPDATE. The equity curve is not marked per bar: it is rebuilt from the fills in one
vectorized pass after the run (`equity_curve`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tradetrace.config import PortfolioConfig
from tradetrace.engine.costs import Sizer
from tradetrace.engine.data import MarketData
from tradetrace.engine.risk import RiskManager
from tradetrace.engine.trades import TradeLog
from tradetrace.events.bus import TracedEventBus
from tradetrace.events.event import Event
from tradetrace.events.types import EventType

_ORDER = EventType.ORDER
_OPEN = EventType.POSITION_OPEN
_CLOSE = EventType.POSITION_CLOSE
_UPDATE = EventType.PORTFOLIO_UPDATE
_NAN = float("nan")
_NO_REGIMES: dict[str, str] = {}


@dataclass(slots=True)
class OpenTrade:
    trade_id: int
    symbol: str
    side: int
    quantity: float
    entry_price: float
    entry_commission: float
    entry_row: int
    entry_fill_seq: int
    entry_order_seq: int
    entry_signal_seq: int | None
    entry_regimes: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class OrderInfo:
    seq: int
    signal_seq: int | None
    reason: str


class PortfolioView:
    """Read-only view strategies may consult (position, cash); they still act only by SIGNALs."""

    def __init__(self, portfolio: Portfolio) -> None:
        self._p = portfolio

    def position(self, symbol: int | str) -> float:
        p = self._p
        s = symbol if isinstance(symbol, int) else p.market.symbols.index(symbol)
        return p.pos[s]

    @property
    def cash(self) -> float:
        return self._p.cash

    def equity(self) -> float:
        return self._p.equity_at(self._p.bus.current_row)


class Portfolio:
    container = "portfolio"

    def __init__(self, bus: TracedEventBus, market: MarketData, cfg: PortfolioConfig, sizer: Sizer,
                 risk: RiskManager, regimes: object | None = None) -> None:
        self.bus = bus
        self.market = market
        self.cfg = cfg
        self.sizer = sizer
        self.risk = risk
        self.regimes = regimes  # ClassifierSet or None: labels recorded on trades
        n = len(market.symbols)
        self.initial_cash = cfg.initial_cash
        self.cash = cfg.initial_cash
        self.pos = [0.0] * n
        self.in_flight = [0.0] * n
        self.open_trades: dict[int, OpenTrade] = {}
        self.closed = TradeLog()
        self.fills: list[tuple[int, int, float, float, float]] = []  # row, sym, signed qty, price, fee
        self.realized = 0.0
        self.commission_paid = 0.0
        self.slippage_paid = 0.0
        self._orders: dict[int, OrderInfo] = {}
        self._next_order = 1
        self._next_trade = 1
        self._sym_index = {s: k for k, s in enumerate(market.symbols)}
        self._close = market.column("close")
        # Row index of each symbol; one symbol owns every row (no index: 8 bytes per bar saved).
        self._rows = [market.rows_of(k) for k in range(n)] if n > 1 else None
        self._ts = market.ts
        self._needs_equity = not hasattr(sizer, "quantity") or risk.cfg.max_gross_exposure is not None
        bus.subscribe(EventType.SIGNAL, self.on_signal)
        bus.subscribe(EventType.FILL, self.on_fill)
        bus.subscribe(EventType.RISK_BREACH, self.on_breach)

    # -- valuation -------------------------------------------------------------------------------
    def last_price(self, s: int, row: int) -> float:
        """Close of symbol s at `row`'s bar time or before (its entry price if it has no bar yet).

        Several symbols: a symbol whose row of this time comes after `row` counts at this time's close too.
        Decisions run once every row of their time is in (see `TracedEventBus.subscribe_decisions`), so equity,
        and with it percent sizing, is the same whatever the symbols' order.
        """
        if self._rows is None:
            return self._close[row]
        return self._close_by(s, self._time_last(row))

    def _time_last(self, row: int) -> int:
        """Last row of `row`'s bar time: the bus knows it for the rows it is running (no search, per signal)."""
        if row == self.bus.current_row:
            return self.bus._time_last
        ts = self._ts
        return int(np.searchsorted(ts, ts[row], side="right")) - 1

    def _close_by(self, s: int, last: int) -> float:
        """Close of symbol s at its last row up to row `last` (several symbols)."""
        rows = self._rows[s]
        k = int(np.searchsorted(rows, last, side="right")) - 1
        if k >= 0:
            return self._close[rows[k]]
        tr = self.open_trades.get(s)
        return tr.entry_price if tr else _NAN

    def _pricer(self, row: int) -> Callable[[int], float]:
        """s -> `last_price(s, row)`, with the bar time looked up once for all symbols (per signal and fill)."""
        if self._rows is None:
            close = self._close[row]
            return lambda _s: close
        last = self._time_last(row)
        return lambda s: self._close_by(s, last)

    def equity_at(self, row: int) -> float:
        px = self._pricer(row)
        eq = self.cash
        for s, q in enumerate(self.pos):
            if q:
                eq += q * px(s)
        return eq

    def gross_at(self, row: int) -> float:
        px = self._pricer(row)
        return sum(abs(q) * px(s) for s, q in enumerate(self.pos) if q)

    def _committed_gross(self, row: int) -> float:
        """Gross exposure of positions plus orders not yet filled, for the gross-exposure limit.

        Why not `gross_at`: with next-open fills, orders decided on the same bar time for other symbols are
        still in flight, and a limit that ignored them let every symbol through (three 50% entries on one day
        under a 1.0 cap made 150%). `limit_order` also takes this symbol as held + in flight, so both agree.
        """
        px = self._pricer(row)
        flight = self.in_flight
        return sum(abs(q + flight[s]) * px(s) for s, q in enumerate(self.pos) if q + flight[s])

    # -- SIGNAL -> ORDER -------------------------------------------------------------------------
    def on_signal(self, ev: Event) -> None:
        sym, direction, _strength, reason = ev.payload
        s = self._sym_index[sym]
        if direction < 0 and not self.cfg.allow_short:
            direction = 0
        row = self.bus.current_row
        price = self.last_price(s, row)
        equity = self.equity_at(row) if self._needs_equity else 0.0
        target = direction * self.sizer(equity, price) if direction else 0.0
        held = self.pos[s] + self.in_flight[s]
        delta = target - held
        if abs(delta) < 1e-12:
            return
        if self.risk.cfg.max_position is not None or self.risk.cfg.max_gross_exposure is not None:
            delta = self.risk.limit_order(sym, held, delta, price, equity, self._committed_gross(row))
            if abs(delta) < 1e-12:
                return
        self._order(s, sym, delta, "market", _NAN, reason, ev.seq)

    def on_breach(self, ev: Event) -> None:
        rule, sym, action, _value, _limit, exit_price, _detail = ev.payload
        if action != "close":
            return
        s = self._sym_index[sym]
        held = self.pos[s]
        if held:
            otype = {"stop_loss": "stop", "take_profit": "limit"}.get(rule, "exit")
            self._order(s, sym, -held, otype, exit_price, rule, None)

    def _order(self, s: int, sym: str, delta: float, otype: str, price: float, reason: str,
               signal_seq: int | None) -> None:
        oid = self._next_order
        self._next_order += 1
        self.in_flight[s] += delta
        side = 1 if delta > 0 else -1
        ev = self.bus.publish(_ORDER, self.container, (sym, oid, side, abs(delta), otype, price, reason))
        self._orders[oid] = OrderInfo(ev.seq, signal_seq, reason)

    # -- FILL -> positions, trades ---------------------------------------------------------------
    def on_fill(self, ev: Event) -> None:
        sym, oid, side, qty, price, fee, slip = ev.payload
        s = self._sym_index[sym]
        signed = side * qty
        row = self.bus.current_row
        order = self._orders.pop(oid)
        self.in_flight[s] -= signed
        self.cash -= signed * price + fee
        self.commission_paid += fee
        self.slippage_paid += slip
        self.fills.append((row, s, signed, price, fee))
        cur = self.pos[s]
        remaining = qty
        if cur and (cur > 0) != (side > 0):
            tr = self.open_trades[s]
            close_qty = min(qty, abs(cur))
            exit_fee = fee * close_qty / qty
            self._close_trade(tr, s, close_qty, price, exit_fee, row, ev, order)
            remaining = qty - close_qty
        if remaining > 1e-12:
            open_fee = fee * remaining / qty
            tr = self.open_trades.get(s)
            if tr is None:
                tr = OpenTrade(self._next_trade, sym, side, remaining, price, open_fee, row, ev.seq, order.seq,
                               order.signal_seq, self._regimes(s))
                self._next_trade += 1
                self.open_trades[s] = tr
                self.bus.publish(_OPEN, self.container, (sym, tr.trade_id, side, remaining, price))
            else:  # adding to a position: average the entry
                total = tr.quantity + remaining
                tr.entry_price = (tr.entry_price * tr.quantity + price * remaining) / total
                tr.quantity = total
                tr.entry_commission += open_fee
        self.pos[s] = cur + signed
        if abs(self.pos[s]) < 1e-12:
            self.pos[s] = 0.0
        equity = self.equity_at(row)
        self.bus.publish(_UPDATE, self.container, (self.cash, equity, self.gross_at(row), self.realized,
                                                   equity - self.initial_cash - self.realized))

    def _close_trade(self, tr: OpenTrade, s: int, qty: float, price: float, exit_fee: float, row: int,
                     fill: Event, order: OrderInfo) -> None:
        share = qty / tr.quantity
        entry_fee = tr.entry_commission * share
        gross = (price - tr.entry_price) * qty * tr.side
        pnl = gross - entry_fee - exit_fee
        self.realized += pnl
        notional = tr.entry_price * qty
        pnl_pct = pnl / notional if notional else _NAN
        close_ev = self.bus.publish(
            _CLOSE, self.container,
            (tr.symbol, tr.trade_id, tr.side, qty, tr.entry_price, price, pnl, pnl_pct, entry_fee + exit_fee,
             tr.entry_fill_seq, order.reason))
        md = self.market
        self.closed.append(
            trade_id=tr.trade_id, symbol=tr.symbol, side="long" if tr.side > 0 else "short",
            quantity=qty, entry_time=int(md.ts[tr.entry_row]), entry_price=tr.entry_price,
            exit_time=int(md.ts[row]), exit_price=price, pnl=pnl, pnl_pct=pnl_pct,
            commission=entry_fee + exit_fee, bars_held=self._bars_between(s, tr.entry_row, row),
            exit_reason=order.reason,
            entry_signal_seq=tr.entry_signal_seq, entry_order_seq=tr.entry_order_seq,
            entry_fill_seq=tr.entry_fill_seq, exit_signal_seq=order.signal_seq,
            exit_order_seq=order.seq, exit_fill_seq=fill.seq, close_seq=close_ev.seq,
            entry_regimes=tr.entry_regimes, exit_regimes=self._regimes(s),
        )
        tr.entry_commission -= entry_fee
        tr.quantity -= qty
        if tr.quantity <= 1e-12:
            del self.open_trades[s]

    def _bars_between(self, s: int, a: int, b: int) -> int:
        if self._rows is None:
            return b - a
        rows = self._rows[s]
        return int(np.searchsorted(rows, b) - np.searchsorted(rows, a))

    def _regimes(self, s: int) -> dict[str, str]:
        """A fresh dict of the symbol's regimes, or one shared empty dict (never mutated) without classifiers."""
        return self.regimes.labels_for(s) if self.regimes is not None else _NO_REGIMES

    # -- after the run ---------------------------------------------------------------------------
    def equity_curve(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(times, equity, gross exposure) at every distinct bar time, marked at closes."""
        md = self.market
        n = len(md)
        if len(md.symbols) == 1:
            return self._equity_curve_one()
        cash_delta = np.zeros(n)
        qty_delta = np.zeros((len(md.symbols), n))
        for row, s, signed, price, fee in self.fills:
            cash_delta[row] -= signed * price + fee
            qty_delta[s, row] += signed
        cash = self.cfg.initial_cash + np.cumsum(cash_delta)
        value = np.zeros(n)
        gross = np.zeros(n)
        for s in range(len(md.symbols)):
            pos = np.cumsum(qty_delta[s])
            px = np.where(md.symbol_idx == s, md.close, np.nan)
            if math.isnan(px[0]):
                first = md.rows_of(s)
                px[0] = md.close[first[0]] if len(first) else 0.0
            idx = np.where(~np.isnan(px), np.arange(n), 0)
            np.maximum.accumulate(idx, out=idx)
            px = px[idx]
            value += pos * px
            gross += np.abs(pos) * px
        last = np.flatnonzero(np.append(md.ts[1:] != md.ts[:-1], True))  # last row of each time
        return md.ts[last], (cash + value)[last], gross[last]

    def _equity_curve_one(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One symbol: every row is a distinct time; built in place (a few arrays, for 10M-bar runs)."""
        md = self.market
        n = len(md)
        cash = np.zeros(n)
        pos = np.zeros(n)
        for row, _s, signed, price, fee in self.fills:
            cash[row] -= signed * price + fee
            pos[row] += signed
        np.cumsum(cash, out=cash)
        cash += self.cfg.initial_cash
        np.cumsum(pos, out=pos)
        np.multiply(pos, md.close, out=pos)  # position value
        cash += pos  # equity
        np.abs(pos, out=pos)  # gross exposure
        return md.ts, cash, pos

    def open_positions(self, row: int) -> list[dict]:
        """Positions still open after `row` (the last bar run), marked at their last close: `unrealized_pnl` is net
        of the entry commission, as a closed trade's pnl is net of both legs' (their sum is equity - cash at
        start - realized)."""
        out = []
        for s, t in self.open_trades.items():
            mark = self.last_price(s, row)
            out.append({"symbol": t.symbol, "side": "long" if t.side > 0 else "short", "quantity": t.quantity,
                        "entry_price": t.entry_price, "entry_time": int(self.market.ts[t.entry_row]),
                        "mark_price": mark,
                        "unrealized_pnl": (mark - t.entry_price) * t.quantity * t.side - t.entry_commission,
                        "entry_signal_seq": t.entry_signal_seq, "entry_fill_seq": t.entry_fill_seq})
        return out
