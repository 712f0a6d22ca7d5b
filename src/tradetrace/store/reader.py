"""Reading a run back: its files from the manifest/journal (no tree listing), events, point lookups.

A run's files are found from `_runs/<run>.json` (after the run ended or was compacted) or from its
journal (while running, or after a crash), so loading one run never lists the whole store.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tradetrace.events.types import COMMON_FIELDS, EventType, dict_type, event_schema
from tradetrace.store import codec, layout, market


def run_record(root: Path, run_id: str) -> dict[str, Any]:
    """The manifest of a run, with status `incomplete` and the lost range when its writer died.

    DamagedRun (naming the file) if the manifest or journal is unreadable or malformed, or lists a file that
    is not one of the run's own (`layout.check_run_files`): callers read and delete only what this returned."""
    mpath = layout.manifest_path(root, run_id)
    try:
        m = layout.read_json(mpath)
    except FileNotFoundError:
        raise layout.StoreError(f"unknown run {run_id!r} in the event store {root}") from None
    except (OSError, ValueError) as exc:  # ValueError: bad JSON or bad UTF-8
        raise layout.DamagedRun(f"damaged run {run_id}: {mpath}: unreadable ({layout.one_line(exc)})") from None
    if not isinstance(m, dict) or not isinstance(m.get("status"), str):
        raise layout.DamagedRun(f"damaged run {run_id}: {mpath}: not a run manifest (no status)")
    if m.get("run_id") != run_id:  # prune deletes by this id
        raise layout.DamagedRun(f"damaged run {run_id}: {mpath}: run_id {m.get('run_id')!r} is not the file's run")
    _check_names(root, run_id, m, mpath)
    if m.get("files") is None:  # not ended: rebuild from the journal
        jpath = layout.journal_path(root, run_id)
        try:
            _from_journal(m, layout.read_journal(jpath))
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise layout.DamagedRun(f"damaged run {run_id}: {jpath}: malformed segment record "
                                    f"({type(exc).__name__}: {layout.one_line(exc)})") from None
        _check_files(run_id, m, jpath)
        hi = m["durable_seq_hi"]
        if m["status"] == "running" and not _alive(m):
            m["status"] = "incomplete"
            m["lost_seq"] = [hi + 1, None]  # the end is unknown: the process died before reporting it
            # `pid` is the run's (engine's) process: its writer, a thread in it or a child process that dies
            # with it, stopped too. A writer process that died alone is marked by the engine (writer.py).
            m["reason"] = (f"the run's process {m.get('pid')} died and its writer (process or thread) stopped "
                           f"with it; events from seq {hi + 1} on were not durable")
        m.setdefault("event_count", hi + 1)
    else:
        _check_files(run_id, m, mpath)
    m.setdefault("lost_seq", None)
    return m


def _from_journal(m: dict[str, Any], journal: list[dict[str, Any]]) -> None:
    """The files, counts and durable end of a run that has not ended, from its journal's gapless prefix."""
    files: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    stored = 0
    hi = -1
    for rec in journal:
        if rec["seq_lo"] != hi + 1:
            break  # a gap would mean a lost segment: only the gapless prefix is durable
        hi = int(rec["seq_hi"])
        for t, f in rec["files"].items():
            files.setdefault(t, []).append(f)
        for t, n in rec["counts"].items():
            counts[t] = counts.get(t, 0) + n
        stored += sum(rec["stored"].values())
    m["files"] = files
    m["durable_seq_hi"] = hi
    m["stored_count"] = stored
    m.setdefault("counts", counts)
    m["durable_counts"] = counts


def _check_files(run_id: str, m: dict[str, Any], source: Path) -> None:
    """Every path the record lists is one of the run's own files (see run_record); DamagedRun otherwise."""
    files = m["files"]
    if not isinstance(files, dict):
        raise layout.DamagedRun(f"damaged run {run_id}: {source}: files is not a mapping")
    for name, paths in files.items():
        if name not in EventType.__members__:
            raise layout.DamagedRun(f"damaged run {run_id}: {source}: unknown event type {name!r} in files")
        layout.check_run_files(run_id, m.get("date"), name, paths, source)


