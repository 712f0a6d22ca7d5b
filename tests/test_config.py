"""Config validation: every error is a one-line ConfigError naming the key and the value."""

from __future__ import annotations

from pathlib import Path

import pytest

from tradetrace.config import ConfigError, load_config, parse_config

OK = {"data": {"synthetic": {"bars": 100}}, "strategy": {"type": "sma_crossover"}}


def _err(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "cfg.yaml")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("cfg.yaml: ")
    return msg


def test_valid_config_parses() -> None:
    cfg = parse_config(OK)
    assert cfg.strategy_class().name == "sma_crossover"


@pytest.mark.parametrize(("data", "key", "value"), [
    ({**OK, "colour": "red"}, "colour", "'red'"),
    ({**OK, "portfolio": {"initial_csh": 5}}, "portfolio.initial_csh", "5"),
    ({**OK, "execution": {"commission": {"per_shar": 0.1}}}, "execution.commission.per_shar", "0.1"),
    ({**OK, "strategy": {"type": "sma_crossover", "params": {"fats": 3}}}, "strategy.params.fats", "3"),
])
def test_unknown_keys(data: dict, key: str, value: str) -> None:
    msg = _err(data)
    assert f"unknown key '{key}'" in msg and value in msg


@pytest.mark.parametrize(("data", "key", "value"), [
    ({**OK, "portfolio": {"initial_cash": "lots"}}, "portfolio.initial_cash", "'lots'"),
    ({**OK, "portfolio": {"initial_cash": -5}}, "portfolio.initial_cash", "-5"),
    ({**OK, "sizing": {"type": "kelly"}}, "sizing.type", "'kelly'"),
    ({**OK, "execution": {"fill": "vwap"}}, "execution.fill", "'vwap'"),
    ({**OK, "data": {"synthetic": {"bars": "many"}}}, "data.synthetic.bars", "'many'"),
    ({**OK, "risk": {"stop_loss_pct": 150}}, "risk.stop_loss_pct", "150"),
    ({**OK, "strategy": {"type": "sma_crossover", "params": {"fast": "x"}}}, "strategy.params.fast", "'x'"),
    ({**OK, "strategy": {"type": "sma_crossover", "params": {"fast": 30, "slow": 10}}}, "strategy.params",
     "30"),
    ({**OK, "classifiers": [{"type": "moon"}]}, "classifiers.0.type", "'moon'"),
])
def test_wrong_types_and_values(data: dict, key: str, value: str) -> None:
    msg = _err(data)
    assert f"'{key}" in msg and value in msg


def test_unknown_strategy_names_key_value_and_known_ones() -> None:
    msg = _err({**OK, "strategy": {"type": "nope"}})
    assert "'strategy.type' value 'nope'" in msg and "sma_crossover" in msg


def test_missing_key_and_both_data_sources() -> None:
    assert "missing key 'strategy'" in _err({"data": OK["data"]})
    msg = _err({**OK, "data": {"synthetic": {"bars": 10}, "symbols": {"X": "x.csv"}}})
    assert "'data'" in msg and "exactly one" in msg


def test_missing_file_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert "invalid YAML" in str(info.value) and "\n" not in str(info.value)
    top = tmp_path / "list.yaml"
    top.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(top)


def test_relative_data_paths_resolve_from_the_yaml_folder(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.csv").write_text("date,open,high,low,close,volume\n2020-01-02,1,1,1,1,1\n")
    y = tmp_path / "sub" / "c.yaml"
    y.write_text("data: {symbols: {X: x.csv}}\nstrategy: {type: sma_crossover}\n")
    cfg = load_config(y)
    assert cfg.resolve("x.csv") == tmp_path / "sub" / "x.csv"
