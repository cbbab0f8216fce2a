"""ftfy's text repair with the same output and less work: fix_text(t) == NFC(ftfy.fix_text(t, unescape_html=True)).

    from tuneloop.data.mojibake import fix_text
    fix_text("Iâ€™m stuck")  ->  "I'm stuck"

ftfy spends ~0.5 ms on a mojibake tweet, most of it on tests whose answer is known or cheaper to get. What
runs here is ftfy's own code (its functions are called, or copied as function objects with some global names
rebound; ftfy's modules are left as they are), minus work that cannot change the text:
- fix_and_explain's loop without the steps that provably change nothing (fix_segment);
- the one-step encoding repair (`_fix_encoding_one_step_and_explain`) given faster equals of its tests: the
  mojibake test searched only near non-ASCII characters (is_bad_near; short texts: ftfy's), the UTF-8 clue
  search only in stretches of the characters its pattern consumes (regex_reads.RunLocal), single-byte
  encodings the step would try but whose UTF-8 decode must fail not offered to it (_worth_trying), its
  "ascii" question answered by str.isascii, and its repair of UTF-8 pieces embedded in other text
  remembering the pieces it fixed (tweets repeat them: "äó»_");
- lines that differ only far from their non-ASCII characters repaired once: a line is repaired as its
  skeleton (the ASCII that ftfy's patterns can read next to each run of non-ASCII, the rest cut out) is, and
  skeletons repeat where rows are near-duplicates or mojibake sits in common words (-35% on the bench's
  43,659 non-ASCII texts); a line's HTML entities are unescaped first, as ftfy's first pass does, and an "&"
  that no later pass can read as an entity does not keep a line from its skeleton;
- first a small skeleton (small_skeleton): at each cut only what the patterns can read past the characters
  beside it, written by class ("t" for "k"), used when the texts its repair went through kept enough at each
  cut (the bench's 43.9k non-ASCII lines: 6.9k repairs instead of 17.4k; ftfy's part of the fast job -38%
  instructions).
Every shortcut is read off ftfy's own patterns and tables (at import, or on first use; the regex reading is
data/regex_reads.py), falls back to ftfy's plain function when the reading finds something it does not
cover, and is tested equal to ftfy on real, multilingual, mojibake and generated text
(tests/unit/test_data_fastpaths.py). Pinned to ftfy 6.3 (pyproject.toml).
"""

from __future__ import annotations

import functools
import re
import types
import unicodedata
from typing import NamedTuple

import ftfy
from ftfy import badness as ftfy_badness
from ftfy import chardata as ftfy_chardata
from ftfy import fixes as ftfy_fixes

from tuneloop.data.regex_reads import CONTEXT, HIGH_BYTES, RunLocal, ascii_matches, badness_reach, char_items, \
    consumed, edge_reads, max_read, sre_parser
from tuneloop.data.speedups import put_back, small_cut

SEGMENT = 1_000_000  # ftfy's max_decode_length: longer lines are cut into pieces, left to ftfy itself
_ENCODING_CONFIG = ftfy.TextFixerConfig(explain=False)  # what fix_and_explain gives fix_encoding
_NON_ASCII_RUNS = re.compile(r"([^\x00-\x7f]+)")  # split(): [ASCII, run, ASCII, ..., run, ASCII] ("" at ends)


def _char_class(codes) -> re.Pattern:
    return re.compile("[" + "".join(re.escape(chr(c)) for c in sorted(codes)) + "]")


def _fixer_domains() -> dict:
    """The characters each of ftfy.fix_and_explain's per-pass fixers acts on (none: the fixer returns its input),
    read from ftfy's own tables and patterns; in ftfy's order, all on in its default config."""
    c, f = ftfy_chardata, ftfy_fixes
    assert f.SURROGATE_RE.pattern == "[\ud800-\udfff]" and c.C1_CONTROL_RE.pattern == "[\\x80-\\x9f]"
    return {"fix_c1_controls": set(range(0x80, 0xA0)), "fix_latin_ligatures": set(c.LIGATURES),
            "fix_character_width": set(c.WIDTH_MAP), "uncurl_quotes": {0x02BC, *range(0x2018, 0x2020)},
            "fix_line_breaks": set(map(ord, "\r\u2028\u2029\x85")), "fix_surrogates": set(range(0xD800, 0xE000)),
            "remove_terminal_escapes": {0x1B}, "remove_control_chars": set(c.CONTROL_CHARS)}


