"""Every validation rule id has an input that triggers it; strict mode; nothing lost for arbitrary mixes."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuneloop.config import DataConfig
from tuneloop.data.prepare import prepare
from tuneloop.data.validate import DROP_REASONS, RULES
from tuneloop.errors import UserError

U = {"role": "user", "content": "Where is my bag?"}
A = {"role": "assistant", "content": "In Denver."}
# rule id -> (file suffix, raw file text, format, labels); one offending row each (plus one good row)
TRIGGERS = {
    "invalid_json": (".jsonl", '{"messages": [\n', "chat", []),
    "invalid_utf8": (".jsonl", b'{"messages": "\xff\xfe"}\n', "chat", []),
    "not_an_object": (".jsonl", "[1, 2]\n", "chat", []),
    "row_too_large": (".jsonl", json.dumps({"messages": [U, {"role": "assistant", "content": "x" * 2000}]}) + "\n",
                      "chat", []),
    "csv_column_count": (".csv", "text,label\nhello,pos,extra\n", "classification", []),
    "missing_field": (".jsonl", json.dumps({"prompt": "hi"}) + "\n", "prompt_completion", []),
    "wrong_type": (".jsonl", json.dumps({"conversations": "hi"}) + "\n", "sharegpt", []),
    "unknown_label": (".jsonl", json.dumps({"text": "hi", "label": "maybe"}) + "\n", "classification", ["yes", "no"]),
    "invalid_number": (".jsonl", json.dumps({"text": "hi", "label": "yes", "confidence": "high"}) + "\n",
                       "classification", []),
    "preference_identical": (".jsonl", json.dumps({"prompt": "hi", "chosen": "same", "rejected": "same"}) + "\n",
                             "preference", []),
    "messages_missing": (".jsonl", json.dumps({"messages": []}) + "\n", "chat", []),
    "message_not_object": (".jsonl", json.dumps({"messages": ["hi", A]}) + "\n", "chat", []),
    "message_missing_key": (".jsonl", json.dumps({"messages": [{"role": "user"}, A]}) + "\n", "chat", []),
    "message_unrecognized_key": (".jsonl", json.dumps({"messages": [{**U, "mood": "angry"}, A]}) + "\n", "chat", []),
    "invalid_role": (".jsonl", json.dumps({"messages": [{"role": "human", "content": "hi"}, A]}) + "\n", "chat", []),
    "content_not_string": (".jsonl", json.dumps({"messages": [{"role": "user", "content": 5}, A]}) + "\n", "chat", []),
    "no_assistant_message": (".jsonl", json.dumps({"messages": [U]}) + "\n", "chat", []),
    "invalid_weight": (".jsonl", json.dumps({"messages": [U, {**A, "weight": 0.5}]}) + "\n", "chat", []),
    "empty_content": (".jsonl", json.dumps({"messages": [{"role": "user", "content": " \u200b\x07 "}, A]}) + "\n",
                      "chat", []),
    "role_order": (".jsonl", json.dumps({"messages": [U, {"role": "system", "content": "late"}, A]}) + "\n",
                   "chat", []),
    "last_not_assistant": (".jsonl", json.dumps({"messages": [U, A, U]}) + "\n", "chat", []),
}
GOOD = {"chat": {"messages": [U, A]}, "classification": {"text": "fine", "label": "yes"},
        "prompt_completion": {"prompt": "hi", "completion": "hello"}, "sharegpt": {"conversations": [
            {"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
        "preference": {"prompt": "hi", "chosen": "hello", "rejected": "go away"}}


def test_every_rule_has_a_trigger():
    assert set(TRIGGERS) == set(RULES)


def _cfg(path: Path, fmt: str, labels: list, **kw) -> DataConfig:
    base = dict(source=str(path), format=fmt, labels=labels, max_row_bytes=1000, train_size=1, validation_size=0,
                test_size=0, task="classification" if fmt == "classification" else "generation")
    return DataConfig(**{**base, **kw})


def _write(tmp_path: Path, rule: str) -> tuple[Path, str, list]:
    suffix, bad, fmt, labels = TRIGGERS[rule]
    good = GOOD[fmt]
    p = tmp_path / f"{rule}{suffix}"
    if suffix == ".csv":
        p.write_text(bad + f"{good['text']},{good['label']}\n")
    else:
        p.write_bytes((bad if isinstance(bad, bytes) else bad.encode()) + (json.dumps(good) + "\n").encode())
    return p, fmt, labels


@pytest.mark.parametrize("rule", sorted(TRIGGERS))
def test_rule_triggers(tmp_path, rule):
    p, fmt, labels = _write(tmp_path, rule)
    res = prepare(_cfg(p, fmt, labels or (["yes"] if fmt == "classification" else [])), None, tmp_path / "o", 0)
    assert res.ledger.rejected == {rule: 1} and res.ledger.kept == 1
    rec = json.loads((tmp_path / "o" / "rejected.jsonl").read_text().splitlines()[0])
    assert rec["rule"] == rule and rec["file"] == str(p) and rec["line"] == (2 if p.suffix == ".csv" else 1) and rec["message"]


def test_quarantine_keeps_what_orjson_cannot_write(tmp_path):
    """A rejected row is written as it was read: lone surrogates (\\u escapes) and integers over 64 bits go
    through json, plain rows through orjson; NaN is null (JSON has none), as in the splits. Every line is JSON."""
    rows = ['{"messages": [{"role": "bot", "content": "plain caf\u00e9"}]}',
            '{"messages": [{"role": "bot", "content": "lone \\ud800 surrogate"}]}',
            '{"messages": [{"role": "bot", "content": "big"}], "id": 123456789012345678901234567890}',
            '{"messages": [{"role": "bot", "content": "nan"}], "score": NaN}', json.dumps({"messages": [U, A]})]
    p = tmp_path / "q.jsonl"
    p.write_text("\n".join(rows) + "\n", encoding="utf-8")
    res = prepare(_cfg(p, "chat", []), None, tmp_path / "o", 0)
    assert res.ledger.rejected == {"invalid_role": 4} and res.ledger.kept == 1
    lines = (tmp_path / "o" / "rejected.jsonl").read_bytes().splitlines()
    recs = [json.loads(x) for x in lines]
    contents = ["plain caf\u00e9", "lone \ud800 surrogate", "big", "nan"]
    assert [r["row"]["messages"][0]["content"] for r in recs] == contents
    assert recs[2]["row"]["id"] == 123456789012345678901234567890 and recs[3]["row"]["score"] is None
    assert "caf\u00e9".encode() in lines[0] and b"\\ud800" in lines[1]  # UTF-8 as is; the surrogate escaped


@pytest.mark.parametrize("rule", ["role_order", "invalid_json"])
def test_strict_fails_on_first_error(tmp_path, rule):
    p, fmt, labels = _write(tmp_path, rule)
    with pytest.raises(UserError, match=rf"{p.name}:1: \[{rule}\]"):
        prepare(_cfg(p, fmt, labels, strict=True), None, tmp_path / "o", 0)


def test_any_json_value_in_a_message_field_is_a_rejection_not_a_crash(tmp_path):
    """Roles, contents and weights of every JSON type: each row is rejected with its rule (a list or object
    role once crashed the stage: unhashable in the role set)."""
    odd = [["user"], {"r": 1}, 5, None, True, 1.5, ""]
    rows = ([{"messages": [{"role": v, "content": "hi"}, A]} for v in odd] +
            [{"messages": [{"role": "user", "content": v}, A]} for v in odd] +
            [{"messages": [{**U, "weight": v}, A]} for v in odd if v is not True])  # (True == 1: a valid weight)
    p = tmp_path / "odd.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows) + json.dumps(GOOD["chat"]) + "\n")
    res = prepare(DataConfig(source=str(p), task="generation", train_size=1, validation_size=0, test_size=0),
                  None, tmp_path / "o", 0)
    assert res.ledger.kept == 1
    assert res.ledger.rejected == {"invalid_role": 7, "content_not_string": 6, "empty_content": 1, "invalid_weight": 6}


def _odd(rng, depth: int = 0):
    """A random JSON value: every type, nested lists/objects, blanks."""
    values = [None, True, 3, 2.5, "", " ", "hi there friend"]
    if depth < 2:
        values += [[_odd(rng, depth + 1) for _ in range(rng.randrange(3))],
                   {"role": _odd(rng, depth + 1), "content": _odd(rng, depth + 1)}]
    return rng.choice(values)


def _odd_row(fmt: str, rng):
    def pick(*usual):
        return rng.choice([*usual, _odd(rng)])

    def msg():
        m = {"role": pick("user", "assistant", "system", "function"), "content": pick("hello there", "ok")}
        if rng.random() < 0.2:
            m[rng.choice(["weight", "name", "function_call", "mood"])] = _odd(rng)
        if rng.random() < 0.1:
            del m[rng.choice(["role", "content"])]
        return m

    turns = [msg() for _ in range(rng.randrange(4))]
    return {"chat": lambda: {"messages": pick(turns)},
            "sharegpt": lambda: {"conversations": pick([{"from": pick("human", "gpt"), "value": pick("hi", "yo")}
                                                        for _ in range(rng.randrange(4))])},
            "alpaca": lambda: {"instruction": pick("do x"), "input": pick("", "in"), "output": pick("out")},
            "prompt_completion": lambda: {"prompt": pick("p q"), "completion": pick("c d")},
            "text": lambda: {"text": pick("some text here")},
            "classification": lambda: {"text": pick("some text"), "label": pick("a", "b")},
            "preference": lambda: {"prompt": pick("p", turns), "chosen": pick("good", [msg()]),
                                   "rejected": pick("bad", [msg()])}}[fmt]()


@pytest.mark.parametrize("fmt", ["chat", "sharegpt", "alpaca", "prompt_completion", "text", "classification",
                                 "preference"])
def test_random_json_values_in_every_format_are_rejections_not_crashes(tmp_path, fmt):
    """300 rows of random JSON types in each field of each format: prepare never crashes, every row is
    counted once (kept, rejected with a rule, or dropped with a reason)."""
    rng = random.Random(fmt)
    rows = [_odd_row(fmt, rng) for _ in range(300)]
    p = tmp_path / "odd.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    classify = fmt == "classification"
    cfg = DataConfig(source=str(p), format=fmt, task="classification" if classify else "generation",
                     labels=["a", "b"] if classify else [], train_size=1, validation_size=0, test_size=0)
    res = prepare(cfg, None, tmp_path / "o", 0)
    c = res.ledger
    assert c.input == 300 == c.kept + sum(c.rejected.values()) + sum(c.dropped.values())
    assert c.kept and sum(c.rejected.values()) > 50 and set(c.rejected) <= set(RULES)


def test_ten_megabyte_line_is_rejected_not_a_crash(tmp_path):
    p = tmp_path / "big.jsonl"
    big = json.dumps({"messages": [U, {"role": "assistant", "content": "y" * 10_000_000}]})
    p.write_text(big + "\n" + json.dumps(GOOD["chat"]) + "\n")
    res = prepare(DataConfig(source=str(p), task="generation", train_size=1, validation_size=0, test_size=0),
                  None, tmp_path / "o", 0)
    assert res.ledger.rejected == {"row_too_large": 1} and res.ledger.kept == 1
    assert (tmp_path / "o" / "rejected.jsonl").stat().st_size < 10_000


def test_csv_ten_megabyte_field(tmp_path):
    p = tmp_path / "big.csv"
    p.write_text("text,label\n" + '"' + "z" * 10_000_000 + '",yes\nfine,yes\n')
    res = prepare(DataConfig(source=str(p), train_size=1, validation_size=0, test_size=0), None, tmp_path / "o", 0)
    assert res.ledger.rejected == {"row_too_large": 1}


def test_drop_reasons_and_quality_rules(tmp_path, tokenizer):
    rows = [{"messages": [{"role": "user", "content": c}, {"role": "assistant", "content": "ok"}]} for c in [
        "the bag arrived late at the gate today",     # kept
        "The bag  arrived late at the gate today",    # duplicate (case/whitespace)
        "the bag arrived late at the gate today!!",   # near duplicate
        "hi",                                         # quality:min_chars
        "%%%% #### 1234 5678 //// ----",              # quality:alpha_ratio
        "spam\nspam\nspam\nspam\nspam\nspam",          # quality:repeated_lines
        "word " * 300,                                # too_long
    ]]
    p = tmp_path / "d.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = DataConfig(source=str(p), task="generation", min_chars=8, min_alpha_ratio=0.5, max_repeated_lines=0.5,
                     max_tokens=200, train_size=1, validation_size=0, test_size=0)
    res = prepare(cfg, tokenizer, tmp_path / "o", 0)
    assert res.ledger.kept == 1
    assert dict(res.ledger.dropped) == {"duplicate": 1, "near_duplicate": 1, "quality:min_chars": 1,
                                        "quality:alpha_ratio": 1, "quality:repeated_lines": 1, "too_long": 1}
    assert set(res.ledger.dropped) <= set(DROP_REASONS)
    log = [json.loads(x) for x in (tmp_path / "o" / "dropped.jsonl").read_text().splitlines()]
    assert {"line": 2, "source": str(p), "reason": "duplicate", "of_line": 1} in log
    assert any(r["reason"] == "near_duplicate" and r["line"] == 3 and r["of_line"] == 1 for r in log)
    assert len(log) == sum(res.ledger.dropped.values())


def test_repeated_lines_rule_with_the_default_config(tmp_path):
    """The default config's only quality rule is repeated lines (0.5): prepare skips the check for texts of one
    or two lines and must still drop a text of repeated lines, however its turns split them."""
    turns = [("a\na", "a"), ("spam\nspam", "spam"), ("x\ny", "z"), ("q", "r\nr\nr\nr")]  # 2/3, 2/3, 0, 3/5 repeated
    p = tmp_path / "d.jsonl"
    p.write_text("".join(json.dumps({"messages": [{"role": "user", "content": u}, {"role": "assistant",
                                                                                  "content": a}]}) + "\n"
                         for u, a in turns))
    res = prepare(DataConfig(source=str(p), task="generation", train_size=1.0, validation_size=0, test_size=0),
                  None, tmp_path / "o", 0)
    assert res.ledger.kept == 1 and dict(res.ledger.dropped) == {"quality:repeated_lines": 3}


def test_a_column_named_like_an_internal_marker_is_just_a_column(tmp_path):
    """Reader errors travel in Row.error, not in the fields: a user column "__error__" is data."""
    good = {"messages": [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello"}]}
    p = tmp_path / "d.jsonl"
    p.write_text("".join(json.dumps({**good, "__error__": v}) + "\n" for v in (["invalid_json", "m"], "xy")))
    res = prepare(DataConfig(source=str(p), task="generation", train_size=1.0, validation_size=0, test_size=0),
                  None, tmp_path / "o", 0)
    assert res.ledger.kept == 1 and dict(res.ledger.dropped) == {"duplicate": 1} and not res.ledger.rejected


ROW_KINDS = st.sampled_from(["good", "dup", "bad_json", "no_assistant", "empty", "short", "label"])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kinds=st.lists(ROW_KINDS, min_size=1, max_size=30), seed=st.integers(0, 3))
def test_kept_rejected_dropped_add_up(tmp_path_factory, kinds, seed):
    tmp = tmp_path_factory.mktemp("prop")
    lines = []
    for i, k in enumerate(kinds):
        text = {"good": f"row number {i} says the flight {i * 13} was late", "dup": "the same text every time",
                "short": "a", "empty": "   ", "no_assistant": "x", "bad_json": "", "label": "x"}[k]
        if k == "bad_json":
            lines.append('{"text": ')
        elif k == "no_assistant":
            lines.append(json.dumps({"text": text}))
        else:
            lines.append(json.dumps({"text": text, "label": "maybe" if k == "label" else ["a", "b"][i % 2]}))
    p = tmp / "d.jsonl"
    p.write_text("\n".join(lines) + "\n")
    cfg = DataConfig(source=str(p), format="classification", labels=["a", "b"], min_chars=3, train_size=0.5,
                     validation_size=0.2, test_size=0.2)
    try:
        res = prepare(cfg, None, tmp / "o", seed)
    except UserError as e:  # nothing usable, or split sizes need more rows than survived
        assert "no usable rows" in str(e) or "lower data" in str(e)
        return
    c = res.ledger
    assert c.input == len(kinds) == c.kept + sum(c.rejected.values()) + sum(c.dropped.values())
    assert c.kept == sum(len(v) for v in res.splits.values())
    manifest = json.loads((tmp / "o" / "manifest.json").read_text())
    assert manifest["counts"] == c.to_dict()
    assert len((tmp / "o" / "rejected.jsonl").read_text().splitlines()) == sum(c.rejected.values())
    assert len((tmp / "o" / "dropped.jsonl").read_text().splitlines()) == sum(c.dropped.values())
