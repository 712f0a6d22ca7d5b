"""A traced run in a child process, for the kill tests: prints `run <id>` then `rows <n>` per chunk.

usage: python child.py ROOT BARS CHUNK DURABILITY_EVENTS [DURABILITY_MS [SLEEP_MS]]

SLEEP_MS > 0 makes every bar take that long (a slow strategy: its events must still become durable
within the durability window, long before its chunk of bars ends).
"""

from __future__ import annotations

import sys
import time
import uuid

import tradetrace as tt
from tradetrace.store import EventStore
from tradetrace.strategies.builtin import MovingAverageCrossover


class _Slow(MovingAverageCrossover):
    sleep_s = 0.0

    def next(self, i: int) -> None:
        time.sleep(self.sleep_s)
        super().next(i)


def main() -> None:
    root, bars, chunk, durability = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    durability_ms = int(sys.argv[5]) if len(sys.argv) > 5 else 50
    sleep_ms = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0
    run_id = str(uuid.uuid4())
    print(f"run {run_id}", flush=True)
    params = {"fast": 10, "slow": 30}
    cfg = {"name": "child", "data": {"synthetic": {"bars": bars, "seed": 5}},
           "strategy": {"type": "sma_crossover", "params": params},
           "tracing": {"chunk_bars": chunk}, "database": {"enabled": False}}
    strategy = None
    if sleep_ms > 0:
        strategy = _Slow(params)
        strategy.sleep_s = sleep_ms / 1000
    rec = EventStore(root).recorder(durability_events=durability, durability_ms=durability_ms)
    res = tt.run_backtest(cfg, recorder=rec, correlation_id=run_id, strategy=strategy,
                          progress=lambda done, total: print(f"rows {done}", flush=True))
    print(f"done {res.event_count}", flush=True)


if __name__ == "__main__":
    main()
