"""The data stage's shortcuts give the same results as the straightforward path they replace.

    .venv/bin/python -m pytest tests/unit/test_data_fastpaths.py -q

Covered: cleaning without ftfy for tidy ASCII and our copy of ftfy's fix loop with its no-op steps skipped
(each vs ftfy.fix_text on every text), ftfy's mojibake test run only near non-ASCII characters (vs is_bad and
fix_encoding), orjson reading (vs json), PII hints, MinHash, LSH pairs kept as int64 codes and on a row subset
(vs a dict of buckets and a copied slice), the identity-group matcher, and prepare() writing the same files
twice.
"""

from __future__ import annotations

import csv
import json
import random
import re
import sys
import unicodedata
import zlib

import ftfy
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tuneloop.config import DataConfig
from tuneloop.data import audit, clean, dedup, mojibake, pii, regex_reads, write
from tuneloop.data.formats import Example, airline_csv
from tuneloop.data.prepare import prepare
from tuneloop.data.readers import read_rows


def ungated(text: str, single_line: bool = False) -> str:
    """clean_text with ftfy on every text and the full whitespace pass (the reference)."""
    text = unicodedata.normalize("NFC", ftfy.fix_text(text, unescape_html=True))
    text = clean._CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    if single_line:
        return " ".join(text.split())
    text = "\n".join(clean._SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return clean._NEWLINES.sub("\n\n", text).strip()


def bench_like_texts(n: int = 500) -> list:
    """Real tweets (mojibake, entities) and the mutations bench/data_prep.py applies to them."""
    with open(airline_csv(), encoding="latin-1", newline="") as f:
        tweets = [r["text"] for r in csv.DictReader(f)]
    rng = random.Random(0)
    dirty = [t for t in tweets if not t.isascii() or "&" in t][:n]
    plain = rng.sample([t for t in tweets if t.isascii() and "&" not in t], n)
    out = []
    for t in dirty + plain:
        out += [t, "  " + t.upper(), t.replace(" ", "  "), t + " / " + rng.choice(plain)]
    return out


def test_gated_cleaning_equals_ftfy_on_every_text():
    texts = bench_like_texts()
    assert sum(not t.isascii() for t in texts) > 500 and sum("&amp;" in t for t in texts) > 100
    for t in texts:
        assert clean.clean_text(t) == ungated(t), t
        assert clean.clean_text(t, True) == ungated(t, True), t


def test_ascii_gate_equals_ftfy_for_every_ascii_character():
    """ASCII text without '&' or ESC skips ftfy; whatever ftfy would still change (control characters, "\r")
    the tidy pass changes the same way."""
    for c in map(chr, range(128)):
        for text in (f"a{c}b", f"{c}x{c}{c}y\r\n{c}", c):
            assert clean.clean_text(text) == ungated(text), repr(text)
            assert clean.clean_text(text, True) == ungated(text, True), repr(text)


def test_whitespace_pass_skipped_only_where_it_changes_nothing():
    """Non-ASCII text without double spaces or other space characters skips _SPACES.sub (identity there); every
    whitespace character, alone or doubled, on one line or several, gives what the full pass gives."""
    spaces = [chr(x) for x in range(0x3001) if chr(x).isspace() or clean._SPACES.match(chr(x))] + ["\x9d"]
    for c in spaces:
        for text in (f"é{c}x", f"é {c} x", f"é{c}{c}x", f" é{c}", f"é{c}\nx {c}y", f"é\n{c}x{c}", f"é x\ny z{c}"):
            want = clean._CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
            want = "\n".join(clean._SPACES.sub(" ", line).strip() for line in want.split("\n"))
            want = clean._NEWLINES.sub("\n\n", want).strip()
            assert clean._clean_text.__wrapped__(text, False, False, False) == want, repr(text)


PIECES = ["&amp;", "&lt;", "&gt;", "&#39;", "&#x41;", "&eacute;", "&amp;amp;", "&#10;", "&#9;", "&quot;", "&",
          ";", "#", "a", "Word", " ", "  ", "\t", "\n", "\r\n", "\u2019", "Ã©", "\x07", "&AMP;", "&nbsp;",
          "\u00a0", "\u2028", "\u3000", "\x85", "\u200b", "\u1680", "\x1c", "é", "ﬁ", "Ａ", "\r", "\x1b[31m", "\x1b"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=12).map("".join))
def test_gated_cleaning_equals_ftfy_on_entity_soup(text):
    assert clean.clean_text(text) == ungated(text)
    assert clean.clean_text(text, True) == ungated(text, True)


SENTENCES = ["Der Flug nach München fällt aus, Entschädigung?", "東京行きの便は遅れています。", "Рейс задерживается на час.",
             "الرحلة متأخرة ساعتين", "Vol annulé à Orly, hôtel payé ?", "Crème brûlée ✈️ and 😀 on board",
             "¿Dónde está mi maleta?", "Łódź → Kraków: 15 min opóźnienia", "विमान देर से है", "비행기가 지연되었습니다",
             "e\u0301te\u0301 a\u0300 Nice", "Ångström Ørsted Æbelø", "Μια καθυστέρηση στην πτήση", "naïve café ☕"]


def utf8_texts() -> list:
    """Correctly encoded non-ASCII text in many scripts (plus combining marks NFC composes), one to three
    sentences per text, single- and multi-line."""
    rng = random.Random(1)
    return [rng.choice([" ", "\n"]).join(rng.sample(SENTENCES, rng.randint(1, 3))) for _ in range(300)]


def ftfy_nfc(text: str) -> str:
    return unicodedata.normalize("NFC", ftfy.fix_text(text, unescape_html=True))


def test_ftfy_loop_equals_ftfy_on_correct_utf8_and_mojibake():
    for t in utf8_texts() + bench_like_texts(200):
        assert mojibake.fix_text(t) == ftfy_nfc(t), t
        assert clean.clean_text(t) == ungated(t), t
        assert clean.clean_text(t, True) == ungated(t, True), t


def test_ftfy_fixers_leave_text_outside_their_domain_alone():
    """The skip of a per-pass fixer is exact: given every BMP character it does not act on, it returns them."""
    for fix, domain in mojibake.PASS_FIXERS:
        others = "".join(chr(c) for c in range(0x10000) if not domain.match(chr(c)))
        assert fix(others) == others, fix.__name__
        inside = [chr(c) for c in range(0x10000) if domain.match(chr(c))]
        assert any(fix(c + "[31m") != c + "[31m" for c in inside), fix.__name__  # the domain is not empty


UNICODE_PIECES = ["é", "e\u0301", "A\u0303", "\u00a9", "Ã", "Ã ", "Â", "©", "Œ", "œ", "\n", " ", "x", "😀", "❤️",
                  "東京", "ß", "Ğ", "ÃƒÂ©", "â€™", "\u2019", "ﬁ", "Ａ", "\x85", "\x9d", "\u0300", "ά", "\u2028", "é\nÃ ",
                  "\ufeff", "\x1b[31m", "&eacute;", "Ã©", "Ð", "ð", "\u200b", "\r", "&amp;", "\ud83d", "â€", "ï¬\x81"]


