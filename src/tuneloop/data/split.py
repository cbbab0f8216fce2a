"""Train / validation / test splits: random or stratified by label, sizes as counts or fractions, seeded.

    parts, unused, removed, notes = split_rows(["neg", "pos", ...], Sizes(0.8, 0.1, 0.1), stratify=True, seed=0)
    # parts["test"] == [row indices]; test is drawn first, then validation, then train from the rest, so a
    # bigger train split never changes the evaluation sets

`before_train(eval_rows, pool_rows)` may remove rows from the training pool before train is drawn (the
contamination check), so the requested train size is still met when enough rows are left.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

import numpy as np

from tuneloop.errors import UserError

SPLITS = ("train", "validation", "test")


@dataclass
class Sizes:
    train: float
    validation: float
    test: float

    def count(self, name: str, total: int) -> int:
        spec = getattr(self, name)
        return int(spec) if spec >= 1 else int(round(spec * total))


def quota(counts: dict, n: int, name: str) -> dict:
    """Split n across groups in proportion to counts (largest remainder), never above a group's count."""
    total = sum(counts.values())
    if n > total:
        raise UserError(f"data.{name}_size asks for {n} rows but only {total} are left after cleaning and "
                        f"deduplication; lower data.{name}_size")
    raw = {k: n * c / total for k, c in counts.items()}
    out = {k: int(v) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: raw[k] - out[k], reverse=True)[: n - sum(out.values())]:
        out[k] += 1
    return out


def balanced_quota(counts: dict, n: int) -> dict:
    """Equal share per group where available; what a small group cannot fill goes to the others."""
    out, left, groups = {k: 0 for k in counts}, n, sorted(counts, key=counts.get)
    for i, k in enumerate(groups):
        take = min(counts[k], left // (len(groups) - i))
        out[k], left = take, left - take
    return out


def split_rows(labels: list, sizes: Sizes, stratify: bool, seed: int, balance_train: bool = False,
               before_train: Callable | None = None) -> tuple[dict, list, list, dict]:
    """Returns (split -> row indices, unused indices, indices removed by before_train, sampling notes)."""
    # numpy's PCG64 permutations: random.shuffle draws each swap in Python (~1 us a row, twice: 2-3% of a fast
    # prepare of 200k rows); a seed gives the same splits on any machine with the same numpy (Generator streams
    # have been stable since 1.17, without a formal promise; random.shuffle has none either)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels)).tolist()
    pools: dict = defaultdict(list)
    if stratify:
        for i in order:
            pools[labels[i]].append(i)
    else:
        pools[""] = order
    n = len(labels)
    out, removed = {}, []
    notes = {"seed": seed, "shuffle": "numpy PCG64", "stratified": stratify, "balanced_train": balance_train}
    for name in ("test", "validation", "train"):
        if name == "train" and before_train is not None:
            gone = set(before_train(out["test"] + out["validation"], [i for p in pools.values() for i in p]))
            removed = sorted(gone)
            if gone:
                pools = defaultdict(list, {k: [i for i in v if i not in gone] for k, v in pools.items()})
        counts = {k: len(v) for k, v in pools.items()}
        want = sizes.count(name, n)
        if getattr(sizes, name) < 1:  # fractions that sum to 1 may round one row past what is left
            want = min(want, sum(len(v) for v in pools.values()))
        if name == "train" and balance_train:
            q = balanced_quota(counts, min(want, sum(counts.values())))
            if sum(q.values()) < want:
                raise UserError(f"data.train_size={want} is more than the {sum(q.values())} rows left")
        else:
            q = quota(counts, min(want, sum(counts.values())) if name == "train" and removed else want, name)
        picked = []
        for k, c in q.items():
            picked += pools[k][:c]
            pools[k] = pools[k][c:]
        picked = rng.permutation(picked).tolist()
        out[name] = picked
    unused = sorted(i for p in pools.values() for i in p)
    return {k: out[k] for k in SPLITS}, unused, removed, notes