DOMAINS = _fixer_domains()
PASS_FIXERS = tuple((getattr(ftfy_fixes, name), _char_class(codes)) for name, codes in DOMAINS.items())
_FIXER_CHARS = _char_class(set().union(*DOMAINS.values()))


# --- the mojibake test ------------------------------------------------------------------------------------

_BADNESS_REACH = badness_reach(ftfy_badness.BADNESS_RE)
SHORT = 64


def is_bad(text: str) -> bool:
    """ftfy.badness.is_bad(text): up to SHORT characters (the skeletons the repair steps see: dense with
    non-ASCII runs, ~22 characters on average) its one search of the whole text (4.2 vs 7.7 us on the
    bench's 12.6k such calls; tweet lines that short are rare), else is_bad_near."""
    if _BADNESS_REACH is None or len(text) <= SHORT:
        return ftfy_badness.is_bad(text)
    return is_bad_near(text)


def is_bad_near(text: str) -> bool:
    """ftfy.badness.is_bad(text), trying the pattern only where a match can start: within `lead` characters
    before a non-ASCII character (the pattern has no lookaround or end anchor, so a match is decided by its
    own at most `width` characters). Mostly-ASCII text with a few mojibake spots takes ~6 us instead of ~50
    (ftfy scans every position with all ~35 alternatives)."""
    lead, width = _BADNESS_REACH
    search = ftfy_badness.BADNESS_RE.search
    for run in _NON_ASCII_RUNS.finditer(text):
        if search(text, max(0, run.start() - lead), run.end() - 1 + width):
            return True
    return False


# --- which single-byte encodings are worth trying -----------------------------------------------------------

class _Charmap(NamedTuple):
    """One of ftfy's single-byte encodings, as sets of the non-ASCII characters it can encode."""

    chars: frozenset  # all of them (what ftfy's possible_encoding pattern allows besides ASCII)
    sub: bool  # "\x1a" is allowed too (the sloppy codecs give that byte to U+FFFD instead)
    invalid: frozenset  # encoded as a byte no UTF-8 holds (C1, F5-FF)
    cont: frozenset  # as a continuation byte (80-BF)
    lead: frozenset  # as a lead byte, C2-F4 but ED (ftfy's utf-8-variants codec decodes ED and C0 its own way)


def _charmap(encoding: str) -> _Charmap | None:
    possible = ftfy_chardata.possible_encoding
    if not all(possible(chr(i), encoding) for i in range(128) if i != 0x1A):
        return None
    candidates = set(bytes(range(0x80, 0x100)).decode(encoding)) | {bytes([0x1A]).decode(encoding)}
    chars = frozenset(ch for ch in candidates if not ch.isascii() and possible(ch, encoding))
    byte = {ch: ch.encode(encoding) for ch in chars}

    def encoded_as(test) -> frozenset:
        return frozenset(ch for ch, b in byte.items() if len(b) == 1 and test(b[0]))

    return _Charmap(chars, possible("\x1a", encoding), encoded_as(lambda b: b == 0xC1 or b >= 0xF5),
                    encoded_as(lambda b: 0x80 <= b <= 0xBF), encoded_as(lambda b: 0xC2 <= b <= 0xF4 and b != 0xED))


def _transcoders_keep_apart(patterns: list, apart: str) -> bool:
    """True when ftfy's byte transcoders (the step runs them between encoding and decoding) consume no ASCII
    byte but `apart` and no byte UTF-8 never holds, start no match at a continuation byte and end none at a
    lead byte: then a continuation byte right after an ASCII byte not in `apart` (or at the start), a lead
    byte right before one (or at the end) and an invalid byte all reach the decoder as they were, with the
    same neighbour, and it fails there."""
    for pattern in patterns:
        read = consumed(pattern) if isinstance(pattern, re.Pattern) else None
        if read is None or any(x < 128 and chr(x) not in apart or x == 0xC1 or x >= 0xF5 for x in read.any):
            return False
        if any(0x80 <= x <= 0xBF for x in read.first) or any(x >= 0xC0 for x in read.last):
            return False
    return True