@settings(max_examples=600, deadline=None)
@given(st.lists(st.sampled_from(UNICODE_PIECES), max_size=10).map("".join))
def test_ftfy_loop_equals_ftfy_on_unicode_soup(text):
    """Mojibake pieces, line starts ftfy's badness regex anchors on, characters its fixers touch, entities,
    surrogates and text that NFC changes, in random mixes."""
    assert mojibake.fix_text(text) == ftfy_nfc(text)
    assert clean.clean_text(text) == ungated(text)


# every non-ASCII character ftfy's mojibake pattern names, and ASCII its alternatives start or end with
BADNESS_CHARS = sorted({c for c in ftfy.badness.BADNESS_RE.pattern if ord(c) > 127}) + [*"aZz .,?!\n\t", "\u3000"]


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(BADNESS_CHARS), max_size=14).map("".join))
def test_mojibake_test_near_non_ascii_equals_ftfy_on_soup(text):
    """ftfy's mojibake pattern tried only within reach of non-ASCII characters decides as its full search."""
    assert mojibake.is_bad_near(text) == mojibake.is_bad(text) == ftfy.badness.is_bad(text)
    assert mojibake.fix_encoding(text) == ftfy.fix_encoding(text)


def test_mojibake_test_near_non_ascii_equals_ftfy():
    assert mojibake._BADNESS_REACH == (2, 7)  # ftfy 6.3: "[a-z]\s?[ÃÂ][ ]" starts 2 before; "ГўВЂВ.[A-Za-z ]" is 7 long
    assert mojibake._FIX_ENCODING_STEP.__globals__["is_bad"] is mojibake.is_bad  # ftfy's step runs with it
    assert ftfy.is_bad is ftfy.badness.is_bad  # and ftfy itself is untouched
    starts_early = ["a Ã ", "xa\tÂ ok", "Ã ", "said: voilÃ  and", "ГўВЂВ™s", "okay.Â x"]
    texts = starts_early + utf8_texts() + bench_like_texts(200)
    assert all(ftfy.badness.is_bad(t) for t in starts_early)
    assert sum(ftfy.badness.is_bad(t) for t in texts) > 300
    for t in texts:
        assert mojibake.is_bad_near(t) == mojibake.is_bad(t) == ftfy.badness.is_bad(t), t
        assert mojibake.fix_encoding(t) == ftfy.fix_encoding(t), t


def test_fix_encoding_without_ftfys_step_function_uses_its_public_loop(monkeypatch):
    monkeypatch.setattr(mojibake, "_FIX_ENCODING_STEP", None)  # an ftfy without _fix_encoding_one_step_and_explain
    for t in ["Iâ€™m here", "a Ã ", "naïve café", "plain"] + bench_like_texts(50):
        assert mojibake.fix_encoding(t) == ftfy.fix_encoding(t), t


def test_badness_reach_reads_patterns_it_covers_and_refuses_others():
    assert regex_reads.badness_reach(re.compile("a?é|xyé|^Ã[ ]")) == (2, 3)
    assert regex_reads.badness_reach(re.compile("x{1,2}é|ab?[é]|[é-ü]")) == (2, 3)
    assert regex_reads.badness_reach(re.compile("x{1,2}é|ab?[é]|[é-ü]|[^ab]é|[\\wé]xé")) == (2, 3)  # negated class, \w: maybe ASCII
    for pattern in ("ab|é", "é|(?=é)é.", "é|é(?!x)", "é|(?:é|a)b", "é|a*é", "é|a+é", "é", "é|üx$", "é|ü\\b", "é|ü(?=x)"):
        assert regex_reads.badness_reach(re.compile(pattern)) is None, pattern
    assert regex_reads.badness_reach(re.compile("é|ö", re.IGNORECASE)) is None


def step_decodes(text: str, encoding: str) -> bool:
    """What ftfy 6.3's one-step repair does with a single-byte encoding it tries: encode, restore A0 bytes,
    replace lossy sequences, decode as UTF-8 (its variants codec where ED or C0 occurs); True if that works."""
    b = text.encode(encoding)
    if encoding != "macroman" and ftfy.chardata.ALTERED_UTF8_RE.search(b):
        b = ftfy.fixes.restore_byte_a0(b)
    if encoding.startswith("sloppy"):
        b = ftfy.fixes.replace_lossy_sequences(b)
    try:
        b.decode("utf-8-variants" if 0xED in b or 0xC0 in b else "utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_encodings_not_offered_to_ftfys_step_are_those_whose_decode_fails():
    """Every non-ASCII character of every encoding, next to every ASCII character on either side and at the
    text's ends: an encoding is withheld only where ftfy's step would encode, transcode and fail to decode,
    and the encodings the step names later (latin-1) are answered as ftfy's possible_encoding answers."""
    charmaps = mojibake._CHARMAPS
    assert set(charmaps) == set(ftfy.chardata.CHARMAP_ENCODINGS) and "latin-1" in mojibake._NAMED
    chars = sorted(set().union(*(m.chars for m in charmaps.values())))
    ascii_ = [chr(i) for i in range(128)]
    withheld = 0
    for c in chars:
        for text in [f"{a}{c}x" for a in ascii_] + [f"x{c}{a}" for a in ascii_] + [c, f"{c}x", f"x{c}", f"x{c}\n"]:
            worth = mojibake._worth_trying(text)
            for encoding in charmaps:
                possible = ftfy.chardata.possible_encoding(text, encoding)
                if encoding in mojibake._NAMED:
                    assert worth[encoding] == possible, (encoding, text)
                elif possible and not worth[encoding]:
                    withheld += 1
                    assert not step_decodes(text, encoding), (encoding, text)
                else:
                    assert worth[encoding] == possible, (encoding, text)
    assert withheld > 50_000  # the shortcut is not vacuous


def test_encoding_character_sets_equal_ftfys_patterns():
    """_worth_trying's set test is ftfy's possible_encoding pattern (one class, repeated) for every BMP character."""
    for encoding, m in mojibake._CHARMAPS.items():
        for i in range(0x10000):
            c = chr(i)
            ours = m.sub if c == "\x1a" else c.isascii() or c in m.chars
            assert ours == ftfy.chardata.possible_encoding(c, encoding), (encoding, hex(i))
    assert mojibake._ASCII_IS_ISASCII  # and its "ascii" question is str.isascii
    for text in [chr(i) for i in range(0x10000)] + ["a\n", "é\n", "\n", "", "ab\x7f\x80", "x" * 50 + "\u2019"]:
        assert mojibake._possible_encoding(text, "ascii") == ftfy.chardata.possible_encoding(text, "ascii"), text


# characters encoding to continuation, lead (ED, C0 too) and invalid bytes in ftfy's encodings, what its
# transcoders read (" ", "?", "\x1a", U+FFFD) and mojibake that does decode
TRIAL_PIECES = [*"Ã©â€™\x9d\x81íÀðŸøÁ\ufffd ?\x1a\nx_éÐÑÂü Р С Î√╬ÏÅ¿½", "ï¿½", "Ã ", "â€", "Ã\xa0",
                "í_\x8c\x9d", "äó»_", "\xed\xa0\x80", "À\n", "Ã?", "\x1aÃ", "ÃƒÂ©", "Ð\x9f", "Ã¡", "x\ufffdÂ"]


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(TRIAL_PIECES), max_size=10).map("".join))
def test_fix_encoding_equals_ftfy_on_encoding_trial_soup(text):
    assert mojibake.fix_encoding(text) == ftfy.fix_encoding(text)
    assert mojibake.fix_text(text) == ftfy_nfc(text)


