/* tuneloop.data._speedups: six per-row steps of the data stage and the copy of its split files, in C. Imported by
 * speedups.py, which holds the Python each function equals (the reference, used where this module was not built or
 * TUNELOOP_PURE_PYTHON is set); tests/unit/test_speedups.py compares the two on random input and a whole prepare
 * both ways. Built by `pip install -e .` (setuptools, optional: without a compiler the install goes on and the
 * Python runs).
 *
 * Why C: each step is a handful of C-speed calls already (translate, split, set intersection, slices, a regex), but
 * they make a Python object per word, line or stretch, a copy per line, or run the interpreter per message; here one
 * pass makes none of that (valgrind, the bench's fast job on 20k rows: 18.4% fewer instructions past imports).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define FILTER_BYTES 8192 /* a 65,536-bit map of word hashes, then the longest key's length (uint32) */

#define FNV_START 2166136261u /* FNV-1a, 32 bits: a word's hash for the filter */
#define FNV_PRIME 16777619u

static inline unsigned char lowered(unsigned char c) { return (c >= 'A' && c <= 'Z') ? c + 32 : c; }

/* byte -> itself if an ASCII letter (lowered in the second table), else 0: a word is a run of non-zeros */
static unsigned char LETTER[256], LETTER_LOWERED[256];

/* The bytes of an ASCII str or of a bytes-like object; 0 with an exception set otherwise. */
static int text_bytes(PyObject *obj, Py_buffer *view, const unsigned char **data, Py_ssize_t *len) {
    view->obj = NULL;
    if (PyUnicode_Check(obj)) {
        if (!PyUnicode_IS_ASCII(obj)) {
            PyErr_SetString(PyExc_ValueError, "text must be ASCII");
            return 0;
        }
        *data = PyUnicode_1BYTE_DATA(obj);
        *len = PyUnicode_GET_LENGTH(obj);
        return 1;
    }
    if (PyObject_GetBuffer(obj, view, PyBUF_SIMPLE) < 0)
        return 0;
    *data = view->buf;
    *len = view->len;
    return 1;
}

PyDoc_STRVAR(word_filter_doc,
"word_filter(keys) -> bytes\n\n"
"The filter word_hits needs for these keys (bytes objects): a map of their hashes and their longest length.");

static PyObject *word_filter(PyObject *self, PyObject *keys) {
    PyObject *out = PyBytes_FromStringAndSize(NULL, FILTER_BYTES + sizeof(uint32_t));
    if (!out)
        return NULL;
    unsigned char *bits = (unsigned char *)PyBytes_AS_STRING(out);
    memset(bits, 0, FILTER_BYTES);
    uint32_t longest = 0;
    PyObject *it = PyObject_GetIter(keys), *key;
    if (!it) {
        Py_DECREF(out);
        return NULL;
    }
    while ((key = PyIter_Next(it))) {
        if (!PyBytes_Check(key)) {
            PyErr_SetString(PyExc_TypeError, "keys must be bytes");
            Py_DECREF(key);
            break;
        }
        Py_ssize_t n = PyBytes_GET_SIZE(key);
        const unsigned char *k = (const unsigned char *)PyBytes_AS_STRING(key);
        uint32_t h = FNV_START;
        for (Py_ssize_t i = 0; i < n; i++)
            h = (h ^ k[i]) * FNV_PRIME;
        h &= 0xFFFF;
        bits[h >> 3] |= (unsigned char)(1u << (h & 7));
        if ((uint64_t)n > longest)
            longest = n > UINT32_MAX ? UINT32_MAX : (uint32_t)n;
        Py_DECREF(key);
    }
    Py_DECREF(it);
    if (PyErr_Occurred()) {
        Py_DECREF(out);
        return NULL;
    }
    memcpy(bits + FILTER_BYTES, &longest, sizeof longest);
    return out;
}

