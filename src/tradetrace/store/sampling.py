"""Intelligent sampling (opt-in per run): keep what explains decisions, thin the rest without bias.

The rule, applied to each batch before it is written:
1. Always keep the critical types (SIGNAL, ORDER, FILL, POSITION_*, RISK_BREACH, REGIME_CHANGE, ERROR,
   RUN_START, RUN_END) and every ancestor of a kept event (causation and links), so every kept
   event's lineage is complete.
2. Keep a context window of +-k events (by seq, i.e. publish order) around each critical event, across
   batch edges too: a batch keeps its last k events (the next batch may open with a critical event, and
   this one is written before that one exists), and the k events after the previous batch's last critical
   event (`SamplerState` carries it from batch to batch).
3. Sample the rest with a keep probability driven by market activity, not by list positions:
   p = base_rate * vol * (1 + 9 * near), clipped to [base_rate, 1], where `vol` is the bar's absolute
   return over the batch's median (clipped to [0.5, 10]) and `near` = exp(-dt / 5 min) for dt the
   market time to the nearest critical event known (this batch's, or the previous batch's last one).
   The first BAR of every market day is kept (a time anchor).
4. Every stored event carries `weight` = 1/(its probability of being kept): 1 for events kept by rules 1-2
   (and their ancestors, decided before any draw), p for a sampled one, and 1 - prod(1 - p) over a sampled
   event and its sampled descendants for one kept as their ancestor. Sums of weights estimate counts and
   aggregates without bias (Horvitz-Thompson); exact per-type counts are kept in the run manifest.
Deterministic: the random draws are seeded by (seed, first seq of the batch).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tradetrace.events.types import EventType
from tradetrace.store.reader import link_pairs

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


@dataclass(slots=True)
class SamplerState:
    """What one batch's sampling leaves to the next of the same run: its last critical event (seq, market time)."""

    last_critical_seq: int | None = None
    last_critical_ts: int | None = None


def _ints(table: pa.Table, name: str) -> np.ndarray:
    col = table.column(name)
    if pa.types.is_timestamp(col.type):
        col = col.cast(pa.int64())
    return col.fill_null(-1).to_numpy()


def sample(tables: dict[EventType, pa.Table], cfg: Sampling, market: Any = None,
           state: SamplerState | None = None) -> dict[EventType, pa.Table]:
    """The batch's tables thinned by the rule above, each with a float32 `weight` column. `market` (the rows
    the batch was built from) gives BAR closes to a BAR table stored with market set references. `state`: the
    run's batches are sampled one after another with it (context windows across batch edges); None: this batch
    alone (its edges are treated as any other events)."""
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
    prev_seq = prev_ts = None
    if state is not None:
        prev_seq, prev_ts = state.last_critical_seq, state.last_critical_ts
        if len(crit_seq):
            state.last_critical_seq, state.last_critical_ts = int(crit_seq[-1]), int(ts[crit].max())
    if len(crit_seq) and cfg.context:
        pos = np.searchsorted(crit_seq, seq)
        left = np.abs(seq - crit_seq[np.clip(pos - 1, 0, len(crit_seq) - 1)])
        right = np.abs(crit_seq[np.clip(pos, 0, len(crit_seq) - 1)] - seq)
        keep |= np.minimum(left, right) <= cfg.context
    if state is not None and cfg.context:
        if prev_seq is not None:  # after the previous batch's last critical event
            keep |= seq - prev_seq <= cfg.context
        keep[order[-cfg.context:]] = True  # before the next batch's first critical event

    parent, child = _edges(tables, types, owner, seq, cause, order, sorted_seq)
    p = np.ones(len(seq))
    if not keep.all():
        vol = np.ones(len(seq))
        if EventType.BAR in tables:
            k = types.index(EventType.BAR)
            r = _abs_returns(tables[EventType.BAR], _closes(tables[EventType.BAR], market))
            med = np.median(r[r > 0]) if (r > 0).any() else 1.0
            vol[owner == k] = np.clip(r / med, 0.5, 10.0)
        crit_ts = np.sort(ts[crit])
        if prev_ts is not None:
            crit_ts = np.concatenate([[prev_ts], crit_ts])
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
            keep[bars[first]] = True
    # Kept for certain (weight 1): the events above and every ancestor of theirs (causation and links), decided
    # before any draw. An ancestor forced only after the draws would be kept with weight 1/p when drawn and 1
    # otherwise, though it was always kept: its expected weight 2 - p, not 1, biased every count it is in.
    keep = _with_ancestors(keep, parent, child)
    p[keep] = 1.0
    if not keep.all():
        certain = keep
        rng = np.random.default_rng([cfg.seed, int(sorted_seq[0])])
        draw = rng.random(len(seq))
        drawn = ~keep & (draw < p)
        # Ancestors of drawn events are kept too: such an event is kept if it or any of its descendants is drawn,
        # so its weight is 1 / that probability (Horvitz-Thompson), not 1 / its own p.
        keep = _with_ancestors(keep | drawn, parent, child)
        p = _inclusion(p, certain, keep, seq, parent, child)

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


