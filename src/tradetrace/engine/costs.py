"""Pluggable trading costs and position sizing.

A commission model is any callable `(quantity, price) -> commission`; a slippage model any callable
`(side, price) -> executed price`; a sizer any callable `(equity, price) -> quantity`. The config
builds the standard ones below; Python users may pass their own.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from tradetrace.config import CommissionConfig, SizingConfig

CommissionModel = Callable[[float, float], float]
SlippageModel = Callable[[int, float], float]
Sizer = Callable[[float, float], float]


class Commission:
    """Per share + per order + basis points of notional, with an optional minimum per order."""

    __slots__ = ("per_share", "per_order", "bps", "minimum")

    def __init__(self, per_share: float = 0.0, per_order: float = 0.0, bps: float = 0.0,
                 minimum: float = 0.0) -> None:
        self.per_share = per_share
        self.per_order = per_order
        self.bps = bps
        self.minimum = minimum

    @classmethod
    def from_config(cls, c: CommissionConfig) -> Commission:
        return cls(c.per_share, c.per_order, c.bps, c.minimum)

    def __call__(self, quantity: float, price: float) -> float:
        fee = self.per_share * quantity + self.per_order + self.bps * 1e-4 * quantity * price
        if fee > 0.0 and fee < self.minimum:
            return self.minimum
        return fee


class BpsSlippage:
    """Executed price moves against the trader by a fixed number of basis points."""

    __slots__ = ("factor",)

    def __init__(self, bps: float = 0.0) -> None:
        self.factor = bps * 1e-4

    def __call__(self, side: int, price: float) -> float:
        return price * (1.0 + self.factor) if side > 0 else price * (1.0 - self.factor)


class FixedSizer:
    __slots__ = ("quantity",)

    def __init__(self, quantity: float) -> None:
        self.quantity = quantity

    def __call__(self, equity: float, price: float) -> float:
        return self.quantity


class PercentEquitySizer:
    """Quantity worth `percent` of current equity at the decision price (floored unless fractional)."""

    __slots__ = ("fraction", "fractional")

    def __init__(self, percent: float, fractional: bool = False) -> None:
        self.fraction = percent / 100.0
        self.fractional = fractional

    def __call__(self, equity: float, price: float) -> float:
        q = max(equity, 0.0) * self.fraction / price
        return q if self.fractional else float(math.floor(q))


def make_sizer(c: SizingConfig) -> Sizer:
    if c.type == "fixed":
        return FixedSizer(c.quantity)
    return PercentEquitySizer(c.percent, c.fractional)
