"""The real `tuneloop` CLI end to end on a tiny random model and a few rows (CPU, ~30 s)."""

import csv
import json
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tuneloop.run import DATA_FILES, RUN_FILES

LABELS = ["negative", "neutral", "positive"]
WORDS = {"negative": "late lost rude awful", "neutral": "gate flight today info", "positive": "great thanks love kind"}


def tuneloop(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "tuneloop.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def run_dir(tiny_lm_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    with open(tmp / "tweets.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(60):
            lab = LABELS[i % 3]
            w.writerow([f"@airline {WORDS[lab].split()[i % 4]} number {i}", lab])
        w.writerow(["", "negative"])  # rejected: empty text
        w.writerow(["@airline  LOVE number 2", "positive"])  # dropped: duplicate of line 4 (case, spaces)
    cfg = {"name": "tiny", "output_dir": str(tmp / "run"), "seed": 0,
           "data": {"source": str(tmp / "tweets.csv"), "labels": LABELS, "instruction": "Sentiment?",
                    "train_size": 36, "validation_size": 6, "test_size": 12},
           "model": {"base": str(tiny_lm_dir)},
           "adapter": {"r": 4, "alpha": 8},
           "train": {"epochs": 1, "batch_size": 4, "lr": 1e-3, "log_every": 2},
           "eval": {"max_new_tokens": 3, "batch_size": 8}}
    (tmp / "config.yaml").write_text(yaml.safe_dump(cfg))
    result = tuneloop("run", tmp / "config.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp / "run"


def test_run_folder_has_exactly_the_documented_files(run_dir):
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(RUN_FILES)
    assert sorted(p.name for p in (run_dir / "data").iterdir()) == sorted(DATA_FILES)


def test_metrics_and_samples(run_dir):
    m = json.loads((run_dir / "metrics.json").read_text())
    for name in ("base", "tuned", "reference"):
        assert {"n", "accuracy", "macro_f1", "invalid_rate"} <= m[name].keys()
        assert m[name]["n"] == 12
    lo, hi = m["delta"]["macro_f1"]["ci95"]
    assert lo <= m["delta"]["macro_f1"]["value"] <= hi
    assert {"counterfactual", "crows_pairs", "bbq"} <= m["bias"].keys()
    assert all({"base", "tuned", "n"} <= v.keys() for v in m["bias"].values())
    samples = [json.loads(x) for x in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 12 and {"input", "reference", "base_answer", "tuned_answer"} <= samples[0].keys()
    manifest = json.loads((run_dir / "data" / "manifest.json").read_text())
    c = manifest["counts"]
    assert c["input"] == 62 and sum(c["rejected"].values()) == 1 and c["dropped"]["duplicate"] == 1
    rejected = [json.loads(x) for x in (run_dir / "data" / "rejected.jsonl").read_text().splitlines()]
    assert len(rejected) == 1 and rejected[0]["line"] == 62 and rejected[0]["field"] == "text"
    assert c["input"] == c["kept"] + sum(c["rejected"].values()) + sum(c["dropped"].values())
    log = [json.loads(x) for x in (run_dir / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["val_loss"] > 0 and any("tokens_per_s" in r for r in log)
    assert "<img" in (run_dir / "report.html").read_text()
    card = (run_dir / "README.md").read_text()
    assert manifest["data_sha256"][:16] in card and "LORA" in card


def test_every_trainable_parameter_changed(run_dir, tiny_lm_dir):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from tuneloop.config import AdapterConfig
    from tuneloop.train.sft import build_peft_config

    base = AutoModelForCausalLM.from_pretrained(tiny_lm_dir, dtype=torch.float32)
    torch.manual_seed(0)  # same seed and order as sft.setup: seed, then attach the adapter
    init = get_peft_model(base, build_peft_config(AdapterConfig(r=4, alpha=8)))
    init_state = {k.replace(".default", ""): v for k, v in init.state_dict().items() if "lora_" in k}
    trained = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    assert trained.keys() == init_state.keys() and trained
    unchanged = [k for k in trained if torch.equal(trained[k], init_state[k])]
    assert not unchanged, unchanged


def test_loss_mask_is_the_assistant_answer(run_dir):
    from transformers import AutoTokenizer

    from tuneloop.train.batching import IGNORE, tokenize_chat

    tok = AutoTokenizer.from_pretrained(run_dir / "model")
    row = json.loads((run_dir / "data" / "train.jsonl").read_text().splitlines()[0])
    ids, labels = tokenize_chat(tok, row["messages"])
    trained = [i for i, lab in zip(ids, labels) if lab != IGNORE]
    assert tok.decode(trained) == row["label"] + "<|im_end|>"


def test_merged_model_loads_in_plain_transformers_and_chat_answers(run_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(run_dir / "model")
    assert model.config.num_hidden_layers == 2
    result = tuneloop("chat", run_dir, "--prompt", "@airline thanks!", "--max-new-tokens", "3")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() != "" or result.stdout == "\n"


@pytest.mark.parametrize("args, message", [
    (["run", "missing.yaml"], "config file not found: missing.yaml"),
    (["run", "{cfg}", "--train.learning_rate", "1"], "unknown config key 'train.learning_rate' (did you mean 'train.lr'?)"),
    (["run", "{cfg}", "--model.base", "not-a-model"], "unknown model 'not-a-model'"),
    (["run", "{cfg}", "--data.source", "{tmp}/nope.csv"], "data file not found"),
    (["frobnicate"], "unknown command 'frobnicate'"),
])
def test_user_errors_are_one_line_without_traceback(tmp_path, args, message):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "out"), "data": {"source": str(tmp_path / "d.csv")}}))
    (tmp_path / "d.csv").write_text("text,label\nhi,pos\n")
    result = tuneloop(*[a.format(cfg=cfg, tmp=tmp_path) for a in args])
    assert result.returncode == 2
    assert message.format(tmp=tmp_path) in result.stderr
    assert "Traceback" not in result.stderr
    if args[0] != "frobnicate":
        assert len(result.stderr.strip().splitlines()) == 1


def test_debug_flag_shows_the_traceback(tmp_path):
    result = tuneloop("--debug", "run", tmp_path / "missing.yaml")
    assert result.returncode != 0 and "Traceback" in result.stderr
