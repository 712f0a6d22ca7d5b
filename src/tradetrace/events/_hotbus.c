/* The bus's hot path in C: event objects, publish, FIFO dispatch, the bar loop, and traced recording.
 *
 * Why C: a traced run publishes a few hundred thousand non-BAR events per million bars, and the
 * design's overhead target (tracing with full persistence <= 3% of an untraced run) leaves well under
 * 0.1 us per event for stamping and recording. In Python each clock read is ~50 ns and each append
 * ~20 ns, before the interpreter's own work: recording alone cost ~0.9 us per event. Here an event
 * costs its payload's encoding (int64 words: float bits, integers, string codes), two row-major writes
 * (common fields, payload) and two clock reads, with no allocation. What is left of the overhead is
 * mostly the CPU's: this code runs between interpreter frames and shares their instruction cache and
 * branch predictors (cachegrind: ~8 I1 misses and ~6 mispredicts per event), so it is kept small, its
 * rare paths out of line.
 *
 * What stays in Python (events/bus.py): wiring, flushing, error handling and everything not per event.
 * The semantics are those of the module docstring of bus.py; this file only makes them cheap:
 * - publish: seq = row + 1 + non-BAR events so far; cause = the event being dispatched, else ~row
 *   (the BAR of the current row, resolved at flush); traced: row<<4|type, cause, the publish clock and
 *   the source's string code to one row-major buffer, the payload's words to its type's, links (sparse)
 *   as flat (index, link) pairs; `_take_log` hands the buffers over as they are, once per chunk.
 * - drain: FIFO, including events published meanwhile; traced: the dispatch clock of each event, and
 *   (index of the last event, clock) when a drain ends. A handler's exception propagates with the
 *   queue and the current event left as they were (the coordinator settles and records the ERROR).
 * - run_bars: for each row, each bar handler, then each decision handler, with a drain after any that
 *   published; rows of one bar time (several symbols, `_set_bar_times`) in two phases, bar handlers
 *   for all of them, then decisions (run_group); traced: the clocks of every k-th row (received
 *   before its handlers, processed after its cascade); optionally stops early on a time or event
 *   budget (a recorder's durability window).
 * Clocks are CLOCK_MONOTONIC nanoseconds, the clock of Python's time.monotonic_ns on Linux.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NTYPES 16 /* rt packs the event type in 4 bits */
#define MAXF 16   /* payload fields per event type, at most */
/* String code cache: direct-mapped by object address. Why 1024 entries and a multiplicative hash: a run
 * publishes ~10 distinct strings over and over (containers, symbols, sides, reasons), and two of them in
 * one slot evict each other on every event (a dict lookup each time). With 64 slots that happened in
 * about half the processes (addresses differ per process), which moved the traced run's instruction
 * count by ~2.5%; with 1024 slots a collision is about 5% likely. */
#define SCACHE_BITS 10
#define SCACHE (1 << SCACHE_BITS)
/* A float payload field given as None is stored as this NaN bit pattern and read back as null. */
#define NULL_FLOAT_BITS ((int64_t)0x7ff8dead0000beefLL)

static inline int64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + (int64_t)ts.tv_nsec;
}

/* The hot path's clock: the CPU's time-stamp counter on x86-64 (~7 ns a read against ~23 ns for
 * clock_gettime, three reads per event), else the monotonic clock itself. Ticks become monotonic
 * nanoseconds off the hot path: `clock_pair()` reads both clocks back to back, and two pairs (run start,
 * each flush) give the linear map (events/recorder.py, EventBatch). Linux's own clock_gettime is this
 * counter scaled the same way when its clocksource is tsc; TICKS_ARE_NS says which case we are in. */
#if defined(__x86_64__) || defined(_M_X64)
#include <x86intrin.h>
#define TICKS_ARE_NS 0
static inline int64_t ticks(void) { return (int64_t)__rdtsc(); }
#else
#define TICKS_ARE_NS 1
static inline int64_t ticks(void) { return mono_ns(); }
#endif

/* ---- growable int64 buffer, held in a bytes object ------------------------------------------- */
/* Why a bytes object: a chunk's recording is handed over as the buffer itself, row-major as recorded
 * (`_take_log` is O(1): no copy, no transposition; the columns are strided views, made contiguous off
 * the hot path: in the store's writer process, or when a run's events are first read). Measured on the
 * reference workload, copying each buffer into per-column bytes cost ~5.5 ms per 1M bars (the copy and
 * the page faults of its fresh memory), ~0.8% of the run. Writing into a bytes object is how CPython fills
 * a new one: it is ours alone (refcount 1, never exposed) until it is taken. After a take, `spare` keeps a
 * reference to it (to the last two): one its consumer has dropped when the next chunk needs a buffer is
 * reused, its pages already mapped. Two, because the store's writer process reads a batch's buffers out of
 * this process (service.py) while the next chunk records: the one before is free by then. */
typedef struct {
    int64_t *d;      /* obj's storage (the fields an append touches come first: see Rec) */
    Py_ssize_t n, cap, want; /* values written, room, and the room of the last buffer taken */
    PyObject *obj;   /* bytes object holding `cap` values (ours alone), or NULL */
    PyObject *spare[2]; /* the last two buffers taken, reused once nobody else holds them */
} I64Buf;

/* Cold and out of line: the hot path's code stays small. */
static __attribute__((cold, noinline)) int64_t *buf_grow_for(I64Buf *b, Py_ssize_t k) {
    Py_ssize_t cap = b->cap ? b->cap : (b->want ? b->want : 4096);
    while (cap < b->n + k)
        cap *= 2;
    if (b->obj == NULL) {
        for (int k = 0; k < 2 && b->obj == NULL; k++)
            if (b->spare[k] != NULL && Py_REFCNT(b->spare[k]) == 1) {
                b->obj = b->spare[k];
                b->spare[k] = NULL;
            }
        if (b->obj == NULL) {
            b->obj = PyBytes_FromStringAndSize(NULL, cap * (Py_ssize_t)sizeof(int64_t));
            if (b->obj == NULL)
                goto fail;
        }
    }
    if (PyBytes_GET_SIZE(b->obj) < cap * (Py_ssize_t)sizeof(int64_t) &&
        _PyBytes_Resize(&b->obj, cap * (Py_ssize_t)sizeof(int64_t)) < 0) /* on failure: freed, obj NULL */
        goto fail;
    b->d = (int64_t *)PyBytes_AS_STRING(b->obj);
    b->cap = PyBytes_GET_SIZE(b->obj) / (Py_ssize_t)sizeof(int64_t);
    return b->d + b->n;
fail: /* out of memory: the run fails (MemoryError); what this buffer held is gone */
    Py_CLEAR(b->obj);
    b->d = NULL;
    b->n = b->cap = 0;
    return NULL;
}

/* Room for k more values at the returned pointer (not yet counted: the caller adds k to n). */
static inline int64_t *buf_reserve(I64Buf *b, Py_ssize_t k) {
    if (__builtin_expect(b->n + k > b->cap, 0))
        return buf_grow_for(b, k);
    return b->d + b->n;
}