PyDoc_STRVAR(word_hits_doc,
"word_hits(text, keys, filter, lower) -> set\n\n"
"The [A-Za-z]+ runs of text (an ASCII str or bytes; with lower, lowered) that are in keys, a set of bytes:\n"
"keys.intersection(text.translate(letters table).split()) without a bytes object per word. filter is\n"
"word_filter(keys); a word it rules out is not looked up.");

static PyObject *word_hits(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "word_hits(text, keys, filter, lower) takes 4 arguments");
        return NULL;
    }
    PyObject *keys = args[1], *filter = args[2];
    if (!PyAnySet_Check(keys) || !PyBytes_Check(filter) ||
        PyBytes_GET_SIZE(filter) != FILTER_BYTES + (Py_ssize_t)sizeof(uint32_t)) {
        PyErr_SetString(PyExc_TypeError, "keys must be a set and filter word_filter(keys)");
        return NULL;
    }
    int lower = PyObject_IsTrue(args[3]);
    if (lower < 0)
        return NULL;
    Py_buffer view;
    const unsigned char *p;
    Py_ssize_t n;
    if (!text_bytes(args[0], &view, &p, &n))
        return NULL;
    const unsigned char *bits = (const unsigned char *)PyBytes_AS_STRING(filter);
    uint32_t longest;
    memcpy(&longest, bits + FILTER_BYTES, sizeof longest);
    const unsigned char *letter = lower ? LETTER_LOWERED : LETTER; /* a letter as read, 0 for a separator */
    PyObject *hits = PySet_New(NULL);
    Py_ssize_t i = 0;
    while (hits && i < n) {
        unsigned char c = letter[p[i++]];
        if (!c)
            continue;
        Py_ssize_t start = i - 1;
        uint32_t h = FNV_START;
        do
            h = (h ^ c) * FNV_PRIME;
        while (i < n && (c = letter[p[i++]]));
        Py_ssize_t len = (c ? i : i - 1) - start;
        h &= 0xFFFF;
        if ((uint64_t)len > longest || !(bits[h >> 3] & (1u << (h & 7))))
            continue;
        PyObject *word = PyBytes_FromStringAndSize(NULL, len);
        if (!word) {
            Py_CLEAR(hits);
            break;
        }
        unsigned char *w = (unsigned char *)PyBytes_AS_STRING(word);
        for (Py_ssize_t j = 0; j < len; j++)
            w[j] = letter[p[start + j]];
        int found = PySet_Contains(keys, word);
        if (found < 0 || (found && PySet_Add(hits, word) < 0))
            Py_CLEAR(hits);
        Py_DECREF(word);
    }
    if (view.obj)
        PyBuffer_Release(&view);
    return hits;
}

/* the characters str.split() and casefold() see as whitespace in ASCII: \t \n \v \f \r, \x1c-\x1f and space */
static inline int is_fold_space(unsigned char c) {
    return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f);
}

#define FOLD_SPACE 0xFF        /* (no ASCII character) */
static unsigned char FOLD[256]; /* ASCII byte -> FOLD_SPACE if whitespace, else itself lowered */

PyDoc_STRVAR(ascii_key_doc,
"ascii_key(text) -> int\n\n"
"hash(\" \".join(text.lower().split()).encode()) for ASCII text: one pass, one bytes object.");