def test_utf8_clue_search_in_stretches_equals_ftfys_search():
    clues = ftfy.chardata.UTF8_DETECTOR_RE
    local = mojibake._FIX_ENCODING_STEP.__globals__["chardata"].UTF8_DETECTOR_RE
    assert isinstance(local, regex_reads.RunLocal) and local.sub == clues.sub  # other methods: the pattern's own
    rng = random.Random(3)
    texts = utf8_texts() + bench_like_texts(200) + ["".join(rng.choices(TRIAL_PIECES, k=8)) for _ in range(3000)]
    assert sum(bool(clues.search(t)) for t in texts) > 500
    for t in texts:
        assert bool(local.search(t)) == bool(clues.search(t)), t
    for pattern in ("a[é]", "é(?=x)", "é?x", "[^a]é", "é$"):  # could start on ASCII, or look past the match end
        assert regex_reads.RunLocal.of(re.compile(pattern)) is not None
        assert not isinstance(regex_reads.RunLocal.of(re.compile(pattern)), regex_reads.RunLocal), pattern
    assert isinstance(regex_reads.RunLocal.of(re.compile("(?<!x)(?:[é] |[ü]{2})+")), regex_reads.RunLocal)


def test_altered_utf8_search_in_byte_stretches_equals_ftfys_search():
    """The step's test for UTF-8 whose 0xA0 bytes became spaces, searched only in stretches of high bytes and
    spaces: the same match (span) as ftfy's on encoded texts and on random bytes dense in the pattern's own."""
    altered = ftfy.chardata.ALTERED_UTF8_RE
    local = mojibake._FIX_ENCODING_STEP.__globals__["chardata"].ALTERED_UTF8_RE
    assert isinstance(local, regex_reads.RunLocal) and local.sub == altered.sub
    rng = random.Random(4)
    leads = (0xC2, 0xC3, 0xC5, 0xCE, 0xD0, 0xD9, 0xE0, 0xE2, 0xE3, 0xF0)  # the pattern's first bytes
    alphabet = [bytes([b]) for b in (*range(0x80, 0x100), *leads * 8, *[0x20] * 40, 0x41, 0x3F, 0x0A, 0x1A, 0xA0)]
    data = [t.encode("latin-1", "replace") for t in utf8_texts() + bench_like_texts(200)]
    data += [t.encode("utf-8") for t in utf8_texts()]
    data += [b"".join(rng.choices(alphabet, k=rng.randint(0, 12))) for _ in range(30000)]
    found = 0
    for b in data:
        want, got = altered.search(b), local.search(b)
        assert (want and want.span()) == (got and got.span()), b
        found += want is not None
    assert found > 3000


def test_pattern_reading_for_the_transcoders():
    read = regex_reads.consumed(re.compile(b"[\xc2-\xdf][\x1a]|\x1a|\xc3 (?! |s )"))
    assert (read.first, read.last, read.any, read.ahead) == (
        frozenset({*range(0xC2, 0xE0), 0x1A}), frozenset({0x1A, 0x20}), frozenset({*range(0xC2, 0xE0), 0x1A, 0x20}),
        True)
    for pattern in (b"^\xc3", b"\xc3\\w", b"[^a]", b"\xc3?x", b"(\xc3)\\1"):
        assert regex_reads.consumed(re.compile(pattern)) is None, pattern
    keep = mojibake._transcoders_keep_apart
    assert keep([re.compile(b"[\xc2-\xdf][ ?]"), re.compile(b"\xe2[\x80-\xbf]\x1a")], " ?\x1a")
    assert not keep([re.compile(b"[\xc2-\xdf]x")], " ?\x1a")  # consumes an ASCII byte left next to runs
    assert not keep([re.compile(b"[\x80-\xbf]\x1a")], " ?\x1a")  # could swallow a stray continuation byte
    assert not keep([re.compile(b"\x1a[\xc2-\xdf]")], " ?\x1a")  # could complete a dangling lead byte
    assert not keep([re.compile(b"\xc1 ")], " ?\x1a")  # could remove a byte UTF-8 never holds


def test_embedded_utf8_pieces_are_fixed_once_and_ftfy_is_untouched():
    step_fixes = mojibake._FIX_ENCODING_STEP.__globals__["fixes"]
    assert step_fixes.decode_inconsistent_utf8 is not ftfy.fixes.decode_inconsistent_utf8
    assert ftfy.fixes.decode_inconsistent_utf8.__globals__["ftfy"] is ftfy
    assert ftfy._fix_encoding_one_step_and_explain.__globals__["chardata"] is ftfy.chardata
    mojibake._fix_piece.cache_clear()
    text = "I'm hearing a bunch of BS from Belichick on ESPN _ôÖ\x89_ôÖ\x89_ôÖ\x89 #DeflateGate"  # airline set
    assert mojibake.fix_encoding(text) == ftfy.fix_encoding(text)
    assert mojibake._fix_piece.cache_info().hits > 0


def test_orjson_reader_matches_json(tmp_path):
    lines = ['{"a": NaN}', '{"n": 123456789012345678901234567890}', '{"s": "\\ud800"}', '{"a": 1, "a": 2}',
             '{"f": 1e400}', '{"x": -0.0, "y": [1, 2.5, "\\u00e9"]}', "[1, 2]", '{"a": ', "{'a': 1}",
             # 64-bit edges (orjson makes floats past them) and digit runs split by other bytes
             '{"m": -9223372036854775809, "u": 18446744073709551616}', '{"k": 1234567890123456789}',
             '{"v": [123456789, 1234567890123], "s": "12345678901234567890123"}']
    path = tmp_path / "edge.jsonl"
    path.write_bytes(("\n".join(lines) + "\n").encode() + b'{"bad": "\xff"}\n')
    got = [r.error or r.fields for r in read_rows(path)]
    want = []
    for line in lines:
        try:
            obj = json.loads(line + "\n")  # the reader parses the line with its newline
            want.append(obj if isinstance(obj, dict) else "not_an_object")
        except json.JSONDecodeError as e:
            want.append(("invalid_json", f"invalid JSON: {e.msg} at column {e.colno}"))
    norm = [("not_an_object" if isinstance(g, tuple) and g[0] == "not_an_object" else g) for g in got]
    assert norm[:-1] == want and norm[-1][0] == "invalid_utf8"
    assert repr(got[1]["n"]) == "123456789012345678901234567890"  # not turned into a float
    assert repr(got[9]["u"]) == "18446744073709551616" and repr(got[9]["m"]) == "-9223372036854775809"


