"""`tradetrace sql`, `runs` and `etl` on both backends: read-only by default, values always bound."""

from __future__ import annotations

import json
import random
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tradetrace import run_backtest
from tradetrace.analytics import etl
from tradetrace.analytics.db import connect
from tradetrace.cli import app

runner = CliRunner()


def seed_runs(url: str, n: int = 40, seed: int = 3) -> list[dict]:
    """n run rows with random metrics over two strategies and two regimes."""
    rng = random.Random(seed)
    rows = []
    for k in range(n):
        cid = str(uuid.UUID(int=rng.getrandbits(128)))
        rows.append({"run_id": cid, "correlation_id": cid, "strategy_type": ("alpha", "beta")[k % 2],
                     "market_regime": ("calm", "storm")[(k // 2) % 2], "status": "completed",
                     "parameters": json.dumps({"k": k}), "sharpe": rng.uniform(-2, 3) if k % 7 else None,
                     "total_return": rng.uniform(-0.2, 0.4), "total_trades": rng.randint(0, 500)})
    with connect(url) as db:
        etl.write_runs(db, [etl.RunRecords(r["correlation_id"], etl.run_table([r])) for r in rows])
    return rows


def lines(output: str) -> list[dict]:
    return [json.loads(x) for x in output.splitlines() if x.startswith("{")]


def test_runs_top_by_sharpe_with_strategy_and_regime_filters(db_url: str) -> None:
    rows = seed_runs(db_url)
    res = runner.invoke(app, ["runs", "--top", "5", "--by", "sharpe", "--strategy", "alpha", "--regime", "storm",
                              "--db", db_url, "--json"])
    assert res.exit_code == 0, res.output
    want = sorted((r for r in rows if r["strategy_type"] == "alpha" and r["market_regime"] == "storm"
                   and r["sharpe"] is not None), key=lambda r: -r["sharpe"])[:5]
    assert [g["correlation_id"] for g in lines(res.output)] == [w["correlation_id"] for w in want]


def test_runs_values_are_bound_never_pasted(db_url: str) -> None:
    seed_runs(db_url)
    res = runner.invoke(app, ["runs", "--strategy", "alpha' OR '1'='1", "--db", db_url, "--json"])
    assert res.exit_code == 0 and lines(res.output) == []
    res = runner.invoke(app, ["runs", "--by", "sharpe; DROP TABLE trades", "--db", db_url])
    assert res.exit_code == 2 and "--by value" in res.output
    with connect(db_url) as db:
        assert db.scalar("SELECT count(*) FROM optimization_runs") == 40
        assert db.scalar("SELECT count(*) FROM trades") == 0


@pytest.mark.parametrize("statement", ["DELETE FROM optimization_runs", "SELECT 1; DELETE FROM optimization_runs"])
def test_sql_is_read_only_unless_write(db_url: str, statement: str) -> None:
    seed_runs(db_url)
    res = runner.invoke(app, ["sql", statement, "--db", db_url])
    assert res.exit_code == 2 and "error" in res.output
    with connect(db_url) as db:
        assert db.scalar("SELECT count(*) FROM optimization_runs") == 40
    res = runner.invoke(app, ["sql", "DELETE FROM optimization_runs WHERE strategy_type = ?", "-p", "beta",
                              "--write", "--db", db_url])
    assert res.exit_code == 0, res.output
    with connect(db_url) as db:
        assert db.scalar("SELECT count(*) FROM optimization_runs") == 20


def test_sql_binds_parameters_and_prints_json(db_url: str) -> None:
    rows = seed_runs(db_url)
    res = runner.invoke(app, ["sql", "SELECT count(*) AS n FROM optimization_runs WHERE strategy_type = ? "
                              "AND total_trades > ?", "-p", "beta", "-p", "250", "--db", db_url, "--json"])
    assert res.exit_code == 0, res.output
    assert lines(res.output) == [{"n": sum(r["strategy_type"] == "beta" and r["total_trades"] > 250 for r in rows)}]


def test_sql_error_is_one_line_exit_2(db_url: str) -> None:
    res = runner.invoke(app, ["sql", "SELECT nope FROM optimization_runs", "--db", db_url])
    assert res.exit_code == 2 and res.output.count("error:") == 1


def test_etl_backfills_the_event_store_idempotently(db_url: str) -> None:
    cfg = {"name": "etl-cli", "data": {"synthetic": {"bars": 3000, "seed": 9}},
           "strategy": {"type": "sma_crossover", "params": {"fast": 5, "slow": 20}}, "database": {"enabled": False}}
    ids = {run_backtest(cfg).run_id, run_backtest(cfg).run_id}
    for _ in range(2):
        res = runner.invoke(app, ["etl", "--db", db_url])
        assert res.exit_code == 0 and "loaded 2 run(s)" in res.output, res.output
    with connect(db_url) as db:
        assert {str(r[0]) for r in db.query("SELECT correlation_id FROM optimization_runs")[1]} == ids
        per_run = db.query("SELECT r.correlation_id, r.total_trades, count(t.close_seq) FROM optimization_runs r "
                           "LEFT JOIN trades t ON t.correlation_id = r.correlation_id GROUP BY 1, 2")[1]
    assert all(total == n for _, total, n in per_run)


def test_runs_falls_back_to_the_event_store_when_the_database_is_empty() -> None:
    cfg = {"name": "store-only", "data": {"synthetic": {"bars": 2000, "seed": 9}},
           "strategy": {"type": "sma_crossover"}, "database": {"enabled": False}}
    rid = run_backtest(cfg).run_id
    res = runner.invoke(app, ["runs", "--json"])
    assert res.exit_code == 0, res.output
    assert [r["run_id"] for r in lines(res.output)] == [rid]


def _cleanup(path: Path) -> None:
    if path.exists():
        path.unlink()  # written by the PostgreSQL server (its user): removable by the test's user only as root


@pytest.mark.parametrize("kind", ["copy_to_program", "copy_to_file", "two_statements", "do_block", "writable_cte",
                                  "select_into"])
def test_read_only_sql_writes_nothing_anywhere(db_url: str, kind: str) -> None:
    """A READ ONLY transaction (PostgreSQL) and a read-only file (DuckDB) let COPY TO write files: read-only mode
    runs one query, on both backends."""
    seed_runs(db_url)
    target = Path(f"/tmp/tt_ro_{uuid.uuid4().hex}")
    statement = {
        "copy_to_program": f"COPY (SELECT 1) TO PROGRAM 'touch {target}'",
        "copy_to_file": f"COPY (SELECT 1) TO '{target}'",
        "two_statements": "SELECT 1; DELETE FROM optimization_runs",
        "do_block": "DO $$ BEGIN DELETE FROM optimization_runs; END $$",
        "writable_cte": "WITH x AS (DELETE FROM optimization_runs RETURNING 1) SELECT count(*) FROM x",
        "select_into": "SELECT * INTO stolen FROM optimization_runs",
    }[kind]
    try:
        res = runner.invoke(app, ["sql", statement, "--db", db_url])
        assert res.exit_code == 2 and res.output.count("error:") == 1, res.output
        assert "read-only mode runs one query" in res.output and "use --write" in res.output
        assert not target.exists()
    finally:
        _cleanup(target)
    with connect(db_url) as db:
        assert db.scalar("SELECT count(*) FROM optimization_runs") == 40
        assert db.scalar("SELECT count(*) FROM information_schema.tables WHERE table_name = 'stolen'") == 0
    res = runner.invoke(app, ["sql", "SELECT count(*) AS n, 'delete; drop' AS s FROM optimization_runs", "--db",
                              db_url, "--json"])
    assert res.exit_code == 0 and lines(res.output) == [{"n": 40, "s": "delete; drop"}], res.output


def test_read_only_postgres_queries_run_as_a_role_that_cannot_act_on_the_server(postgres_ready: None) -> None:
    """Beyond the text check: a function call inside an allowed query runs without the login's superuser
    rights (here: terminating another session)."""
    import psycopg

    from tradetrace.analytics.testing import pg_url, temp_schema

    with temp_schema() as url, psycopg.connect(pg_url(), autocommit=True) as victim:
        seed_runs(url, n=2)
        res = runner.invoke(app, ["sql", "SELECT current_user AS u", "--db", url, "--json"])
        assert res.exit_code == 0 and lines(res.output) == [{"u": "pg_read_all_data"}], res.output
        res = runner.invoke(app, ["sql", "SELECT pg_terminate_backend(?)", "-p", str(victim.info.backend_pid),
                                  "--db", url])
        assert res.exit_code == 2 and "must be a superuser to terminate" in res.output, res.output
        assert victim.execute("SELECT 1").fetchone() == (1,)


def test_question_marks_in_literals_are_not_placeholders(db_url: str) -> None:
    seed_runs(db_url, n=2)
    res = runner.invoke(app, ["sql", "SELECT 'why?' AS q, 1 AS \"odd?\", ? AS v /* ? */ -- ?", "-p", "x",
                              "--db", db_url, "--json"])
    assert res.exit_code == 0 and lines(res.output) == [{"q": "why?", "odd?": 1, "v": "x"}], res.output


def test_postgres_jsonb_question_mark_operators_are_written_doubled(postgres_ready: None) -> None:
    from tradetrace.analytics.testing import temp_schema

    with temp_schema() as url:
        seed_runs(url)
        for sql, args, want in (("parameters ?? ?", ["k"], 40), ("parameters ?? ?", ["nope"], 0),
                                ("parameters ??| ARRAY['nope', ?]", ["k"], 40), ("parameters ?? 'k'", [], 40)):
            params = [a for v in args for a in ("-p", v)]
            res = runner.invoke(app, ["sql", f"SELECT count(*) AS n FROM optimization_runs WHERE {sql}", *params,
                                      "--db", url, "--json"])
            assert res.exit_code == 0 and lines(res.output) == [{"n": want}], (sql, res.output)
        res = runner.invoke(app, ["sql", "SELECT count(*) FROM optimization_runs WHERE parameters ? 'k'", "--db", url])
        assert res.exit_code == 2 and res.output.count("error:") == 1, res.output
        assert "1 ? placeholder(s) but 0 parameter(s)" in res.output and "as ??, ??|, ??&" in res.output


@pytest.mark.parametrize("text", ["", "   ", "-- just a comment"])
def test_empty_sql_is_one_line_error(db_url: str, text: str) -> None:
    seed_runs(db_url, n=2)
    for extra in ([], ["--write"]):
        res = runner.invoke(app, ["sql", "--db", db_url, *extra, "--", text])
        assert res.exit_code == 2 and res.output.count("error:") == 1, res.output
        assert "no SQL statement" in res.output and "Traceback" not in res.output


def store_run(name: str = "store-only", strategy: str = "sma_crossover", bars: int = 2000) -> str:
    cfg = {"name": name, "data": {"synthetic": {"bars": bars, "seed": 9}}, "strategy": {"type": strategy},
           "database": {"enabled": False}}
    return run_backtest(cfg).run_id


@pytest.mark.parametrize(("args", "why"), [
    (["--run", str(uuid.UUID(int=7))], "unknown run '00000000-0000-0000-0000-000000000007' in the event store"),
    (["--run", "kill-thread"], "run id 'kill-thread': not a UUID"),
    (["--run", "../../etc/passwd"], "run id '../../etc/passwd': not a UUID"),
    (["--store", "/nonexistent/tt-events"], "no event store at /nonexistent/tt-events"),
])
def test_etl_refuses_unknown_runs_and_missing_stores_before_writing(tmp_path: Path, args: list[str],
                                                                     why: str) -> None:
    store_run()
    db = tmp_path / "etl.duckdb"
    res = runner.invoke(app, ["etl", "--db", str(db), *args])
    assert res.exit_code == 2 and res.output.count("error:") == 1 and why in res.output, res.output
    assert not db.exists()  # refused before the database was created


def test_runs_with_no_match_names_the_filters_and_the_strategies(db_url: str) -> None:
    seed_runs(db_url)
    res = runner.invoke(app, ["runs", "--top", "10", "--by", "sharpe", "--strategy", "momentum", "--db", db_url])
    assert res.exit_code == 0 and res.stdout == "", res.output
    assert res.stderr.strip() == ("no runs match (strategy=momentum, status=completed); strategies in the database "
                                  "(--status all lists runs of any status): alpha, beta")
    res = runner.invoke(app, ["runs", "--strategy", "alpha", "--status", "incomplete", "--db", db_url, "--json"])
    assert res.exit_code == 0 and res.stdout == ""
    assert "no runs match (strategy=alpha, status=incomplete)" in res.stderr


def test_runs_on_the_event_store_applies_the_filters_that_fit_it() -> None:
    small, big = store_run("small", bars=2000), store_run("big", bars=4000)
    res = runner.invoke(app, ["runs", "--by", "event_count", "--json"])
    assert res.exit_code == 0 and [r["run_id"] for r in lines(res.output)] == [big, small], res.output
    res = runner.invoke(app, ["runs", "--by", "event_count", "--asc", "--top", "1", "--json"])
    assert [r["run_id"] for r in lines(res.output)] == [small]
    res = runner.invoke(app, ["runs", "--strategy", "small", "--status", "completed", "--json"])
    assert [r["run_id"] for r in lines(res.output)] == [small]
    for status in ("failed", "incomplete"):
        res = runner.invoke(app, ["runs", "--status", status, "--json"])
        assert res.exit_code == 0 and lines(res.output) == [], res.output
        assert f"no runs match (status={status}); strategies in the event store: sma_crossover" in res.stderr
    res = runner.invoke(app, ["runs", "--strategy", "momentum", "--json"])  # sma_crossover's family
    assert sorted(r["run_id"] for r in lines(res.output)) == sorted([small, big]), res.output
    res = runner.invoke(app, ["runs", "--strategy", "breakout"])
    assert res.exit_code == 0 and "no runs match (strategy=breakout)" in res.stderr, res.output
    for args, why in ((["--by", "sharpe"], "event store's runs have no sharpe"),
                      (["--regime", "calm"], "--regime needs the analytics database"),
                      (["--volatility", "high"], "--volatility needs the analytics database")):
        res = runner.invoke(app, ["runs", *args])
        assert res.exit_code == 2 and res.output.count("error:") == 1 and why in res.output, (args, res.output)


def test_a_database_without_the_schema_is_not_created_by_reading(db_url: str) -> None:
    """A fresh PostgreSQL database (here a fresh schema) or no DuckDB file: read-only commands say so (and
    `runs` lists the event store), and create nothing."""
    res = runner.invoke(app, ["sql", "SELECT 1", "--db", db_url])
    assert res.exit_code == 2 and res.output.count("error:") == 1, res.output
    assert ("no tradetrace schema in" in res.output and "run a backtest or `tradetrace etl`" in res.output
            or "no analytics database at" in res.output), res.output
    rid = store_run()
    res = runner.invoke(app, ["runs", "--db", db_url, "--json"])
    assert res.exit_code == 0 and [r["run_id"] for r in lines(res.output)] == [rid], res.output
    if db_url.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(db_url) as con:
            assert con.execute("SELECT count(*) FROM information_schema.tables "
                               "WHERE table_schema = current_schema()").fetchone() == (0,)
    else:
        assert not Path(db_url).exists()
    res = runner.invoke(app, ["etl", "--db", db_url])
    assert res.exit_code == 0 and "loaded 1 run(s)" in res.output
    res = runner.invoke(app, ["sql", "SELECT count(*) AS n FROM optimization_runs", "--db", db_url, "--json"])
    assert res.exit_code == 0 and lines(res.output) == [{"n": 1}]


def test_etl_skips_a_stored_run_whose_id_is_not_a_uuid(db_url: str) -> None:
    """Stores written before the engine required UUID run ids may hold others: etl loads the rest and says
    which it skipped, instead of a driver's traceback."""
    from tradetrace.config import parse_config
    from tradetrace.engine.backtest import load_data
    from tradetrace.events.recorder import RunInfo, RunTotals
    from tradetrace.store import EventStore

    rid = store_run()
    cfg = parse_config({"data": {"synthetic": {"bars": 200, "seed": 1}}, "strategy": {"type": "sma_crossover"}})
    legacy = EventStore().recorder(mode="thread")
    legacy.begin(RunInfo("kill-thread", "legacy", "sma_crossover", {}), load_data(cfg))
    legacy.end(RunTotals("completed", None, 0, {}))
    res = runner.invoke(app, ["etl", "--db", db_url])
    assert res.exit_code == 0 and "loaded 1 run(s)" in res.output, res.output
    assert "not loaded: run 'kill-thread': its id is not a UUID" in " ".join(res.output.split())
    with connect(db_url) as db:
        assert [str(r[0]) for r in db.query("SELECT correlation_id FROM optimization_runs")[1]] == [rid]


def test_sql_table_prints_values_as_text_not_markup(db_url: str) -> None:
    """A value with brackets (a strategy name, a parameter, a reason) is printed as it is, not as rich markup."""
    seed_runs(db_url, n=2)
    res = runner.invoke(app, ["sql", "SELECT '[bold]x[/bold]' AS v, '[/oops]' AS w", "--db", db_url])
    assert res.exit_code == 0, res.output
    assert "[bold]x[/bold]" in res.output and "[/oops]" in res.output


def test_runs_shows_the_sort_column_it_was_not_showing(db_url: str) -> None:
    """`runs --by sortino` printed "top N runs by sortino" with no Sortino ratio in the table nor in --json."""
    rows = seed_runs(db_url)
    with connect(db_url) as db:
        for k, r in enumerate(rows):
            db.execute("UPDATE optimization_runs SET sortino = ? WHERE correlation_id = ?",
                       [k / 100, r["correlation_id"]])
    res = runner.invoke(app, ["runs", "--top", "2", "--by", "sortino", "--db", db_url, "--json"])
    assert res.exit_code == 0, res.output
    assert [g["sortino"] for g in lines(res.output)] == [0.39, 0.38]
    res = runner.invoke(app, ["runs", "--top", "1", "--by", "sortino", "--db", db_url], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    header = next(x for x in res.output.splitlines() if "sharpe" in x)
    assert header.split("┃")[-2].strip() == "sortino" and "0.3900" in res.output


def test_runs_lists_completed_runs_unless_asked(db_url: str) -> None:
    """A failed run's metrics cover only the part before its error: the best runs are completed ones by default;
    `--status all` lists every run, `--status failed` the failed ones."""
    rows = seed_runs(db_url, n=12)
    failed = {"run_id": str(uuid.uuid4()), "strategy_type": "alpha", "status": "failed", "sharpe": 99.0,
              "parameters": json.dumps({"k": -1})}
    failed["correlation_id"] = failed["run_id"]
    with connect(db_url) as db:
        etl.write_runs(db, [etl.RunRecords(failed["correlation_id"], etl.run_table([failed]))])
    best = max((r for r in rows if r["sharpe"] is not None), key=lambda r: r["sharpe"])

    def first(*args: str) -> str:
        res = runner.invoke(app, ["runs", "--top", "1", *args, "--db", db_url, "--json"])
        assert res.exit_code == 0, res.output
        return lines(res.output)[0]["correlation_id"]

    assert first() == best["correlation_id"]
    assert first("--status", "all") == first("--status", "failed") == failed["correlation_id"]
    res = runner.invoke(app, ["runs", "--status", "done", "--db", db_url])
    assert res.exit_code == 2 and "--status value 'done'" in res.output


def test_runs_strategy_filter_takes_a_family(db_url: str) -> None:
    """`--strategy momentum` (the issue's example) lists every momentum strategy's runs; a type or a run name
    still matches itself."""
    rows = []
    for k, (stype, name) in enumerate([("sma_crossover", "a"), ("ema_crossover", "b"), ("zscore_reversion", "c"),
                                       ("donchian_breakout", "momentum-grid")]):
        cid = str(uuid.uuid4())
        rows.append({"run_id": cid, "correlation_id": cid, "strategy_type": stype, "run_name": name,
                     "status": "completed", "sharpe": float(k), "parameters": json.dumps({})})
    with connect(db_url) as db:
        etl.write_runs(db, [etl.RunRecords(r["correlation_id"], etl.run_table([r])) for r in rows])

    def types(strategy: str) -> list[str]:
        res = runner.invoke(app, ["runs", "--strategy", strategy, "--db", db_url, "--json"])
        assert res.exit_code == 0, res.output
        return sorted(r["strategy_type"] for r in lines(res.output))

    assert types("momentum") == ["ema_crossover", "sma_crossover"]
    assert types("mean_reversion") == ["zscore_reversion"]
    assert types("ema_crossover") == ["ema_crossover"]
    assert types("momentum-grid") == ["donchian_breakout"]  # a run name
