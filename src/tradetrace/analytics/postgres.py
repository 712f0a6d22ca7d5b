"""The server backend: PostgreSQL by URL (psycopg 3), bulk loads through COPY.

Why COPY: row-at-a-time inserts run at ~0.1M rows/s here against 1.4-2.2M for COPY (DESIGN.md).
Arrow tables are encoded to the binary COPY format with numpy (`pgcopy.py`) and streamed into
`COPY ... FROM STDIN (FORMAT binary)`; NULLs, NaN and inf round-trip exactly.

Many processes may write at once (each run's rows in one transaction): this is the backend for
sweeps over several machines.

Read-only sessions (`tradetrace sql` without `--write`, `runs`) change nothing, in three layers: the text
must be one query (`sqltext.check_read_only`: a READ ONLY transaction alone lets `COPY ... TO PROGRAM` and
`COPY ... TO '/file'` through); it runs as one prepared statement inside a READ ONLY transaction; and, when
the login may, under the predefined role `pg_read_all_data`, which reads every table but cannot write server
files, run programs or signal other sessions, whatever a function call inside the query tries.

Placeholders: `?` in code (not in literals, quoted names, comments or dollar quotes) binds the next
parameter; the jsonb operators `?`, `?|`, `?&` are written `??`, `??|`, `??&` (see `sqltext.py`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa

from tradetrace.analytics import pgcopy, sqltext
from tradetrace.analytics.db import Database, DatabaseError, redact

try:
    import psycopg
except ImportError:  # pragma: no cover - the postgres extra is optional
    psycopg = None


def _convert(sql: str, params: Sequence[Any] | None) -> tuple[str, list[Any] | None]:
    """psycopg's form of a statement and its parameters; DatabaseError when they do not pair up. Without
    parameters and placeholders the text goes as is (bar `??`), so `--write` may still send several
    statements."""
    args = list(params) if params is not None else []
    query, count = sqltext.to_pyformat(sql, params=params is not None)
    if count != len(args):
        raise DatabaseError(f"the statement has {count} ? placeholder(s) but {len(args)} parameter(s) were given "
                            "(write PostgreSQL's jsonb operators ?, ?|, ?& as ??, ??|, ??&)")
    return query, args if params is not None else None


class PostgresDatabase(Database):
    dialect = "postgres"

    def __init__(self, url: str, *, read_only: bool = False) -> None:
        if psycopg is None:
            raise DatabaseError("PostgreSQL needs psycopg 3: pip install 'tradetrace[postgres]'")
        self.url = url
        self.read_only = read_only
        try:
            self.con = psycopg.connect(url, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:  # unreachable (OperationalError), or a URL psycopg cannot parse (ProgrammingError)
            why = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
            raise DatabaseError(f"cannot connect to PostgreSQL at {redact(url)}: {why}") from None
        self._in_tx = False
        self._types: dict[str, dict[str, str]] = {}
        self._reader_role = read_only and self._pin_reader_role()

    def _pin_reader_role(self) -> bool:
        """Whether read-only statements can run as `pg_read_all_data` (PostgreSQL 14+, a member or a
        superuser). If so the search path is pinned first: a `$user` entry would name that role's schema."""
        with self.con.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_roles WHERE rolname = 'pg_read_all_data' "
                        "AND pg_has_role(current_user, oid, 'MEMBER')")
            row = cur.fetchone()
            if not row or not row[0]:
                return False
            cur.execute("SELECT set_config('search_path', coalesce(string_agg(quote_ident(s), ', ' ORDER BY k), "
                        "''), false) FROM unnest(current_schemas(false)) WITH ORDINALITY AS t(s, k)")
        return True

    def _run(self, sql: str, params: Sequence[Any] | None) -> tuple[list[str], list[tuple]]:
        if self.read_only:
            sqltext.check_read_only(sql)
        query, args = _convert(sql, params)
        with self.con.cursor() as cur:
            if self.read_only and not self._in_tx:
                # One prepared statement inside a READ ONLY transaction, as a role that cannot write files:
                # the server refuses writes and a second statement (`COMMIT; DELETE ...`) cannot be smuggled in.
                with self.con.transaction():
                    cur.execute("SET TRANSACTION READ ONLY")
                    if self._reader_role:
                        cur.execute("SET LOCAL ROLE pg_read_all_data")
                    cur.execute(query, args, prepare=True)
                    return _fetch(cur)
            cur.execute(query, args)
            return _fetch(cur)

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> None:
        self._run(sql, params)

    def query(self, sql: str, params: Sequence[Any] | None = None) -> tuple[list[str], list[tuple]]:
        return self._run(sql, params)

    def query_arrow(self, sql: str, params: Sequence[Any] | None = None) -> pa.Table:
        cols, rows = self.query(sql, params)
        return pa.table({c: pa.array([_plain(r[k]) for r in rows]) for k, c in enumerate(cols)})

    def load(self, table: str, data: pa.Table) -> int:
        if data.num_rows == 0:
            return 0
        types = self._column_types(table)
        missing = [c for c in data.column_names if c not in types]
        if missing:
            raise DatabaseError(f"table {table} has no column {missing[0]!r}")
        cols = ", ".join(f'"{c}"' for c in data.column_names)
        with self.con.cursor() as cur, cur.copy(f'COPY "{table}" ({cols}) FROM STDIN (FORMAT binary)') as cp:
            for chunk in pgcopy.encode(data, [types[c] for c in data.column_names]):
                cp.write(chunk)
        return data.num_rows

    def _column_types(self, table: str) -> dict[str, str]:
        """Column -> PostgreSQL type name (the binary COPY encoding depends on it); cached per table."""
        types = self._types.get(table)
        if types is None:
            _, rows = self._run("SELECT column_name, data_type FROM information_schema.columns "
                                "WHERE table_schema = current_schema() AND table_name = ?", [table])
            types = self._types[table] = dict(rows)
        return types

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """A transaction; nested, a savepoint (a failure inside rolls back only the inner part)."""
        outer = self._in_tx
        self._in_tx = True
        try:
            with self.con.transaction():
                yield
        finally:
            self._in_tx = outer

    def close(self) -> None:
        self.con.close()


def _fetch(cur: Any) -> tuple[list[str], list[tuple]]:
    if cur.description is None:
        return [], []
    return [d.name for d in cur.description], cur.fetchall()


def _plain(v: Any) -> Any:
    """psycopg values -> what Arrow infers the same way DuckDB returns them (UUID and Decimal as such)."""
    import decimal
    import uuid

    if isinstance(v, uuid.UUID):
        return str(v)
    if isinstance(v, decimal.Decimal):
        return float(v)
    return v
