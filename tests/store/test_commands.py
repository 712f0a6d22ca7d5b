"""The store's CLI: trace, events, latency, store compact|prune|verify; exit 2 on bad input."""

from __future__ import annotations

import json

from typer.testing import CliRunner

import tradetrace as tt
from tradetrace.cli import app

from .conftest import run_config

runner = CliRunner()


def test_cli_commands_on_a_stored_run() -> None:
    res = tt.run_backtest(run_config(bars=10_000))
    fill = res.trades.exit_fill_id[0]
    r = runner.invoke(app, ["trace", fill])
    assert r.exit_code == 0 and "SIGNAL" in r.output and "FILL" in r.output
    r = runner.invoke(app, ["events", res.run_id, "--type", "FILL", "--limit", "3", "--json"])
    rows = [json.loads(x) for x in r.output.strip().splitlines()]
    assert r.exit_code == 0 and len(rows) == 3 and {x["event_type"] for x in rows} == {"FILL"}
    r = runner.invoke(app, ["latency", res.run_id])
    assert r.exit_code == 0 and "POSITION_CLOSE" in r.output
    assert runner.invoke(app, ["store", "compact"]).exit_code == 0
    r = runner.invoke(app, ["store", "verify", res.run_id])
    assert r.exit_code == 0 and "ok" in r.output
    assert runner.invoke(app, ["store", "prune", "--keep-last", "0"]).exit_code == 0


def test_cli_bad_input_exits_2() -> None:
    for args in (["trace", "nope:3"], ["events", "missing-run"], ["latency", "../x"], ["trace", "bad"],
                 ["store", "prune"]):
        r = runner.invoke(app, args)
        assert r.exit_code == 2, args


def test_verify_of_a_store_without_runs_says_so(tmp_path) -> None:
    """`store verify --root <typo>` printed nothing and exited 0, as if a store had been checked."""
    r = runner.invoke(app, ["store", "verify", "--root", str(tmp_path / "typo")])
    assert r.exit_code == 0 and r.output.strip() == f"no runs in the event store {tmp_path / 'typo'}"