_MARKET_KEY = re.compile(r"^[0-9a-f]{32}$")


def _check_names(root: Path, run_id: str, m: dict[str, Any], mpath: Path) -> None:
    """The other names a manifest holds that become paths: its partition date, market set and seq index."""
    layout.check_date(run_id, m.get("date"), mpath)
    key = m.get("market_set")
    if key is not None and not (isinstance(key, str) and _MARKET_KEY.match(key)):  # as market.set_path checks
        raise layout.DamagedRun(f"damaged run {run_id}: {mpath}: market_set {key!r} is not a market set key")
    index = m.get("seq_index")
    if index is not None and (not isinstance(index, str)
                              or index.replace(os.sep, "/") != f"{layout.RUNS_DIR}/{run_id}.seqindex.parquet"):
        raise layout.DamagedRun(f"damaged run {run_id}: {mpath}: seq_index {index!r} is not the run's index file")


def _alive(m: dict[str, Any]) -> bool:
    import os
    import socket

    if m.get("host") != socket.gethostname():
        return True  # another machine's run: assume it is still being written
    try:
        os.kill(int(m["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _not_zombie(int(m["pid"]))


def _not_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True  # no /proc: the pid answered, take it as alive


class RunReader:
    """Reads one run's events (whole tables, filtered loads, point lookups by seq)."""

    def __init__(self, root: Path, run_id: str) -> None:
        self.root = Path(root)
        self.run_id = layout.check_run_id(run_id)
        self.record = run_record(self.root, self.run_id)
        self._row_groups: dict[str, pa.Table] = {}
        self._files: dict[Path, pq.ParquetFile] = {}
        self._payloads = market.Payloads(self.root)  # BAR payloads of a run stored with a market set

    @contextmanager
    def reading(self, path: Path) -> Iterator[None]:
        """Reads of one of the run's files (or its market set): a listed file that is missing or unreadable is a
        one-line DamagedRun naming it, not an Arrow traceback (`tradetrace store verify` lists all of them)."""
        try:
            yield
        except (OSError, pa.ArrowException) as exc:
            what = "missing" if isinstance(exc, FileNotFoundError) else f"unreadable ({layout.one_line(exc)})"
            raise layout.DamagedRun(f"damaged run {self.run_id}: {path}: {what}; `tradetrace store verify` "
                                    "reports the run's problems") from None

    def read(self, path: Path, columns: list[str] | None = None, **kw: Any) -> pa.Table:
        """codec.read_parquet of one of the run's files, its damage reported as `reading` does."""
        with self.reading(path):
            return codec.read_parquet(path, columns, **kw)

    def attach(self, table: pa.Table) -> pa.Table:
        """market.attach for this run's BARs, a damaged market set reported as `reading` does."""
        key = self.record.get("market_set")
        if not key or "market_row" not in table.column_names:
            return market.attach(table, self._payloads)
        with self.reading(market.set_path(self.root, key)):
            return market.attach(table, self._payloads)

    def files(self, etype: EventType) -> list[Path]:
        return [self.root / f for f in self.record["files"].get(etype.name, [])]

    @property
    def types(self) -> list[EventType]:
        return sorted(EventType[name] for name in self.record["files"])

    def load(self, types: list[EventType] | None = None, start: Any = None, end: Any = None,
             columns: list[str] | None = None) -> dict[EventType, pa.Table]:
        """Per-type tables, sorted by seq, optionally limited to market time [start, end)."""
        out = {}
        for t in types or self.types:
            paths = self.files(t)
            if not paths:
                continue
            parts = [self.read(p, columns) for p in paths]
            tab = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
            if columns is None:
                tab = codec.from_disk(self.attach(tab), t)
            if start is not None or end is not None:
                tab = tab.filter(_time_mask(tab, start, end))
            out[t] = tab
        return out

    def parts(self, types: list[EventType] | None = None, start: Any = None,
              end: Any = None, head: int | None = None) -> list[tuple[EventType, pa.Table]]:
        """Every file of the run (or of `types`) as stored: string columns dictionary-encoded, prices
        possibly DECIMAL, no event_type column; for `merge_by_seq`, which decodes while it merges.
        `head` (without a time window): only each file's first `head` rows, which hold the run's first
        `head` events of those types (files are sorted by seq).

        Files are read concurrently (Parquet decoding releases the GIL) and each with Arrow's threads:
        the BAR file is ~80% of the bytes, so the small types' files decode while it does."""
        paths = [(t, p) for t in (types or self.types) for p in self.files(t)]
        if not paths:
            return []
        if start is not None or end is not None:
            head = None
        key = self.record.get("market_set")
        key = key if key and any(t == EventType.BAR for t, _ in paths) else None  # the BAR prices' market set

        def read(path: Path) -> pa.Table:
            return self.read(path, dictionary_strings=True, head=head)

        if len(paths) == 1 and key is None:
            tabs = [read(paths[0][1])]
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=min(4, len(paths) + 1)) as ex:
                # the whole set decodes beside the run's files (a head's few BARs read their row groups only)
                pre = ex.submit(self._set_rows, key) if key and head is None else None
                tabs = list(ex.map(read, [p for _, p in paths]))
                if pre is not None:
                    pre.result()
        out = []
        for (t, _), tab in zip(paths, tabs, strict=True):
            if start is not None or end is not None:
                tab = tab.filter(_time_mask(tab, start, end))
            out.append((t, self.attach(tab)))
        return out

    def _set_rows(self, key: str) -> pa.Table:
        with self.reading(market.set_path(self.root, key)):
            return self._payloads.rows(key)

    def events(self, types: list[EventType] | None = None, start: Any = None, end: Any = None,
               limit: int | None = None) -> pa.Table:
        """The run's events (or `types`, market time in [start, end)) as one table sorted by seq; the first
        `limit` of them if given."""
        tab = merge_by_seq(self.parts(types, start, end, head=limit))
        return tab if limit is None else tab.slice(0, limit)

    def tables(self) -> dict[EventType, pa.Table]:
        return self.load()

    @cached_property
    def index(self) -> SeqIndex:
        """seq, type, causation_seq and links of every non-BAR event, sorted by seq.

        A compacted run has it in one small file (`_runs/<run>.seqindex.parquet`, written by compaction):
        one read instead of one per type file. Otherwise (running, crashed, not yet compacted) it is
        built from the seq, causation_seq and links columns of the non-BAR files. An index file written
        before it held links gets them from the type files (the links column alone: nulls but for FILLs)."""
        rel = self.record.get("seq_index")
        nonbar = [t for t in self.types if t != EventType.BAR]
        if rel and (self.root / rel).exists():
            with self.reading(self.root / rel):
                t = pq.ParquetFile(self.root / rel).read(use_threads=False)
            if "links" in t.column_names:
                links = link_pairs(t.column("seq"), t.column("links"))
            else:
                linked = self.load(nonbar, columns=["seq", "links"]).values()
                links = _concat_pairs([link_pairs(x.column("seq"), x.column("links")) for x in linked])
            return SeqIndex(t.column("seq").to_numpy(), t.column("type").to_numpy(),
                            t.column("causation_seq").to_numpy(), links)
        return SeqIndex.build(self.load(nonbar, columns=["seq", "causation_seq", "links"]))

    def lookup(self, seq: int) -> pa.Table | None:
        """One event (a one-row table in its type's schema), or None."""
        t = self.index.type_of(seq)
        if t is not None:
            return self._row(t, seq)
        if EventType.BAR in self.types:
            return self._row(EventType.BAR, seq)
        return None

    def _file(self, path: Path) -> pq.ParquetFile:
        pf = self._files.get(path)
        if pf is None:
            with self.reading(path):
                pf = self._files[path] = pq.ParquetFile(path)
        return pf

    def _row(self, t: EventType, seq: int) -> pa.Table | None:
        """The row of `seq` in type `t`'s files: only the row group whose seq statistics cover it is read
        (compaction writes the small types in small row groups, so that is a few thousand rows)."""
        for path in self.files(t):
            pf = self._file(path)
            md = pf.metadata
            seq_col = pf.schema_arrow.get_field_index("seq")
            for g in range(md.num_row_groups):
                st = md.row_group(g).column(seq_col).statistics
                if st is not None and st.has_min_max and not st.min <= seq <= st.max:
                    continue
                key = f"{path}#{g}"
                if key not in self._row_groups:
                    with self.reading(path):
                        self._row_groups[key] = pf.read_row_group(g, use_threads=False)
                rg = self._row_groups[key]
                seqs = rg.column("seq").to_numpy()
                k = int(np.searchsorted(seqs, seq))
                if k < len(seqs) and seqs[k] == seq:
                    return codec.from_disk(self.attach(rg.slice(k, 1)), t)
        return None


class SeqIndex:
    """Which type each non-BAR seq is, its cause and its links (further causes, DESIGN.md vocabulary): enough
    to walk lineage both ways without reading events. Links are flat pairs sorted by `link_from`: event
    `link_from[k]` was also caused by `link_to[k]` (a FILL by the BAR whose open priced it)."""

    def __init__(self, seq: np.ndarray, types: np.ndarray, causes: np.ndarray,
                 links: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        self.seq = seq
        self.types = types
        self.causes = causes
        self.link_from, self.link_to = links if links is not None else (_NO_SEQS, _NO_SEQS)

    @classmethod
    def build(cls, tables: dict[EventType, pa.Table]) -> SeqIndex:
        """From per-type tables with seq, causation_seq (null cause stored as -1) and optionally links columns."""
        if not tables:
            return cls(_NO_SEQS, np.empty(0, dtype=np.int8), _NO_SEQS)
        seq = np.concatenate([t.column("seq").to_numpy() for t in tables.values()])
        types = np.concatenate([np.full(t.num_rows, int(k), dtype=np.int8) for k, t in tables.items()])
        causes = np.concatenate([t.column("causation_seq").fill_null(-1).to_numpy() for t in tables.values()])
        order = np.argsort(seq, kind="stable")
        links = _concat_pairs([link_pairs(t.column("seq"), t.column("links"))
                               for t in tables.values() if "links" in t.column_names])
        return cls(seq[order], types[order], causes[order], links)

    def table(self) -> pa.Table:
        """One row per event; `links` a list column, null where an event has none (nearly all)."""
        k = np.searchsorted(self.seq, self.link_from)
        counts = np.bincount(k, minlength=len(self.seq))
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
        links = pa.ListArray.from_arrays(pa.array(offsets), pa.array(self.link_to, pa.int64()),
                                         mask=pa.array(counts == 0))
        return pa.table({"seq": pa.array(self.seq, pa.int64()), "type": pa.array(self.types, pa.int8()),
                         "causation_seq": pa.array(self.causes, pa.int64()), "links": links})

    def type_of(self, seq: int) -> EventType | None:
        k = int(np.searchsorted(self.seq, seq))
        if k < len(self.seq) and self.seq[k] == seq:
            return EventType(int(self.types[k]))
        return None


_NO_SEQS = np.empty(0, dtype=np.int64)


def link_pairs(owner: np.ndarray | pa.ChunkedArray | pa.Array,
               links: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(owner, linked seq) per link of a `links` column; `owner` names each row (its seq, or its row number)."""
    if isinstance(links, pa.ChunkedArray):
        links = links.combine_chunks()
    if links.null_count == len(links):
        return _NO_SEQS, _NO_SEQS
    lengths = np.asarray(pc.list_value_length(links).fill_null(0), dtype=np.int64)
    src = np.repeat(np.asarray(owner, dtype=np.int64), lengths)
    return src, np.asarray(pc.list_flatten(links), dtype=np.int64)


def _concat_pairs(pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Link pairs of several tables, sorted by the linking event's seq."""
    if not pairs:
        return _NO_SEQS, _NO_SEQS
    src = np.concatenate([p[0] for p in pairs])
    dst = np.concatenate([p[1] for p in pairs])
    order = np.argsort(src, kind="stable")
    return src[order], dst[order]


def _time_mask(tab: pa.Table, start: Any, end: Any) -> pa.Array:
    ts = tab.column("timestamp")
    mask = pa.array(np.ones(tab.num_rows, dtype=bool))
    if start is not None:
        mask = pc.and_(mask, pc.greater_equal(ts, pa.scalar(_ns(start), type=ts.type)))
    if end is not None:
        mask = pc.and_(mask, pc.less(ts, pa.scalar(_ns(end), type=ts.type)))
    return mask


def _ns(v: Any, what: str = "market time") -> int:
    """A market time (anything pandas reads as a timestamp; naive = UTC) as ns since the epoch; a one-line
    StoreError naming `what` and the value if it is not one."""
    import pandas as pd

    try:
        t = pd.Timestamp(v)
    except (ValueError, TypeError) as exc:
        raise layout.StoreError(f"{what} {v!r} is not a date/time ({layout.one_line(exc)})") from None
    if t is pd.NaT:
        raise layout.StoreError(f"{what} {v!r} is not a date/time")
    if t.tzinfo is None:
        t = t.tz_localize("UTC")
    return int(t.value)


def market_ns(start: Any, end: Any) -> tuple[int | None, int | None]:
    """A load's [start, end) window parsed once, up front (see `_ns`)."""
    return (None if start is None else _ns(start, "start"), None if end is None else _ns(end, "end"))


def concat_by_seq(tables: dict[EventType, pa.Table]) -> pa.Table:
    """Per-type tables -> one table sorted by seq (payload columns of other types are null)."""
    return merge_by_seq(list(tables.items()))


def merge_by_seq(parts: list[tuple[EventType, pa.Table]]) -> pa.Table:
    """Parts (one file or one type's table each, any order) -> one event table sorted by seq.

    Equal to concatenating the event-schema tables with null promotion and sorting by seq, without
    doing either: the sort becomes an output position per row (seq - first seq for a gapless run, an
    argsort otherwise) and every output column is written once, by scattering each part's values to
    its rows. That matters because the result is mostly nulls (45 columns, most of them one type's
    payload) and the old concat + sort_by copied all of it twice. Parts may hold stored
    representations (dictionary strings, DECIMAL prices, no event_type column): they come out as the
    event schema's types (string, float64).
    """
    if not parts:
        return pa.schema([pa.field(n, dict_type(t)) for n, t in COMMON_FIELDS]).empty_table()
    fields = _merged_fields(parts)
    if fields is None:  # the same column name with two types: let Arrow's promotion decide, slowly
        tabs = [codec.from_disk(_plain(p), t) for t, p in parts]
        return pa.concat_tables(tabs, promote_options="default").sort_by("seq")
    seqs = [p.column("seq").to_numpy() for _, p in parts]
    pos_all = _positions(np.concatenate(seqs, out=_pool_empty(sum(map(len, seqs)), np.int64))
                         if len(seqs) > 1 else seqs[0])
    n = len(pos_all)
    bounds = np.cumsum([0] + [len(s) for s in seqs])
    pos = [pos_all[bounds[i]:bounds[i + 1]] for i in range(len(parts))]

    masks = _Masks(n)

    def column(f: pa.Field) -> pa.Array:
        if f.name == "event_type":
            return _event_type_column(n, parts, pos)
        sources = [(p_pos, part.column(f.name) if f.name in part.column_names else None)
                   for p_pos, (_, part) in zip(pos, parts, strict=True)]
        return _scatter(n, f.type, sources, masks)

    if n < _PARALLEL_ROWS:
        arrays = [column(f) for f in fields]
    else:  # numpy scatters and Arrow takes release the GIL: columns build side by side
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=_WORKERS) as ex:
            arrays = list(ex.map(column, fields))
    return pa.Table.from_arrays(arrays, schema=pa.schema([f.with_type(dict_type(f.type)) for f in fields]))


#: String columns of a merged (multi-type) table: dictionary-encoded (see `_scatter_strings`).


_PARALLEL_ROWS = 200_000
_WORKERS = max(1, min(4, os.cpu_count() or 1))


def _event_type_column(n: int, parts: list[tuple[EventType, pa.Table]], pos: list[np.ndarray]) -> pa.Array:
    """The event_type column (a hive partition, not a file column) from each part's type."""
    names = sorted({t.name for t, _ in parts})
    code = {name: k for k, name in enumerate(names)}
    idx = _pool_empty(n, np.int32)
    for p_pos, (t, _) in zip(pos, parts, strict=True):
        idx[p_pos] = code[t.name]
    return pa.DictionaryArray.from_arrays(pa.array(idx), pa.array(names, type=pa.string()))


def _plain(table: pa.Table) -> pa.Table:
    """Dictionary columns decoded (codec.from_disk expects the file's value types)."""
    cols = [c.cast(c.type.value_type) if pa.types.is_dictionary(c.type) else c for c in table.columns]
    return pa.Table.from_arrays(cols, names=table.column_names)


def _value_type(t: pa.DataType) -> pa.DataType:
    """The event-schema type of a stored column type: dictionaries decoded, DECIMAL prices as float64."""
    if pa.types.is_dictionary(t):
        return t.value_type
    if pa.types.is_decimal(t):
        return pa.float64()
    return t


def _merged_fields(parts: list[tuple[EventType, pa.Table]]) -> list[pa.Field] | None:
    """Fields in the order a promoting concat of the parts' event tables would give; None on a type clash."""
    seen: dict[str, pa.Field] = {}
    for t, part in parts:
        schema = event_schema(t)
        extra = [pa.field(f.name, _value_type(f.type)) for f in part.schema
                 if f.name not in schema.names and f.name not in ("date", "event_type")]
        for f in list(schema) + extra:
            have = seen.get(f.name)
            if have is None:
                seen[f.name] = f
            elif have.type != f.type:
                return None
    return list(seen.values())


def _positions(seq: np.ndarray) -> np.ndarray:
    """Output row of each input row so that output rows are in seq order (stable for equal seqs)."""
    n = len(seq)
    if n == 0:
        return np.empty(0, dtype=np.int64)
    lo = int(seq.min())
    if int(seq.max()) - lo + 1 == n:  # a gapless run: position is seq - lo if no seq repeats
        pos = np.subtract(seq, lo, out=_pool_empty(n, np.int64))
        hit = _pool_zeros(n, bool)
        hit[pos] = True
        if hit.all():
            return pos
    order = np.argsort(seq, kind="stable")  # sorted runs (one per part): timsort merges them in O(n log k)
    pos = np.empty(n, dtype=np.int64)
    pos[order] = np.arange(n, dtype=np.int64)
    return pos


Sources = list[tuple[np.ndarray, pa.ChunkedArray | None]]


def _chunks(sources: Sources):
    """(positions, chunk) for every chunk of every present column."""
    for p_pos, col in sources:
        if col is None:
            continue
        start = 0
        for chunk in col.chunks:
            yield p_pos[start:start + len(chunk)], chunk
            start += len(chunk)


class _Masks:
    """Validity bitmaps of merged columns, shared between columns present in the same parts.

    Most columns are one type's payload: without nulls of their own their bitmap depends only on which
    parts have them (every FILL column has the same one), so it is computed once per set of parts."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._by_parts: dict[tuple[int, ...], tuple[pa.Buffer | None, int]] = {}

    def validity(self, sources: Sources) -> tuple[pa.Buffer | None, int]:
        """The bitmap (None when nothing is null) and the null count of a column built from `sources`."""
        present = tuple(i for i, (_, c) in enumerate(sources) if c is not None)
        if all(sources[i][1].null_count == 0 for i in present):
            hit = self._by_parts.get(present)
            if hit is None:
                hit = self._by_parts[present] = self._compute(sources)
            return hit
        return self._compute(sources)

    def _compute(self, sources: Sources) -> tuple[pa.Buffer | None, int]:
        n = self.n
        if sum(len(p) for p, c in sources if c is not None) == n and \
                all(c.null_count == 0 for _, c in sources if c is not None):
            return None, 0
        valid = _pool_zeros(n, bool)
        for p_pos, chunk in _chunks(sources):
            valid[p_pos] = True if chunk.null_count == 0 else np.asarray(chunk.is_valid())
        nulls = n - int(np.count_nonzero(valid))
        if nulls == 0:
            return None, 0
        return pa.py_buffer(np.packbits(valid, bitorder="little")), nulls


_NUMPY = {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}


def _pool_empty(n: int, dtype: type | np.dtype) -> np.ndarray:
    """`np.empty` in a buffer of Arrow's memory pool. The merge's large arrays (outputs and temporaries, a few
    MB each) are allocated anew on every load; numpy gets them from glibc as fresh mappings that fault in
    page by page (~7k page faults, ~10 ms per 1M-event load), while Arrow's allocator reuses freed pages."""
    dt = np.dtype(dtype)
    return np.frombuffer(pa.allocate_buffer(n * dt.itemsize), dtype=dt)


def _pool_zeros(n: int, dtype: type | np.dtype) -> np.ndarray:
    out = _pool_empty(n, dtype)
    out.fill(0)
    return out


def _fixed_dtype(t: pa.DataType) -> np.dtype | None:
    """numpy dtype of a fixed-width Arrow type's value buffer, or None if it is not one we scatter."""
    if pa.types.is_floating(t) and t.bit_width in (32, 64):
        return np.dtype(np.float32 if t.bit_width == 32 else np.float64)
    if pa.types.is_integer(t) or pa.types.is_timestamp(t) or pa.types.is_duration(t):
        return np.dtype(_NUMPY[t.bit_width // 8])
    return None


def _scatter(n: int, t: pa.DataType, sources: Sources, masks: _Masks) -> pa.Array:
    """One merged column: each source's values at its output positions, null where a part lacks it."""
    if all(c is None or c.null_count == len(c) for _, c in sources):
        return pa.nulls(n, dict_type(t))
    dt = _fixed_dtype(t)
    if dt is not None:
        return _scatter_fixed(n, t, dt, sources, masks)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return _scatter_strings(n, t, sources, masks)
    return _scatter_sparse(n, t, sources)


def _scatter_fixed(n: int, t: pa.DataType, dt: np.dtype, sources: Sources, masks: _Masks) -> pa.Array:
    buf = pa.allocate_buffer(n * dt.itemsize)  # Arrow's pool reuses freed pages: no page faults per load
    out = np.frombuffer(buf, dtype=dt)
    # Rows of parts without the column are null and their slots are left as allocated: the Arrow format
    # leaves a null slot's value unspecified and every reader masks it with the validity bitmap.
    # Zeroing them would cost a full extra pass over ~25 mostly-null columns (a third of the merge).
    for p_pos, chunk in _chunks(sources):
        if pa.types.is_decimal(chunk.type):
            out[p_pos] = codec.decimal_to_float(chunk, out=_pool_empty(len(chunk), np.float64))
        else:
            out[p_pos] = np.frombuffer(chunk.buffers()[1], dtype=dt)[chunk.offset:chunk.offset + len(chunk)]
    bitmap, nulls = masks.validity(sources)
    return pa.Array.from_buffers(t, n, [bitmap, buf], null_count=nulls)


def _scatter_strings(n: int, t: pa.DataType, sources: Sources, masks: _Masks) -> pa.Array:
    """Strings as a dictionary column: scatter int32 codes into one sorted dictionary, no string copied.

    Stored string columns are read dictionary-encoded and are low-cardinality (one run id for a
    million rows, a dozen type and container names), so the merged column keeps that form: materialized
    strings were a third of a loaded run's memory and the costliest step of the merge. Each chunk's codes
    are translated through its (small) dictionary's positions in the merged one as they are scattered."""
    chunks = []
    for p_pos, chunk in _chunks(sources):
        if not pa.types.is_dictionary(chunk.type):
            chunk = chunk.dictionary_encode()
        d = chunk.dictionary
        chunks.append((p_pos, chunk.indices, d if d.type == t else d.cast(t)))
    values = pc.unique(pa.concat_arrays([d for _, _, d in chunks]))
    dictionary = values.take(pc.sort_indices(values))  # sorted: the same dictionary however the parts were cut
    idx = _pool_zeros(n, np.int32)
    for p_pos, codes, d in chunks:
        to_merged = np.asarray(pc.index_in(d, value_set=dictionary), dtype=np.int32)
        c = np.frombuffer(codes.buffers()[1], dtype=_NUMPY[codes.type.bit_width // 8])
        c = c[codes.offset:codes.offset + len(codes)]
        if len(to_merged) == 1:
            if to_merged[0]:  # code 0 is there already: a run id, the BARs' source ("data" sorts first), one symbol
                idx[p_pos] = to_merged[0]
            continue
        # clip: a null slot's code is unspecified (its row is masked by the validity bitmap anyway)
        idx[p_pos] = np.take(to_merged, c, mode="clip", out=_pool_empty(len(c), np.int32))
    bitmap, nulls = masks.validity(sources)
    codes = pa.Array.from_buffers(pa.int32(), n, [bitmap, pa.py_buffer(idx)], null_count=nulls)
    return pa.DictionaryArray.from_arrays(codes, dictionary)


def _scatter_sparse(n: int, t: pa.DataType, sources: Sources) -> pa.Array:
    """Lists (`links`: a FILL's few, every other row null): gather the rows that have values in output order,
    then build the output's offsets directly (a take over every output row cost ~10 ms per 1M-event load)."""
    have = [(p, c) for p, c in sources if c is not None and c.null_count < len(c)]
    rows = pa.chunked_array([ch.cast(t) if ch.type != t else ch for _, c in have for ch in c.chunks], type=t)
    where = np.concatenate([p for p, _ in have])
    order = np.argsort(where, kind="stable")
    rows = rows.take(pa.array(order)).combine_chunks()
    if not pa.types.is_list(t):  # no other nested type is stored today; keep a general (slower) path
        full = np.full(n, -1, dtype=np.int64)
        full[where[order]] = np.arange(len(where))
        return rows.take(pa.array(full, mask=full < 0))
    where = where[order]
    lengths = np.zeros(n, dtype=np.int32)
    lengths[where] = np.asarray(pc.list_value_length(rows).fill_null(0), dtype=np.int32)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    valid = np.zeros(n, dtype=bool)
    valid[where] = np.asarray(rows.is_valid())
    return pa.ListArray.from_arrays(pa.array(offsets), pc.list_flatten(rows), type=t, mask=pa.array(~valid))
