"""Where tradetrace keeps its data: one place decides, environment variables override.

- `TRADETRACE_HOME`   (default `./tradetrace-data`): the root of everything below
- `TRADETRACE_EVENTS` (default `$TRADETRACE_HOME/events`): the Parquet event store
- `TRADETRACE_DB`     (default `$TRADETRACE_HOME/analytics.duckdb`): the analytics database URL or file
"""

from __future__ import annotations

import os
from pathlib import Path


def data_home() -> Path:
    return Path(os.environ.get("TRADETRACE_HOME", "tradetrace-data"))


def events_dir(configured: str | None = None) -> Path:
    if configured:
        return Path(configured)
    env = os.environ.get("TRADETRACE_EVENTS")
    return Path(env) if env else data_home() / "events"


def database_url(configured: str | None = None) -> str:
    if configured:
        return configured
    return os.environ.get("TRADETRACE_DB") or str(data_home() / "analytics.duckdb")


def folder_problem(path: Path) -> str | None:
    """Why `path` cannot be (or become) a folder: it, or the first of its parents that exists, is a file."""
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        return f"{existing} is a file, not a folder"
    return None
