"""The data stage's C steps (tuneloop/data/_speedups.c) equal their Python references (speedups.py).

    pytest tests/unit/test_speedups.py

`make setup` builds the C (gcc and the Python headers are on every machine this project runs on), so these
tests fail, not skip, where it is missing: a missing build would otherwise pass unseen as a slower stage.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from array import array
from itertools import accumulate
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tuneloop.data import _speedups as C
from tuneloop.data import audit, speedups
from tuneloop.data.clean import clean_text
from tuneloop.data.validate import ROLES

from .test_data_fastpaths import _chat_rows

# bytes and characters the steps treat differently: letters of both cases and their neighbours in ASCII, every
# whitespace class, digits, NUL/DEL, and UTF-8 lead/continuation bytes (>= 0x80 separate words)
ASCII_PARTS = ["a", "Z", "m", "@", "[", "`", "{", " ", "  ", "\t", "\n", "\x0b", "\x0c", "\r", "\x1c", "\x1f", "\x00",
               "\x7f", "0", "9", "/", ":", "he", "She", "HIS", "man", "Bill", "bill", "old man", "x" * 40]
ascii_texts = st.lists(st.sampled_from(ASCII_PARTS), max_size=16).map("".join)
raw_bytes = st.lists(st.sampled_from([p.encode() for p in ASCII_PARTS] + [b"\xc3", b"\xa9", b"\xff", b"\x80",
                                                                          "Jamal\u00e9".encode()]), max_size=16)


@settings(max_examples=400, deadline=None)
@given(ascii_texts, raw_bytes, st.lists(st.sampled_from(["he", "she", "his", "man", "bill", "Bill", "x" * 40, "a",
                                                         "old man", "zz", "HIS"]), max_size=8), st.booleans())
def test_word_hits_equals_translate_split_intersection(text, raw, keys, lower):
    keys = frozenset(k.encode() for k in keys)
    data = b"".join(raw)
    for t in (text, text.encode(), data):
        assert C.word_hits(t, keys, C.word_filter(keys), lower) == speedups.py_word_hits(t, keys, None, lower)


def test_word_hits_finds_every_identity_term_as_a_word():
    """With the real tables (185 lowered keys, a filter of 65,536 bits): each key alone, at either end, between
    separators and in any case is found; a key inside a longer word is not."""
    m = audit.matchers(audit.identity_terms())
    for key in m.lowered_keys:
        word = key.decode()
        if not word.isalpha():
            continue
        for text in (word, word.upper(), f"x {word}", f"{word}, y", f"1{word}2", f"é{word}é".encode()):
            assert C.word_hits(text, m.lowered_keys, m.lowered_filter, True) == {key}, text
        assert not C.word_hits(f"q{word}q", m.lowered_keys, m.lowered_filter, True) - {b"q"}


@settings(max_examples=500, deadline=None)
@given(ascii_texts)
def test_ascii_key_equals_python(text):
    assert C.ascii_key(text) == speedups.py_ascii_key(text) == hash(" ".join(text.lower().split()).encode())


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from([b"1", b"23", b"4567890", b"9" * 18, b"0" * 19, b"a", b" ", b"-", b"\xff", b"."]),
                max_size=12), st.integers(-1, 25))
def test_digit_run_equals_python(parts, n):
    data = b"".join(parts)
    assert C.digit_run(data, n) == speedups.py_digit_run(data, n)


ASCII_CONTENT = ["hi", " hi", "hi  ", "a  b   c", "  ", " x ", "a\tb", "a\nb", "a & b", "&amp;", "x\x7f", "\x01",
                 "~ ok ~", "x" * 1100 + "  y", " " * 1100 + "z", "A  " * 400]


def test_plain_messages_equals_python():
    """On the plain/non-plain row mix of the fast-path tests, ASCII contents around clean_text's first branch
    (spaces at the ends and doubled, "&", tabs, control characters, past the C's 1,024-byte buffer), with the
    repair on and off."""
    rng = random.Random(5)
    rows = _chat_rows(3000, rng)
    for i in range(1000):
        rows.append({"messages": [{"role": r, "content": rng.choice(ASCII_CONTENT)}
                                  for r in rng.choice([["user", "assistant"], ["system", "user", "assistant"]])]})
    taken = 0
    for fields in rows:
        fields = json.loads(json.dumps(fields))  # what the reader gives (lone surrogates included)
        msgs = fields.get("messages")
        if type(msgs) is not list:
            continue
        for repair in (True, False):
            got = C.plain_messages(msgs, ROLES, clean_text, repair)
            want = speedups.py_plain_messages(msgs, ROLES, clean_text, repair)
            assert got == want, (msgs, repair)
            if got:  # the same key order in the copies
                assert [list(t) for t in got[0]] == [list(t) for t in want[0]]
                taken += 1
    assert taken > 3000


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=5), min_size=1, max_size=30), st.data())
def test_gather_equals_joined_slices(lines, data):
    """The split files' copy: rows in any order (repeats too) and any lo/hi window, clipped as a slice is."""
    spool = b"".join(lines)
    offsets = array("q", accumulate([0] + [len(x) for x in lines[:-1]]))
    ids = data.draw(st.lists(st.integers(0, len(lines) - 1), max_size=40))
    lo, hi = data.draw(st.integers(-2, 45)), data.draw(st.integers(-2, 45))
    want = speedups.py_gather(spool, offsets, len(spool), ids, max(lo, 0), max(hi, 0))
    assert C.gather(spool, offsets, len(spool), ids, lo, hi) == want
    assert want == b"".join(lines[i] for i in ids[max(lo, 0):max(hi, 0)])


# the small skeleton's cut: ASCII stretches (consumable " " and "?", separators, "\r", "\r\n", tabs, other control
# characters) between non-ASCII characters of each string kind (Latin-1, BMP, astral; C1 and U+FFFD)
CUT_PARTS = ["a", "t", "q", "ab", " ", "  ", "?", "x" * 12, "~", "|", "^", "`", "\r", "\r\n", "\n", "\t", "\x01",
             "\x7f", "\x1a", "\u00c3", "\u00e9", "\u0412", "\u221a", "\U0001f600", "\x80", "\ufffd", "&"]
cut_texts = st.lists(st.sampled_from(CUT_PARTS), max_size=24).map("".join)
reads = st.dictionaries(st.sampled_from(["\u00c3", "\u00e9", "\u0412", "\U0001f600", "\x80"]), st.integers(0, 9))


@settings(max_examples=600, deadline=None)
@given(cut_texts, reads, reads, st.integers(0, 3), st.integers(0, 3),
       st.lists(st.integers(0, 127), min_size=128, max_size=128), st.sampled_from([" ?\x1a", " ", "", "?t"]),
       st.sampled_from(["~|^`", "~", "|~"]))
def test_small_cut_equals_python(text, after, before, wild_after, wild_before, classes, consumable, separators):
    """Random reads, classes and consumable sets; the str kinds of the output must match too (== compares them)."""
    args = (after, before, wild_after, wild_before, "".join(map(chr, classes)), consumable, separators)
    assert C.small_cut(text, *args) == speedups.py_small_cut(text, *args)


def test_small_cut_with_ftfys_reads_equals_python():
    """With the tables mojibake reads off ftfy (the ones prepare uses), on mojibake lines of every kind."""
    from tuneloop.data import mojibake

    from .test_data_fastpaths import FAR_CASES, SMALL_CASES, _far_lines, bench_like_texts

    mojibake.small_skeleton("\u00c3")  # (reads ftfy's patterns)
    args = (*mojibake._SMALL, mojibake._SKELETON[1], mojibake._SEPARATORS)
    lines = SMALL_CASES + FAR_CASES + _far_lines(1500, random.Random(3)) + bench_like_texts(300)
    lines += [t.replace(" ", "\r", 3) for t in lines[:300]] + [t + "\U0001f600 ok" for t in lines[:300]]
    cut = [C.small_cut(t, *args) for t in lines]
    assert cut == [speedups.py_small_cut(t, *args) for t in lines]
    assert sum(c is not None for c in cut) > 1500


@settings(max_examples=400, deadline=None)
@given(st.lists(cut_texts, min_size=1, max_size=6), st.lists(cut_texts, max_size=6), st.booleans())
def test_put_back_equals_python(inner, cuts, cr):
    assert C.put_back(inner, cuts, cr) == speedups.py_put_back(inner, cuts, cr)


def test_gather_refuses_rows_outside_the_spool():
    data = b"abcdefgh"
    for offsets, end, row in (([0, 3, 5], 8, 3), ([0, 3, 5], 8, -1),  # no such row
                              ([0, 3, 5], 99, 2), ([0, 9, 5], 8, 0), ([4, 3, 5], 8, 0)):  # a line past the bytes
        with pytest.raises(ValueError, match="outside"):
            C.gather(data, array("q", offsets), end, [row], 0, 1)
    with pytest.raises(TypeError, match="int64"):
        C.gather(data, array("i", [0]), 8, [0], 0, 1)


def test_plain_messages_holds_its_own_references():
    """A clean that replaces the message's role while it runs (so the dict drops the last reference to the old
    one): the C must still read the role it checked, as the Python does (it read freed memory once)."""
    for impl in (C.plain_messages, speedups.py_plain_messages):
        msgs = [{"role": "".join(["us", "er"]), "content": "caf\u00e9"}]

        def clean(content, *args):
            msgs[0]["role"] = "assistant"
            _ = [f"junk{i}" for i in range(5000)]  # (reuse the freed memory)
            return content

        got = impl(msgs, ROLES, clean, True)
        assert got == ([{"role": "assistant", "content": "caf\u00e9"}], ("user",), "caf\u00e9")
    assert C.digit_run(b"1", 2**70) is speedups.py_digit_run(b"1", 2**70) is False


def test_wrong_input_is_a_clear_error():
    with pytest.raises(ValueError, match="ASCII"):
        C.ascii_key("caf\u00e9")
    with pytest.raises(ValueError, match="ASCII"):
        C.word_hits("caf\u00e9", frozenset(), C.word_filter([]), True)
    with pytest.raises(TypeError, match="filter"):
        C.word_hits("x", frozenset(), b"short", True)
    with pytest.raises(TypeError, match="bytes"):
        C.word_filter(["not bytes"])
    with pytest.raises(TypeError, match="plain_messages"):
        C.plain_messages("not a list", ROLES, clean_text, True)
    with pytest.raises(TypeError, match="small_cut"):
        C.small_cut("x", {}, {}, 0, 0, "short classes", " ", "~")
    with pytest.raises(IndexError):
        C.put_back([], [], False)
    with pytest.raises(ZeroDivisionError):  # an error in clean comes through, nothing leaks (refcounts)
        C.plain_messages([{"role": "user", "content": "caf\u00e9"}], ROLES, lambda *a: 1 / 0, True)


def test_native_and_pure_python_prepare_write_the_same_files(tmp_path):
    """The whole data stage with the C steps and with TUNELOOP_PURE_PYTHON=1 (a fresh process each: the choice
    is made at import): byte-for-byte the same splits, drops and manifest, identity groups included."""
    rows = []
    for i in range(300):
        who = ["my sister", "Jamal", "the old man", "a Muslim family", "my grandpa", "someone"][i % 6]
        text = f"{who} flew with us, flight {i % 40}, and   the seat was {'great' if i % 3 else 'BROKEN'}"
        rows.append({"messages": [{"role": "user", "content": text},
                                  {"role": "assistant", "content": f"Thanks {i % 7}"}], "id": 10**20 + i % 50})
    rows.append({"messages": [{"role": "user", "content": "caf\u00e9 \u212aelvin Bill"},
                              {"role": "assistant", "content": "ok"}]})
    for i in range(20):  # mojibake: the small skeletons' cut and put back
        mojibake = f"I\u00e2\u20ac\u2122m at the caf\u00c3\u00a9 {i}   near JFK"
        rows.append({"messages": [{"role": "user", "content": mojibake},
                                  {"role": "assistant", "content": "Donn\u00c3\u00a9es ok\r" * (i % 3 + 1)}]})
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code = ("import sys; from pathlib import Path; from tuneloop.config import DataConfig; "
            "from tuneloop.data import speedups; from tuneloop.data.prepare import prepare; "
            "prepare(DataConfig(source=sys.argv[1]), None, Path(sys.argv[2]), 0, load_splits=False); "
            "print(speedups.NATIVE)")
    native = {}
    for pure in ("", "1"):
        env = {**os.environ, "TUNELOOP_PURE_PYTHON": pure}
        out = tmp_path / f"out{pure}"
        r = subprocess.run([sys.executable, "-c", code, str(src), str(out)], env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        native[pure] = r.stdout.split()[-1]
    assert native == {"": "True", "1": "False"}
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert "manifest.json" in names and "dropped.jsonl" in names
    for name in names:
        assert Path(tmp_path / "out" / name).read_bytes() == Path(tmp_path / "out1" / name).read_bytes(), name
    groups = json.loads((tmp_path / "out" / "manifest.json").read_text())["audit"]
    assert "gender:female" in json.dumps(groups)
