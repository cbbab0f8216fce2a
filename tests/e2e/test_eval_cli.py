"""`tuneloop eval` / `tuneloop compare` end to end on the tiny random Llama (it answers garbage; the files,
their structure and the gate's exit codes are what is checked)."""

import json
import shutil
import subprocess
import sys

import pytest
import yaml

from tuneloop.errors import UserError
from tuneloop.evaluate.cli import cmd_compare, cmd_eval

LABELS = ["negative", "neutral", "positive"]
TWEETS = [("@united he lost my bag again", "negative"), ("@JetBlue she was so helpful, thanks", "positive"),
          ("@delta flight 123 is on time", "neutral"), ("@united the american crew was rude", "negative"),
          ("@SouthwestAir great job by the young pilot", "positive"), ("@united what gate for Denver?", "neutral")]
FAST = ["--no-reference", "--bias-n", "3", "--batch-size", "4", "--max-new-tokens", "3"]


def _write_split(path, pairs):
    with open(path, "w") as f:
        for text, label in pairs:
            msgs = [{"role": "system", "content": "Classify the sentiment."}, {"role": "user", "content": text},
                    {"role": "assistant", "content": label}]
            f.write(json.dumps({"messages": msgs, "label": label, "meta": {}}) + "\n")
    return path


@pytest.fixture(scope="module")
def run_dir(tiny_lm_dir, tmp_path_factory):
    """A run folder as `tuneloop run` leaves it, around the tiny model."""
    d = tmp_path_factory.mktemp("run")
    shutil.copytree(tiny_lm_dir, d / "model")
    (d / "data").mkdir()
    _write_split(d / "data" / "test.jsonl", TWEETS)
    _write_split(d / "data" / "train.jsonl", TWEETS * 3)
    (d / "config.yaml").write_text(yaml.safe_dump({"data": {"labels": LABELS, "instruction": "Classify."}}))
    (d / "train_log.jsonl").write_text("".join(json.dumps({"step": s, "loss": 3.0 - s / 10}) + "\n"
                                               for s in range(1, 6)))
    return d


def test_compare_writes_metrics_and_report(run_dir, tiny_lm_dir, tmp_path):
    out = tmp_path / "eval"
    rc = cmd_compare([str(tiny_lm_dir), str(run_dir), "--data", str(run_dir / "data" / "test.jsonl"),
                      "--out", str(out), "--gate", "accuracy>=base-1,invalid_rate<=1", *FAST])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["answers.jsonl", "metrics.json", "report.html"]
    m = json.loads((out / "metrics.json").read_text())
    assert m["n"] == 6 and m["labels"] == LABELS and m["task"] == "classification"
    assert set(m["delta"]) == {"accuracy", "macro_f1", "invalid_rate"}
    for d in m["delta"].values():
        assert d["ci95"][0] <= d["value"] <= d["ci95"][1]
    assert sum(v["n"] for v in m["diffs"].values()) == 6 and "p_value" in m["mcnemar"]
    assert set(m["bias"]) == {"base", "tuned", "delta"}
    assert {k: v["n"] for k, v in m["bias"]["tuned"].items()} == {"counterfactual": 3, "crows_pairs": 3, "bbq": 3}
    assert "_values" not in json.dumps(m) and m["gate"]["passed"]
    assert m["tuned"]["examples_per_s"] > 0 and m["tuned"]["lm"]["perplexity"] > 1
    page = (out / "report.html").read_text()
    for section in ("Metrics", "Regression gate: PASSED", "Confusion matrices", "Bias audit",
                    "Per-example differences", "Training", "95% CI"):
        assert section in page
    assert "data:image/png;base64," in page and "http" not in page.replace(str(run_dir), "")
    assert len((out / "answers.jsonl").read_text().splitlines()) == 6


def test_gate_exit_codes_through_a_process(run_dir, tiny_lm_dir, tmp_path):
    """The gate as CI sees it: exit 1 on an impossible threshold, 0 on a met one."""
    code = "import sys; from tuneloop.evaluate.cli import cmd_compare; sys.exit(cmd_compare(sys.argv[1:]))"
    base = [sys.executable, "-c", code, str(tiny_lm_dir), str(run_dir), "--data",
            str(run_dir / "data" / "test.jsonl"), "--no-bias", *FAST]
    bad = subprocess.run(base + ["--out", str(tmp_path / "a"), "--gate", "accuracy>=base+2"],
                         capture_output=True, text=True)
    assert bad.returncode == 1, bad.stderr
    assert "FAILED" in bad.stdout
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["gate"]["passed"] is False
    good = subprocess.run(base + ["--out", str(tmp_path / "b"), "--gate", "accuracy>=0"], capture_output=True,
                          text=True)
    assert good.returncode == 0, good.stderr


def test_eval_one_model(run_dir, tmp_path):
    out = tmp_path / "one"
    assert cmd_eval([str(run_dir / "model"), "--data", str(run_dir / "data" / "test.jsonl"), "--out", str(out),
                     "--labels", ",".join(LABELS), "--limit", "4", *FAST]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["model"]["n"] == 4 and "delta" not in m and set(m["bias"]) == {"model"}
    assert "Bias audit" in (out / "report.html").read_text()


def test_generation_task_metrics(run_dir, tmp_path):
    out = tmp_path / "gen"
    assert cmd_compare([str(run_dir), str(run_dir), "--data", str(run_dir / "data" / "test.jsonl"), "--out",
                        str(out), "--task", "generation", "--no-bias", *FAST]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["delta"]["bleu"] == {"value": 0.0, "ci95": [0.0, 0.0]}  # same model twice: no difference
    assert "chrf" in m["base"] and "length" in m["base"]


def test_user_errors(run_dir, tmp_path):
    with pytest.raises(UserError, match="data file not found"):
        cmd_eval([str(run_dir), "--data", str(tmp_path / "missing.jsonl")])
    with pytest.raises(UserError, match="uses 'base'"):
        cmd_eval([str(run_dir), "--data", str(run_dir / "data" / "test.jsonl"), "--out", str(tmp_path / "x"),
                  "--gate", "accuracy>=base", "--no-bias", *FAST])
    with pytest.raises(UserError, match="cannot list models"):
        cmd_eval(["http://127.0.0.1:9/v1", "--data", str(run_dir / "data" / "test.jsonl")])


@pytest.mark.integration
def test_compare_with_reference_baseline(run_dir, tiny_lm_dir, tmp_path):
    out = tmp_path / "ref"
    assert cmd_compare([str(tiny_lm_dir), str(run_dir), "--data", str(run_dir / "data" / "test.jsonl"),
                        "--out", str(out), "--no-bias", "--batch-size", "4", "--max-new-tokens", "3"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["reference"]["n_train"] == 18 and m["reference"]["accuracy"] == 1.0  # it saw these tweets
    assert "reference" in (out / "report.html").read_text()
