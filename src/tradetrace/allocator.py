"""Allocator settings for a process that runs backtests or reads the event store: big buffers are reused,
not faulted in again. Two allocators matter: glibc malloc (numpy arrays, Python) and mimalloc, Arrow's
default memory pool (every column a load or the store's writer builds).

glibc. Why: a run allocates and frees arrays of megabytes (a 1M-bar run: the strategy's indicators, the equity
curve and the metrics' temporaries, 8 MB each; a traced run kept in memory, ~20 MB of recorded events).
glibc's defaults adapt to that slowly and give much of it back to the kernel: its mmap threshold starts
at 128 KB and only rises to the size of the biggest mmapped block freed so far, and the top of the heap
is returned once 2x that is free. The next run then takes every page again as a page fault (zeroed by
the kernel). Measured on the reference workload (1M bars, a traced run kept in memory against an
untraced one, 4 alternations of 6 pairs each): the tracing overhead was +4.7% to +5.2% with the
defaults and +2.2% to +3.2% with the settings below; the recorded events' pages and the result's
arrays no longer fault (~2,300 faults per run fewer in building the result). Either setting alone did
not help (each one turns glibc's adaptation off for both). Loading a 1M-event run from the store (fresh
process, 9 loads, 2 alternations): median 137-147 ms with the defaults, 128-129 ms with the settings.

The settings are glibc's own adaptive maxima on 64-bit, fixed from the start: blocks under 32 MB come
from the heap (bigger ones are mmapped and go back to the kernel when freed) and up to 64 MB free at
the heap's top is kept for the next run. The cost is memory: a process keeps up to that much it is not
using. They are process-wide, so they are set once, when a process runs its first backtest or opens an
event store, and only on glibc.

mimalloc. Why: pyarrow's (3.x) gives pages freed over a second ago back to the kernel (its `purge_delay`,
1000 ms), so a load of a run (371 MB of columns for 1M events) after a pause, or while other loads free
theirs, takes pages again as faults, each zeroed by the kernel (mostly 2 MB huge pages here); the store's
writer process does the same per segment while the engine runs on the other core. With purging off
(`MIMALLOC_PURGE_DELAY=-1`) a freed page stays with mimalloc for the next allocation. Measured, alternating
whole runs of benchmarks/store.py: load_run_ms 144.2 and 128.7 ms by default, 119.0 and 105.8 ms with it
(peak RSS of the 10M-event run 923-931 MB either way); repeated loads in one process, median of 9: faults
per load 1,900-3,700 -> 650-770. The engine benchmark's traced-with-store overhead (8 alternating repeats,
twice): +6.7%, +6.8% by default, +5.7%, +4.6% with it. The cost: a process keeps the most Arrow memory it
ever used at once. mimalloc reads the option when pyarrow's library loads, so `import tradetrace` sets
the variable (`keep_arrow_memory`) unless it is already set; a process that imported pyarrow before
tradetrace keeps mimalloc's default, but the writer processes it starts get the setting.

`TRADETRACE_MALLOC_TUNING=0` leaves both allocators as they are.
"""

from __future__ import annotations

import os

#: mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 64 * 1024 * 1024

#: mimalloc's option (read from the environment when the library loads): ms before freed pages are purged
MIMALLOC_PURGE = "MIMALLOC_PURGE_DELAY"

_applied: bool | None = None  # None until the process's first call


def tune_malloc() -> bool:
    """Apply the settings once per process (glibc only, unless disabled). True if they are in effect."""
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def keep_arrow_memory() -> bool:
    """Ask mimalloc (Arrow's pool) to keep freed pages: called by `import tradetrace`, before pyarrow loads if the
    user did not import it first. True if the setting is ours or the user's (an existing value is kept)."""
    if _disabled():
        return False
    os.environ.setdefault(MIMALLOC_PURGE, "-1")
    return True


def _disabled() -> bool:
    return os.environ.get("TRADETRACE_MALLOC_TUNING", "1").strip().lower() in ("0", "false", "no", "off")


def _apply() -> bool:
    if _disabled():
        return False
    try:
        libc_name = os.confstr("CS_GNU_LIBC_VERSION") or ""  # "glibc 2.36"; absent elsewhere (musl, macOS)
    except (ValueError, OSError, AttributeError):
        return False
    if not libc_name.startswith("glibc"):
        return False
    import ctypes  # here, not at the top: `import tradetrace` imports this module

    # the process's own symbols (glibc is loaded): ctypes.util.find_library would run ldconfig, ~10 ms
    libc = ctypes.CDLL(None)
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success, 0 for a value it refuses (then that setting keeps its default)
    mmap_ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    trim_ok = libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    return mmap_ok and trim_ok