_APART = " ?\x1a"  # ASCII bytes ftfy's transcoders consume (restore_byte_a0: " "; replace_lossy_sequences: "?", "\x1a")
_APART_CHARS = frozenset(_APART)
_CHARMAPS = ({e: m for e in ftfy_chardata.CHARMAP_ENCODINGS if (m := _charmap(e)) is not None}
             if _transcoders_keep_apart([getattr(ftfy_chardata, "ALTERED_UTF8_RE", None),
                                         getattr(ftfy_fixes, "A_GRAVE_WORD_RE", None),
                                         getattr(ftfy_chardata, "LOSSY_UTF8_RE", None)], _APART) else {})
_STEP = getattr(ftfy, "_fix_encoding_one_step_and_explain", None)
# encodings the step names in its code (latin-1, macroman): their possibility is always answered as it is
_NAMED = frozenset(c for c in (_STEP.__code__.co_consts if _STEP else ()) if isinstance(c, str))


@functools.lru_cache(maxsize=8)  # the step asks about each of ~10 encodings in turn for the same text
def _worth_trying(text: str) -> dict:
    """{encoding: ftfy's possible_encoding(text, encoding)} (the text's characters are all in the encoding),
    except that an encoding whose UTF-8 decode must fail is not offered to the step (it would encode,
    transcode, decode and catch the error: ~40 us), unless the step names it later (latin-1: it asks whether
    it was possible). Must fail: the text has a character the encoding gives a byte UTF-8 never holds, or a
    run of non-ASCII characters that starts with a continuation byte after an ASCII character other than
    _APART (or at the start), or ends with a lead byte before one (or at the end)."""
    chars, first, last = set(), set(), set()
    parts = _NON_ASCII_RUNS.split(text)
    for i in range(1, len(parts), 2):
        run = parts[i]
        chars.update(run)
        if parts[i - 1][-1:] not in _APART_CHARS:  # "" (the text's start) is not in it either
            first.add(run[0])
        if parts[i + 1][:1] not in _APART_CHARS:
            last.add(run[-1])
    sub = "\x1a" in text
    return {encoding: m.chars.issuperset(chars) and (m.sub or not sub) and (
            encoding in _NAMED or m.invalid.isdisjoint(chars) and m.cont.isdisjoint(first) and m.lead.isdisjoint(last))
            for encoding, m in _CHARMAPS.items()}


# the step's first question, "ascii", is a full-text regex match (~3 us) that str.isascii answers in O(1)
_ASCII_IS_ISASCII = getattr(ftfy_chardata, "ENCODING_REGEXES", {}).get("ascii") == re.compile("^[\x00-\x7f]*$")


def _possible_encoding(text: str, encoding: str) -> bool:
    if encoding in _CHARMAPS:
        return _worth_trying(text)[encoding]
    if encoding == "ascii" and _ASCII_IS_ISASCII:
        return text.isascii()
    return ftfy_chardata.possible_encoding(text, encoding)


# --- ftfy's one-step encoding repair, given the faster tests -----------------------------------------------

def _rebound(func, **names):
    """A copy of ftfy's function object whose global `names` are ours (its module is left as it is); None when
    there is no such function or it (or a function defined inside it) does not read every one of the names."""
    if func is None:
        return None
    code = func.__code__
    read = set(code.co_names).union(*(c.co_names for c in code.co_consts if isinstance(c, types.CodeType)))
    if not set(names) <= read:
        return None
    fast = types.FunctionType(code, {**func.__globals__, **names}, func.__name__, func.__defaults__,
                              func.__closure__)
    fast.__kwdefaults__ = func.__kwdefaults__
    return fast


def _module_with(module, **names) -> types.SimpleNamespace:
    return types.SimpleNamespace(**{**vars(module), **names})