def reference_pairs(sigs: np.ndarray, bands: int, rows: int) -> set:
    """Bucket -> members with a dict: (member, first) and (member, previous) for every later member."""
    out = set()
    for b in range(bands):
        buckets: dict = {}
        for i, s in enumerate(sigs[:, b * rows:(b + 1) * rows].tolist()):
            buckets.setdefault(tuple(s), []).append(i)
        for members in buckets.values():
            out |= {(m, members[0]) for m in members[1:]} | {(m, p) for p, m in zip(members, members[1:])}
    return out


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(["a", "B", " ", "  ", "\n", "\n\n", "\t", "é", "ß", "\u0130", "\u212a", "\u00a0",
                                 "\u2028", "\u202f", "\u1680", "\u3000", "\ud800", "\x1c", "x y", "Ǆ", "Σ", "ς",
                                 "\ufb01", "\U0001f600", "Ä", "\u017f", "\x85", "\u13a0"]), max_size=12))
def test_exact_key_is_the_hash_of_the_casefolded_words(parts):
    text = "".join(parts)
    assert dedup.exact_key(text) == hash(" ".join(text.casefold().split()).encode("utf-8", "surrogatepass"))


def test_no_whitespace_but_the_space_is_printable():
    """exact_key takes printable text without double or outer spaces as already joined: that needs every
    whitespace character (what str.split splits on) but " " to be non-printable."""
    assert not [c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace() and c != " " and c.isprintable()]


def test_untidy_characters_are_not_printable():
    """_clean_text takes printable text as holding no _UNTIDY_CHARS (one C loop instead of a regex search): every
    character of that class must be non-printable."""
    assert not [c for c in map(chr, range(sys.maxunicode + 1)) if c.isprintable() and clean._UNTIDY_CHARS.match(c)]


def test_drop_lines_are_what_json_dumps_writes(tmp_path):
    from tuneloop.data.prepare import Stage

    stage = Stage(DataConfig(source="x.jsonl"), None, tmp_path)
    cases = [(3, 'data/é "q"\\.jsonl', "duplicate", {"of_line": 1}), (5, "f", "low_confidence", {"confidence": 0.25}),
             (7, "f", "too_long", {"tokens": 300, "limit": 256}), (9, "f", "quality:alpha_ratio", {}),
             (11, "\u2028x", "near_duplicate", {"of_line": 3, "note": "ü", "flag": True})]
    for line, source, reason, detail in cases:
        stage.drop(line, source, reason, **detail)
    stage.close()
    assert (tmp_path / "dropped.jsonl").read_text().splitlines() == [
        json.dumps({"line": line, "source": source, "reason": reason, **detail}) for line, source, reason, detail in cases]


def test_lsh_codes_match_bucket_dict_and_subset_matches_copy():
    rng = np.random.default_rng(3)
    base = rng.integers(0, 5, size=(40, 128), dtype=np.uint32)  # few values: many shared bands
    sigs = np.concatenate([base, base[rng.integers(0, 40, 200)]])
    sigs[40:, ::7] = rng.integers(0, 5, size=(200, 19))
    pairs = dedup.candidate_pairs(sigs, 18, 6)
    assert {tuple(p) for p in pairs.tolist()} == reference_pairs(sigs, 18, 6)
    assert pairs.tolist() == sorted(pairs.tolist())
    assert np.array_equal(dedup.candidate_pairs(sigs, 18, 6, merge_at=1), pairs)  # merged after every band
    sub = rng.permutation(len(sigs))[:150]
    for t in (0.7, 0.8):
        assert np.array_equal(dedup.near_pairs(sigs, t, subset=sub), dedup.near_pairs(sigs[sub], t))


def test_only_the_listed_characters_lower_to_ascii():
    """group_mask trusts that lowering moves no [A-Za-z] run but for these (this Python's Unicode tables)."""
    lowers = {chr(i) for i in range(0x80, 0x110000) if not 0xD800 <= i < 0xE000
              and any(ch.isascii() for ch in chr(i).lower())}
    assert lowers == set(audit.LOWER_TO_ASCII)


def test_group_mask_matches_plain_word_sets():
    m = audit.matchers(audit.identity_terms())
    _, insensitive, sensitive, *_ = m
    words = re.compile(r"[A-Za-z]+")  # the reference: regex words of the lowered / original text
    rng = random.Random(3)
    pieces = ["Bill", "bill", "BILL", "Jamal", "old", "man", "old man", "Old Man", "special needs", "she", "He",
              "\u212a", "\u0130", "\u00df", "e\u0301", " ", "  ", "\n", ".", "'s", "7", "-", "\u00a0", "\U0001F600"]
    soup = ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 8))) for _ in range(3000)]
    hits = 0
    for text in (bench_like_texts(150) + utf8_texts()[:50] + soup +
                 ["Kelvin \u212a Jamal", "JAMAL jamal Jamal's", "old  man", "\u212aBill", "\u0130Bill", "old man"]):
        want = 0
        for w in set(words.findall(text.lower())) & set(insensitive):
            want |= insensitive[w]
        for w in set(words.findall(text)) & set(sensitive):
            want |= sensitive[w]
        for phrase in (k for k in insensitive if " " in k):
            want |= insensitive[phrase] if f" {phrase} " in f" {text.lower()} " else 0
        assert audit.group_mask(text, m) == want, repr(text)
        hits += want != 0
    assert hits > 500


