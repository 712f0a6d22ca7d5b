"""tradetrace.analytics: the SQL layer says *what* worked across many runs; the events say *why*.

Every run becomes one `optimization_runs` row, its `trades` and its `event_latencies`, joined to its
events by `correlation_id` (a trade's `*_seq` columns are the seqs of its lineage events, so
`<correlation_id>:<seq>` is the event id).

| module | job |
|---|---|
| `db.py` | the backend interface; `connect(url)` picks DuckDB (a path, the default) or PostgreSQL (a URL) |
| `duck.py`, `postgres.py` | the two backends; PostgreSQL loads through binary COPY (`pgcopy.py`) |
| `schema.py` | one logical schema, versioned migrations (`schema_migrations`), strategy x regime summary |
| `etl.py` | events (Arrow) -> rows; `write_runs` loads them idempotently (replace by correlation_id) |
| `sink.py` | end of every run (`run_backtest`): the run's rows into the configured database |
| `backfill.py` | `tradetrace etl`: rebuild rows from the Parquet event store |
| `queries.py` | the common questions (`top_runs`), bound parameters only |
| `sqltext.py` | where a statement's code is: PostgreSQL placeholders (`?`; jsonb `?` as `??`), read-only checks |
| `commands.py` | CLI: `sql` (read-only unless `--write`: one query, nothing written anywhere), `runs`, `etl` |
| `metrics.py` | the metric definitions (empyrical's) |

Database URL: `--db` / `database.url` / `TRADETRACE_DB`, else `$TRADETRACE_HOME/analytics.duckdb`.
"""