def _edges(tables: dict[EventType, pa.Table], types: list[EventType], owner: np.ndarray, seq: np.ndarray,
           cause: np.ndarray, order: np.ndarray, sorted_seq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(parent row, child row) of every causation and link edge inside the batch (rows as in `seq`)."""
    kids = [np.arange(len(seq))]
    wanted = [cause]
    for k, t in enumerate(types):  # links are ancestors too
        if t == EventType.BAR:
            continue
        rows, linked = link_pairs(np.flatnonzero(owner == k), tables[t].column("links"))
        kids.append(rows)
        wanted.append(linked)
    child = np.concatenate(kids)
    want = np.concatenate(wanted)
    j = np.clip(np.searchsorted(sorted_seq, want), 0, len(sorted_seq) - 1)
    ok = (want >= 0) & (sorted_seq[j] == want)
    return order[j[ok]], child[ok]


def _with_ancestors(mask: np.ndarray, parent: np.ndarray, child: np.ndarray) -> np.ndarray:
    """`mask` plus every ancestor (within the batch) of the rows it holds."""
    mask = mask.copy()
    frontier = mask.copy()
    while frontier.any():
        up = parent[frontier[child]]
        new = np.zeros(len(mask), dtype=bool)
        new[up] = True
        new &= ~mask
        mask |= new
        frontier = new
    return mask


def _inclusion(p: np.ndarray, certain: np.ndarray, keep: np.ndarray, seq: np.ndarray, parent: np.ndarray,
               child: np.ndarray) -> np.ndarray:
    """The probability that each sampled row (not `certain`) is kept: 1 - prod(1 - p) over the row and its sampled
    descendants (it is kept if any of them is drawn; draws are independent). A row without sampled descendants:
    its own p. Descendants as sets, not a product per edge: with links one event can reach another by two paths."""
    e = ~certain[parent] & ~certain[child]
    if not e.any():
        return p
    kids_of: dict[int, list[int]] = {}
    for a, b in zip(parent[e].tolist(), child[e].tolist(), strict=True):
        kids_of.setdefault(a, []).append(b)
    below: dict[int, set[int]] = {}  # row -> its sampled descendants
    for a in sorted(kids_of, key=lambda r: seq[r], reverse=True):  # effects (later seqs) before their causes
        found: set[int] = set()
        for b in kids_of[a]:
            found.add(b)
            found |= below.get(b, set())
        below[a] = found
    out = p.copy()
    for a, found in below.items():
        if keep[a]:
            out[a] = 1.0 - (1.0 - p[a]) * float(np.prod(1.0 - p[sorted(found)]))
    return out


def _abs_returns(bars: pa.Table, close: np.ndarray) -> np.ndarray:
    """|log return| of each BAR over the previous BAR of its own symbol in the batch (0 for a symbol's first).
    Per symbol: a multi-symbol run's BARs interleave (A, B, A, B), and a difference across symbols is the log of
    their price ratio, the same every bar, which made the rate blind to market activity."""
    logc = np.log(np.maximum(close, 1e-12))
    sym = bars.column("symbol").combine_chunks()
    if not pa.types.is_dictionary(sym.type):
        sym = sym.dictionary_encode()
    if len(sym.dictionary) <= 1:
        return np.abs(np.diff(logc, prepend=logc[:1]))
    codes = sym.indices.to_numpy(zero_copy_only=False)
    r = np.zeros(len(logc))
    for k in range(len(sym.dictionary)):
        rows = np.flatnonzero(codes == k)
        r[rows] = np.abs(np.diff(logc[rows], prepend=logc[rows[:1]]))
    return r


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
