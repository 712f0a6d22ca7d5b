"""Event store benchmark: a store of N runs of the reference workload, then the figures of issue 3.

    python benchmarks/store.py [--runs 10] [--bars 1000000] [--big-events 10000000] [--dir DIR]

Builds the store (each run written through the real recorder, then compacted), then measures:
bytes_per_event (files on disk / events; the runs share one data set, so its market set is stored once;
bytes_per_event_own_data counts it once per run), compression_vs_jsonl (DESIGN decision 5: the same events as
JSON Lines with every TracedEvent field, against one run's files plus its market set; JSONL bytes per type
are measured on up to 20k events of each type of one run and scaled by that run's exact per-type counts),
write_events_per_s (events / wall time of the traced runs with the store on, end() included), load_run_ms
(median, all events of one run by correlation_id), lineage_ms (median, one FILL traced to its SIGNAL, fresh
store object each time), peak_rss_mb (a separate process running one run of >= --big-events events with the store on).
Prints figures, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tradetrace as tt
from tradetrace.engine import synthetic
from tradetrace.events.lineage import to_traced
from tradetrace.events.types import EventType, event_schema
from tradetrace.store import EventStore, market


def config(bars: int, root: str) -> dict:
    """The reference workload (benchmarks/engine.py), traced, persisted to the store at `root`."""
    sys.path.insert(0, str(Path(__file__).parent))
    from engine import reference_config

    cfg = reference_config(bars, True, root)
    cfg["name"] = "bench-store"
    return cfg


def jsonl_bytes(store: EventStore, run_id: str, counts: dict[str, int], per_type: int = 20_000) -> float:
    total = 0.0
    for t, n in counts.items():
        tab = store.load_events(run_id, types=[t]).slice(0, per_type)
        tab = tab.select(event_schema(EventType[t]).names)
        size = sum(len(json.dumps(vars_of(to_traced(tab.slice(i, 1))), default=str)) + 1
                   for i in range(tab.num_rows))
        total += size / tab.num_rows * n
    return total


def vars_of(ev) -> dict:
    return {f: getattr(ev, f) for f in ev.__dataclass_fields__}


def big_run(root: str, events: int) -> tuple[float, int]:
    """Peak RSS (MB) of a fresh process running one run of >= `events` events into the store."""
    bars = int(events / 1.234) + 1
    code = (
        "import sys, tradetrace as tt\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from store import config\n"
        f"res = tt.run_backtest(config({bars}, {root!r}))\n"
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a child forked from this (large)
        # benchmark process would report at least the parent's size; VmHWM is the new image's own peak.
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1]\n"
        "print(res.event_count, hwm)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    return int(out[1]) / 1024, int(out[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--bars", type=int, default=1_000_000)
    ap.add_argument("--big-events", type=int, default=10_000_000)
    ap.add_argument("--dir", default=None, help="store folder (default: a temporary folder)")
    args = ap.parse_args()
    tmp = tempfile.TemporaryDirectory(prefix="tt-store-bench-")
    root = args.dir or tmp.name
    store = EventStore(root)
    md, _ = synthetic.generate(args.bars, seed=42, freq="1min")
    tt.run_backtest(config(min(args.bars, 20_000), tmp.name + "/warm"))  # imports, JIT-free warm-up

    ids, events, wall = [], 0, 0.0
    for k in range(args.runs):
        t0 = time.perf_counter()
        res = tt.run_backtest(config(args.bars, root), market=md)
        dt = time.perf_counter() - t0
        ids.append(res.run_id)
        events += res.event_count
        wall += dt
        print(f"run {k + 1}/{args.runs}: {res.event_count:,} events in {dt:.2f}s", flush=True)
    t0 = time.perf_counter()
    store.compact()
    compact_s = time.perf_counter() - t0
    # Everything the store holds counts: event files, manifests, journals, lineage indexes.
    disk = sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file())
    bpe = disk / events
    counts = store.run(ids[0])["counts"]
    jl = jsonl_bytes(store, ids[0], counts)
    # A run's BAR prices are its data set's market set (stored once, shared by the runs on that data): counted
    # whole in the one run's bytes, as if it were the only run on its data.
    sets = [p for p in (Path(root) / market.MARKET_DIR).glob("*.parquet")]
    set_bytes = sum(p.stat().st_size for p in sets)
    one_run_disk = sum(p.stat().st_size for p in Path(root).rglob(f"{ids[0]}*") if p.is_file()) + set_bytes
    ratio = jl / one_run_disk
    own_bpe = (disk + set_bytes * (len(ids) - 1)) / events  # if every run had its own data set
    print(f"store: {len(ids)} runs, {events:,} events, {disk / 1e6:,.1f} MB on disk, compaction {compact_s:.1f}s")
    print(f"bytes per event        : {bpe:.2f} ({len(sets)} market set(s), {set_bytes / 1e6:.1f} MB, shared by the "
          f"runs; {own_bpe:.2f} if each run had its own data)")
    print(f"compression vs JSONL   : {ratio:.1f}:1 ({jl / counts_total(counts):.0f} B/event as JSON Lines)")
    print(f"write                  : {events / wall:,.0f} events/s (traced runs, store on, end() included; "
          f"{args.runs} runs built in {wall:.1f}s)")

    loads = []
    t0 = time.perf_counter()
    EventStore(root).load_events(ids[len(ids) // 2])  # the process's first load also pays its page faults
    cold_ms = (time.perf_counter() - t0) * 1e3
    for _ in range(7):
        t0 = time.perf_counter()
        tab = EventStore(root).load_events(ids[len(ids) // 2])
        loads.append((time.perf_counter() - t0) * 1e3)
    load_ms = statistics.median(loads)
    print(f"load one run           : {load_ms:.1f} ms median of 7 after one untimed load of {cold_ms:.0f} ms "
          f"({tab.num_rows:,} events, {tab.num_columns} columns, {tab.nbytes / 1e6:.0f} MB in memory)")

    rng = random.Random(1)
    fills = EventStore(root).load_events(ids[-1], types=["FILL"]).column("seq").to_pylist()
    lins = []
    for _ in range(15):
        fid = f"{ids[-1]}:{rng.choice(fills)}"
        t0 = time.perf_counter()
        path = EventStore(root).find_signal_to_fill_path(fid)
        lins.append((time.perf_counter() - t0) * 1e3)
    lin_ms = statistics.median(lins)
    print(f"fill -> signal lineage : {lin_ms:.1f} ms median ({len(path.chain)} events, store of {events:,})")

    rss, big = big_run(root, args.big_events) if args.big_events else (float("nan"), 0)
    print(f"peak RSS, one run      : {rss:,.0f} MB ({big:,} events, store on)")
    print(json.dumps({
        "runs": args.runs, "events": events, "bytes_per_event": round(bpe, 2),
        "bytes_per_event_own_data": round(own_bpe, 2), "compression_vs_jsonl": round(ratio, 1),
        "write_events_per_s": round(events / wall), "load_run_ms": round(load_ms, 1), "lineage_ms": round(lin_ms, 2),
        "peak_rss_mb": None if big == 0 else round(rss), "big_run_events": big, "load_run_cold_ms": round(cold_ms),
        "bench_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }))
    tmp.cleanup()


def counts_total(c: dict[str, int]) -> int:
    return sum(c.values())


if __name__ == "__main__":
    main()
