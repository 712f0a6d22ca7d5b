"""SQL text scanning: placeholders only in code, statements split only at code semicolons, read-only checks
that look at words of code (the end-to-end refusals on both backends are in test_analytics_cli.py)."""

from __future__ import annotations

import pytest

from tradetrace.analytics.sqltext import ReadOnlyError, check_read_only, statements, to_pyformat


@pytest.mark.parametrize(("sql", "want", "count"), [
    ("SELECT 'why?' AS q, ? AS v", "SELECT 'why?' AS q, %s AS v", 1),
    ('SELECT 1 AS "odd?" -- why?\n, ?', 'SELECT 1 AS "odd?" -- why?\n, %s', 1),
    ("SELECT /* ? /* nested ? */ ? */ ?", "SELECT /* ? /* nested ? */ ? */ %s", 1),
    ("SELECT $$a?b$$, $tag$ ? $$ ? $tag$, ?", "SELECT $$a?b$$, $tag$ ? $$ ? $tag$, %s", 1),
    ("SELECT E'it\\'s?', ?", "SELECT E'it\\'s?', %s", 1),
    ("SELECT 'it''s?', ?", "SELECT 'it''s?', %s", 1),
    ("SELECT parameters ?? ?, parameters ??| ARRAY[?]", "SELECT parameters ? %s, parameters ?| ARRAY[%s]", 2),
    ("SELECT 10 % ?, '5%'", "SELECT 10 %% %s, '5%%'", 1),
    ("SELECT $1, a$b FROM t WHERE x = ?", "SELECT $1, a$b FROM t WHERE x = %s", 1),
])
def test_only_question_marks_in_code_are_placeholders(sql: str, want: str, count: int) -> None:
    assert to_pyformat(sql) == (want, count)


def test_without_parameters_percent_signs_stay_as_they_are() -> None:
    assert to_pyformat("SELECT 10 % 3, parameters ?? 'k'", params=False) == ("SELECT 10 % 3, parameters ? 'k'", 0)


@pytest.mark.parametrize(("sql", "n"), [
    ("", 0), ("   ", 0), ("-- just a comment", 0), ("/* a */ ; -- b\n;", 0), ("SELECT 1", 1), ("SELECT 1;", 1),
    ("SELECT ';' ; SELECT 2", 2), ("SELECT $$;$$", 1), ('SELECT 1 AS ";"', 1),
])
def test_statements_are_split_at_semicolons_in_code_only(sql: str, n: int) -> None:
    assert len(statements(sql)) == n


@pytest.mark.parametrize("sql", [
    "SELECT * FROM optimization_runs WHERE strategy_type = 'delete; drop table x'",
    "WITH t AS (SELECT 1 AS x) SELECT x FROM t", "VALUES (1)", "TABLE optimization_runs", "SHOW search_path",
    "EXPLAIN SELECT 1", "  -- leading comment\n SELECT 1;", 'SELECT 1 AS "into"', "(SELECT 1) UNION (SELECT 2)",
])
def test_queries_pass_the_read_only_check(sql: str) -> None:
    check_read_only(sql)


@pytest.mark.parametrize(("sql", "why"), [
    ("COPY (SELECT 1) TO PROGRAM 'id'", "starts with 'COPY'"),
    ("SELECT 1; DELETE FROM t", "found 2 statements"),
    ("DO $$ BEGIN DELETE FROM t; END $$", "starts with 'DO'"),
    ("WITH x AS (DELETE FROM t RETURNING 1) SELECT * FROM x", "found DELETE"),
    ("SELECT * INTO stolen FROM t", "found INTO"),
    ("EXPLAIN ANALYZE DELETE FROM t", "found DELETE"),
    ("SELECT set_config('role', 'postgres', true)", "found set_config()"),
    ('SELECT pg_catalog."set_config"(\'role\', \'postgres\', true)', "found set_config()"),
    ("", "no SQL statement"),
])
def test_statements_that_write_are_refused_with_the_reason(sql: str, why: str) -> None:
    with pytest.raises(ReadOnlyError, match=why.replace("(", r"\(").replace(")", r"\)")):
        check_read_only(sql)
