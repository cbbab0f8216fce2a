"""Every shipped example config runs end to end for 2 optimizer steps on the tiny model (real CLI, real data)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted(Path(__file__).parents[2].glob("examples/*/config.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.parent.name for p in EXAMPLES])
def test_shipped_config_runs_two_steps(path, tiny_lm_dir, tmp_path):
    small = ["--model.base", tiny_lm_dir, "--output_dir", tmp_path / "run", "--train.max_steps", 2,
             "--train.batch_size", 4, "--data.train_size", 16, "--data.validation_size", 4, "--data.test_size", 8,
             "--eval.bias", "false", "--eval.reference", "false", "--eval.max_new_tokens", 2]
    done = subprocess.run([sys.executable, "-m", "tuneloop.cli", "run", path, *map(str, small)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 2 and metrics["tuned"]["n"] == 8
