"""Grid expansion and its strict, one-line validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tradetrace.config import ConfigError
from tradetrace.sweep.grid import GridError, expand, load_grid, parse_grid

ROOT = Path(__file__).resolve().parents[2]


def grid(axes: Any, **over: Any) -> dict[str, Any]:
    cfg = {"name": "g", "data": {"synthetic": {"bars": 500}}, "strategy": {"type": "sma_crossover"}, "grid": axes}
    cfg.update(over)
    return cfg


def test_lists_and_inclusive_ranges_expand_to_their_product() -> None:
    g = parse_grid(grid({"fast": [2, 4], "slow": {"start": 10, "stop": 30, "step": 10},
                         "sizing.quantity": {"start": 0.5, "stop": 1.0, "step": 0.25}},
                        sizing={"fractional": True}))  # fractions of a share must be allowed (config.py)
    assert g.axes["strategy.params.slow"] == [10, 20, 30]
    assert g.axes["sizing.quantity"] == [0.5, 0.75, 1.0]
    valid, invalid = expand(g)
    assert g.size == 18 and len(valid) == 18 and invalid == []
    seen = {(c.values["fast"], c.values["slow"], c.values["sizing.quantity"]) for c in valid}
    assert len(seen) == 18
    c = valid[-1]
    p = c.config.strategy.params
    assert (p["fast"], p["slow"], c.config.sizing.quantity) == (4, 30, 1.0)
    assert len({c.run_hash for c in valid}) == 18


def test_combinations_the_strategy_rejects_are_reported_not_run() -> None:
    valid, invalid = expand(parse_grid(grid({"fast": [5, 40], "slow": [30]})))
    assert [c.values for c in valid] == [{"fast": 5, "slow": 30}]
    assert invalid[0][0] == {"fast": 40, "slow": 30} and "must be below slow" in invalid[0][1]


def test_run_hash_depends_on_params_and_data_not_on_the_name() -> None:
    a = expand(parse_grid(grid({"fast": [5]})))[0][0].run_hash
    assert expand(parse_grid(grid({"fast": [5]}, name="other")))[0][0].run_hash == a
    assert expand(parse_grid(grid({"fast": [6]})))[0][0].run_hash != a
    assert expand(parse_grid(grid({"fast": [5]}, data={"synthetic": {"bars": 501}})))[0][0].run_hash != a


def test_sweep_is_an_alias_of_grid_but_not_both() -> None:
    cfg = grid({"fast": [3, 4]})
    cfg["sweep"] = cfg.pop("grid")
    assert parse_grid(cfg).axes == {"strategy.params.fast": [3, 4]}
    with pytest.raises(GridError, match="give one of 'grid' and 'sweep'"):
        parse_grid(cfg | {"grid": {"fast": [3]}})


@pytest.mark.parametrize("axes, message", [
    ({"fastt": [1]}, "unknown key 'grid.fastt': not a parameter of strategy 'sma_crossover'"),
    ({"fast": 5}, "'grid.fast' value 5: expected a list or a range"),
    ({"fast": []}, "'grid.fast' is an empty list"),
    ({"fast": [3, 3]}, "'grid.fast' value [3, 3]: has duplicates"),
    ({"fast": {"start": 1, "stop": 5}}, "missing key 'grid.fast.step'"),
    ({"fast": {"start": 1, "stop": 5, "step": 0}}, "'grid.fast.step' value 0: must be > 0"),
    ({"fast": {"start": 5, "stop": 1, "step": 1}}, "'grid.fast' range stop 1 is below start 5"),
    ({"fast": {"start": 1, "stop": 5, "step": 1, "by": 2}}, "unknown key 'grid.fast.by'"),
    ({"data.synthetic.bars": [10]}, "unknown key 'grid.data.synthetic.bars': a dotted key must start with"),
    ({}, "missing key 'grid'"),
])
def test_bad_grids_are_one_line_errors(axes: Any, message: str) -> None:
    with pytest.raises(GridError) as info:
        parse_grid(grid(axes), "g.yaml")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_bad_run_config_in_a_grid_is_the_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown key 'portfolio.cash'"):
        parse_grid(grid({"fast": [3]}, portfolio={"cash": 1}))


@pytest.mark.parametrize("name", ["momentum_grid.yaml", "mean_reversion_grid.yaml"])
def test_shipped_example_grids_are_valid(name: str) -> None:
    g = load_grid(ROOT / "examples" / name)
    valid, _ = expand(g)
    assert 4 <= len(valid) <= 20
