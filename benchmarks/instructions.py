"""Tracing overhead in instructions: the CPU work tracing adds to the engine's process, load-independent.

Wall-time ratios on a shared machine swing with its load (benchmarks/engine.py measures them in paired
repeats); instruction counts do not. Under valgrind's callgrind, the reference workload (SMA 10/30
crossover, synthetic 1-minute bars) runs with tracing off, on in memory, and on with the event store.
Each mode is run twice, after one untimed warm-up run: once with no measured run and once with one;
the difference is one run's instructions, setup excluded. Only the engine's process is counted (the
store's writer process runs beside it on the other core; its interference and the wait for the last
segment are wall-time effects that engine.py measures).

    python benchmarks/instructions.py [--bars 200000]

Needs valgrind. Prints figures, then one JSON line: instructions_off, instructions_memory,
instructions_store, overhead_memory, overhead_store.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CHILD = """
import gc, sys, tempfile
import tradetrace as tt
from tradetrace.engine import synthetic
mode, bars, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
md, _ = synthetic.generate(bars, seed=42, freq="1min")
def cfg():
    return {"name": "bench-instructions", "data": {"synthetic": {"bars": bars, "seed": 42, "freq": "1min"}},
            "strategy": {"type": "sma_crossover", "params": {"fast": 10, "slow": 30}},
            "sizing": {"type": "fixed", "quantity": 100}, "tracing": {"enabled": mode != "off"},
            "store": {"enabled": mode == "store", "path": tempfile.mkdtemp()}, "database": {"enabled": False}}
tt.run_backtest(cfg(), market=md)  # warm-up: imports, caches, first-use allocations
for _ in range(runs):
    gc.collect()
    tt.run_backtest(cfg(), market=md)
"""


def instructions(mode: str, bars: int, runs: int, tmp: Path) -> int:
    """Instructions of the main process (callgrind also follows forks: their lines carry other pids)."""
    log = tmp / f"{mode}.{runs}.log"
    script = tmp / "child.py"
    # A fixed hash seed: str hashes decide dict and set layouts. With random seeds, the same code measured
    # memory mode at +1.18% and +1.76%; with seed 0, per-mode counts still move by ~0.1-0.25% between
    # invocations (run ids and temporary paths are random), so compare builds over several invocations.
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/{mode}.{runs}.%p.out",
                    f"--log-file={log}", sys.executable, str(script), mode, str(bars), str(runs)], check=True,
                   stdout=subprocess.DEVNULL, env=env)
    main_pid = None
    counts: dict[str, int] = {}
    for line in log.read_text().splitlines():
        m = re.match(r"==(\d+)== Collected : (\d+)", line)
        if m:
            counts[m.group(1)] = int(m.group(2))
        m = re.match(r"==(\d+)== Command: ", line)
        if m and main_pid is None:
            main_pid = m.group(1)
    if main_pid not in counts:
        raise SystemExit(f"{log}: no instruction count for the main process")
    return counts[main_pid]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bars", type=int, default=200_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="tt-instr-") as d:
        tmp = Path(d)
        (tmp / "child.py").write_text(CHILD)
        jobs = [(m, r) for m in ("off", "memory", "store") for r in (0, 1)]
        with ThreadPoolExecutor(max_workers=2) as ex:  # independent counts: the machine's load does not matter
            got = dict(zip(jobs, ex.map(lambda j: instructions(j[0], args.bars, j[1], tmp), jobs), strict=True))
    per_run = {m: got[(m, 1)] - got[(m, 0)] for m in ("off", "memory", "store")}
    for m, n in per_run.items():
        print(f"{m:7s}: {n / 1e6:,.1f}M instructions per run of {args.bars:,} bars ({n / args.bars:,.0f} per bar)")
    over_mem = per_run["memory"] / per_run["off"] - 1
    over_store = per_run["store"] / per_run["off"] - 1
    print(f"tracing overhead in instructions: memory {over_mem:+.2%}, event store {over_store:+.2%} "
          f"(engine's process only)")
    print(json.dumps({"bars": args.bars, "instructions_off": per_run["off"], "instructions_memory": per_run["memory"],
                      "instructions_store": per_run["store"], "overhead_memory": round(over_mem, 4),
                      "overhead_store": round(over_store, 4)}))


if __name__ == "__main__":
    main()
