"""The "why" questions over stored runs: lineage, trade chains, latency statistics.

All of them work from integer seqs and causation_seq columns (vectorized with numpy); events are
materialized as TracedEvents only for the handful of rows a person looks at.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from tradetrace.events.event import TracedEvent, make_event_id, parse_event_id
from tradetrace.events.lineage import Lineage, to_traced, walk_back
from tradetrace.events.types import EventType
from tradetrace.store.reader import RunReader


@dataclass(frozen=True, slots=True)
class EventLineage:
    """An event, its causes back to the run start (newest first), its further causes (`links`) and every event
    it caused, directly or through a link."""

    event: TracedEvent
    ancestors: list[TracedEvent]
    descendants: pa.Table  # seq, event_id, event_type, causation_seq, via_link of every descendant, in seq order
    linked: list[TracedEvent] = field(default_factory=list)  # links of the event and its ancestors, in seq order


def lineage(reader: RunReader, seq: int) -> EventLineage:
    """Ancestors by causation up to RUN_START, plus the events the event and its ancestors link to (DESIGN.md:
    an event with several causes keeps the main one in causation_id and the rest in `links`; a FILL links the
    BAR whose open priced it). Descendants: the transitive closure over causation and links, so a BAR's
    descendants include the FILLs it priced and what those caused; `via_link` marks the rows whose path
    from the event passes through a link.

    BARs are caused by the run start; they are not listed among RUN_START's descendants (that would
    be the whole run)."""
    chain = walk_back(reader.lookup, seq, stop_at="RUN_START", run_date=reader.record["date"])
    on_chain = {e.sequence_number for e in chain.chain}
    wanted = sorted({parse_event_id(x)[1] for e in chain.chain for x in e.links} - on_chain)
    linked = []
    for s in wanted:
        row = reader.lookup(s)
        if row is None:  # a sampled run keeps every ancestor: only damage gets here
            raise KeyError(f"broken lineage: linked seq {s} is missing")
        linked.append(to_traced(row, reader.record["date"]))
    index = reader.index  # non-BAR seq, type, cause, links: BARs only ever cause non-BAR events
    seqs, causes = index.seq, index.causes
    names = np.array([t.name for t in EventType], dtype=object)
    types = names[index.types.astype(np.intp)]
    link_row = np.searchsorted(seqs, index.link_from)  # row of each linking event in `seqs`
    found = np.zeros(len(seqs), dtype=bool)
    by_link = np.zeros(len(seqs), dtype=bool)
    frontier = np.array([seq], dtype=np.int64)
    frontier_link = np.zeros(1, dtype=bool)  # reached through a link
    while len(frontier):
        caused = np.isin(causes, frontier) & ~found
        linking = np.zeros(len(seqs), dtype=bool)
        hit_link = np.isin(index.link_to, frontier)
        linking[link_row[hit_link]] = True
        linking &= ~found & ~caused
        # a row caused by a frontier event inherits that event's via-link mark; one reached by a link has it
        link_marked = frontier[frontier_link]
        by_link |= (caused & np.isin(causes, link_marked)) | linking
        hit = caused | linking
        found |= hit
        frontier = seqs[hit]
        frontier_link = by_link[hit]
    order = np.argsort(seqs[found], kind="stable")
    d_seq = seqs[found][order]
    run = reader.run_id
    desc = pa.table({
        "seq": pa.array(d_seq, type=pa.int64()),
        "event_id": pa.array([make_event_id(run, int(s)) for s in d_seq], type=pa.string()),
        "event_type": pa.array(types[found][order].tolist(), type=pa.string()),
        "causation_seq": pa.array(causes[found][order], type=pa.int64()),
        "via_link": pa.array(by_link[found][order], type=pa.bool_()),
    })
    return EventLineage(chain.chain[0], chain.chain[1:], desc, linked)


def signal_to_fill_path(reader: RunReader, seq: int) -> Lineage:
    """FILL -> ORDER -> SIGNAL (or the BAR/RISK_BREACH that caused the order when there was no signal)."""
    row = reader.lookup(seq)
    if row is None:
        raise KeyError(f"no event {make_event_id(reader.run_id, seq)}")
    etype = row.column("event_type")[0].as_py()
    if etype != "FILL":
        raise ValueError(f"event {make_event_id(reader.run_id, seq)} is a {etype}, not a FILL")
    path = walk_back(reader.lookup, seq, stop_at="SIGNAL", run_date=reader.record["date"])
    if path.find("SIGNAL") is None:  # a stop or an end-of-data close: stop at the BAR that triggered it
        path = walk_back(reader.lookup, seq, stop_at="BAR", run_date=reader.record["date"])
    return path


def _cause_of(tab: pa.Table | None) -> tuple[np.ndarray, np.ndarray]:
    if tab is None:
        return np.array([], np.int64), np.array([], np.int64)
    return tab.column("seq").to_numpy(), tab.column("causation_seq").fill_null(-1).to_numpy()


def _lookup(keys: np.ndarray, seqs: np.ndarray, values: np.ndarray) -> np.ndarray:
    """values[seqs == key] per key, -1 where absent (seqs sorted)."""
    if not len(seqs):
        return np.full(len(keys), -1, dtype=np.int64)
    k = np.clip(np.searchsorted(seqs, keys), 0, len(seqs) - 1)
    return np.where((seqs[k] == keys) & (keys >= 0), values[k], -1)


def trade_lineage(reader: RunReader) -> pa.Table:
    """One row per trade: entry/exit SIGNAL, ORDER, FILL, the close event ids, P&L.

    Closed trades (one row per POSITION_CLOSE, in close order) come first, then each position still open at
    the end of the run: its entry ids, its open quantity, and null exit ids, close_id, pnl, pnl_pct and
    exit_reason (`close_id` null marks an open position)."""
    want = [EventType.POSITION_CLOSE, EventType.POSITION_OPEN, EventType.FILL, EventType.ORDER, EventType.SIGNAL]
    tabs = reader.load([t for t in want if t in reader.types],
                       columns=None)
    close = tabs.get(EventType.POSITION_CLOSE)
    if close is None or close.num_rows == 0:
        close = pa.table({c: pa.array([], type=t) for c, t in [
            ("seq", pa.int64()), ("causation_seq", pa.int64()), ("entry_seq", pa.int64()), ("trade_id", pa.int64()),
            ("symbol", pa.string()), ("side", pa.int8()), ("quantity", pa.float64()), ("pnl", pa.float64()),
            ("pnl_pct", pa.float64()), ("exit_reason", pa.string())]})
    still_open = _open_at_end(tabs.get(EventType.POSITION_OPEN), tabs.get(EventType.FILL))
    f_seq, f_cause = _cause_of(tabs.get(EventType.FILL))
    o_seq, o_cause = _cause_of(tabs.get(EventType.ORDER))
    s_seq = tabs[EventType.SIGNAL].column("seq").to_numpy() if EventType.SIGNAL in tabs else np.array([], np.int64)
    none = np.full(still_open.num_rows, -1, dtype=np.int64)
    close_seq = np.concatenate([close.column("seq").to_numpy(), none])
    exit_fill = np.concatenate([close.column("causation_seq").fill_null(-1).to_numpy(), none])
    entry_fill = np.concatenate([close.column("entry_seq").fill_null(-1).to_numpy(),
                                 still_open.column("causation_seq").fill_null(-1).to_numpy()])

    def chain(fill: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        order = _lookup(fill, f_seq, f_cause)
        sig = _lookup(order, o_seq, o_cause)
        is_sig = np.isin(sig, s_seq) & (sig >= 0)
        return order, np.where(is_sig, sig, -1)

    entry_order, entry_signal = chain(entry_fill)
    exit_order, exit_signal = chain(exit_fill)
    run = reader.run_id

    def ids(a: np.ndarray) -> pa.Array:
        return pa.array([make_event_id(run, int(s)) if s >= 0 else None for s in a], type=pa.string())

    def col(name: str, t: pa.DataType) -> pa.ChunkedArray:  # closed rows, then open rows (null if they lack it)
        tail = still_open.column(name).cast(t).chunks if name in still_open.column_names \
            else [pa.nulls(still_open.num_rows, t)]
        return pa.chunked_array(close.column(name).cast(t).chunks + tail, type=t)

    return pa.table({
        "trade_id": col("trade_id", pa.int64()), "symbol": col("symbol", pa.string()), "side": col("side", pa.int8()),
        "quantity": col("quantity", pa.float64()),
        "entry_signal_id": ids(entry_signal), "entry_order_id": ids(entry_order), "entry_fill_id": ids(entry_fill),
        "exit_signal_id": ids(exit_signal), "exit_order_id": ids(exit_order), "exit_fill_id": ids(exit_fill),
        "close_id": ids(close_seq), "pnl": col("pnl", pa.float64()), "pnl_pct": col("pnl_pct", pa.float64()),
        "exit_reason": col("exit_reason", pa.string()),
    })


def _open_at_end(opens: pa.Table | None, fills: pa.Table | None) -> pa.Table:
    """The POSITION_OPEN of each trade still open when the run ended, with its open quantity.

    A symbol has at most one open trade, opened by its latest POSITION_OPEN; it is still open if the symbol's
    net filled quantity is not zero (fills that add to a trade or close part of it have no POSITION_OPEN,
    so the quantity comes from the fills)."""
    empty = pa.table({"causation_seq": pa.array([], pa.int64()), "trade_id": pa.array([], pa.int64()),
                      "symbol": pa.array([], pa.string()), "side": pa.array([], pa.int8()),
                      "quantity": pa.array([], pa.float64())})
    if opens is None or fills is None or opens.num_rows == 0:
        return empty
    net: dict[str, float] = {}
    for sym, side, qty in zip(fills.column("symbol").to_pylist(), fills.column("side").to_pylist(),
                              fills.column("quantity").to_pylist(), strict=True):
        net[sym] = net.get(sym, 0.0) + side * qty
    seqs = opens.column("seq").to_pylist()
    latest: dict[str, int] = {}  # symbol -> row of its latest POSITION_OPEN
    for k, sym in enumerate(opens.column("symbol").to_pylist()):
        if sym not in latest or seqs[k] > seqs[latest[sym]]:
            latest[sym] = k
    rows = sorted((k for sym, k in latest.items() if abs(net.get(sym, 0.0)) > 1e-9), key=seqs.__getitem__)
    picked = opens.take(pa.array(rows, pa.int64()))
    return pa.table({"causation_seq": picked.column("causation_seq").cast(pa.int64()),
                     "trade_id": picked.column("trade_id"), "symbol": picked.column("symbol").cast(pa.string()),
                     "side": picked.column("side"),
                     "quantity": pa.array([abs(net[s]) for s in picked.column("symbol").to_pylist()], pa.float64())})


def latency_report(reader: RunReader) -> pa.Table:
    """Per event type: count, mean, p50, p95, p99, max of queue and processing time (microseconds).

    queue = received_at - emitted_at, processing = processed_at - received_at; events without clocks
    (BARs between clock samples, events never dispatched) count in `count` but not in the statistics.
    `count` is the run's exact count of the type (its manifest), `stored` the rows kept. On a sampled run a
    type whose rows were thinned has `estimated` true: its mean and percentiles are weighted by the rows'
    `weight` (1 / keep probability), so they estimate the whole run's; its max is the sample's."""
    rows: dict[str, list] = {k: [] for k in ("event_type", "count", "stored", "timed", "estimated")}
    stats = ("mean", "p50", "p95", "p99", "max")
    for prefix in ("queue", "proc"):
        for s in stats:
            rows[f"{prefix}_{s}_us"] = []
    counts = reader.record.get("counts") or {}
    sampled = reader.record.get("sampling") is not None
    cols = ["emitted_at", "received_at", "processed_at"] + (["weight"] if sampled else [])
    for t, tab in reader.load(columns=cols).items():
        em, rx, px = (tab.column(c).cast(pa.int64()) for c in ("emitted_at", "received_at", "processed_at"))
        valid = ~(np.asarray(rx.is_null()) | np.asarray(px.is_null()) | np.asarray(em.is_null()))
        e = em.fill_null(0).to_numpy()[valid]
        r = rx.fill_null(0).to_numpy()[valid]
        p = px.fill_null(0).to_numpy()[valid]
        count = int(counts.get(t.name, tab.num_rows))
        w = tab.column("weight").fill_null(1.0).to_numpy().astype(np.float64)[valid] \
            if "weight" in tab.column_names else None
        estimated = w is not None and count > tab.num_rows
        rows["event_type"].append(t.name)
        rows["count"].append(count)
        rows["stored"].append(tab.num_rows)
        rows["timed"].append(int(valid.sum()))
        rows["estimated"].append(estimated)
        for prefix, v in (("queue", (r - e) / 1e3), ("proc", (p - r) / 1e3)):
            if not len(v):
                vals: tuple = (None,) * 5
            elif estimated:
                q = np.percentile(v, [50, 95, 99], weights=w, method="inverted_cdf")
                vals = (float(np.average(v, weights=w)), float(q[0]), float(q[1]), float(q[2]), float(v.max()))
            else:
                q = np.percentile(v, [50, 95, 99])
                vals = (float(v.mean()), float(q[0]), float(q[1]), float(q[2]), float(v.max()))
            for s, x in zip(stats, vals, strict=True):
                rows[f"{prefix}_{s}_us"].append(x)
    for name in sorted(set(counts) - set(rows["event_type"])):
        if counts[name]:  # a type whose events were all sampled away: its count, no statistics
            for k, v in (("event_type", name), ("count", int(counts[name])), ("stored", 0), ("timed", 0),
                         ("estimated", True)):
                rows[k].append(v)
            for k in rows.keys() - {"event_type", "count", "stored", "timed", "estimated"}:
                rows[k].append(None)
    return pa.table(rows)


__all__ = ["EventLineage", "lineage", "signal_to_fill_path", "trade_lineage", "latency_report", "to_traced"]
