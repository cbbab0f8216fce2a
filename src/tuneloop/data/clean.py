"""Text cleaning (encoding repair, NFC, control characters, whitespace, optional HTML) and quality filters.

    clean_text("Iâ€™m stuck   at JFK\\x07")  ->  "I'm stuck at JFK"   (apostrophe repaired by ftfy)
    quality_failure("!!!! ???? ....", QualityRules(min_alpha_ratio=0.5))  ->  "quality:alpha_ratio"
"""

from __future__ import annotations

import functools
import re
import types
import unicodedata
from dataclasses import dataclass

import ftfy
from ftfy import badness as ftfy_badness
from ftfy import chardata as ftfy_chardata
from ftfy import fixes as ftfy_fixes

try:  # the regex parser behind re (read once, to bound where ftfy's mojibake pattern can match)
    from re import _constants as sre_constants
    from re import _parser as sre_parser
except ImportError:  # Python 3.10
    import sre_constants
    import sre_parse as sre_parser

from tuneloop.data.validate import Rejection

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200b\u3000]+")
_NEWLINES = re.compile(r"\n{3,}")
_TAGS = re.compile(r"<(script|style)\b.*?</\1\s*>|<!--.*?-->|</?[A-Za-z][^<>]{0,500}>", re.S | re.I)
# Text without control characters, line breaks, double spaces or any other whitespace than " " (everything
# str.split() or _SPACES would act on) is already tidy: cleaning it is just strip() (most rows of most files).
_UNTIDY_CHARS = re.compile(r"[\x00-\x1f\x7f-\xa0\u1680\u2000-\u200b\u2028\u2029\u202f\u205f\u3000]")
_FTFY_SEGMENT = 1_000_000  # ftfy's max_decode_length: longer lines are cut into pieces, left to ftfy itself


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


_DOMAINS = _fixer_domains()
_PASS_FIXERS = tuple((getattr(ftfy_fixes, name), _char_class(codes)) for name, codes in _DOMAINS.items())
_FIXER_CHARS = _char_class(set().union(*_DOMAINS.values()))
_ENCODING_CONFIG = ftfy.TextFixerConfig(explain=False)  # what fix_and_explain gives fix_encoding
_NON_ASCII_RUNS = re.compile(r"[^\x00-\x7f]+")


def _badness_reach(pattern: re.Pattern) -> tuple[int, int] | None:
    """(lead, width) such that every match of ftfy's mojibake pattern holds a non-ASCII character within its
    first lead + 1 characters and is at most `width` long, read off the parsed pattern (so a changed ftfy
    pattern is re-read, not assumed); None when it holds anything this reading does not cover."""
    c = sre_constants
    if pattern.flags & (re.IGNORECASE | re.MULTILINE):  # literals could match ASCII / "^" after newlines
        return None
    tree = sre_parser.parse(pattern.pattern, pattern.flags)
    if len(tree) != 1 or tree[0][0] is not c.BRANCH:
        return None

    def may_be_ascii(op, av) -> bool:  # can this one-character item match an ASCII character?
        if op is c.LITERAL:
            return av < 128
        if op is c.IN:  # a class member other than a plain literal or range (negation, category, ...): maybe
            return any(not (o is c.LITERAL and a >= 128 or o is c.RANGE and a[0] >= 128) for o, a in av)
        return True  # ANY

    lead = 0
    for branch in tree[0][1][1]:
        offsets, found = {0}, None  # where the next item can start, relative to the match start
        for op, av in branch:
            if op is c.AT and av is c.AT_BEGINNING:
                continue
            if op in (c.LITERAL, c.IN, c.ANY):
                if not may_be_ascii(op, av):
                    found = max(offsets)
                    break
                offsets = {o + 1 for o in offsets}
            elif op is c.MAX_REPEAT and av[1] != c.MAXREPEAT and av[2].getwidth() == (1, 1) and len(av[2]) == 1:
                low, high, ((sub_op, sub_av),) = av[0], av[1], list(av[2])
                if low >= 1 and not may_be_ascii(sub_op, sub_av):
                    found = max(offsets)
                    break
                offsets = {o + k for o in offsets for k in range(low, high + 1)}
            else:
                return None
        if found is None:
            return None
        lead = max(lead, found)
    return lead, tree.getwidth()[1]


_BADNESS_REACH = _badness_reach(ftfy_badness.BADNESS_RE)


def _is_bad(text: str) -> bool:
    """ftfy.badness.is_bad(text), trying the pattern only where a match can start: within `lead` characters
    before a non-ASCII character (the pattern has no lookaround or end anchor, so a match is decided by its
    own at most `width` characters). Mostly-ASCII text with a few mojibake spots takes ~6 us instead of ~50
    (ftfy scans every position with all ~35 alternatives)."""
    if _BADNESS_REACH is None:
        return ftfy_badness.is_bad(text)
    lead, width = _BADNESS_REACH
    search = ftfy_badness.BADNESS_RE.search
    for run in _NON_ASCII_RUNS.finditer(text):
        if search(text, max(0, run.start() - lead), run.end() - 1 + width):
            return True
    return False


def _with_fast_badness(step):
    """ftfy's one-step encoding repair with _is_bad as its mojibake test: a copy of the function object whose
    global `is_bad` is rebound (ftfy's module is left as it is, and its code is run, not copied). None when
    this ftfy has no such step or the pattern could not be read; _fix_encoding then uses the public loop."""
    if step is None or "is_bad" not in step.__code__.co_names or _BADNESS_REACH is None:
        return None
    fast = types.FunctionType(step.__code__, {**vars(ftfy), "is_bad": _is_bad}, step.__name__, step.__defaults__,
                              step.__closure__)
    fast.__kwdefaults__ = step.__kwdefaults__
    return fast