static PyObject *ascii_key(PyObject *self, PyObject *text) {
    if (!PyUnicode_Check(text) || !PyUnicode_IS_ASCII(text)) {
        PyErr_SetString(PyExc_ValueError, "ascii_key takes an ASCII str");
        return NULL;
    }
    const unsigned char *p = PyUnicode_1BYTE_DATA(text);
    Py_ssize_t n = PyUnicode_GET_LENGTH(text), k = 0;
    unsigned char small[1024], *out = n <= (Py_ssize_t)sizeof small ? small : PyMem_Malloc(n);
    if (!out)
        return PyErr_NoMemory();
    /* most texts have single whitespace between words and none at the ends: then each character maps on its own
     * (whitespace to a space), with no branch or dependency from one to the next (~0.6 -> ~0.25 us a tweet row); a
     * run of whitespace found on the way sends the text to the general loop */
    int runs = 0, prev = 1; /* (whitespace "before" the start: a leading one is a run too) */
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = FOLD[p[i]];
        int sp = c == FOLD_SPACE;
        out[i] = sp ? ' ' : c;
        runs |= sp & prev;
        prev = sp;
    }
    k = n;
    if (runs || prev) { /* (prev: trailing whitespace, or an empty text) */
        int space = 0;
        for (Py_ssize_t i = k = 0; i < n; i++) {
            unsigned char c = FOLD[p[i]];
            if (c == FOLD_SPACE) {
                space = k > 0; /* (leading whitespace is dropped, trailing never written) */
                continue;
            }
            if (space) {
                out[k++] = ' ';
                space = 0;
            }
            out[k++] = c;
        }
    }
    /* the hash a bytes object of them would have, without making one */
#if PY_VERSION_HEX >= 0x030E0000
    Py_hash_t h = Py_HashBuffer(out, k);
#else
    Py_hash_t h = _Py_HashBytes(out, k);
#endif
    if (out != small)
        PyMem_Free(out);
    return PyLong_FromSsize_t(h);
}

PyDoc_STRVAR(digit_run_doc,
"digit_run(data, n) -> bool\n\n"
"Whether the bytes hold n or more ASCII digits in a row.");

static PyObject *digit_run(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "digit_run(data, n) takes 2 arguments");
        return NULL;
    }
    Py_ssize_t want = PyNumber_AsSsize_t(args[1], NULL); /* (an int past the range: clipped, as it can never be met) */
    if (want == -1 && PyErr_Occurred())
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const unsigned char *p = view.buf;
    int found = want <= 0;
    /* A run of `want` starting at `start` holds p[start + want - 1]: a non-digit there rules out every start up to
     * it, so the test strides `want` bytes at a time and looks back only from a digit (each byte read at most
     * twice; a tweet line's ~300 bytes take ~20 reads instead of 300: ~0.12 us a line with the call) */
    for (Py_ssize_t start = 0; !found && want <= view.len - start;) {
        Py_ssize_t j = start + want - 1;
        while (j >= start && p[j] >= '0' && p[j] <= '9')
            j--;
        if (j < start)
            found = 1;
        else
            start = j + 1; /* (the digits after j are too few so far: they start the next window) */
    }
    PyBuffer_Release(&view);
    return PyBool_FromLong(found);
}

/* --- the plain chat row: prepare._plain_chat's loop over its messages ------------------------------------------ */

static PyObject *KEY_ROLE, *KEY_CONTENT, *NEWLINE; /* interned "role", "content"; "\n" */

/* clean_text's first branch: printable ASCII without "&" (or with repair off) is its spaces collapsed and its ends
 * stripped (str.split + join / strip: printable ASCII has no other whitespace). 1 with *out set, 0 where that
 * branch does not apply, -1 on error. */
static int clean_printable_ascii(PyObject *s, int repair, PyObject **out) {
    if (!PyUnicode_IS_ASCII(s))
        return 0;
    const unsigned char *p = PyUnicode_1BYTE_DATA(s);
    Py_ssize_t n = PyUnicode_GET_LENGTH(s), a = 0, b = n;
    int doubles = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = p[i];
        if (c < 0x20 || c > 0x7e || (c == '&' && repair))
            return 0;
        doubles |= c == ' ' && i + 1 < n && p[i + 1] == ' ';
    }
    while (a < b && p[a] == ' ')
        a++;
    while (b > a && p[b - 1] == ' ')
        b--;
    if (!doubles) {
        *out = PyUnicode_Substring(s, a, b); /* (s itself when nothing is stripped) */
        return *out ? 1 : -1;
    }
    unsigned char small[1024], *buf = b - a <= (Py_ssize_t)sizeof small ? small : PyMem_Malloc(b - a);
    if (!buf) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t k = 0;
    for (Py_ssize_t i = a; i < b; i++)
        if (p[i] != ' ' || p[i - 1] != ' ') /* (i > a whenever p[i] is a space: the ends are stripped) */
            buf[k++] = p[i];
    *out = PyUnicode_FromKindAndData(PyUnicode_1BYTE_KIND, k ? buf : (const unsigned char *)"", k);
    if (buf != small)
        PyMem_Free(buf);
    return *out ? 1 : -1;
}

