"""What a regex can match and how far it reads, from its parse tree (re's own parser): data/mojibake.py reads
ftfy's patterns with these, so a changed ftfy pattern is re-read, not assumed.

    max_read(re.compile("ab(?=cde)|x{2,5}"))  ->  5
    edge_reads(re.compile("[a-z]\\s?[ÃÂ][ ]"), range(0x80, 0x110000))[1][ord("Ã")]  ->  2   (reads 2 before "Ã")

Each function returns None for a pattern holding something it does not read (then its caller does without).
"""

from __future__ import annotations

import functools
import re
from typing import NamedTuple

try:  # the regex parser behind re (to read ftfy's patterns once)
    from re import _constants as sre_constants
    from re import _parser as sre_parser
except ImportError:  # Python 3.10
    import sre_constants
    import sre_parse as sre_parser

# the ASCII a pattern is asked about: printable, tab, line feed, carriage return (data/mojibake.py cuts no line
# holding another control character)
CONTEXT = [*range(0x20, 0x7F), 0x09, 0x0A, 0x0D]
HIGH_BYTES = frozenset([0x1A, *range(0x80, 0x100)])  # bytes of non-ASCII characters (sloppy codecs: 1A for U+FFFD)


def badness_reach(pattern: re.Pattern) -> tuple[int, int] | None:
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
        for op, av in branch:  # every item is read, also after the first non-ASCII one (no lookaround, "$")
            if op is c.AT and av is c.AT_BEGINNING:
                continue
            if op in (c.LITERAL, c.IN, c.ANY):
                low, high, sub_op, sub_av = 1, 1, op, av
            elif op is c.MAX_REPEAT and av[1] != c.MAXREPEAT and av[2].getwidth() == (1, 1) and len(av[2]) == 1:
                low, high, ((sub_op, sub_av),) = av[0], av[1], list(av[2])
            else:
                return None
            if found is None:
                if low >= 1 and not may_be_ascii(sub_op, sub_av):
                    found = max(offsets)
                offsets = {o + k for o in offsets for k in range(low, high + 1)}
        if found is None:
            return None
        lead = max(lead, found)
    return lead, tree.getwidth()[1]


class Consumed(NamedTuple):
    """What a pattern's matches consume, as sets of code points (bytes patterns: byte values)."""

    first: frozenset  # a match's first character
    last: frozenset  # its last character
    any: frozenset  # any of its characters
    ahead: bool  # the pattern looks past the match end (lookahead)


def consumed(pattern: re.Pattern) -> Consumed | None:
    """Consumed(...) read off the parsed pattern when it is built of literals, classes of literals and ranges,
    groups, alternations, repeats of at least once and lookarounds; None for anything else (anchors,
    categories, negated classes, optional items, case folding, back references)."""
    c = sre_constants
    if pattern.flags & re.IGNORECASE:
        return None
    ahead = False

    def seq(items) -> tuple | None:  # (first, last, any) of a sequence, None if unreadable or possibly empty
        nonlocal ahead
        parts = []
        for op, av in items:
            if op in (c.ASSERT, c.ASSERT_NOT):
                ahead |= av[0] == 1  # a lookbehind reads before the match start, which the text still has
                continue
            if op in (c.LITERAL, c.IN):
                one = item_chars(op, av)
                part = None if one is None else (one, one, one)
            elif op in (c.MAX_REPEAT, c.MIN_REPEAT) and av[0] >= 1:
                part = seq(av[2])
            elif op is c.SUBPATTERN and not av[1] and not av[2]:  # a group without flag changes
                part = seq(av[3])
            elif op is c.BRANCH:
                alts = [seq(b) for b in av[1]]
                part = None if None in alts else tuple(frozenset().union(*(a[k] for a in alts)) for k in range(3))
            else:
                return None
            if part is None:
                return None
            parts.append(part)
        if not parts:
            return None
        return parts[0][0], parts[-1][1], frozenset().union(*(p[2] for p in parts))

    read = seq(sre_parser.parse(pattern.pattern, pattern.flags))
    return None if read is None else Consumed(*read, ahead)


def max_read(pattern: re.Pattern) -> int | None:
    """The most characters one match can read, consumed or looked at around it, from the parsed pattern; None
    for an unbounded or unreadable one."""
    return read_width(sre_parser.parse(pattern.pattern, pattern.flags))


