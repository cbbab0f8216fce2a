"""Exact and near-duplicate detection: normalized hashes, and MinHash + LSH vectorized with numpy.

    sigs = minhash(["@united my bag never arrived", "@united my bag never arrived!!"])   # [2, 128] uint32
    pairs = near_pairs(sigs, threshold=0.8)          # [(1, 0)]: row 1 is a near-duplicate of row 0

Shingles are word n-grams (bigrams by default) of the case-folded text. Instead of one Python MinHash object
per row (datasketch), a batch of rows is hashed as one [shingles, permutations] matrix with multiply-shift
hashing and reduced per row with `np.minimum.reduceat`; LSH buckets are found by sorting band hashes, so no
Python dict holds a million keys. Candidate pairs are verified on the signatures (estimated Jaccard).
bench/data_prep.py compares speed, precision and recall with `datasketch.MinHashLSH`.
"""

from __future__ import annotations

import re
import zlib

import numpy as np

from tuneloop.data.speedups import ascii_key

NUM_PERM = 128
_WORD = re.compile(r"\w+")
# ASCII bytes -> the same words _WORD finds in the casefolded text: letters lowered, digits and "_" kept, rest " "
_ASCII_WORDS = bytes(b + 32 if 65 <= b <= 90 else b if (97 <= b <= 122 or 48 <= b <= 57 or b == 95) else 32
                     for b in range(256))
_MASK32 = np.uint64(0xFFFFFFFF)
_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant (golden ratio) to combine word hashes into n-grams


def exact_key(text: str) -> int:
    """64-bit hash of the normalized text: casefolded, whitespace runs made one space, ends stripped, i.e. of
    " ".join(text.casefold().split()) as UTF-8. Python's own bytes hash (SipHash), seeded per process, so keys
    compare within one prepare() run, which is all they are for (1.5 us less per row than blake2b).
    ASCII text (most rows) takes speedups.ascii_key: no split into words and join (~3 -> ~1 us per tweet in
    Python, ~0.3 in C)."""
    if text.isascii():
        return ascii_key(text)
    folded = text.casefold()
    if "\n" in folded:
        folded = folded.replace("\n", " ")
    # printable: no whitespace but " " (a test checks every code point); cleaned text is mostly like that, and
    # then the split into words and the join (~2.5 us per tweet) would give it back unchanged
    if not folded.isprintable() or "  " in folded or folded[:1] == " " or folded[-1:] == " ":
        folded = " ".join(folded.split())
    return hash(folded.encode("utf-8", "surrogatepass"))


def _permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) | np.uint64(1)  # odd multipliers
    b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
    return a, b


