"""Intelligent sampling (opt-in per run): keep what explains decisions, thin the rest without bias.

The rule, applied to each batch before it is written:
1. Always keep the critical types (SIGNAL, ORDER, FILL, POSITION_*, RISK_BREACH, REGIME_CHANGE, ERROR,
   RUN_START, RUN_END) and every ancestor of a kept event (causation and links), so every kept
   event's lineage is complete.
2. Keep a context window of +-k events (by seq, i.e. publish order) around each critical event.
3. Sample the rest with a keep probability driven by market activity, not by list positions:
   p = base_rate * vol * (1 + 9 * near), clipped to [base_rate, 1], where `vol` is the bar's absolute
   return over the batch's median (clipped to [0.5, 10]) and `near` = exp(-dt / 5 min) for dt the
   market time to the nearest critical event. The first BAR of every market day is kept (a time anchor).
4. Every stored event carries `weight` = 1/p (1 for events kept by rules 1-2), so sums of weights
   estimate counts and aggregates without bias; exact per-type counts are kept in the run manifest.
Deterministic: the random draws are seeded by (seed, first seq of the batch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tradetrace.events.types import EventType

CRITICAL = frozenset({EventType.SIGNAL, EventType.ORDER, EventType.FILL, EventType.POSITION_OPEN,
                      EventType.POSITION_CLOSE, EventType.RISK_BREACH, EventType.REGIME_CHANGE, EventType.ERROR,
                      EventType.RUN_START, EventType.RUN_END})
NEAR_NS = 5 * 60 * 1_000_000_000  # market-time scale of "near a critical event"
_DAY_NS = 86_400 * 1_000_000_000


@dataclass(frozen=True, slots=True)
class Sampling:
    """Sampling settings of one run (StoreConfig.sampling)."""

    context: int = 5
    base_rate: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.base_rate <= 1:
            raise ValueError(f"sampling base_rate must be in (0, 1], got {self.base_rate}")
        if self.context < 0:
            raise ValueError(f"sampling context must be >= 0, got {self.context}")


def _ints(table: pa.Table, name: str) -> np.ndarray:
    col = table.column(name)
    if pa.types.is_timestamp(col.type):
        col = col.cast(pa.int64())
    return col.fill_null(-1).to_numpy()


def sample(tables: dict[EventType, pa.Table], cfg: Sampling, market: Any = None) -> dict[EventType, pa.Table]:
    """The batch's tables thinned by the rule above, each with a float32 `weight` column. `market` (the rows
    the batch was built from) gives BAR closes to a BAR table stored with market set references."""
    types = list(tables)
    if not types:
        return tables
    seq = np.concatenate([_ints(tables[t], "seq") for t in types])
    cause = np.concatenate([_ints(tables[t], "causation_seq") for t in types])
    ts = np.concatenate([_ints(tables[t], "timestamp") for t in types])
    owner = np.concatenate([np.full(tables[t].num_rows, k, dtype=np.int32) for k, t in enumerate(types)])
    crit = np.isin(owner, [k for k, t in enumerate(types) if t in CRITICAL])
    order = np.argsort(seq, kind="stable")
    sorted_seq = seq[order]

    keep = crit.copy()
    crit_seq = np.sort(seq[crit])
    if len(crit_seq) and cfg.context:
        pos = np.searchsorted(crit_seq, seq)
        left = np.abs(seq - crit_seq[np.clip(pos - 1, 0, len(crit_seq) - 1)])
        right = np.abs(crit_seq[np.clip(pos, 0, len(crit_seq) - 1)] - seq)
        keep |= np.minimum(left, right) <= cfg.context

    p = np.ones(len(seq))
    rest = ~keep
    if rest.any():
        vol = np.ones(len(seq))
        if EventType.BAR in tables:
            k = types.index(EventType.BAR)
            close = _closes(tables[EventType.BAR], market)
            r = np.abs(np.diff(np.log(np.maximum(close, 1e-12)), prepend=np.log(max(close[0], 1e-12))))
            med = np.median(r[r > 0]) if (r > 0).any() else 1.0
            vol[owner == k] = np.clip(r / med, 0.5, 10.0)
        crit_ts = np.sort(ts[crit])
        if len(crit_ts):
            pos = np.searchsorted(crit_ts, ts)
            dt = np.minimum(np.abs(ts - crit_ts[np.clip(pos - 1, 0, len(crit_ts) - 1)]),
                            np.abs(crit_ts[np.clip(pos, 0, len(crit_ts) - 1)] - ts))
            near = np.exp(-dt / NEAR_NS)
        else:
            near = np.zeros(len(seq))
        p = np.clip(cfg.base_rate * vol * (1.0 + 9.0 * near), cfg.base_rate, 1.0)
        if EventType.BAR in tables:  # time anchor: first BAR of each market day
            k = types.index(EventType.BAR)
            bars = np.flatnonzero(owner == k)
            day = ts[bars] // _DAY_NS
            first = np.concatenate([[True], day[1:] != day[:-1]])
            p[bars[first]] = 1.0
        p[keep] = 1.0
        rng = np.random.default_rng([cfg.seed, int(sorted_seq[0])])
        draw = rng.random(len(seq))
        keep |= draw < p

    # Ancestors of kept events (within the batch; older ones were critical and kept already).
    frontier = keep.copy()
    while frontier.any():
        wanted = cause[frontier]
        wanted = wanted[wanted >= 0]
        j = np.searchsorted(sorted_seq, wanted)
        ok = j < len(sorted_seq)
        j, wanted = j[ok], wanted[ok]
        hit = order[j[sorted_seq[j] == wanted]]
        new = np.zeros(len(seq), dtype=bool)
        new[hit] = True
        new &= ~keep
        keep |= new
        p[new] = 1.0
        frontier = new
    for t in types:  # links are ancestors too
        if t == EventType.BAR:
            continue
        links = tables[t].column("links")
        if links.null_count == len(links):
            continue
        k = types.index(t)
        rows = np.flatnonzero(owner == k)
        for r, ls in zip(rows, links.to_pylist(), strict=True):
            if keep[r] and ls:
                for s in ls:
                    j = np.searchsorted(sorted_seq, s)
                    if j < len(sorted_seq) and sorted_seq[j] == s and not keep[order[j]]:
                        keep[order[j]] = True
                        p[order[j]] = 1.0

    out = {}
    start = 0
    for t in types:
        n = tables[t].num_rows
        m = keep[start:start + n]
        w = (1.0 / p[start:start + n][m]).astype(np.float32)
        tab = tables[t].filter(pa.array(m)) if not m.all() else tables[t]
        out[t] = tab.append_column("weight", pa.array(w))
        start += n
    return out


def _closes(bars: pa.Table, market: Any) -> np.ndarray:
    if "close" in bars.column_names:
        return bars.column("close").to_numpy()
    rows = bars.column("market_row").to_numpy()  # rows of a market set: the data set's own rows
    return np.asarray(market.close)[rows - getattr(market, "start", 0)]


def weighted_count(table: pa.Table) -> float:
    """Unbiased estimate of the events a sampled table stands for (sum of weights)."""
    if "weight" not in table.column_names:
        return float(table.num_rows)
    return float(pc.sum(table.column("weight")).as_py() or 0.0)
