"""CLI commands of the event store: trace, events, latency, store compact|prune|verify."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the store's commands to the `tradetrace` app."""
