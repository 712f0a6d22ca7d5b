"""Run ids: UUIDv7 (RFC 9562), increasing within a process, unique across processes."""

from __future__ import annotations

import multiprocessing as mp
import time
import uuid

from tradetrace.events.event import new_run_id


def _ids(n: int) -> list[str]:
    return [new_run_id() for _ in range(n)]


def test_run_ids_are_time_ordered_uuid7() -> None:
    before = time.time_ns() // 1_000_000
    ids = _ids(20_000)  # many per millisecond: the counter keeps them increasing
    after = time.time_ns() // 1_000_000
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for s in (ids[0], ids[-1]):
        u = uuid.UUID(s)
        assert u.version == 7 and u.variant == uuid.RFC_4122 and str(u) == s
    first_ms = uuid.UUID(ids[0]).int >> 80
    assert before <= first_ms <= after + 1


def test_run_ids_from_forked_processes_do_not_collide() -> None:
    with mp.get_context("fork").Pool(2) as pool:  # both children start from the parent's counter state
        a, b = pool.map(_ids, [5_000, 5_000])
    assert not set(a) & set(b) and len(set(a)) == len(a) == len(set(b))


def test_a_run_id_given_by_the_caller_must_be_a_canonical_uuid() -> None:
    """The analytics tables key runs by a UUID column and the store names files by the id's text: a run with
    any other id is refused before anything is recorded."""
    import pytest

    import tradetrace as tt
    from tradetrace.events.event import check_run_id

    good = new_run_id()
    assert check_run_id(good) == good
    for bad in ("my-run-1", good.upper(), good.replace("-", ""), "", "../x"):
        with pytest.raises(ValueError, match="is not a run id"):
            check_run_id(bad)
    cfg = {"name": "ids", "data": {"synthetic": {"bars": 200, "seed": 1}},
           "strategy": {"type": "sma_crossover", "params": {"fast": 3, "slow": 8}},
           "store": {"enabled": False}, "database": {"enabled": False}}
    with pytest.raises(ValueError, match="'my-run-1' is not a run id"):
        tt.run_backtest(cfg, correlation_id="my-run-1")
    assert tt.run_backtest(cfg, correlation_id=good).run_id == good