def _fast_step():
    if _STEP is None:
        return None
    chardata = _module_with(ftfy_chardata, UTF8_DETECTOR_RE=RunLocal.of(ftfy_chardata.UTF8_DETECTOR_RE),
                            ALTERED_UTF8_RE=RunLocal.of(ftfy_chardata.ALTERED_UTF8_RE),
                            possible_encoding=_possible_encoding)
    # its repair of embedded UTF-8 pieces calls ftfy.fix_encoding on each piece: ours, remembering them
    embedded = _rebound(ftfy_fixes.decode_inconsistent_utf8, is_bad=is_bad,
                        ftfy=types.SimpleNamespace(fix_encoding=_fix_piece))
    fixes = _module_with(ftfy_fixes, **({"decode_inconsistent_utf8": embedded} if embedded else {}))
    return _rebound(_STEP, is_bad=is_bad, chardata=chardata, fixes=fixes)


def fix_encoding(text: str, states: list | None = None) -> str:
    """ftfy.fix_encoding(text): its loop of one-step repairs until one changes nothing, each step testing for
    mojibake first (ASCII text and text without it come back unchanged)."""
    if _FIX_ENCODING_STEP is None:  # the first step's own test would return text is_bad passes unchanged
        return ftfy.fix_encoding(text, _ENCODING_CONFIG) if is_bad(text) else text
    while True:
        if states is not None:
            states.append(text)
        fixed = _FIX_ENCODING_STEP(text, _ENCODING_CONFIG).text
        if fixed == text:
            return text
        text = fixed


@functools.lru_cache(maxsize=16384)  # short pieces ("äó»_", "í_") recurring over a file
def _fix_piece(text: str) -> str:
    return fix_encoding(text)


_FIX_ENCODING_STEP = _fast_step()


# --- ftfy.fix_and_explain / fix_text --------------------------------------------------------------------------

def _fix_and_explain(text: str, states: list | None = None) -> tuple[str, bool]:
    """(ftfy.fix_and_explain(text, unescape_html=True).text, whether a pass began with more or fewer "&" than
    the text) for one line, with three skips that change nothing:
    - HTML unescaping only when the text holds "&" (ftfy's entity regex starts with it);
    - fix_encoding not on ASCII text (its first test returns it as is) nor on its own previous output (it
      stops only where one more step changes nothing, so that output is its fixed point);
    - each of the eight per-pass fixers only when the text holds a character it acts on (DOMAINS)."""
    fixed_point, amps, amp = None, text.count("&"), False
    while True:  # fix_and_explain's loop: whole passes until one changes nothing
        orig = text
        if states is not None:  # (what each pass and each encoding step began with, for _fix_small)
            states.append(text)
        amp = amp or text.count("&") != amps
        if "&" in text:
            text = ftfy_fixes.unescape_html(text)
        if text != fixed_point and not text.isascii():
            text = fixed_point = fix_encoding(text, states)
        if _FIXER_CHARS.search(text):  # one search for the common case of none, then each fixer's own
            for fix, domain in PASS_FIXERS:
                if domain.search(text):
                    text = fix(text)
        text = unicodedata.normalize("NFC", text)
        if text == orig:
            return text, amp  # (the text a pass began with: its "&" are counted)


# --- the same repair for lines that differ only far from their non-ASCII characters ----------------------------
#
# Every test and change of the loop above acts near non-ASCII characters, except HTML unescaping: ftfy's
# mojibake pattern, the byte transcoders and their lookaheads read at most `reach` characters from a non-ASCII
# one (max_read on their parsed patterns), the UTF-8 clue search consumes only non-ASCII characters and spaces,
# the fixers act on non-ASCII, control characters, "\r" and ESC only, NFC composes a non-ASCII mark with the
# character before it, and encoding questions and round trips leave ASCII as it is. ASCII can turn non-ASCII
# only where a transcoder consumes it (" ", "?": the "consumable" characters, always next to non-ASCII). So in a
# line without control characters whose "&" are all inert (below), the ASCII beyond the first non-consumable
# character next to a run of non-ASCII plus `reach` more is never read nor changed: the line is repaired as its
# skeleton is, with those far middles cut out and a separator character in their place, and the middles put
# back. Lines whose skeletons
# are equal (mojibake spots in the same words: near-duplicate rows, repeated phrases) are repaired once. The
# skeleton's repair is used only when every pass began with as many "&" as the skeleton (a new one could start
# an entity reaching past the context) and the separators come out as they went in (NFC and ftfy's width fix
# can make a separator character). Two of ftfy's patterns read arbitrarily far into ASCII: terminal escapes
# (after ESC, which no repair makes: decoding gives ASCII only from ASCII bytes, but for utf-8-variants' C0 80
# -> NUL; kept away by _SKELETON_OFF) and HTML entities, "&#?[0-9A-Za-z]{1,24};". An "&" is inert when what
# follows it can never become the rest of an entity: an ASCII character other than ";" ends its letters and
# digits, and no non-ASCII character follows that one. ASCII after a non-consumable ASCII character is never
# consumed, no fixer acts on printable ASCII, and NFC changes an ASCII character only when a combining mark
# follows it ("<" + U+0338 -> U+226E), so those characters stay as they are through every pass. A line whose
# "&" are all inert unescapes to itself in every pass that makes no new "&". A line with an entity is first
# unescaped, as fix_and_explain's first pass does: when that leaves only inert "&", the loop from there runs
# as from the line (its first pass's unescaping would change nothing; the loop only compares a pass's output
# with its input), so the unescaped line is repaired, by its skeleton where it has one.

