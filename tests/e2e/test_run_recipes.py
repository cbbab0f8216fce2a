"""`tuneloop run` with train.recipe classify (an encoder with a head) and dpo (preference pairs), through the CLI."""

import csv
import json
import subprocess
import sys

import pytest
import torch
import yaml

from tests.conftest import build_tiny_bert

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "flight", "crew", "seat", "was", "good", "bad",
         "number"] + [str(i) for i in range(40)]


def tuneloop(*args):
    return subprocess.run([sys.executable, "-m", "tuneloop.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), WORDS)


def test_classify_recipe_on_an_encoder(tiny_bert_dir, tmp_path):
    with open(tmp_path / "rows.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(40):
            label = ["negative", "positive"][i % 2]
            w.writerow([f"the {['flight', 'crew', 'seat'][i % 3]} was {'bad' if i % 2 == 0 else 'good'} number {i}",
                        label])
    cfg = {"output_dir": str(tmp_path / "run"),
           "data": {"source": str(tmp_path / "rows.csv"), "labels": ["negative", "positive"],
                    "train_size": 24, "validation_size": 4, "test_size": 12, "dedup": "exact"},
           "model": {"base": str(tiny_bert_dir)}, "adapter": {"method": "full"},
           "train": {"recipe": "classify", "epochs": 6, "batch_size": 4, "lr": 3e-3, "warmup_ratio": 0.0},
           "eval": {"bias": False, "reference": False}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    result = tuneloop("run", tmp_path / "config.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["recipe"] == "classify" and "base" not in m  # an encoder has no way to answer before training
    assert m["tuned"]["n"] == 12 and m["tuned"]["invalid_rate"] == 0.0  # a head always answers a label
    assert m["tuned"]["accuracy"] == 1.0  # one word decides the label
    assert (tmp_path / "run" / "model" / "config.json").is_file()


def test_dpo_recipe_raises_preference_accuracy(tiny_lm_dir, tmp_path):
    rows = [{"prompt": f"Where is bag {i}?", "chosen": "It is on the way to you.", "rejected": "No idea, sorry."}
            for i in range(40)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {"output_dir": str(tmp_path / "run"),
           "data": {"source": str(tmp_path / "pairs.jsonl"), "format": "preference", "task": "generation",
                    "train_size": 24, "validation_size": 4, "test_size": 12, "dedup": "exact",
                    "contamination_threshold": 0},
           "model": {"base": str(tiny_lm_dir)}, "adapter": {"r": 4, "alpha": 8},
           "train": {"recipe": "dpo", "dpo_beta": 0.5, "epochs": 3, "batch_size": 4, "lr": 5e-3,
                     "warmup_ratio": 0.0},
           "eval": {"bias": False}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    result = tuneloop("run", tmp_path / "config.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["recipe"] == "dpo" and m["labels"] == ["chosen", "rejected"]
    assert m["tuned"]["accuracy"] == 1.0 and m["tuned"]["accuracy"] >= m["base"]["accuracy"]
    lo, hi = m["delta"]["accuracy"]["ci95"]
    assert lo <= m["delta"]["accuracy"]["value"] <= hi
    log = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert any("margin" in k for k in log[0])  # DPO's own log fields


def test_dpo_recipe_needs_preference_rows(tiny_lm_dir, tmp_path):
    (tmp_path / "rows.csv").write_text("text,label\nhello,positive\n")
    cfg = {"output_dir": str(tmp_path / "run"), "data": {"source": str(tmp_path / "rows.csv"), "format": "classification"},
           "model": {"base": str(tiny_lm_dir)}, "train": {"recipe": "dpo"}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    result = tuneloop("run", tmp_path / "config.yaml")
    assert result.returncode == 2 and "data.format preference" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_with_a_judge_and_trackers(tiny_lm_dir, tmp_path):
    """eval.judge_url through `tuneloop run` (a rule-based OpenAI-compatible judge that always picks the first
    answer: the swap turns every item into a tie), and train.report_to writing TensorBoard events."""
    from tests.unit.test_eval_judge import always_a, rule_server

    rows = [{"text": f"flight {i} was {'late' if i % 2 else 'fine'}", "label": ["positive", "negative"][i % 2]}
            for i in range(30)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with rule_server(always_a) as (_, url):
        cfg = {"output_dir": str(tmp_path / "run"),
               "data": {"source": str(tmp_path / "rows.jsonl"), "labels": ["negative", "positive"],
                        "train_size": 16, "validation_size": 4, "test_size": 6},
               "model": {"base": str(tiny_lm_dir)}, "adapter": {"r": 4, "alpha": 8},
               "train": {"max_steps": 2, "batch_size": 4, "report_to": ["tensorboard"]},
               "eval": {"bias": False, "reference": False, "max_new_tokens": 3, "judge_url": url, "judge_n": 4}}
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
        result = tuneloop("run", tmp_path / "config.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    j = json.loads((tmp_path / "run" / "metrics.json").read_text())["judge"]
    assert j["n"] == 4 and j["model"] == "rule-judge" and j["tie_rate"]["value"] == 1.0
    assert len((tmp_path / "run" / "judge.jsonl").read_text().splitlines()) == 8  # both orders saved
    assert "LLM judge" in (tmp_path / "run" / "report.html").read_text()
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


def test_torchrun_two_processes_match_one(tiny_lm_dir, tmp_path):
    """`torchrun --nproc_per_node 2 tuneloop run` (gloo on CPU) trains the same adapter as one process with the
    same global batch; rank 0 alone writes the run folder."""
    import os
    import socket

    from safetensors.torch import load_file

    rows = [{"text": f"seat {i} " + "x " * (i % 7) + ("late" if i % 2 else "fine"),
             "label": ["positive", "negative"][i % 2]} for i in range(40)]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {"data": {"source": str(tmp_path / "rows.jsonl"), "labels": ["negative", "positive"],
                    "train_size": 24, "validation_size": 4, "test_size": 8},
           "model": {"base": str(tiny_lm_dir)}, "adapter": {"r": 4, "alpha": 8},
           "train": {"max_steps": 3, "batch_size": 6, "lr": 5e-3, "precision": "fp32", "threads": 1},
           "eval": {"bias": False, "reference": False, "max_new_tokens": 2}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    one = tuneloop("run", tmp_path / "config.yaml", "--output_dir", tmp_path / "one")
    assert one.returncode == 0, one.stderr[-3000:]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "tuneloop.cli", "run",
                          str(tmp_path / "config.yaml"), "--output_dir", str(tmp_path / "two")],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert two.returncode == 0, two.stderr[-3000:]
    a = load_file(tmp_path / "one" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "two" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5, rtol=0) for k in a)
    losses = [[r["loss"] for r in map(json.loads, (tmp_path / d / "train_log.jsonl").read_text().splitlines())
               if "loss" in r] for d in ("one", "two")]
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    assert two.stdout.count("[tuneloop] done") == 1  # one voice: rank 0
