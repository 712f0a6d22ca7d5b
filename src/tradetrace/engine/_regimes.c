/* Regime labels with hysteresis and minimum dwell, in one pass (engine/classifiers.py).
 *
 * Why C: the pass is path-dependent (each label depends on the previous one), so it cannot be
 * vectorized, and in Python it took 0.25 s per 1M bars, a third of a 1M-bar run's engine time.
 * Same arithmetic as the reference loop in tests/engine/test_classifiers.py, which checks it:
 * - a NaN value or band edge keeps the previous reading and regime;
 * - with no reading yet: below lower -> 0, above upper -> 2, else 1;
 * - from 2 (high): stay while value >= upper*(1-margin), else 0 if below lower*(1-margin), else 1;
 * - from 0 (low): stay while value <= lower*(1+margin), else 2 if above upper*(1+margin), else 1;
 * - from 1: 2 if above upper*(1+margin), 0 if below lower*(1-margin), else 1;
 * - the regime takes a new reading once it has held for min_dwell rows (the first reading at once).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

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
            nw = x >= u * below ? 2 : (x < l * below ? 0 : 1);
        else if (r == 0)
            nw = x <= l * above ? 0 : (x > u * above ? 2 : 1);
        else
            nw = x > u * above ? 2 : (x < l * below ? 0 : 1);
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

static PyMethodDef methods[] = {
    {"hysteresis", hysteresis, METH_VARARGS,
     "hysteresis(value, lower, upper, margin, min_dwell) -> (reading, regime) as int8 bytes (-1 unknown)."},
    {NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "tradetrace.engine._regimes",
                                    "Regime labels with hysteresis and minimum dwell, in one pass.", -1, methods};

PyMODINIT_FUNC PyInit__regimes(void) { return PyModule_Create(&module); }
