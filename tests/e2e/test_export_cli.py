"""`tuneloop export` end to end: a run folder in, an artifact + export.json + parity.json out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.unit.test_export_run import make_run
from tuneloop.errors import UserError
from tuneloop.export.cli import cmd_export


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_lm_dir) -> Path:
    return make_run(tmp_path_factory.mktemp("run"), tiny_lm_dir, seed=5)


def test_export_gguf_writes_artifact_and_passing_parity(run_dir, capsys):
    assert cmd_export([str(run_dir), "--format", "gguf", "--dtype", "f16", "--prompts", "2",
                       "--max-new-tokens", "8"]) == 0
    out = run_dir / "export" / "gguf-f16"
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "export.json", "model-f16.gguf", "parity.json"]
    report = json.loads((out / "parity.json").read_text())
    assert report["passed"] and report["prompts"] == 2 and report["prompt_source"].endswith("test.jsonl")
    assert report["reference"] == "base + adapter (unmerged)"
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["files"]["model-f16.gguf"] == (out / "model-f16.gguf").stat().st_size
    assert "parity PASSED" in capsys.readouterr().out
    assert "<|im_end|>" in (out / "Modelfile").read_text()


def test_export_merged_to_chosen_folder(run_dir, tmp_path):
    out = tmp_path / "merged"
    assert cmd_export([str(run_dir), "--format", "merged", "--out", str(out), "--prompts", "1",
                       "--max-new-tokens", "4"]) == 0
    assert (out / "model.safetensors").is_file() and json.loads((out / "parity.json").read_text())["passed"]


def test_export_of_a_folder_that_is_not_a_run_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not a run folder"):
        cmd_export([str(tmp_path), "--format", "merged"])
    with pytest.raises(SystemExit):  # argparse: --format is required
        cmd_export([str(tmp_path)])


@pytest.mark.integration
@pytest.mark.slow  # ~115 s of CPU on 2 cores: merge, write 270 MB, reload via the GGUF loader, parity
def test_bundled_smollm2_exports_to_gguf_f16_with_greedy_parity(tmp_path):
    """The real 135M model + a small random LoRA: GGUF f16 answers like base + adapter on 3 prompts."""
    from tuneloop.models.sources import resolve

    base = Path(resolve("bundled:smollm2-135m-instruct").path)
    run = make_run(tmp_path / "run", base, seed=0, scale=0.01, test_rows=None, save_model=False)
    assert cmd_export([str(run), "--format", "gguf", "--dtype", "f16", "--prompts", "3",
                       "--max-new-tokens", "16"]) == 0
    report = json.loads((run / "export" / "gguf-f16" / "parity.json").read_text())
    assert report["passed"] and report["prompts"] == 3 and report["tokenizer_match"]
    assert all(r["reference"] for r in report["results"])  # a real model answers in words
