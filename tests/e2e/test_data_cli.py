"""`tuneloop data inspect|prepare` through the command function, in a fresh Python process like a user."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TOKENIZER = Path(__file__).parents[1] / "assets" / "smollm2-tokenizer"


def _data(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    code = "import sys; from tuneloop.data.cli import cmd_data; sys.exit(cmd_data(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def _chat_file(path: Path) -> Path:
    rows = [{"messages": [{"role": "user", "content": f"Is flight {i} to gate {i * 3} on time?"},
                          {"role": "assistant", "content": f"Flight {i} leaves at {i % 12 + 1} pm, call 415-555-01{i:02d}."}]}
            for i in range(30)]
    lines = [json.dumps(r) for r in rows] + [json.dumps(rows[0]), '{"messages": [', json.dumps({"messages": []})]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_inspect_reports_rules(tmp_path):
    src = _chat_file(tmp_path / "chats.jsonl")
    r = _data("inspect", str(src), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "33 rows, format chat" in r.stdout and "[invalid_json] x1" in r.stdout and "[messages_missing] x1" in r.stdout


def test_prepare_file_writes_everything(tmp_path):
    src = _chat_file(tmp_path / "chats.jsonl")
    out = tmp_path / "prepared"
    r = _data("prepare", str(src), "--out", str(out), "--tokenizer", str(TOKENIZER), "--data.train_size", "20",
              "--data.validation_size", "4", "--data.test_size", "6", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "33 rows in, 30 kept, 2 rejected" in r.stdout
    assert sorted(p.name for p in out.iterdir()) == ["dropped.jsonl", "manifest.json", "rejected.jsonl",
                                                     "report.html", "test.jsonl", "train.jsonl", "validation.jsonl"]
    m = json.loads((out / "manifest.json").read_text())
    assert m["counts"] == {"input": 33, "kept": 30, "rejected": {"invalid_json": 1, "messages_missing": 1},
                           "dropped": {"duplicate": 1}}
    # 31 rows hold a phone number; the exact duplicate is dropped before redaction, so 30 are redacted
    assert m["pii"]["redacted"] == {"phone": 30} and len(m["source_sha256"]) == 64
    assert m["token_lengths"]["train"]["n"] == 20 and m["token_lengths"]["train"]["max"] > 20
    train = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    assert all("<PHONE>" in ex["messages"][1]["content"] for ex in train)


def test_prepare_bad_input_is_one_line_error(tmp_path):
    r = _data("prepare", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o"), "--tokenizer", "none",
              cwd=tmp_path)
    assert r.returncode != 0 and "data file not found" in r.stderr