/* A recorded value, written around the caches (a non-temporal store). Why: a run records ~80 bytes per
 * non-BAR event (~20 MB per 1M bars) that nothing on the engine's side reads again, and ordinary stores
 * bring each line of it into the caches, evicting the interpreter's own working set; measured on the
 * reference workload (loop time of traced minus untraced runs, in memory, alternating builds), the hot
 * path's cost went from ~21 to ~17.5 ms per 1M bars. The buffers are written in order, so the CPU's
 * write-combining fills whole lines; `_take_log` fences before the buffers change hands. */
static inline void stream_word(int64_t *p, int64_t v) {
#if defined(__x86_64__)
    _mm_stream_si64((long long *)p, (long long)v);
#else
    *p = v;
#endif
}

static inline int buf_stream(I64Buf *b, int64_t v) {
    int64_t *p = buf_reserve(b, 1);
    if (p == NULL)
        return -1;
    stream_word(p, v);
    b->n++;
    return 0;
}

static inline int buf_push(I64Buf *b, int64_t v) {
    int64_t *p = buf_reserve(b, 1);
    if (p == NULL)
        return -1;
    *p = v;
    b->n++;
    return 0;
}

/* Field k of a row-major buffer of `stride` values per row, as bytes (one int64 column). Off the hot
 * path (error messages). */
static PyObject *buf_column(const I64Buf *b, int stride, int k) {
    const Py_ssize_t n = b->n / stride;
    PyObject *out = PyBytes_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(int64_t));
    if (out == NULL)
        return NULL;
    int64_t *o = (int64_t *)PyBytes_AS_STRING(out);
    const int64_t *d = b->d + k;
    for (Py_ssize_t i = 0; i < n; i++)
        o[i] = d[i * stride];
    return out;
}

/* The buffer itself, cut to its values, as bytes (no copy); the buffer starts empty. */
static PyObject *buf_take(I64Buf *b) {
    if (b->n == 0)
        return PyBytes_FromStringAndSize(NULL, 0);
    PyObject *out = b->obj;
    const Py_ssize_t room = b->cap;
    b->obj = NULL;
    b->d = NULL;
    b->cap = 0;
    if (_PyBytes_Resize(&out, b->n * (Py_ssize_t)sizeof(int64_t)) < 0) { /* a shrink: in place */
        b->n = 0;
        return NULL;
    }
    b->n = 0;
    b->want = room;
    Py_XSETREF(b->spare[1], b->spare[0]);
    b->spare[0] = Py_NewRef(out);
    return out;
}

static void buf_free(I64Buf *b) {
    Py_CLEAR(b->obj);
    Py_CLEAR(b->spare[0]);
    Py_CLEAR(b->spare[1]);
    b->d = NULL;
    b->n = b->cap = b->want = 0;
}

/* ---- Event ------------------------------------------------------------------------------------ */
typedef struct {
    PyObject_HEAD
    long long seq;
    long long cause;
    long long row;
    PyObject *source;
    PyObject *payload;
    PyObject *links; /* NULL reads as None */
    int type;
} EventObject;

static PyMemberDef Event_members[] = {
    {"type", T_INT, offsetof(EventObject, type), READONLY, "event type (EventType value)"},
    {"seq", T_LONGLONG, offsetof(EventObject, seq), READONLY, "gapless sequence number in the run"},
    {"cause", T_LONGLONG, offsetof(EventObject, cause), READONLY,
     "seq of the causing event, ~row for the BAR of a market-data row, or NO_CAUSE"},
    {"row", T_LONGLONG, offsetof(EventObject, row), READONLY, "market-data row being handled at publish"},
    {"source", T_OBJECT, offsetof(EventObject, source), READONLY, "publishing container"},
    {"payload", T_OBJECT, offsetof(EventObject, payload), READONLY, "payload tuple in schema order"},
    {"links", T_OBJECT, offsetof(EventObject, links), READONLY, "further causes, or None"},
    {NULL}};

static PyObject *Event_new(PyTypeObject *cls, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"type", "seq", "cause", "source", "payload", "row", "links", NULL};
    int type;
    long long seq, cause, row;
    PyObject *source, *payload, *links = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iLLOOL|O:Event", kwlist, &type, &seq, &cause, &source,
                                     &payload, &row, &links))
        return NULL;
    EventObject *ev = (EventObject *)cls->tp_alloc(cls, 0);
    if (ev == NULL)
        return NULL;
    ev->type = type;
    ev->seq = seq;
    ev->cause = cause;
    ev->row = row;
    ev->source = Py_NewRef(source);
    ev->payload = Py_NewRef(payload);
    ev->links = links == Py_None ? NULL : Py_NewRef(links);
    return (PyObject *)ev;
}

/* GC support: the Python subclass (events/event.py) is collectable anyway, so say what an event holds. */
static int Event_traverse(EventObject *self, visitproc visit, void *arg) {
    Py_VISIT(self->source);
    Py_VISIT(self->payload);
    Py_VISIT(self->links);
    return 0;
}

static int Event_clear(EventObject *self) {
    Py_CLEAR(self->source);
    Py_CLEAR(self->payload);
    Py_CLEAR(self->links);
    return 0;
}

