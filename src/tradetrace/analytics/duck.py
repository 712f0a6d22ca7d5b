"""The embedded backend: one DuckDB file (the default, `$TRADETRACE_HOME/analytics.duckdb`).

DuckDB allows one writing process per file. A process that finds the file locked by another writer
retries for `LOCK_WAIT_S` (two `tradetrace run` at once then queue rather than fail); sweeps never
hit this because only their coordinator writes (see `tradetrace.sweep.runner`).

A read-only file still lets `COPY ... TO '/file'` and `ATTACH` write elsewhere: read-only connections also
run only single queries (`sqltext.check_read_only`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from tradetrace.analytics import sqltext
from tradetrace.analytics.db import Database, DatabaseError, NoDatabase

LOCK_WAIT_S = 30.0


def _path(url: str) -> Path:
    """`duckdb:///abs/file`, `duckdb://rel/file` or a plain path."""
    return Path(url.removeprefix("duckdb://"))


class DuckDatabase(Database):
    dialect = "duckdb"

    def __init__(self, url: str, *, read_only: bool = False) -> None:
        self.url = url
        self.path = _path(url)
        if read_only and not self.path.exists():
            raise NoDatabase(f"no analytics database at {self.path} (run a backtest or `tradetrace etl` first)")
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                self.con = duckdb.connect(str(self.path), read_only=read_only)
                break
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise DatabaseError(f"cannot open DuckDB file {self.path}: {str(exc).splitlines()[0]}") from None
                time.sleep(0.05)
        self.read_only = read_only
        self._src = 0

    def _execute(self, sql: str, params: Sequence[Any] | None) -> duckdb.DuckDBPyConnection | None:
        """The cursor of a statement; None for a text without one (empty, or only comments)."""
        if self.read_only:
            sqltext.check_read_only(sql)
        return self.con.execute(sql, list(params) if params is not None else None)

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> None:
        self._execute(sql, params)

    def query(self, sql: str, params: Sequence[Any] | None = None) -> tuple[list[str], list[tuple]]:
        cur = self._execute(sql, params)
        cols = [d[0] for d in cur.description] if cur is not None and cur.description else []
        return cols, cur.fetchall() if cur is not None and cols else []

    def query_arrow(self, sql: str, params: Sequence[Any] | None = None) -> pa.Table:
        # As a relation: DuckDB 2 has no Arrow fetch on an executed statement (1.x's `fetch_arrow_table`) and
        # warns of an extra copy of the rows through its DB-API cursor. The method's name depends on the version.
        if self.read_only:
            sqltext.check_read_only(sql)
        rel = self.con.sql(sql, params=list(params) if params is not None else None)
        if rel is None:  # a statement without rows
            return pa.table({})
        fetch = next(getattr(rel, m) for m in ("to_arrow_table", "fetch_arrow_table", "arrow") if hasattr(rel, m))
        table = fetch()
        return table if isinstance(table, pa.Table) else table.read_all()

    def load(self, table: str, data: pa.Table) -> int:
        if data.num_rows == 0:
            return 0
        self._src += 1
        name = f"_tt_load_{self._src}"
        self.con.register(name, data)
        try:
            cols = ", ".join(f'"{c}"' for c in data.column_names)
            self.con.execute(f'INSERT INTO "{table}" ({cols}) SELECT {cols} FROM {name}')
        finally:
            self.con.unregister(name)
        return data.num_rows

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        self.con.execute("COMMIT")

    def close(self) -> None:
        self.con.close()