def _skeleton_settings() -> tuple[int, str] | None:
    """(reach, consumable ASCII) when ftfy's patterns read as described above, else None (no skeletons)."""
    detector = RunLocal.of(ftfy_chardata.UTF8_DETECTOR_RE)
    byte_patterns = [getattr(ftfy_chardata, "ALTERED_UTF8_RE", None), getattr(ftfy_fixes, "A_GRAVE_WORD_RE", None),
                     getattr(ftfy_chardata, "LOSSY_UTF8_RE", None)]
    if _BADNESS_REACH is None or not isinstance(detector, RunLocal) or None in byte_patterns:
        return None
    for pattern in byte_patterns:  # a match starts at a byte of a non-ASCII character (0x1A: U+FFFD, sloppily)
        read = consumed(pattern)
        if read is None or any(x < 0x80 and x != 0x1A for x in read.first):
            return None
    reads = [max_read(p) for p in [ftfy_badness.BADNESS_RE, *byte_patterns]]
    fixer_ascii = {chr(x) for x in set().union(*DOMAINS.values()) if x < 128}
    if None in reads or not fixer_ascii <= set(map(chr, [*range(0, 9), *range(11, 32), 127])):
        return None
    consumable = {chr(x) for x in consumed(ftfy_chardata.UTF8_DETECTOR_RE).any if x < 128} | set(_APART)
    return max(reads), "".join(sorted(consumable))


_SKELETON = _skeleton_settings()
_SKELETON_OFF = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")  # what rules a line out ("\n" only ends one)
# an "&" that is not inert (above), or ftfy's entity pattern is not the one described. (The combining-mark case
# is a guard: no NFC composition of ASCII found changes a repair; tests show the other cases do.)
_LIVE_AMP = re.compile(r"&#?[0-9A-Za-z]{0,24}(?:;|[^\x00-\x7f]|[\x00-\x7f][^\x00-\x7f])"
                       if ftfy_chardata.HTML_ENTITY_RE.pattern == "&#?[0-9A-Za-z]{1,24};" else "&")
_SEPARATORS = "~|^`"  # printable, not consumable, not part of an entity; one the line does not hold is used


def _separator(text: str) -> str | None:
    """The first of _SEPARATORS the line does not hold (None: it holds all four and is not cut)."""
    for sep in _SEPARATORS:
        if sep not in text:
            return sep
    return None


def skeleton(text: str) -> tuple[str, list, str] | None:
    """(skeleton, cut middles, separator) of a line, or None when it has no middle to cut or may not be cut."""
    if _SKELETON is None or _SKELETON_OFF.search(text) or "&" in text and _LIVE_AMP.search(text):
        return None
    sep = _separator(text)
    if sep is None:
        return None
    reach, consumable = _SKELETON
    out, middles, pos = [], [], 0
    # only ASCII stretches long enough for a context and a two-character middle are looked at (most are not)
    for part in _long_ascii(reach).finditer(text):
        a, start, end = part.group(), part.start(), part.end()
        # kept after the run before / before the run after: its consumable neighbours, one more, `reach` more
        keep_head = len(a) - len(a.lstrip(consumable)) + 1 + reach if start else 0
        keep_tail = len(a) - len(a.rstrip(consumable)) + 1 + reach if end < len(text) else 0
        if keep_head + keep_tail + 2 <= len(a):
            out += (text[pos:start + keep_head], sep)
            middles.append(a[keep_head:len(a) - keep_tail])
            pos = end - keep_tail
    if not middles:
        return None
    out.append(text[pos:])
    return "".join(out), middles, sep


