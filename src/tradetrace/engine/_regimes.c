/* Regime labels with hysteresis and minimum dwell, in one pass (engine/classifiers.py).
 *
 * Why C: the pass is path-dependent (each label depends on the previous one), so it cannot be
 * vectorized, and in Python it took 0.25 s per 1M bars, a third of a 1M-bar run's engine time.
 * Same arithmetic as the reference loop in tests/engine/test_classifiers.py, which checks it:
 * - margins are relative to each edge's magnitude: down(e) = e - margin*|e|, up(e) = e + margin*|e|
 *   (computed as e*(1-margin) or e*(1+margin) by e's sign), so an edge below zero (the trend's -T) gets
 *   the same margin as one above it (+T) and the entry/exit thresholds sit symmetrically around each edge;
 * - a NaN value or band edge keeps the previous reading and regime;
 * - with no reading yet: below lower -> 0, above upper -> 2, else 1;
 * - from 2 (high): stay while value >= down(upper), else 0 if below down(lower), else 1;
 * - from 0 (low): stay while value <= up(lower), else 2 if above up(upper), else 1;
 * - from 1: 2 if above up(upper), 0 if below down(lower), else 1;
 * - the regime takes a new reading once it has held for min_dwell rows (the first reading at once).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

/* An edge moved down / up by margin*|edge|; below = 1-margin, above = 1+margin. For edges >= 0 this is
 * edge*below / edge*above exactly (the volatility and VIX bands, positive, are as they were). */
static inline double edge_down(double e, double below, double above) { return e * (e >= 0.0 ? below : above); }
static inline double edge_up(double e, double below, double above) { return e * (e >= 0.0 ? above : below); }

/* hysteresis(value, lower, upper, margin, min_dwell) -> (reading, regime): int8 bytes, -1 = unknown. */
static PyObject *hysteresis(PyObject *Py_UNUSED(m), PyObject *args) {
    Py_buffer bv, bl, bu;
    double margin;
    long long min_dwell;
    if (!PyArg_ParseTuple(args, "y*y*y*dL:hysteresis", &bv, &bl, &bu, &margin, &min_dwell))
        return NULL;
    PyObject *out = NULL, *reading = NULL, *regime = NULL;
    if (bv.len != bl.len || bv.len != bu.len || bv.len % (Py_ssize_t)sizeof(double) != 0) {
        PyErr_SetString(PyExc_ValueError, "hysteresis: value, lower and upper must be float64 buffers of one length");
        goto done;
    }
    const Py_ssize_t n = bv.len / (Py_ssize_t)sizeof(double);
    reading = PyBytes_FromStringAndSize(NULL, n);
    regime = PyBytes_FromStringAndSize(NULL, n);
    if (reading == NULL || regime == NULL)
        goto done;
    const double *v = bv.buf, *lo = bl.buf, *up = bu.buf;
    int8_t *rd = (int8_t *)PyBytes_AS_STRING(reading), *rg = (int8_t *)PyBytes_AS_STRING(regime);
    const double below = 1.0 - margin, above = 1.0 + margin;
    Py_BEGIN_ALLOW_THREADS
    int r = -1, g = -1;
    long long run = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        const double x = v[i], l = lo[i], u = up[i];
        if (x != x || l != l || u != u) {
            rd[i] = (int8_t)r;
            rg[i] = (int8_t)g;
            continue;
        }
        int nw;
        if (r == -1)
            nw = x < l ? 0 : (x > u ? 2 : 1);
        else if (r == 2)
            nw = x >= edge_down(u, below, above) ? 2 : (x < edge_down(l, below, above) ? 0 : 1);
        else if (r == 0)
            nw = x <= edge_up(l, below, above) ? 0 : (x > edge_up(u, below, above) ? 2 : 1);
        else
            nw = x > edge_up(u, below, above) ? 2 : (x < edge_down(l, below, above) ? 0 : 1);
        if (nw == r) {
            run++;
        } else {
            r = nw;
            run = 1;
        }
        if (g == -1 || (r != g && run >= min_dwell))
            g = r;
        rd[i] = (int8_t)r;
        rg[i] = (int8_t)g;
    }
    Py_END_ALLOW_THREADS
    out = PyTuple_Pack(2, reading, regime);
done:
    Py_XDECREF(reading);
    Py_XDECREF(regime);
    PyBuffer_Release(&bv);
    PyBuffer_Release(&bl);
    PyBuffer_Release(&bu);
    return out;
}

