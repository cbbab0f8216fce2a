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


def test_compare_with_a_judge_endpoint(run_dir, tiny_lm_dir, tmp_path):
    """--judge through the real CLI against a rule-based OpenAI-compatible server: a judge that always picks
    the first answer shown must come out as all ties once the positions are swapped."""
    from tests.unit.test_eval_judge import always_a, rule_server

    out = tmp_path / "judged"
    with rule_server(always_a) as (server, url):
        assert cmd_compare([str(tiny_lm_dir), str(run_dir), "--data", str(run_dir / "data" / "test.jsonl"),
                            "--out", str(out), "--no-bias", "--judge", url, "--judge-n", "4", *FAST]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["answers.jsonl", "judge.jsonl", "metrics.json", "report.html"]
    j = json.loads((out / "metrics.json").read_text())["judge"]
    assert j["mode"] == "pairwise" and j["model"] == "rule-judge" and j["n"] == 4
    assert j["tie_rate"]["value"] == 1.0 and j["position_consistency"] == 0 and j["invalid_rate"] == 0
    saved = [json.loads(x) for x in (out / "judge.jsonl").read_text().splitlines()]
    answers = [json.loads(x) for x in (out / "answers.jsonl").read_text().splitlines()]
    assert len(saved) == 8 == len(server.requests)
    for rec in saved:  # the prompt holds the row's input, its reference and both models' answers
        row = answers[rec["index"]]
        prompt = rec["messages"][-1]["content"]
        assert row["input"] in prompt and f"<reference>\n{row['reference']}\n</reference>" in prompt
        first, second = (row["base_answer"], row["tuned_answer"])[:: 1 if rec["request"] == "verdict_ab" else -1]
        assert f"<answer_a>\n{first}\n</answer_a>" in prompt and f"<answer_b>\n{second}\n</answer_b>" in prompt
    page = (out / "report.html").read_text()
    assert "LLM judge" in page and "position consistency" in page


def test_judge_rubric_mode_and_bad_judge_url(run_dir, tiny_lm_dir, tmp_path):
    from tests.unit.test_eval_judge import rule_server

    data = ["--data", str(run_dir / "data" / "test.jsonl"), "--no-bias", *FAST]
    with rule_server(lambda messages: "Score: 3") as (_, url):
        assert cmd_compare([str(tiny_lm_dir), str(run_dir), "--out", str(tmp_path / "r"), "--judge", url,
                            "--judge-mode", "rubric", "--judge-n", "0", *data]) == 0
    j = json.loads((tmp_path / "r" / "metrics.json").read_text())["judge"]
    assert j["n"] == 6 and j["mean_a"]["value"] == j["mean_b"]["value"] == 3.0 and j["delta"]["value"] == 0
    assert "tuned mean score" in (tmp_path / "r" / "report.html").read_text()
    with pytest.raises(UserError, match="judge: cannot list models at http://127.0.0.1:9/v1"):
        cmd_compare([str(tiny_lm_dir), str(run_dir), "--out", str(tmp_path / "x"), "--judge",
                     "http://127.0.0.1:9/v1", *data])


@pytest.mark.integration
def test_tuneloop_serve_as_the_judge(run_dir, tiny_lm_dir, tmp_path):
    """Compatibility with a real LLM server: tuneloop's own server (tiny random model) as the judge. Its
    replies are noise, so verdicts are mostly invalid; the counts must still add up and every reply be saved."""
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from tuneloop.serve.cli import cmd_serve; "
                             "sys.exit(cmd_serve(sys.argv[1:]))", str(tiny_lm_dir), "--name", "judge",
                             "--port", str(port), "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = tmp_path / "served"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        assert cmd_compare([str(tiny_lm_dir), str(run_dir), "--data", str(run_dir / "data" / "test.jsonl"),
                            "--out", str(out), "--no-bias", "--judge", f"http://127.0.0.1:{port}/v1",
                            "--judge-n", "3", *FAST]) == 0
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    j = json.loads((out / "metrics.json").read_text())["judge"]
    assert j["model"] == "judge" and j["n"] == 3 and sum(j["counts"].values()) == 3
    saved = [json.loads(x) for x in (out / "judge.jsonl").read_text().splitlines()]
    assert len(saved) == 6 and all(isinstance(r["reply"], str) for r in saved)
