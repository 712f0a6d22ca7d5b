"""Parameter grids: a run config plus a `grid:` (or `sweep:`) section, expanded into one config per run.

```yaml
name: momentum-grid
data: {synthetic: {bars: 20000, seed: 7}}
strategy: {type: sma_crossover, params: {ma: sma}}
grid:
  fast: [5, 10, 20]                      # a strategy param: a list ...
  slow: {start: 30, stop: 90, step: 30}  # ... or a range (stop inclusive)
  sizing.quantity: [50, 100]             # a dotted key: any other config value
```

Validation is strict and every error is one line naming the key (`GridError`, a ConfigError). A
combination the strategy rejects (e.g. fast >= slow) is not an error of the grid: it is reported as
invalid and not run. Each valid combination has a `run_hash` (strategy + params + the rest of the
config + a fingerprint of the data files): a sweep skips combinations whose hash already completed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tradetrace.config import ConfigError, RunConfig, parse_config, read_yaml

MAX_COMBINATIONS = 1_000_000
#: Sections a dotted grid key may address (strategy params are bare names or `strategy.params.x`).
SECTIONS = ("strategy.params", "sizing", "risk", "execution", "portfolio", "metrics")
#: Config parts that do not change a run's results (not part of its hash).
_NOT_HASHED = ("name", "tracing", "store", "database", "base_dir")


class GridError(ConfigError):
    """A bad grid; one line naming the key and value."""


@dataclass(frozen=True)
class Combination:
    """One point of the grid: the values of the grid keys and the full run config."""

    values: dict[str, Any]
    config: RunConfig
    run_hash: str


@dataclass(frozen=True)
class Grid:
    source: str
    base: dict[str, Any]  # the run config without the grid section
    axes: dict[str, list[Any]]  # full dotted key -> values

    @property
    def size(self) -> int:
        return math.prod(len(v) for v in self.axes.values())

    def sweep_key(self) -> str:
        """Stable identity of the sweep (same grid and config -> same sweep_id, so a rerun resumes)."""
        body = {k: v for k, v in self.base.items() if k not in ("base_dir", "database", "store", "tracing")}
        return json.dumps({"base": body, "axes": self.axes}, sort_keys=True, default=str)


def _range(key: str, spec: dict[str, Any], source: str) -> list[Any]:
    extra = set(spec) - {"start", "stop", "step"}
    if extra:
        raise GridError(f"{source}: unknown key 'grid.{key}.{sorted(extra)[0]}' (a range has start, stop, step)")
    missing = [k for k in ("start", "stop", "step") if k not in spec]
    if missing:
        raise GridError(f"{source}: missing key 'grid.{key}.{missing[0]}' (a range has start, stop, step)")
    start, stop, step = spec["start"], spec["stop"], spec["step"]
    for name, v in (("start", start), ("stop", stop), ("step", step)):
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise GridError(f"{source}: 'grid.{key}.{name}' value {v!r}: expected a finite number")
    if step <= 0:
        raise GridError(f"{source}: 'grid.{key}.step' value {step!r}: must be > 0")
    if stop < start:
        raise GridError(f"{source}: 'grid.{key}' range stop {stop!r} is below start {start!r}")
    count = int(math.floor((stop - start) / step + 1e-9)) + 1
    if count > MAX_COMBINATIONS:
        raise GridError(f"{source}: 'grid.{key}' range has {count:,} values (max {MAX_COMBINATIONS:,})")
    if all(isinstance(v, int) for v in (start, stop, step)):
        return [start + k * step for k in range(count)]
    return [round(start + k * step, 12) for k in range(count)]


def _values(key: str, spec: Any, source: str) -> list[Any]:
    if isinstance(spec, dict):
        return _range(key, spec, source)
    if not isinstance(spec, list):
        raise GridError(f"{source}: 'grid.{key}' value {spec!r}: expected a list or a range {{start, stop, step}}")
    if not spec:
        raise GridError(f"{source}: 'grid.{key}' is an empty list")
    seen = [json.dumps(v, sort_keys=True, default=str) for v in spec]
    if len(set(seen)) != len(seen):
        raise GridError(f"{source}: 'grid.{key}' value {spec!r}: has duplicates")
    return list(spec)


def _full_key(key: str, strategy_fields: set[str], strategy: str, source: str) -> str:
    if "." not in key:
        if key not in strategy_fields:
            raise GridError(f"{source}: unknown key 'grid.{key}': not a parameter of strategy {strategy!r} "
                            f"(known: {', '.join(sorted(strategy_fields))})")
        return f"strategy.params.{key}"
    if not any(key.startswith(s + ".") for s in SECTIONS):
        raise GridError(f"{source}: unknown key 'grid.{key}': a dotted key must start with one of "
                        f"{', '.join(SECTIONS)}")
    if key.startswith("strategy.params.") and key.split(".", 2)[2] not in strategy_fields:
        raise GridError(f"{source}: unknown key 'grid.{key}': not a parameter of strategy {strategy!r}")
    return key


def parse_grid(data: dict[str, Any], source: str = "grid") -> Grid:
    """Validate a grid config dict (run config + `grid:`/`sweep:`); raise GridError."""
    if not isinstance(data, dict):
        raise GridError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    data = dict(data)
    if "grid" in data and "sweep" in data:
        raise GridError(f"{source}: give one of 'grid' and 'sweep', not both")
    section = "grid" if "grid" in data else "sweep"
    axes_spec = data.pop(section, None)
    if not isinstance(axes_spec, dict) or not axes_spec:
        raise GridError(f"{source}: missing key 'grid' (a mapping of parameter -> list or range)")
    base_cfg = parse_config(data, source)  # the run config itself must be valid (one-line ConfigError)
    cls = base_cfg.strategy_class()
    fields = set(cls.Params.model_fields)
    axes: dict[str, list[Any]] = {}
    for key, spec in axes_spec.items():
        if not isinstance(key, str) or not key:
            raise GridError(f"{source}: 'grid' key {key!r}: expected a parameter name")
        full = _full_key(key, fields, base_cfg.strategy.type, source)
        if full in axes:
            raise GridError(f"{source}: 'grid.{key}' given twice")
        axes[full] = _values(key, spec, source)
    grid = Grid(source, data, axes)
    if grid.size > MAX_COMBINATIONS:
        raise GridError(f"{source}: grid has {grid.size:,} combinations (max {MAX_COMBINATIONS:,})")
    return grid


def load_grid(path: str | Path) -> Grid:
    """Read and validate a grid YAML; relative data paths resolve against the YAML's folder."""
    return parse_grid(read_yaml(path, GridError, "grid"), str(path))


