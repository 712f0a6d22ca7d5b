"""The analytics database interface: one logical schema behind a DuckDB file or PostgreSQL by URL.

Why an interface: the SQL layer answers "what worked across many runs" and must behave the same on an
embedded file (default, no server) and on PostgreSQL (many writers, many machines). Callers write SQL
once with `?` placeholders; the backend rewrites them for its driver, so user values are always bound as
parameters, never pasted into SQL (PostgreSQL's jsonb `?` operators are written `??`: `sqltext.py`).
Bulk loads take Arrow tables (DuckDB scans them directly, PostgreSQL gets them through COPY).

`connect(url)` picks the backend: `postgresql://...` / `postgres://...` -> PostgreSQL; anything else
(a path, or `duckdb:///path`) -> a DuckDB file. Opening migrates the schema (see `schema.py`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from tradetrace.paths import database_url


class DatabaseError(ValueError):
    """The analytics database cannot be opened or used; the message is one line saying why."""


class NoDatabase(DatabaseError):
    """A read-only open found no tradetrace database (no DuckDB file, or no schema yet): nothing to read."""


class Database(ABC):
    """One open connection to the analytics database."""

    dialect: str = ""
    url: str = ""

    @abstractmethod
    def execute(self, sql: str, params: Sequence[Any] | None = None) -> None:
        """Run one statement; `?` placeholders are bound to `params`."""

    @abstractmethod
    def query(self, sql: str, params: Sequence[Any] | None = None) -> tuple[list[str], list[tuple]]:
        """Run a query; (column names, rows)."""

    @abstractmethod
    def query_arrow(self, sql: str, params: Sequence[Any] | None = None) -> pa.Table:
        """Run a query; the rows as an Arrow table (for comparisons and exports)."""

    @abstractmethod
    def load(self, table: str, data: pa.Table) -> int:
        """Append an Arrow table to `table` (columns by name) in bulk; returns rows loaded."""

    @abstractmethod
    def transaction(self) -> Any:
        """Context manager: everything inside commits together or not at all."""

    @abstractmethod
    def close(self) -> None: ...

    def scalar(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        _, rows = self.query(sql, params)
        return rows[0][0] if rows else None

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def redact(url: str) -> str:
    """A URL fit for messages: the password replaced."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        if ":" in cred:
            return f"{scheme}://{cred.split(':', 1)[0]}:***@{host}"
    return url


def connect(url: str | None = None, *, read_only: bool = False, migrate: bool = True,
            target_version: int | None = None) -> Database:
    """Open the analytics database at `url` (default: `TRADETRACE_DB` or the DuckDB file in the data home).

    With `migrate` (default) an older schema is upgraded to the current version (`target_version` stops
    earlier: tests use it to build old databases); a read-only open of an older schema, or any open of
    a newer one, raises DatabaseError saying why; a read-only open of a database without the schema (a
    fresh PostgreSQL database, an empty DuckDB file) raises NoDatabase: reading creates nothing.
    """
    from tradetrace.analytics import schema

    url = database_url(url)
    scheme = url.split("://", 1)[0] if "://" in url else None
    if scheme is not None and scheme not in ("postgresql", "postgres", "duckdb"):
        # Else taken for a DuckDB path: a folder `mysql:` appeared, and DuckDB fetched an extension by its name.
        raise DatabaseError(f"database URL {redact(url)}: unknown scheme {scheme + '://'!r} (use postgresql://..., "
                            "duckdb:///path or a file path)")
    if is_postgres(url):
        from tradetrace.analytics.postgres import PostgresDatabase

        db: Database = PostgresDatabase(url, read_only=read_only)
    else:
        from tradetrace.analytics.duck import DuckDatabase

        db = DuckDatabase(url, read_only=read_only)
    try:
        if migrate:
            schema.migrate(db, read_only=read_only, target=target_version)
    except BaseException:
        db.close()
        raise
    return db


def driver_errors() -> tuple[type[BaseException], ...]:
    """Exception classes of the installed drivers (bad SQL, constraint violations...)."""
    import importlib.util

    import duckdb

    errors: list[type[BaseException]] = [duckdb.Error]
    if importlib.util.find_spec("psycopg") is not None:
        import psycopg

        errors.append(psycopg.Error)
    return tuple(errors)