/* ---- rolling quantiles, several at once ------------------------------------------------------------
 * The volatility classifier's bands are two quantiles of the trailing reading over `lookback` rows. pandas
 * computes one quantile per pass over a skip list: 0.29 s per quantile for 1M rows and a 3900-row window,
 * so the two bands cost as much as the 1M-bar run itself. Here one pass serves every quantile: each value
 * has its rank in the whole series (the caller's argsort), the window is a bitset over ranks, and each
 * order statistic the quantiles need is tracked as the window slides: a value entering below it moves it
 * to the previous rank present, one leaving at or below it to the next (a few words of bitset apart: the
 * window holds one rank in n/window). A Fenwick tree's O(log n) descent per statistic measured 0.29 s.
 * Same result as pandas' rolling(window, min_periods=window).quantile(q) (linear interpolation), bit for
 * bit (tests/engine/test_classifiers.py): NaN unless the window holds `window` non-NaN values; else with
 * pos = q * (window - 1) and k = (int)pos, s[k] if pos == k, else s[k] + (s[k+1] - s[k]) * (pos - k),
 * s being the window's values in ascending order. */

#define MAXQ 8

/* The lowest rank present above p (one exists: the caller's invariant). */
static inline Py_ssize_t next_present(const uint64_t *bits, Py_ssize_t p) {
    Py_ssize_t w = p >> 6;
    uint64_t x = bits[w] & ((uint64_t)-2 << (p & 63));
    while (x == 0)
        x = bits[++w];
    return (w << 6) + __builtin_ctzll(x);
}

/* The highest rank present below p (one exists). */
static inline Py_ssize_t prev_present(const uint64_t *bits, Py_ssize_t p) {
    Py_ssize_t w = p >> 6;
    uint64_t x = bits[w] & (((uint64_t)1 << (p & 63)) - 1);
    while (x == 0)
        x = bits[--w];
    return (w << 6) + 63 - __builtin_clzll(x);
}

/* The rank of the k-th smallest present (0-based k < count present): a scan, only when tracking (re)starts. */
static Py_ssize_t kth_present(const uint64_t *bits, Py_ssize_t k) {
    Py_ssize_t w = 0;
    for (;; w++) {
        const int c = __builtin_popcountll(bits[w]);
        if (k < c)
            break;
        k -= c;
    }
    uint64_t x = bits[w];
    while (k--)
        x &= x - 1;
    return (w << 6) + __builtin_ctzll(x);
}

/* rolling_quantiles(values, order, window, qs) -> tuple of float64 bytes, one per quantile in qs.
 * values: float64; order: int64, the argsort of values with NaNs last (numpy's). */
