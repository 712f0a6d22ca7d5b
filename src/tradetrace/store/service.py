"""The event store's writer processes: a forked one per run at first, then one fresh process reused by all runs.

Why two kinds:
- A forked child starts at once, but it shares every page of the engine's heap copy-on-write, so each
  page the engine writes afterwards is copied by the kernel on the engine's time. Measured on the
  reference workload (1M bars), an idle forked child alone made the run ~8% slower.
- A process started from a new interpreter shares nothing, but starting it (importing pyarrow and
  numpy) takes ~0.25 s, which a run would wait for: a small CLI run became 0.25 s slower.
So a process's first store run gets a forked writer that serves that run only (a one-off run pays no
start-up); its second starts the fresh writer in the background (still writing through a fork itself),
and every later run, once the fresh writer says it is ready, uses it: a process that runs many
backtests pays neither cost per run. `for_run()` makes that choice.

Transport (why): a batch is pickled with its big buffers out of band (the C core's recording buffers,
market columns), its head goes into a shared-memory buffer (a memfd both processes map), and only the
buffer's number crosses the socket, so handing a batch over never waits for the writer. The big buffers
are not copied by the engine: the writer reads them out of the engine's memory (process_vm_readv), and
the engine keeps them alive until the writer says "taken" (copying them into shared memory cost the
engine ~3 ms per 1M bars, and its memory traffic). Whether the kernel lets the writer do that (Linux;
Yama or seccomp may forbid it) is found out once, when the writer starts: it reads a probe the engine
holds and says so in its first message. Until then, and where it cannot, the engine copies the buffers
into the shared buffer after the head (one memcpy). The batch's tables read market rows: a fork has the
data it inherited; the fresh writer gets each data set once, with the first batch that needs it, and
keeps the last `MARKETS_KEPT` (a process's runs mostly reuse one data set: sending each batch's rows
instead copied 56 MB per 1M-bar run, ~2% of the run). Both sides keep the same least-recently-used list,
so the engine knows what the writer holds. Data sets over `market.MAX_SET_BYTES` still travel as each
batch's rows: memory first. Buffers are reused: the writer answers "taken" once it has read a batch, and
that buffer takes a later batch (and the engine's recording buffers it was read from record again, see
`_hotbus.c`). A fresh memfd per batch cost ~4x more than the copy (the kernel allocates and zeroes its
pages). Every acknowledgement names its run, so a late answer about an earlier run (one that failed) is
never taken for the current one.

The writer dies with the engine (PR_SET_PDEATHSIG): after a SIGKILL of the run, the store holds exactly
the durable segments, and the journal says which.
"""

from __future__ import annotations

import ctypes
import io
import json
import mmap
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import OrderedDict, deque
from multiprocessing.connection import Connection
from multiprocessing.reduction import recv_handle, send_handle
from typing import TYPE_CHECKING, Any

from tradetrace.events._hotbus import buffer_address
from tradetrace.events.event import new_run_id
from tradetrace.events.recorder import EventBatch, MarketWindow
from tradetrace.store import market as market_sets

if TYPE_CHECKING:
    from tradetrace.engine.data import MarketData

_PR_SET_PDEATHSIG = 1
_MEMFD = hasattr(os, "memfd_create")
#: Data sets a fresh writer keeps (each is a copy of the market columns: ~60 MB per 1M bars).
MARKETS_KEPT = 2


class Poll:
    """`Connection.poll` without its per-call cost: multiprocessing builds, registers and drops a selector on
    every poll; one `select.poll` registered once is one syscall (the writer polls at every batch). A closed
    peer reads as ready (POLLHUP), so the caller's recv() raises EOFError, as after Connection.poll."""

    __slots__ = ("_poll",)

    def __init__(self, fd: int) -> None:
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)

    def __call__(self, timeout: float | None = 0.0) -> bool:
        """A message (or the peer's end) is waiting, within `timeout` seconds (None: block until one is)."""
        return bool(self._poll.poll(None if timeout is None else max(timeout, 0.0) * 1000.0))


