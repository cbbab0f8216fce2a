"""Export inputs: a minimal run folder built from a tiny Llama + a LoRA adapter whose B weights are non-zero.

`make_run` is shared by the export tests (unit, e2e, integration): it writes what `tuneloop run` leaves
behind that an export reads: adapter/, model/, config.yaml (resolved_model.path) and data/test.jsonl.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from tuneloop.errors import UserError
from tuneloop.export import source

TEST_ROWS = [
    [{"role": "system", "content": "Classify the sentiment."}, {"role": "user", "content": "@united lost my bag"},
     {"role": "assistant", "content": "negative"}],
    [{"role": "user", "content": "Thanks for the upgrade, great crew!"}, {"role": "assistant", "content": "positive"}],
    [{"role": "user", "content": "Flight 22 departs at 9."}, {"role": "assistant", "content": "neutral"}],
]


def make_run(run: Path, base_dir: Path, seed: int = 0, scale: float = 0.05, test_rows: list | None = TEST_ROWS,
             rank: int = 4, save_model: bool = True) -> Path:
    """A run folder whose adapter changes the model: LoRA B ~ N(0, scale) instead of peft's zeros.

    save_model=False skips the merged model/ (an export only needs it for full fine-tunes)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    cfg = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, task_type="CAUSAL_LM",
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(base, cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
    model.save_pretrained(run / "adapter")
    tok.save_pretrained(run / "adapter")
    if save_model:
        merged = model.merge_and_unload()
        merged.save_pretrained(run / "model")
        tok.save_pretrained(run / "model")
    (run / "config.yaml").write_text(yaml.safe_dump(
        {"model": {"base": str(base_dir)}, "resolved_model": {"path": str(base_dir), "kind": "local"}}))
    if test_rows:
        (run / "data").mkdir()
        with open(run / "data" / "test.jsonl", "w") as f:
            for msgs in test_rows:
                f.write(json.dumps({"messages": msgs, "label": msgs[-1]["content"], "meta": {}}) + "\n")
    return run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_lm_dir) -> Path:
    return make_run(tmp_path_factory.mktemp("run"), tiny_lm_dir)


def test_read_run_finds_base_adapter_and_model(tiny_run, tiny_lm_dir):
    src = source.read_run(tiny_run)
    assert src.base_path == tiny_lm_dir
    assert src.adapter_dir == tiny_run / "adapter" and src.model_dir == tiny_run / "model"


def test_read_run_rejects_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(UserError, match="not a run folder"):
        source.read_run(tmp_path)
    (tmp_path / "config.yaml").write_text("model: {base: x}\n")
    with pytest.raises(UserError, match="neither adapter"):
        source.read_run(tmp_path)


def test_chat_eos_is_the_end_of_turn_token(tokenizer):
    assert tokenizer.convert_ids_to_tokens(source.chat_eos_id(tokenizer)) == "<|im_end|>"


def test_parity_prompts_come_from_the_test_split_without_answers(tiny_run, tmp_path):
    convs, origin = source.parity_prompts(source.read_run(tiny_run), 2)
    assert origin.endswith("test.jsonl")
    assert convs == [TEST_ROWS[0][:-1], TEST_ROWS[1][:-1]]
    bare = make_run(tmp_path / "bare", source.read_run(tiny_run).base_path, test_rows=None)
    convs, origin = source.parity_prompts(source.read_run(bare), 7)
    assert origin == "built-in" and len(convs) == 7 and all(c[-1]["role"] == "user" for c in convs)


def test_adapter_changes_the_model(tiny_run):
    """Guards every other export test: a zero LoRA B would make merged == base and hide merge bugs."""
    src = source.read_run(tiny_run)
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(src.base_path, dtype=torch.float32).eval()
    tuned = source.load_trained(src, merge=True)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        assert (base(ids).logits - tuned(ids).logits).abs().max() > 1e-2