@functools.lru_cache(maxsize=4)
def _long_ascii(reach: int) -> re.Pattern:
    return re.compile(f"[\\x00-\\x7f]{{{reach + 3},}}")


@functools.lru_cache(maxsize=1 << 16)  # ~400 B an entry: ~26 MB when full (a 1M-row file)
def _fix_skeleton(text: str, sep: str) -> list | None:
    """The repaired skeleton split at its separators, or None when it may not stand for its lines."""
    fixed, amp = _fix_and_explain(text)
    pieces = fixed.split(sep)
    return None if amp or len(pieces) != text.count(sep) + 1 else pieces


# --- small skeletons: a cut keeps only what ftfy's patterns can read next to the characters beside it -----------
#
# The skeleton above keeps `reach` (7) characters past each run's consumable neighbours because some pattern can
# read that far past some character (A_GRAVE_WORD_RE 6 bytes past "\xc3" + " ", the mojibake pattern 2 past a
# Cyrillic "В"), so lines whose mojibake sits in the same words still differ there: 17k of the bench's 44k
# non-ASCII lines had a skeleton no other line shared. A small skeleton keeps after a run ending in character a
# its consumable neighbours + 1 characters, or READ_AFTER[a] if more; before a run starting with b likewise with
# READ_BEFORE[b] (the most a match attempt reads past that character through pattern items that can match ASCII,
# read off the parsed patterns; bytes patterns through the byte each single-byte encoding gives the character).
# The kept ASCII is written by class (characters every item of every pattern involved treats alike: "t" and "k"
# are one class, "q" is its own as A_GRAVE_WORD_RE's "quele" tells it apart), so lines that differ only there
# share a skeleton (6.9k distinct instead of 17k). What a repair makes is read differently ("Ã\x83" becomes "Ã",
# read 6 past), so the small skeleton's repair is used only when every text a pass or an encoding step began with
# still keeps that much at each cut, no pass began with another "&" count, no character NFC composes with the
# ASCII before it followed ASCII (a class stands for letters that compose differently), and each kept stretch
# came out as it went in; any other line goes on to the skeleton above. Lines may hold "\t" and lone "\r" (the
# first pass makes each "\r" "\n", in the cut stretches too: _put_back does that for them). ftfy's utf-8-variants
# decoder also reads "$", the end of the bytes or a final "\n", but the end a skeleton shows next to a run is the
# line's: a stretch shorter than two characters is never cut, a cut keeps one or more after a run and only cuts
# a line's last stretch behind what it keeps.