def test_prepare_is_deterministic_and_copies_spooled_lines(tmp_path, monkeypatch):
    rng = random.Random(1)
    texts = bench_like_texts(60)
    rows = [{"messages": [{"role": "user", "content": rng.choice(texts)},
                          {"role": "assistant", "content": rng.choice(["ok", "sorry &amp; thanks", "n/a"])}]}
            for _ in range(400)]
    src = tmp_path / "rows.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n{\n")
    outs = []
    for k in range(6):  # twice as is (the spool read whole), then line by line: pread, and seek + read
        if k == 2:  # a spool over SPOOL_IN_MEMORY
            monkeypatch.setattr(write, "SPOOL_IN_MEMORY", 0)
        if k == 3:  # where os.pread is missing (Windows)
            monkeypatch.setattr(write, "_read_at", write._seek_read)
        if k >= 4:  # the batched steps (MinHash, identity groups, spooling) in batches of 7 rows, then in one
            monkeypatch.setattr("tuneloop.data.prepare.BATCH", 7 if k == 4 else 10_000)
        cfg = DataConfig(source=str(src), task="generation", dedup="near", train_size=0.8, validation_size=0.1,
                         test_size=0.1)
        res = prepare(cfg, None, tmp_path / f"out{k}", 0, load_splits=False)
        counts = res.ledger.to_dict()
        assert counts["input"] == 401 == counts["kept"] + sum(counts["rejected"].values()) + sum(
            counts["dropped"].values())
        outs.append({p.name: p.read_bytes() for p in (tmp_path / f"out{k}").iterdir() if p.suffix == ".jsonl"})
    assert all(o == outs[0] for o in outs) and len(outs[0]) == 5
    for line in outs[0]["train.jsonl"].splitlines(keepends=True):  # spooled lines are the canonical dump
        assert line == Example.from_json(json.loads(line)).to_line()


def test_example_lines_fall_back_to_json_for_what_orjson_refuses():
    for meta in ({"n": 2**70}, {"s": "\ud800"}, {"f": 1.5, "e": "é"}):
        ex = Example([{"role": "user", "content": "hi"}], "x", meta)
        line = ex.to_line()
        assert line.endswith(b"\n") and json.loads(line) == ex.to_json()
    for meta in ({"f": float("nan"), "g": [float("inf")]}, {"f": float("nan"), "s": "\ud800", "n": 2**70}):
        line = Example([{"role": "user", "content": "hi"}], "x", meta).to_line()  # orjson, then the fallback
        assert json.loads(line)["meta"]["f"] is None and b"NaN" not in line and b", " not in line


def test_minhash_matches_per_row_definition():
    texts = bench_like_texts(20)[:60] + ["", "a", "b c", "é ü x", "x\x00y", "__ 12 ab_c", "Tab\tsep\nNew", "K\u212a k", "ǅ Σς"]
    sigs = dedup.minhash(texts, chunk=16)
    a, b = dedup._permutations(dedup.NUM_PERM, 1)
    for i, t in enumerate(texts):
        words = dedup._WORD.findall(t.casefold())
        if len(words) >= 2:  # word crc32s combined into bigrams, as documented in shingle_hashes
            crc = np.array([zlib.crc32(w.encode("utf-8")) for w in words], dtype=np.uint64)
            g = crc[:-1] * dedup._MIX + crc[1:]
            assert np.array_equal(dedup.shingle_hashes([t])[0], (g ^ (g >> np.uint64(29))) & dedup._MASK32)
        h, _ = dedup.shingle_hashes([t])
        assert np.array_equal(sigs[i], ((np.multiply.outer(h, a) + b) >> np.uint64(32)).min(axis=0))


def unhinted_find(text: str) -> list:
    """pii.find with every pattern run on every text (the hints are only allowed to skip non-matches)."""
    return pii.spans_of(text, pii._PATTERNS)


def test_pii_hints_only_skip_texts_without_matches():
    planted = ["https://ann:pa55word@example.com/x", "ftp://a:b@c.org", "http://x.example.com/a?token=tok12345678x",
               "api_key=abcd1234", "https://t.co/xyz", "mail li.7@example.com", "DE89370400440532013000",
               "4111 1111 1111 1111", "123-45-6789", "10.0.0.1", "fe80::1", "(415) 555-0134", "+44 20 7946 0958",
               "4-1-1-1-1-1-1-1-1-1-1-1-1-1-1-1", "5555 5555 5555 4444", "415.555.0134", "GB82 WEST 1234 5698 7654 32",
               "٤١١١ ١١١١ ١١١١ ١١١١", "2001:db8::ff00:42:8329", "4222222222222", "4 2 2 2 2 2 2 2 2 2 2 2 2", "NO93 8601 1117 947",
               "call (４１５) ５５５-０１٣٤", "ssn ١٢٣-٤٥-٦٧٨٩"]
    texts = planted + bench_like_texts(100) + [f"{t} {planted[i % len(planted)]}" for i, t in enumerate(bench_like_texts(20)[:64])]
    assert sum(bool(unhinted_find(t)) for t in texts) > 30
    for t in texts:
        assert pii.find.__wrapped__(t) == unhinted_find(t), t


PII_PIECES = ["1", "12", "123", "1234", "4111", "0", "9", "-", " ", ".", "+", "(", ")", ":", "::", "@", "=", "a", "A",
              "DE", "GB82", "WEST", "x.org", "https://", "u:p@", "?token=", "api_key=", "é", "٣", "٤١١١", "\n", "_",
              "Ａ", "１２３", "–", "\u00a0"]


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(PII_PIECES), max_size=24).map("".join))
def test_pii_hints_only_skip_texts_without_matches_on_soup(text):
    """Digits with every separator the patterns allow, capitals, colons, URL and key shapes, Unicode digits."""
    assert pii.find.__wrapped__(text) == unhinted_find(text)


def _chat_rows(n: int, rng) -> list:
    """Chat rows that are mostly plain (the case _plain_chat takes) with every way of not being plain mixed in:
    other keys and key orders, odd values, blank/control/mojibake/surrogate content, bad role orders."""
    texts = bench_like_texts(40) + ["", " ", "\u3000", "\x00", "\x85", "tab\there", "line\nbreak\n\n\n\nend",
                                    "e\u0301t\u00e9", "&amp;", "\ud800 lone", "ok"]

    def msg(role):
        m = {"role": role, "content": rng.choice(texts)}
        r = rng.random()
        if r < 0.05:
            m = {"content": m["content"], "role": role}  # other key order: kept in the output
        elif r < 0.08:
            m["weight"] = rng.choice([0, 1, 2])
        elif r < 0.1:
            m["role"] = rng.choice([None, 3, ["user"], "robot", "User"])
        elif r < 0.12:
            m["content"] = rng.choice([None, 5, ["x"], {"a": 1}])
        elif r < 0.13:
            del m["content"]
        return m

    rows = []
    for _ in range(n):
        roles = rng.choice([["user", "assistant"], ["system", "user", "assistant"], ["user", "assistant"] * 2,
                            ["user"], ["assistant", "user"], ["user", "user", "assistant"], ["system"],
                            ["user", "assistant", "function", "assistant"]])
        r = rng.random()
        rows.append({"messages": [msg(x) for x in roles]} if r < 0.95 else
                    rng.choice([{"messages": []}, {"messages": "hi"}, {"other": 1}, {"messages": [1, 2]}]))
    return rows


