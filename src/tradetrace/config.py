"""The run configuration: the public interface of tradetrace.

A YAML file (or dict) with this shape; every key is documented in `examples/README.md`.

```yaml
name: spy-momentum
data:
  symbols: {SPY: ../shared/data/daily/SPY_1d_1998-2021_lean.csv}
  # synthetic: {bars: 100000, seed: 7, freq: 1min, symbols: [SYN]}
  aux: {VIX: ../shared/data/vix/VIX_1d_1990-2026_cboe.csv}
strategy: {type: sma_crossover, params: {fast: 10, slow: 30}}
portfolio: {initial_cash: 100000}
sizing: {type: fixed, quantity: 100}
execution: {fill: next_open, commission: {per_share: 0.0}, slippage_bps: 0}
risk: {stop_loss_pct: null, take_profit_pct: null}
tracing: {enabled: true}
```

Validation is strict (unknown keys, wrong types, unknown strategies are errors; a quoted number is
not a number, a number is not a flag; no infinities or NaN) and every error is one line naming the key
and the value: `ConfigError`. Values are also checked against each other (bands in order, unique names,
keys that do not apply to the chosen type).
"""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from tradetrace import strategies
from tradetrace.paths import folder_problem


class ConfigError(ValueError):
    """A bad config; the message is one line naming the key and value."""


class _Strict(BaseModel):
    # strict: YAML `quantity: '100'` is a string, not silently a number (nor 1 a flag);
    # no inf/NaN: `initial_cash: .inf` would run with meaningless results.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def _key_error(key: str, value: Any, msg: str, unknown: bool = False) -> PydanticCustomError:
    """An error about one key, raised by a validator of the model that holds it: `_one_line` names it as
    `<the model's key>.<key>` with its value (a model validator's own errors only name the model)."""
    return PydanticCustomError("tradetrace_key", "{msg}", {"msg": msg, "key": key, "value": value,
                                                            "unknown": unknown})


def _unique(values: list[str], what: str) -> list[str]:
    dup = next((v for i, v in enumerate(values) if v in values[:i]), None)
    if dup is not None:
        raise ValueError(f"{what} must be unique: {dup!r} is given twice")
    return values


class SyntheticData(_Strict):
    bars: int = Field(100_000, ge=2, description="bars per symbol")
    seed: int = Field(7, ge=0, description="numpy's generators take no negative seed")
    freq: Literal["1min", "5min", "15min", "30min", "1h", "1d"] = "1min"
    symbols: list[str] = Field(default_factory=lambda: ["SYN"], min_length=1)
    start: str = Field("2020-01-02", description="first day (YYYY-MM-DD; a YAML date works unquoted)")

    @field_validator("symbols")
    @classmethod
    def _unique_symbols(cls, v: list[str]) -> list[str]:
        return _unique(v, "symbols")

    @field_validator("start", mode="before")
    @classmethod
    def _day(cls, v: Any) -> Any:
        """A day: YAML reads `start: 2021-03-01` as a date, quoted as a string; both become 'YYYY-MM-DD'."""
        if isinstance(v, datetime):
            raise ValueError("expected a day (YYYY-MM-DD), not a date and time")
        if isinstance(v, date):
            return v.isoformat()
        if isinstance(v, str):
            try:
                return date.fromisoformat(v).isoformat()
            except ValueError:
                raise ValueError("expected a day as YYYY-MM-DD") from None
        return v


class DataConfig(_Strict):
    symbols: dict[str, str] | None = Field(None, description="symbol -> CSV/Parquet file or folder of parts")
    synthetic: SyntheticData | None = None
    aux: dict[str, str] = Field(default_factory=dict, description="name -> file of an auxiliary series (VIX)")

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if (self.symbols is None) == (self.synthetic is None):
            raise ValueError("give exactly one of data.symbols and data.synthetic")
        if self.symbols is not None and not self.symbols:
            raise ValueError("data.symbols is empty")
        return self


class StrategyConfig(_Strict):
    type: str
    params: dict[str, Any] = Field(default_factory=dict)


