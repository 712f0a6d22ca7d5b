"""How a run is cut into recorder batches: full chunks, then halving ones at the end."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from tradetrace.engine.backtest import chunk_bounds


@given(st.integers(0, 200_000), st.integers(1, 70_000))
def test_chunks_cover_every_row_once_and_taper(n: int, chunk: int) -> None:
    b = chunk_bounds(n, chunk)
    assert [s for s, _ in b] == ([0] + [e for _, e in b[:-1]] if n else [])  # contiguous, in order
    assert (b[-1][1] if b else 0) == n
    assert all(0 < e - s <= chunk for s, e in b)
    if n > 2 * chunk:  # the last batch is small: at most a sixteenth of a chunk (or what is left)
        assert b[-1][1] - b[-1][0] <= max(1, chunk // 16)


def test_reference_run_chunks() -> None:
    b = chunk_bounds(1_000_000, 65_536)
    assert b[0] == (0, 65_536) and b[-1] == (998_940, 1_000_000) and len(b) == 20


@given(st.integers(1, 70_000).flatmap(lambda chunk: st.tuples(st.integers(1, chunk), st.just(chunk))))
def test_a_run_of_at_most_one_chunk_is_one_batch(n_chunk: tuple[int, int]) -> None:
    n, chunk = n_chunk
    assert chunk_bounds(n, chunk) == [(0, n)]


@given(st.lists(st.integers(1, 4), min_size=1, max_size=400), st.integers(1, 50))
def test_chunks_never_split_the_rows_of_one_bar_time(per_time: list[int], chunk: int) -> None:
    """Several symbols: rows of one time run as a group (decisions after all of its fills), so a chunk ends
    after its last time's last row; still every row once, in order."""
    times = np.repeat(np.arange(len(per_time), dtype=np.int64) * 60, per_time)
    n = len(times)
    b = chunk_bounds(n, chunk, times)
    assert [s for s, _ in b] == [0] + [e for _, e in b[:-1]] and b[-1][1] == n
    for _, e in b[:-1]:
        assert times[e - 1] != times[e]
        assert 0 < e - _ <= chunk + 3  # at most the rest of one time beyond the chunk
