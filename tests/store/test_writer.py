"""Zero loss: normal end, handler exception, SIGTERM, SIGKILL, slow disk, concurrent writers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import tradetrace as tt
from tradetrace.engine.backtest import RunFailed
from tradetrace.store import EventStore, layout, market, service
from tradetrace.strategies.builtin import MovingAverageCrossover

from .conftest import run_config

CHILD = Path(__file__).with_name("child.py")


def _stored_counts(store: EventStore, run_id: str) -> dict[str, int]:
    tab = store.load_events(run_id)
    out: dict[str, int] = {}
    for t in tab.column("event_type").to_pylist():
        out[t] = out.get(t, 0) + 1
    return out


def test_normal_end_keeps_every_event_and_per_type_counts(store: EventStore) -> None:
    res = tt.run_backtest(run_config(bars=30_000, chunk=3_000, durability_events=5_000))
    rec = store.run(res.run_id)
    assert rec["status"] == "completed" and rec["reason"] is None
    assert rec["event_count"] == res.event_count
    assert _stored_counts(store, res.run_id) == res.counts
    seq = store.load_events(res.run_id).column("seq").to_pylist()
    assert seq == list(range(res.event_count))
    assert store.verify(res.run_id)[0]["ok"]



def test_the_manifest_is_made_durable_before_the_first_segment_counts(store: EventStore,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine creates the manifest without syncing it (two fsyncs off the run's thread); the writer syncs it
    before the first journal line, so no durable segment ever belongs to a manifest a crash could lose."""
    calls: list[str] = []
    make_durable, append_journal = layout.make_durable, layout.append_journal
    monkeypatch.setattr(layout, "make_durable", lambda path: (calls.append(f"durable {path.name}"),
                                                              make_durable(path))[1])
    monkeypatch.setattr(layout, "append_journal", lambda path, rec: (calls.append(f"journal {rec['segment']}"),
                                                                     append_journal(path, rec))[1])
    res = tt.run_backtest(run_config(bars=20_000, chunk=2_000, durability_events=4_000, writer="thread"))
    assert calls[0] == f"durable {res.run_id}.json" and calls[1] == "journal 0"
    assert calls.count(f"durable {res.run_id}.json") == 1 and len(calls) > 3  # once per run, several segments
    assert store.run(res.run_id)["status"] == "completed"

class _Boom(MovingAverageCrossover):
    def next(self, i: int) -> None:
        if i == 12_345:
            raise ZeroDivisionError("boom at 12345")
        super().next(i)


def test_handler_exception_flushes_everything_and_marks_failed(store: EventStore) -> None:
    cfg = run_config(bars=30_000, chunk=4_000)
    with pytest.raises(RunFailed) as err:
        tt.run_backtest(cfg, strategy=_Boom(cfg["strategy"]["params"]))
    res = err.value.result
    rec = store.run(res.run_id)
    assert rec["status"] == "failed" and "boom at 12345" in rec["reason"]
    assert _stored_counts(store, res.run_id) == res.counts
    assert res.counts["ERROR"] == 1
    assert store.verify(res.run_id)[0]["ok"]


def _spawn(root: Path, bars: int, chunk: int, durability: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(CHILD), str(root), str(bars), str(chunk), str(durability)],
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(CHILD.parents[2])})