class PortfolioConfig(_Strict):
    initial_cash: float = Field(100_000.0, gt=0)
    allow_short: bool = True
    close_at_end: bool = Field(False, description="close open positions at the last bar's close")


class SizingConfig(_Strict):
    # quantity/percent are None unless they apply to `type` (then their default is filled in), so a key of
    # the other type is an error rather than silently ignored, and a dumped config validates again.
    type: Literal["fixed", "percent_equity"] = "fixed"
    quantity: float | None = Field(None, gt=0, description="shares per position (fixed; default 100)")
    percent: float | None = Field(None, gt=0, le=1000, description="percent of equity per position "
                                  "(percent_equity; default 10)")
    fractional: bool = Field(False, description="allow fractional quantities")

    @model_validator(mode="after")
    def _fits_type(self) -> SizingConfig:
        """A key of the other type would be silently ignored; a fractional fixed quantity silently traded."""
        foreign, own, default = ("percent", "quantity", 100.0) if self.type == "fixed" else \
            ("quantity", "percent", 10.0)
        if getattr(self, foreign) is not None:
            raise _key_error(foreign, getattr(self, foreign), f"does not apply to sizing type {self.type!r} "
                             f"(it uses {own})", unknown=True)
        if getattr(self, own) is None:
            setattr(self, own, default)
        if self.type == "fixed" and not self.fractional and not float(self.quantity).is_integer():
            raise _key_error("quantity", self.quantity, "not a whole number of shares (set sizing.fractional: "
                             "true to trade fractions)")
        return self


class CommissionConfig(_Strict):
    per_share: float = Field(0.0, ge=0)
    per_order: float = Field(0.0, ge=0)
    bps: float = Field(0.0, ge=0, description="basis points of traded notional")
    minimum: float = Field(0.0, ge=0, description="minimum per order (when any commission applies)")


class ExecutionConfig(_Strict):
    fill: Literal["next_open", "close"] = "next_open"
    commission: CommissionConfig = Field(default_factory=CommissionConfig)
    # Below 10,000 bps (100%): at or beyond it a sell executes at a price of zero or less.
    slippage_bps: float = Field(0.0, ge=0, lt=10_000)


class RiskConfig(_Strict):
    stop_loss_pct: float | None = Field(None, gt=0, lt=100)
    take_profit_pct: float | None = Field(None, gt=0)
    max_position: float | None = Field(None, gt=0, description="max absolute quantity per symbol")
    max_gross_exposure: float | None = Field(None, gt=0, description="max gross exposure / equity")


#: The keys each classifier type reads (besides type, name, hysteresis, min_dwell).
_CLASSIFIER_KEYS = {"volatility": ("window", "lookback"), "trend": ("window", "threshold"), "vix": ("series", "bands")}