/* str.isspace() (False for "") */
static int is_space(PyObject *s) {
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    int kind = PyUnicode_KIND(s);
    const void *data = PyUnicode_DATA(s);
    for (Py_ssize_t i = 0; i < n; i++)
        if (!Py_UNICODE_ISSPACE(PyUnicode_READ(kind, data, i)))
            return 0;
    return n > 0;
}

/* validate.valid_utf8: no lone surrogate (only 2- and 4-byte kinds can hold one) */
static int no_surrogate(PyObject *s) {
    int kind = PyUnicode_KIND(s);
    if (kind == PyUnicode_1BYTE_KIND)
        return 1;
    const void *data = PyUnicode_DATA(s);
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (c >= 0xD800 && c <= 0xDFFF)
            return 0;
    }
    return 1;
}

PyDoc_STRVAR(plain_messages_doc,
"plain_messages(msgs, roles, clean, repair) -> (turns, roles, trained) | None\n\n"
"speedups.py_plain_messages: each message a dict of exactly role and content, the role (a str) in roles, the\n"
"content a str neither empty, blank nor holding a lone surrogate, and clean(content, False, False, repair)\n"
"not empty; printable ASCII is cleaned here as clean_text's first branch does it. Returns copies of the\n"
"messages with the cleaned contents, the roles as a tuple and the non-system contents joined by newlines;\n"
"None for any other list.");

static PyObject *plain_messages(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 || !PyList_Check(args[0]) || !PyAnySet_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "plain_messages(msgs: list, roles: set, clean, repair)");
        return NULL;
    }
    PyObject *msgs = args[0], *roles = args[1], *clean = args[2];
    int repair = PyObject_IsTrue(args[3]);
    if (repair < 0)
        return NULL;
    PyObject *turns = PyList_New(0), *seen = PyList_New(0), *trained = PyList_New(0), *result = NULL;
    if (!turns || !seen || !trained)
        goto done;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(msgs); i++) { /* (the size read each time: clean may run Python) */
        PyObject *m = PyList_GET_ITEM(msgs, i);
        if (!PyDict_CheckExact(m) || PyDict_GET_SIZE(m) != 2)
            goto plain_not;
        /* strong references: a role's __eq__ in the set, clean or the text's __bool__ may run Python that
         * changes the message */
        Py_INCREF(m);
        PyObject *role = PyDict_GetItemWithError(m, KEY_ROLE);
        Py_XINCREF(role);
        PyObject *content = role ? PyDict_GetItemWithError(m, KEY_CONTENT) : NULL;
        Py_XINCREF(content);
        PyObject *text = NULL, *turn = NULL;
        int ok = role && content && PyUnicode_CheckExact(role) && PyUnicode_CheckExact(content);
        if (ok)
            ok = PySet_Contains(roles, role); /* (-1: an error, caught below) */
        ok = ok > 0 && !is_space(content) && PyUnicode_GET_LENGTH(content) > 0 && no_surrogate(content);
        int fast = ok ? clean_printable_ascii(content, repair, &text) : 0;
        if (ok && fast == 0)
            text = PyObject_CallFunctionObjArgs(clean, content, Py_False, Py_False, repair ? Py_True : Py_False, NULL);
        int bad = PyErr_Occurred() != NULL;
        if (ok && !bad) {
            int empty = text ? PyObject_Not(text) : -1;
            bad = empty < 0;
            ok = empty == 0;
        }
        if (ok && !bad) {
            turn = PyDict_Copy(m); /* (the file's key order, as the general path's copy keeps it) */
            bad = !turn || PyDict_SetItem(turn, KEY_CONTENT, text) < 0 || PyList_Append(turns, turn) < 0 ||
                  PyList_Append(seen, role) < 0 ||
                  (PyUnicode_CompareWithASCIIString(role, "system") != 0 && PyList_Append(trained, text) < 0);
        }
        Py_XDECREF(turn);
        Py_XDECREF(text);
        Py_XDECREF(content);
        Py_XDECREF(role);
        Py_DECREF(m);
        if (bad)
            goto done;
        if (!ok)
            goto plain_not;
    }
    {
        PyObject *roles_seen = PyList_AsTuple(seen), *joined = roles_seen ? PyUnicode_Join(NEWLINE, trained) : NULL;
        if (joined)
            result = PyTuple_Pack(3, turns, roles_seen, joined);
        Py_XDECREF(roles_seen);
        Py_XDECREF(joined);
    }
    goto done;