class Inbox:
    """The writer's messages on the engine's side: everything waiting is read in one syscall.

    Why: the engine reads acknowledgements at every batch it hands over, and `Connection` spends a poll (with a
    new selector each time) and two reads (length, then body) per message. Inside a run syscalls are dear (the
    engine's caches are cold for them): measured per 1M-bar run (21 batches), reading acknowledgements took
    1.8 ms that way, and 1.0 ms with one recv per call (~17 us per recv, as much again to unpickle). Frames are
    multiprocessing's, as the writer's `Connection.send` writes them: a 4-byte big-endian length (or -1, then
    an 8-byte one), then the pickle."""

    __slots__ = ("_sock", "_poll", "_buf", "_messages")

    def __init__(self, fd: int) -> None:
        self._sock = socket.socket(fileno=fd)  # owns `fd`; the sending Connection holds a duplicate of it
        self._poll = Poll(fd)
        self._buf = bytearray()
        self._messages: list[Any] = []

    def take(self, block: bool) -> list[Any]:
        """Every message waiting, read with one recv (`block`: waits for at least one); [] if none is. Raises
        EOFError once the writer has closed its end and every message it sent has been taken."""
        while not self._messages:
            if block:
                self._poll(None)
            try:
                data = self._sock.recv(1 << 16, socket.MSG_DONTWAIT)
            except BlockingIOError:
                if block:
                    continue
                return []
            if not data:
                raise EOFError("the writer closed its connection")
            self._buf += data
            self._split()
            if not block:
                break  # a partial frame: the rest comes with a later call
        out, self._messages = self._messages, []
        return out

    def _split(self) -> None:
        """Complete frames of the buffer -> messages; a partial one waits for the rest."""
        buf, pos = self._buf, 0
        while len(buf) - pos >= 4:
            (n,) = struct.unpack_from("!i", buf, pos)
            head = 4
            if n == -1:
                if len(buf) - pos < 12:
                    break
                (n,) = struct.unpack_from("!Q", buf, pos + 4)
                head = 12
            if len(buf) - pos - head < n:
                break
            self._messages.append(pickle.loads(buf[pos + head:pos + head + n]))
            pos += head + n
        del buf[:pos]

    def close(self) -> None:
        self._sock.close()


def transport_key(market: MarketData) -> str | None:
    """How the engine and a writer process name a data set the writer holds: one id per MarketData object (its
    arrays are read-only from its first store run on, see market.uses_set), not its content hash, which the
    writer computes (the engine would pay ~35 ms per 1M bars). None: too big to send whole."""
    key = market.derived.get("writer_key")  # per batch: the common case first
    if key is None:
        if not market_sets.uses_set(market):
            return None
        key = market.derived["writer_key"] = new_run_id()
    return key


def available() -> bool:
    """The writer process needs memfd and a Unix socket pair (Linux); elsewhere the store writes from a thread."""
    return _MEMFD and hasattr(socket, "AF_UNIX")


