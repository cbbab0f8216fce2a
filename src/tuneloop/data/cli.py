"""`tuneloop data inspect FILE` and `tuneloop data prepare CONFIG|FILE --out DIR`.

    tuneloop data inspect chats.jsonl                    # format, columns, rule violations with examples
    tuneloop data prepare examples/airline-sentiment/config.yaml --out data/ --data.dedup exact
    tuneloop data prepare chats.jsonl --out data/ --tokenizer none --data.task generation

prepare writes train/validation/test.jsonl, rejected.jsonl, dropped.jsonl, manifest.json and report.html.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from tuneloop.errors import UserError


def _data_config(target: str, overrides: list):
    """(DataConfig, seed, model spec) from a YAML run config or a bare data file plus --data.* overrides."""
    from tuneloop.config import from_dict, load_config, parse_overrides

    if target.endswith((".yaml", ".yml")):
        cfg = load_config(target, overrides)
    else:
        raw = parse_overrides(overrides)
        raw.setdefault("data", {})["source"] = target
        raw["data"].setdefault("task", "generation" if not _looks_classification(target) else "classification")
        cfg = from_dict(raw)
    return cfg.data, cfg.seed, cfg.model.base


def _looks_classification(target: str) -> bool:
    from tuneloop.data.formats import detect_format, iter_source

    for row in iter_source(target):
        if row.error is None:
            return detect_format(row.fields) == "classification"
    return False


def _tokenizer(choice: str, model_spec: str):
    if choice == "none":
        return None
    from tuneloop.models.sources import load_tokenizer, resolve

    if (Path(choice) / "tokenizer_config.json").is_file():  # a tokenizer-only folder
        return load_tokenizer(choice)
    return load_tokenizer(str(resolve(model_spec if choice == "model" else choice).path))


def inspect(path: str, fmt: str, limit: int) -> int:
    """Read a file, detect its format and run every validation rule without writing anything."""
    from tuneloop.config import DataConfig
    from tuneloop.data.clean import clean_example
    from tuneloop.data.formats import Mapping, detect_format, iter_source, to_example
    from tuneloop.data.validate import RULES, Rejection

    cfg = DataConfig(source=path, format=fmt, task="generation")
    mapping = Mapping.from_config(cfg)
    rules, first, columns, n, warnings = Counter(), {}, Counter(), 0, Counter()
    for row in iter_source(path):
        n += 1
        if fmt == "auto" and row.error is None:
            fmt = detect_format(row.fields, mapping)
        columns.update(row.fields)
        try:
            ex = to_example(row, fmt if fmt != "auto" else "chat", mapping)
            clean_example(ex, fmt == "classification", False)
            warnings.update(ex.meta.get("warnings", []))
        except Rejection as r:
            rules[r.rule] += 1
            first.setdefault(r.rule, f"line {row.line}, {r.field or 'row'}: {r.message}")
        if limit and n >= limit:
            break
    print(f"{path}: {n} rows, format {fmt}, columns {dict(columns)}")
    print(f"valid {n - sum(rules.values())}, invalid {sum(rules.values())}")
    for rule, count in rules.most_common():
        print(f"  [{rule}] x{count}: {RULES[rule]} -- first at {first[rule]}")
    for w, count in warnings.most_common():
        print(f"  warning {w} x{count}")
    return 0


def prepare_cmd(target: str, out: str, tokenizer: str, overrides: list) -> int:
    from tuneloop.data.prepare import prepare

    data, seed, model = _data_config(target, overrides)
    tok = _tokenizer(tokenizer, model)
    result = prepare(data, tok, Path(out), seed, load_splits=False)
    print(f"[tuneloop] data: {result.ledger.summary()}")
    print("[tuneloop] splits: " + ", ".join(f"{k}={len(v)}" for k, v in result.splits.items()))
    flags = result.manifest["audit"]["flags"]
    if flags:
        print(f"[tuneloop] audit: {len(flags)} group/label deviations, e.g. " + json.dumps(flags[0]))
    print(f"[tuneloop] wrote {out}/ (report.html explains every count)")
    return 0


def cmd_data(args: list) -> int:
    """Inspect or prepare data: validation, cleaning, PII redaction, dedup, splits, bias audit, report."""
    p = argparse.ArgumentParser(prog="tuneloop data", description=cmd_data.__doc__)
    sub = p.add_subparsers(dest="action", required=True)
    pi = sub.add_parser("inspect", help="detect the format and list rule violations of a data file")
    pi.add_argument("file")
    pi.add_argument("--format", default="auto", help="override format detection")
    pi.add_argument("--limit", type=int, default=0, help="read only the first N rows (0 = all)")
    pp = sub.add_parser("prepare", help="write cleaned splits, quarantine, manifest and report.html",
                        epilog="Any data key can be overridden: --data.key value (e.g. --data.dedup exact).")
    pp.add_argument("target", help="YAML run config or a data file")
    pp.add_argument("--out", required=True, help="output folder")
    pp.add_argument("--tokenizer", default="model",
                    help="`model` (the config's model.base), a model spec / folder, or `none` (no token counts)")
    ns, overrides = p.parse_known_args(args)
    if ns.action == "inspect":
        if overrides:
            raise UserError(f"unexpected arguments for inspect: {' '.join(overrides)}")
        return inspect(ns.file, ns.format, ns.limit)
    return prepare_cmd(ns.target, ns.out, ns.tokenizer, overrides)