def read_width(items) -> int | None:
    """max_read of a parsed (sub)pattern."""
    c = sre_constants
    total = 0
    for op, av in items:
        if op in (c.LITERAL, c.NOT_LITERAL, c.IN, c.ANY):
            w = 1
        elif op is c.AT:
            w = 0
        elif op in (c.MAX_REPEAT, c.MIN_REPEAT) and av[1] != c.MAXREPEAT:
            w = read_width(av[2])
            w = None if w is None else av[1] * w
        elif op is c.SUBPATTERN:
            w = read_width(av[3])
        elif op is c.BRANCH:
            ws = [read_width(b) for b in av[1]]
            w = None if None in ws else max(ws)
        elif op in (c.ASSERT, c.ASSERT_NOT):
            w = read_width(av[1])
        else:
            return None
        if w is None:
            return None
        total += w
    return total


def item_chars(op, av) -> frozenset | None:
    """The code points a literal or a class of literals and ranges matches; None for any other item."""
    c = sre_constants
    if op is c.LITERAL:
        return frozenset((av,))
    if op is c.IN and all(o in (c.LITERAL, c.RANGE) for o, _ in av):
        return frozenset(x for o, a in av for x in ((a,) if o is c.LITERAL else range(a[0], a[1] + 1)))
    return None


@functools.cache
def _context_categories() -> dict:
    """CONTEXT's members of each category a class can name (\\d, \\s, \\w and their negations)."""
    c, context = sre_constants, frozenset(CONTEXT)
    chars = [chr(x) for x in CONTEXT]
    out = {c.CATEGORY_DIGIT: {ord(ch) for ch in chars if ch.isdigit()},
           c.CATEGORY_SPACE: {ord(ch) for ch in chars if ch.isspace()},
           c.CATEGORY_WORD: {ord(ch) for ch in chars if ch.isalnum() or ch == "_"}}
    for yes, no in ((c.CATEGORY_DIGIT, c.CATEGORY_NOT_DIGIT), (c.CATEGORY_SPACE, c.CATEGORY_NOT_SPACE),
                    (c.CATEGORY_WORD, c.CATEGORY_NOT_WORD)):
        out[no] = context - out[yes]
    return out


def ascii_matches(op, av) -> frozenset | None:
    """The characters of CONTEXT the one-character item matches, None for an item this does not read."""
    c = sre_constants
    context = frozenset(CONTEXT)
    if op is c.LITERAL:
        return context & {av}
    if op is c.NOT_LITERAL:
        return context - {av}
    if op is c.ANY:
        return context - {0x0A}
    if op is not c.IN:
        return None
    categories = _context_categories()
    negate, hit = False, set()
    for o, a in av:
        if o is c.NEGATE:
            negate = True
        elif o is c.LITERAL:
            hit.add(a)
        elif o is c.RANGE:
            hit.update(range(a[0], a[1] + 1))
        elif o is c.CATEGORY and a in categories:
            hit |= categories[a]
        else:
            return None
    return context - hit if negate else context & hit


def high_chars(op, av, high) -> frozenset | None:
    """The code points in `high` the item matches; None when it may match others there too (negations,
    categories, any): a wildcard."""
    chars = item_chars(op, av)
    return None if chars is None else frozenset(x for x in chars if x in high)


def char_items(tree) -> list:
    """Every one-character item (op, av) of a parsed pattern, lookarounds' included."""
    c, out = sre_constants, []
    for op, av in tree:
        if op in (c.LITERAL, c.NOT_LITERAL, c.IN, c.ANY):
            out.append((op, av))
        elif op in (c.MAX_REPEAT, c.MIN_REPEAT):
            out += char_items(av[2])
        elif op is c.SUBPATTERN:
            out += char_items(av[3])
        elif op is c.BRANCH:
            for branch in av[1]:
                out += char_items(branch)
        elif op in (c.ASSERT, c.ASSERT_NOT):
            out += char_items(av[1])
    return out


class Element(NamedTuple):
    kind: str  # "char", "ahead", "behind", "begin"
    item: tuple | None  # (op, av) of a character item
    width: int  # the most characters it reads
    least: int = 1  # the fewest (a match can pass over an optional item)


def alternatives(items, limit: int = 4096) -> list | None:
    """The parsed sequence as flat lists of Elements, one per way through its alternations; None when it holds
    anything else than character items, bounded repeats of one, groups, alternations, lookarounds and "^"."""
    c = sre_constants
    out = [[]]
    for op, av in items:
        if op in (c.LITERAL, c.NOT_LITERAL, c.IN, c.ANY):
            add = [[Element("char", (op, av), 1)]]
        elif op in (c.MAX_REPEAT, c.MIN_REPEAT) and av[1] != c.MAXREPEAT and len(av[2]) == 1 \
                and av[2][0][0] in (c.LITERAL, c.NOT_LITERAL, c.IN, c.ANY):
            add = [[Element("char", av[2][0], av[1], av[0])]]
        elif op is c.SUBPATTERN and not av[1] and not av[2]:
            add = alternatives(av[3], limit)
        elif op is c.BRANCH:
            add = [alt for branch in av[1] for alt in (alternatives(branch, limit) or [None])]
            add = None if None in add else add
        elif op in (c.ASSERT, c.ASSERT_NOT):
            width = read_width(av[1])
            add = None if width is None else [[Element("ahead" if av[0] == 1 else "behind", None, width)]]
        elif op is c.AT and av is c.AT_BEGINNING:
            add = [[Element("begin", None, 0)]]
        else:
            return None
        if add is None:
            return None
        out = [a + b for a in out for b in add]
        if len(out) > limit:
            return None
    return out