def _set(cfg: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = cfg
    for p in parts[:-1]:
        nxt = node.get(p)
        if not isinstance(nxt, dict):
            nxt = {} if nxt is None else nxt
            node[p] = nxt
        node = nxt
    node[parts[-1]] = value


def data_fingerprint(cfg: RunConfig) -> dict[str, Any]:
    """What identifies the market data: the synthetic spec, or each file's path, size and mtime."""
    if cfg.data.synthetic is not None:
        return {"synthetic": cfg.data.synthetic.model_dump(mode="json"), "aux": _files(cfg, cfg.data.aux)}
    return {"symbols": _files(cfg, cfg.data.symbols or {}), "aux": _files(cfg, cfg.data.aux)}


def _files(cfg: RunConfig, mapping: dict[str, str]) -> dict[str, Any]:
    out = {}
    for name, p in sorted(mapping.items()):
        path = cfg.resolve(p)
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        out[name] = [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files if f.is_file()]
    return out


def run_hash(cfg: RunConfig, fingerprint: dict[str, Any]) -> str:
    """Hash of strategy + validated params + the rest of the config + the data fingerprint."""
    params = cfg.strategy_class().Params(**cfg.strategy.params).model_dump(mode="json")
    body = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in _NOT_HASHED}
    body["strategy"] = {"type": cfg.strategy.type, "params": params}
    body["data"] = fingerprint
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:32]


def expand(grid: Grid) -> tuple[list[Combination], list[tuple[dict[str, Any], str]]]:
    """(valid combinations, [(values, reason)] of combinations the config or strategy rejects)."""
    keys = list(grid.axes)
    valid: list[Combination] = []
    invalid: list[tuple[dict[str, Any], str]] = []
    fingerprint: dict[str, Any] | None = None
    for combo in itertools.product(*(grid.axes[k] for k in keys)):
        cfg = json.loads(json.dumps(grid.base, default=str))
        values = dict(zip(keys, combo, strict=True))
        for k, v in values.items():
            _set(cfg, k, v)
        short = {k.removeprefix("strategy.params."): v for k, v in values.items()}
        try:
            run_cfg = parse_config(cfg, grid.source)
        except ConfigError as exc:
            invalid.append((short, str(exc)))
            continue
        if fingerprint is None:
            fingerprint = data_fingerprint(run_cfg)
        valid.append(Combination(short, run_cfg, run_hash(run_cfg, fingerprint)))
    return valid, invalid
