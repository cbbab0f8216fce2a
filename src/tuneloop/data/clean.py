"""Text cleaning: encoding repair, Unicode normalization, control characters, whitespace.

    clean_text("Iâ€™m stuck   at JFK\x07")  ->  "I'm stuck at JFK"   (apostrophe repaired by ftfy)
"""

from __future__ import annotations

import re
import unicodedata

import ftfy

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200b\u3000]+")
_NEWLINES = re.compile(r"\n{3,}")


def clean_text(text: str, single_line: bool = False) -> str:
    """Repair mojibake and HTML entities (ftfy), NFC-normalize, drop control characters, tidy whitespace."""
    text = ftfy.fix_text(text, unescape_html=True)
    text = unicodedata.normalize("NFC", text)
    text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    if single_line:
        return " ".join(text.split())
    text = "\n".join(_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return _NEWLINES.sub("\n\n", text).strip()


def dedup_key(text: str) -> str:
    """Normalized form for exact-duplicate detection: case, whitespace and punctuation spacing ignored."""
    return " ".join(text.casefold().split())
