"""Analytics database and sweep benchmark: prints figures, then one JSON line.

- `etl_rows_per_s`: rows per second loaded into PostgreSQL by `etl.write_runs_concurrently` (binary
  COPY, 2 streams; 1 stream printed too), trades + runs + latencies of a real run's records
  replicated to `--etl-runs` runs;
- `top_runs_ms_duckdb`, `top_runs_ms_postgres`: median time of `queries.top_runs` (top 10 by sharpe
  with a regime filter) over `--runs` rows in optimization_runs;
- `sweep_runs_per_s`, `sweep_speedup_2_workers`: a sweep of `--sweep-runs` runs of `--bars` bars with the
  process pool, 1 worker then 2 (runs/s ratio), into a DuckDB file. `sweep_speedup_2_workers_short`: the
  same for a sweep of `--short-sweep-runs` runs (12). Why two sizes: a sweep has fixed costs that a second
  worker cannot share (classifier labels computed once, forking, the first run's warm-up, writing the
  last rows), ~0.2 s; in a 12-run sweep of 0.8 s they cap the speed-up well below 2, in a 48-run sweep
  they matter four times less. The time runs from the first label computed to the last row committed.

Needs PostgreSQL at TRADETRACE_PG_URL (default postgresql://postgres@127.0.0.1:5432/test); everything is
written to a throwaway schema / temp folder and removed.

The machine is shared (2 cores): ETL and sweep figures are the best of `--repeats` (default 3), and
the load average before the sweeps is printed.

    python benchmarks/analytics.py [--runs 100000] [--etl-runs 200] [--sweep-runs 48] [--short-sweep-runs 12]
                                   [--bars 40000]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tradetrace import run_backtest
from tradetrace.analytics import etl, queries
from tradetrace.analytics.db import Database, connect
from tradetrace.analytics.testing import pg_unreachable_reason, temp_schema
from tradetrace.events.event import new_run_id
from tradetrace.sweep.runner import run_sweep

REGIMES = ("low", "normal", "high")
STRATEGIES = ("sma_crossover", "ema_crossover", "zscore_reversion", "rsi_reversion", "donchian_breakout")


def sample_records(bars: int) -> etl.RunRecords:
    cfg = {"name": "bench", "data": {"synthetic": {"bars": bars, "seed": 7}},
           "strategy": {"type": "sma_crossover", "params": {"fast": 5, "slow": 20}},
           "execution": {"commission": {"per_share": 0.005}, "slippage_bps": 1},
           "classifiers": [{"type": "volatility", "window": 390, "lookback": 3900}, {"type": "vix"}],
           "store": {"enabled": False}, "database": {"enabled": False}}
    res = run_backtest(cfg)
    return etl.records_from_events(res.events(), etl.RunMeta(initial_cash=100_000.0))


def _retag(table: pa.Table, cid: str) -> pa.Table:
    n = table.num_rows
    for col in ("run_id", "correlation_id"):
        if col not in table.column_names:
            continue
        table = table.set_column(table.schema.get_field_index(col), col, pa.repeat(cid, n).cast(pa.string()))
    return table


def replicate(rec: etl.RunRecords, n: int) -> list[etl.RunRecords]:
    out = []
    for _ in range(n):
        cid = new_run_id()  # as a real run's: time-ordered (events/event.py)
        out.append(etl.RunRecords(cid, _retag(rec.run, cid), _retag(rec.trades, cid), _retag(rec.latencies, cid)))
    return out


def bench_etl(url: str, records: list[etl.RunRecords], streams: int) -> float:
    rows = sum(r.run.num_rows + r.trades.num_rows + r.latencies.num_rows for r in records)
    etl.write_runs_concurrently(url, records[:4], streams=streams)  # warm: schema, catalog lookups
    t = time.perf_counter()
    loaded = etl.write_runs_concurrently(url, records, streams=streams)
    dt = time.perf_counter() - t
    assert loaded == rows
    return rows / dt


def many_runs(n: int, seed: int = 1) -> pa.Table:
    rng = np.random.default_rng(seed)
    ids = [str(uuid.UUID(bytes=rng.bytes(16), version=4)) for _ in range(n)]
    sharpe = rng.normal(0, 1.2, n)
    sharpe[rng.random(n) < 0.02] = np.nan
    cols = {
        "run_id": ids, "correlation_id": ids, "sweep_id": [f"sweep-{k % 50}" for k in range(n)],
        "run_name": ["bench"] * n,
        "strategy_type": [STRATEGIES[k] for k in rng.integers(0, len(STRATEGIES), n)],
        "parameters": [json.dumps({"fast": int(a), "slow": int(b)}) for a, b in rng.integers(2, 200, (n, 2))],
        "sharpe": np.where(np.isnan(sharpe), None, sharpe).tolist(), "total_return": rng.normal(0, 0.1, n),
        "max_drawdown": -np.abs(rng.normal(0, 0.1, n)), "win_rate": rng.random(n),
        "total_trades": rng.integers(0, 5000, n), "market_regime": [REGIMES[k] for k in rng.integers(0, 3, n)],
        "volatility_regime": [REGIMES[k] for k in rng.integers(0, 3, n)], "status": ["completed"] * n,
    }
    arrays = [pa.array(cols[f.name], f.type) if f.name in cols else pa.nulls(n, f.type) for f in etl.RUN_SCHEMA]
    return pa.Table.from_arrays(arrays, schema=etl.RUN_SCHEMA)


def bench_query(db: Database, repeats: int = 30) -> float:
    for _ in range(3):
        queries.top_runs(db, 10, "sharpe", regime="high")
    times = []
    for k in range(repeats):
        t = time.perf_counter()
        cols, rows = queries.top_runs(db, 10, "sharpe", regime=REGIMES[k % 3])
        times.append((time.perf_counter() - t) * 1e3)
        assert len(rows) == 10
    return statistics.median(times)


def load_runs(db: Database, table: pa.Table) -> None:
    with db.transaction():
        db.load("optimization_runs", table)
    if db.dialect == "postgres":
        db.execute("ANALYZE optimization_runs")


def bench_sweep(workers: int, runs: int, bars: int, home: Path) -> float:
    os.environ["TRADETRACE_HOME"] = str(home)
    fasts = list(range(2, 2 + runs))
    grid = {"name": f"bench-{workers}", "data": {"synthetic": {"bars": bars, "seed": 7}},
            "strategy": {"type": "sma_crossover", "params": {"slow": 60}},
            "execution": {"commission": {"per_share": 0.005}, "slippage_bps": 1},
            "classifiers": [{"type": "volatility", "window": 390, "lookback": 3900}],
            "grid": {"fast": fasts}}
    s = run_sweep(grid, workers=workers)
    assert s.completed == runs, s
    return s.runs_per_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100_000, help="rows in optimization_runs for the query timing")
    ap.add_argument("--etl-runs", type=int, default=200, help="runs loaded for the ETL timing")
    ap.add_argument("--sweep-runs", type=int, default=48)
    ap.add_argument("--short-sweep-runs", type=int, default=12)
    ap.add_argument("--bars", type=int, default=40_000, help="bars per sweep run")
    ap.add_argument("--repeats", type=int, default=3, help="best of N for the ETL and sweep figures")
    args = ap.parse_args()
    reason = pg_unreachable_reason()
    if reason:
        raise SystemExit(f"error: {reason}")
    out: dict[str, float] = {}

    rec = sample_records(100_000)
    records = replicate(rec, args.etl_runs)
    rows = sum(r.run.num_rows + r.trades.num_rows + r.latencies.num_rows for r in records)
    # The machine is shared: every figure is the best of `--repeats` (noise only ever slows a run down).
    best: dict[int, float] = {1: 0.0, 2: 0.0}
    for _ in range(args.repeats):
        for streams in (1, 2):
            with temp_schema("tt_bench") as url:
                best[streams] = max(best[streams], bench_etl(url, records, streams))
    one_stream, out["etl_rows_per_s"] = best[1], best[2]
    print(f"ETL into PostgreSQL (binary COPY): {rows:,} rows ({args.etl_runs} runs x {rec.trades.num_rows:,} "
          f"trades + runs + latencies): 1 stream {one_stream:,.0f} rows/s, 2 streams {out['etl_rows_per_s']:,.0f} "
          "rows/s")

    table = many_runs(args.runs)
    high = int(pc.sum(pc.equal(table.column("market_regime"), "high")).as_py())
    with tempfile.TemporaryDirectory() as tmp, connect(str(Path(tmp) / "bench.duckdb")) as db:
        load_runs(db, table)
        out["top_runs_ms_duckdb"] = bench_query(db)
    print(f"top 10 by sharpe, regime filter, {args.runs:,} runs (~{high:,} per regime): "
          f"DuckDB {out['top_runs_ms_duckdb']:.2f} ms (median)")
    with temp_schema("tt_bench") as url, connect(url) as db:
        load_runs(db, table)
        out["top_runs_ms_postgres"] = bench_query(db)
    print(f"top 10 by sharpe, regime filter, {args.runs:,} runs: PostgreSQL {out['top_runs_ms_postgres']:.2f} ms "
          "(median)")

    # The sweeps fork their workers from this process: drop the ETL and query data first, as a user's
    # coordinator holds none (a 1 GB heap made every fork and the workers' first writes slower).
    del rec, records, table
    gc.collect()
    print(f"load average before the sweeps (2 cores, shared): {os.getloadavg()[0]:.2f}, "
          f"peak RSS so far {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    for runs, key in ((args.short_sweep_runs, "_short"), (args.sweep_runs, "")):
        one = two = 0.0
        for k in range(args.repeats):
            with tempfile.TemporaryDirectory() as tmp:
                one = max(one, bench_sweep(1, runs, args.bars, Path(tmp) / f"w1-{k}"))
                two = max(two, bench_sweep(2, runs, args.bars, Path(tmp) / f"w2-{k}"))
        if not key:
            out["sweep_runs_per_s"] = two
        out[f"sweep_speedup_2_workers{key}"] = two / one
        print(f"sweep of {runs} runs x {args.bars:,} bars (traced, event store on, DuckDB): "
              f"1 worker {one:.2f} runs/s, 2 workers {two:.2f} runs/s, speedup {two / one:.2f}x "
              f"(best of {args.repeats})")
    print(json.dumps({k: round(v, 3) for k, v in out.items()}))


if __name__ == "__main__":
    main()
