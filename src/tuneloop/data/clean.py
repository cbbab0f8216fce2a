"""Text cleaning (encoding repair, NFC, control characters, whitespace, optional HTML) and quality filters.

    clean_text("Iâ€™m stuck   at JFK\\x07")  ->  "I'm stuck at JFK"   (apostrophe repaired by ftfy)
    quality_failure("!!!! ???? ....", QualityRules(min_alpha_ratio=0.5))  ->  "quality:alpha_ratio"
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass, field

from tuneloop.data.mojibake import fix_text
from tuneloop.data.validate import Rejection

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200b\u3000]+")
# what _SPACES.sub(" ", ...) changes besides double spaces: without both it gives the text back, and costs ~13 us
# on a tweet (every single space is a match and a replacement)
_ODD_SPACES = re.compile(r"[\t\u00a0\u2000-\u200b\u3000]")
_NEWLINES = re.compile(r"\n{3,}")
_TAGS = re.compile(r"<(script|style)\b.*?</\1\s*>|<!--.*?-->|</?[A-Za-z][^<>]{0,500}>", re.S | re.I)
# Text without control characters, line breaks, double spaces or any other whitespace than " " (everything
# str.split() or _SPACES would act on) is already tidy: cleaning it is just strip() (most rows of most files).
# None of these characters is printable (str.isprintable, a test checks), so printable text has none of them:
# that C loop answers for most texts (~1 us less than this search on a non-ASCII tweet).
_UNTIDY_CHARS = re.compile(r"[\x00-\x1f\x7f-\xa0\u1680\u2000-\u200b\u2028\u2029\u202f\u205f\u3000]")


def clean_text(text: str, single_line: bool = False, strip_html: bool = False, repair: bool = True) -> str:
    """Repair mojibake and HTML entities (ftfy; `repair`), NFC-normalize, drop control characters, tidy
    whitespace."""
    # Printable ASCII (most rows of most files) holds no control character, tab or line break: without '&'
    # (entity) or markup to strip, all that can change is spaces, so strip() or, with double spaces, one split
    # and join is the whole pass below (~0.3 us; the cache lookup alone cost ~1 us per row)
    if text.isascii() and text.isprintable() and ("&" not in text or not repair) and not strip_html:
        return " ".join(text.split()) if "  " in text else text.strip()
    return _clean_text(text, single_line, strip_html, repair)


@functools.lru_cache(maxsize=4096)  # system instructions and labels repeat on every row
def _clean_text(text: str, single_line: bool, strip_html: bool, repair: bool = True) -> str:
    if strip_html:
        text = _TAGS.sub(" ", text)
    # Pure-ASCII text without '&' or ESC holds no mojibake, HTML entity or terminal escape, so it skips ftfy
    # (most rows of most files; isascii() is O(1), `in` a memchr). What ftfy would still change there (control
    # characters, "\r" line breaks) the tidy pass below changes the same way (tested against ftfy on all ASCII).
    if not repair:  # data.repair_text off: the characters as they are, NFC-composed
        text = text if text.isascii() else unicodedata.normalize("NFC", text)
    elif not text.isascii() or "&" in text or "\x1b" in text:
        text = fix_text(text)  # ftfy, less work (mojibake.py)
    if "  " not in text and (text.isprintable() or not _UNTIDY_CHARS.search(text)):
        return text.strip()
    text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    if single_line:
        return " ".join(text.split())
    if "\n" not in text:  # one line (most texts): no per-line list, no blank-line pass
        if text.isascii():
            return " ".join(text.split())
        return (_SPACES.sub(" ", text) if "  " in text or _ODD_SPACES.search(text) else text).strip()
    if text.isascii():  # its only whitespace within a line is now " " and "\t": split() does what _SPACES + strip do
        text = "\n".join(" ".join(line.split()) for line in text.split("\n"))
    elif "  " in text or _ODD_SPACES.search(text):
        text = "\n".join(_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    else:
        text = "\n".join(line.strip() for line in text.split("\n"))
    return _NEWLINES.sub("\n\n", text).strip() if "\n\n\n" in text else text.strip()


def clean_example(ex, single_line: bool, strip_html: bool, repair: bool = True) -> None:
    """Clean every message (and preference `rejected` turn) in place; content empty after cleaning is rejected."""
    for name, turns in (("messages", ex.messages), ("rejected", ex.rejected or [])):
        for i, m in enumerate(turns):
            if not isinstance(m.get("content"), str):
                continue  # a function call without content
            m["content"] = clean_text(m["content"], single_line and m["role"] == "user", strip_html, repair)
            if not m["content"]:
                raise Rejection("empty_content", f"{name}[{i}].content", f"{name}[{i}] content is empty after "
                                "cleaning (only control characters, markup or whitespace)")


@dataclass
class QualityRules:
    min_chars: int = 0
    max_chars: int = 0
    min_alpha_ratio: float = 0.0
    max_repeated_lines: float = 1.0
    # any rule but repeated lines on (that one needs 3+ lines: without the others, shorter texts pass at once)
    any_text_rule: bool = field(init=False)

    def __post_init__(self) -> None:
        self.any_text_rule = bool(self.min_chars or self.max_chars or self.min_alpha_ratio)

    @classmethod
    def from_config(cls, cfg) -> "QualityRules":
        return cls(cfg.min_chars, cfg.max_chars, cfg.min_alpha_ratio, cfg.max_repeated_lines)


def quality_failure(text: str, q: QualityRules) -> str | None:
    """The first quality rule the text fails ("quality:<rule>"), or None."""
    if not q.any_text_rule and (q.max_repeated_lines >= 1.0 or text.count("\n") < 2):
        return None  # the default config on a one- or two-line text (a chat's turns join with one "\n")
    n = len(text)
    if q.min_chars and n < q.min_chars:
        return "quality:min_chars"
    if q.max_chars and n > q.max_chars:
        return "quality:max_chars"
    if q.min_alpha_ratio:
        visible = n - text.count(" ") - text.count("\n")
        if visible and sum(c.isalpha() for c in text) / visible < q.min_alpha_ratio:
            return "quality:alpha_ratio"
    if q.max_repeated_lines < 1.0 and text.count("\n") >= 2:  # three non-empty lines need two "\n"
        lines = [ln for ln in text.split("\n") if ln.strip()]
        if len(lines) >= 3 and 1 - len(set(lines)) / len(lines) > q.max_repeated_lines:
            return "quality:repeated_lines"
    return None
