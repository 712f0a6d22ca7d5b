"""The coordinator's background row writer for DuckDB sweeps: every queued run is written by close();
a failing database surfaces as an error on the main thread instead of hanging or vanishing."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from tradetrace.analytics import etl
from tradetrace.analytics.db import DatabaseError, connect
from tradetrace.sweep.rowwriter import RowWriter


def records(n: int) -> list[etl.RunRecords]:
    return [etl.failed_run(str(uuid.uuid4()), strategy="probe", params={"k": k}, error="planted")
            for k in range(n)]


def test_every_queued_run_is_written_by_close(tmp_path: Path) -> None:
    url = str(tmp_path / "rows.duckdb")
    recs = records(150)  # more than one batch
    writer = RowWriter(url)
    for rec in recs:
        writer.add(rec)
    writer.close()
    with connect(url, read_only=True) as db:
        _, rows = db.query("SELECT correlation_id::VARCHAR FROM optimization_runs")
    assert sorted(r[0] for r in rows) == sorted(r.correlation_id for r in recs)


def test_flush_now_writes_and_checkpoints_before_close(tmp_path: Path) -> None:
    """The sweep's last runs: what is queued is written and checkpointed while the writer stays open (DuckDB
    removes its write-ahead log once checkpointed), and later rows still reach the file at close."""
    url = tmp_path / "rows.duckdb"
    wal = tmp_path / "rows.duckdb.wal"
    first, later = records(10), records(3)
    writer = RowWriter(str(url))
    for rec in first:
        writer.add(rec)
    deadline = time.monotonic() + 30
    while not wal.exists() and time.monotonic() < deadline:  # the first rows are committed (in the log)
        time.sleep(0.01)
    assert wal.exists()
    writer.flush_now()
    while wal.exists() and time.monotonic() < deadline:  # checkpointed: the log is gone
        time.sleep(0.01)
    assert not wal.exists()
    for rec in later:
        writer.add(rec)
    writer.close()
    with connect(str(url), read_only=True) as db:
        _, rows = db.query("SELECT correlation_id::VARCHAR FROM optimization_runs")
    assert sorted(r[0] for r in rows) == sorted(r.correlation_id for r in first + later)


def test_close_without_rows_opens_nothing(tmp_path: Path) -> None:
    url = tmp_path / "never.duckdb"
    RowWriter(str(url)).close()
    assert not url.exists()


def test_a_database_that_cannot_be_opened_raises_on_the_main_thread(tmp_path: Path) -> None:
    not_a_db = tmp_path / "file.duckdb"
    not_a_db.write_text("this is not a DuckDB file")
    writer = RowWriter(str(not_a_db))
    writer.add(records(1)[0])
    with pytest.raises(DatabaseError, match="cannot open DuckDB file"):
        writer.close()