def _small_settings() -> tuple | None:
    """(after, before, wild_after, wild_before, each ASCII code's class as a 128-character str) read
    off ftfy's patterns; None when one of them is not read (then there are no small skeletons)."""
    if _SKELETON is None or _FIX_ENCODING_STEP is None:
        return None
    str_patterns = [ftfy_badness.BADNESS_RE]
    byte_patterns = [ftfy_chardata.ALTERED_UTF8_RE, ftfy_fixes.A_GRAVE_WORD_RE, ftfy_chardata.LOSSY_UTF8_RE]
    after, before, wild_after, wild_before = {}, {}, 0, 0

    def merge(x: int, a: int, b: int) -> None:
        after[x], before[x] = max(after.get(x, 0), a), max(before.get(x, 0), b)

    for pattern in str_patterns:
        read = edge_reads(pattern, range(0x80, 0x110000))
        if read is None:
            return None
        for x in read[0]:
            merge(x, read[0][x], read[1][x])
        wild_after, wild_before = max(wild_after, read[2]), max(wild_before, read[3])
    # a bytes pattern reads a character through the byte each single-byte encoding gives it (0x1A: U+FFFD)
    if len(_CHARMAPS) != len(ftfy_chardata.CHARMAP_ENCODINGS):
        return None
    for pattern in byte_patterns:
        read = edge_reads(pattern, HIGH_BYTES)
        if read is None:
            return None
        b_after, b_before, w_after, w_before = read
        wild_after, wild_before = max(wild_after, w_after), max(wild_before, w_before)
        for encoding, m in _CHARMAPS.items():
            for ch in m.chars | {"\ufffd"}:
                try:
                    byte = ch.encode(encoding)[0]
                except UnicodeEncodeError:
                    continue
                if byte in b_after:
                    merge(ord(ch), b_after[byte], b_before[byte])
    # ASCII classes: characters every item of every pattern that reads text (or its bytes) treats alike
    items = [item for pattern in [*str_patterns, *byte_patterns, ftfy_chardata.UTF8_DETECTOR_RE,
                                  ftfy_chardata.HTML_ENTITY_RE, _LIVE_AMP]
             for item in char_items(sre_parser.parse(pattern.pattern, pattern.flags))]
    singles = set(map(ord, _SKELETON[1] + _SEPARATORS + "\t\n\r&;#"))
    classes: dict = {}
    matches = {repr(item): ascii_matches(*item) for item in items}
    if None in matches.values():
        return None
    for x in CONTEXT:
        sig = tuple(x in m for m in matches.values())
        classes.setdefault((x,) if x in singles else sig, []).append(x)
    table = {x: members[0] for members in classes.values() for x in members}
    # (a character in an explicit class may also be matched by a wildcard item: it reads at least as far)
    return ({chr(x): max(v, wild_after) for x, v in after.items()},
            {chr(x): max(v, wild_before) for x, v in before.items()}, wild_after, wild_before,
            "".join(chr(table.get(x, x)) for x in range(128)))


_SMALL: tuple | None = ()  # read on first use (reading ftfy's patterns takes ~50 ms): () until then, None: no reading
# The cut (speedups.small_cut) leaves a line with a control character a fixer acts on as it is, but "\r":
# fix_line_breaks makes every "\r" "\n" in the first pass, the cut stretches' too, which _put_back does for them
# (a line with "\r\n" is not cut: a cut could fall between the two).
_ASCII = "".join(map(chr, range(128)))  # (str.strip(_ASCII): a piece's ASCII ends without a regex search)


def _first_composing() -> int:
    """The first non-ASCII code point that NFC may compose with the ASCII before it (U+0300 in Unicode 15)."""
    c = 0x80
    while not (unicodedata.combining(chr(c)) or unicodedata.combining(unicodedata.normalize("NFD", chr(c))[0])):
        c += 1
    return c


# a character after ASCII that _composes_with_ascii must look at: none below the first that may compose, so the
# latin-1 text most mojibake is never matched
_AFTER_ASCII = re.compile(f"[\\x00-\\x7f]([^\\x00-{re.escape(chr(_first_composing() - 1))}])")


def _keep_after(stretch: str, ch: str) -> int:
    """How many characters of an ASCII stretch after character ch a cut keeps: its consumable ones and one
    more, or what the patterns read past ch if that is more."""
    after, wild_after = _SMALL[0], _SMALL[2]
    return max(len(stretch) - len(stretch.lstrip(_SKELETON[1])) + 1, after.get(ch, wild_after))


def _keep_before(stretch: str, ch: str) -> int:
    """The same for an ASCII stretch before character ch."""
    before, wild_before = _SMALL[1], _SMALL[3]
    return max(len(stretch) - len(stretch.rstrip(_SKELETON[1])) + 1, before.get(ch, wild_before))


def small_skeleton(text: str) -> tuple[str, list, str] | None:
    """(small skeleton, cut stretches, separator) of a line, or None when it has no stretch to cut or may not be
    cut; a cut stretch is the line's ASCII there but the consumable characters it starts with (what the kept
    head, separator and kept tail stand for)."""
    global _SMALL
    if _SMALL == ():
        _SMALL = _small_settings()
    if _SMALL is None or "&" in text and _LIVE_AMP.search(text):
        return None
    return small_cut(text, *_SMALL, _SKELETON[1], _SEPARATORS)  # (speedups: in C where built)