plain_not:
    result = Py_NewRef(Py_None);
done:
    Py_XDECREF(turns);
    Py_XDECREF(seen);
    Py_XDECREF(trained);
    return result;
}

/* --- the split files: spooled lines copied out in a row order ---------------------------------------------------- */

PyDoc_STRVAR(gather_doc,
"gather(data, offsets, end, ids, lo, hi) -> bytes\n\n"
"b\"\".join(data[offsets[i]:(offsets[i + 1] if i + 1 < len(offsets) else end)] for i in ids[lo:hi]): the\n"
"spooled lines of rows ids[lo:hi] in that order, in one allocation (no bytes object per line). offsets is an\n"
"int64 array (array('q')), ids a list of ints; a row outside offsets or a line outside data is a ValueError.");

static PyObject *gather(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6 || !PyList_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "gather(data, offsets, end, ids: list, lo, hi)");
        return NULL;
    }
    Py_ssize_t end = PyLong_AsSsize_t(args[2]), lo = PyNumber_AsSsize_t(args[4], NULL),
               hi = PyNumber_AsSsize_t(args[5], NULL);
    if (PyErr_Occurred())
        return NULL;
    PyObject *ids = args[3], *out = NULL;
    Py_buffer data, offs;
    if (PyObject_GetBuffer(args[0], &data, PyBUF_SIMPLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[1], &offs, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&data);
        return NULL;
    }
    if (offs.itemsize != 8 || !offs.format || (strcmp(offs.format, "q") && strcmp(offs.format, "l"))) {
        PyErr_SetString(PyExc_TypeError, "offsets must be an int64 array");
        goto done;
    }
    const int64_t *off = offs.buf;
    Py_ssize_t rows = offs.len / 8, n = PyList_GET_SIZE(ids), total = 0;
    lo = lo < 0 ? 0 : lo > n ? n : lo;
    hi = hi < lo ? lo : hi > n ? n : hi;
    for (int pass = 0; pass < 2; pass++) { /* sizes and checks, then the copy */
        Py_ssize_t pos = 0;
        for (Py_ssize_t k = lo; k < hi; k++) {
            Py_ssize_t i = PyLong_AsSsize_t(PyList_GET_ITEM(ids, k));
            if (i == -1 && PyErr_Occurred())
                goto fail;
            int64_t a = -1, b = -1;
            if (i >= 0 && i < rows) {
                a = off[i];
                b = i + 1 < rows ? off[i + 1] : end;
            }
            if (a < 0 || a > b || b > data.len) {
                PyErr_Format(PyExc_ValueError, "row %zd is outside the spool's offsets or bytes", i);
                goto fail;
            }
            if (pass)
                memcpy(PyBytes_AS_STRING(out) + pos, (const char *)data.buf + a, b - a);
            pos += b - a;
        }
        total = pos;
        if (!pass && !(out = PyBytes_FromStringAndSize(NULL, total)))
            goto done;
    }
    goto done;
fail:
    Py_CLEAR(out);
done:
    PyBuffer_Release(&offs);
    PyBuffer_Release(&data);
    return out;
}

/* --- the small skeleton's cut (mojibake.small_skeleton) ------------------------------------------------------------ */

