"""Built-in strategies: momentum (MA crossover), mean reversion (z-score, RSI), breakout (Donchian).

Each precomputes its indicators in `init()` and keeps `next()` to a few comparisons per bar: this
is the hot path of every backtest.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tradetrace.strategies import indicators as ind
from tradetrace.strategies.base import Strategy, StrategyParams


class CrossoverParams(StrategyParams):
    fast: int = Field(10, ge=1, description="fast moving-average period (bars)")
    slow: int = Field(30, ge=2, description="slow moving-average period (bars)")
    ma: Literal["sma", "ema"] = Field("sma", description="moving-average kind")
    allow_short: bool = Field(True, description="go short on a cross down (else go flat)")

    @model_validator(mode="after")
    def _fast_below_slow(self) -> CrossoverParams:
        if self.fast >= self.slow:
            raise ValueError(f"fast ({self.fast}) must be below slow ({self.slow})")
        return self


class MovingAverageCrossover(Strategy):
    """Momentum: long when the fast MA crosses above the slow MA, short (or flat) when below."""

    name = "sma_crossover"
    family = "momentum"
    Params = CrossoverParams

    def init(self) -> None:
        f = ind.ema if self.p.ma == "ema" else ind.sma
        fast, slow = self.p.fast, self.p.slow
        self.cross = self.I(lambda c: ind.crossover(f(c, fast), f(c, slow)))
        self.down = -1 if self.p.allow_short else 0
        self.up_reason = f"{self.p.ma}{fast} crossed above {self.p.ma}{slow}"
        self.down_reason = f"{self.p.ma}{fast} crossed below {self.p.ma}{slow}"

    def next(self, i: int) -> None:
        x = self.cross[i]
        if x:  # a cross is rare: the target check costs nothing on other bars
            d = 1 if x > 0 else self.down
            s = self.symbol_of[i]
            if d != self.targets[s]:  # e.g. flat after a stop: no exit signal to send
                self.signal(d, symbol=s, reason=self.up_reason if x > 0 else self.down_reason)


class EmaCrossover(MovingAverageCrossover):
    """The same crossover with exponential averages by default."""

    name = "ema_crossover"

    class Params(CrossoverParams):
        ma: Literal["sma", "ema"] = "ema"


class ZScoreParams(StrategyParams):
    window: int = Field(20, ge=2, description="lookback for mean and std (bars)")
    entry: float = Field(2.0, gt=0, description="enter when |z| exceeds this")
    exit: float = Field(0.5, ge=0, description="exit when |z| falls below this")
    allow_short: bool = True

    @model_validator(mode="after")
    def _exit_below_entry(self) -> ZScoreParams:
        if self.exit >= self.entry:
            raise ValueError(f"exit ({self.exit}) must be below entry ({self.entry})")
        return self


class ZScoreReversion(Strategy):
    """Mean reversion: buy when price is `entry` std below its mean, sell it back near the mean."""

    name = "zscore_reversion"
    family = "mean_reversion"
    Params = ZScoreParams

    def init(self) -> None:
        self.z = self.I(ind.zscore, self.p.window)

    def next(self, i: int) -> None:
        z = self.z[i]
        if z != z:  # NaN during warm-up
            return
        s = self.symbol_of[i]
        t = self.targets[s]
        p = self.p
        if t == 0:
            if z < -p.entry:
                self.signal(1, strength=-z, reason=f"z {z:.2f} < -{p.entry}")
            elif z > p.entry and p.allow_short:
                self.signal(-1, strength=z, reason=f"z {z:.2f} > {p.entry}")
        elif (t > 0 and z > -p.exit) or (t < 0 and z < p.exit):
            self.signal(0, reason=f"z {z:.2f} back within {p.exit}")


class RsiParams(StrategyParams):
    period: int = Field(14, ge=2)
    oversold: float = Field(30.0, gt=0, lt=100)
    overbought: float = Field(70.0, gt=0, lt=100)
    exit_level: float = Field(50.0, gt=0, lt=100, description="flatten when RSI crosses back here")
    allow_short: bool = True

    @model_validator(mode="after")
    def _levels_in_order(self) -> RsiParams:
        if not self.oversold < self.exit_level < self.overbought:
            raise ValueError(f"levels must be ordered oversold ({self.oversold}) < exit_level ({self.exit_level}) "
                             f"< overbought ({self.overbought})")
        return self


class RsiReversion(Strategy):
    """Mean reversion on Wilder's RSI: long when oversold, short when overbought, exit at the middle."""

    name = "rsi_reversion"
    family = "mean_reversion"
    Params = RsiParams

    def init(self) -> None:
        self.rsi = self.I(ind.rsi, self.p.period)

    def next(self, i: int) -> None:
        r = self.rsi[i]
        if r != r:
            return
        s = self.symbol_of[i]
        t = self.targets[s]
        p = self.p
        if t == 0:
            if r < p.oversold:
                self.signal(1, reason=f"rsi {r:.1f} < {p.oversold}")
            elif r > p.overbought and p.allow_short:
                self.signal(-1, reason=f"rsi {r:.1f} > {p.overbought}")
        elif (t > 0 and r >= p.exit_level) or (t < 0 and r <= p.exit_level):
            self.signal(0, reason=f"rsi {r:.1f} back to {p.exit_level}")


class DonchianParams(StrategyParams):
    entry: int = Field(20, ge=2, description="breakout channel (bars, excluding the current bar)")
    exit: int = Field(10, ge=1, description="exit channel (bars)")
    allow_short: bool = True


class DonchianBreakout(Strategy):
    """Breakout: long above the highest high of `entry` bars, exit below the `exit`-bar low."""

    name = "donchian_breakout"
    family = "breakout"
    Params = DonchianParams

    def init(self) -> None:
        n, m = self.p.entry, self.p.exit
        self.upper = self.I(ind.highest, n, source="high")
        self.lower = self.I(ind.lowest, n, source="low")
        self.exit_low = self.I(ind.lowest, m, source="low")
        self.exit_high = self.I(ind.highest, m, source="high")
        self.close = self.data.column("close")

    def next(self, i: int) -> None:
        up = self.upper[i]
        if up != up:
            return
        c = self.close[i]
        s = self.symbol_of[i]
        t = self.targets[s]
        if t <= 0 and c > up:
            self.signal(1, reason=f"close {c} above {self.p.entry}-bar high {up}")
        elif t >= 0 and c < self.lower[i] and self.p.allow_short:
            self.signal(-1, reason=f"close {c} below {self.p.entry}-bar low {self.lower[i]}")
        elif t > 0 and c < self.exit_low[i]:
            self.signal(0, reason=f"close {c} below {self.p.exit}-bar low")
        elif t < 0 and c > self.exit_high[i]:
            self.signal(0, reason=f"close {c} above {self.p.exit}-bar high")


BUILTIN: tuple[type[Strategy], ...] = (MovingAverageCrossover, EmaCrossover, ZScoreReversion, RsiReversion,
                                      DonchianBreakout)
