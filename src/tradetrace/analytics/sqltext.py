"""SQL text as the backends read it: which characters are code and which are string literals, quoted
identifiers, comments or dollar-quoted bodies.

Why: two jobs need to know where a statement's code is, without a full parser.
- PostgreSQL placeholders. Callers write `?` (as DuckDB does); psycopg wants `%s`. Only a `?` in code is a
  placeholder: `'why?'`, `"odd?name"`, `-- why?` and `$$ ... ? ... $$` are left alone. PostgreSQL's jsonb
  operators `?`, `?|` and `?&` are written `??`, `??|` and `??&` (JDBC's convention), so that they stay
  usable with their GIN index: `WHERE parameters ?? 'fast'`.
- Read-only mode (`tradetrace sql` without `--write`). A READ ONLY transaction does not stop
  `COPY ... TO '/file'` or `TO PROGRAM` on PostgreSQL, nor `COPY ... TO` on a read-only DuckDB file: both
  write outside the database. So read-only mode runs one statement, a query (`READ_FIRST`), with none of
  the words that make a statement write (`WRITE_WORDS`: a writable CTE, `SELECT ... INTO`, `EXPLAIN ANALYZE
  DELETE`...). The check is on words of code only, so a literal `'delete'` passes and an unquoted column
  named like one of those words is refused (quote it: `"load"`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from tradetrace.analytics.db import DatabaseError

#: First word of a statement read-only mode runs (FROM, DESCRIBE, SUMMARIZE, PIVOT: DuckDB's).
READ_FIRST = frozenset({"select", "with", "values", "table", "show", "explain", "from", "describe", "summarize",
                        "pivot", "unpivot"})
#: Words that make a statement change the database, the files or the session, wherever they appear.
WRITE_WORDS = frozenset({"insert", "update", "delete", "merge", "upsert", "copy", "into", "create", "drop", "alter",
                         "truncate", "grant", "revoke", "call", "do", "attach", "detach", "install", "load",
                         "export", "import", "vacuum", "checkpoint", "reindex", "cluster", "refresh", "comment",
                         "lock", "prepare", "execute", "notify", "listen"})
#: Functions that undo read-only mode from inside a query (`set_config('role', ...)` resets the role).
DENIED_FUNCTIONS = frozenset({"set_config"})

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_DOLLAR = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")
_IDENT_CHAR = re.compile(r"[A-Za-z0-9_$]")


class ReadOnlyError(DatabaseError):
    """A statement that read-only mode does not run; the message says what was found."""


def segments(sql: str) -> Iterator[tuple[str, str]]:
    """(kind, text) pieces of `sql` in order; kind is code, string, ident (a quoted identifier) or comment."""
    n, i, code_start = len(sql), 0, 0
    while i < n:
        c = sql[i]
        end = -1
        kind = ""
        if c == "-" and sql.startswith("--", i):
            nl = sql.find("\n", i)
            end, kind = (n if nl < 0 else nl), "comment"
        elif c == "/" and sql.startswith("/*", i):
            end, kind = _block_comment_end(sql, i), "comment"
        elif c == "'":
            escapes = i > 0 and sql[i - 1] in "eE" and (i < 2 or not _IDENT_CHAR.match(sql[i - 2]))
            end, kind = _quoted_end(sql, i, "'", escapes), "string"
        elif c == '"':
            end, kind = _quoted_end(sql, i, '"', False), "ident"
        elif c == "$" and (i == 0 or not _IDENT_CHAR.match(sql[i - 1])):
            m = _DOLLAR.match(sql, i)
            if m is not None:
                close = sql.find(m.group(0), m.end())
                end, kind = (n if close < 0 else close + len(m.group(0))), "string"
        if end < 0:
            i += 1
            continue
        if code_start < i:
            yield "code", sql[code_start:i]
        yield kind, sql[i:end]
        i = code_start = end
    if code_start < n:
        yield "code", sql[code_start:]


def _quoted_end(sql: str, i: int, quote: str, backslash: bool) -> int:
    """End (exclusive) of the quoted run starting at i; doubled quotes (and `\\x` in E'' strings) escape."""
    j = i + 1
    while j < len(sql):
        ch = sql[j]
        if backslash and ch == "\\":
            j += 2
            continue
        if ch == quote:
            if sql.startswith(quote * 2, j):
                j += 2
                continue
            return j + 1
        j += 1
    return len(sql)


def _block_comment_end(sql: str, i: int) -> int:
    """End (exclusive) of the /* comment */ at i; PostgreSQL nests them."""
    depth, j = 0, i
    while j < len(sql):
        if sql.startswith("/*", j):
            depth, j = depth + 1, j + 2
        elif sql.startswith("*/", j):
            depth, j = depth - 1, j + 2
            if depth == 0:
                return j
        else:
            j += 1
    return len(sql)


def to_pyformat(sql: str, *, params: bool = True) -> tuple[str, int]:
    """(`sql` for psycopg, number of placeholders): `?` in code -> `%s`, `??` -> `?`; with `params`, every
    `%` doubled (psycopg reads `%` everywhere once parameters are given, and nowhere without)."""
    out: list[str] = []
    count = 0
    for kind, text in segments(sql):
        if params:
            text = text.replace("%", "%%")
        if kind != "code":
            out.append(text)
            continue
        j = 0
        while j < len(text):
            if text.startswith("??", j):
                out.append("?")
                j += 2
            elif text[j] == "?":
                out.append("%s")
                count += 1
                j += 1
            else:
                out.append(text[j])
                j += 1
    return "".join(out), count


def statements(sql: str) -> list[list[tuple[str, str]]]:
    """The statements of `sql` (split at `;` in code), each as its segments without comments; empty ones
    (only whitespace and comments) are left out."""
    stmts: list[list[tuple[str, str]]] = [[]]
    for kind, text in segments(sql):
        if kind == "comment":
            continue
        if kind != "code":
            stmts[-1].append((kind, text))
            continue
        parts = text.split(";")
        for k, part in enumerate(parts):
            if k:
                stmts.append([])
            if part.strip():
                stmts[-1].append(("code", part))
    return [s for s in stmts if s]


def check_read_only(sql: str) -> None:
    """Raise ReadOnlyError unless `sql` is one query that changes nothing (see the module docstring)."""
    stmts = statements(sql)
    if not stmts:
        raise ReadOnlyError("no SQL statement (the text is empty or only comments)")
    what = ""
    if len(stmts) > 1:
        what = f"found {len(stmts)} statements"
    else:
        words = [w.lower() for kind, text in stmts[0] if kind == "code" for w in _WORD.findall(text)]
        names = words + [text[1:-1].replace('""', '"').lower() for kind, text in stmts[0] if kind == "ident"]
        first = words[0] if words else ""
        bad = next((w for w in words if w in WRITE_WORDS), None)
        denied = next((w for w in names if w in DENIED_FUNCTIONS), None)
        if first not in READ_FIRST:
            what = f"the statement starts with {first.upper() or stmts[0][0][1].strip()[:20]!r}"
        elif bad is not None:
            what = f"found {bad.upper()} (quote it if it is a column name)"
        elif denied is not None:
            what = f"found {denied}()"
    if what:
        raise ReadOnlyError(f"read-only mode runs one query (SELECT, WITH, VALUES, TABLE, SHOW, EXPLAIN, DESCRIBE); "
                            f"{what}: use --write to change the database")