PyDoc_STRVAR(small_cut_doc,
"small_cut(text, after, before, wild_after, wild_before, classes, consumable, separators) -> (str, list, str) | None\n\n"
"speedups.py_small_cut: the line with each ASCII stretch (two or more of \\t \\n \\r and printable ASCII) cut\n"
"down to what ftfy's patterns read past the characters beside it, the kept ASCII written by class, the first\n"
"separator the line does not hold in each cut; the cut stretches; that separator. None for a line holding\n"
"\"\\r\\n\", every separator, another control character, or nothing to cut. after, before: dicts {character:\n"
"read}; classes: a 128-character ASCII str (each code's class); consumable, separators: ASCII.");

typedef struct {
    Py_ssize_t start, end, cons, head, tail; /* a stretch, its consumable lead (cut along), kept head and tail */
} Cut;

/* what a pattern reads past ch (map[ch], else wild); -1 with an exception set */
static Py_ssize_t read_past(PyObject *map, Py_UCS4 ch, Py_ssize_t wild) {
    PyObject *key = PyUnicode_FromOrdinal(ch); /* (below U+0100 a cached object: no allocation) */
    if (!key)
        return -1;
    PyObject *value = PyDict_GetItemWithError(map, key); /* (exact str keys: no Python code runs) */
    Py_DECREF(key);
    if (!value)
        return PyErr_Occurred() ? -1 : wild;
    Py_ssize_t n = PyLong_AsSsize_t(value);
    if (n < 0 && !PyErr_Occurred())
        PyErr_SetString(PyExc_ValueError, "a read is negative");
    return n;
}

static inline int is_stretch_char(Py_UCS4 c) { return (c >= 0x20 && c < 0x7F) || c == '\t' || c == '\n' || c == '\r'; }