class _Forked:
    """The few `subprocess.Popen` methods used here, for a child made by os.fork."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"writer {self.pid}", timeout or 0.0)
            time.sleep(0.002)
        assert self.returncode is not None
        return self.returncode

    def kill(self) -> None:
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)


class WriterService:
    """Parent side: a writer process and the connection to it (`fresh`: a new interpreter, else a fork that
    serves one run)."""

    def __init__(self, fresh: bool, market: MarketData | None = None) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for sock in (ours, theirs):
            _widen(sock)
        self.fresh = fresh
        self.has_market = not fresh  # a fork sees the run's market data: batches travel without their rows
        self._ready = not fresh  # a fork has everything imported already
        # Until the writer says it can read this process's memory, batches are copied into shared buffers.
        self.remote = False
        self._probe = os.urandom(32)  # what the writer reads to find out (kept alive: it reads it from here)
        probe = (buffer_address(self._probe), self._probe)
        self.proc: subprocess.Popen | _Forked
        if fresh:
            code = ("import sys, json; sys.path[:0] = json.loads(sys.argv[2]); "
                    "from tradetrace.store.service import main; "
                    "main(int(sys.argv[1]), announce=True, probe=(int(sys.argv[3]), bytes.fromhex(sys.argv[4])))")
            # The parent's import path travels along: a run started from a source tree or a test's sys.path
            # must find the same tradetrace in its writer.
            self.proc = subprocess.Popen([sys.executable, "-c", code, str(theirs.fileno()), json.dumps(sys.path),
                                          str(probe[0]), probe[1].hex()],
                                         pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, close_fds=True)
        else:
            pid = os.fork()
            if pid == 0:  # the child: serve, then leave without running the parent's exit handlers
                code = 0
                try:
                    ours.close()
                    main(theirs.detach(), market=market, probe=probe)
                except BaseException:  # noqa: BLE001 - reported on stderr; the engine sees the closed socket
                    import traceback

                    traceback.print_exc()
                    code = 1
                finally:
                    os._exit(code)
            self.proc = _Forked(pid)
        theirs.close()
        self.conn = Connection(os.dup(ours.fileno()))  # sends; replies are read by `inbox`
        self.inbox = Inbox(ours.detach())
        self.owner = os.getpid()
        self.broken = False
        self._free: list[_Slot] = []  # buffers the writer has finished with
        self._busy: deque[_Slot] = deque()  # buffers handed over, in order (the writer takes them in order)
        self._slots = 0
        self._markets = _Markets()  # the data sets the writer holds, as the writer will have them
        self.markets_sent = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def usable(self) -> bool:
        return not self.broken and self.owner == os.getpid() and self.proc.poll() is None

    def ready(self, wait: bool = False) -> bool:
        """Whether a fresh writer has finished starting (it says so once, before any run is sent to it)."""
        if not self._ready and self.usable():
            try:
                messages = self.inbox.take(block=wait)
            except (EOFError, OSError):
                self.broken = True
            else:  # the first message a fresh writer sends: nothing else can come before it
                if messages and messages[0][0] == "ready":
                    self.said_ready(bool(messages[0][1]))
        return self._ready

    def hand_over(self, run_id: str, batch: EventBatch, market: MarketData) -> None:
        """The pickled batch (and its data set, the first time the writer needs it) into a free shared
        buffer; the buffer's number to the writer."""
        key = transport_key(market)  # names the data set between the two processes; None: too big to copy whole
        if self.has_market:
            spec: tuple | None = None
        elif key is None:  # each batch carries its rows
            spec = ("rows", batch.window(market))
        else:
            spec = ("key", key) if key in self._markets else ("market", key, MarketWindow.whole(market))
        buffers: list[pickle.PickleBuffer] = []
        f = io.BytesIO()
        # protocol 5: a batch's big columns come out of band (ChunkLog.__reduce_ex__), copied once, into the buffer
        pickle.Pickler(f, protocol=5, buffer_callback=buffers.append).dump((batch, spec))
        head = f.getbuffer()
        views = [b.raw() for b in buffers]
        remote = self.remote
        size = 24 + len(head) + sum(16 if remote else 8 + v.nbytes for v in views)
        slot = self._free.pop() if self._free else None
        new = slot is None
        if slot is None:
            slot = _Slot(self._slots, size)
            self._slots += 1
        elif slot.size < size:
            slot.grow(size)
            new = True  # the writer maps it again
        slot.write(head, views, remote)
        slot.keep = buffers if remote else None  # read from here until the writer says "taken"
        self._busy.append(slot)
        self.conn.send(("batch", run_id, slot.number, slot.size if new else 0))
        if new:
            send_handle(self.conn, slot.fd, self.proc.pid)
        if spec is not None and spec[0] != "rows":  # handed over: the writer applies the same step on reading it
            new_set = spec[0] == "market"
            # The engine's list holds keys, not rows: a data set the engine drops must be free to go.
            self._markets.use(spec[1], spec[1] if new_set else None)
            self.markets_sent += new_set

    def taken(self) -> None:
        """The writer copied out the oldest batch handed over (of whichever run: it answers every batch,
        in order): its buffer is free again, and so are the engine's buffers it was read from."""
        slot = self._busy.popleft()
        slot.keep = None
        self._free.append(slot)

    def said_ready(self, remote: bool) -> None:
        """The writer's first message: started, and whether it can read this process's memory."""
        self._ready = True
        self.remote = remote

    def close(self) -> None:
        """Stop the writer: it exits on end of file, and is reaped later (a forked writer's exit tears down a
        copy of the engine's address space: the engine does not wait for that)."""
        for slot in [*self._busy, *self._free]:
            slot.close()
        self._busy.clear()
        self._free.clear()
        self.conn.close()
        self.inbox.close()
        _EXITING.append(self.proc)


