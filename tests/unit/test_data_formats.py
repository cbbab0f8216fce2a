"""Formats and readers: every format round-trips through prepare, every reader handles its edge cases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneloop.config import DataConfig
from tuneloop.data.formats import Mapping, detect_format, to_example
from tuneloop.data.prepare import load_split, prepare
from tuneloop.data.readers import Row, read_rows
from tuneloop.errors import UserError

CHAT = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where is my bag?"},
                     {"role": "assistant", "content": "It is in Denver.", "weight": 1}]}
RECORDS = {
    "chat": CHAT,
    "sharegpt": {"conversations": [{"from": "human", "value": "Where is my bag?"},
                                   {"from": "gpt", "value": "It is in Denver."}]},
    "alpaca": {"instruction": "Answer the customer.", "input": "Where is my bag?", "output": "It is in Denver."},
    "prompt_completion": {"prompt": "Where is my bag?", "completion": "It is in Denver."},
    "text": {"text": "Bags missing in Denver are sent on the next flight."},
    "classification": {"text": "@united my bag is lost", "label": "negative"},
    "preference": {"prompt": "Where is my bag?", "chosen": "It is in Denver.", "rejected": "No idea."},
}


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _variants(rec: dict, n: int) -> list:
    """n distinct rows of the same shape (distinct so deduplication keeps them)."""
    out = []
    for i in range(n):
        s = json.dumps(rec).replace("Denver", f"Denver gate {i} terminal {i * 7}").replace("lost", f"lost {i} times")
        out.append(json.loads(s))
    return out


@pytest.mark.parametrize("fmt", list(RECORDS))
def test_format_round_trip(tmp_path, fmt, tokenizer):
    src = _write_jsonl(tmp_path / "in.jsonl", _variants(RECORDS[fmt], 10))
    assert detect_format(RECORDS[fmt]) == fmt
    cfg = DataConfig(source=str(src), task="classification" if fmt == "classification" else "generation",
                     train_size=6, validation_size=2, test_size=2, contamination_threshold=0)
    res = prepare(cfg, tokenizer, tmp_path / "out", seed=0)
    assert res.ledger.kept == 10 and res.manifest["format"] == fmt
    back = load_split(tmp_path / "out" / "train.jsonl")
    assert [e.to_json() for e in back] == [e.to_json() for e in res.splits["train"]]
    ex = back[0]
    assert ex.messages[-1]["role"] == "assistant"
    assert "Denver" in ex.messages[-1]["content"] or fmt == "classification"
    if fmt == "preference":
        assert ex.rejected == [{"role": "assistant", "content": "No idea."}]
    if fmt == "chat":
        assert ex.messages[-1]["weight"] == 1


def test_preference_chat_form_splits_shared_prompt():
    rec = {"chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}],
           "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "go away"}]}
    ex = to_example(Row(1, rec), "preference", Mapping({}))
    assert ex.messages == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}]
    assert ex.rejected == [{"role": "assistant", "content": "go away"}]


def test_column_mapping(tmp_path, tokenizer):
    rows = [{"question": f"Is gate {i} open?", "answer": f"Gate {i} opens at {i}pm."} for i in range(10)]
    src = _write_jsonl(tmp_path / "qa.jsonl", rows)
    cfg = DataConfig(source=str(src), task="generation", columns=["prompt=question", "completion=answer"],
                     train_size=8, validation_size=1, test_size=1)
    res = prepare(cfg, tokenizer, tmp_path / "out", seed=0)
    assert res.manifest["format"] == "prompt_completion" and res.ledger.kept == 10
    ex = res.splits["train"][0]
    assert ex.messages[0]["content"].startswith("Is gate") and ex.messages[1]["content"].startswith("Gate")


def test_format_override(tmp_path):
    rec = {"text": "one two", "label": "x"}
    assert detect_format(rec) == "classification"
    ex = to_example(Row(1, rec), "text", Mapping({"text": "text"}))
    assert ex.messages == [{"role": "assistant", "content": "one two"}]


def test_csv_with_embedded_newlines_and_quotes(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text('text,label\n"line one\nline two, with ""quotes""",positive\nplain,negative\n', encoding="utf-8")
    rows = list(read_rows(p))
    assert rows[0].fields == {"text": 'line one\nline two, with "quotes"', "label": "positive"}
    assert rows[0].line == 3 and rows[1].line == 4


def test_tsv_and_bom(tmp_path):
    p = tmp_path / "d.tsv"
    p.write_bytes("\ufefftext\tlabel\nhello\tpos\n".encode("utf-8"))
    assert [r.fields for r in read_rows(p)] == [{"text": "hello", "label": "pos"}]
    j = tmp_path / "d.jsonl"
    j.write_bytes(b"\xef\xbb\xbf" + json.dumps(CHAT).encode() + b"\n")
    assert [r.fields for r in read_rows(j)] == [CHAT]


def test_empty_file(tmp_path, tokenizer):
    for name in ("e.jsonl", "e.csv"):
        p = tmp_path / name
        p.write_text("")
        assert list(read_rows(p)) == []
        with pytest.raises(UserError, match="no usable rows"):
            prepare(DataConfig(source=str(p)), tokenizer, tmp_path / name.replace(".", "_"), 0)


def test_json_array_and_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = _variants(RECORDS["prompt_completion"], 3)
    (tmp_path / "a.json").write_text(json.dumps({"data": rows}))
    assert [r.fields for r in read_rows(tmp_path / "a.json")] == rows
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    got = list(read_rows(tmp_path / "a.parquet"))
    assert [r.fields for r in got] == rows and [r.line for r in got] == [1, 2, 3]


def test_parquet_wrong_column_type_is_a_clear_error(tmp_path, tokenizer):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"messages": ["not a list", "still not"]}), tmp_path / "bad.parquet")
    with pytest.raises(UserError, match="column 'messages' has type string"):
        prepare(DataConfig(source=str(tmp_path / "bad.parquet")), tokenizer, tmp_path / "out", 0)


def test_saved_datasets_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = _variants(RECORDS["alpaca"], 4)
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    assert [r.fields for r in read_rows(tmp_path / "ds")] == rows
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:3]),
                          "test": datasets.Dataset.from_list(rows[3:])}).save_to_disk(str(tmp_path / "dd"))
    assert len(list(read_rows(tmp_path / "dd"))) == 4


def test_unknown_columns_need_a_format(tmp_path):
    with pytest.raises(UserError, match="cannot tell the record format"):
        detect_format({"foo": 1, "bar": 2})