static PyObject *small_cut(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 8 || !PyUnicode_Check(args[0]) || !PyDict_Check(args[1]) || !PyDict_Check(args[2]) ||
        !PyUnicode_Check(args[5]) || !PyUnicode_IS_ASCII(args[5]) || PyUnicode_GET_LENGTH(args[5]) != 128 ||
        !PyUnicode_Check(args[6]) || !PyUnicode_IS_ASCII(args[6]) || !PyUnicode_Check(args[7]) ||
        !PyUnicode_IS_ASCII(args[7])) {
        PyErr_SetString(PyExc_TypeError, "small_cut(text: str, after: dict, before: dict, wild_after: int, "
                                         "wild_before: int, classes: 128 ASCII characters, consumable: ASCII str, "
                                         "separators: ASCII str)");
        return NULL;
    }
    PyObject *text = args[0], *after = args[1], *before = args[2];
    Py_ssize_t wild_after = PyNumber_AsSsize_t(args[3], PyExc_OverflowError),
               wild_before = PyNumber_AsSsize_t(args[4], PyExc_OverflowError);
    if (PyErr_Occurred())
        return NULL;
    const unsigned char *classes = PyUnicode_1BYTE_DATA(args[5]), *cons_chars = PyUnicode_1BYTE_DATA(args[6]);
    unsigned char consumable[128] = {0};
    for (Py_ssize_t k = 0; k < PyUnicode_GET_LENGTH(args[6]); k++)
        consumable[cons_chars[k]] = 1;
    unsigned char seen[128] = {0}; /* the ASCII characters of the line, for the separator */
    const int kind = PyUnicode_KIND(text);
    const void *data = PyUnicode_DATA(text);
    const Py_ssize_t len = PyUnicode_GET_LENGTH(text);

    Cut stack[32], *cuts = stack; /* (tweet lines have a few; longer lines grow it on the heap) */
    Py_ssize_t ncuts = 0, cap = 32;
    PyObject *result = NULL, *skeleton = NULL, *stretches = NULL;
    for (Py_ssize_t i = 0; i < len;) {
        Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (c >= 0x80) {
            i++;
            continue;
        }
        if (!is_stretch_char(c)) { /* a control character a fixer acts on: the line is not cut */
            result = Py_NewRef(Py_None);
            goto done;
        }
        Py_ssize_t start = i, end = i + 1;
        seen[c] = 1;
        while (end < len && (c = PyUnicode_READ(kind, data, end)) < 0x80 && is_stretch_char(c)) {
            if (c == '\n' && seen['\r'] && PyUnicode_READ(kind, data, end - 1) == '\r') {
                result = Py_NewRef(Py_None); /* "\r\n": a cut could fall between the two */
                goto done;
            }
            seen[c] = 1;
            end++;
        }
        i = end;
        Py_ssize_t n = end - start, lead = 0, trail = 0, head = 0, tail = 0;
        if (n < 2)
            continue;
        while (lead < n && consumable[PyUnicode_READ(kind, data, start + lead)])
            lead++;
        while (trail < n && consumable[PyUnicode_READ(kind, data, end - 1 - trail)])
            trail++;
        if (start) { /* the characters before and after a stretch are non-ASCII */
            if ((head = read_past(after, PyUnicode_READ(kind, data, start - 1), wild_after)) < 0)
                goto done;
            head = head > lead + 1 ? head : lead + 1;
        }
        if (end < len) {
            if ((tail = read_past(before, PyUnicode_READ(kind, data, end), wild_before)) < 0)
                goto done;
            tail = tail > trail + 1 ? tail : trail + 1;
        }
        if (head + tail >= n)
            continue;
        if (ncuts == cap) {
            Cut *grown = PyMem_Malloc(2 * cap * sizeof(Cut));
            if (!grown) {
                PyErr_NoMemory();
                goto done;
            }
            memcpy(grown, cuts, ncuts * sizeof(Cut));
            if (cuts != stack)
                PyMem_Free(cuts);
            cuts = grown;
            cap *= 2;
        }
        cuts[ncuts++] = (Cut){start, end, start ? lead : 0, head, tail};
    }
    const unsigned char *separators = PyUnicode_1BYTE_DATA(args[7]), *sep = separators;
    while (sep < separators + PyUnicode_GET_LENGTH(args[7]) && seen[*sep])
        sep++;
    if (!ncuts || sep == separators + PyUnicode_GET_LENGTH(args[7])) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    Py_ssize_t total = 0, pos = 0;
    for (Py_ssize_t k = 0; k < ncuts; k++) {
        total += cuts[k].start + cuts[k].head - pos + 1 + cuts[k].tail; /* kept text, kept head, sep, kept tail */
        pos = cuts[k].end;
    }
    total += len - pos;
    /* every non-ASCII character is kept (only ASCII is cut), so the text's kind is the skeleton's */
    if (!(skeleton = PyUnicode_New(total, PyUnicode_MAX_CHAR_VALUE(text))) || !(stretches = PyList_New(ncuts)))
        goto done;
    char *out = PyUnicode_DATA(skeleton);
    Py_ssize_t o = 0;
    pos = 0;
    for (Py_ssize_t k = 0; k < ncuts; k++) {
        Cut *cut = &cuts[k];
        Py_ssize_t kept = cut->start + cut->cons - pos;
        memcpy(out + o * kind, (const char *)data + pos * kind, kept * kind);
        o += kept;
        for (Py_ssize_t j = cut->start + cut->cons; j < cut->start + cut->head; j++)
            PyUnicode_WRITE(kind, out, o++, classes[PyUnicode_READ(kind, data, j)]);
        PyUnicode_WRITE(kind, out, o++, *sep);
        for (Py_ssize_t j = cut->end - cut->tail; j < cut->end; j++)
            PyUnicode_WRITE(kind, out, o++, classes[PyUnicode_READ(kind, data, j)]);
        PyObject *stretch = PyUnicode_Substring(text, cut->start + cut->cons, cut->end);
        if (!stretch)
            goto done;
        PyList_SET_ITEM(stretches, k, stretch);
        pos = cut->end;
    }
    memcpy(out + o * kind, (const char *)data + pos * kind, (len - pos) * kind);
    result = Py_BuildValue("OOC", skeleton, stretches, (int)*sep);
