"""Text cleaning (encoding repair, NFC, control characters, whitespace, optional HTML) and quality filters.

    clean_text("Iâ€™m stuck   at JFK\\x07")  ->  "I'm stuck at JFK"   (apostrophe repaired by ftfy)
    quality_failure("!!!! ???? ....", QualityRules(min_alpha_ratio=0.5))  ->  "quality:alpha_ratio"
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass

import ftfy
from ftfy import chardata as ftfy_chardata
from ftfy import fixes as ftfy_fixes
from ftfy.badness import is_bad

from tuneloop.data.validate import Rejection

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200b\u3000]+")
_NEWLINES = re.compile(r"\n{3,}")
_TAGS = re.compile(r"<(script|style)\b.*?</\1\s*>|<!--.*?-->|</?[A-Za-z][^<>]{0,500}>", re.S | re.I)
# Pure-ASCII text without '&' cannot hold mojibake or HTML entities, so ftfy (0.1-0.4 ms/call) is skipped;
# other text goes through it unless _ftfy_would_only_normalize proves ftfy would change nothing.
_NEEDS_FTFY = re.compile(r"[^\x00-\x7f]|&")
# Text without control characters, line breaks, double spaces or any other whitespace than " " (everything
# str.split() or _SPACES would act on) is already tidy: cleaning it is just strip() (most rows of most files).
_UNTIDY = re.compile(r"[\x00-\x1f\x7f-\xa0\u1680\u2000-\u200b\u2028\u2029\u202f\u205f\u3000]|  ")
_NON_PRINTABLE = re.compile(r"[^\x20-\x7e]")
_FTFY_SEGMENT = 1_000_000  # ftfy's max_decode_length: longer lines are fixed in pieces, so no shortcut


def _ascii_entities(text: str) -> str | None:
    """What ftfy.fix_text returns for printable ASCII whose only fix is HTML entities ("&amp;" -> "&"), or None
    when the shortcut does not apply. On such text ftfy's other fixes are no-ops, so its fix-until-stable loop
    reduces to repeating its own `unescape_html`; anything that turns non-ASCII goes through ftfy in full."""
    if _NON_PRINTABLE.search(text) or len(text) >= _FTFY_SEGMENT:
        return None
    while True:
        fixed = ftfy_fixes.unescape_html(text)
        if fixed == text:
            return text
        if _NON_PRINTABLE.search(fixed):
            return None
        text = fixed


def _fixer_chars() -> re.Pattern:
    """One character class of everything ftfy's per-character fixers act on, built from ftfy's own tables:
    C1 controls, ligatures, full/half-width forms, curly quotes, line breaks, surrogates, the terminal-escape
    ESC, the control characters it removes, and "&" (HTML entities)."""
    c = ftfy_chardata
    codes = set(c.LIGATURES) | set(c.WIDTH_MAP) | set(c.CONTROL_CHARS)
    codes |= set(range(0x80, 0xA0)) | set(range(0xD800, 0xE000)) | {0x02BC, *range(0x2018, 0x2020)}
    codes |= {ord(c) for c in "\r\u2028\u2029\x85\x1b&"}
    assert ftfy_fixes.SURROGATE_RE.pattern == "[\ud800-\udfff]" and c.C1_CONTROL_RE.pattern == "[\\x80-\\x9f]"
    return re.compile("[" + "".join(re.escape(chr(c)) for c in sorted(codes)) + "]")


_FIXER_CHARS = _fixer_chars()


def _ftfy_would_only_normalize(text: str) -> str | None:
    """NFC(text) when ftfy.fix_text would change nothing but the normalization, else None.

    fix_text works per line ("\n"-ended segment): it re-decodes a segment only when ftfy's own mojibake test
    (badness.is_bad) flags it, and its other fixers only touch the characters in _FIXER_CHARS. Neither in the
    text nor in its NFC form (fix_text loops until stable, so a second pass sees the NFC text) means the
    result is NFC(text). Correctly encoded non-ASCII text (accents, emoji, other scripts) then costs ftfy's
    mojibake regex and one character-class search instead of its ~10 fixer passes: 28 vs 86 us per text on
    multilingual sentences (2 CPU cores); mojibake still goes through ftfy (tests: equal to ftfy)."""
    nfc = unicodedata.normalize("NFC", text)
    for t in (text, nfc) if nfc != text else (text,):
        if len(t) >= _FTFY_SEGMENT or _FIXER_CHARS.search(t):
            return None
        pos = 0
        while pos < len(t):
            end = t.find("\n", pos) + 1 or len(t)
            if is_bad(t[pos:end]):
                return None
            pos = end
    return nfc


def _ftfy(text: str) -> str:
    fixed = _ascii_entities(text) if text.isascii() else _ftfy_would_only_normalize(text)
    if fixed is None:
        fixed = unicodedata.normalize("NFC", ftfy.fix_text(text, unescape_html=True))
    return fixed


@functools.lru_cache(maxsize=4096)  # system instructions and labels repeat on every row
def clean_text(text: str, single_line: bool = False, strip_html: bool = False) -> str:
    """Repair mojibake and HTML entities (ftfy), NFC-normalize, drop control characters, tidy whitespace."""
    if strip_html:
        text = _TAGS.sub(" ", text)
    if _NEEDS_FTFY.search(text):
        text = _ftfy(text)
    if not _UNTIDY.search(text):
        return text.strip()
    text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    if single_line:
        return " ".join(text.split())
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


def dedup_key(text: str) -> str:
    """Normalized form for exact-duplicate detection: case and whitespace ignored."""
    return " ".join(text.casefold().split())


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
