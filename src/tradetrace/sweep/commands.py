"""CLI commands of parameter sweeps: optimize."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the sweep commands to the `tradetrace` app."""
