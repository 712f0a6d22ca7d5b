"""The Parquet event store (issue 3): durable, compact, queryable lineage for every run.

Interim: until the store lands, `recorder_for` keeps events in memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tradetrace.events.recorder import MemoryRecorder, Recorder

if TYPE_CHECKING:
    from tradetrace.config import RunConfig


def recorder_for(cfg: RunConfig) -> Recorder:
    """The recorder a traced run writes to when the caller gave none."""
    return MemoryRecorder()
