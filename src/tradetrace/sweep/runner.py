"""Run a sweep: expand the grid, skip what already finished, run the rest, record every run.

Every run of a sweep is a traced run with its own correlation_id and the sweep's `sweep_id` (derived
from the grid, so rerunning the same grid resumes the same sweep); its events go to the event store,
its row to `optimization_runs`. Combinations whose `run_hash` already has a completed row are skipped:
an interrupted sweep resumes where it stopped (failed runs are retried).

Who writes the database (DuckDB allows one writing process per file):
- DuckDB: workers run with `record_db=False` and return their rows; the coordinator (this process,
  the only one that opens the file) loads them from a background thread while runs go on
  (`rowwriter.py`), so little is left to write once the last run ends.
- PostgreSQL: every worker writes its own runs as they finish, one transaction per run (COPY), so a
  sweep over many machines needs no funnel; the coordinator only counts, and writes the row of a run
  whose worker could not (it died, its write failed, its Ray task failed).

A run whose worker dies is recorded as failed ("worker crashed: ..."); the sweep goes on. Interrupted
(Ctrl-C, or an error recording a run), a sweep starts no more runs but records the ones in flight before
it stops: every completed run in the event store has its row, and a resume reruns nothing that completed.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tradetrace.analytics import etl
from tradetrace.analytics.db import Database, connect, is_postgres
from tradetrace.config import ClassifierConfig, RunConfig
from tradetrace.engine import classifiers
from tradetrace.engine.backtest import load_data
from tradetrace.events.event import is_run_id, new_run_id
from tradetrace.paths import database_url, events_dir
from tradetrace.store import market as market_sets
from tradetrace.sweep.executors import Outcomes, RunTask, TaskOutcome, make_executor
from tradetrace.sweep.grid import Combination, Grid, GridError, expand, load_grid, parse_grid
from tradetrace.sweep.rowwriter import RowWriter

SWEEP_NAMESPACE = uuid.UUID("6f1d7f0e-4a53-4a51-9a5e-7d1c1c0a7e11")

OnOutcome = Callable[[TaskOutcome], None]


@dataclass
class SweepSummary:
    sweep_id: str
    combinations: int
    invalid: int
    skipped: int
    completed: int = 0
    failed: int = 0
    elapsed_s: float = 0.0
    executor: str = "process"
    workers: int = 1
    database: str = ""
    invalid_examples: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ran(self) -> int:
        return self.completed + self.failed

    @property
    def runs_per_s(self) -> float:
        return self.ran / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["runs_per_s"] = self.runs_per_s
        return d


def _portable(cfg: RunConfig) -> dict[str, Any]:
    """The config as sent to workers: the event store folder made absolute, so workers that do not share
    the coordinator's working directory or environment (Ray) write to the same store."""
    data = cfg.model_dump(mode="json")
    data["store"]["path"] = str(events_dir(cfg.store.path).resolve())
    return data


def sweep_id_for(grid: Grid) -> str:
    return str(uuid.uuid5(SWEEP_NAMESPACE, grid.sweep_key()))


def completed_hashes(db: Database, hashes: list[str]) -> set[str]:
    """The run hashes among `hashes` that already have a completed run."""
    done: set[str] = set()
    for k in range(0, len(hashes), 500):
        part = hashes[k:k + 500]
        marks = ", ".join("?" for _ in part)
        _, rows = db.query(f"SELECT DISTINCT run_hash FROM optimization_runs WHERE status = 'completed' "
                           f"AND run_hash IN ({marks})", part)
        done.update(r[0] for r in rows)
    return done


def recover_stored_runs(db: Database, cfg: RunConfig, sweep_id: str, hashes: set[str]) -> set[str]:
    """The hashes among `hashes` of this sweep's runs that completed in the event store without a row in `db`,
    after loading their rows from their events (`tradetrace etl`'s backfill).

    Why: a coordinator killed hard (SIGKILL, out of memory) loses the rows of the runs its workers finished
    in its last moments, and the runs still queued in the workers go on to complete in the store. Resuming
    ran those combinations again, and a later `tradetrace etl` then loaded both runs: one combination twice.
    Only the manifests of the store's runs that `db` lacks are read (normally none)."""
    root = events_dir(cfg.store.path)
    if not hashes or not (cfg.tracing.enabled and cfg.store.enabled) or not root.is_dir():
        return set()
    from tradetrace.analytics.backfill import backfill, open_store
    from tradetrace.store.layout import StoreError
    from tradetrace.store.maintenance import run_ids
    from tradetrace.store.reader import run_record

    ids = [r for r in run_ids(root) if is_run_id(r)]
    present: set[str] = set()
    for k in range(0, len(ids), 500):
        part = ids[k:k + 500]
        marks = ", ".join("?" for _ in part)
        present.update(str(r[0]) for r in db.query(f"SELECT correlation_id FROM optimization_runs "
                                                   f"WHERE correlation_id IN ({marks})", part)[1])
    found: dict[str, str] = {}  # run_hash -> run id (one run per combination)
    for rid in ids:
        if rid in present:
            continue
        try:
            m = run_record(root, rid)
        except StoreError:  # a damaged run is never read (`tradetrace store verify` reports it)
            continue
        h = m.get("run_hash")
        if m.get("sweep_id") == sweep_id and m.get("status") == "completed" and h in hashes and h not in found:
            found[h] = rid
    if not found:
        return set()
    backfill(db, open_store(str(root)), list(found.values()))
    return completed_hashes(db, list(found))  # a run the backfill could not load (sampled) runs again


