"""A traced run in a child process, for the kill tests: prints `run <id>` then `rows <n>` per chunk.

usage: python child.py ROOT BARS CHUNK DURABILITY_EVENTS
"""

from __future__ import annotations

import sys
import uuid

import tradetrace as tt
from tradetrace.store import EventStore


def main() -> None:
    root, bars, chunk, durability = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    run_id = str(uuid.uuid4())
    print(f"run {run_id}", flush=True)
    cfg = {"name": "child", "data": {"synthetic": {"bars": bars, "seed": 5}},
           "strategy": {"type": "sma_crossover", "params": {"fast": 10, "slow": 30}},
           "tracing": {"chunk_bars": chunk}, "database": {"enabled": False}}
    rec = EventStore(root).recorder(durability_events=durability, durability_ms=50)
    res = tt.run_backtest(cfg, recorder=rec, correlation_id=run_id,
                          progress=lambda done, total: print(f"rows {done}", flush=True))
    print(f"done {res.event_count}", flush=True)


if __name__ == "__main__":
    main()
