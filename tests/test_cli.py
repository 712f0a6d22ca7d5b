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


def cli(args: list[str], home: Path, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    exe = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "tradetrace.cli"]
    env = {**os.environ, "TRADETRACE_HOME": str(home), "COLUMNS": "60"}
    env.pop("TRADETRACE_EVENTS", None)
    env.pop("TRADETRACE_DB", None)
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
    ("data: {symbols: {X: missing_file.csv}}\nstrategy: {type: sma_crossover}\n", ["missing_file.csv", "not found"]),
    (GOOD.replace("bars: 3000", "bars: 30") + "classifiers: [{type: volatility}, {type: volatility}]\n",
     ["classifier names", "volatility"]),
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