class ClassifierConfig(_Strict):
    type: Literal["volatility", "trend", "vix"]
    name: str | None = None
    window: int = Field(20, ge=2)
    lookback: int = Field(252, ge=10, description="bars of history for percentile bands (volatility)")
    threshold: float = Field(1.0, gt=0, description="trend: normalized distance from the MA")
    series: str = Field("VIX", description="vix: auxiliary series name")
    bands: tuple[float, float] = Field((15.0, 25.0), description="vix: level bands")
    hysteresis: float = Field(0.05, ge=0, lt=1, description="margin, as a fraction of each band edge's "
                              "magnitude, a reading must clear to enter or leave a band")
    min_dwell: int = Field(3, ge=1, description="bars a new reading must hold to become a regime")

    @model_validator(mode="before")
    @classmethod
    def _fits_type(cls, data: Any) -> Any:
        """A key another type reads (`lookback` on a trend classifier) would be silently ignored: an error.

        Only a value other than the default is refused: a dumped config (stored with every run, validated
        again by sweeps and the ETL) carries every key at its default, and those are not the user's.
        """
        if not isinstance(data, dict) or data.get("type") not in _CLASSIFIER_KEYS:
            return data
        own = _CLASSIFIER_KEYS[data["type"]]
        for key in ("window", "lookback", "threshold", "series", "bands"):
            if key in data and key not in own:
                default = cls.model_fields[key].default
                value = data[key]
                if (tuple(value) if isinstance(value, list) else value) != default:
                    raise _key_error(key, value, f"does not apply to classifier type {data['type']!r} "
                                     f"(it uses {' and '.join(own)})", unknown=True)
        return data

    @field_validator("bands", mode="before")
    @classmethod
    def _as_tuple(cls, v: Any) -> Any:
        return tuple(v) if isinstance(v, list) else v  # YAML and JSON (a sweep's configs) give lists

    @field_validator("bands")
    @classmethod
    def _increasing(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not v[0] < v[1]:
            raise ValueError("must be increasing (low band, high band)")
        return v


class TracingConfig(_Strict):
    enabled: bool = True
    bar_clock_every: int = Field(64, ge=1, description="measure BAR clocks on every k-th bar (non-BAR events: all)")
    chunk_bars: int = Field(65_536, ge=1, description="bars per recorder batch (the last batches of a run are smaller)")


class SamplingConfig(_Strict):
    """Intelligent sampling of the event store (opt-in): critical events and their context are kept."""

    enabled: bool = False
    context: int = Field(5, ge=0, description="keep +-k events around every critical event")
    base_rate: float = Field(0.05, gt=0, le=1, description="keep probability for a quiet BAR")
    seed: int = 0


class StoreConfig(_Strict):
    """The Parquet event store (issue 3). Defaults: `$TRADETRACE_EVENTS` or ./tradetrace-data/events."""

    enabled: bool = Field(True, description="persist traced events (tracing must be on)")
    path: str | None = None
    compression: Literal["zstd", "snappy"] = "zstd"
    durability_events: int = Field(524_288, ge=1, description="flush a segment at least every N events")
    durability_ms: int = Field(1_000, ge=1, description="... and at least every N milliseconds")
    queue_batches: int = Field(8, ge=1, description="bounded queue between bus and writer (batches)")
    writer: Literal["auto", "process", "thread"] = Field(
        "auto", description="where the writer runs: a writer process (a run on its own: it gets its own core; "
        "forked for the first runs, then a fresh one reused; Linux) or a thread (sweeps, whose parallel runs "
        "already use the cores); auto picks")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)

    @field_validator("path")
    @classmethod
    def _folder(cls, v: str | None) -> str | None:
        """Caught here, not as a NotADirectoryError from deep in the writer."""
        problem = None if v is None else folder_problem(Path(v))
        if problem:
            raise ValueError(problem)
        return v


class DatabaseConfig(_Strict):
    """The analytics database (issue 4). Defaults: `$TRADETRACE_DB` or ./tradetrace-data/analytics.duckdb."""

    enabled: bool = Field(True, description="write run metrics and trades at the end of the run")
    url: str | None = None


class MetricsConfig(_Strict):
    periods_per_year: float | None = Field(None, gt=0, description="override the inferred annualization")
    risk_free: float = 0.0


class RunConfig(_Strict):
    name: str = "run"
    data: DataConfig
    strategy: StrategyConfig
    portfolio: PortfolioConfig = Field(default_factory=PortfolioConfig)
    sizing: SizingConfig = Field(default_factory=SizingConfig)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)
    risk: RiskConfig = Field(default_factory=RiskConfig)
    classifiers: list[ClassifierConfig] = Field(default_factory=list)
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    base_dir: str | None = Field(None, description="fallback folder for relative data paths (the YAML's folder)")

    @model_validator(mode="after")
    def _classifiers_fit(self) -> RunConfig:
        """Names unique (events and tables key on them) and VIX series loaded: before any run starts."""
        names = [c.name or c.type for c in self.classifiers]
        series = set(self.data.aux) | ({"VIX"} if self.data.synthetic is not None else set())
        for k, c in enumerate(self.classifiers):
            if names[k] in names[:k]:
                raise _key_error(f"classifiers.{k}.name", names[k], f"classifier names must be unique "
                                 f"(classifiers.{names.index(names[k])} is also {names[k]!r}); set name: on each")
            if c.type == "vix" and c.series not in series:
                raise _key_error(f"classifiers.{k}.series", c.series, "auxiliary series not loaded "
                                 f"(loaded: {', '.join(sorted(series)) or 'none, see data.aux'})")
        return self

    def resolve(self, path: str) -> Path:
        """A data path: as given when it exists from the working directory, else from the YAML's folder."""
        p = Path(path)
        if not p.is_absolute() and not p.exists() and self.base_dir:
            alt = Path(self.base_dir) / p
            if alt.exists():
                return alt
        return p

    def strategy_class(self) -> type[strategies.Strategy]:
        return strategies.get(self.strategy.type)


