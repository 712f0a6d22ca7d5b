"""The real `tradetrace` console script in a subprocess: exit codes, one-line errors, --json output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).parent / "tradetrace"


def cli(args: list[str], home: Path, cwd: Path = ROOT, **env_vars: str) -> subprocess.CompletedProcess:
    exe = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "tradetrace.cli"]
    env = {**os.environ, "TRADETRACE_HOME": str(home), "COLUMNS": "60"}
    env.pop("TRADETRACE_EVENTS", None)
    env.pop("TRADETRACE_DB", None)
    env.update(env_vars)
    return subprocess.run(exe + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


GOOD = "data: {synthetic: {bars: 3000, seed: 2}}\nstrategy: {type: sma_crossover, params: {fast: 5, slow: 20}}\n"


@pytest.mark.parametrize(("text", "needles"), [
    (GOOD + "colour: red\n", ["colour", "red"]),
    (GOOD + "portfolio: {initial_cash: lots}\n", ["portfolio.initial_cash", "lots"]),
    (GOOD.replace("sma_crossover", "moonshot"), ["strategy.type", "moonshot"]),
    (GOOD.replace("fast: 5", "fast: five"), ["strategy.params.fast", "five"]),
    (GOOD + "execution: {fill: vwap}\n", ["execution.fill", "vwap"]),
    ("data: {symbols: {X: missing_file.csv}}\nstrategy: {type: sma_crossover}\n",
     ["data.symbols.X", "missing_file.csv", "not found"]),
    (GOOD.replace("bars: 3000", "bars: 30") + "classifiers: [{type: volatility}, {type: volatility}]\n",
     ["'classifiers.1.name'", "classifier names", "volatility"]),
    (GOOD.replace("bars: 3000", "bars: 30") + "classifiers: [{type: vix, series: VXN}]\n",
     ["'classifiers.0.series'", "'VXN'", "not loaded"]),
    (GOOD.replace("seed: 2", "seed: 2, start: notadate"), ["data.synthetic.start", "notadate"]),
    (GOOD + "classifiers: [{type: vix, bands: [25, 15]}]\n", ["classifiers.0.bands", "[25, 15]", "increasing"]),
    (GOOD.replace("seed: 2", "seed: 2, symbols: [A, A]"), ["data.synthetic.symbols", "unique"]),
    (GOOD + "portfolio: {initial_cash: .inf}\n", ["portfolio.initial_cash", "inf", "finite"]),
    (GOOD + "sizing: {type: fixed, percent: 50}\n", ["sizing.percent", "50", "fixed"]),
    (GOOD + "sizing: {quantity: '100'}\n", ["sizing.quantity", "'100'"]),
    (GOOD + "sizing: {quantity: 10.5}\n", ["sizing.quantity", "10.5", "whole", "fractional"]),
    # Rich markup in user values is printed as is (it crashed on "[/x]" and dropped "[bold]").
    (GOOD + "'[/x]': 1\n", ["unknown key '[/x]'"]),
    (GOOD.replace("sma_crossover", '"[bold]sma"'), ["'strategy.type' value '[bold]sma'"]),
])
def test_bad_configs_exit_2_with_one_line(tmp_path: Path, isolated_home: Path, text: str, needles: list[str]) -> None:
    r = cli(["run", str(_write(tmp_path, text)), "--no-store"], isolated_home)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0]
    assert r.stdout == ""


def test_missing_config_file_exits_2(tmp_path: Path, isolated_home: Path) -> None:
    r = cli(["run", str(tmp_path / "absent.yaml"), "--no-store"], isolated_home)
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert "absent.yaml" in line and "not found" in line


def test_bad_data_file_exits_2_naming_file_row_value(tmp_path: Path, isolated_home: Path) -> None:
    (tmp_path / "bad.csv").write_text("date,open,high,low,close,volume\n2020-01-02,10,11,9,10,5\n"
                                      "2020-01-03,10,9,11,10,5\n")
    cfg = _write(tmp_path, "data: {symbols: {X: bad.csv}}\nstrategy: {type: sma_crossover}\n")
    r = cli(["run", str(cfg), "--no-store"], isolated_home)
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert "bad.csv" in line and "row 3" in line and "high" in line and "9.0" in line


def test_run_json_keys(tmp_path: Path, isolated_home: Path) -> None:
    r = cli(["run", str(_write(tmp_path, GOOD)), "--json", "--no-store"], isolated_home)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert {"run_id", "metrics", "final_equity", "trades"} <= set(out)
    for k in ("total_return", "sharpe", "sortino", "max_drawdown", "win_rate", "profit_factor", "trade_count",
              "exposure"):
        assert k in out["metrics"]
    assert out["trades"], "this config trades"
    run_id = out["run_id"]
    for t in out["trades"]:
        assert {"symbol", "side", "quantity", "entry_time", "entry_price", "exit_time", "exit_price", "pnl",
                "entry_event_id", "exit_event_id"} <= set(t)
        assert t["entry_event_id"].startswith(run_id + ":") and t["exit_event_id"].startswith(run_id + ":")
        assert t["side"] in ("long", "short") and t["quantity"] == 100
    assert out["metrics"]["trade_count"] == len(out["trades"])


def test_failed_run_exits_1(tmp_path: Path, isolated_home: Path) -> None:
    """A run that fails inside a handler (strategy raises on its data) exits 1 with one line."""
    plugin = tmp_path / "boom_plugin.py"
    plugin.write_text(
        "from tradetrace import Strategy, register\n"
        "@register\n"
        "class Boom(Strategy):\n"
        "    name = 'boom'\n"
        "    def next(self, i):\n"
        "        if i == 10:\n"
        "            raise RuntimeError('boom at ten')\n"
    )
    cfg = _write(tmp_path, "data: {synthetic: {bars: 100}}\nstrategy: {type: boom}\n")
    code = ("import sys, boom_plugin\nfrom tradetrace.cli import app\n"
            f"sys.argv = ['tradetrace', 'run', {str(cfg)!r}, '--no-store']\napp()\n")
    env = {**os.environ, "TRADETRACE_HOME": str(isolated_home), "PYTHONPATH": str(tmp_path)}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1, r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert "RuntimeError in strategy" in line and "boom at ten" in line


# Run configs (sweep configs, with a top-level `grid`, belong to `tradetrace optimize` and its tests).
EXAMPLES = sorted(p.name for p in (ROOT / "examples").glob("*.yaml") if "grid" not in yaml.safe_load(p.read_text()))


@pytest.mark.slow
@pytest.mark.parametrize("name", EXAMPLES)
def test_examples_run(name: str, isolated_home: Path, shared_data: Path) -> None:
    assert len(EXAMPLES) >= 6
    r = cli(["run", f"examples/{name}", "--json", "--no-store"], isolated_home)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["final_equity"] > 0 and out["metrics"]["trade_count"] > 0


def test_store_path_that_is_a_file_exits_2(tmp_path: Path, isolated_home: Path) -> None:
    (tmp_path / "afile").write_text("x")
    cfg = _write(tmp_path, GOOD + f"store: {{path: {tmp_path / 'afile'}}}\n")
    r = cli(["run", str(cfg)], isolated_home)
    assert r.returncode == 2, r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert "'store.path'" in line and "is a file, not a folder" in line


def test_events_env_var_that_is_a_file_exits_2(tmp_path: Path, isolated_home: Path) -> None:
    (tmp_path / "afile").write_text("x")
    cfg = _write(tmp_path, GOOD)
    r = cli(["run", str(cfg)], isolated_home, TRADETRACE_EVENTS=str(tmp_path / "afile"))
    assert r.returncode == 2, r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert "(TRADETRACE_EVENTS)" in line and "is a file, not a folder" in line


def test_config_that_is_a_folder_or_not_utf8_exits_2(tmp_path: Path, isolated_home: Path) -> None:
    r = cli(["run", str(tmp_path)], isolated_home)
    assert r.returncode == 2, r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert f"{tmp_path}: is a folder, not a config file" in line
    b = tmp_path / "bin.yaml"
    b.write_bytes(GOOD.encode() + b"name: \xff\n")
    r = cli(["run", str(b)], isolated_home)
    assert r.returncode == 2, r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert "bin.yaml: not a UTF-8 text config file (byte 0xff" in line


def test_unquoted_yaml_date_as_synthetic_start(tmp_path: Path, isolated_home: Path) -> None:
    cfg = _write(tmp_path, GOOD.replace("seed: 2", "seed: 2, start: 2021-03-01"))
    r = cli(["run", str(cfg), "--json", "--no-store"], isolated_home)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["trades"][0]["entry_time"].startswith("2021-03-01")


def test_trace_with_tracing_off_is_a_usage_error(tmp_path: Path, isolated_home: Path) -> None:
    cfg = _write(tmp_path, GOOD + "tracing: {enabled: false}\n")
    r = cli(["run", str(cfg), "--trace", "--no-store"], isolated_home)
    assert r.returncode == 2, r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert "--trace" in line and "'tracing.enabled' is false" in line
    assert r.stdout == ""


def test_json_event_ids_are_null_when_tracing_is_off(tmp_path: Path, isolated_home: Path) -> None:
    cfg = _write(tmp_path, GOOD + "tracing: {enabled: false}\n")
    r = cli(["run", str(cfg), "--json", "--no-store"], isolated_home)
    assert r.returncode == 0, r.stderr
    trades = json.loads(r.stdout)["trades"]
    assert trades
    for t in trades:
        assert t["entry_event_id"] is None and t["exit_event_id"] is None and t["close_event_id"] is None
        assert t["entry_signal_id"] is None and t["exit_signal_id"] is None and t["entry_price"] > 0


def test_sweep_file_points_to_optimize(isolated_home: Path) -> None:
    r = cli(["run", "examples/momentum_grid.yaml"], isolated_home)
    assert r.returncode == 2, r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert "unknown key 'grid'" in line and "tradetrace optimize examples/momentum_grid.yaml" in line


def test_missing_aux_file_names_its_key(tmp_path: Path, isolated_home: Path) -> None:
    (tmp_path / "x.csv").write_text("date,open,high,low,close,volume\n2020-01-02,10,11,9,10,5\n")
    cfg = _write(tmp_path, "data: {symbols: {X: x.csv}, aux: {VIX: /nonexistent.csv}}\n"
                           "strategy: {type: sma_crossover}\n")
    r = cli(["run", str(cfg), "--no-store"], isolated_home)
    assert r.returncode == 2, r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert "data.aux.VIX: /nonexistent.csv: file not found" in line


def test_data_warnings_are_one_clean_line_each(tmp_path: Path, isolated_home: Path) -> None:
    rows = [f"2020-02-{d:02d},10,11,9,{12.5 if d == 5 else 10 + d % 3 * 0.1},5" for d in range(3, 29)]
    (tmp_path / "w.csv").write_text("date,open,high,low,close,volume\n" + "\n".join(rows) + "\n")
    cfg = _write(tmp_path, "data: {symbols: {X: w.csv}}\nstrategy: {type: sma_crossover, params: {fast: 2, slow: 5}}\n")
    r = cli(["run", str(cfg), "--json", "--no-store"], isolated_home)
    assert r.returncode == 0, r.stderr
    (line,) = r.stderr.strip().splitlines()  # no Python source line, no "DataWarning:" prefix
    assert line.startswith("warning: ") and "w.csv: row 4: open 10.0 or close 12.5 outside low 9.0" in line
    json.loads(r.stdout)


def _closed_port() -> int:
    import socket

    with socket.socket() as s:  # a port nothing listens on once this socket is closed
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_database_still_prints_the_run_id_and_how_to_load_it(tmp_path: Path,
                                                                           isolated_home: Path) -> None:
    cfg = _write(tmp_path, GOOD)
    r = cli(["run", str(cfg)], isolated_home, TRADETRACE_DB=f"postgresql://postgres@127.0.0.1:{_closed_port()}/x")
    assert r.returncode == 2, r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert "cannot connect" in line and "is not in the database" in line
    run_id = line.split("run ", 1)[1].split()[0]
    assert f"`tradetrace etl --run {run_id}`" in line
    # The hint works: the run's stored events load into a reachable database.
    db = tmp_path / "later.duckdb"
    r = cli(["etl", "--run", run_id, "--db", str(db)], isolated_home)
    assert r.returncode == 0 and "loaded 1 run(s)" in r.stdout, r.stderr
    r = cli(["run", str(cfg), "--no-store"], isolated_home, TRADETRACE_DB=f"postgresql://postgres@127.0.0.1:{_closed_port()}/x")
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert "is not in the database" in line and "events were not stored" in line


def test_run_name_is_printed_as_is_not_as_markup(tmp_path: Path, isolated_home: Path) -> None:
    cfg = _write(tmp_path, 'name: "[red]x[/red]"\n' + GOOD)
    r = cli(["run", str(cfg), "--no-store"], isolated_home, COLUMNS="120")
    assert r.returncode == 0, r.stderr
    assert "[red]x[/red]" in r.stdout


def test_a_sampled_run_reports_the_reduction(tmp_path: Path, isolated_home: Path) -> None:
    """Sampling is opt-in; the run says how many of its events the store kept, in text and in --json."""
    cfg = _write(tmp_path, GOOD + "store: {sampling: {enabled: true}}\n")
    r = cli(["run", str(cfg)], isolated_home)
    assert r.returncode == 0, r.stderr
    assert "stored by sampling" in r.stdout and "x fewer" in r.stdout
    j = json.loads(cli(["run", str(cfg), "--json"], isolated_home).stdout)
    assert 0 < j["stored_event_count"] < j["event_count"]
    plain = json.loads(cli(["run", str(_write(tmp_path, GOOD, "plain.yaml")), "--json"], isolated_home).stdout)
    assert "stored_event_count" not in plain
