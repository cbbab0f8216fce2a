"""Merged export: merged == unmerged logits, and the saved folder loads in plain transformers as a runtime would."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.unit.test_export_run import make_run
from tuneloop.export import merged, source
from tuneloop.train.batching import render_ids

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Is my flight on time? ✈️"}]


@pytest.fixture(scope="module")
def run_src(tmp_path_factory, tiny_lm_dir):
    return source.read_run(make_run(tmp_path_factory.mktemp("run"), tiny_lm_dir, seed=1))


@pytest.fixture(scope="module")
def exported(run_src, tmp_path_factory):
    out = tmp_path_factory.mktemp("merged")
    merged.save_merged(source.load_trained(run_src, merge=True), source.load_tokenizer(run_src), out, "f32")
    return out


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0]


def test_merged_equals_unmerged_logits(run_src):
    tok = source.load_tokenizer(run_src)
    ids = render_ids(tok, CHAT, add_generation_prompt=True)
    unmerged = source.load_trained(run_src, merge=False)
    folded = source.load_trained(run_src, merge=True)
    assert type(folded).__name__ == "LlamaForCausalLM"  # no peft wrapper left
    assert (_logits(unmerged, ids) - _logits(folded, ids)).abs().max() < 1e-5


def test_merged_folder_has_the_runtime_layout(exported):
    assert merged.check_layout(exported) == []
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json", "chat_template.jinja"} <= {p.name for p in exported.iterdir()}
    config = json.loads((exported / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in config
    assert "auto_map" not in config  # no remote code needed


def test_merged_folder_loads_in_plain_transformers_with_the_same_logits(exported, run_src):
    reloaded = AutoModelForCausalLM.from_pretrained(exported, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(exported)
    ref_tok = source.load_tokenizer(run_src)
    ids = render_ids(tok, CHAT, add_generation_prompt=True)
    assert ids == render_ids(ref_tok, CHAT, add_generation_prompt=True)  # chat template travelled
    assert (_logits(reloaded, ids) - _logits(source.load_trained(run_src, merge=True), ids)).abs().max() < 1e-6


def test_generation_config_stops_on_the_chat_end_of_turn(exported, tokenizer):
    gen = json.loads((exported / "generation_config.json").read_text())
    assert gen["eos_token_id"][0] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert gen["pad_token_id"] is not None


def test_f16_export_stores_f16_weights(run_src, tmp_path):
    from safetensors import safe_open

    merged.save_merged(source.load_trained(run_src, merge=True), source.load_tokenizer(run_src), tmp_path, "f16")
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "float16"
