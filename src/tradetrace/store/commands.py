"""CLI commands of the event store: trace, events, latency, store compact|prune|verify.

(`tradetrace runs` belongs to the analytics commands; it falls back to `EventStore.runs()`.)
Exit codes: 0 ok, 1 verification found problems (or compact/prune left a damaged run alone), 2 bad input
(unknown run or event id, unsafe id, negative retention).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from typing import Optional, TypeVar

import typer
from rich.table import Table

from tradetrace.events.types import COMMON_FIELDS
from tradetrace.store import EventStore, StoreError, StoreWarning

T = TypeVar("T")


def _store(root: str | None) -> EventStore:
    return EventStore(root)


def _warned(call: Callable[[], T]) -> tuple[T, int]:
    """`call()`, its warnings printed one per line on stderr; and how many were StoreWarnings (a damaged run left
    alone)."""
    from tradetrace.cli import show_warning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = call()
    for w in caught:
        show_warning(w.message, w.category, w.filename, w.lineno)
    return result, sum(issubclass(w.category, StoreWarning) for w in caught)


def register(app: typer.Typer) -> None:
    """Add the store's commands to the `tradetrace` app."""
    from tradetrace.cli import fail, out

    store_app = typer.Typer(no_args_is_help=True, help="Maintain the event store: compact, prune, verify.")
    root_opt = typer.Option(None, "--root", help="event store folder (default $TRADETRACE_EVENTS)")

    @app.command()
    def trace(event_id: str = typer.Argument(..., help="<run id>:<seq>"), root: Optional[str] = root_opt) -> None:  # noqa: UP045
        """Why did this event happen: its causation chain back to the BAR that started it."""
        try:
            out.print(str(_store(root).trace(event_id)), markup=False, highlight=False)
        except StoreError as exc:
            raise fail(str(exc)) from None

    @app.command()
    def events(run_id: str = typer.Argument(...), type_: Optional[list[str]] = typer.Option(  # noqa: UP045
            None, "--type", help="only these event types (repeatable)"),
            limit: int = typer.Option(20, "--limit", min=0, help="rows to print (0: all)"),
            as_json: bool = typer.Option(False, "--json", help="one JSON object per line"),
            root: Optional[str] = root_opt) -> None:  # noqa: UP045
        """Print a run's events in seq order."""
        try:
            tab = _store(root).load_events(run_id, types=type_, limit=limit or None)
        except StoreError as exc:
            raise fail(str(exc)) from None
        cols = [c for c in tab.column_names if tab.column(c).null_count < tab.num_rows]
        rows = tab.select(cols).to_pylist()
        if as_json:
            for r in rows:
                print(json.dumps(r, default=str))
            return
        # Readable at 80 columns: identity, time, cause and source, then the payload as key=value.
        common = {name for name, _ in COMMON_FIELDS} | {"weight"}
        t = Table(show_header=True, header_style="bold", title=f"run {run_id}")
        for c, kw in (("seq", {"justify": "right"}), ("type", {}), ("market time", {"no_wrap": True}),
                      ("cause", {"justify": "right"}), ("source", {}), ("data", {"overflow": "fold"})):
            t.add_column(c, **kw)
        for r in rows:
            data = ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}"
                             for k, v in r.items() if k not in common and v is not None and v != "")
            cause = "" if r["causation_seq"] is None else str(r["causation_seq"])
            t.add_row(str(r["seq"]), r["event_type"], f"{r['timestamp']:%Y-%m-%d %H:%M}", cause,
                      r["source_container"], data)
        out.print(t, markup=False, highlight=False)

    @app.command()
    def latency(run_id: str = typer.Argument(...), root: Optional[str] = root_opt,  # noqa: UP045
                as_json: bool = typer.Option(False, "--json", help="one JSON object per event type")) -> None:
        """Queue and processing time per event type (microseconds)."""
        try:
            rep = _store(root).latency_report(run_id)
        except StoreError as exc:
            raise fail(str(exc)) from None
        wide = out.width >= 140
        estimated = rep.column("estimated").to_pylist()
        title = "q = queue time, p = processing time, in us (--json: mean and p95 too)"
        if any(estimated):
            title += "; * estimated from a sample (weighted by `weight`), count exact"
        t = Table(title=title, header_style="bold")
        keep = [c for c in rep.column_names if c != "estimated" and (wide or c == "event_type" or c == "count"
                or c.endswith(("_p50_us", "_p99_us", "_max_us")))]
        for c in keep:
            label = c.replace("_us", "").replace("queue_", "q ").replace("proc_", "p ").replace("event_type", "type")
            t.add_column(label, justify="left" if c == "event_type" else "right", no_wrap=True)
        for r, est in zip(rep.select(keep).to_pylist(), estimated, strict=True):
            r["event_type"] += "*" if est else ""
            t.add_row(*[("-" if v is None else f"{v:,.1f}") if isinstance(v, float) or v is None else str(v)
                        for v in r.values()])
        if as_json:
            for r in rep.to_pylist():
                print(json.dumps(r, default=str))
            return
        out.print(t)

    @store_app.command("compact")
    def compact_cmd(run_id: Optional[str] = typer.Argument(None), root: Optional[str] = root_opt) -> None:  # noqa: UP045
        """Rewrite finished runs as one file per run and type."""
        try:
            done, damaged = _warned(lambda: _store(root).compact(run_id))
        except StoreError as exc:
            raise fail(str(exc)) from None
        out.print(f"compacted {len(done)} run(s)")
        if damaged:
            raise typer.Exit(1)

    @store_app.command("prune")
    def prune_cmd(older_than_days: Optional[float] = typer.Option(None, "--older-than-days"),  # noqa: UP045
                  keep_last: Optional[int] = typer.Option(None, "--keep-last"),  # noqa: UP045
                  sweep: Optional[str] = typer.Option(None, "--sweep"),  # noqa: UP045
                  root: Optional[str] = root_opt) -> None:  # noqa: UP045
        """Delete finished runs by age, beyond the newest N, or of one sweep (damaged runs are kept: exit 1)."""
        for opt, value in (("--older-than-days", older_than_days), ("--keep-last", keep_last)):
            if value is not None and not value >= 0:
                raise fail(f"{opt} must be >= 0, got {value}")
        try:
            gone, damaged = _warned(lambda: _store(root).prune(older_than_days, keep_last, sweep))
        except StoreError as exc:
            raise fail(str(exc)) from None
        out.print(f"deleted {len(gone)} run(s)")
        if damaged:
            raise typer.Exit(1)

    @store_app.command("verify")
    def verify_cmd(run_id: Optional[str] = typer.Argument(None), root: Optional[str] = root_opt) -> None:  # noqa: UP045
        """Check gapless seq, causation integrity and per-type counts (exit 1 on problems)."""
        try:
            store = _store(root)
            reports = store.verify(run_id)
        except StoreError as exc:
            raise fail(str(exc)) from None
        if not reports:  # say so: a mistyped --root or TRADETRACE_EVENTS printed nothing at all
            out.print(f"no runs in the event store {store.root}", markup=False, highlight=False, soft_wrap=True)
        bad = 0
        for r in reports:
            state = "ok" if r["ok"] else "PROBLEMS: " + "; ".join(r["problems"])
            lost = f" lost seq {r['lost_seq']}" if r["lost_seq"] else ""
            out.print(f"{r['run_id']} {r['status']} {r['events']:,} events{lost}: {state}", highlight=False,
                      soft_wrap=True)
            bad += not r["ok"]
        if bad:
            raise typer.Exit(1)

    app.add_typer(store_app, name="store")