def _until_rows(proc: subprocess.Popen, rows: int) -> tuple[str, int]:
    """Read the child's lines until it reports at least `rows` rows; returns (run id, rows seen)."""
    assert proc.stdout is not None
    run_id, seen = "", 0
    for line in proc.stdout:
        kind, value = line.split()
        if kind == "run":
            run_id = value
        elif kind == "rows":
            seen = int(value)
            if seen >= rows:
                return run_id, seen
    raise AssertionError(f"child ended before {rows} rows (rc {proc.wait()})")


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_flush_and_mark_failed(store: EventStore, signum: int) -> None:
    """Small chunks (5,000 bars) so that the signal often lands during a hand-over: it is held off until the
    batch is handed over, then ends the run (SIGINT as KeyboardInterrupt: Python then exits killed by SIGINT)."""
    proc = _spawn(store.root, 400_000, 5_000, 8_000)
    run_id, _ = _until_rows(proc, 60_000)
    os.kill(proc.pid, signum)
    assert proc.wait(timeout=60) == (128 + signum if signum == signal.SIGTERM else -signal.SIGINT)
    rec = store.run(run_id)
    name = "SIGTERM" if signum == signal.SIGTERM else "KeyboardInterrupt"
    assert rec["status"] == "failed" and name in rec["reason"]
    assert sum(_stored_counts(store, run_id).values()) == rec["event_count"]
    assert _stored_counts(store, run_id) == rec["counts"]
    assert store.verify(run_id)[0]["ok"]


@pytest.mark.slow
@pytest.mark.parametrize("kill_at_rows", [5_000, 60_000, 150_000])
def test_sigkill_leaves_a_readable_store_and_reports_the_lost_range(store: EventStore, kill_at_rows: int) -> None:
    durability = 8_000
    proc = _spawn(store.root, 400_000, 5_000, durability)
    run_id, seen = _until_rows(proc, kill_at_rows)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    rec = store.run(run_id)
    assert rec["status"] == "incomplete"
    durable = rec["durable_seq_hi"] + 1
    assert rec["lost_seq"][0] == durable
    # every row reported was handed to the store; at most the durability window of them is not durable
    assert durable >= seen - durability
    seq = store.load_events(run_id).column("seq").to_pylist()
    assert seq == list(range(durable))
    report = store.verify(run_id)[0]
    assert report["ok"], report["problems"]
    for f in store.root.rglob("*.parquet"):  # every file in the tree is a whole Parquet file
        assert pq.read_metadata(f).num_columns > 0


@pytest.mark.slow
def test_a_slow_strategys_events_are_durable_within_the_window_not_the_chunk(store: EventStore) -> None:
    """20k bars of ~2 ms each, in one 65,536-bar chunk, with a 200 ms window: events are handed over and made
    durable while the chunk runs (before, nothing was durable until the chunk, here the run, ended), so a
    SIGKILL mid-run finds the run incomplete with durable events and a gapless prefix."""
    proc = subprocess.Popen([sys.executable, str(CHILD), str(store.root), "20000", "65536", "524288", "200", "2"],
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(CHILD.parents[2])})
    assert proc.stdout is not None
    run_id = proc.stdout.readline().split()[1]
    try:
        durable = -1
        deadline = time.monotonic() + 30  # the child's whole run takes ~40 s: well past this
        while durable < 0 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
            if layout.manifest_path(store.root, run_id).exists():
                durable = store.run(run_id)["durable_seq_hi"]
        assert durable >= 0, "nothing became durable while the chunk ran"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    rec = store.run(run_id)
    assert rec["status"] == "incomplete"
    hi = rec["durable_seq_hi"]
    assert hi >= durable and rec["lost_seq"][0] == hi + 1
    assert store.load_events(run_id).column("seq").to_pylist() == list(range(hi + 1))
    assert store.verify(run_id)[0]["ok"]


@pytest.mark.slow
def test_slow_disk_blocks_the_producer_and_drops_nothing(store: EventStore, monkeypatch: pytest.MonkeyPatch) -> None:
    real = layout.write_durably

    def slow_write(*args, **kwargs):  # the real disk write, made slow (the thread writer runs in this process)
        time.sleep(0.05)
        return real(*args, **kwargs)

    monkeypatch.setattr(layout, "write_durably", slow_write)
    rec = store.recorder(durability_events=3_000, queue_batches=2, mode="thread")
    res = tt.run_backtest(run_config(bars=40_000, chunk=2_000), recorder=rec)
    assert rec.mode == "thread"
    assert rec.producer_waits > 0  # the producer blocked on the writer
    assert rec.max_inflight <= 2  # memory bounded by the queue
    assert _stored_counts(store, res.run_id) == res.counts