class _Slot:
    """A shared-memory buffer (memfd, mapped by both processes) holding one batch at a time.

    Layout: head length, buffer count, mode, the pickle head, then each out-of-band buffer: mode 0, its length
    and bytes; mode 1, its length and address in the engine process (the writer reads it from there)."""

    def __init__(self, number: int, size: int) -> None:
        self.number = number
        self.keep: list | None = None  # mode 1: the buffers the writer reads, alive until it has read them
        self.fd = os.memfd_create(f"tradetrace-batch-{number}", os.MFD_CLOEXEC)
        self.size = 0
        self.map: mmap.mmap | None = None
        self.grow(size)

    def grow(self, size: int) -> None:
        size = max(size + size // 4, 1 << 20)  # room for the next, slightly bigger batch
        if self.map is not None:
            self.map.close()
        os.ftruncate(self.fd, size)
        self.size = size
        self.map = mmap.mmap(self.fd, size)

    def write(self, head: bytes | memoryview, views: list[memoryview], remote: bool = False) -> None:
        m = self.map
        assert m is not None
        m[0:24] = struct.pack("<qqq", len(head), len(views), int(remote))
        pos = 24 + len(head)
        m[24:pos] = head
        if remote:
            where = [x for v in views for x in (v.nbytes, buffer_address(v))]
            m[pos:pos + 16 * len(views)] = struct.pack(f"<{2 * len(views)}q", *where)
            return
        for v in views:
            n = v.nbytes
            m[pos:pos + 8] = struct.pack("<q", n)
            m[pos + 8:pos + 8 + n] = v
            pos += 8 + n

    def close(self) -> None:
        self.keep = None
        if self.map is not None:
            self.map.close()
            self.map = None
        os.close(self.fd)


class _Markets:
    """The data sets a fresh writer holds, least recently used first (at most MARKETS_KEPT). The engine keeps
    one (keys only) and the writer one (the rows), and both apply the same steps in the same order."""

    def __init__(self) -> None:
        self._held: OrderedDict[str, Any] = OrderedDict()

    def __contains__(self, key: str) -> bool:
        return key in self._held

    def use(self, key: str, rows: Any = None) -> Any:
        """Mark `key` used, storing `rows` (not None) for a new data set; returns what is stored for it."""
        if rows is not None:
            self._held[key] = rows
            while len(self._held) > MARKETS_KEPT:
                self._held.popitem(last=False)
        self._held.move_to_end(key)
        return self._held[key]


#: The writer process's data sets (see _Markets).
_HELD = _Markets()


def read_slot(m: mmap.mmap) -> Any:
    """The writer's side of `_Slot.write`: the object, its big columns copied out of the buffer (mode 0) or
    read out of the engine process (mode 1)."""
    head_len, count, mode = struct.unpack_from("<qqq", m, 0)
    pos = 24 + head_len
    with memoryview(m) as view:
        if mode:
            where = struct.unpack_from(f"<{2 * count}q", m, pos)
            buffers = _read_parent(list(zip(where[1::2], where[0::2], strict=True)))
        else:
            buffers = []
            for _ in range(count):
                (n,) = struct.unpack_from("<q", m, pos)
                buffers.append(bytearray(view[pos + 8:pos + 8 + n]))  # one copy: the buffer takes the next batch
                pos += 8 + n
        return pickle.loads(view[24:24 + head_len], buffers=buffers)


class _IOVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


_READV: Any = None


def _readv(pid: int, spans: list[tuple[int, int]]) -> tuple[list[bytearray], int]:
    """(copies of the (address, length) spans of process `pid`'s memory, bytes read), one process_vm_readv."""
    global _READV
    if _READV is None:
        fn = ctypes.CDLL(None, use_errno=True).process_vm_readv
        fn.restype = ctypes.c_ssize_t
        fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
        _READV = fn
    out = [bytearray(n) for _, n in spans]
    local = (_IOVec * len(spans))(*[_IOVec(ctypes.addressof((ctypes.c_char * len(b)).from_buffer(b)) if b else 0,
                                           len(b)) for b in out])
    remote = (_IOVec * len(spans))(*[_IOVec(addr, n) for addr, n in spans])
    return out, (_READV(pid, local, len(spans), remote, len(spans), 0) if spans else 0)


#: The engine process this writer serves, set when the writer starts (`main`); None: this process's parent.
_ENGINE: int | None = None
#: How long a failed read waits for this process's own end before it counts as the writer's failure.
_DYING_S = 0.5


def _read_parent(spans: list[tuple[int, int]]) -> list[bytearray]:
    """The batch buffers at (address, length) spans of the engine's memory.

    A read fails when the engine is exiting (its memory goes first): then this process is killed with it
    (PR_SET_PDEATHSIG) within moments, and must not mark the run failed meanwhile (a killed run reads
    incomplete, with its lost range). So a failed read waits for that first; if the engine is gone it is
    EOFError (engine gone, as on the socket), else OSError (the writer's failure, the run is marked failed)."""
    engine = _ENGINE if _ENGINE is not None else os.getppid()
    out, got = _readv(engine, spans)
    want = sum(n for _, n in spans)
    if got == want:
        return out
    err = ctypes.get_errno()
    time.sleep(_DYING_S)
    if os.getppid() != engine:  # reparented: the engine has exited
        raise EOFError("the engine process is gone")
    raise OSError(err, f"reading {want} bytes of the engine's batch got {got}: {os.strerror(err) if err else ''}")


def can_read_parent(address: int, expected: bytes) -> bool:
    """Whether this process may read its parent's memory (Linux, not forbidden by Yama or seccomp): a probe of
    `expected`, which the parent holds at `address`."""
    try:
        out, got = _readv(_ENGINE if _ENGINE is not None else os.getppid(), [(address, len(expected))])
    except AttributeError:  # no process_vm_readv in this libc
        return False
    return got == len(expected) and bytes(out[0]) == expected


_EXITING: list[subprocess.Popen | _Forked] = []  # closed writers not yet reaped


def _reap() -> None:
    _EXITING[:] = [p for p in _EXITING if p.poll() is None]


_SERVICE: WriterService | None = None  # this process's fresh writer, once started
_RUNS = 0  # process-mode runs begun by this process (see the module docstring)
_RUNS_OWNER = os.getpid()


def service() -> WriterService:
    """This process's fresh writer process, started if there is none or it died (or if this process was
    forked from the one that started it: a child never shares its parent's writer)."""
    global _SERVICE
    if _SERVICE is None or not _SERVICE.usable():
        _SERVICE = WriterService(fresh=True)
    return _SERVICE


def for_run(market: MarketData) -> WriterService:
    """The writer for a run that starts now: the fresh writer if it is ready, else a fork for this run
    (starting the fresh writer from the second run on)."""
    global _RUNS, _RUNS_OWNER
    if os.getpid() != _RUNS_OWNER:
        _RUNS, _RUNS_OWNER = 0, os.getpid()
        _EXITING.clear()  # a forked copy of this module: those were the parent's children
    _reap()
    _RUNS += 1
    s = _SERVICE
    if s is not None and s.usable() and s.ready():
        return s
    if _RUNS >= 2 and (s is None or not s.usable()):
        service()  # boots in the background while this run writes through a fork
    return WriterService(fresh=False, market=market)


def _widen(sock: socket.socket) -> None:
    """Larger socket buffers: messages and acknowledgements never wait on a full buffer."""
    try:
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
    except OSError as exc:  # a smaller buffer still works, only slower
        print(f"tradetrace: could not widen the writer's socket buffers: {exc}", file=sys.stderr)


# -- the writer process -------------------------------------------------------------------------------
def _die_with_parent() -> None:
    """Linux: SIGKILL this process when the parent dies, so a killed run leaves no writer behind."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError) as exc:
        print(f"tradetrace: writer cannot follow its parent's death: {exc}", file=sys.stderr)
    if os.getppid() != parent:  # the parent died before the death signal was armed
        os._exit(0)


def _receive(conn: Connection, msg: tuple, maps: dict[int, mmap.mmap]) -> tuple[EventBatch, MarketWindow | None]:
    """A batch and its market rows (None in a fork: it has the data) from its shared buffer; a new or
    grown buffer's descriptor follows the message."""
    _, _, number, new_size = msg
    if new_size:
        fd = recv_handle(conn)
        try:
            old = maps.pop(number, None)
            if old is not None:
                old.close()
            maps[number] = mmap.mmap(fd, new_size, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
    batch, spec = read_slot(maps[number])
    if spec is None:
        return batch, None
    if spec[0] == "rows":  # a big data set: the rows this batch reads
        return batch, spec[1]
    # a new data set's rows (read_slot copied them out of the buffer), or the key of one the writer holds
    if spec[0] == "market":
        rows = spec[2]
        return batch, _HELD.use(spec[1], rows._replace(key=market_sets.content_key(rows)))
    return batch, _HELD.use(spec[1])


class _NoPandas:
    """A fresh writer's `import pandas` fails (a meta path finder); nothing the writer runs uses pandas.

    Why: pyarrow's first conversion from numpy imports pandas when it can (~0.2 s). In the writer's first run
    that held the run up: the writer fell behind and the engine waited 130-190 ms for it (1M-bar run). Imported at
    the writer's start instead, it would double the start (~0.2 s of imports), which overlaps a run."""

    @staticmethod
    def find_spec(name: str, path: Any = None, target: Any = None) -> None:
        if name == "pandas" or name.startswith("pandas."):
            raise ImportError(f"{name} is not imported by the event store's writer process")


def main(fd: int, announce: bool = False, market: MarketData | None = None,
         probe: tuple[int, bytes] | None = None) -> None:
    """The writer process: runs one after the other, until the engine process closes the connection.
    `announce`: imports first (a fresh writer, whose start the engine does not wait for); `market`: the run's
    data, in a forked writer (its batches come without market rows). Its first message says it is ready and
    whether it can read the engine's memory (`probe`: an address there and what it holds): then batches
    are read from there, not copied into shared memory by the engine."""
    global _ENGINE
    _ENGINE = os.getppid()
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the engine, which ends the run
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    conn = Connection(fd)
    pending = Poll(fd)
    if announce:
        sys.meta_path.insert(0, _NoPandas())
        from tradetrace.store import writer  # noqa: F401 - everything a run needs, imported before "ready"
    try:
        conn.send(("ready", probe is not None and can_read_parent(*probe)))
    except (BrokenPipeError, ConnectionResetError):  # the engine exited while this writer started
        return
    maps: dict[int, mmap.mmap] = {}  # the engine's shared buffers, by number
    msg: Any = None
    try:
        while True:
            if msg is None:
                msg = conn.recv()
            if msg[0] == "begin":
                msg = _serve_run(conn, pending, msg[1], maps, market)
            else:  # the tail of a run that failed here: discard it until the next run
                if msg[0] == "batch":
                    _receive(conn, msg, maps)
                    conn.send(("taken", msg[1]))
                msg = None
    except (EOFError, ConnectionError):  # the engine process is gone, or done with its runs
        return


def _serve_run(conn: Connection, pending: Poll, spec: dict, maps: dict[int, mmap.mmap],
               market: MarketData | None = None) -> tuple | None:
    """One run: batches in, segments out, acknowledgements back. Returns a message meant for the next run
    (a new "begin" after a run the engine abandoned), or None."""
    from tradetrace.store.writer import SegmentWriter, mark_failed

    run_id = spec["run_id"]
    segment_events, durability_s = spec.pop("segment_events"), spec.pop("durability_s")
    w = SegmentWriter(**spec, market=market)
    try:
        while True:
            timeout = max(durability_s - (time.monotonic() - w.since), 0.0) if w.events else None
            if not pending(timeout):  # durability_ms passed with events buffered
                conn.send(("durable", run_id, w.write_segment()))
                continue
            msg = conn.recv()
            kind = msg[0]
            if kind == "begin":  # the engine started another run without ending this one: keep what is
                w.write_segment()  # buffered durable; the run reads as incomplete
                return msg
            if kind == "batch":
                try:
                    batch, window = _receive(conn, msg, maps)
                finally:  # one "taken" per batch, always: the engine reuses buffers in that order
                    conn.send(("taken", run_id))
                w.add(batch, window)
                if w.segment_due(segment_events, idle=not pending(0)):
                    conn.send(("durable", run_id, w.write_segment()))
            elif kind == "flush":
                conn.send(("durable", run_id, w.write_segment()))
            elif kind == "end":
                w.finish(msg[2])
                conn.send(("done", run_id))
                return None
    except (EOFError, ConnectionError):
        raise  # the engine is gone without ending the run: the durable segments stay, the run reads incomplete
    except Exception as exc:  # noqa: BLE001 - the engine is told and the run marked failed
        mark_failed(w, exc)
        conn.send(("error", run_id, f"{type(exc).__name__}: {exc}"))
        return None
