"""Config validation: every error is a one-line ConfigError naming the key and the value."""

from __future__ import annotations

import re
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


@pytest.mark.parametrize(("data", "needle"), [
    ({**OK, "classifiers": [{"type": "vix", "bands": [25, 15]}]},
     "'classifiers.0.bands' value [25, 15]: must be increasing"),
    ({**OK, "data": {"synthetic": {"symbols": ["A", "A"]}}},
     "'data.synthetic.symbols' value ['A', 'A']: symbols must be unique"),
    ({**OK, "portfolio": {"initial_cash": float("inf")}},
     "'portfolio.initial_cash' value inf: Input should be a finite"),
    ({**OK, "sizing": {"type": "fixed", "percent": 50}}, "unknown key 'sizing.percent' (value 50.0): does not apply to "
                                                         "sizing type 'fixed'"),
    ({**OK, "sizing": {"type": "percent_equity", "quantity": 5}}, "unknown key 'sizing.quantity' (value 5.0)"),
    ({**OK, "sizing": {"quantity": "100"}}, "'sizing.quantity' value '100': Input should be a valid number"),
    ({**OK, "tracing": {"enabled": 1}}, "'tracing.enabled' value 1: Input should be a valid boolean"),
    ({**OK, "sizing": {"quantity": 10.5}}, "'sizing.quantity' value 10.5: not a whole number of shares (set "
                                           "sizing.fractional: true"),
    ({**OK, "classifiers": [{"type": "trend"}, {"type": "volatility"}, {"type": "trend"}]},
     "'classifiers.2.name' value 'trend': classifier names must be unique (classifiers.0 is also 'trend')"),
    ({**OK, "classifiers": [{"type": "vix", "series": "VXN"}]}, "'classifiers.0.series' value 'VXN': auxiliary series "
                                                                "not loaded (loaded: VIX)"),
    ({**OK, "data": {"symbols": {"X": "x.csv"}}, "classifiers": [{"type": "vix"}]},
     "'classifiers.0.series' value 'VIX': auxiliary series not loaded (loaded: none, see data.aux)"),
    ({**OK, "data": {"synthetic": {"start": "notadate"}}}, "'data.synthetic.start' value 'notadate': expected a day"),
    ({**OK, "data": {"synthetic": {"start": "01/02/2020"}}}, "'data.synthetic.start' value '01/02/2020'"),
    ({**OK, "grid": {"fast": [1, 2]}}, "unknown key 'grid': a file with a grid is a sweep; run it with `tradetrace "
                                       "optimize cfg.yaml`"),
    ({**OK, "sweep": {"fast": [1, 2]}}, "`tradetrace optimize cfg.yaml`"),
])
def test_values_checked_against_each_other_and_strictly(data: dict, needle: str) -> None:
    msg = _err(data)
    assert needle in msg, msg


def test_values_that_fit_their_type_are_kept() -> None:
    cfg = parse_config({**OK, "sizing": {"quantity": 10.5, "fractional": True},
                        "classifiers": [{"type": "vix", "bands": [12, 30]}, {"type": "vix", "name": "vix2"}]})
    assert cfg.sizing.quantity == 10.5 and cfg.sizing.percent is None
    assert cfg.classifiers[0].bands == (12.0, 30.0)
    pct = parse_config({**OK, "sizing": {"type": "percent_equity"}}).sizing
    assert (pct.percent, pct.quantity) == (10.0, None)
    assert parse_config({**OK, "data": {"synthetic": {"bars": 100}, "aux": {"VXN": "v.csv"}},
                         "classifiers": [{"type": "vix", "series": "VXN"}]}).classifiers[0].series == "VXN"


def test_a_dumped_config_validates_again() -> None:
    """Sweeps send each run's config to workers as `model_dump(mode="json")`, which the worker validates."""
    for sizing in ({"type": "fixed", "quantity": 7}, {"type": "percent_equity", "percent": 20}):
        cfg = parse_config({**OK, "sizing": sizing, "classifiers": [{"type": "vix"}]})
        again = parse_config(cfg.model_dump(mode="json"))
        assert again == cfg


