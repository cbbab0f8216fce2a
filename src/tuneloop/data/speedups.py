"""Six per-row steps of the data stage and the copy of its split files, in C where `_speedups.c` was built, else
in the Python here.

    from tuneloop.data.speedups import NATIVE, word_hits, ascii_key, digit_run, plain_messages, small_cut, put_back
    TUNELOOP_PURE_PYTHON=1 tuneloop data prepare ...     # the Python below even where the C is built

The Python functions are the reference: the C ones return the same (tests/unit/test_speedups.py compares them
on random input) without a Python object per word, line or stretch, a copy per line or the interpreter's work
per message. `pip install -e .` builds the C where a compiler and the Python headers are (setuptools, marked
optional: elsewhere the install goes on without it). On the data bench's fast job the Python of these steps
takes ~1.2x the CPU of the C (bench/data_prep.py runs it both ways; valgrind: 18.4% fewer instructions with
the C).
"""

from __future__ import annotations

import os
import re

from tuneloop.data.validate import valid_utf8

_LETTERS = bytes(b if 65 <= b <= 90 or 97 <= b <= 122 else 32 for b in range(256))  # non-letters -> " "
_LETTERS_LOWER = bytes(b + 32 if 65 <= b <= 90 else b if 97 <= b <= 122 else 32 for b in range(256))
# ASCII as casefold() + str.split() see it: letters lowered, whitespace (\t \n \v \f \r, the four separators
# \x1c-\x1f) -> " "
_FOLD_ASCII = bytes(32 if b in b"\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f" else b + 32 if 65 <= b <= 90 else b
                   for b in range(256))
