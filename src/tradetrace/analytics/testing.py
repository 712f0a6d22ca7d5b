"""Test support for the analytics database: a throwaway PostgreSQL schema per test.

Why here (not in a conftest): tests/analytics and tests/sweep both need it and conftest files do not
import each other. PostgreSQL comes from `TRADETRACE_PG_URL` (CI sets it) or the local default; when
it is unreachable the tests fail under CI=true or an explicit URL, and are skipped otherwise.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
SESSION_TAG = uuid.uuid4().hex[:8]


def pg_url() -> str:
    return os.environ.get("TRADETRACE_PG_URL") or DEFAULT_PG_URL


def must_have_pg() -> bool:
    """PostgreSQL tests must fail (not skip) when it is unreachable: in CI, or when a URL was given."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes") or bool(os.environ.get("TRADETRACE_PG_URL"))


def pg_unreachable_reason() -> str | None:
    """None when PostgreSQL answers, else why not (one line)."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed"
    try:
        with psycopg.connect(pg_url(), connect_timeout=5) as con:
            con.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"PostgreSQL at {pg_url()} unreachable: {str(exc).strip().splitlines()[-1]}"
    return None


def with_schema(url: str, schema: str) -> str:
    """The URL with `search_path` set to `schema` (every table the backend makes lands there)."""
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options={quote(f'-csearch_path={schema}')}"


@contextmanager
def temp_schema(prefix: str = "tt_test") -> Iterator[str]:
    """A fresh schema (unique per session and use); yields a URL pointing into it; drops it after."""
    import psycopg

    name = f"{prefix}_{SESSION_TAG}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_url(), autocommit=True) as con:
        con.execute(f'CREATE SCHEMA "{name}"')
    try:
        yield with_schema(pg_url(), name)
    finally:
        with psycopg.connect(pg_url(), autocommit=True) as con:
            con.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