static void Event_dealloc(EventObject *self) {
    PyObject_GC_UnTrack(self);
    Event_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject EventType_ = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "tradetrace.events._hotbus.EventBase",
    .tp_basicsize = sizeof(EventObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "A published event as handlers see it (fields read-only).",
    .tp_new = Event_new,
    .tp_dealloc = (destructor)Event_dealloc,
    .tp_traverse = (traverseproc)Event_traverse,
    .tp_clear = (inquiry)Event_clear,
    .tp_members = Event_members,
};

/* ---- Bus core --------------------------------------------------------------------------------- */
/* What publishing one event of a type touches, in one cache line: its schema, its count and its payload
 * buffer's cursor (the buffer's owner fields, used when it grows or is taken, are on the next line). */
typedef struct {
    int nf;                          /* payload fields, -1 for a type without a schema */
    unsigned char nkind[3];          /* how many are floats, integers, strings */
    unsigned char by_kind[MAXF];     /* their field indexes, grouped by kind (see encode_payload) */
    long long count;                 /* events of this type published */
    I64Buf buf;                      /* nf payload words per event (float bits, integer, string code) */
} __attribute__((aligned(64))) TypeRec;

/* The recording state, cache-line aligned (allocated apart from the bus object, whose start is not).
 * Why: a non-BAR event comes every few bars, after thousands of the interpreter's instructions have
 * evicted what the last one touched, so each cache line an event touches is a likely L1 miss. Laid out so
 * an event touches few lines: its type's line, the common buffer's cursor, one line per string (a string
 * cache entry holds key and code), and the received buffer's cursor at dispatch. Measured with cachegrind
 * on the reference workload (traced in memory, 2 x 200k bars): Bus_publish's D1 read misses 450k -> 271k,
 * the whole process's excess over an untraced run 1.40M -> 0.63M; in wall time the difference was
 * inside the machine's noise (median of 8 paired alternations: -0.4 ms per 1M bars). */
typedef struct {
    TypeRec types[NTYPES];
    /* Row-major while recording (one capacity check and one contiguous write per event and buffer, where
       a buffer per column cost a check and a cache-line stream each), and handed over row-major. */
    I64Buf common __attribute__((aligned(64))); /* per non-BAR event: row<<4|type, cause, publish clock, source */
    I64Buf received __attribute__((aligned(64))); /* per dispatched event: its dispatch clock */
    I64Buf drain_ends __attribute__((aligned(64))); /* per drain: (index of its last event, clock) */
    I64Buf bar_rx, link_idx, link_val; /* sampled BAR clocks; links, flat: (index in chunk, one link) */
    /* direct-mapped cache of strdict by object identity (keys borrowed: the strings list keeps them alive);
       most strings are the same objects */
    struct { PyObject *key; int64_t code; } scache[SCACHE] __attribute__((aligned(64)));
} Rec;

typedef struct {
    PyObject_HEAD
    /* per event or per bar (together, first) */
    PyObject *current;      /* event being dispatched, or NULL */
    PyObject **q;           /* FIFO of owned event references */
    Py_ssize_t qlen, qcap;
    long long cur_bar, nonbar;
    long long log_row;      /* last row whose BAR was dispatched: the row events are recorded at (see run_bars) */
    long long time_last;    /* last row of the bar time being run (cur_bar's time) */
    Rec *rec;               /* recording state, per-type schema and counts (allocated by Bus_new) */
    PyTypeObject *event_cls;
    PyObject *subs;         /* list of NTYPES lists of handlers */
    int traced;
    PyObject *bar_handlers; /* list */
    PyObject *decide_handlers; /* list: run after every row of a bar time went through bar_handlers */
    Py_buffer times;        /* bar time per row (int64), when rows of one time form a group; times.buf NULL if not */
    int64_t *grp_t0;        /* per row of the group being run: its received clock, -1 if not sampled */
    Py_ssize_t grp_cap;
    long long bar_clock_every, chunk_emitted;
    /* payload schema: per type, the kinds of its fields ('f' float64, 'i' integer, 's' string; the same
       grouped by kind are in Rec); schema holds (type name, field names) per type for error messages */
    char kinds[NTYPES][MAXF];
    PyObject *schema;
    PyObject *strdict;         /* str -> code, this chunk's string dictionary (sources and payloads) */
    PyObject *strings;         /* code -> str */
} BusObject;

static PyObject *str_cause, *str_links;

/* The recording state is allocated with the object (cache-line aligned, zeroed): never NULL in a live bus. */
static PyObject *Bus_new(PyTypeObject *cls, PyObject *args, PyObject *kwds) {
    BusObject *self = (BusObject *)PyType_GenericNew(cls, args, kwds);
    if (self == NULL)
        return NULL;
    void *mem = NULL;
    if (posix_memalign(&mem, 64, sizeof(Rec)) != 0) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    memset(mem, 0, sizeof(Rec));
    self->rec = (Rec *)mem;
    return (PyObject *)self;
}

static int Bus_init(BusObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"event_cls", "schema", "traced", "bar_clock_every", NULL};
    PyObject *cls, *schema;
    int traced = 1;
    long long every = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|pL:BusCore", kwlist, &cls, &schema, &traced, &every))
        return -1;
    /* schema: NTYPES entries, each None or (type name, kinds string, field names tuple) */
    if (!PyTuple_Check(schema) || PyTuple_GET_SIZE(schema) != NTYPES) {
        PyErr_Format(PyExc_TypeError, "schema must be a tuple of %d entries", NTYPES);
        return -1;
    }
    for (Py_ssize_t t = 0; t < NTYPES; t++) {
        PyObject *e = PyTuple_GET_ITEM(schema, t);
        TypeRec *tr = &self->rec->types[t];
        tr->nf = -1;
        tr->count = 0;
        if (e == Py_None)
            continue;
        const char *k;
        PyObject *tname, *fnames;
        if (!PyArg_ParseTuple(e, "UsO!:schema entry", &tname, &k, &PyTuple_Type, &fnames))
            return -1;
        size_t nf = strlen(k);
        if (nf > MAXF || (Py_ssize_t)nf != PyTuple_GET_SIZE(fnames) || strspn(k, "fis") != nf) {
            PyErr_Format(PyExc_ValueError, "bad schema entry for type %zd: kinds %s", t, k);
            return -1;
        }
        memcpy(self->kinds[t], k, nf);
        tr->nf = (int)nf;
        int j = 0;
        for (int kind = 0; kind < 3; kind++) {
            tr->nkind[kind] = 0;
            for (int f = 0; f < (int)nf; f++)
                if (k[f] == "fis"[kind]) {
                    tr->by_kind[j++] = (unsigned char)f;
                    tr->nkind[kind]++;
                }
        }
    }
    Py_XSETREF(self->schema, Py_NewRef(schema));
    if (!PyType_Check(cls) || !PyType_IsSubtype((PyTypeObject *)cls, &EventType_)) {
        PyErr_SetString(PyExc_TypeError, "event_cls must be a subclass of EventBase");
        return -1;
    }
    if (((PyTypeObject *)cls)->tp_basicsize != sizeof(EventObject)) {
        PyErr_SetString(PyExc_TypeError, "event_cls must not add instance fields (use __slots__ = ())");
        return -1;
    }
    if (every < 1) {
        PyErr_Format(PyExc_ValueError, "bar_clock_every must be >= 1, got %lld", every);
        return -1;
    }
    Py_XSETREF(self->event_cls, (PyTypeObject *)Py_NewRef(cls));
    PyObject *subs = PyList_New(NTYPES);
    if (subs == NULL)
        return -1;
    for (Py_ssize_t i = 0; i < NTYPES; i++) {
        PyObject *l = PyList_New(0);
        if (l == NULL) {
            Py_DECREF(subs);
            return -1;
        }
        PyList_SET_ITEM(subs, i, l);
    }
    Py_XSETREF(self->subs, subs);
    Py_XSETREF(self->bar_handlers, PyList_New(0));
    Py_XSETREF(self->decide_handlers, PyList_New(0));
    Py_XSETREF(self->strdict, PyDict_New());
    Py_XSETREF(self->strings, PyList_New(0));
    if (!self->bar_handlers || !self->decide_handlers || !self->strdict || !self->strings)
        return -1;
    self->traced = traced;
    self->bar_clock_every = every;
    self->cur_bar = -1;
    self->log_row = -1;
    self->time_last = -1;
    self->nonbar = 0;
    return 0;
}

static void queue_clear(BusObject *self) {
    Py_ssize_t n = self->qlen;
    self->qlen = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        Py_DECREF(self->q[i]);
    Py_CLEAR(self->current);
}

