"""Fixtures for the event store tests: a store in the test's isolated home, small reference runs."""

from __future__ import annotations

from typing import Any

import pytest

from tradetrace.store import EventStore


def run_config(bars: int = 20_000, chunk: int = 4_096, **store: Any) -> dict[str, Any]:
    """The reference workload (SMA 10/30 crossover) on synthetic minute bars, analytics DB off."""
    return {
        "name": "store-test",
        "data": {"synthetic": {"bars": bars, "seed": 3, "freq": "1min"}},
        "strategy": {"type": "sma_crossover", "params": {"fast": 10, "slow": 30}},
        "tracing": {"chunk_bars": chunk},
        "store": store,
        "database": {"enabled": False},
    }


@pytest.fixture
def store() -> EventStore:
    return EventStore()