def test_plain_chat_path_equals_the_general_path(tmp_path):
    """_plain_chat gives, for every row it takes, the example (as its spooled line) and dedup text that
    to_example + clean_example + dedup_text give; it declines every row the general path rejects."""
    from tuneloop.data import prepare as prep
    from tuneloop.data.clean import clean_example
    from tuneloop.data.formats import Row, to_example
    from tuneloop.data.validate import Rejection

    rng = random.Random(3)
    stage = prep.Stage(DataConfig(source="x.jsonl", task="generation"), None, tmp_path)
    taken = declined = 0
    try:
        for i, fields in enumerate(_chat_rows(3000, rng)):
            fields = json.loads(json.dumps(fields))  # what the reader gives (lone surrogates included)
            row = Row(i + 1, fields, "x.jsonl")
            plain = prep._plain_chat(stage, row)
            try:
                ex = to_example(row, "chat", stage.mapping)
                clean_example(ex, False, False)
            except Rejection:
                assert plain is None
                declined += 1
                continue
            if plain is None:  # a valid row with a field the plain path leaves to the general one
                assert any(len(m) != 2 for m in fields["messages"])
                continue
            taken += 1
            assert list(plain[2]) == ex.meta.pop("warnings", [])  # (_row_pass counts them; not in the output)
            assert plain[0].to_line() == ex.to_line() and plain[0].meta == ex.meta
            assert plain[1] == prep.dedup_text(ex, False)
    finally:
        stage.close()
    assert taken > 1000 and declined > 300


def test_prepare_with_and_without_the_plain_chat_path_writes_the_same(tmp_path, monkeypatch):
    rows = _chat_rows(1500, random.Random(4))
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    from tuneloop.data import prepare as prep

    outs = []
    for k in range(2):
        if k:
            monkeypatch.setattr(prep, "_plain_chat", lambda st, row: None)
        cfg = DataConfig(source=str(src), task="generation", pii="all", dedup="near", train_size=0.8,
                         validation_size=0.1, test_size=0.1)
        res = prepare(cfg, None, tmp_path / f"out{k}", 0, load_splits=False)
        outs.append(({p.name: p.read_bytes() for p in (tmp_path / f"out{k}").iterdir() if p.suffix == ".jsonl"},
                     res.ledger.to_dict(), {k: v for k, v in res.manifest.items() if k != "created"}))
    assert outs[0] == outs[1] and outs[0][1]["kept"] > 300



def test_repeated_lines_get_the_verdict_of_their_first_copy(tmp_path, monkeypatch):
    """A line byte for byte the same as an earlier one is dropped as the duplicate that deciding it again would
    find (prepare remembers the verdict by the line's digest): the outputs equal those of the same rows written
    so that no two lines are the same bytes (trailing spaces), while fewer rows reach the exact key."""
    from tuneloop.data import prepare as prep

    rng = random.Random(6)
    lines = [json.dumps(r) for r in _chat_rows(500, rng)]
    seq = lines + [rng.choice(lines) for _ in range(500)]
    seq = rng.sample(seq, len(seq))
    seen: dict = {}
    variant = []
    for line in seq:  # each later copy of a line with one more trailing space: the same JSON, other bytes
        seen[line] = seen.get(line, -1) + 1
        variant.append(line + " " * seen[line])
    keys = []
    monkeypatch.setattr(prep.dedup, "exact_key", lambda text, f=prep.dedup.exact_key: keys.append(1) or f(text))
    outs = []
    for k, rows in enumerate((seq, variant)):
        src = tmp_path / f"rows{k}.jsonl"
        src.write_text("".join(line + "\n" for line in rows))
        keys.clear()
        cfg = DataConfig(source=str(src), task="generation", pii="all", dedup="near", train_size=0.8,
                         validation_size=0.1, test_size=0.1)
        res = prepare(cfg, None, tmp_path / f"out{k}", 0, load_splits=False)
        outs.append(({p.name: p.read_bytes() for p in (tmp_path / f"out{k}").iterdir() if p.suffix == ".jsonl"},
                     res.ledger.to_dict(), res.manifest["warnings"], res.manifest["pii"], len(keys)))
    (files0, *rest0), (files1, *rest1) = outs
    assert files0.keys() == files1.keys() and rest0[:3] == rest1[:3]
    for name in files0:  # the dropped log and the quarantine name their source file
        assert files0[name] == files1[name].replace(b"rows1.jsonl", b"rows0.jsonl"), name
    assert rest0[0]["dropped"]["duplicate"] > 150 and rest0[3] < rest1[3] - 150

# Lines whose ASCII far from mojibake decides nothing, and the lines that would go wrong if the skeleton's
# context were shorter (ftfy's "Ã quele" lookahead, 5+ characters after the space) or if "&" were let in.
FAR_CASES = ["vou Ã quele lugar agora mesmo com todos os amigos da escola",
             "Ã s vezes eu vou para casa com todos os amigos da escola hoje",
             "Ã quilo que eu disse ontem para todos os amigos da escola hoje",
             "ok so ＆amp;amp;amp;amp;amp;amp;amp;amp;amp;amp;amp;amp;amp;amp; tail and more words here",
             "ï¼†amp;amp;amp;amp;amp;amp;amp;amp;amp;amp;amp; tail and more words here and more",
             "Ã©tÃ© was the word, and then far away in the same line &amp; an entity",
             "~|^` all four separators in a line with Ã©tÃ© and a long tail of plain words",
             "a line with a width-mapped ～ tilde (the separator) and more plain words after it",
             "Greek question mark \u037e and the grave \u1fef that NFC makes ASCII, far from the end of the line",
             "spaces then mojibake Ã        and spaces and question marks ?? Ã ?? after it and words",
             "Iâ€™m stuck at the gate for hours now, thanks for nothing",
             "a lead byte at the end of the line after a long tail of plain words: À",  # C0 / ED: utf-8-variants
             "and another one, a long way from the start of this line: í",
             "Ã\xadtem one\nÃ\x80 and then a second line with its plain words running to the end",
             # "&" that stays inert, entities unescaped first, and the ones that stay or become live
             "AT&T and Iâ€™m stuck at the gate &amp; nobody cares &lt;3 at all today & tomorrow &#; too",
             "Ã©tÃ© &amp; then far away in the same line some words & more words &amp;amp; at the end",
             "Iâ€™m here &ab<\u0338 and a long tail of plain words after it &ok",
             "Iâ€™m here &abcdefghijklmnopqrstuvwxyzab; and a long tail of plain words after it",
             "Iâ€™m here &amp\u037e and a long tail of plain words, then ＆lt; and ＆amp;amp;amp;amp;lt;"]


