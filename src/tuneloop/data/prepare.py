"""The data stage: read -> validate -> clean -> redact -> deduplicate -> length filter -> split -> audit -> write.

    result = prepare(cfg.data, tokenizer, out_dir=Path("runs/x/data"), seed=0)

Every input row ends in exactly one bucket: kept (in a split), rejected (a rule id from validate.RULES;
quarantined in rejected.jsonl with file, line, field and message) or dropped (validate.DROP_REASONS, one
line each in dropped.jsonl, e.g. {"line": 9, "reason": "near_duplicate", "of_line": 4}). The counts add up
(checked), are printed and saved in manifest.json with the input hash; report.html explains them.

Memory stays bounded: pass 1 streams rows and spools candidates to disk as their final JSON lines, keeping
per row only numbers (line, token counts, group mask and spool offset in int64 arrays, a shared label string,
a 128 x uint32 MinHash signature: ~0.55 KB/row) plus the exact-duplicate table (~0.1 KB/row); pass 2 decides
near-duplicates, splits and contamination on those arrays (LSH pairs as int64 codes, no signature copies) and
copies spooled lines into the split files. Measured: 1M rows with PII, near-dup and contamination peak at
1.19 GB RSS (bench/data_prep.py --memory-rows 1000000).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path

import numpy as np

from tuneloop.config import DataConfig
from tuneloop.data import audit as bias
from tuneloop.data import dedup, pii
from tuneloop.data.clean import QualityRules, clean_example, clean_text, quality_failure
from tuneloop.data.formats import FORMATS, Example, Mapping, check_columns, detect_format, iter_source, json_line, \
    source_file, to_example
from tuneloop.data.readers import arrow_columns
from tuneloop.data.speedups import plain_messages
from tuneloop.data.split import SPLITS, Sizes, split_rows
from tuneloop.data.tokens import TokenCounter
from tuneloop.data.validate import ROLES, Rejection, role_verdict
from tuneloop.errors import UserError

# Rows per _flush (token counts, MinHash signatures, identity groups, spooling). Small, so that a batch's
# objects are still in cache when _flush walks them (~8 times) and pass 1 reuses freshly freed memory: with
# 4096 rows pending (~10 MB alive) every walk missed the cache. Same-process round robin on the bench's 200k
# rows (2-core EPYC VM, CPU s): fast job 4096 -> 10.7-11.4, 128 -> 9.4-9.8; near-dup job 24.8-26.0 -> 23.9-24.5
# (MinHash chunks rows itself, so its cost per row does not grow).
BATCH = 128
# ... except with a tokenizer: its batch encoder's threads cost CPU per call, so small calls cost more than the
# cache saves (tokenizer job 21.3-22.4 s at 4096, 26.8-28.9 at 512-1024).
COUNT_BATCH = 4096


@dataclass
class Ledger:
    """Where every input row went. Invariant: input == kept + sum(rejected) + sum(dropped)."""

    input: int = 0
    kept: int = 0
    rejected: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)

    def check(self) -> None:
        total = self.kept + sum(self.rejected.values()) + sum(self.dropped.values())
        assert total == self.input, f"row accounting broken: {total} != {self.input}"

    def to_dict(self) -> dict:
        return {"input": self.input, "kept": self.kept, "rejected": dict(self.rejected),
                "dropped": dict(self.dropped)}

    def summary(self) -> str:
        return (f"{self.input} rows in, {self.kept} kept, {sum(self.rejected.values())} rejected "
                f"{dict(self.rejected)}, {sum(self.dropped.values())} dropped {dict(self.dropped)}")


@dataclass
class Prepared:
    splits: dict  # split name -> list[Example] (SplitFile when prepare(load_splits=False))
    ledger: Ledger
    manifest: dict


class SplitFile(Sequence):
    """A written split read on first access, so `tuneloop data prepare` never holds 1M examples in memory."""

    def __init__(self, path: Path, n: int):
        self.path, self.n, self._rows = path, n, None

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if self._rows is None:
            self._rows = load_split(self.path)
        return self._rows[i]


def _int64s() -> array:
    return array("q")


@dataclass
class Candidates:
    """Pass-1 survivors: per-row numbers in compact int64 arrays (8 B/row each, not a 36 B Python int per
    entry); the examples themselves live in the spool file as their final JSON lines."""

    offsets: array = field(default_factory=_int64s)  # row i: spool[offsets[i]: offsets[i + 1] or spool_end]
    lines: array = field(default_factory=_int64s)
    labels: list = field(default_factory=list)  # str (one shared object per distinct label) or None
    tokens: array = field(default_factory=_int64s)
    answer_tokens: array = field(default_factory=_int64s)
    masks: array = field(default_factory=_int64s)  # identity-group bit masks (< 64 groups)
    sigs: list = field(default_factory=list)  # [batch, num_perm] uint32 arrays, stacked once in pass 2
    spool_end: int = 0  # bytes spooled (tell() per row costs more than this sum)


class JsonStrings(dict):
    """json.dumps of each string asked for, computed once (file names, drop reasons, field names)."""

    def __missing__(self, key: str) -> str:
        self[key] = out = json.dumps(key)
        return out


class Stage:
    """Pass-1 state: the open output files, the counters and the settings, for one prepare() call."""

    def __init__(self, cfg: DataConfig, tokenizer, out_dir: Path):
        self.cfg, self.out_dir = cfg, out_dir
        self.mapping = Mapping.from_config(cfg)
        self.quality = QualityRules.from_config(cfg)
        self.pii_types = pii.parse_types(cfg.pii)
        self.counter = TokenCounter(tokenizer) if tokenizer is not None else None
        self.batch = BATCH if self.counter is None else COUNT_BATCH
        self.ledger, self.cand = Ledger(), Candidates()
        self.pii_counts, self.warnings, self.examples = Counter(), Counter(), {}
        self.seen: dict = {}  # exact key -> first line
        # a read line's digest -> (first line of its exact key, its warnings), for lines that reached the exact
        # check: a byte-identical line later is that key's duplicate too (2.6% of the bench's lines; ~100 B each)
        self.repeats: dict = {}
        self.label_ids: dict = {}  # label -> its first string object, so 1M labels share a few strings
        self.terms = bias.matchers(bias.identity_terms())
        # settings under which a plain chat row may take _plain_chat (the others change what a row becomes)
        self.plain_chat = not (cfg.strip_html or cfg.min_confidence or self.mapping.label_from_answer)
        self.messages_column = self.mapping.columns.get("messages", "messages")
        self.pending: list = []
        self.quarantine = open(out_dir / "rejected.jsonl", "wb")
        self.dropped = open(out_dir / "dropped.jsonl", "w", encoding="utf-8")
        self.json_strings = JsonStrings()
        self.spool = open(out_dir / ".candidates.jsonl", "w+b")

    def close(self) -> None:
        for f in (self.quarantine, self.dropped, self.spool):
            f.close()

    def reject(self, row, r: Rejection) -> None:
        if self.cfg.strict:
            raise UserError(f"{row.source}:{row.line}: [{r.rule}] {r.field or 'row'}: {r.message} "
                            "(strict mode; drop data.strict to quarantine bad rows in rejected.jsonl)")
        self.ledger.rejected[r.rule] += 1
        rec = {"rule": r.rule, "file": row.source, "line": row.line, "field": r.field, "message": r.message,
               "row": row.fields}
        self.examples.setdefault(r.rule, rec)
        self.quarantine.write(json_line(rec, str))  # (orjson: ~0.6 vs ~6 us with json; 5% of the bench's rows)

    def drop(self, line: int, source: str, reason: str, **detail) -> None:
        """One line of dropped.jsonl: json.dumps({"line": ..., "source": ..., "reason": ..., **detail}), spelled
        out with the strings' JSON remembered (a json.dumps call per drop cost ~3x more; 11% of the bench's rows
        are dropped as duplicates, more as near-duplicates)."""
        self.ledger.dropped[reason] += 1
        js = self.json_strings
        text = f'{{"line": {line:d}, "source": {js[source]}, "reason": {js[reason]}'
        for key, value in detail.items():
            text += f", {js[key]}: {value:d}" if type(value) is int else f", {js[key]}: {json.dumps(value)}"
        self.dropped.write(text + "}\n")


def dedup_text(ex: Example, classification: bool) -> str:
    """The text duplicates are judged on: the inputs for classification (same tweet with two labels is a
    duplicate), every non-system turn otherwise."""
    roles = ("user",) if classification else ("user", "assistant", "function")
    parts = [m["content"] for m in ex.messages if m["role"] in roles and isinstance(m.get("content"), str)]
    return "\n".join(parts + [m["content"] for m in ex.rejected or []])


def _plain_chat(st: Stage, row) -> tuple | None:
    """(example, dedup text, warning ids) for the most common row, a chat whose messages are all {role, content}
    with valid string content, in one pass over its messages; None for any other row (a rule may fire, or a
    field needs converting), which the general path then decides. For such a row this is exactly what to_example,
    clean_example and dedup_text give (tests/unit/test_data_fastpaths.py compares them on random rows),
    without their intermediate lists, dispatch and per-message checks of fields it cannot have (valgrind on
    the bench's tweets: 11% fewer instructions per row)."""
    msgs = row.fields.get(st.messages_column)
    if type(msgs) is not list or not msgs:
        return None
    plain = plain_messages(msgs, ROLES, clean_text, st.cfg.repair_text)  # (speedups: in C where built)
    if plain is None:
        return None
    turns, roles, trained = plain
    problem, warnings = role_verdict(roles, True)
    if problem:
        return None
    return Example(turns, None, {"source": row.source, "line": row.line}), trained, warnings


def _row_pass(st: Stage, row, fmt: str) -> None:
    """Validate, clean and filter one row; a survivor is queued for the batched steps."""
    cfg = st.cfg
    if row.digest is not None:
        repeat = st.repeats.get(row.digest)
        if repeat is not None:  # the same bytes as an earlier line: the same row, warnings and key (~35 us less)
            for w in repeat[1]:
                st.warnings[w] += 1
            return st.drop(row.line, row.source, "duplicate", of_line=repeat[0])
    plain = _plain_chat(st, row) if fmt == "chat" and st.plain_chat else None
    if plain:
        ex, text, warnings = plain
    else:
        try:
            ex = to_example(row, fmt, st.mapping)
            clean_example(ex, fmt == "classification", cfg.strip_html, cfg.repair_text)
        except Rejection as r:
            st.reject(row, r)
            return
        warnings = ex.meta.pop("warnings", ())
        text = None
    for w in warnings:  # (most chat rows warn no_system_message; Counter.update costs ~2 us)
        st.warnings[w] += 1
    if cfg.min_confidence and ex.meta.get("confidence", 1.0) < cfg.min_confidence:
        return st.drop(row.line, row.source, "low_confidence", confidence=ex.meta["confidence"])
    if text is None:
        text = dedup_text(ex, fmt == "classification" or st.mapping.label_from_answer and fmt == "chat")
    failed = quality_failure(text, st.quality)
    if failed:
        return st.drop(row.line, row.source, failed)
    if cfg.dedup != "none":
        first = st.seen.setdefault(dedup.exact_key(text), row.line)
        if row.digest is not None:
            st.repeats[row.digest] = (first, warnings)
        if first != row.line:
            return st.drop(row.line, row.source, "duplicate", of_line=first)
    if st.pii_types:  # after the exact check: dropped rows need none
        pii.redact_example(ex, st.pii_types, st.pii_counts)
    st.pending.append((ex, text))
    if len(st.pending) >= st.batch:
        _flush(st)


def _flush(st: Stage) -> None:
    """Batched steps: token counts (too_long), MinHash signatures, identity groups; spool the survivors."""
    batch, st.pending = st.pending, []
    if not batch:
        return
    totals, answers = (st.counter.count([ex.messages for ex, _ in batch]) if st.counter
                       else ([0] * len(batch), [0] * len(batch)))
    keep = []
    for (ex, text), n, a in zip(batch, totals, answers):
        if st.counter and n > st.cfg.max_tokens:
            st.drop(ex.meta["line"], ex.meta["source"], "too_long", tokens=n, limit=st.cfg.max_tokens)
        else:
            ex.meta["tokens"] = n
            keep.append((ex, text, n, a))
    c = st.cand
    if st.cfg.dedup == "near" or st.cfg.contamination_threshold > 0:
        c.sigs.append(dedup.minhash([t for _, t, _, _ in keep]))
    if not keep:
        return
    # column by column, and the batch's lines spooled in one write (a write and ~15 attribute loads per row less)
    lines = [ex.to_line() for ex, _, _, _ in keep]
    ends = list(accumulate(map(len, lines), initial=c.spool_end))
    c.offsets.extend(ends[:-1])
    c.spool_end = ends[-1]
    st.spool.write(b"".join(lines))
    c.lines.extend([ex.meta["line"] for ex, _, _, _ in keep])
    c.labels.extend([st.label_ids.setdefault(ex.label, ex.label) for ex, _, _, _ in keep])
    c.tokens.extend([n for _, _, n, _ in keep])
    c.answer_tokens.extend([a for _, _, _, a in keep])
    terms = st.terms
    c.masks.extend([bias.group_mask(text, terms) for _, text, _, _ in keep])


def prepare(cfg: DataConfig, tokenizer, out_dir: Path, seed: int, *, load_splits: bool = True) -> Prepared:
    """Run the data stage and write splits, quarantine, drop log, manifest and report under out_dir."""
    for key, value, allowed in (("format", cfg.format, FORMATS), ("dedup", cfg.dedup, ("none", "exact", "near")),
                                ("group_balance", cfg.group_balance, ("none", "reweight", "resample"))):
        if value not in allowed:
            raise UserError(f"data.{key} '{value}' is not one of {', '.join(allowed)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    st = Stage(cfg, tokenizer, out_dir)
    try:
        with collector_paused():
            fmt = _stream(st, cfg)
            _flush(st)
        st.spool.flush()
        return _finish(st, cfg, fmt, tokenizer, seed, load_splits)
    finally:
        st.close()
        (out_dir / ".candidates.jsonl").unlink(missing_ok=True)


@contextlib.contextmanager
def collector_paused():
    """Python's cyclic garbage collector off for pass 1, back as it was after. Pass 1 allocates ~20 short-lived
    containers per row and makes no reference cycles (reference counting frees them as usual), yet the collector
    ran every 700 allocations and walked the growing pass-1 state: 1,520 collections, 0.75 s of a 15.5 s
    prepare of 200k rows. A test checks that pass 1 leaves no cycle for it on rows of every kind. (The switch is
    process-wide: other threads' garbage waits for pass 1 to end too.)"""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _stream(st: Stage, cfg: DataConfig) -> str:
    fmt = cfg.format
    for row in iter_source(cfg.source, cfg.max_row_bytes):
        st.ledger.input += 1
        if fmt == "auto" and row.error is None:
            fmt = detect_format(row.fields, st.mapping)
            check_columns(arrow_columns(Path(cfg.source)) if not cfg.source.startswith("bundled:") else None,
                          fmt, st.mapping, cfg.source)
        _row_pass(st, row, fmt if fmt != "auto" else "chat")
    return fmt


def _finish(st: Stage, cfg: DataConfig, fmt: str, tokenizer, seed: int, load_splits: bool) -> Prepared:
    from tuneloop.data.write import write_outputs

    c, src = st.cand, cfg.source
    if not c.lines:
        raise UserError(f"no usable rows in {src}: see {st.out_dir / 'rejected.jsonl'} and dropped.jsonl")
    sigs = _stack(c.sigs) if c.sigs else None
    alive = np.arange(len(c.lines))
    near = {"pairs_checked": 0}
    if cfg.dedup == "near" and sigs is not None:
        of = dedup.greedy_duplicates(dedup.near_pairs(sigs, cfg.near_dup_threshold), len(c.lines))
        for i in np.flatnonzero(of >= 0).tolist():
            st.drop(c.lines[i], src, "near_duplicate", of_line=c.lines[of[i]])
        alive = np.flatnonzero(of < 0)
        near = {"removed": int((of >= 0).sum()), "bands_rows": dedup.lsh_params(cfg.near_dup_threshold)}
    if cfg.task == "classification" and not cfg.labels:
        cfg.labels = sorted({lab for lab in c.labels if lab is not None})
    classify = cfg.task == "classification" and all(lab is not None for lab in c.labels)
    labels = [c.labels[i] if classify else "" for i in alive.tolist()]
    contaminated: dict = {}

    def decontaminate(eval_rows: list, pool_rows: list) -> list:
        if sigs is None or cfg.contamination_threshold <= 0 or not eval_rows or not pool_rows:
            return []
        sub = alive[np.asarray(eval_rows + pool_rows)]
        pairs = dedup.near_pairs(sigs, cfg.contamination_threshold, subset=sub)
        n_eval = len(eval_rows)
        for later, earlier in pairs.tolist():  # one side eval (< n_eval), the other pool
            if (later < n_eval) != (earlier < n_eval):
                p, e = (later, earlier) if later >= n_eval else (earlier, later)
                contaminated.setdefault(pool_rows[p - n_eval], eval_rows[e])
        return list(contaminated)

    parts, unused, removed, notes = split_rows(
        labels, Sizes(cfg.train_size, cfg.validation_size, cfg.test_size), bool(cfg.stratify and classify),
        seed, bool(cfg.balance_train and classify), decontaminate)
    for i in removed:
        st.drop(c.lines[alive[i]], src, "contamination", of_line=c.lines[alive[contaminated[i]]])
    for i in unused:
        st.drop(c.lines[alive[i]], src, "unused_by_split_sizes")
    parts = {k: alive[np.asarray(v, dtype=np.int64)].tolist() for k, v in parts.items()}
    st.ledger.kept = sum(len(v) for v in parts.values())
    st.ledger.check()
    st.dropped.flush()
    info = {"format": fmt, "near": near, "contamination": len(removed), "sampling": notes, "seed": seed,
            "source_file": source_file(src)}
    manifest, paths = write_outputs(st, cfg, parts, info, tokenizer)
    splits = {k: (load_split(paths[k]) if load_splits else SplitFile(paths[k], manifest["splits"][k]["n"]))
              for k in SPLITS}
    return Prepared(splits, st.ledger, manifest)


def _stack(chunks: list) -> np.ndarray:
    """One [rows, num_perm] array from the per-batch chunks, freeing each chunk once copied, so the peak is
    the result plus one batch instead of twice the signatures (np.concatenate holds both)."""
    out = np.empty((sum(len(x) for x in chunks), chunks[0].shape[1]), dtype=chunks[0].dtype)
    pos = 0
    chunks.reverse()
    while chunks:
        x = chunks.pop()
        out[pos: pos + len(x)] = x
        pos += len(x)
    return out


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def load_split(path: Path) -> list:
    with open(path, encoding="utf-8") as f:
        return [Example.from_json(json.loads(line)) for line in f if line.strip()]