_DIGITS_TO_9 = bytes(57 if 48 <= b <= 57 else b for b in range(256))
# an ASCII stretch of two or more characters (the line's ASCII between non-ASCII ones), or a control character a
# fixer acts on (all ASCII but \t \n \r and printable); one scan for both
_STRETCH_OR_OFF = re.compile(r"[\t\n\r -~][\t\n\r -~]+|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def py_word_filter(keys) -> None:
    """The Python word_hits needs no filter."""
    return None


def py_word_hits(text: str | bytes, keys: frozenset, filt: bytes | None, lower: bool) -> frozenset:
    """The [A-Za-z]+ runs of text (an ASCII str or bytes; with `lower`, lowered) that are in keys: a bytes
    translate makes every other byte a space (a multi-byte character's bytes are >= 0x80, so they separate words
    as they do in the regex [A-Za-z]+), split() gives the words, the intersection runs at C speed."""
    raw = text.encode("ascii") if isinstance(text, str) else text
    return keys.intersection(raw.translate(_LETTERS_LOWER if lower else _LETTERS).split())


def py_ascii_key(text: str) -> int:
    """hash(" ".join(text.lower().split()).encode()) for ASCII text: whitespace translated to spaces with the
    letters lowered (on ASCII, casefold() is lower()), runs of spaces halved until single (cleaned text has none
    longer than two), the ends stripped."""
    b = text.encode("ascii").translate(_FOLD_ASCII)
    while b"  " in b:
        b = b.replace(b"  ", b" ")
    return hash(b.strip(b" "))


def py_digit_run(data: bytes, n: int) -> bool:
    """Whether the bytes hold n or more ASCII digits in a row: a deleting translate counts the digits (~0.4 us a
    tweet line), and only a line with n of them is translated again, every digit a "9", and searched."""
    return len(data) - len(data.translate(None, b"0123456789")) >= n and b"9" * n in data.translate(_DIGITS_TO_9)


def py_plain_messages(msgs: list, roles: set, clean, repair: bool) -> tuple[list, tuple, str] | None:
    """A plain chat row's messages, checked and cleaned in one loop (prepare._plain_chat): each a dict of exactly
    role and content, the role a str in roles, the content a str neither empty, blank nor holding a lone
    surrogate, and clean(content, False, False, repair) (clean_text) not empty. Returns copies of the messages
    with the cleaned contents (the file's key order), the roles and the non-system contents joined by newlines;
    None for any other list (the general path then decides). The C does clean_text's first branch (printable
    ASCII) itself, so `clean` is clean_text there."""
    turns, seen, trained = [], [], []
    for m in msgs:
        if type(m) is not dict or len(m) != 2:
            return None
        role, content = m.get("role"), m.get("content")
        if type(role) is not str or role not in roles or type(content) is not str or not content \
                or content.isspace() or not valid_utf8(content):
            return None
        text = clean(content, False, False, repair)
        if not text:
            return None
        turn = dict(m)
        turn["content"] = text
        turns.append(turn)
        seen.append(role)
        if role != "system":
            trained.append(text)
    return turns, tuple(seen), "\n".join(trained)


def py_gather(data: bytes, offsets, end: int, ids: list, lo: int, hi: int) -> bytes:
    """The spooled lines of rows ids[lo:hi], in that order, as one bytes: row i is data[offsets[i]:offsets[i + 1]]
    (to `end` for the last row); offsets is the spool's int64 array. (The C makes no bytes object per line and
    raises ValueError for a row outside offsets or a line outside data, which slicing would clip.)"""
    n = len(offsets)
    return b"".join([data[offsets[i]:offsets[i + 1] if i + 1 < n else end] for i in ids[lo:hi]])


def py_small_cut(text: str, after: dict, before: dict, wild_after: int, wild_before: int, classes: str,
                 consumable: str, separators: str) -> tuple[str, list, str] | None:
    """The cut of mojibake.small_skeleton: each ASCII stretch of the line (two or more of \\t \\n \\r and printable
    ASCII, between non-ASCII characters) keeps after the character before it its consumable characters and one
    more, or after[that character] (else wild_after) if more, and before the character after it likewise from
    `before`; a stretch longer than both is cut: its consumable lead stays as it is, the kept head and tail are
    written by class (classes[code]) with a separator between them: the first of `separators` the line does not
    hold. Returns (the cut line, the cut stretches past their leads, the separator), or None when the line holds
    "\\r\\n" (a cut could fall between the two), every separator, another control character, or nothing is cut.
    (The C makes no match object, slice or translated copy per stretch: ~1.2 us a tweet line instead of ~5.)"""
    sep = next((s for s in separators if s not in text), None)
    if sep is None or "\r\n" in text:
        return None
    out, cuts, pos, end_of_text = [], [], 0, len(text)
    for part in _STRETCH_OR_OFF.finditer(text):
        start, end = part.span()
        n = end - start
        if n == 1:
            return None  # a control character
        a = part.group()
        lead = n - len(a.lstrip(consumable))
        keep_head = max(lead + 1, after.get(text[start - 1], wild_after)) if start else 0
        keep_tail = max(n - len(a.rstrip(consumable)) + 1, before.get(text[end], wild_before)) \
            if end < end_of_text else 0
        if keep_head + keep_tail < n:
            cons = lead if start else 0
            out += (text[pos:start + cons], a[cons:keep_head].translate(classes), sep,
                    a[n - keep_tail:].translate(classes))
            cuts.append(a[cons:])
            pos = end
    if not cuts:
        return None
    out.append(text[pos:])
    return "".join(out), cuts, sep


def py_put_back(inner: list, cuts: list, cr: bool) -> str:
    """The line from a skeleton's repair (mojibake.fix_segment): the repaired pieces with the cut stretches between
    them as they were, or with `cr` (the line holds "\\r": fix_line_breaks makes each "\\n") with their "\\r" made
    "\\n"."""
    out = [inner[0]]
    for stretch, piece in zip(cuts, inner[1:]):
        out += (stretch.replace("\r", "\n") if cr else stretch, piece)
    return "".join(out)


try:
    if os.environ.get("TUNELOOP_PURE_PYTHON"):
        raise ImportError("TUNELOOP_PURE_PYTHON is set")
    from tuneloop.data._speedups import ascii_key, digit_run, gather, plain_messages, put_back, small_cut, \
        word_filter, word_hits

    NATIVE = True
except ImportError:
    word_filter, word_hits, ascii_key, digit_run = py_word_filter, py_word_hits, py_ascii_key, py_digit_run
    plain_messages, gather, small_cut, put_back = py_plain_messages, py_gather, py_small_cut, py_put_back
    NATIVE = False