def _far_lines(n: int, rng) -> list:
    """Random lines of mojibake runs, short ASCII next to them (consumable spaces and "?", letters the
    patterns read, separators, entity pieces) and long plain stretches between."""
    runs = sorted({r for t in bench_like_texts(200) for r in re.findall(r"[^\x00-\x7f]+", t)}) + [
        "Ã", "Ã ", "â€", "ï¼†", "＆", "～", "\u037e", "\u1fef", "\ufffd", "\x8a", "é", "\u0301", "\u3000", "Ã¯Â¼Â†",
        "\u2028", "\x85", "ﬁ", "’", "Â\xa0", "Ã©", "Ã\x83Â©", "ðŸ˜€", "Ø", "œ", "\u00ad", "Ð", "\u0338", "；"]
    near, plain = " ?xqueilosamp;&#~|^`w1_.'<", ["lorem", "ipsum", "quele", "quilo", "s", "amp;", "?", "  ", "a"]
    entities = plain + ["&amp;", "&", "&lt;", "&#39;", "AT&T", "&amp;amp;"]
    lines = []
    for _ in range(n):
        words = entities if rng.random() < 0.5 else plain
        out = [" ".join(rng.choice(words) for _ in range(rng.randrange(8)))]
        for _ in range(rng.randrange(1, 5)):
            out.append("".join(rng.choice(runs) for _ in range(rng.randrange(1, 3))))
            out.append("".join(rng.choice(near) for _ in range(rng.randrange(9))))
            out.append(" ".join(rng.choice(words) for _ in range(rng.randrange(10))))
        lines.append("".join(out))
    return lines


def test_lines_repaired_as_their_skeletons_equal_ftfy(monkeypatch):
    monkeypatch.setattr(mojibake, "_SMALL", None)  # (small skeletons, tested below, would take most lines)
    lines = FAR_CASES + _far_lines(3000, random.Random(5)) + bench_like_texts(200)
    cut = [t for t in lines if mojibake.skeleton(t)]
    unescaped = [t for t in lines if "&" in t and not mojibake.skeleton(t)
                 and mojibake.skeleton(ftfy.fixes.unescape_html(t))]  # (inert "&" only, after unescaping)
    assert len(cut) > 1200 and sum("&" in t for t in cut) > 50 and len(unescaped) > 400
    for t in lines:
        assert mojibake.fix_text(t) == ftfy_nfc(t), t
        assert mojibake.fix_text(t + "\n" + t) == ftfy_nfc(t + "\n" + t), t


def test_far_cases_need_the_whole_context_and_the_entity_guard(monkeypatch):
    """The checks above can fail: with less context than ftfy's patterns read, a live "&" let through, a
    repair's new "&" unnoticed or separators that a repair made taken for cuts, the skeleton's repair differs
    from ftfy's."""
    reach, consumable = mojibake._SKELETON
    lines = FAR_CASES + _far_lines(3000, random.Random(5))
    for name, value in (("_SKELETON", (3, consumable)), ("_LIVE_AMP", re.compile("(?!)"))):
        monkeypatch.setattr(mojibake, "_SMALL", None)
        monkeypatch.setattr(mojibake, name, value)
        mojibake._fix_skeleton.cache_clear()
        assert any(mojibake.fix_text(t) != ftfy_nfc(t) for t in lines), name
        monkeypatch.undo()
    mojibake._fix_skeleton.cache_clear()
    monkeypatch.setattr(mojibake, "_SMALL", None)

    def uncounted(text: str, sep: str) -> list | None:  # without the check of the passes' "&"
        fixed = mojibake._fix_and_explain(text)[0]
        pieces = fixed.split(sep)
        return pieces if len(pieces) == text.count(sep) + 1 else None

    def unchecked(text: str, sep: str) -> list | None:  # without the separator count (made separators pass)
        fixed, amp = mojibake._fix_and_explain(text)
        return None if amp else fixed.split(sep)

    for fake in (uncounted, unchecked):
        monkeypatch.setattr(mojibake, "_fix_skeleton", fake)
        assert any(mojibake.fix_text(t) != ftfy_nfc(t) for t in lines), fake.__name__
        monkeypatch.undo()


def test_lines_with_the_same_skeleton_are_repaired_once(monkeypatch):
    monkeypatch.setattr(mojibake, "_SMALL", None)
    a = "GoogleÕ¢_\x8aÎ_\x86¢s Self-Driving Cars Complete 300K Miles, deemed ready for the road"
    b = "GoogleÕ¢_\x8aÎ_\x86¢s Self-Driving Trucks drove 9 miles and crashed twice on the road"
    assert mojibake.skeleton(a)[0] == mojibake.skeleton(b)[0] and mojibake.skeleton(a)[1] != mojibake.skeleton(b)[1]
    mojibake._fix_skeleton.cache_clear()
    assert [mojibake.fix_text(t) for t in (a, b)] == [ftfy_nfc(a), ftfy_nfc(b)]
    assert mojibake._fix_skeleton.cache_info()[:2] == (1, 1)  # (hits, misses)
    assert mojibake.skeleton("short Ã©") is None and mojibake.skeleton("Ã© " + "x" * 40 + " &amp;") is None
    assert mojibake.skeleton("Ã© " + "x" * 40 + " & AT&T &#") is not None  # "&" that no pass can unescape


# Lines for small skeletons: what a repair makes can read further than what the line had ("Ã\x83" becomes "Ã",
# whose A_GRAVE_WORD_RE lookahead reads "quele"), an ASCII letter a combining mark composes with, "\r" and "\t"
# in kept and cut stretches, and the characters read two or more past ("ГўВЂВ.", "Ã quele") or before ("aÃ ").
SMALL_CASES = ["vou Ã\x83 quele lugar agora mesmo com todos os amigos da escola",
               "vou Ã\x83Â quilo lugar agora mesmo com todos os amigos",
               "word Ã© then k\u0327 more words here and there and everywhere",
               "vou N\u0303 quele lugar agora mesmo com todos os amigos",  # as "A" (its class) + U+0303: "Ã quele"
               "vou C\u0327\xa7 lugar agora mesmo com todos os amigos",  # "Ç§" is mojibake of "ǧ", "A\u0327§" not
               "a line\rwith Ã© and a carriage\rreturn far away\r in it Ã© too\r",
               "tab\tÃ©\there and\tmore words far away from it\t Ã©\t",
               "text ГўВЂВ.a and then far away words here ГўВЂВ a",
               "xaÃ  and a lot of words, then zaÃ qualquer, then ok",
               "Q Ã s vezes and a long tail of words, then Ă quele and √ quilo, ├ s and Г quele"]


def test_lines_repaired_as_their_small_skeletons_equal_ftfy():
    lines = SMALL_CASES + FAR_CASES + _far_lines(3000, random.Random(7)) + bench_like_texts(300)
    lines += [t.replace(" ", "\r", 3) for t in lines[:400]] + [t.replace(" ", "\t", 2) for t in lines[:400]]
    cut = [t for t in lines if mojibake.small_skeleton(t)]
    assert len(cut) > 3000 and sum("\r" in t for t in cut) > 100
    mojibake._fix_small.cache_clear()
    for t in lines:
        assert mojibake.fix_text(t) == ftfy_nfc(t), t
        assert mojibake.fix_text(t + "\n" + t) == ftfy_nfc(t + "\n" + t), t
    hits, misses = mojibake._fix_small.cache_info()[:2]
    assert hits > misses > 1000  # (random lines: most skeletons are new; the bench's tweets share them more)


