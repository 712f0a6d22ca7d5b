"""tradetrace: event-driven backtesting where every decision can be explained.

```python
import tradetrace as tt
result = tt.run_backtest("examples/momentum.yaml")
print(result.metrics["sharpe"], result.trades.head())
print(result.trace(result.trades.exit_fill_id[0]))   # fill -> order -> signal -> bar
```
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tradetrace.config import ConfigError, RunConfig, load_config, parse_config
    from tradetrace.engine.backtest import RunFailed, run_backtest
    from tradetrace.engine.data import DataError, MarketData
    from tradetrace.engine.result import BacktestResult
    from tradetrace.strategies import Strategy, StrategyParams, register

__version__ = "0.1.0"

from tradetrace.allocator import keep_arrow_memory  # noqa: E402  (before anything loads pyarrow)

keep_arrow_memory()

#: Public names and their modules, imported on first use (PEP 562): a process that needs one part
#: (the event store's writer process, `tradetrace sql`) does not pay for pandas, pydantic and the engine.
_EXPORTS = {
    "BacktestResult": "tradetrace.engine.result",
    "ConfigError": "tradetrace.config",
    "DataError": "tradetrace.engine.data",
    "MarketData": "tradetrace.engine.data",
    "RunConfig": "tradetrace.config",
    "RunFailed": "tradetrace.engine.backtest",
    "Strategy": "tradetrace.strategies",
    "StrategyParams": "tradetrace.strategies",
    "load_config": "tradetrace.config",
    "parse_config": "tradetrace.config",
    "register": "tradetrace.strategies",
    "run_backtest": "tradetrace.engine.backtest",
}
__all__ = [
    "BacktestResult", "ConfigError", "DataError", "MarketData", "RunConfig", "RunFailed", "Strategy",
    "StrategyParams", "load_config", "parse_config", "register", "run_backtest",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tradetrace' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
