"""Writes a finished run into the analytics database (issue 4)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tradetrace.config import RunConfig
    from tradetrace.engine.result import BacktestResult


def record_run(cfg: RunConfig, result: BacktestResult) -> None:
    """Load one run's metrics, trades and latencies into the configured database."""