static int Bus_traverse(BusObject *self, visitproc visit, void *arg) {
    Py_VISIT(self->event_cls);
    Py_VISIT(self->subs);
    Py_VISIT(self->bar_handlers);
    Py_VISIT(self->decide_handlers);
    Py_VISIT(self->times.obj);
    Py_VISIT(self->current);
    for (Py_ssize_t i = 0; i < self->qlen; i++)
        Py_VISIT(self->q[i]);
    Py_VISIT(self->schema);
    Py_VISIT(self->strdict);
    Py_VISIT(self->strings);
    return 0;
}

static int Bus_clear(BusObject *self) {
    queue_clear(self);
    Py_CLEAR(self->event_cls);
    Py_CLEAR(self->subs);
    Py_CLEAR(self->bar_handlers);
    Py_CLEAR(self->decide_handlers);
    if (self->times.obj != NULL)
        PyBuffer_Release(&self->times);
    Py_CLEAR(self->schema);
    Py_CLEAR(self->strdict);
    Py_CLEAR(self->strings);
    return 0;
}

/* A static type: a Python subclass's dealloc decrefs its own type after this. */
static void Bus_dealloc(BusObject *self) {
    PyObject_GC_UnTrack(self);
    Bus_clear(self);
    PyMem_Free(self->q);
    PyMem_Free(self->grp_t0);
    Rec *r = self->rec;
    if (r != NULL) {
        buf_free(&r->common);
        buf_free(&r->received);
        buf_free(&r->drain_ends);
        buf_free(&r->bar_rx);
        buf_free(&r->link_idx);
        buf_free(&r->link_val);
        for (int t = 0; t < NTYPES; t++)
            buf_free(&r->types[t].buf);
        free(r);
        self->rec = NULL;
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int queue_push(BusObject *self, PyObject *ev) {
    if (self->qlen == self->qcap) {
        Py_ssize_t cap = self->qcap ? self->qcap * 2 : 64;
        PyObject **q = PyMem_Realloc(self->q, (size_t)cap * sizeof(PyObject *));
        if (q == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        self->q = q;
        self->qcap = cap;
    }
    self->q[self->qlen++] = ev;
    return 0;
}

/* The string code cache's slot for an object (multiplicative hash of its address). */
static inline size_t scache_slot(const PyObject *s) {
    return (size_t)(((uint64_t)(uintptr_t)s * 0x9E3779B97F4A7C15ULL) >> (64 - SCACHE_BITS));
}

/* Code of a string in this chunk's dictionary; -1 for None; -2 with an exception set on error. */
static int64_t str_code(BusObject *self, PyObject *s) {
    if (s == Py_None)
        return -1;
    const size_t slot = scache_slot(s);
    if (self->rec->scache[slot].key == s)
        return self->rec->scache[slot].code;
    if (!PyUnicode_Check(s))
        return -3; /* caller reports the field */
    PyObject *v = PyDict_GetItemWithError(self->strdict, s);
    if (v != NULL) {
        int64_t code = PyLong_AsLongLong(v);
        if (PyList_GET_ITEM(self->strings, code) == s) { /* cache only objects the dictionary keeps alive */
            self->rec->scache[slot].key = s;
            self->rec->scache[slot].code = code;
        }
        return code;
    }
    if (PyErr_Occurred())
        return -2;
    Py_ssize_t code = PyList_GET_SIZE(self->strings);
    PyObject *c = PyLong_FromSsize_t(code);
    if (c == NULL)
        return -2;
    int rc = PyDict_SetItem(self->strdict, s, c);
    Py_DECREF(c);
    if (rc < 0 || PyList_Append(self->strings, s) < 0)
        return -2;
    self->rec->scache[slot].key = s;
    self->rec->scache[slot].code = code;
    return code;
}

static __attribute__((cold, noinline)) void field_error(BusObject *self, int t, int f, const char *expected,
                                                         PyObject *x) {
    PyObject *e = PyTuple_GET_ITEM(self->schema, t);
    PyErr_Format(PyExc_TypeError, "%U payload field %R: expected %s, got %.200R", PyTuple_GET_ITEM(e, 0),
                 PyTuple_GET_ITEM(PyTuple_GET_ITEM(e, 2), f), expected, x);
}

/* One field the fast paths below do not take (None, another number type, a wrong type): out of line. */
static __attribute__((cold, noinline)) int encode_other(BusObject *self, int t, int f, PyObject *x, int64_t *out) {
    switch (self->kinds[t][f]) {
    case 'f': {
        if (x == Py_None) {
            *out = NULL_FLOAT_BITS;
            return 0;
        }
        if (PyUnicode_Check(x) || PyBytes_Check(x)) {
            field_error(self, t, f, "a number", x);
            return -1;
        }
        double d = PyFloat_AsDouble(x);
        if (d == -1.0 && PyErr_Occurred()) {
            PyErr_Clear();
            field_error(self, t, f, "a number", x);
            return -1;
        }
        memcpy(out, &d, sizeof d);
        return 0;
    }
    case 'i': {
        long long v;
        if (PyFloat_Check(x)) { /* an integral float is accepted, as numpy would */
            double d = PyFloat_AS_DOUBLE(x);
            if (!(d == (double)(long long)d)) {
                field_error(self, t, f, "an integer", x);
                return -1;
            }
            v = (long long)d;
        } else {
            v = PyLong_AsLongLong(x); /* big ints, bools, numpy integers (__index__) */
            if (v == -1 && PyErr_Occurred()) {
                PyErr_Clear();
                field_error(self, t, f, PyLong_Check(x) ? "an integer in int64 range" : "an integer", x);
                return -1;
            }
        }
        *out = v;
        return 0;
    }
    default: { /* 's' */
        int64_t c = str_code(self, x);
        if (c == -3) {
            field_error(self, t, f, "a string", x);
            return -1;
        }
        if (c == -2)
            return -1;
        *out = c;
        return 0;
    }
    }
}

/* A Python int of at most one internal digit (|v| < 2**30): its value without a call. */
static inline int small_int(PyObject *x, int64_t *v) {
#if PY_VERSION_HEX >= 0x030C0000
    if (!_PyLong_IsCompact((PyLongObject *)x))
        return 0;
    *v = (int64_t)_PyLong_CompactValue((PyLongObject *)x);
#else
    const Py_ssize_t size = Py_SIZE(x);
    if (size < -1 || size > 1)
        return 0;
    *v = (int64_t)size * (int64_t)((PyLongObject *)x)->ob_digit[0];
#endif
    return 1;
}

/* Payload tuple -> one int64 word per field (float bits, integer, string code), all or nothing.
 * Hot path. Why per kind: a switch on each field's kind is an indirect jump whose target changes from field
 * to field, and a mispredicted branch costs as much as the rest of a field's encoding; one loop per kind
 * (floats, integers, strings, their field indexes precomputed per type) has one well-predicted body each.
 * Exact floats, small ints and strings seen before in this chunk take inline paths; the rest is out of line. */
static int encode_payload(BusObject *self, int t, PyObject *payload, int64_t *vals) {
    const TypeRec *tr = &self->rec->types[t];
    const int nf = tr->nf;
    if (nf < 0) {
        PyErr_Format(PyExc_ValueError, "event type %d has no payload schema", t);
        return -1;
    }
    if (!PyTuple_Check(payload) || PyTuple_GET_SIZE(payload) != nf) {
        PyObject *e = PyTuple_GET_ITEM(self->schema, t);
        PyErr_Format(PyExc_TypeError, "%U payload must be a tuple of %d fields %R, got %.200R", PyTuple_GET_ITEM(e, 0),
                     nf, PyTuple_GET_ITEM(e, 2), payload);
        return -1;
    }
    PyObject *const *items = &PyTuple_GET_ITEM(payload, 0);
    const unsigned char *idx = tr->by_kind;
    const int nfl = tr->nkind[0], nint = nfl + tr->nkind[1];
    int j = 0;
    for (; j < nfl; j++) {
        const int f = idx[j];
        PyObject *x = items[f];
        if (__builtin_expect(PyFloat_CheckExact(x), 1)) {
            const double d = PyFloat_AS_DOUBLE(x);
            memcpy(&vals[f], &d, sizeof d);
        } else if (encode_other(self, t, f, x, &vals[f]) < 0) {
            return -1;
        }
    }
    for (; j < nint; j++) {
        const int f = idx[j];
        PyObject *x = items[f];
        if (!(PyLong_CheckExact(x) && small_int(x, &vals[f])) && encode_other(self, t, f, x, &vals[f]) < 0)
            return -1;
    }
    for (; j < nf; j++) {
        const int f = idx[j];
        PyObject *x = items[f];
        const size_t slot = scache_slot(x);
        if (__builtin_expect(self->rec->scache[slot].key == x, 1))
            vals[f] = self->rec->scache[slot].code;
        else if (encode_other(self, t, f, x, &vals[f]) < 0)
            return -1;
    }
    return 0;
}

/* links: a list or tuple of ints (seqs, or ~row for a BAR); 0 if so, else -1 with a TypeError. */
static int check_links(PyObject *links) {
    if (!PyList_Check(links) && !PyTuple_Check(links)) {
        PyErr_Format(PyExc_TypeError, "publish: links must be a list of event seqs (int), got %.200R", links);
        return -1;
    }
    const Py_ssize_t k = PySequence_Fast_GET_SIZE(links);
    PyObject **items = PySequence_Fast_ITEMS(links);
    for (Py_ssize_t j = 0; j < k; j++) {
        if (!PyLong_Check(items[j])) {
            PyErr_Format(PyExc_TypeError, "publish: links must be a list of event seqs (int), got %.200R", links);
            return -1;
        }
        if (PyLong_AsLongLong(items[j]) == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "publish: link %R is out of int64 range", items[j]);
            return -1;
        }
    }
    return 0;
}

/* publish(event_type, source, payload, cause=None, links=None) -> Event. Hot path. */
static PyObject *Bus_publish(BusObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    PyObject *a_cause = NULL, *a_links = NULL;
    if (nargs < 3 || nargs > 5) {
        PyErr_Format(PyExc_TypeError, "publish() takes 3 to 5 positional arguments (%zd given)", nargs);
        return NULL;
    }
    if (nargs > 3)
        a_cause = args[3];
    if (nargs > 4)
        a_links = args[4];
    if (kwnames != NULL) {
        Py_ssize_t nkw = PyTuple_GET_SIZE(kwnames);
        for (Py_ssize_t i = 0; i < nkw; i++) {
            PyObject *name = PyTuple_GET_ITEM(kwnames, i);
            if (name == str_cause || PyUnicode_Compare(name, str_cause) == 0)
                a_cause = args[nargs + i];
            else if (name == str_links || PyUnicode_Compare(name, str_links) == 0)
                a_links = args[nargs + i];
            else {
                PyErr_Format(PyExc_TypeError, "publish() got an unexpected keyword argument %R", name);
                return NULL;
            }
        }
    }
    long t = PyLong_AsLong(args[0]);
    if (t == -1 && PyErr_Occurred())
        return NULL;
    if (t < 0 || t >= NTYPES) {
        PyErr_Format(PyExc_ValueError, "event type %ld out of range", t);
        return NULL;
    }
    long long cause;
    if (a_cause == NULL || a_cause == Py_None) {
        cause = self->current != NULL ? ((EventObject *)self->current)->seq : ~self->cur_bar;
    } else {
        cause = PyLong_AsLongLong(a_cause);
        if (cause == -1 && PyErr_Occurred())
            return NULL;
    }
    if (a_links == Py_None)
        a_links = NULL;
    int64_t vals[MAXF];
    int64_t src = 0;
    if (self->traced) { /* checked before anything is recorded: a bad payload records nothing */
        if (encode_payload(self, (int)t, args[2], vals) < 0)
            return NULL;
        PyObject *source = args[1];
        const size_t slot = scache_slot(source);
        src = self->rec->scache[slot].key == source ? self->rec->scache[slot].code : str_code(self, source); /* hit inline */
        if (src < 0) {
            if (src != -2)
                PyErr_Format(PyExc_TypeError, "publish: source must be a container name (str), got %.200R", args[1]);
            return NULL;
        }
        if (a_links != NULL && check_links(a_links) < 0)
            return NULL;
    }
    long long row = self->log_row;
    EventObject *ev = (EventObject *)self->event_cls->tp_alloc(self->event_cls, 0);
    if (ev == NULL)
        return NULL;
    ev->type = (int)t;
    ev->seq = row + 1 + self->nonbar;
    ev->cause = cause;
    ev->row = row;
    ev->source = Py_NewRef(args[1]);
    ev->payload = Py_NewRef(args[2]);
    ev->links = a_links != NULL ? Py_NewRef(a_links) : NULL;
    if (self->traced) {
        /* reserved only now: nothing above may run code that records (and moves the buffers) meanwhile */
        Rec *r = self->rec;
        TypeRec *tr = &r->types[t];
        const int nf = tr->nf;
        int64_t *cw = buf_reserve(&r->common, 4);
        int64_t *pv = nf > 0 ? buf_reserve(&tr->buf, nf) : cw;
        if (cw == NULL || pv == NULL) {
            Py_DECREF(ev);
            return NULL;
        }
        if (nf > 0) {
            for (int f = 0; f < nf; f++)
                stream_word(&pv[f], vals[f]);
            tr->buf.n += nf;
        }
        stream_word(&cw[0], (int64_t)((uint64_t)row << 4) | t);
        stream_word(&cw[1], cause);
        stream_word(&cw[2], ticks());
        stream_word(&cw[3], src);
        r->common.n += 4;
        if (a_links != NULL) { /* flat pairs, not a Python tuple per event: no allocation (checked above) */
            const Py_ssize_t k = PySequence_Fast_GET_SIZE(a_links);
            PyObject **items = PySequence_Fast_ITEMS(a_links);
            for (Py_ssize_t j = 0; j < k; j++) {
                if (buf_push(&r->link_idx, r->common.n / 4 - 1) < 0 ||
                    buf_push(&r->link_val, PyLong_AsLongLong(items[j])) < 0) {
                    Py_DECREF(ev);
                    return NULL;
                }
            }
        }
    }
    if (queue_push(self, (PyObject *)ev) < 0) {
        Py_DECREF(ev);
        return NULL;
    }
    self->nonbar++;
    self->rec->types[t].count++;
    return Py_NewRef((PyObject *)ev);
}

/* Dispatch the queue FIFO until empty. -1 with the exception set if a handler raised. */
static int bus_drain(BusObject *self) {
    Py_ssize_t k = 0;
    const int traced = self->traced;
    while (k < self->qlen) {
        PyObject *ev = self->q[k++];
        if (traced && buf_stream(&self->rec->received, ticks()) < 0)
            return -1;
        Py_INCREF(ev);
        Py_XSETREF(self->current, ev);
        PyObject *hs = PyList_GET_ITEM(self->subs, ((EventObject *)ev)->type);
        for (Py_ssize_t j = 0; j < PyList_GET_SIZE(hs); j++) {
            PyObject *h = Py_NewRef(PyList_GET_ITEM(hs, j));
            PyObject *r = PyObject_Vectorcall(h, &ev, 1, NULL);
            Py_DECREF(h);
            if (r == NULL)
                return -1; /* queue and current stay: the coordinator settles the run */
            Py_DECREF(r);
        }
    }
    if (traced && k) {
        Rec *r = self->rec;
        if (buf_push(&r->drain_ends, r->received.n - 1) < 0 || buf_push(&r->drain_ends, ticks()) < 0)
            return -1;
    }
    queue_clear(self);
    return 0;
}

static PyObject *Bus_drain(BusObject *self, PyObject *Py_UNUSED(ignored)) {
    if (bus_drain(self) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* Call each handler of `hs` for row `i`, draining after any that published. -1 with the exception set. */
static inline int call_row(BusObject *self, PyObject *hs, long long i) {
    PyObject *row = PyLong_FromLongLong(i);
    if (row == NULL)
        return -1;
    const Py_ssize_t nh = PyTuple_GET_SIZE(hs);
    int rc = 0;
    for (Py_ssize_t j = 0; j < nh && rc == 0; j++) {
        PyObject *r = PyObject_Vectorcall(PyTuple_GET_ITEM(hs, j), &row, 1, NULL);
        if (r == NULL)
            rc = -1;
        else {
            Py_DECREF(r);
            if (self->qlen && bus_drain(self) < 0)
                rc = -1;
        }
    }
    Py_DECREF(row);
    return rc;
}

/* Rows of one bar time, in two phases: every row through the bar handlers (fills at the open, stops,
 * classifiers), then every row through the decision handlers (the strategy). Why: a decision sizes on
 * the equity at this time's closes after this time's fills; row by row, a symbol earlier in the list
 * would decide before a later symbol's fills and close were in (sizes depended on the symbols' order).
 * Events are recorded at the last dispatched row (log_row), so seqs stay in recorded order, while a
 * decision's cause is still the BAR of its own row (cur_bar). Clocks of a sampled row: received before
 * its first phase, processed after its second. */
static __attribute__((noinline)) int run_group(BusObject *self, PyObject *pre, PyObject *decide, long long g0,
                                               long long g1, long long *countdown, int sampling) {
    const long long every = self->bar_clock_every;
    const Py_ssize_t g = (Py_ssize_t)(g1 - g0);
    self->time_last = g1 - 1;
    if (g > self->grp_cap) {
        int64_t *t0 = PyMem_Realloc(self->grp_t0, (size_t)g * sizeof(int64_t));
        if (t0 == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        self->grp_t0 = t0;
        self->grp_cap = g;
    }
    for (long long i = g0; i < g1; i++) {
        int64_t t0 = -1;
        if (sampling) {
            if (*countdown == 0)
                t0 = ticks();
            *countdown = *countdown == 0 ? every - 1 : *countdown - 1;
        }
        self->grp_t0[i - g0] = t0;
        self->cur_bar = self->log_row = i;
        if (call_row(self, pre, i) < 0)
            return -1;
    }
    for (long long i = g0; i < g1; i++) {
        self->cur_bar = i;
        if (call_row(self, decide, i) < 0)
            return -1;
        const int64_t t0 = self->grp_t0[i - g0];
        if (t0 >= 0 && (buf_push(&self->rec->bar_rx, i) < 0 || buf_push(&self->rec->bar_rx, t0) < 0 ||
                        buf_push(&self->rec->bar_rx, ticks()) < 0))
            return -1;
    }
    self->cur_bar = g1 - 1;
    return 0;
}

/* run_bars(start, stop, budget_ns=0, max_events=0) -> the row it stopped before: the engine's inner loop
 * over market-data rows. Returns `stop`, or earlier once `budget_ns` nanoseconds have passed or `max_events`
 * events (BARs included) were published since the call: a recorder with a durability window gets what a
 * slow strategy publishes within that window, not only at the end of a chunk. Why checked this way: the
 * limits are looked at only every `check` rows, `check` halving while rows are slow (down to every row)
 * and doubling back to 64 while they are fast, so a fast run pays one clock read per 64 rows (and nothing
 * without limits) while a run of slow rows still stops within about one row of its budget.
 * With bar times set (several symbols), rows of one time run as a group (run_group), limits are checked
 * only between groups, and `start` and `stop` must fall on group boundaries. With one symbol each row is
 * its own group: the bar and decision handlers run back to back, in the loop below. */
static PyObject *Bus_run_bars(BusObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 2 || nargs > 4) {
        PyErr_SetString(PyExc_TypeError, "run_bars(start, stop, budget_ns=0, max_events=0)");
        return NULL;
    }
    long long start = PyLong_AsLongLong(args[0]);
    if (start == -1 && PyErr_Occurred())
        return NULL;
    long long stop = PyLong_AsLongLong(args[1]);
    if (stop == -1 && PyErr_Occurred())
        return NULL;
    long long budget = 0, max_events = 0;
    if (nargs > 2 && (budget = PyLong_AsLongLong(args[2])) == -1 && PyErr_Occurred())
        return NULL;
    if (nargs > 3 && (max_events = PyLong_AsLongLong(args[3])) == -1 && PyErr_Occurred())
        return NULL;
    if (budget < 0 || max_events < 0) {
        PyErr_Format(PyExc_ValueError, "run_bars: budget_ns and max_events must be >= 0, got %lld, %lld", budget,
                     max_events);
        return NULL;
    }
    const int64_t *times = (const int64_t *)self->times.buf;
    const long long ntimes = times != NULL ? (long long)(self->times.len / (Py_ssize_t)sizeof(int64_t)) : 0;
    if (times != NULL && (start < 0 || stop > ntimes)) {
        PyErr_Format(PyExc_ValueError, "run_bars: rows [%lld, %lld) outside the %lld rows with bar times", start, stop,
                     ntimes);
        return NULL;
    }
    if (times != NULL && ((start > 0 && start < ntimes && times[start - 1] == times[start]) ||
                          (stop > start && stop < ntimes && times[stop - 1] == times[stop]))) {
        PyErr_Format(PyExc_ValueError, "run_bars: rows [%lld, %lld) split the rows of one bar time", start, stop);
        return NULL;
    }
    const int limited = budget > 0 || max_events > 0;
    const int64_t began = limited ? mono_ns() : 0;
    const int64_t deadline = budget > 0 ? began + budget : INT64_MAX;
    const int64_t quantum = budget > 0 ? budget / 16 : INT64_MAX; /* rows slower than this between checks: check more often */
    const long long nonbar0 = self->nonbar;
    long long check = 1, check_left = 1; /* from every row: the first rows may already be slow */
    int64_t last_check = began;
    PyObject *pre = PyList_AsTuple(self->bar_handlers);
    if (pre == NULL)
        return NULL;
    PyObject *decide = PyList_AsTuple(self->decide_handlers);
    if (decide == NULL) {
        Py_DECREF(pre);
        return NULL;
    }
    PyObject *handlers = PySequence_Concat(pre, decide); /* one row at a time: every handler in turn */
    if (handlers == NULL)
        goto fail;
    const Py_ssize_t nh = PyTuple_GET_SIZE(handlers);
    const int sampling = self->traced && nh > 0;
    const long long every = self->bar_clock_every;
    long long countdown = 0; /* rows until the next sampled row */
    if (self->traced)
        self->chunk_emitted = ticks();
    for (long long i = start; i < stop;) {
        long long g1 = i + 1;
        if (times != NULL)
            while (g1 < stop && times[g1] == times[i])
                g1++;
        if (g1 - i > 1) { /* several symbols at this time: rare enough per row to be out of line */
            if (run_group(self, pre, decide, i, g1, &countdown, sampling) < 0)
                goto fail;
        } else {
            self->cur_bar = self->log_row = self->time_last = i;
            int64_t t0 = 0;
            const int sample = sampling && countdown == 0;
            if (sampling)
                countdown = sample ? every - 1 : countdown - 1;
            if (sample)
                t0 = ticks();
            if (call_row(self, handlers, i) < 0)
                goto fail;
            if (sample &&
                (buf_push(&self->rec->bar_rx, i) < 0 || buf_push(&self->rec->bar_rx, t0) < 0 ||
                 buf_push(&self->rec->bar_rx, ticks()) < 0))
                goto fail;
        }
        i = g1;
        if (limited && --check_left == 0) { /* rare path: see the comment above the function */
            const int64_t now = mono_ns();
            if (now >= deadline || (max_events > 0 && (i - start) + (self->nonbar - nonbar0) >= max_events)) {
                stop = i;
                break;
            }
            check = now - last_check > quantum ? (check > 1 ? check / 2 : 1) : (check < 64 ? check * 2 : 64);
            check_left = check;
            last_check = now;
        }
    }
    Py_DECREF(pre);
    Py_DECREF(decide);
    Py_DECREF(handlers);
    return PyLong_FromLongLong(stop);
fail:
    Py_DECREF(pre);
    Py_DECREF(decide);
    Py_XDECREF(handlers);
    return NULL;
}

/* _set_bar_times(times or None): the bar time of each row (int64, C-contiguous), so that run_bars runs the
 * rows of one time as a group; None: every row on its own (one symbol). */
static PyObject *Bus_set_bar_times(BusObject *self, PyObject *arg) {
    if (self->times.obj != NULL)
        PyBuffer_Release(&self->times);
    if (arg == Py_None)
        Py_RETURN_NONE;
    if (PyObject_GetBuffer(arg, &self->times, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
        return NULL;
    const char *f = self->times.format;
    if (self->times.itemsize != 8 || f == NULL || (strcmp(f, "q") != 0 && strcmp(f, "l") != 0 && strcmp(f, "<q") != 0 &&
                                                    strcmp(f, "<l") != 0 && strcmp(f, "=q") != 0)) {
        PyErr_Format(PyExc_TypeError, "_set_bar_times: int64 values expected, got format %s", f ? f : "?");
        PyBuffer_Release(&self->times);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* _take_log() -> (common, payload, links, received, drain_ends, strings); starts a new log. The buffers
 * themselves, row-major as recorded (int64 bytes, no copy: see I64Buf): common holds 4 values per event
 * (row<<4|type, cause, publish clock, source string code); payload, per type value, None or nfields values
 * per event of that type (float64 bits, int64, or int64 string codes, -1 for None); links: (event indexes,
 * links), one pair per link; strings: the chunk's string dictionary (code -> str). */
static PyObject *Bus_take_log(BusObject *self, PyObject *Py_UNUSED(ignored)) {
#if defined(__x86_64__)
    _mm_sfence(); /* the recorded values' non-temporal stores are visible to whoever reads them next */
#endif
    PyObject *payload = PyList_New(NTYPES);
    PyObject *dict = PyDict_New(), *strings = PyList_New(0);
    PyObject *out = NULL;
    if (!payload || !dict || !strings)
        goto done;
    for (Py_ssize_t t = 0; t < NTYPES; t++) {
        TypeRec *tr = &self->rec->types[t];
        if (tr->nf <= 0 || tr->buf.n == 0) {
            PyList_SET_ITEM(payload, t, Py_NewRef(Py_None));
            continue;
        }
        PyObject *b = buf_take(&tr->buf);
        if (b == NULL)
            goto done;
        PyList_SET_ITEM(payload, t, b);
    }
    Rec *r = self->rec;
    out = Py_BuildValue("(NO(NN)NNO)", buf_take(&r->common), payload, buf_take(&r->link_idx),
                        buf_take(&r->link_val), buf_take(&r->received), buf_take(&r->drain_ends),
                        self->strings);
    if (out == NULL)
        goto done;
    memset(self->rec->scache, 0, sizeof(self->rec->scache)); /* codes are per chunk */
    Py_SETREF(self->strdict, Py_NewRef(dict));
    Py_SETREF(self->strings, Py_NewRef(strings));
done:
    Py_XDECREF(payload);
    Py_XDECREF(dict);
    Py_XDECREF(strings);
    return out;
}

static PyObject *Bus_take_bar_clocks(BusObject *self, PyObject *Py_UNUSED(ignored)) {
    return buf_take(&self->rec->bar_rx);
}

static PyObject *Bus_log_rt(BusObject *self, PyObject *Py_UNUSED(ignored)) {
    return buf_column(&self->rec->common, 4, 0);
}

static PyObject *Bus_clear_queue(BusObject *self, PyObject *Py_UNUSED(ignored)) {
    queue_clear(self);
    Py_RETURN_NONE;
}

static PyObject *Bus_type_counts(BusObject *self, PyObject *Py_UNUSED(ignored)) {
    PyObject *out = PyList_New(NTYPES);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < NTYPES; i++) {
        PyObject *v = PyLong_FromLongLong(self->rec->types[i].count);
        if (v == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, v);
    }
    return out;
}

static PyObject *Bus_get_current(BusObject *self, void *Py_UNUSED(closure)) {
    return Py_NewRef(self->current != NULL ? self->current : Py_None);
}

static PyObject *Bus_get_queued(BusObject *self, void *Py_UNUSED(closure)) {
    return PyLong_FromSsize_t(self->qlen);
}

static PyObject *Bus_get_logged(BusObject *self, void *Py_UNUSED(closure)) {
    return PyLong_FromSsize_t(self->rec->common.n / 4);
}

static PyMethodDef Bus_methods[] = {
    {"publish", (PyCFunction)(void (*)(void))Bus_publish, METH_FASTCALL | METH_KEYWORDS,
     "publish(event_type, source, payload, cause=None, links=None) -> Event: publish a non-BAR event."},
    {"drain", (PyCFunction)Bus_drain, METH_NOARGS, "Dispatch queued events FIFO until none is left."},
    {"run_bars", (PyCFunction)(void (*)(void))Bus_run_bars, METH_FASTCALL,
     "run_bars(start, stop, budget_ns=0, max_events=0) -> row: dispatch market-data rows [start, stop), stopping\n"
     "early (after a whole row) once budget_ns have passed or max_events were published; returns the row reached."},
    {"_set_bar_times", (PyCFunction)Bus_set_bar_times, METH_O,
     "_set_bar_times(times or None): group the rows of one bar time (two phases, see run_bars)."},
    {"_take_log", (PyCFunction)Bus_take_log, METH_NOARGS, "Hand over the recorded non-BAR events; start anew."},
    {"_take_bar_clocks", (PyCFunction)Bus_take_bar_clocks, METH_NOARGS,
     "Hand over the sampled BAR clocks (row, received, processed; flat int64 bytes)."},
    {"_log_rt", (PyCFunction)Bus_log_rt, METH_NOARGS, "Copy of the unflushed row<<4|type column (bytes)."},
    {"_clear_queue", (PyCFunction)Bus_clear_queue, METH_NOARGS, "Drop queued events without dispatching them."},
    {"_type_counts", (PyCFunction)Bus_type_counts, METH_NOARGS, "Non-BAR events published per type value."},
    {NULL}};

static PyMemberDef Bus_members[] = {
    {"traced", T_BOOL, offsetof(BusObject, traced), READONLY, "whether events are recorded"},
    {"bar_clock_every", T_LONGLONG, offsetof(BusObject, bar_clock_every), READONLY, "BAR clock sampling period"},
    {"_cur_bar", T_LONGLONG, offsetof(BusObject, cur_bar), READONLY, "row being dispatched (-1 before the first)"},
    {"_nonbar", T_LONGLONG, offsetof(BusObject, nonbar), READONLY, "non-BAR events published so far"},
    {"_chunk_emitted", T_LONGLONG, offsetof(BusObject, chunk_emitted), READONLY,
     "monotonic ns when the current chunk of bars was emitted"},
    {"_subs", T_OBJECT, offsetof(BusObject, subs), READONLY, "handlers per event type value"},
    {"_bar_handlers", T_OBJECT, offsetof(BusObject, bar_handlers), READONLY, "bar handlers, in order"},
    {"_decide_handlers", T_OBJECT, offsetof(BusObject, decide_handlers), READONLY,
     "decision handlers, in order (after the bar handlers of every row of a bar time)"},
    {"_time_last", T_LONGLONG, offsetof(BusObject, time_last), READONLY,
     "last row of the bar time being run (several symbols: the rows of one time run as a group)"},
    {"_log_row", T_LONGLONG, offsetof(BusObject, log_row), READONLY,
     "last row whose BAR was dispatched (-1 before the first): rows dispatched - 1"},
    {NULL}};

static PyGetSetDef Bus_getset[] = {
    {"current", (getter)Bus_get_current, NULL, "The non-BAR event being dispatched, or None.", NULL},
    {"_queued", (getter)Bus_get_queued, NULL, "Events published and not yet dispatched.", NULL},
    {"_logged", (getter)Bus_get_logged, NULL, "Non-BAR events recorded since the last _take_log.", NULL},
    {NULL}};

static PyTypeObject BusType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "tradetrace.events._hotbus.BusCore",
    .tp_basicsize = sizeof(BusObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Hot path of the TracedEventBus (see events/bus.py).",
    .tp_new = Bus_new,
    .tp_init = (initproc)Bus_init,
    .tp_dealloc = (destructor)Bus_dealloc,
    .tp_traverse = (traverseproc)Bus_traverse,
    .tp_clear = (inquiry)Bus_clear,
    .tp_methods = Bus_methods,
    .tp_members = Bus_members,
    .tp_getset = Bus_getset,
};

static PyObject *clock_pair(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored)) {
    int64_t t = ticks();
    int64_t ns = mono_ns();
    return Py_BuildValue("(LL)", (long long)t, (long long)ns);
}

/* buffer_address(obj) -> int: where an object's buffer starts in this process (the store's writer process
 * reads batch buffers from there, see store/service.py). The caller keeps `obj` alive while it is read. */
static PyObject *buffer_address(PyObject *Py_UNUSED(m), PyObject *obj) {
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    PyObject *out = PyLong_FromVoidPtr(view.buf);
    PyBuffer_Release(&view);
    return out;
}

static PyMethodDef module_methods[] = {
    {"buffer_address", buffer_address, METH_O, "Address of an object's (contiguous) buffer in this process."},
    {"clock_pair", clock_pair, METH_NOARGS,
     "(ticks, monotonic ns) read back to back: two pairs map the hot path's clock ticks to nanoseconds."},
    {NULL}};

static struct PyModuleDef hotbus_module = {
    PyModuleDef_HEAD_INIT, "tradetrace.events._hotbus",
    "C hot path of the TracedEventBus: events, publish, dispatch, recording.", -1, module_methods};

PyMODINIT_FUNC PyInit__hotbus(void) {
    str_cause = PyUnicode_InternFromString("cause");
    str_links = PyUnicode_InternFromString("links");
    if (!str_cause || !str_links || PyType_Ready(&EventType_) < 0 || PyType_Ready(&BusType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&hotbus_module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "EventBase", (PyObject *)&EventType_) < 0 ||
        PyModule_AddObjectRef(m, "BusCore", (PyObject *)&BusType) < 0 ||
        PyModule_AddIntConstant(m, "NTYPES", NTYPES) < 0 || PyModule_AddIntConstant(m, "TICKS_ARE_NS", TICKS_ARE_NS) < 0 ||
        PyModule_AddObject(m, "NULL_FLOAT_BITS", PyLong_FromLongLong(NULL_FLOAT_BITS)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
