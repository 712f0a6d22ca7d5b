"""Allocator settings (allocator.py): glibc malloc and Arrow's mimalloc pool, each case in a fresh interpreter:
they are process-wide."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

glibc_only = pytest.mark.skipif(not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"),
                                reason="the settings are glibc's (this C library is not glibc)")

#: Page faults of the third round of making and freeing five 4 MB arrays (20 MB, like a run's result arrays).
#: glibc's defaults give the freed top of the heap back to the kernel (it is over 2x the biggest block freed),
#: so every round faults its pages in again; with the settings the heap keeps them for the next round.
REUSE = """
import resource
import numpy as np
from tradetrace.allocator import tune_malloc
print(tune_malloc(), tune_malloc())
for _ in range(3):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    arrays = [np.ones(500_000) for _ in range(5)]
    del arrays
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""


def _child(code: str, **env: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                         check=True)
    return out.stdout.split()


@glibc_only
def test_freed_megabytes_are_reused_without_page_faults() -> None:
    applied, again, faults = _child(REUSE, TRADETRACE_MALLOC_TUNING="1")
    assert (applied, again) == ("True", "True")
    assert int(faults) < 100  # 20 MB is 4,883 pages: memory taken from the kernel again would fault on each


@glibc_only
def test_switched_off_by_the_environment() -> None:
    applied, again, faults = _child(REUSE, TRADETRACE_MALLOC_TUNING="0")
    assert (applied, again) == ("False", "False")
    assert int(faults) > 1000


@glibc_only
def test_a_run_applies_them() -> None:
    code = ("import tradetrace as tt\nfrom tradetrace import allocator\nprint(allocator._applied)\n"
            "tt.run_backtest({'name': 'a', 'data': {'synthetic': {'bars': 500}}, 'strategy': {'type': 'sma_crossover'},"
            " 'store': {'enabled': False}, 'database': {'enabled': False}})\nprint(allocator._applied)\n")
    assert _child(code, TRADETRACE_MALLOC_TUNING="1") == ["None", "True"]


@glibc_only
def test_opening_an_event_store_applies_them(tmp_path) -> None:
    code = ("from tradetrace import allocator\nfrom tradetrace.store import EventStore\nprint(allocator._applied)\n"
            f"EventStore({str(tmp_path)!r})\nprint(allocator._applied)\n")
    assert _child(code, TRADETRACE_MALLOC_TUNING="1") == ["None", "True"]


#: Page faults of loading a 64 MB Parquet file again 1.2 s after the first load's table was freed: mimalloc (3.x)
#: purges pages freed over a second ago by default, so the second load faults them in again; kept, they are reused.
ARROW_RELOAD = """
import ctypes, os, resource, sys, time
ctypes.CDLL(None).prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE: 4 kB pages only, one fault each (a fair count)
import tradetrace
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
print(os.environ.get("MIMALLOC_PURGE_DELAY"))
path = sys.argv[1]
pq.write_table(pa.table({f"c{k}": np.random.default_rng(k).normal(size=2_000_000) for k in range(4)}), path)
t = pq.read_table(path)
del t
time.sleep(1.2)
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
t = pq.read_table(path)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""


def _arrow_child(tmp_path, **env: str) -> tuple[str, int]:
    """(MIMALLOC_PURGE_DELAY as seen after import, page faults of the second load)."""
    clean = {k: v for k, v in os.environ.items() if k not in ("MIMALLOC_PURGE_DELAY", "TRADETRACE_MALLOC_TUNING")}
    out = subprocess.run([sys.executable, "-c", ARROW_RELOAD, str(tmp_path / "cols.parquet")], env={**clean, **env},
                         capture_output=True, text=True, check=True).stdout.split()
    return out[0], int(out[1])


def test_importing_tradetrace_keeps_arrow_memory_for_the_next_load(tmp_path) -> None:
    """The child runs without transparent huge pages: with them, a fault may map 2 MB and the count varied from
    210 to 1,190 on one machine for the same 64 MB reload; with 4 kB pages, each fault is one page."""
    setting, kept = _arrow_child(tmp_path)
    assert setting == "-1"
    _, purged = _arrow_child(tmp_path, TRADETRACE_MALLOC_TUNING="0")
    # 64 MB is 16,384 pages: faulted in again when purged (16.5k-20.6k faults seen), mostly reused when kept
    # (1.7k-4.7k: the file's read buffers and Arrow's own bookkeeping).
    assert kept < 8_000 and purged > 12_000 and purged > 2 * kept


def test_arrow_memory_is_left_alone_when_switched_off_or_set_by_the_user(tmp_path) -> None:
    assert _arrow_child(tmp_path, TRADETRACE_MALLOC_TUNING="0")[0] == "None"
    assert _arrow_child(tmp_path, MIMALLOC_PURGE_DELAY="10")[0] == "10"
