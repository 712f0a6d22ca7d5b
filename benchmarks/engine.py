"""Engine benchmark: the reference workload with tracing off, tracing on, and in backtrader.

Reference workload: SMA 10/30 crossover (long/short, fixed 100 shares, next-open fills), one
symbol, synthetic 1-minute bars. Ours runs N bars with tracing off and on in paired repeats, so both
see the same machine load; the overhead is the median of the per-pair ratios on/off - 1. Pairs
alternate their order (off/on, then on/off: ABBA), so a drift of the machine's speed, or work one run
leaves behind (the store writer finishing a run), does not favour either side. backtrader runs the
same strategy on the first M of the same bars. Data loading and generation are outside the timings
for both.

    python benchmarks/engine.py --bars 1000000 --peer-bars 100000 [--repeats 9] [--memory | --store DIR]

Traced runs persist every event to an event store in a temporary folder (or --store DIR), as a user's
run does; --memory keeps them in memory instead. The analytics database is off: not measured here.

The paired repeats measure a process that runs backtests one after another (a notebook, a script, a
sweep): the warm-up includes store runs, so the store's writer process is started and warm before the
timing (store/service.py). A process's first store run writes through a forked writer instead (a one-off
run pays no writer start-up, but the fork's copy-on-write pages cost the engine): that case is measured
separately, in fresh processes (`--first-runs`, default 3; median), and printed as `overhead_first_run`.

Prints figures, then one JSON line with: bars_per_s_off, bars_per_s_on, overhead,
backtrader_bars_per_s, ratio_vs_backtrader (and more).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tradetrace as tt
from tradetrace.engine import synthetic
from tradetrace.store import service


def reference_config(bars: int, traced: bool, store_dir: str | None) -> dict:
    return {
        "name": "bench-engine",
        "data": {"synthetic": {"bars": bars, "seed": 42, "freq": "1min"}},
        "strategy": {"type": "sma_crossover", "params": {"fast": 10, "slow": 30}},
        "sizing": {"type": "fixed", "quantity": 100},
        "execution": {"fill": "next_open"},
        "tracing": {"enabled": traced},
        "store": {"enabled": store_dir is not None, "path": store_dir},
        "database": {"enabled": False},
    }


def run_ours(md, bars: int, traced: bool, store_dir: str | None) -> tuple[float, tt.BacktestResult]:
    gc.collect()  # garbage of earlier runs is collected here, outside the timing
    t0 = time.perf_counter()
    res = tt.run_backtest(reference_config(bars, traced, store_dir), market=md)
    return time.perf_counter() - t0, res


def first_run_overhead(bars: int, store_dir: str) -> float:
    """on/off - 1 of a fresh process's first store run (its writer a fork), against the mean of an untraced
    run before and after it; the process is warmed with an in-memory traced run (imports, caches)."""
    code = f"""
import gc, json, sys, time
sys.path.insert(0, {str(Path(__file__).parent)!r})
import tradetrace as tt
from tradetrace.engine.synthetic import generate
from engine import reference_config
md, _ = generate({bars}, seed=42, freq="1min")
tt.run_backtest(reference_config(50_000, True, None), market=md)
def timed(traced, store):
    gc.collect()
    t0 = time.perf_counter()
    tt.run_backtest(reference_config({bars}, traced, store), market=md)
    return time.perf_counter() - t0