def _loc(loc: tuple) -> str:
    return ".".join(str(x) for x in loc) or "(root)"


def _one_line(err: ValidationError, source: str, data: dict[str, Any]) -> str:
    e = err.errors()[0]
    loc = _loc(e["loc"])
    value = e.get("input")
    if e["type"] == "tradetrace_key":
        ctx = e["ctx"]
        key = f"{loc}.{ctx['key']}" if e["loc"] else ctx["key"]
        if ctx["unknown"]:
            return f"{source}: unknown key '{key}' (value {ctx['value']!r}): {ctx['msg']}"
        return f"{source}: '{key}' value {ctx['value']!r}: {ctx['msg']}"
    if e["type"] == "extra_forbidden" and e["loc"] in (("grid",), ("sweep",)):
        return (f"{source}: unknown key '{loc}': a file with a {loc} is a sweep; run it with "
                f"`tradetrace optimize {source}`")
    if e["type"] == "extra_forbidden":
        return f"{source}: unknown key '{loc}' (value {value!r})"
    if e["type"] == "missing":
        return f"{source}: missing key '{loc}'"
    msg = e["msg"].replace("Value error, ", "")
    if isinstance(value, dict):
        return f"{source}: '{loc}': {msg}"
    return f"{source}: '{loc}' value {value!r}: {msg}"


def parse_config(data: dict[str, Any], source: str = "config") -> RunConfig:
    """Validate a config dict, including the strategy's own params; raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_one_line(err, source, data)) from None
    try:
        cls = cfg.strategy_class()
    except KeyError as exc:
        raise ConfigError(f"{source}: 'strategy.type' value {cfg.strategy.type!r}: {exc.args[0]}") from None
    try:
        cls.Params(**cfg.strategy.params)
    except ValidationError as err:
        e = err.errors()[0]
        loc = "strategy.params" + ("." + _loc(e["loc"]) if e["loc"] else "")
        msg = e["msg"].replace("Value error, ", "")
        if e["type"] == "extra_forbidden":
            raise ConfigError(f"{source}: unknown key '{loc}' (value {e.get('input')!r}) for strategy "
                              f"{cfg.strategy.type!r}") from None
        raise ConfigError(f"{source}: '{loc}' value {e.get('input')!r}: {msg}") from None
    return cfg


def read_yaml(path: str | Path, error: type[ValueError] = ConfigError, what: str = "config") -> Any:
    """A YAML file's content, with `base_dir` (its folder) set on a mapping; one-line `error` otherwise."""
    path = Path(path)
    if not path.exists():
        raise error(f"{path}: {what} file not found")
    if path.is_dir():
        raise error(f"{path}: is a folder, not a {what} file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not a UTF-8 text {what} file (byte {exc.object[exc.start]:#04x} at offset "
                    f"{exc.start})") from None
    except OSError as exc:
        raise error(f"{path}: cannot read the {what} file: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise error(f"{path}:{where} invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if isinstance(data, dict):
        data.setdefault("base_dir", str(path.parent.resolve()))
    return data


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a YAML config; relative data paths also resolve against the YAML's folder."""
    return parse_config(read_yaml(path), str(path))


def as_config(config: RunConfig | dict[str, Any] | str | Path) -> RunConfig:
    if isinstance(config, RunConfig):
        return config
    if isinstance(config, dict):
        return parse_config(config)
    return load_config(config)
