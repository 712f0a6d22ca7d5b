"""The strategy API users write against (modelled on backtesting.py: `init` then `next`).

```python
class SmaCross(Strategy):
    name = "my_sma_cross"

    class Params(StrategyParams):
        fast: int = 10
        slow: int = 30

    def init(self):
        self.cross = self.I(lambda c: crossover(sma(c, self.p.fast), sma(c, self.p.slow)))

    def next(self, i):
        if self.cross[i] > 0:
            self.buy(reason="fast crossed above slow")
        elif self.cross[i] < 0:
            self.sell(reason="fast crossed below slow")
```

`init()` computes indicators over each symbol's whole series, causally (value at i uses data up to
i); `I()` returns them as a row-aligned list. `next(i)` runs for every market-data row in time
order, after that row's fills and stops; with several symbols, after every symbol's row of that bar
time has had its fills and stops (the portfolio is the same whichever symbol decides first). A
strategy decides a *target* per symbol (+1 long, -1 short, 0 flat) and says so with a SIGNAL;
sizing, risk and execution are the other containers' jobs. Signals are decisions: emit one when the
target changes, not on every bar.

`targets` is what the strategy holds, as far as its decisions go. A stop-loss or take-profit closes a
position without a SIGNAL; the strategy hears of it through the bus (the RISK_BREACH that closes it),
and `on_risk_exit` sets that symbol's target back to flat, so the next entry rule fires again and no
exit is signalled for a position already gone. Why the bus and not a per-bar read of the portfolio:
risk exits are rare, bars are the hot path; and a target is an intent, which a risk limit that cuts
or blocks an order does not change (re-deciding every bar would re-signal a blocked entry each bar).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from tradetrace.events.types import EventType

if TYPE_CHECKING:
    from tradetrace.engine.data import MarketData
    from tradetrace.engine.portfolio import PortfolioView
    from tradetrace.events.bus import TracedEventBus
    from tradetrace.events.event import Event


class StrategyParams(BaseModel):
    """Base for a strategy's parameters: unknown keys and wrong types are config errors (strict, as the rest of
    the config: a quoted '5' is not a number, and no infinities or NaN)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class Strategy:
    """Base class of every strategy. Subclass, set `name` and `Params`, write `init` and `next`."""

    name: ClassVar[str] = ""
    #: What kind of strategy it is (momentum, mean_reversion, breakout...): `tradetrace runs --strategy
    #: momentum` lists the runs of every strategy of that family.
    family: ClassVar[str] = ""
    Params: ClassVar[type[StrategyParams]] = StrategyParams
    container: ClassVar[str] = "strategy"

    def __init__(self, params: StrategyParams | dict[str, Any] | None = None) -> None:
        if isinstance(params, StrategyParams):
            self.p = params
        else:
            self.p = self.Params(**(params or {}))
        self.bus: TracedEventBus | None = None
        self.data: MarketData | None = None
        self.portfolio: PortfolioView | None = None
        self._symbol_of: list[int] | None = None
        self.targets: list[int] = []
        self._sym_index: dict[str, int] = {}

    def bind(self, bus: TracedEventBus, data: MarketData, portfolio: PortfolioView) -> None:
        """Attach to a run (done by the engine before `init`)."""
        self.bus = bus
        self.data = data
        self.portfolio = portfolio
        self._symbol_of = None
        self.targets = [0] * len(data.symbols)
        self._sym_index = {name: k for k, name in enumerate(data.symbols)}
        bus.subscribe(EventType.RISK_BREACH, self._on_breach)

    @property
    def symbol_of(self) -> list[int]:
        """Symbol index of every row, for strategies that read it on every bar (built on first use)."""
        if self._symbol_of is None:
            assert self.data is not None
            self._symbol_of = self.data.symbol_idx.tolist()  # a list: fastest per-bar index; small ints shared
        return self._symbol_of

    # -- to override -----------------------------------------------------------------------------
    def init(self) -> None:
        """Compute indicators (vectorized, causal)."""

    def next(self, i: int) -> None:
        """Called for every market-data row `i`, in time order, once the fills and stops of `i`'s bar time are in."""
        raise NotImplementedError

    def on_risk_exit(self, symbol: int, rule: str) -> None:
        """Risk is closing `symbol`'s whole position (`rule`: stop_loss, take_profit, end_of_data).

        Runs while that RISK_BREACH is handled, before the exit fills; for a stop, within the bar that
        hit it and before `next` sees that bar. The default makes the strategy flat for that symbol;
        override to keep more state in step.
        """
        self.targets[symbol] = 0

    def _on_breach(self, ev: Event) -> None:
        rule, sym, action = ev.payload[:3]
        if action == "close":  # "cut" / "block" only shrink an order: the target stands
            self.on_risk_exit(self._sym_index[sym], rule)

    # -- helpers ---------------------------------------------------------------------------------
    def I(self, func: Callable[..., np.ndarray], *args: Any, source: str = "close") -> Sequence:  # noqa: E743
        """Compute `func(series, *args)` on each symbol's own `source` column; row-aligned, indexable per bar.

        `source` is a bar column (open/high/low/close/volume) or an auxiliary series name. Integer
        results (signals such as `crossover`) come back as a list of ints: as fast to index as a list
        gets, and 8 bytes per bar since small ints are shared. Float results come back as a zero-copy
        memoryview (8 bytes per bar; a list of floats would take 32).
        """
        assert self.data is not None
        md = self.data
        col = md.aux[source] if source in md.aux else getattr(md, source)
        parts = []
        for s in range(len(md.symbols)):
            rows = md.rows_of(s) if len(md.symbols) > 1 else slice(None)
            values = np.asarray(func(col[rows], *args))
            if values.shape != col[rows].shape:
                raise ValueError(f"indicator {getattr(func, '__name__', func)!r} returned shape "
                                 f"{values.shape}, expected {col[rows].shape}")
            parts.append((rows, values))
        integer = all(np.issubdtype(v.dtype, np.integer) or v.dtype == bool for _, v in parts)
        if len(parts) == 1:  # one symbol: no scatter, no full-length copy
            values = parts[0][1]
            return values.tolist() if integer else memoryview(np.ascontiguousarray(values, dtype=np.float64))
        out = np.zeros(len(md), dtype=np.int64) if integer else np.full(len(md), np.nan)
        for rows, values in parts:
            out[rows] = values
        return out.tolist() if integer else memoryview(out)

    def signal(self, direction: int, *, symbol: int | None = None, strength: float = 1.0,
               reason: str = "") -> None:
        """Publish a SIGNAL: the new target for `symbol` (default: the current row's symbol)."""
        assert self.bus is not None and self.data is not None
        if direction not in (-1, 0, 1):
            raise ValueError(f"signal direction must be -1, 0 or 1, got {direction!r}")
        s = int(self.data.symbol_idx[self.bus.current_row]) if symbol is None else symbol
        self.targets[s] = direction
        self.bus.publish(EventType.SIGNAL, self.container,
                         (self.data.symbols[s], direction, float(strength), reason))

    def buy(self, **kw: Any) -> None:
        """Target long."""
        self.signal(1, **kw)

    def sell(self, **kw: Any) -> None:
        """Target short (or flat when the portfolio does not allow shorts)."""
        self.signal(-1, **kw)

    def flat(self, **kw: Any) -> None:
        """Target no position."""
        self.signal(0, **kw)