def edge_reads(pattern: re.Pattern, high: range) -> tuple[dict, dict, int, int] | None:
    """(after, before, wild_after, wild_before): for each code point in `high` that a character item can match,
    the most characters a match attempt reads after / before it through items that can match ASCII (a read that
    meets an item no ASCII can match fails on any ASCII there); the wild values for items matching any of them.
    None when the pattern holds something this does not read."""
    alts = alternatives(sre_parser.parse(pattern.pattern, pattern.flags))
    if alts is None:
        return None
    after, before, wild = {}, {}, [0, 0]
    for alt in alts:
        ascii_ok = []
        for e in alt:
            if e.kind == "char":
                ok = ascii_matches(*e.item)
                if ok is None:
                    return None
                ascii_ok.append(bool(ok))
            else:
                ascii_ok.append(e.kind != "begin")
        for i, e in enumerate(alt):
            if e.kind != "char":
                continue
            chars = high_chars(*e.item, high)
            if chars == frozenset():
                continue
            own = e.width - 1 if ascii_ok[i] else 0  # a repeat's further characters
            # a lookbehind after the item, or a lookahead before it, could read past it: not read
            n_after = reads_past(alt, ascii_ok, range(i + 1, len(alt)), own, "behind")
            n_before = reads_past(alt, ascii_ok, range(i - 1, -1, -1), own, "ahead")
            if n_after is None or n_before is None:
                return None
            if chars is None:
                wild[0], wild[1] = max(wild[0], n_after), max(wild[1], n_before)
            else:
                for x in chars:
                    after[x] = max(after.get(x, 0), n_after)
                    before[x] = max(before.get(x, 0), n_before)
    return after, before, wild[0], wild[1]


def reads_past(alt: list, ascii_ok: list, order: range, own: int, refused: str) -> int | None:
    """How many characters a match attempt can read going through alt's elements in `order` from a character
    item: their widths up to the first that no ASCII matches (an optional one is passed over); None at an
    element of kind `refused`."""
    n = own
    for j in order:
        f = alt[j]
        if f.kind == refused:
            return None
        if not ascii_ok[j]:
            if f.least:
                break
            continue
        n += f.width
    return n


# --- a search tried only where a match can start ------------------------------------------------------------

class RunLocal:
    """pattern.search(text) tried only on stretches of the characters its matches consume, for a pattern whose
    matches start with a non-ASCII character (a byte >= 0x80 for a bytes pattern) and look nothing ahead:
    ftfy's UTF-8 clues (non-ASCII characters and spaces; ~19 us -> ~4 on a tweet) and its test for UTF-8 with
    spaces for 0xA0 bytes, run on every text the step encodes (high bytes and spaces; ~10 -> ~2 us: the
    pattern is an alternation of classes, which re scans position by position). Anything but search() is the
    pattern's own."""

    def __init__(self, pattern: re.Pattern, ascii_consumed: str):
        self.pattern = pattern
        if isinstance(pattern.pattern, bytes):
            also = "".join(re.escape(ch) for ch in ascii_consumed)
            self._stretches = re.compile(f"[\\x80-\\xff][\\x80-\\xff{also}]*".encode("latin-1"))
        else:  # the same classes spelled as negations: re compiles a range up to U+10FFFF slowly (~20 ms)
            rest = "".join(re.escape(chr(c)) for c in range(128) if chr(c) not in ascii_consumed)
            self._stretches = re.compile(f"[^\\x00-\\x7f][^{rest}]*")

    @classmethod
    def of(cls, pattern: re.Pattern):
        """A RunLocal for the pattern if its reading allows, else the pattern itself."""
        read = consumed(pattern)
        if read is None or read.ahead or min(read.first, default=0) < 128:
            return pattern
        return cls(pattern, "".join(chr(x) for x in sorted(read.any) if x < 128))

    def search(self, text: str):
        search = self.pattern.search
        for stretch in self._stretches.finditer(text):
            found = search(text, stretch.start(), stretch.end())  # the lookbehind still sees the text before
            if found:
                return found
        return None

    def __getattr__(self, name):
        return getattr(self.pattern, name)