def shingle_hashes(texts: list, ngram: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(hashes uint64 < 2**32, row index) of every word n-gram; a row shorter than n gives one shingle."""
    words, counts = [], []  # words as UTF-8 bytes, what crc32 hashes
    for t in texts:
        if t.isascii():  # \w on ASCII is [A-Za-z0-9_] and casefold is lower: one translate + split at C speed
            toks = t.encode("ascii").translate(_ASCII_WORDS).split()
        else:  # one encode per row, not per word (no word holds "\n": \w excludes it)
            toks = _WORD.findall(t.casefold())
            toks = "\n".join(toks).encode("utf-8", "surrogatepass").split(b"\n") if toks else []
        if len(toks) < ngram:
            toks = [b" ".join(toks)] + [b""] * (ngram - 1)  # one shingle for short rows, even empty ones
        words += toks
        counts.append(len(toks))
    h = np.fromiter(map(zlib.crc32, words), np.uint64, len(words))
    row = np.repeat(np.arange(len(texts), dtype=np.int64), counts)
    m = len(h) - ngram + 1
    g = h[:m].copy()
    for k in range(1, ngram):
        g = g * _MIX + h[k: k + m]
    valid = row[:m] == row[ngram - 1:]  # n-grams that do not cross a row boundary
    g = (g[valid] ^ (g[valid] >> np.uint64(29))) & _MASK32
    return g, row[:m][valid]


def minhash(texts: list, ngram: int = 2, num_perm: int = NUM_PERM, seed: int = 1, chunk: int = 512) -> np.ndarray:
    """MinHash signatures [len(texts), num_perm] uint32. Cost ~ shingles x num_perm multiply-adds. Chunks of 512
    rows keep the [num_perm, shingles] products (~16 MB for tweets) in cache: ~20% faster than 2048 here."""
    a, b = _permutations(num_perm, seed)
    out = np.empty((len(texts), num_perm), dtype=np.uint32)
    buf = np.empty(0, dtype=np.uint64)
    for s in range(0, len(texts), chunk):
        h, row = shingle_hashes(texts[s: s + chunk], ngram)
        # multiply-shift hashing: (a*x + b) mod 2**64, top 32 bits; [num_perm, shingles] built in place, so
        # the per-row min runs along contiguous memory (4x faster than reducing [shingles, num_perm] on axis 0).
        # The shift commutes with min, so it runs on the reduced [num_perm, rows] result only. A broadcast
        # multiply into one reused buffer: np.multiply.outer took 25 ns per product here vs ~1 ns (and a fresh
        # ~80 MB array per chunk costs page faults).
        if buf.size < num_perm * len(h):
            buf = np.empty(num_perm * len(h), dtype=np.uint64)
        hv = buf[: num_perm * len(h)].reshape(num_perm, len(h))
        np.multiply(a[:, None], h[None, :], out=hv)
        hv += b[:, None]
        starts = np.flatnonzero(np.r_[True, row[1:] != row[:-1]])
        out[s: s + len(starts)] = (np.minimum.reduceat(hv, starts, axis=1) >> np.uint64(32)).T
    return out


def lsh_params(threshold: float, num_perm: int = NUM_PERM, min_recall: float = 0.995) -> tuple[int, int]:
    """(bands, rows per band): fewest candidates below the threshold among the settings that make a pair AT
    the threshold a candidate with probability >= min_recall. Candidates are verified afterwards, so extra
    candidates cost time, missed ones cost recall (datasketch's balanced choice finds ~70% at J = 0.85)."""
    s = np.linspace(0, threshold, 101)
    best, best_fp = (num_perm, 1), float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            if 1 - (1 - threshold**r) ** b < min_recall:
                continue
            fp = np.trapezoid(1 - (1 - s**r) ** b, s)
            if fp < best_fp:
                best, best_fp = (b, r), fp
    return best


def candidate_pairs(sigs: np.ndarray, bands: int, rows: int, subset: np.ndarray | None = None,
                    merge_at: int = 1 << 16) -> np.ndarray:
    """[k, 2] (later, earlier) row pairs that share a band bucket, each paired with its bucket's first row
    and its predecessor in the bucket (linear in bucket size, unlike all pairs), sorted. Rows are positions in
    `subset` (indices into sigs) when given, so callers need not copy a [n, num_perm] slice.

    Memory: pairs are kept as one int64 code (later * n + earlier); new bands' codes are merged into the
    distinct set (np.unique) once they outnumber it and merge_at, so the peak stays a few int64 arrays of the
    distinct-pair count, not 2 x bands x duplicates pairs of [k, 2], and the set is not re-sorted per band."""
    n = len(sigs) if subset is None else len(subset)
    idx = np.arange(n, dtype=np.int64)
    weights = np.random.default_rng(7).integers(1, 2**63, size=rows, dtype=np.uint64) | np.uint64(1)
    codes = np.empty(0, dtype=np.int64)
    pending: list = []
    for band in range(bands):
        cols = slice(band * rows, (band + 1) * rows)
        part = sigs[:, cols] if subset is None else sigs[subset, cols]
        key = (part.astype(np.uint64) * weights).sum(axis=1)
        order = np.argsort(key, kind="stable")  # ties in row order, as lexsort((idx, key)) but one sort
        k = key[order]
        same = np.r_[False, k[1:] == k[:-1]]
        if not same.any():
            continue
        group_start = np.maximum.accumulate(np.where(same, 0, idx))
        later = order[same] * n
        pending += [later + order[group_start[same]], later + order[np.flatnonzero(same) - 1]]
        if sum(map(len, pending)) > max(len(codes), merge_at):
            codes = np.unique(np.concatenate([codes, *pending]))
            pending = []
    if pending:
        codes = np.unique(np.concatenate([codes, *pending]))
    return np.stack([codes // n, codes % n], 1) if len(codes) else np.empty((0, 2), dtype=np.int64)


def near_pairs(sigs: np.ndarray, threshold: float, subset: np.ndarray | None = None,
               block: int = 1 << 16) -> np.ndarray:
    """[k, 2] (later, earlier) pairs whose estimated Jaccard (share of equal signature slots) >= threshold.
    With `subset`, rows are positions in subset: the same result as near_pairs(sigs[subset]) without the copy."""
    if (len(sigs) if subset is None else len(subset)) < 2:
        return np.empty((0, 2), dtype=np.int64)
    pairs = candidate_pairs(sigs, *lsh_params(threshold, sigs.shape[1]), subset=subset)
    rows = pairs if subset is None else subset[pairs]
    keep = np.zeros(len(pairs), dtype=bool)
    for s in range(0, len(pairs), block):  # bounded memory: 2 x [block, num_perm] uint32 (64 MB) at a time
        p = rows[s: s + block]
        keep[s: s + block] = (sigs[p[:, 0]] == sigs[p[:, 1]]).mean(axis=1) >= threshold
    return pairs[keep]


def greedy_duplicates(pairs: np.ndarray, n: int) -> np.ndarray:
    """of[i] = the earlier kept row that row i near-duplicates, or -1 when i is kept. Same result as scanning
    rows in order and dropping a row that matches an already kept one; only the verified pairs are looped."""
    of = np.full(n, -1, dtype=np.int64)
    for i, j in pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))].tolist():
        if of[i] < 0 and of[j] < 0:
            of[i] = j
    return of


def jaccard(a: str, b: str, ngram: int = 2) -> float:
    """Exact Jaccard of two texts' shingle sets (ground truth for tests and the benchmark)."""
    ha, _ = shingle_hashes([a], ngram)
    hb, _ = shingle_hashes([b], ngram)
    sa, sb = set(ha.tolist()), set(hb.tolist())
    return len(sa & sb) / max(len(sa | sb), 1)
