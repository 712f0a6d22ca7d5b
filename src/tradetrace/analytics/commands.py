"""CLI commands of the analytics database: sql, runs, etl."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the analytics commands to the `tradetrace` app."""