done:
    Py_XDECREF(skeleton);
    Py_XDECREF(stretches);
    if (cuts != stack)
        PyMem_Free(cuts);
    return result;
}

PyDoc_STRVAR(put_back_doc,
"put_back(inner, cuts, cr) -> str\n\n"
"speedups.py_put_back: a line from its skeleton's repair, the repaired pieces (a list of str) with the cut\n"
"stretches (a list of str) between them, each \"\\r\" of those made \"\\n\" where cr is true.");

static PyObject *EMPTY, *CR; /* "", "\r" (NEWLINE: "\n") */

static PyObject *put_back(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyList_Check(args[0]) || !PyList_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "put_back(inner: list, cuts: list, cr)");
        return NULL;
    }
    PyObject *inner = args[0], *cuts = args[1];
    int cr = PyObject_IsTrue(args[2]);
    if (cr < 0)
        return NULL;
    if (!PyList_GET_SIZE(inner)) {
        PyErr_SetString(PyExc_IndexError, "no repaired piece");
        return NULL;
    }
    Py_ssize_t k = PyList_GET_SIZE(inner) - 1;
    k = k < PyList_GET_SIZE(cuts) ? k : PyList_GET_SIZE(cuts);
    PyObject *parts = PyList_New(1 + 2 * k), *result = NULL;
    if (!parts)
        return NULL;
    PyList_SET_ITEM(parts, 0, Py_NewRef(PyList_GET_ITEM(inner, 0)));
    for (Py_ssize_t j = 0; j < k; j++) {
        PyObject *stretch = PyList_GET_ITEM(cuts, j);
        stretch = cr ? PyUnicode_Replace(stretch, CR, NEWLINE, -1) : Py_NewRef(stretch);
        if (!stretch)
            goto done;
        PyList_SET_ITEM(parts, 1 + 2 * j, stretch);
        PyList_SET_ITEM(parts, 2 + 2 * j, Py_NewRef(PyList_GET_ITEM(inner, j + 1)));
    }
    result = PyUnicode_Join(EMPTY, parts);
done:
    Py_DECREF(parts);
    return result;
}

static PyMethodDef methods[] = {
    {"word_filter", word_filter, METH_O, word_filter_doc},
    {"word_hits", (PyCFunction)(void (*)(void))word_hits, METH_FASTCALL, word_hits_doc},
    {"ascii_key", ascii_key, METH_O, ascii_key_doc},
    {"digit_run", (PyCFunction)(void (*)(void))digit_run, METH_FASTCALL, digit_run_doc},
    {"plain_messages", (PyCFunction)(void (*)(void))plain_messages, METH_FASTCALL, plain_messages_doc},
    {"gather", (PyCFunction)(void (*)(void))gather, METH_FASTCALL, gather_doc},
    {"small_cut", (PyCFunction)(void (*)(void))small_cut, METH_FASTCALL, small_cut_doc},
    {"put_back", (PyCFunction)(void (*)(void))put_back, METH_FASTCALL, put_back_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_speedups", NULL, -1, methods};

PyMODINIT_FUNC PyInit__speedups(void) {
    for (int c = 0; c < 256; c++) {
        int letter = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
        LETTER[c] = letter ? c : 0;
        LETTER_LOWERED[c] = letter ? lowered(c) : 0;
        FOLD[c] = is_fold_space(c) ? FOLD_SPACE : lowered(c);
    }
    KEY_ROLE = PyUnicode_InternFromString("role");
    KEY_CONTENT = PyUnicode_InternFromString("content");
    NEWLINE = PyUnicode_FromString("\n");
    EMPTY = PyUnicode_FromString("");
    CR = PyUnicode_FromString("\r");
    if (!KEY_ROLE || !KEY_CONTENT || !NEWLINE || !EMPTY || !CR)
        return NULL;
    return PyModule_Create(&module);
}
