"""PII redaction: typed placeholders for emails, phones, credit cards, IBANs, IP addresses, US SSNs, URL secrets.

    redact("mail jo@x.org or call (415) 555-0134", TYPES)
    # -> ("mail <EMAIL> or call <PHONE>", Counter({"email": 1, "phone": 1}))

Each type is a candidate regex plus, where the format has one, a checksum or parser that must accept the match
(Luhn for cards, ISO 7064 mod-97 for IBANs, `ipaddress` for IPs), which is what keeps order numbers, flight
numbers and times from being redacted. Types run in a fixed order (secrets and emails before phones) so a
span is claimed once. Precision/recall on a labelled set: tests/unit/test_data_clean.py (tests/assets/pii_labelled.jsonl) and bench/data_prep.py.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections import Counter
from typing import Callable

from tuneloop.errors import UserError


def luhn_ok(digits: str) -> bool:
    total, parity = 0, len(digits) % 2
    for i, ch in enumerate(digits):
        d = ord(ch) - 48
        if i % 2 == parity:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(candidate: str) -> bool:
    s = candidate.replace(" ", "").upper()
    if not 15 <= len(s) <= 34:
        return False
    moved = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def _card_ok(m: re.Match) -> bool:
    digits = re.sub(r"\D", "", m.group())
    return 13 <= len(digits) <= 19 and luhn_ok(digits)


def _ip_ok(m: re.Match) -> bool:
    try:
        ipaddress.ip_address(m.group())
        return True
    except ValueError:
        return False


# (type, placeholder, pattern, extra check or None), applied in this order
_PATTERNS: list[tuple[str, str, re.Pattern, Callable | None]] = [
    # userinfo passwords and secret-looking query parameters; the key name stays so the URL still reads
    ("secret", "<SECRET>", re.compile(r"(?<=://)[^\s/:@]+:(?P<v1>[^\s/@]+)(?=@)|(?:(?<=[?&])|(?<!\S))(?:api[_-]?key|access[_-]?token|"
                                      r"token|secret|client[_-]?secret|password|passwd|pwd|sig|signature|auth)="
                                      r"(?P<v2>[^&\s#]{4,})", re.I), None),
    ("email", "<EMAIL>", re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"), None),
    ("iban", "<IBAN>", re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b"),
     lambda m: iban_ok(m.group())),
    ("credit_card", "<CREDIT_CARD>", re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])"), _card_ok),
    ("ssn", "<SSN>", re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])"), None),
    ("ip", "<IP_ADDRESS>", re.compile(r"(?<![\w.:])(?:(?:\d{1,3}\.){3}\d{1,3}|(?:[0-9A-Fa-f]{0,4}:){2,7}"
                                      r"[0-9A-Fa-f]{0,4})(?![\w:]|\.\d)"), _ip_ok),
    ("phone", "<PHONE>", re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){2,4}"
                                    r"|(?:\(\d{3}\) ?|\d{3}[.-])\d{3}[.-]\d{4})(?![\w-])"), None),
]
TYPES = tuple(t for t, _, _, _ in _PATTERNS)
_PLACEHOLDER = {t: p for t, p, _, _ in _PATTERNS}
# Hints: per type, something every match of its pattern contains, tested before the pattern runs (tests: the same
# spans as running every pattern on every text). ASCII text (most) is tested on a skeleton made by one
# bytes.translate (digits -> "0", capitals -> "A", " -.+" kept, anything else "x") with substring tests, ~1 us
# per tweet where the hint regexes took ~16. Other text first has its other-script digits (the patterns' \d is
# Unicode) turned into "0" and every other non-ASCII character into "?", one byte per character.
_SKELETON = bytes(48 if 48 <= b <= 57 else 65 if 65 <= b <= 90 else b if b in b" -.+" else 120 for b in range(256))
_URL_PASSWORD = re.compile(r"://[^\s/:@]+:[^\s/@]+@")  # the secret pattern's first alternative ("=" the second)
_EMAIL_HINT = re.compile(r"@[^\s@]+\.")
_IPV6_HINT = re.compile(r":\w*:")
_OTHER_DIGIT = re.compile(r"[^\D0-9]")  # a \d that is not 0-9
_IBAN_SKELETON = re.compile(rb"AA00(?: ?[A0]{4}){2}")  # the IBAN pattern's first 12-14 characters, on the skeleton


def _hinted(text: str) -> set:
    """The types whose pattern may match `text`."""
    out = set()
    if "=" in text or "@" in text and "://" in text and _URL_PASSWORD.search(text):
        out.add("secret")
    if "@" in text and _EMAIL_HINT.search(text):
        out.add("email")
    if text.count(":") >= 2 and _IPV6_HINT.search(text):
        out.add("ip")
    # a non-ASCII character other than a digit ("?", then "x") plays no part in any digit-type pattern
    raw = text.encode("ascii") if text.isascii() else _OTHER_DIGIT.sub("0", text).encode("ascii", "replace")
    s = raw.translate(_SKELETON)
    if b"0" not in s:
        return out
    if b"AA00" in s and _IBAN_SKELETON.search(s):
        out.add("iban")
    # a card is 13-19 digits with at most one " " or "-" between two: 13 zeros once separators are gone
    if s.count(b"0") >= 13 and b"0" * 13 in s.replace(b" ", b"").replace(b"-", b""):
        out.add("credit_card")
    if b"000-00-0000" in s:
        out.add("ssn")
    if b"0.0" in s:
        out.add("ip")
    if b"+0" in s or b"000-0000" in s or b"000.0000" in s:
        out.add("phone")
    return out


def parse_types(spec: str) -> tuple:
    spec = spec.strip().lower()
    if spec in ("", "none", "off", "false"):
        return ()
    if spec in ("all", "true"):
        return TYPES
    types = tuple(t.strip() for t in spec.split(",") if t.strip())
    bad = [t for t in types if t not in TYPES]
    if bad:
        raise UserError(f"data.pii: unknown type '{bad[0]}' (use all, none or some of {', '.join(TYPES)})")
    return types


@functools.lru_cache(maxsize=4096)  # system instructions and labels repeat on every row
def find(text: str, types: tuple = TYPES) -> list:
    """[(start, end, type)] of PII spans, non-overlapping, earlier types winning."""
    hinted = _hinted(text)
    return spans_of(text, [p for p in _PATTERNS if p[0] in types and p[0] in hinted]) if hinted else []


def spans_of(text: str, patterns: list) -> list:
    """The non-overlapping spans of `patterns` ((type, placeholder, regex, validator) rows, in priority order)."""
    spans: list = []
    for typ, _, pattern, ok in patterns:
        for m in pattern.finditer(text):
            # secrets: only the value is replaced, so "?api_key=<SECRET>" still says what was there
            start, end = next((m.span(g) for g in ("v1", "v2") if g in pattern.groupindex and m.group(g)),
                              m.span())
            if (ok is None or ok(m)) and all(end <= s or start >= e for s, e, _ in spans):
                spans.append((start, end, typ))
    return sorted(spans)


def redact(text: str, types: tuple = TYPES) -> tuple[str, Counter]:
    spans = find(text, types)
    return (_replace(text, spans), Counter(typ for _, _, typ in spans)) if spans else (text, Counter())


def _replace(text: str, spans: list) -> str:
    out, pos = [], 0
    for s, e, typ in spans:
        out += [text[pos:s], _PLACEHOLDER[typ]]
        pos = e
    out.append(text[pos:])
    return "".join(out)


def redact_example(ex, types: tuple, counts: Counter) -> None:
    """Redact every message (and preference `rejected` turn) in place; adds per-type counts."""
    if not types:
        return
    for turns in (ex.messages, ex.rejected or []):
        for m in turns:
            text = m.get("content")
            # no Counter per message: most have no PII, and building one costs more than finding none
            spans = find(text, types) if isinstance(text, str) else None
            if spans:
                m["content"] = _replace(text, spans)
                for _, _, typ in spans:
                    counts[typ] += 1
