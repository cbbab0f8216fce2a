"""Exact resume, per recipe: a run killed with SIGKILL mid-training and resumed ends like the uninterrupted run.

Each test runs the real CLI three times on a tiny model: straight through, killed right after a checkpoint
(step k), then `--train.resume true`. Adapter dropout is on, so resume must restore the RNG too. The runs use
train.threads 1 (the CLI's processes, not this one, do the work) and skip the bias and reference evaluations.
"""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.e2e.test_run_cli import LABELS, WORDS, tuneloop

def _write_config(tmp, out, cfg: dict):
    path = tmp / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump({"output_dir": str(out), "seed": 3, **cfg}))
    return path


def _sft_config(tmp, tiny_lm_dir, out):
    rows = [{"text": f"@airline {WORDS[LABELS[i % 3]].split()[i % 4]} case {i}", "label": LABELS[i % 3]}
            for i in range(60)]
    (tmp / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return _write_config(tmp, out, {
        "data": {"source": str(tmp / "d.jsonl"), "labels": LABELS, "train_size": 40, "validation_size": 4,
                 "test_size": 4},
        "model": {"base": str(tiny_lm_dir)},
        "adapter": {"r": 4, "alpha": 8, "dropout": 0.1},  # dropout: resume must restore the RNG too
        "train": {"epochs": 2, "batch_size": 2, "lr": 1e-3, "log_every": 2, "save_every": 4, "keep_last": 2,
                  "threads": 1},
        "eval": {"max_new_tokens": 2, "evaluate_base": False, "bias": False, "reference": False}})


def _classify_config(tmp, tiny_lm_dir, out):
    """The decoder-head classifier (LoRA body + trained score head) on the tiny Llama."""
    rows = [{"text": f"flight {i} was {'x ' * (i % 5)}{'late' if i % 2 else 'fine'}",
             "label": ["positive", "negative"][i % 2]} for i in range(40)]
    (tmp / "c.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return _write_config(tmp, out, {
        "data": {"source": str(tmp / "c.jsonl"), "labels": ["negative", "positive"], "train_size": 24,
                 "validation_size": 4, "test_size": 4},
        "model": {"base": str(tiny_lm_dir)},
        "adapter": {"r": 4, "alpha": 8, "dropout": 0.1},
        "train": {"recipe": "classify", "epochs": 3, "batch_size": 2, "lr": 3e-3, "log_every": 2, "save_every": 4,
                  "keep_last": 2, "eval_every": 8, "threads": 1},
        "eval": {"bias": False, "reference": False, "evaluate_base": False}})


def _dpo_config(tmp, tiny_lm_dir, out):
    rows = [{"prompt": f"Where is bag {i}{'?' * (1 + i % 3)}", "chosen": "It is on the way to you.",
             "rejected": "No idea, sorry."} for i in range(40)]
    (tmp / "p.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return _write_config(tmp, out, {
        "data": {"source": str(tmp / "p.jsonl"), "format": "preference", "task": "generation", "train_size": 24,
                 "validation_size": 4, "test_size": 4, "dedup": "exact", "contamination_threshold": 0},
        "model": {"base": str(tiny_lm_dir)},
        "adapter": {"r": 4, "alpha": 8, "dropout": 0.1},
        "train": {"recipe": "dpo", "dpo_beta": 0.5, "epochs": 3, "batch_size": 2, "lr": 5e-3, "log_every": 2,
                  "save_every": 4, "keep_last": 2, "eval_every": 8, "threads": 1},
        "eval": {"bias": False, "evaluate_base": False}})


def _kill_after_checkpoint(cfg, out, step: int) -> None:
    """Start `tuneloop run cfg`, SIGKILL it as soon as checkpoints/step-<step> exists."""
    proc = subprocess.Popen([sys.executable, "-m", "tuneloop.cli", "run", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "checkpoints" / f"step-{step:06d}").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "model").exists()


def _assert_same_run(straight, killed) -> None:
    """Same adapter (and head) weights, same log steps, same losses within 1e-4."""
    a = load_file(straight / "adapter" / "adapter_model.safetensors")
    b = load_file(killed / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-4), k
    log_a = [json.loads(x) for x in (straight / "train_log.jsonl").read_text().splitlines()]
    log_b = [json.loads(x) for x in (killed / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log_a] == [r["step"] for r in log_b]  # no lost or duplicated log lines
    assert abs(log_a[-1]["val_loss"] - log_b[-1]["val_loss"]) < 1e-4
    loss_a = [r["loss"] for r in log_a if "loss" in r]
    loss_b = [r["loss"] for r in log_b if "loss" in r]
    assert loss_a and loss_a == pytest.approx(loss_b, abs=1e-4)
    # keep_last=2 plus the final checkpoint rule: only the newest two remain
    assert len(list((straight / "checkpoints").glob("step-*"))) <= 3


@pytest.mark.parametrize("recipe,make_config,kill_at", [("sft", _sft_config, 12), ("classify", _classify_config, 8),
                                                        ("dpo", _dpo_config, 8)])
def test_sigkill_then_resume_equals_uninterrupted(tiny_lm_dir, tmp_path, recipe, make_config, kill_at):
    straight = tmp_path / "straight"
    result = tuneloop("run", make_config(tmp_path, tiny_lm_dir, straight))
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((straight / "metrics.json").read_text())["recipe"] == recipe

    killed = tmp_path / "killed"
    cfg = make_config(tmp_path, tiny_lm_dir, killed)
    _kill_after_checkpoint(cfg, killed, kill_at)
    result = tuneloop("run", cfg, "--train.resume", "true")
    assert result.returncode == 0, result.stderr[-2000:]
    _assert_same_run(straight, killed)


def test_resume_without_checkpoints_is_a_clear_error(tiny_lm_dir, tmp_path):
    result = tuneloop("run", _sft_config(tmp_path, tiny_lm_dir, tmp_path / "fresh"), "--train.resume", "true")
    assert result.returncode == 2 and "no checkpoints" in result.stderr
