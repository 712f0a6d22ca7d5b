"""Readers: Arrow/pandas/Polars loads, lineage, trade chains, latency, direct DuckDB/Polars reads."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tradetrace as tt
from tradetrace.store import EventStore, StoreError, layout

from .conftest import run_config


@pytest.fixture
def two_runs(store: EventStore) -> list[tt.BacktestResult]:
    return [tt.run_backtest(run_config(bars=15_000, chunk=4_000)) for _ in range(2)]


def test_duckdb_and_polars_read_the_files_directly_with_hive_partitioning(store, two_runs) -> None:
    glob = f"{store.root}/*/*/*.parquet"
    run = two_runs[0]
    sql = (f"SELECT count(*), count(DISTINCT event_type) FROM read_parquet('{glob}', hive_partitioning=true, "
           f"union_by_name=true) WHERE correlation_id = '{run.run_id}'")
    n, types = duckdb.sql(sql).fetchall()[0]
    assert n == run.event_count and types == len(run.counts)
    fills = (pl.scan_parquet(f"{store.root}/*/event_type=FILL/*.parquet", hive_partitioning=True)
             .filter(pl.col("correlation_id") == run.run_id).collect())
    assert fills.height == run.counts["FILL"] and set(fills["event_type"]) == {"FILL"}


def test_every_event_type_of_a_run_at_once_in_polars_and_duckdb(store, two_runs) -> None:
    """Types have different payload columns: Polars needs `missing_columns="insert", extra_columns="ignore"`
    (the columns of the first file: the common ones), DuckDB `union_by_name=true` (every type's columns), as the
    README shows."""
    run = two_runs[1]
    glob = f"{store.root}/*/*/*.parquet"
    with pytest.raises(pl.exceptions.SchemaError, match="extra column"):
        pl.scan_parquet(glob, hive_partitioning=True).collect()
    events = (pl.scan_parquet(glob, hive_partitioning=True, missing_columns="insert", extra_columns="ignore")
              .filter(pl.col("correlation_id") == run.run_id).collect())
    assert events.height == run.event_count
    assert dict(events.group_by("event_type").len().iter_rows()) == run.counts
    assert events["seq"].sort().to_list() == list(range(run.event_count))
    rows = duckdb.sql(f"SELECT event_type, count(*), count(exit_reason) FROM read_parquet('{glob}', "
                      f"hive_partitioning=true, union_by_name=true) WHERE correlation_id = '{run.run_id}' "
                      "GROUP BY 1").fetchall()
    assert {t: n for t, n, _ in rows} == run.counts
    assert {t: k for t, _, k in rows if k} == {"POSITION_CLOSE": run.counts["POSITION_CLOSE"]}  # one type's payload


def test_load_events_filters_and_conveniences(store, two_runs) -> None:
    run = two_runs[1]
    tab = store.load_events(run.run_id, types=["FILL", "ORDER"])
    assert tab.num_rows == run.counts["FILL"] + run.counts["ORDER"]
    assert tab.column("seq").to_pylist() == sorted(tab.column("seq").to_pylist())
    ts = store.load_events(run.run_id, types=["BAR"]).column("timestamp")
    mid = ts[5000].as_py()
    part = store.load_events(run.run_id, types=["BAR"], start=mid)
    assert part.num_rows == run.counts["BAR"] - 5000
    assert len(store.load_events_df(run.run_id, types=["SIGNAL"])) == run.counts["SIGNAL"]
    assert store.load_events_pl(run.run_id, types=["SIGNAL"]).height == run.counts["SIGNAL"]
    stored = store.load_events(run.run_id)
    assert stored.to_pandas().equals(run.events().select(stored.column_names).to_pandas())  # NaN-aware
    # strings come back dictionary-encoded (a run id is one value, not a million copies), in both readers
    for name in ("correlation_id", "event_type", "source_container", "symbol"):
        assert stored.schema.field(name).type == pa.dictionary(pa.int32(), pa.string()), name
    assert stored.column("correlation_id").combine_chunks().dictionary.to_pylist() == [run.run_id]
    assert run.events().schema.equals(stored.schema)


def _decoded(tab: pa.Table) -> pd.DataFrame:
    """Dictionary columns as plain strings (a head of a run may have a smaller dictionary, not other values),
    as pandas (whose `equals` takes NaN prices of market orders as equal)."""
    return pa.table({n: c.cast(c.type.value_type) if pa.types.is_dictionary(c.type) else c
                     for n, c in zip(tab.column_names, tab.columns, strict=True)}).to_pandas()


def test_load_events_limit_reads_the_first_events_of_every_segment(store) -> None:
    run = tt.run_backtest(run_config(bars=15_000, chunk=1_000, durability_events=2_000))
    assert len(list(store.root.glob(f"date=*/event_type=BAR/{run.run_id}*.parquet"))) > 1  # several segments
    for compacted in (False, True):
        whole = store.load_events(run.run_id)
        fills = store.load_events(run.run_id, types=["FILL", "SIGNAL"])
        for n in (1, 7, 64, 65, 3_000, whole.num_rows + 10):
            head = store.load_events(run.run_id, limit=n)
            assert head.schema.equals(whole.schema)
            assert _decoded(head).equals(_decoded(whole.slice(0, n))), (compacted, n)
            head = store.load_events(run.run_id, types=["fill", "signal"], limit=n)
            assert _decoded(head).equals(_decoded(fills.slice(0, n))), (compacted, n)
        mid = whole.column("timestamp")[4_000].as_py()
        windowed = store.load_events(run.run_id, start=mid)
        assert _decoded(store.load_events(run.run_id, start=mid, limit=50)).equals(_decoded(windowed.slice(0, 50)))
        assert store.load_events(run.run_id, limit=0).num_rows == 0
        store.compact(run.run_id)
    with pytest.raises(StoreError, match="limit must be >= 0"):
        store.load_events(run.run_id, limit=-1)


def test_trade_lineage_matches_the_engine_trades(store, two_runs) -> None:
    """Closed trades as the engine's, then the position still open at the end (581 opens, 580 closes) with its
    entry chain and null exit fields."""
    run = two_runs[0]
    assert run.counts["POSITION_OPEN"] == run.counts["POSITION_CLOSE"] + 1 and len(run.open_positions) == 1
    tl = store.trade_lineage(run.run_id).to_pandas()
    trades = run.trades
    assert len(tl) == len(trades) + 1
    closed, still_open = tl.iloc[:-1], tl.iloc[-1]
    for col in ("entry_signal_id", "entry_order_id", "entry_fill_id", "exit_signal_id", "exit_order_id",
                "exit_fill_id", "close_id"):
        assert closed[col].tolist() == trades[col].tolist()
    assert closed["pnl"].round(6).tolist() == trades["pnl"].round(6).tolist()
    pos = run.open_positions[0]
    assert still_open["entry_fill_id"] == f"{run.run_id}:{pos['entry_fill_seq']}"
    assert still_open["entry_signal_id"] == f"{run.run_id}:{pos['entry_signal_seq']}"
    assert store.find_signal_to_fill_path(still_open["entry_fill_id"]).chain[-1].event_id == \
        still_open["entry_signal_id"]
    assert (still_open["symbol"], still_open["quantity"]) == (pos["symbol"], pos["quantity"])
    assert still_open["side"] == (1 if pos["side"] == "long" else -1)
    assert still_open["trade_id"] == trades["trade_id"].max() + 1
    for col in ("exit_signal_id", "exit_order_id", "exit_fill_id", "close_id", "pnl", "pnl_pct", "exit_reason"):
        assert pd.isna(still_open[col]), col


def test_signal_to_fill_path_and_lineage(store, two_runs) -> None:
    run = two_runs[0]
    t = run.trades.iloc[3]
    path = store.find_signal_to_fill_path(t.exit_fill_id)
    assert [e.event_type for e in path.chain] == ["FILL", "ORDER", "SIGNAL"]
    assert path.chain[-1].event_id == t.exit_signal_id
    lin = store.lineage(t.exit_order_id)
    assert [e.event_type for e in lin.ancestors][:2] == ["SIGNAL", "BAR"]
    assert lin.ancestors[-1].event_type == "RUN_START"
    assert t.exit_fill_id in lin.descendants.column("event_id").to_pylist()
    assert t.close_id in lin.descendants.column("event_id").to_pylist()
    with pytest.raises(StoreError, match="not a FILL"):
        store.find_signal_to_fill_path(t.exit_order_id)
    # every event's partition_key is the folder its file is in (the run's start date, not market time)
    for e in store.trace(t.exit_fill_id).chain + path.chain + lin.ancestors:
        assert list(store.root.glob(f"{e.partition_key}/{run.run_id}*.parquet")), e.partition_key


def test_lineage_follows_links_both_ways(store, two_runs) -> None:
    """A next-open FILL's further cause is the BAR whose open priced it (DESIGN.md: links): the FILL's lineage
    lists that BAR, and the BAR's descendants hold the FILL and what it caused, marked via_link. The same
    before compaction, after it (the run's seq index), and from an index file written before it held links."""
    run = two_runs[0]
    t = run.trades.iloc[3]
    fill = run.event(t.exit_fill_id)
    assert len(fill.links) == 1
    bar_id = fill.links[0]
    bar = run.event(bar_id)
    assert bar.event_type == "BAR" and bar.data["open"] is not None
    assert bar.sequence_number > run.event(t.exit_signal_id).sequence_number  # the next bar, not the signal's

    def check() -> None:
        lin = store.lineage(t.exit_fill_id)
        assert [e.event_id for e in lin.linked] == [bar_id]
        assert bar_id not in [e.event_id for e in lin.ancestors]  # the main chain stays FILL -> ORDER -> SIGNAL
        down = store.lineage(bar_id).descendants.to_pydict()
        rows = dict(zip(down["event_id"], zip(down["event_type"], down["via_link"], strict=True), strict=True))
        assert rows[t.exit_fill_id] == ("FILL", True)
        assert rows[t.close_id] == ("POSITION_CLOSE", True)  # caused by the FILL, so reached through the link
        # the ORDER's descendants are reached by causation alone
        assert not any(store.lineage(t.exit_order_id).descendants.column("via_link").to_pylist())

    check()
    assert f"(also caused by {bar_id})" in str(store.trace(t.exit_fill_id))
    store.compact(run.run_id)
    check()
    index = layout.seq_index_path(store.root, run.run_id)
    assert index.exists()
    pq.write_table(pq.read_table(index).drop_columns(["links"]), index)  # as compaction wrote it before links
    check()


def test_latency_report_covers_every_type(store, two_runs) -> None:
    run = two_runs[0]
    rep = store.latency_report(run.run_id).to_pylist()
    assert {r["event_type"] for r in rep} == set(run.counts)
    fill = next(r for r in rep if r["event_type"] == "FILL")
    assert fill["count"] == run.counts["FILL"] and fill["timed"] == run.counts["FILL"]
    assert 0 <= fill["queue_p50_us"] <= fill["queue_p95_us"] <= fill["queue_p99_us"] <= fill["queue_max_us"]


def test_unknown_ids_and_path_escapes_are_store_errors(store, two_runs) -> None:
    with pytest.raises(StoreError, match="unknown run 'nope'"):
        store.load_events("nope")
    with pytest.raises(StoreError, match="invalid run id"):
        store.load_events("../../etc/passwd")
    with pytest.raises(StoreError, match="unknown event id"):
        store.lineage(f"{two_runs[0].run_id}:99999999")
    with pytest.raises(StoreError, match="invalid event id"):
        store.trace("no-colon")
    with pytest.raises(StoreError, match="unknown event type"):
        store.load_events(two_runs[0].run_id, types=["FLIL"])


def test_load_events_takes_one_type_name_and_rejects_bad_times_in_one_line(store, two_runs) -> None:
    run = two_runs[0]
    one = store.load_events(run.run_id, types="fill")
    assert one.num_rows == run.counts["FILL"] and one.equals(store.load_events(run.run_id, types=["FILL"]))
    for arg in ("start", "end"):
        with pytest.raises(StoreError, match=f"^{arg} 'yesterday-ish' is not a date/time \\(") as err:
            store.load_events(run.run_id, **{arg: "yesterday-ish"})
        assert "\n" not in str(err.value)
    with pytest.raises(StoreError, match=r"^start \[1, 2\] is not a date/time"):
        store.load_events_df(run.run_id, start=[1, 2])
    with pytest.raises(StoreError, match="^end '' is not a date/time"):
        store.load_events_pl(run.run_id, end="")
    # the DataFrame conveniences take load_events' arguments, limit included
    assert store.load_events_df(run.run_id, types="SIGNAL", limit=5)["seq"].tolist() == \
        store.load_events(run.run_id, types=["SIGNAL"]).column("seq").to_pylist()[:5]
    assert store.load_events_pl(run.run_id, limit=7).height == 7


@pytest.mark.slow
def test_a_killed_thread_mode_run_has_a_reason_that_fits_its_writer(store, tmp_path) -> None:
    """SIGKILL of a run whose writer is a thread: there is no writer process, so the reason must not name one."""
    script = tmp_path / "run.py"
    script.write_text(
        "import sys, tradetrace as tt\n"
        "from tradetrace.store import EventStore\n"
        "cfg = {'name': 'killed', 'data': {'synthetic': {'bars': 400_000, 'seed': 5}},\n"
        "       'strategy': {'type': 'sma_crossover', 'params': {'fast': 10, 'slow': 30}},\n"
        "       'tracing': {'chunk_bars': 5_000}, 'database': {'enabled': False}}\n"
        "rec = EventStore(sys.argv[1]).recorder(durability_events=8_000, durability_ms=50, mode='thread')\n"
        "tt.run_backtest(cfg, recorder=rec, progress=lambda done, total: print(done, flush=True))\n")
    proc = subprocess.Popen([sys.executable, str(script), str(store.root)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if int(line) >= 30_000:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    (rec,) = store.runs()
    assert rec["status"] == "incomplete"
    assert rec["reason"] == (f"the run's process {proc.pid} died and its writer (process or thread) stopped with it; "
                             f"events from seq {rec['durable_seq_hi'] + 1} on were not durable")


def test_a_type_named_twice_is_loaded_once(store, two_runs) -> None:
    """`--type FILL --type fill` (or types=["FILL", "fill"]) gave every FILL twice."""
    run = two_runs[0]
    twice = store.load_events(run.run_id, types=["FILL", "fill", "SIGNAL"])
    assert twice.num_rows == run.counts["FILL"] + run.counts["SIGNAL"]
    assert twice.equals(store.load_events(run.run_id, types=["FILL", "SIGNAL"]))


def test_a_missing_or_unreadable_file_is_a_one_line_error_naming_it(store) -> None:
    """Readers of a run whose listed file is gone or corrupt: a one-line StoreError naming the file (was a
    FileNotFoundError / ArrowInvalid traceback), the CLI exits 2, and `store compact` leaves the run alone (exit 1)."""
    from typer.testing import CliRunner

    from tradetrace.cli import app

    run = tt.run_backtest(run_config(bars=6_000))
    fill = next(store.root.glob(f"date=*/event_type=FILL/{run.run_id}-s*.parquet"))
    fill.unlink()
    order = next(store.root.glob(f"date=*/event_type=ORDER/{run.run_id}-s*.parquet"))
    order.write_bytes(b"not parquet")
    market_set = next(store.root.glob("_market/*.parquet"))
    fill_id = run.trades.exit_fill_id[0]
    either = (fill, order)  # whichever is read first
    for call, bad in ((lambda: store.load_events(run.run_id, types="FILL"), (fill,)),
                      (lambda: store.load_events(run.run_id, types=["ORDER"], limit=3), (order,)),
                      (lambda: store.latency_report(run.run_id), either),
                      (lambda: store.trade_lineage(run.run_id), either),
                      (lambda: store.trace(fill_id), either),
                      (lambda: store.lineage(fill_id), either),
                      (lambda: store.find_signal_to_fill_path(fill_id), either)):
        with pytest.raises(StoreError) as err:
            call()
        msg = str(err.value)
        assert "\n" not in msg and msg.startswith(tuple(f"damaged run {run.run_id}: {f}: " for f in bad)), msg
    runner = CliRunner()
    r = runner.invoke(app, ["events", run.run_id, "--type", "ORDER"])
    assert r.exit_code == 2 and f"{order}: unreadable (" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["store", "compact"])
    assert r.exit_code == 1 and f"not compacted: damaged run {run.run_id}: " in r.output and "Traceback" not in r.output
    assert not store.run(run.run_id)["compacted"]
    market_set.write_bytes(b"junk")  # the run's BAR prices
    with pytest.raises(StoreError, match=f"^damaged run {run.run_id}: {market_set}: unreadable \\("):
        store.load_events(run.run_id, types="BAR")
