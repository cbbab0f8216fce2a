"""Write the prepared data: split files from the spool, training-side mitigations, manifest.json, report.html.

    manifest, paths = write_outputs(stage, cfg, {"train": [row ids], ...}, info, tokenizer)

Mitigations only touch the training split and are recorded in the manifest: counterfactual copies (gendered
WEAT pairs swapped, meta.augmented = "counterfactual"), group x label reweighing (meta.weight) or resampling
(extra copies of rare group x label cells, meta.augmented = "resample"). Augmented copies are not input rows,
so they are counted under manifest["mitigations"], not in the ledger.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from array import array
from collections import Counter
from pathlib import Path

import numpy as np

from tuneloop.config import DataConfig
from tuneloop.data import audit as bias
from tuneloop.data.formats import Example
from tuneloop.data.speedups import gather
from tuneloop.data.split import SPLITS
from tuneloop.data.validate import RULES


def _pread(f, n: int, pos: int) -> bytes:
    return os.pread(f.fileno(), n, pos)


def _seek_read(f, n: int, pos: int) -> bytes:
    f.seek(pos)
    return f.read(n)


_read_at = _pread if hasattr(os, "pread") else _seek_read  # os.pread: POSIX only


# A spool up to this size is read whole and its lines sliced out (no system call per row: ~2 us less each, for
# up to 256 MiB more memory: 200k bench rows peak at 381 MB instead of 334); a larger one (~700k bench rows
# and up) is read line by line, so memory stays bounded on any file.
SPOOL_IN_MEMORY = 256 << 20


def _spooled(spool, c, i: int) -> bytes:
    """Candidate i's spooled line: a slice of the spool read whole (bytes), or one positioned read of its known
    length on the unbuffered spool file (a buffered seek + readline refilled an 8 KB buffer per row: twice the
    time; pread is one system call, not two)."""
    start, end = c.offsets[i], c.offsets[i + 1] if i + 1 < len(c.offsets) else c.spool_end
    if isinstance(spool, bytes):
        return spool[start:end]
    line = _read_at(spool, end - start, start)
    if len(line) != end - start:  # regular files do not read short; if one did, fail rather than corrupt
        raise OSError(f"{spool.name}: read {len(line)} of {end - start} bytes at {start}")
    return line


def _read(spool, c, i: int) -> Example:
    return Example.from_json(json.loads(_spooled(spool, c, i)))


def _counterfactual(ex: Example, pairs: dict, rx) -> Example | None:
    """A copy of ex with gendered terms swapped in the inputs (and in the answer of generation data)."""
    msgs = [dict(m) for m in ex.messages]
    changed = False
    for m in msgs:
        if m["role"] == "user" or (ex.label is None and m["role"] == "assistant"):
            new = bias.counterfactual(m["content"], pairs, rx)
            if new is not None and new != m["content"]:
                m["content"], changed = new, True
    return Example(msgs, ex.label, {**ex.meta, "augmented": "counterfactual"}, ex.rejected) if changed else None


def _group_plan(c, ids: list, audit: dict, names: list, mode: str, seed: int) -> tuple[dict, list, dict]:
    """Reweigh (weight per row id) or oversample (extra row ids) by (flagged identity group, label) cell."""
    flagged = sorted({names.index(f["group"]) for f in audit["flags"]})
    bits = flagged or [i for i, g in enumerate(names) if audit["groups"][g].get("rows", 0) >= audit["min_rows"]]
    w = bias.group_label_weights([c.labels[i] for i in ids], [c.masks[i] for i in ids], bits)
    cells = {f"{names[int(g)] if g != 'none' else 'none'}|{y}": round(v, 4) for (g, y), v in w["weights"].items()}
    if mode == "reweight":
        weights = {i: round(w["weights"][(g, c.labels[i])], 4) for i, g in zip(ids, w["group_of"])}
        return weights, [], {"mode": "reweight", "weights": cells}
    rng, extra, by_cell = random.Random(seed), [], {}
    for i, g in zip(ids, w["group_of"]):
        by_cell.setdefault((g, c.labels[i]), []).append(i)
    for cell, members in sorted(by_cell.items(), key=str):
        need = int(round(len(members) * (w["weights"][cell] - 1)))
        extra += [rng.choice(members) for _ in range(max(need, 0))]
    return {}, extra, {"mode": "resample", "weights": cells, "added": len(extra)}


def _write_split(path: Path, spool, c, ids: list, weights: dict, extra_ids: list, cf, data_hash) -> dict:
    """Stream one split from the spool (bytes, or the file when over SPOOL_IN_MEMORY) to its file, one example or
    4096 copied lines at a time; returns its counts."""
    labels, added = Counter(), 0
    cf_rows, copied = [], []
    with open(path, "wb") as f:
        def flush() -> None:  # copied lines go out joined, 4096 at a time: one write and hash call, not two per row
            chunk = b"".join(copied)
            f.write(chunk)
            data_hash.update(chunk)
            copied.clear()

        def put(ex: Example) -> None:
            flush()
            line = ex.to_line()
            f.write(line)
            data_hash.update(line)
            labels[ex.label] += 1

        if not cf and not weights and isinstance(spool, bytes):  # every line as spooled: 4096 at a time, joined
            for k in range(0, len(ids), 4096):  # (by speedups.gather: in C, no bytes object per line)
                copied.append(gather(spool, c.offsets, c.spool_end, ids, k, k + 4096))
                flush()
            labels.update(map(c.labels.__getitem__, ids))
            ids = ()  # (all written: nothing for the row-by-row loop)
        for i in ids:
            if not cf and i not in weights:  # the spooled line is already this row's output line
                copied.append(_spooled(spool, c, i))
                labels[c.labels[i]] += 1
                if len(copied) >= 4096:
                    flush()
                continue
            ex = _read(spool, c, i)
            if i in weights:
                ex.meta["weight"] = weights[i]
            put(ex)
            twin = cf and _counterfactual(ex, *cf)
            if twin:
                cf_rows.append(twin)  # only rows with gendered terms; written after the originals
        for ex in cf_rows:
            put(ex)
        for i in extra_ids:
            ex = _read(spool, c, i)
            ex.meta.update({"augmented": "resample", **({"weight": weights[i]} if i in weights else {})})
            put(ex)
            added += 1
        flush()
    return {"n": sum(labels.values()), "labels": dict(labels), "counterfactual": len(cf_rows), "resampled": added}


def write_outputs(st, cfg: DataConfig, parts: dict, info: dict, tokenizer) -> tuple[dict, dict]:
    from tuneloop.data.prepare import file_sha256
    from tuneloop.data.report import write_data_report

    c, out_dir = st.cand, st.out_dir
    names = st.terms.names
    # the kept rows in file order and each one's split, sorted in numpy (a dict of 167k rows and sorting their
    # scattered int objects took ~0.2 s of the bench's 8 s fast job; ~0.05 s so)
    part_names = list(parts)
    rows = np.concatenate([np.frombuffer(array("q", parts[k]), dtype=np.int64) for k in part_names])
    order = np.argsort(rows, kind="stable")
    kept = rows[order].tolist()
    split_of = list(map(part_names.__getitem__, np.repeat(np.arange(len(part_names)),
                                                          [len(parts[k]) for k in part_names])[order].tolist()))
    audit = bias.audit([lab or "" for lab in map(c.labels.__getitem__, kept)], list(map(c.masks.__getitem__, kept)),
                       split_of, names, cfg.audit_threshold)
    mitigations: dict = {"counterfactual": cfg.counterfactual, "group_balance": cfg.group_balance}
    paths, data_hash, split_info = {}, hashlib.sha256(), {}
    weights, extra = {}, []
    if cfg.group_balance in ("reweight", "resample"):
        weights, extra, mitigations["group_balance_detail"] = _group_plan(
            c, parts["train"], audit, names, cfg.group_balance, info["seed"])
    cf = None
    if cfg.counterfactual:
        pairs = bias.swap_pairs()
        cf = (pairs, bias.swap_regex(pairs))
    st.spool.flush()
    with open(st.spool.name, "rb", buffering=0) as spool_file:
        spool = spool_file
        if c.spool_end <= SPOOL_IN_MEMORY:
            spool = spool_file.read()
            if len(spool) != c.spool_end:  # as the line by line read: fail rather than corrupt
                raise OSError(f"{st.spool.name}: read {len(spool)} of {c.spool_end} spooled bytes")
        preview = _read(spool, c, parts["train"][0]) if parts["train"] else None
        for name in SPLITS:
            paths[name] = out_dir / f"{name}.jsonl"
            train = name == "train"
            info_ = _write_split(paths[name], spool, c, parts[name], weights if train else {},
                                 extra if train else [], cf if train else None, data_hash)
            if train and cfg.counterfactual:
                mitigations["counterfactual_added"] = info_["counterfactual"]
            split_info[name] = {"n": info_["n"], "labels": info_["labels"]}
    src_file = info["source_file"]
    manifest = {
        "source": cfg.source,
        "source_sha256": file_sha256(src_file) if src_file else _folder_hash(Path(cfg.source)),
        "data_sha256": data_hash.hexdigest(),
        "format": info["format"],
        "counts": st.ledger.to_dict(),
        "splits": split_info,
        "labels": cfg.labels,
        "sampling": info["sampling"],
        "token_lengths": {name: _length_stats(list(map(c.tokens.__getitem__, parts[name]))) for name in SPLITS},
        "rules": {rule: RULES[rule] for rule in st.ledger.rejected},
        "warnings": dict(st.warnings),
        "cleaning": {"repair_text": cfg.repair_text, "strip_html": cfg.strip_html},
        "pii": {"types": list(st.pii_types), "redacted": dict(st.pii_counts)},
        "dedup": {"mode": cfg.dedup, "exact_removed": st.ledger.dropped.get("duplicate", 0),
                  "near_threshold": cfg.near_dup_threshold, **info["near"],
                  "contamination_threshold": cfg.contamination_threshold,
                  "contamination_removed": info["contamination"]},
        "audit": audit,
        "mitigations": mitigations,
        "token_counting": ("none" if st.counter is None else
                           "exact render" if st.counter.exact else "additive (verified against the template)"),
        "files": sorted(["train.jsonl", "validation.jsonl", "test.jsonl", "rejected.jsonl", "dropped.jsonl",
                         "manifest.json", "report.html"]),
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
    write_data_report(out_dir / "report.html", manifest, st.examples, c, parts, preview, tokenizer)
    return manifest, paths


def _folder_hash(path: Path) -> str:
    """sha256 over the files of a datasets folder (sorted names and contents); '' when nothing to hash."""
    if not path.is_dir():
        return ""
    from tuneloop.data.prepare import file_sha256

    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(path)}:{file_sha256(f)}\n".encode())
    return h.hexdigest()


def _length_stats(xs: list) -> dict:
    if not xs:
        return {"n": 0}
    s = sorted(xs)
    return {"n": len(s), "mean": round(sum(s) / len(s), 1), "p50": s[len(s) // 2], "p95": s[int(len(s) * 0.95)],
            "max": s[-1]}
