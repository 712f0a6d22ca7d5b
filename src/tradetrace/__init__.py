"""tradetrace: event-driven backtesting where every decision can be explained.

```python
import tradetrace as tt
result = tt.run_backtest("examples/momentum.yaml")
print(result.metrics["sharpe"], result.trades.head())
print(result.trace(result.trades.exit_fill_id[0]))   # fill -> order -> signal -> bar
```
"""

from tradetrace.config import ConfigError, RunConfig, load_config, parse_config
from tradetrace.engine.backtest import RunFailed, run_backtest
from tradetrace.engine.data import DataError, MarketData
from tradetrace.engine.result import BacktestResult
from tradetrace.strategies import Strategy, StrategyParams, register

__version__ = "0.1.0"

__all__ = [
    "BacktestResult", "ConfigError", "DataError", "MarketData", "RunConfig", "RunFailed", "Strategy",
    "StrategyParams", "load_config", "parse_config", "register", "run_backtest",
]
