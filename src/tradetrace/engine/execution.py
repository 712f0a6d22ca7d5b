"""Execution simulator: where an ORDER becomes a FILL.

Market orders decided on bar t fill at the open of the symbol's next bar (DESIGN.md decision 1), or
at bar t's close with `fill: close`. Stop and take-profit exits from risk arrive as orders that
already carry their trigger price and fill at once. A FILL's cause is its ORDER; for next-open fills
the BAR whose open priced it is kept in `links`.
"""

from __future__ import annotations

from tradetrace.engine.costs import CommissionModel, SlippageModel
from tradetrace.engine.data import MarketData
from tradetrace.events.bus import TracedEventBus
from tradetrace.events.event import Event
from tradetrace.events.types import EventType

_FILL = EventType.FILL


class ExecutionSimulator:
    container = "execution"

    def __init__(self, bus: TracedEventBus, market: MarketData, commission: CommissionModel,
                 slippage: SlippageModel, fill: str = "next_open") -> None:
        self.bus = bus
        self.market = market
        self.commission = commission
        self.slippage = slippage
        self.fill_at_close = fill == "close"
        self.pending: dict[int, list[Event]] = {}  # symbol index -> market orders waiting for a bar
        self._open = market.column("open")
        self._close = market.column("close")
        self._sym = market.column("symbol_idx")
        self._sym_index = {s: k for k, s in enumerate(market.symbols)}
        bus.subscribe(EventType.ORDER, self.on_order)

    def on_bar(self, i: int) -> None:
        """Hot path: one dict truth test per bar when nothing is pending."""
        if self.pending:
            orders = self.pending.pop(self._sym[i], None)
            if orders:
                price = self._open[i]
                for order in orders:
                    self._fill(order, price, [~i])

    def on_order(self, ev: Event) -> None:
        sym, _oid, _side, _qty, otype, price, _reason = ev.payload
        if otype != "market":  # stop / take-profit: price decided by risk on this bar
            self._fill(ev, price, None)
        elif self.fill_at_close:
            self._fill(ev, self._close[self.bus.current_row], None)
        else:
            self.pending.setdefault(self._sym_index[sym], []).append(ev)

    def _fill(self, order: Event, raw_price: float, links: list[int] | None) -> None:
        sym, oid, side, qty, _otype, _price, _reason = order.payload
        price = self.slippage(side, raw_price)
        fee = self.commission(qty, price)
        slip = abs(price - raw_price) * qty
        self.bus.publish(_FILL, self.container, (sym, oid, side, qty, price, fee, slip), cause=order.seq,
                         links=links)

    def cancel_all(self) -> int:
        """Drop orders still waiting for a bar (end of data); returns how many."""
        n = sum(len(v) for v in self.pending.values())
        self.pending.clear()
        return n