_FIX_ENCODING_STEP = _with_fast_badness(getattr(ftfy, "_fix_encoding_one_step_and_explain", None))


def _fix_encoding(text: str) -> str:
    """ftfy.fix_encoding(text): its loop of one-step repairs until one changes nothing, each step testing for
    mojibake first (ASCII text and text without it come back unchanged), that test done by _is_bad."""
    if _FIX_ENCODING_STEP is None:  # the first step's own test would return text _is_bad passes unchanged
        return ftfy.fix_encoding(text, _ENCODING_CONFIG) if _is_bad(text) else text
    while True:
        fixed = _FIX_ENCODING_STEP(text, _ENCODING_CONFIG).text
        if fixed == text:
            return text
        text = fixed


def _fix_segment(text: str) -> str:
    """ftfy.fix_and_explain(text, unescape_html=True).text for one line, with three skips that change nothing:
    - HTML unescaping only when the text holds "&" (ftfy's entity regex starts with it);
    - fix_encoding not on ASCII text (its first test returns it as is) nor on its own previous output (it
      stops only where one more step changes nothing, so that output is its fixed point), and its mojibake
      test only near non-ASCII characters (_fix_encoding);
    - each of the eight per-pass fixers only when the text holds a character it acts on (_DOMAINS).
    On the bench's mojibake tweets ftfy spends most of its ~0.5 ms per text repeating these; on correctly
    encoded non-ASCII text what is left is ftfy's mojibake test and NFC. Tests: equal to ftfy.fix_text on
    real, multilingual and generated texts (tests/unit/test_data_fastpaths.py)."""
    fixed_point = None
    while True:  # fix_and_explain's loop: whole passes until one changes nothing
        orig = text
        if "&" in text:
            text = ftfy_fixes.unescape_html(text)
        if text != fixed_point and not text.isascii():
            text = fixed_point = _fix_encoding(text)
        if _FIXER_CHARS.search(text):  # one search for the common case of none, then each fixer's own
            for fix, domain in _PASS_FIXERS:
                if domain.search(text):
                    text = fix(text)
        text = unicodedata.normalize("NFC", text)
        if text == orig:
            return text


def _ftfy(text: str) -> str:
    """NFC(ftfy.fix_text(text, unescape_html=True)): fix_text fixes each "\n"-ended line on its own."""
    if len(text) >= _FTFY_SEGMENT:
        return unicodedata.normalize("NFC", ftfy.fix_text(text, unescape_html=True))
    lines = text.split("\n")
    fixed = [_fix_segment(line + "\n") for line in lines[:-1]] + ([_fix_segment(lines[-1])] if lines[-1] else [])
    return unicodedata.normalize("NFC", "".join(fixed))


@functools.lru_cache(maxsize=4096)  # system instructions and labels repeat on every row
def clean_text(text: str, single_line: bool = False, strip_html: bool = False) -> str:
    """Repair mojibake and HTML entities (ftfy), NFC-normalize, drop control characters, tidy whitespace."""
    if strip_html:
        text = _TAGS.sub(" ", text)
    # Pure-ASCII text without '&' or ESC holds no mojibake, HTML entity or terminal escape, so it skips ftfy
    # (most rows of most files; isascii() is O(1), `in` a memchr). What ftfy would still change there (control
    # characters, "\r" line breaks) the tidy pass below changes the same way (tested against ftfy on all ASCII).
    if not text.isascii() or "&" in text or "\x1b" in text:
        text = _ftfy(text)
    if "  " not in text and not _UNTIDY_CHARS.search(text):
        return text.strip()
    text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    if single_line:
        return " ".join(text.split())
    if text.isascii():  # its only whitespace within a line is now " " and "\t": split() does what _SPACES + strip do
        text = "\n".join(" ".join(line.split()) for line in text.split("\n"))
    else:
        text = "\n".join(_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return _NEWLINES.sub("\n\n", text).strip()


def clean_example(ex, single_line: bool, strip_html: bool) -> None:
    """Clean every message (and preference `rejected` turn) in place; content empty after cleaning is rejected."""
    for name, turns in (("messages", ex.messages), ("rejected", ex.rejected or [])):
        for i, m in enumerate(turns):
            if not isinstance(m.get("content"), str):
                continue  # a function call without content
            m["content"] = clean_text(m["content"], single_line and m["role"] == "user", strip_html)
            if not m["content"]:
                raise Rejection("empty_content", f"{name}[{i}].content", f"{name}[{i}] content is empty after "
                                "cleaning (only control characters, markup or whitespace)")


@dataclass
class QualityRules:
    min_chars: int = 0
    max_chars: int = 0
    min_alpha_ratio: float = 0.0
    max_repeated_lines: float = 1.0

    @classmethod
    def from_config(cls, cfg) -> "QualityRules":
        return cls(cfg.min_chars, cfg.max_chars, cfg.min_alpha_ratio, cfg.max_repeated_lines)


def quality_failure(text: str, q: QualityRules) -> str | None:
    """The first quality rule the text fails ("quality:<rule>"), or None."""
    n = len(text)
    if q.min_chars and n < q.min_chars:
        return "quality:min_chars"
    if q.max_chars and n > q.max_chars:
        return "quality:max_chars"
    if q.min_alpha_ratio:
        visible = n - text.count(" ") - text.count("\n")
        if visible and sum(c.isalpha() for c in text) / visible < q.min_alpha_ratio:
            return "quality:alpha_ratio"
    if q.max_repeated_lines < 1.0 and "\n" in text:
        lines = [ln for ln in text.split("\n") if ln.strip()]
        if len(lines) >= 3 and 1 - len(set(lines)) / len(lines) > q.max_repeated_lines:
            return "quality:repeated_lines"
    return None