def test_synthetic_start_accepts_a_yaml_date_but_not_a_time(tmp_path: Path) -> None:
    y = tmp_path / "c.yaml"
    y.write_text("data: {synthetic: {bars: 100, start: 2021-03-01}}\nstrategy: {type: sma_crossover}\n")
    assert load_config(y).data.synthetic.start == "2021-03-01"
    y.write_text("data: {synthetic: {bars: 100, start: 2021-03-01 10:00:00}}\nstrategy: {type: sma_crossover}\n")
    with pytest.raises(ConfigError, match=r"'data\.synthetic\.start' value datetime.* not a date and time"):
        load_config(y)


def test_store_path_that_is_a_file_is_a_config_error(tmp_path: Path) -> None:
    f = tmp_path / "afile"
    f.write_text("x")
    for path in (f, f / "sub"):
        msg = _err({**OK, "store": {"path": str(path)}})
        assert f"'store.path' value '{path}': {f} is a file, not a folder" in msg
    assert parse_config({**OK, "store": {"path": str(tmp_path / "new" / "events")}}).store.path


def test_config_path_that_is_a_folder_or_not_utf8(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(tmp_path))}: is a folder, not a config file$"):
        load_config(tmp_path)
    b = tmp_path / "bin.yaml"
    b.write_bytes(b"data: {synthetic: {bars: 100}}\nstrategy: {type: \xff}\n")
    with pytest.raises(ConfigError, match=r"bin\.yaml: not a UTF-8 text config file \(byte 0xff at offset 48\)$"):
        load_config(b)


def test_strategy_params_are_strict_and_rsi_levels_ordered() -> None:
    """As the rest of the config: a quoted number is not a number; RSI levels must be in order."""
    base = {"data": {"synthetic": {"bars": 100}}}
    for params, words in (({"fast": "5"}, "strategy.params.fast"),
                          ({"oversold": 80, "overbought": 20}, "oversold (80.0) < exit_level (50.0)")):
        kind = "sma_crossover" if "fast" in params else "rsi_reversion"
        with pytest.raises(ConfigError, match=re.escape(words)):
            parse_config({**base, "strategy": {"type": kind, "params": params}})
    ok = parse_config({**base, "strategy": {"type": "rsi_reversion", "params": {"oversold": 25, "overbought": 75.5}}})
    assert ok.strategy.params == {"oversold": 25, "overbought": 75.5}


@pytest.mark.parametrize(("data", "needle"), [
    ({**OK, "classifiers": [{"type": "trend", "bands": [1, 2]}]},
     "unknown key 'classifiers.0.bands' (value [1, 2]): does not apply to classifier type 'trend' "
     "(it uses window and threshold)"),
    ({**OK, "classifiers": [{"type": "vix", "window": 50}]},
     "unknown key 'classifiers.0.window' (value 50): does not apply to classifier type 'vix'"),
    ({**OK, "classifiers": [{"type": "volatility", "threshold": 2.0}]}, "unknown key 'classifiers.0.threshold'"),
    ({**OK, "classifiers": [{"type": "trend", "lookback": 500}]}, "unknown key 'classifiers.0.lookback'"),
    ({**OK, "classifiers": [{"type": "volatility", "series": "VXN"}]}, "unknown key 'classifiers.0.series'"),
])
def test_classifier_keys_of_another_type_are_errors(data: dict, needle: str) -> None:
    """The README says keys that do not apply to the chosen type are errors; a classifier's were ignored (a
    `lookback` on a trend classifier configured nothing)."""
    assert needle in _err(data)


def test_dumped_classifiers_validate_again() -> None:
    """A dumped config carries every classifier key at its default (sweeps and the ETL validate it again)."""
    cfg = parse_config({**OK, "classifiers": [{"type": "trend", "window": 40}, {"type": "vix", "bands": [12, 30]},
                                              {"type": "volatility", "lookback": 300}]})
    assert parse_config(cfg.model_dump(mode="json")) == cfg


@pytest.mark.parametrize(("data", "needle"), [
    ({**OK, "data": {"synthetic": {"bars": 100, "seed": -1}}}, "'data.synthetic.seed' value -1"),
    ({**OK, "execution": {"slippage_bps": 10_000}}, "'execution.slippage_bps' value 10000"),
])
def test_values_the_run_cannot_use_are_config_errors(data: dict, needle: str) -> None:
    """A negative seed was numpy's traceback from the CLI; 100% slippage or more ran, selling at prices <= 0."""
    assert needle in _err(data)