@pytest.mark.slow
def test_stopped_writer_process_blocks_the_producer_and_drops_nothing(store: EventStore) -> None:
    """The writer process frozen by a real SIGSTOP for the first part of a run: the producer blocks (bounded
    queue), nothing is dropped, and the run completes once SIGCONT lets the writer go on."""
    writer = service.service()  # this process's fresh writer process, which the run will use once it is ready
    assert writer.ready(wait=True)
    rec = store.recorder(durability_events=3_000, queue_batches=2, mode="process")
    os.kill(writer.pid, signal.SIGSTOP)
    resume = threading.Timer(0.5, os.kill, (writer.pid, signal.SIGCONT))
    resume.start()
    try:
        res = tt.run_backtest(run_config(bars=40_000, chunk=2_000), recorder=rec)
    finally:
        resume.join()
    assert rec.mode == "process" and rec.writer_pid == writer.pid
    assert rec.producer_waits > 0  # the producer blocked on the stopped writer
    assert rec.max_inflight <= 2  # memory bounded by the queue
    assert res.status == "completed"
    assert _stored_counts(store, res.run_id) == res.counts
    assert store.verify(res.run_id)[0]["ok"]


def test_writer_process_is_fresh_and_shared_by_runs(store: EventStore) -> None:
    """Once this process's fresh writer is ready, runs share it: not a fork of the engine (no copy-on-write
    pages shared with it), a new interpreter whose parent is this process."""
    writer = service.service()
    assert writer.ready(wait=True)
    a = tt.run_backtest(run_config(bars=5_000)).recorder
    b = tt.run_backtest(run_config(bars=5_000)).recorder
    assert a.mode == b.mode == "process"
    assert a.writer_pid == b.writer_pid == writer.pid
    with open(f"/proc/{a.writer_pid}/cmdline", "rb") as f:
        argv = f.read().split(b"\0")
    assert argv[1] == b"-c" and b"tradetrace.store.service" in argv[2]  # a new interpreter, not a fork
    with open(f"/proc/{a.writer_pid}/stat") as f:
        assert int(f.read().rsplit(")", 1)[1].split()[1]) == os.getpid()  # its parent is this process
    # pandas stays out of it (pyarrow would import it on its first conversion: ~0.2 s in the writer's first run)
    with open(f"/proc/{a.writer_pid}/maps") as f:
        libs = f.read()
    assert "/pyarrow/" in libs and "/pandas/" not in libs


def test_a_forked_writers_market_set_key_is_kept_with_the_data(store: EventStore) -> None:
    """A writer process hashes the data set; the engine keeps the key it wrote in the manifest with the data, so
    a later run's writer (a fork, whose own copy of the data's `derived` the engine never sees) does not hash the
    data again."""
    from tradetrace.engine import synthetic

    md = synthetic.generate(6_000, seed=11, freq="1min")[0]
    assert "market_set" not in md.derived
    res = tt.run_backtest(run_config(bars=6_000), market=md, recorder=store.recorder(mode="process"))
    assert md.derived["market_set"] == market.content_key(md) == store.run(res.run_id)["market_set"]