def test_small_skeletons_need_their_reads_classes_and_checks(monkeypatch):
    """Each part of the small skeleton matters: with fewer characters kept after those ftfy's patterns read past,
    "q" written as the class of "b", the texts the repair went through not checked, NFC compositions not looked
    for, or a cut stretch's "\r" kept, some line's repair differs from ftfy's."""
    lines = SMALL_CASES + FAR_CASES + _far_lines(2000, random.Random(8))
    mojibake.small_skeleton("Ã")  # (reads ftfy's patterns)
    after, before, wild_after, wild_before, classes = mojibake._SMALL
    put_back = mojibake._put_back
    mutations = {"reads": ("_SMALL", ({}, before, 0, wild_before, classes)),
                 "classes": ("_SMALL", (after, before, wild_after, wild_before,
                                         classes[:ord("q")] + "b" + classes[ord("q") + 1:])),
                 "states": ("_cuts_hold", lambda state, sep: True),
                 "compose": ("_composes_with_ascii", lambda state: False),
                 "cr": ("_put_back", lambda inner, cuts, cr: put_back(inner, cuts, False))}
    for name, (attr, value) in mutations.items():
        monkeypatch.setattr(mojibake, attr, value)
        mojibake._fix_small.cache_clear()
        assert any(mojibake.fix_text(t) != ftfy_nfc(t) for t in lines), name
        monkeypatch.undo()
    mojibake._fix_small.cache_clear()


def test_lines_with_the_same_small_skeleton_are_repaired_once():
    a = "MicrosoftÕ¢_\x8aÎ_\x86¢s Self-Driving Cars Complete 300K Miles, deemed ready for the road"
    b = "TwitterÕ¢_\x8aÎ_\x86¢s trucks drove 9 miles and crashed twice on the way"
    assert mojibake.small_skeleton(a)[0] == mojibake.small_skeleton(b)[0]  # "t" and "r" are one class
    mojibake._fix_small.cache_clear()
    assert [mojibake.fix_text(t) for t in (a, b)] == [ftfy_nfc(a), ftfy_nfc(b)]
    assert mojibake._fix_small.cache_info()[:2] == (1, 1)  # (hits, misses)
    assert mojibake.small_skeleton("Ã© " + "x" * 40 + " &amp;") is None  # a live "&"
    assert mojibake.small_skeleton("Ã©\r\nx" + "x" * 40) is None  # "\r\n" could be cut apart


def test_small_skeleton_reads_of_ftfys_patterns():
    after, before, wild_after, wild_before = regex_reads.edge_reads(
        re.compile("[a-z]\\s?[ÃÂ][ ]|ГўВЂВ.[A-Za-z ]|[Œœ][^A-Za-z]"), range(0x80, 0x110000))
    assert (after[ord("Ã")], before[ord("Ã")], after[ord("В")], after[ord("Œ")]) == (1, 2, 2, 1)
    assert (wild_after, wild_before) == (1, 1)  # \s, "." and [^A-Za-z] can match any character
    grave = regex_reads.edge_reads(re.compile(b"\xc3 (?! |quele|s )"), regex_reads.HIGH_BYTES)
    assert grave[0] == {0xC3: 6} and grave[1] == {0xC3: 0}
    assert regex_reads.edge_reads(re.compile("a+b"), range(0x80, 0x110000)) is None  # unbounded
    assert regex_reads.edge_reads(re.compile("Ã[é]?[a-z]"), range(0x80, 0x110000))[0][ord("Ã")] == 1  # "Ãb" too
    mojibake.small_skeleton("Ã")
    after, before, wild_after, wild_before, classes = mojibake._SMALL
    # ftfy 6.3: characters whose byte is C3 in some single-byte encoding are read 6 past, Cyrillic "В" 2
    assert {ch for ch, n in after.items() if n > 1} == set("ÃĂĆ√├ГΓВ") and after["В"] == 2
    assert {ch for ch, n in before.items() if n > 1} == set("ÂÃ")
    same = {a for a in map(chr, regex_reads.CONTEXT) if classes[ord(a)] == "b"}
    assert same == set("bcdfghjkmnprtvwxyz")  # a, e, i, l, o, q, s, u: A_GRAVE_WORD_RE's words tell them apart
    # no character composes under NFC with an ASCII one before it unless it starts with a combining mark
    for x in range(0x80, 0x30000):
        ch = chr(x)
        if unicodedata.combining(unicodedata.normalize("NFD", ch)[0]) or 0xD800 <= x < 0xE000:
            continue
        for a in ("a", "<", "k", "A", " "):
            assert unicodedata.normalize("NFC", a + ch) == a + unicodedata.normalize("NFC", ch), hex(x)


def test_max_read_counts_lookarounds_and_refuses_unbounded_patterns():
    assert regex_reads.max_read(re.compile("ab(?=cde)|x{2,5}")) == 5
    assert regex_reads.max_read(re.compile(b"\xc3 (?! |quele|s )")) == 7  # ftfy's A_GRAVE_WORD_RE
    assert regex_reads.max_read(re.compile("(?<=a)b[cd]")) == 3
    assert regex_reads.max_read(re.compile("a+")) is None and regex_reads.max_read(re.compile(r"(a)\1")) is None
    assert mojibake._SKELETON == (7, "\x1a ?")  # ftfy 6.3: its mojibake pattern and A_GRAVE_WORD_RE read 7


def test_pass_one_leaves_no_reference_cycles_and_restores_the_collector(tmp_path, monkeypatch):
    """prepare() pauses the cyclic collector for pass 1: that is only sound if pass 1 (readers, rejections with
    their exceptions, cleaning, ftfy, spooling) makes no reference cycles, which this checks on a mixed file."""
    import contextlib
    import gc

    from tuneloop.data import prepare as prep

    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in _chat_rows(2000, random.Random(9))) + "{\n[1]\n\"x\"\n")
    cfg = DataConfig(source=str(src), task="generation", dedup="near", train_size=0.8, validation_size=0.1,
                     test_size=0.1)
    prepare(cfg, None, tmp_path / "warm", 0)  # caches and lazy imports filled
    seen = {}
    paused = prep.collector_paused

    @contextlib.contextmanager
    def watched():
        with paused():
            yield
            seen["during"], seen["cycles"] = gc.isenabled(), gc.collect()  # what pass 1 left for the collector

    monkeypatch.setattr(prep, "collector_paused", watched)
    gc.collect()
    prepare(cfg, None, tmp_path / "o", 0)
    assert seen == {"during": False, "cycles": 0} and gc.isenabled()
    gc.disable()
    try:
        prepare(cfg, None, tmp_path / "o2", 0)
        assert not gc.isenabled()  # left as the caller had it
    finally:
        gc.enable()
