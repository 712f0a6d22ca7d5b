"""Strategies: where a BAR becomes a SIGNAL. `registry` maps config names to classes."""

from __future__ import annotations

from tradetrace.strategies.base import Strategy, StrategyParams

_REGISTRY: dict[str, type[Strategy]] = {}
_builtin_loaded = False


def register(cls: type[Strategy]) -> type[Strategy]:
    """Make a strategy class usable from configs by its `name` (usable as a decorator)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no `name`")
    _REGISTRY[cls.name] = cls
    return cls


def get(name: str) -> type[Strategy]:
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown strategy {name!r} (known: {', '.join(sorted(_REGISTRY))})") from None


def names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def family(name: str) -> list[str]:
    """The registered strategies of a family (`momentum`: sma_crossover, ema_crossover), sorted; [] if none."""
    _load_builtin()
    return sorted(n for n, cls in _REGISTRY.items() if cls.family == name)


def _load_builtin() -> None:
    global _builtin_loaded
    if not _builtin_loaded:
        from tradetrace.strategies.builtin import BUILTIN

        for cls in BUILTIN:
            _REGISTRY.setdefault(cls.name, cls)
        _builtin_loaded = True


__all__ = ["Strategy", "StrategyParams", "family", "get", "names", "register"]