def test_fresh_writer_gets_each_data_set_once(store: EventStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs over one data set send its rows to the fresh writer once; another data set is sent too; the
    writer keeps the last MARKETS_KEPT, and a data set it dropped is sent again; a data set over
    market.MAX_SET_BYTES is never sent whole (and its runs keep BAR prices inline). Every run's events are the
    same as in memory."""
    from tradetrace.engine import synthetic

    writer = service.service()
    assert writer.ready(wait=True)
    sets = [synthetic.generate(4_000, seed=s, freq="1min")[0] for s in (1, 2, 3)]

    def run(md) -> None:
        res = tt.run_backtest(run_config(bars=4_000), market=md)
        assert res.recorder.writer_pid == writer.pid
        mem = tt.run_backtest({**run_config(bars=4_000), "store": {"enabled": False}}, market=md)
        assert store.load_events(res.run_id).drop_columns(["correlation_id"]).select(["seq", "symbol", "close"]) \
            .equals(mem.events().drop_columns(["correlation_id"]).select(["seq", "symbol", "close"]))

    sent = writer.markets_sent
    run(sets[0])
    run(sets[0])
    assert writer.markets_sent == sent + 1  # once for two runs
    run(sets[1])
    run(sets[0])
    assert writer.markets_sent == sent + 2  # both kept (MARKETS_KEPT = 2)
    run(sets[2])  # drops the least recently used: sets[1]
    run(sets[1])
    assert writer.markets_sent == sent + 4
    monkeypatch.setattr(market, "MAX_SET_BYTES", 0)  # a data set too big to send whole
    run(sets[2])
    assert writer.markets_sent == sent + 4  # its batches carried their rows
    assert store.runs()[0]["market_set"] is None


FIRST_RUNS = """
import os, sys, tradetrace as tt
from tradetrace.store import service
sys.path.insert(0, {tests!r})
from store.conftest import run_config
for k in range(3):
    rec = tt.run_backtest(run_config(bars=20_000)).recorder
    fresh = service._SERVICE
    print(rec.writer_pid, int(rec._service.fresh), -1 if fresh is None else fresh.pid, flush=True)
    if fresh is not None:
        assert fresh.ready(wait=True)
"""


FORKS_END = """
import os, sys, time, tradetrace as tt
from tradetrace.engine import synthetic
from tradetrace.store import service
sys.path.insert(0, {tests!r})
from store.conftest import run_config
service.service = lambda: None  # no fresh writer: every run writes through a fork
md = synthetic.generate(6_000, seed=4, freq="1min")[0]
for k in range(3):  # the same data: from the second run on its market set key is known
    pid = tt.run_backtest(run_config(bars=6_000), market=md).recorder.writer_pid
    def running():  # a zombie has exited (this process, or a later run, reaps it)
        try:
            with open(f"/proc/{{pid}}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False
    deadline = time.monotonic() + 10
    while running() and time.monotonic() < deadline:
        time.sleep(0.01)
    print(running(), flush=True)
"""


def test_every_forked_writer_exits_with_its_run(store: EventStore) -> None:
    """A forked writer serves one run: the engine closes it when the run is durable, whatever the run's data."""
    code = FORKS_END.format(tests=str(Path(__file__).parents[1]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "TRADETRACE_HOME": str(store.root.parent)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False"] * 3

def test_first_runs_write_through_a_fork_until_the_fresh_writer_is_ready(store: EventStore) -> None:
    """A process's first run gets a forked writer for that run only (no start-up wait); the second starts the
    fresh writer in the background; once it is ready, runs use it."""
    code = FIRST_RUNS.format(tests=str(Path(__file__).parents[1]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "TRADETRACE_HOME": str(store.root.parent)})
    assert out.returncode == 0, out.stderr
    rows = [tuple(int(x) for x in line.split()) for line in out.stdout.split("\n") if line.strip()]
    (w1, f1, s1), (w2, f2, s2), (w3, f3, s3) = rows
    assert (f1, s1) == (0, -1)  # run 1: a fork, no fresh writer started
    assert f2 == 0 and s2 > 0 and w2 != w1  # run 2: another fork, the fresh writer starting
    assert (f3, w3, s3) == (1, s2, s2)  # run 3: the fresh writer
    assert {r["status"] for r in store.runs()} == {"completed"} and len(store.runs()) == 3


@pytest.mark.slow
def test_concurrent_processes_write_different_runs(store: EventStore) -> None:
    procs = [_spawn(store.root, 60_000, 5_000, 8_000) for _ in range(3)]
    done = {}
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        lines = out.split("\n")
        run_id = lines[0].split()[1]
        done[run_id] = int([x for x in lines if x.startswith("done")][0].split()[1])
    assert {r["run_id"] for r in store.runs()} == set(done)
    for run_id, n in done.items():
        tab = store.load_events(run_id)
        assert tab.num_rows == n
        assert set(tab.column("correlation_id").to_pylist()) == {run_id}
        assert store.verify(run_id)[0]["ok"]


def _same_tables(a: dict, b: dict) -> None:
    import numpy as np

    assert sorted(a) == sorted(b)
    for t in b:
        assert a[t].schema.equals(b[t].schema), t
        for name in b[t].column_names:  # NaN-aware: ORDER prices of market orders are NaN
            np.testing.assert_array_equal(a[t].column(name).to_numpy(zero_copy_only=False),
                                          b[t].column(name).to_numpy(zero_copy_only=False), err_msg=f"{t} {name}")


def test_thread_writer_keeps_a_small_run_equal_to_its_files(store: EventStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sweep worker's run is read from memory after it is durable: the same tables the store reads back."""
    from tradetrace.store import writer
    from tradetrace.store.reader import RunReader

    cfg = run_config(bars=20_000, writer="thread")
    cfg["classifiers"] = [{"type": "volatility", "window": 30, "lookback": 300}]
    res = tt.run_backtest(cfg)
    rec = res.recorder
    assert rec._writer.kept is not None
    _same_tables(rec.tables(), RunReader(rec.root, rec.run_id).tables())
    monkeypatch.setattr(writer, "KEEP_EVENTS", 5_000)  # a run too big to keep: read back from the files
    big = tt.run_backtest(run_config(bars=20_000, writer="thread")).recorder
    assert big._writer.kept is None
    _same_tables(big.tables(), RunReader(big.root, big.run_id).tables())


@pytest.mark.slow
def test_a_killed_writer_process_fails_the_run_with_the_lost_range(store: EventStore) -> None:
    """The writer process SIGKILLed mid-run (as the OOM killer would): the run fails with a clear error,
    the engine marks it failed in the store with the seq range that was not durable, and the next run
    gets a new writer."""
    writer = service.service()
    assert writer.ready(wait=True)
    rec = store.recorder(durability_events=3_000, queue_batches=2, mode="process")
    os.kill(writer.pid, signal.SIGSTOP)  # the run blocks on it, then it is killed
    killer = threading.Timer(0.3, os.kill, (writer.pid, signal.SIGKILL))
    killer.start()
    try:
        with pytest.raises(RunFailed, match="writer process exited"):
            tt.run_backtest(run_config(bars=40_000, chunk=2_000), recorder=rec)
    finally:
        killer.join()
    (run,) = store.runs()
    assert run["status"] == "failed" and "writer process died" in run["reason"]
    lo, hi = run["lost_seq"]
    assert lo == run["durable_seq_hi"] + 1 and hi == run["event_count"] - 1
    assert store.load_events(run["run_id"]).num_rows == lo  # exactly the durable prefix is readable
    nxt = tt.run_backtest(run_config(bars=5_000))
    assert nxt.status == "completed" and nxt.recorder.writer_pid != writer.pid
    assert store.verify(nxt.run_id)[0]["ok"]


@pytest.mark.parametrize("remote", [False, True])
def test_batches_cross_to_the_writer_out_of_band(remote: bool) -> None:
    """A batch's big columns leave the pickle (protocol 5 with a buffer callback, as the writer transport
    pickles): the head is small, and the batch read back makes the same tables: copied into the shared buffer,
    or (remote) read by a child process straight out of this one's memory, as a writer that passed its probe
    does. Other protocols still pickle it in band."""
    import io
    import pickle

    from tradetrace.engine import synthetic

    md, _ = synthetic.generate(30_000, seed=3, freq="1min")
    res = tt.run_backtest({**run_config(bars=30_000, chunk=30_000), "store": {"enabled": False}}, market=md)
    (batch,) = [b for b in res.recorder._batches if len(b.log) > 2_000]
    bufs: list[pickle.PickleBuffer] = []
    f = io.BytesIO()
    pickle.Pickler(f, protocol=5, buffer_callback=bufs.append).dump((batch, None))
    head = f.getbuffer()
    total = sum(b.raw().nbytes for b in bufs)
    assert bufs and len(head) < total / 4
    slot = service._Slot(0, len(head) + total + 24 + 16 * len(bufs))
    slot.write(head, [b.raw() for b in bufs], remote)
    if remote:  # a real child process reads the batch out of this one (process_vm_readv), as the writer does
        probe = os.urandom(32)
        from tradetrace.events._hotbus import buffer_address

        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                ok = service.can_read_parent(buffer_address(probe), probe)
                refused = service.can_read_parent(buffer_address(probe), b"x" * 32)  # not what is there
                back, spec = service.read_slot(slot.map)
                same = all(back.tables(md)[t].to_pandas().equals(want.to_pandas())
                           for t, want in batch.tables(md).items())
                service._DYING_S = 0.01  # a read that fails while the engine lives is the writer's failure
                try:
                    service._read_parent([(8, 16)])  # an address no process maps
                    failed = False
                except OSError:
                    failed = True
                code = 0 if ok and not refused and spec is None and same and failed else 2
            finally:
                os._exit(code)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        slot.close()
        return
    back, spec = service.read_slot(slot.map)
    slot.close()
    assert spec is None
    for other in (back, pickle.loads(pickle.dumps(batch, protocol=4))):
        got, want = other.tables(md), batch.tables(md)
        assert list(got) == list(want)
        for t in want:
            assert got[t].to_pandas().equals(want[t].to_pandas()), t


def test_inbox_reads_what_a_connection_sends_in_whole_messages() -> None:
    """The engine reads the writer's messages with `service.Inbox` (one recv for all that wait), the writer
    sends them with multiprocessing's `Connection`: every message arrives whole and in order, including one
    split across reads, one over the 16 KB that Connection sends as header and body apart, and one with
    the 8-byte length form; then EOFError once the writer is gone."""
    import socket
    from multiprocessing.connection import Connection

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    big = "x" * 100_000
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            ours.close()
            conn = Connection(theirs.detach())
            conn.send(("taken", "run-a"))
            conn.send(("durable", "run-a", 7))
            conn.send(("error", "run-a", big))
            conn.close()
            code = 0
        finally:
            os._exit(code)
    theirs.close()
    inbox = service.Inbox(ours.detach())
    try:
        got: list = []
        while len(got) < 3:
            got += inbox.take(block=True)
        assert got == [("taken", "run-a"), ("durable", "run-a", 7), ("error", "run-a", big)]
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        with pytest.raises(EOFError):
            inbox.take(block=True)
    finally:
        inbox.close()

    # The 8-byte length form (messages over 2 GB) and a frame cut anywhere, parsed as the bytes arrive.
    import pickle
    import struct

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    inbox = service.Inbox(a.detach())
    try:
        body = pickle.dumps(("done", "run-b"))
        stream = struct.pack("!i", -1) + struct.pack("!Q", len(body)) + body + struct.pack("!i", len(body)) + body
        for k in range(0, len(stream), 5):
            b.send(stream[k:k + 5])
            time.sleep(0.001)
        got = []
        while len(got) < 2:
            got += inbox.take(block=True)
        assert got == [("done", "run-b"), ("done", "run-b")] and inbox.take(block=False) == []
    finally:
        inbox.close()
        b.close()


def test_a_relative_store_path_is_the_callers_not_the_writer_processs(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The fresh writer process keeps the working directory it started in: a relative store path is made
    absolute by the caller, so a run after a chdir writes where the caller's path points."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    monkeypatch.chdir(a)
    writer = service.service()  # started here, in a/
    assert writer.ready(wait=True)
    first = tt.run_backtest(run_config(bars=3_000, path="rel/events", writer="process"))
    monkeypatch.chdir(b)
    second = tt.run_backtest(run_config(bars=3_000, path="rel/events", writer="process"))
    assert EventStore(a / "rel/events").run(first.run_id)["status"] == "completed"
    assert EventStore(b / "rel/events").run(second.run_id)["status"] == "completed"
    assert not (a / "rel/events" / "_runs" / f"{second.run_id}.json").exists()
