"""Exact resume: a run killed with SIGKILL mid-training and resumed ends like the uninterrupted run."""

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


def _config(tmp, tiny_lm_dir, out):
    rows = [{"text": f"@airline {WORDS[LABELS[i % 3]].split()[i % 4]} case {i}", "label": LABELS[i % 3]}
            for i in range(60)]
    (tmp / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    cfg = {"output_dir": str(out), "seed": 3,
           "data": {"source": str(tmp / "d.jsonl"), "labels": LABELS, "train_size": 40, "validation_size": 4,
                    "test_size": 4},
           "model": {"base": str(tiny_lm_dir)},
           "adapter": {"r": 4, "alpha": 8, "dropout": 0.1},  # dropout: resume must restore the RNG too
           "train": {"epochs": 2, "batch_size": 2, "lr": 1e-3, "log_every": 2, "save_every": 4, "keep_last": 2},
           "eval": {"max_new_tokens": 2, "evaluate_base": False}}
    path = tmp / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_sigkill_then_resume_equals_uninterrupted(tiny_lm_dir, tmp_path):
    straight = tmp_path / "straight"
    assert tuneloop("run", _config(tmp_path, tiny_lm_dir, straight)).returncode == 0

    killed = tmp_path / "killed"
    cfg = _config(tmp_path, tiny_lm_dir, killed)
    proc = subprocess.Popen([sys.executable, "-m", "tuneloop.cli", "run", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "step-000012").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "model").exists()

    result = tuneloop("run", cfg, "--train.resume", "true")
    assert result.returncode == 0, result.stderr[-2000:]
    a = load_file(straight / "adapter" / "adapter_model.safetensors")
    b = load_file(killed / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-4), k
    log_a = [json.loads(x) for x in (straight / "train_log.jsonl").read_text().splitlines()]
    log_b = [json.loads(x) for x in (killed / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log_a] == [r["step"] for r in log_b]  # no lost or duplicated log lines
    assert abs(log_a[-1]["val_loss"] - log_b[-1]["val_loss"]) < 1e-4
    loss_a = [r["loss"] for r in log_a if "loss" in r]
    loss_b = [r["loss"] for r in log_b if "loss" in r]
    assert loss_a == pytest.approx(loss_b, abs=1e-4)
    # keep_last=2 plus the final checkpoint rule: only the newest two remain
    assert len(list((straight / "checkpoints").glob("step-*"))) <= 3


def test_resume_without_checkpoints_is_a_clear_error(tiny_lm_dir, tmp_path):
    result = tuneloop("run", _config(tmp_path, tiny_lm_dir, tmp_path / "fresh"), "--train.resume", "true")
    assert result.returncode == 2 and "no checkpoints" in result.stderr