off1 = timed(False, None)
on = timed(True, {store_dir!r})
off2 = timed(False, None)
print(json.dumps(on / ((off1 + off2) / 2) - 1))
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def run_backtrader(md, bars: int) -> tuple[float, float]:
    import backtrader as bt
    import pandas as pd

    n = min(bars, len(md))
    df = pd.DataFrame({"open": md.open[:n], "high": md.high[:n], "low": md.low[:n], "close": md.close[:n],
                       "volume": md.volume[:n]}, index=pd.to_datetime(md.ts[:n]))

    class SmaCross(bt.Strategy):
        def __init__(self):
            self.cross = bt.ind.CrossOver(bt.ind.SMA(period=10), bt.ind.SMA(period=30))

        def next(self):
            if self.cross > 0:
                self.order_target_size(target=100)
            elif self.cross < 0:
                self.order_target_size(target=-100)

    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(bt.feeds.PandasData(dataname=df, timeframe=bt.TimeFrame.Minutes))
    cerebro.addstrategy(SmaCross)
    cerebro.broker.setcash(100_000.0)
    t0 = time.perf_counter()
    cerebro.run()
    dt = time.perf_counter() - t0
    return n / dt, cerebro.broker.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bars", type=int, default=1_000_000)
    ap.add_argument("--peer-bars", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=9,
                    help="paired off/on repeats (9: the machine is shared, and the median of few pairs moves)")
    ap.add_argument("--store", default=None, help="event store folder (default: a temporary folder)")
    ap.add_argument("--memory", action="store_true", help="keep traced events in memory, not in a store")
    ap.add_argument("--first-runs", type=int, default=3,
                    help="fresh processes measuring a process's first store run (0: skip)")
    args = ap.parse_args()

    md, _ = synthetic.generate(args.bars, seed=42, freq="1min")
    store_dir = None
    tmp = None
    if not args.memory:
        tmp = tempfile.TemporaryDirectory(prefix="tt-bench-")
        store_dir = args.store or tmp.name
    run_ours(md, min(args.bars, 50_000), True, None)  # warm-up (imports, caches)
    if store_dir is not None:
        # the store's writer process: the second store run of a process starts it, later ones use it once ready
        for _ in range(3):
            run_ours(md, min(args.bars, 50_000), True, store_dir)
        service.service().ready(wait=True)
        run_ours(md, min(args.bars, 50_000), True, store_dir)
    offs, ons, ratios = [], [], []
    res_on = None
    for k in range(args.repeats):
        res_on = None  # free the previous traced run's events before timing again
        if k % 2 == 0:
            t_off, _ = run_ours(md, args.bars, False, None)
            t_on, res_on = run_ours(md, args.bars, True, store_dir)
        else:
            t_on, res_on = run_ours(md, args.bars, True, store_dir)
            t_off, _ = run_ours(md, args.bars, False, None)
        offs.append(t_off)
        ons.append(t_on)
        ratios.append(t_on / t_off - 1.0)
        print(f"repeat {k + 1}: off {args.bars / t_off:,.0f} bars/s, on {args.bars / t_on:,.0f} bars/s, "
              f"overhead {ratios[-1]:+.2%}", flush=True)
    assert res_on is not None
    bars_off = args.bars / statistics.median(offs)
    bars_on = args.bars / statistics.median(ons)
    overhead = statistics.median(ratios)
    firsts = [first_run_overhead(args.bars, store_dir) for _ in range(args.first_runs)] if store_dir else []
    bt_rate, bt_value = run_backtrader(md, args.peer_bars)
    print(f"tradetrace tracing off : {bars_off:,.0f} bars/s")
    print(f"tradetrace tracing on  : {bars_on:,.0f} bars/s ({res_on.event_count:,} events per run"
          + (", persisted to the event store" if store_dir else ", kept in memory") + ")")
    print(f"tracing overhead       : {overhead:+.2%} (median of {args.repeats} paired repeats)")
    if firsts:
        print(f"first store run of a process (forked writer): {statistics.median(firsts):+.2%} overhead (median of "
              f"{len(firsts)} fresh processes: {', '.join(f'{x:+.1%}' for x in firsts)})")
    print(f"backtrader             : {bt_rate:,.0f} bars/s on {min(args.peer_bars, args.bars):,} bars "
          f"(final value {bt_value:,.2f})")
    print(f"ratio vs backtrader    : {bars_on / bt_rate:.1f}x (tracing on)")
    out = {
        "bars": args.bars, "peer_bars": min(args.peer_bars, args.bars), "repeats": args.repeats,
        "bars_per_s_off": round(bars_off), "bars_per_s_on": round(bars_on), "overhead": round(overhead, 4),
        "backtrader_bars_per_s": round(bt_rate), "ratio_vs_backtrader": round(bars_on / bt_rate, 2),
        "events_per_run": res_on.event_count, "store": store_dir is not None,
        "overhead_first_run": round(statistics.median(firsts), 4) if firsts else None,
    }
    print(json.dumps(out))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