static PyObject *rolling_quantiles(PyObject *Py_UNUSED(m), PyObject *args) {
    Py_buffer bv, bo;
    long long window;
    PyObject *qs;
    if (!PyArg_ParseTuple(args, "y*y*LO!:rolling_quantiles", &bv, &bo, &window, &PyTuple_Type, &qs))
        return NULL;
    PyObject *out = NULL;
    int64_t *rank = NULL;
    double *sorted = NULL;
    uint64_t *bits = NULL;
    double q[MAXQ], frac[MAXQ];
    double *dst[MAXQ];
    Py_ssize_t stat_lo[MAXQ], stat_hi[MAXQ]; /* each quantile's s[k] and s[k+1] among the tracked statistics */
    Py_ssize_t want[2 * MAXQ], at[2 * MAXQ]; /* tracked statistics: which k, and its rank now */
    Py_ssize_t nstats = 0;
    const Py_ssize_t nq = PyTuple_GET_SIZE(qs);
    const Py_ssize_t n = bv.len / (Py_ssize_t)sizeof(double);
    if (bv.len % (Py_ssize_t)sizeof(double) != 0 || bo.len != n * (Py_ssize_t)sizeof(int64_t)) {
        PyErr_SetString(PyExc_ValueError, "rolling_quantiles: values (float64) and order (int64) of one length");
        goto done;
    }
    if (window < 1 || nq < 1 || nq > MAXQ) {
        PyErr_Format(PyExc_ValueError, "rolling_quantiles: window must be >= 1 (got %lld), and 1 to %d quantiles",
                     window, MAXQ);
        goto done;
    }
    for (Py_ssize_t j = 0; j < nq; j++) {
        q[j] = PyFloat_AsDouble(PyTuple_GET_ITEM(qs, j));
        if (q[j] == -1.0 && PyErr_Occurred())
            goto done;
        if (!(q[j] >= 0.0 && q[j] <= 1.0)) {
            PyErr_Format(PyExc_ValueError, "rolling_quantiles: quantile %R not in [0, 1]", PyTuple_GET_ITEM(qs, j));
            goto done;
        }
        const double pos = q[j] * (double)(window - 1);
        const Py_ssize_t k = (Py_ssize_t)pos;
        frac[j] = pos - (double)k; /* 0: s[k] itself, no interpolation */
        for (int hi = 0; hi < (frac[j] != 0.0 ? 2 : 1); hi++) {
            Py_ssize_t t = 0;
            while (t < nstats && want[t] != k + hi)
                t++;
            if (t == nstats)
                want[nstats++] = k + hi;
            if (hi)
                stat_hi[j] = t;
            else
                stat_lo[j] = stat_hi[j] = t;
        }
    }
    const double *v = bv.buf;
    const int64_t *order = bo.buf;
    out = PyTuple_New(nq);
    if (out == NULL)
        goto done;
    for (Py_ssize_t j = 0; j < nq; j++) {
        PyObject *b = PyBytes_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(double));
        if (b == NULL)
            goto fail;
        PyTuple_SET_ITEM(out, j, b);
        dst[j] = (double *)PyBytes_AS_STRING(b);
    }
    rank = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(int64_t));
    sorted = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(double));
    bits = PyMem_Calloc((size_t)(n / 64 + 1), sizeof(uint64_t));
    if (rank == NULL || sorted == NULL || bits == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        rank[i] = -1;
    Py_ssize_t m = 0; /* values that are not NaN: order[0..m) */
    for (Py_ssize_t k = 0; k < n; k++) {
        const int64_t i = order[k];
        if (i < 0 || i >= n || rank[i] != -1) { /* a permutation, or ranks would be missing */
            PyErr_SetString(PyExc_ValueError, "rolling_quantiles: order is not a permutation of the indexes");
            goto fail;
        }
        const double x = v[i];
        if (x != x) {
            rank[i] = -2; /* seen, never ranked */
            continue;
        }
        if (k != m || (m > 0 && x < sorted[m - 1])) {
            PyErr_SetString(PyExc_ValueError, "rolling_quantiles: order is not an ascending argsort with NaNs last");
            goto fail;
        }
        sorted[m] = x;
        rank[i] = m++;
    }
    Py_BEGIN_ALLOW_THREADS
    const double nan = Py_NAN;
    long long nans = 0;  /* NaNs in the window */
    int tracking = 0;    /* at[] holds the window's statistics (the window was full and NaN-free) */
    for (Py_ssize_t i = 0; i < n; i++) {
        /* in first, then out: the window holds window + 1 values in between, so every k stays valid */
        if (v[i] != v[i]) {
            nans++;
            tracking = 0;
        } else {
            const Py_ssize_t r = rank[i];
            bits[r >> 6] |= (uint64_t)1 << (r & 63);
            if (tracking)
                for (Py_ssize_t t = 0; t < nstats; t++)
                    if (r < at[t])
                        at[t] = prev_present(bits, at[t]);
        }
        if (i >= window) {
            const Py_ssize_t old = i - (Py_ssize_t)window;
            if (v[old] != v[old]) {
                nans--;
            } else {
                const Py_ssize_t r = rank[old];
                bits[r >> 6] &= ~((uint64_t)1 << (r & 63));
                if (tracking)
                    for (Py_ssize_t t = 0; t < nstats; t++)
                        if (r <= at[t])
                            at[t] = next_present(bits, at[t]);
            }
        }
        if (i + 1 < window || nans) {
            for (Py_ssize_t j = 0; j < nq; j++)
                dst[j][i] = nan;
            continue;
        }
        if (!tracking) {
            for (Py_ssize_t t = 0; t < nstats; t++)
                at[t] = kth_present(bits, want[t]);
            tracking = 1;
        }
        for (Py_ssize_t j = 0; j < nq; j++) {
            const double lo = sorted[at[stat_lo[j]]];
            dst[j][i] = frac[j] == 0.0 ? lo : lo + (sorted[at[stat_hi[j]]] - lo) * frac[j];
        }
    }
    Py_END_ALLOW_THREADS
    goto done;
fail:
    Py_CLEAR(out);
done:
    PyMem_Free(rank);
    PyMem_Free(sorted);
    PyMem_Free(bits);
    PyBuffer_Release(&bv);
    PyBuffer_Release(&bo);
    return out;
}

static PyMethodDef methods[] = {
    {"hysteresis", hysteresis, METH_VARARGS,
     "hysteresis(value, lower, upper, margin, min_dwell) -> (reading, regime) as int8 bytes (-1 unknown)."},
    {"rolling_quantiles", rolling_quantiles, METH_VARARGS,
     "rolling_quantiles(values, order, window, qs) -> float64 bytes per quantile (pandas' rolling quantile, "
     "min_periods=window, linear)."},
    {NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "tradetrace.engine._regimes",
                                    "Regime labels with hysteresis and minimum dwell, in one pass; rolling quantiles.", -1, methods};

PyMODINIT_FUNC PyInit__regimes(void) { return PyModule_Create(&module); }