def _cuts_hold(state: str, sep: str) -> bool:
    """Whether every cut of this text (one a repair began with) still keeps what the patterns can read from the
    characters next to it."""
    pieces = state.split(sep)
    for left, right in zip(pieces, pieces[1:]):
        start = len(left.rstrip(_ASCII))
        # (a piece with no non-ASCII character reads nothing past its cuts)
        if start and len(left) - start < _keep_after(left[start:], left[start - 1]):
            return False
        end = len(right) - len(right.lstrip(_ASCII))
        if end < len(right) and end < _keep_before(right[:end], right[end]):
            return False
    return True


def _composes_with_ascii(state: str) -> bool:
    """Whether a character NFC could compose with the ASCII before it (a combining mark, or one that decomposes
    to one first) stands after ASCII: a class would stand for characters that compose differently."""
    for m in _AFTER_ASCII.finditer(state):
        ch = m.group(1)
        if unicodedata.combining(ch) or unicodedata.combining(unicodedata.normalize("NFD", ch)[0]):
            return True
    return False


@functools.lru_cache(maxsize=1 << 16)  # ~400 B an entry
def _fix_small(text: str, sep: str) -> list | None:
    """The repaired small skeleton between its kept stretches (the pieces between cuts with the kept heads and
    tails taken off, each checked to come out as it went in), or None when it may not stand for its lines."""
    states: list = []
    fixed, amp = _fix_and_explain(text, states)
    pieces, originals = fixed.split(sep), text.split(sep)
    if amp or len(pieces) != len(originals):
        return None
    states = dict.fromkeys(states)  # (a pass often begins with what the last step gave)
    if any(_composes_with_ascii(s) for s in states) or not all(_cuts_hold(s, sep) for s in list(states)[1:]):
        return None  # (the skeleton itself keeps enough: small_skeleton cut it so)
    consumable, inner = _SKELETON[1], []
    for j, (piece, original) in enumerate(zip(pieces, originals)):
        # kept tail of the cut before (the piece's ASCII start), kept head of the cut after (its ASCII end past
        # the consumable characters); fix_line_breaks made their "\r" "\n"
        tail = original[:len(original) - len(original.lstrip(_ASCII))] if j else ""
        head = original[len(original.rstrip(_ASCII)):].lstrip(consumable) if j < len(pieces) - 1 else ""
        tail, head = tail.replace("\r", "\n"), head.replace("\r", "\n")
        if len(piece) < len(tail) + len(head) or not piece.startswith(tail) or not piece.endswith(head):
            return None
        inner.append(piece[len(tail):len(piece) - len(head)])
    return inner


_put_back = put_back  # (a module name: a test swaps it)


def fix_segment(text: str) -> str:
    """ftfy.fix_and_explain(text, unescape_html=True).text for one line (its skeleton's repair when it has one)."""
    if "&" in text and _LIVE_AMP.search(text):
        unescaped = ftfy_fixes.unescape_html(text)
        if _LIVE_AMP.search(unescaped):
            return _fix_and_explain(text)[0]
        text = unescaped  # (see above: the loop goes on from here as from the line)
    if text.isascii() and not _FIXER_CHARS.search(text):
        return text  # (its "&" are inert: a pass changes nothing)
    small = small_skeleton(text)
    if small:
        inner = _fix_small(small[0], small[2])
        if inner is not None:
            return _put_back(inner, small[1], "\r" in text)
    cut = skeleton(text)
    pieces = _fix_skeleton(cut[0], cut[2]) if cut else None
    return _fix_and_explain(text)[0] if pieces is None else _put_back(pieces, cut[1], False)


def fix_text(text: str) -> str:
    """NFC(ftfy.fix_text(text, unescape_html=True)): fix_text fixes each "\n"-ended line on its own."""
    if len(text) >= SEGMENT:
        return unicodedata.normalize("NFC", ftfy.fix_text(text, unescape_html=True))
    if "\n" not in text:  # one line (most texts)
        return unicodedata.normalize("NFC", fix_segment(text))
    lines = text.split("\n")
    fixed = [fix_segment(line + "\n") for line in lines[:-1]] + ([fix_segment(lines[-1])] if lines[-1] else [])
    return unicodedata.normalize("NFC", "".join(fixed))