def _shared_classifiers(todo: list[Combination]) -> list[ClassifierConfig]:
    """The classifier settings found in every combination (a grid may vary them; those are left to the runs)."""
    first = todo[0].config.classifiers
    return [c for c in first if all(c in t.config.classifiers for t in todo[1:])]


def run_sweep(grid: str | Path | dict[str, Any] | Grid, *, workers: int | None = None, executor: str = "process",
              ray_address: str | None = None, db_url: str | None = None, resume: bool = True,
              on_start: Callable[[int], None] | None = None, on_outcome: OnOutcome | None = None) -> SweepSummary:
    """Run every not-yet-completed combination of a grid; returns counts (failed runs do not stop it).

    `on_start(n)` is told how many runs will execute, `on_outcome` is called as each finishes
    (the CLI's progress bar). Raises GridError / ConfigError / DataError / DatabaseError on bad input.
    """
    if isinstance(grid, str | Path):
        grid = load_grid(grid)
    elif isinstance(grid, dict):
        grid = parse_grid(grid)
    valid, invalid = expand(grid)
    if not valid:  # nothing can run: the grid is bad input (e.g. a dotted key the config does not have)
        values, why = invalid[0]
        raise GridError(f"{grid.source}: none of the grid's {grid.size:,} combination(s) is valid; the first, "
                        f"{values}: {why.removeprefix(grid.source + ': ')}")
    sid = sweep_id_for(grid)
    url = database_url(db_url or valid[0].config.database.url)
    ex = make_executor(executor, workers, ray_address)
    summary = SweepSummary(sid, grid.size, len(invalid), 0, executor=ex.name,
                           workers=getattr(ex, "workers", None) or 0, database=url,
                           invalid_examples=[f"{v}: {why}" for v, why in invalid[:3]])
    with connect(url) as db:  # migrates once, before any worker opens it
        done = completed_hashes(db, [c.run_hash for c in valid]) if resume else set()
        if resume:
            done |= recover_stored_runs(db, valid[0].config, sid, {c.run_hash for c in valid} - done)
    todo = []
    seen: set[str] = set()
    for c in valid:
        if c.run_hash in done or c.run_hash in seen:
            summary.skipped += 1
            continue
        seen.add(c.run_hash)
        todo.append(c)
    if on_start is not None:
        on_start(len(todo))
    if not todo:
        return summary
    direct = is_postgres(url)
    tasks = [RunTask(new_run_id(), sid, c.run_hash, c.values, _portable(c.config), url if direct else None)
             for c in todo]
    market = load_data(todo[0].config)  # data is the same for every combination (it is not a grid key)
    writer = None if direct else RowWriter(url)
    late: list[Database] = []  # PostgreSQL: the coordinator's connection, opened for the rows workers could not write

    def record(out: TaskOutcome) -> None:
        if out.status == "completed":
            summary.completed += 1
        else:
            summary.failed += 1
            if len(summary.errors) < 5:
                summary.errors.append(f"{out.correlation_id}: {out.error}")
        if out.records is None:  # written by its worker
            return
        if writer is not None:
            writer.add(out.records)
            if summary.workers > 1 and len(tasks) - summary.ran == summary.workers - 1:  # a worker is idle now
                writer.flush_now()
        else:
            if not late:
                late.append(connect(url, migrate=False))
            write_unless_present(late[0], out.records)

    started = time.perf_counter()
    try:
        # Labels of the classifiers every combination shares, computed once here rather than once per
        # worker: forked workers inherit them, Ray workers receive them with the data (MarketData.derived).
        classifiers.prepare(_shared_classifiers(todo), market)
        cfg0 = todo[0].config
        if cfg0.tracing.enabled and cfg0.store.enabled:  # the data set's BAR prices, stored once for every run
            market_sets.ensure(events_dir(cfg0.store.path), market, cfg0.store.compression)
        consume(ex.run(tasks, market), record, on_outcome)
    finally:
        if writer is not None:
            writer.close()
        summary.elapsed_s = time.perf_counter() - started
        for db in late:
            db.close()
    return summary


def consume(outcomes: Outcomes, record: OnOutcome, notify: OnOutcome | None) -> None:
    """`record` every outcome, then tell `notify` (the progress bar).

    If either raises, the exception is thrown into the executor: it starts no more runs and still hands
    over the runs in flight, which are recorded (their events are in the store: their rows belong in the
    database; `notify` is not told any more), then the exception propagates. A second one stops at once.
    """
    stopping = False
    try:
        out = next(outcomes, None)
        while out is not None:
            try:
                record(out)
                if notify is not None and not stopping:
                    notify(out)
                out = next(outcomes, None)
            except BaseException as exc:
                if stopping:
                    raise
                stopping = True
                out = outcomes.throw(exc)
    finally:
        outcomes.close()


def write_unless_present(db: Database, records: etl.RunRecords) -> None:
    """Write the rows of a run its PostgreSQL worker did not write (it died, its write failed, its Ray task
    failed), unless they are there: a worker killed right after its commit did write them."""
    if not db.scalar("SELECT count(*) FROM optimization_runs WHERE correlation_id = ?", [records.correlation_id]):
        etl.write_runs(db, [records])
