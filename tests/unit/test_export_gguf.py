"""GGUF export: written with llama.cpp's names and layout, read back by transformers' GGUF loader unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGUFReader, TokenType
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, MistralConfig

from tests.conftest import TOKENIZER_DIR
from tuneloop.errors import UserError
from tuneloop.export import gguf as gguf_export
from tuneloop.export import source
from tuneloop.train.batching import render_ids

TEXTS = ["Hello world", "  leading spaces and\ttabs\nnew lines", "naïve café — 東京 🚀",
         "@united UA123 12345.67", "<|im_start|>user\nhi<|im_end|>", "def f(x):\n    return x ** 2  # comment"]
CHAT = [{"role": "system", "content": "Classify."}, {"role": "user", "content": "my bag is lost 😡"},
        {"role": "assistant", "content": "negative"}, {"role": "user", "content": "and now?"}]


def _write(model, tok, folder, dtype):
    path = folder / f"model-{dtype}.gguf"
    gguf_export.write_gguf(model, tok, path, dtype, "test")
    return path


def _load(path):
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, tiny_lm_dir):
    from tests.unit.test_export_run import make_run

    src = source.read_run(make_run(tmp_path_factory.mktemp("run"), tiny_lm_dir, seed=2))
    return source.load_trained(src, merge=True)


@pytest.fixture(scope="module")
def f32_file(tuned, tok, tmp_path_factory):
    return _write(tuned, tok, tmp_path_factory.mktemp("gguf"), "f32")


@pytest.fixture(scope="module")
def reloaded(f32_file):
    return _load(f32_file)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0]


@pytest.mark.parametrize("heads", [4, 2, 1])
def test_rotary_permutation_is_what_transformers_undoes(heads):
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    w = np.random.default_rng(0).standard_normal((heads * 16, 8)).astype(np.float32)
    out = gguf_export.rotary_to_interleaved(w, heads)
    assert not np.array_equal(out, w)
    back = LlamaTensorProcessor()._reverse_permute_weights(out, heads)
    np.testing.assert_array_equal(back, w)


def test_f32_round_trip_logits(tuned, tok, reloaded):
    ids = render_ids(tok, CHAT, add_generation_prompt=True)
    assert (_logits(tuned, ids) - _logits(reloaded[0], ids)).abs().max().item() < 1e-4


def test_tokenizer_round_trip(tok, reloaded):
    back = reloaded[1]
    for text in TEXTS:
        assert back(text)["input_ids"] == tok(text)["input_ids"], text
        assert back.decode(back(text)["input_ids"]) == text
    assert render_ids(back, CHAT, add_generation_prompt=True) == render_ids(tok, CHAT, add_generation_prompt=True)
    assert back.apply_chat_template(CHAT, tokenize=False) == tok.apply_chat_template(CHAT, tokenize=False)


def test_metadata_carries_template_tokenizer_and_hparams(f32_file, tok, tuned):
    r = GGUFReader(f32_file)
    meta = {k: f.contents() for k, f in r.fields.items() if not k.startswith("tokenizer.ggml.merges")}
    assert meta["general.architecture"] == "llama"
    assert meta["tokenizer.chat_template"] == tok.chat_template
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "smollm"
    assert meta["tokenizer.ggml.eos_token_id"] == tok.convert_tokens_to_ids("<|im_end|>")
    assert len(meta["tokenizer.ggml.tokens"]) == tuned.config.vocab_size
    types = meta["tokenizer.ggml.token_type"]
    assert types[tok.convert_tokens_to_ids("<|im_start|>")] == TokenType.CONTROL
    assert types[tok.convert_tokens_to_ids("Ġthe")] == TokenType.NORMAL
    assert meta["llama.attention.head_count_kv"] == tuned.config.num_key_value_heads
    assert meta["llama.block_count"] == tuned.config.num_hidden_layers
    names = {t.name: t.tensor_type.name for t in r.tensors}
    assert "output.weight" not in names  # tied embeddings: llama.cpp reuses token_embd
    assert names["blk.0.attn_q.weight"] == "F32" and names["output_norm.weight"] == "F32"


def test_f16_keeps_norms_in_f32_and_stays_close(tuned, tok, tmp_path):
    path = _write(tuned, tok, tmp_path, "f16")
    names = {t.name: t.tensor_type.name for t in GGUFReader(path).tensors}
    assert names["token_embd.weight"] == "F16" and names["blk.1.ffn_down.weight"] == "F16"
    assert names["blk.1.attn_norm.weight"] == "F32"
    ids = render_ids(tok, CHAT, add_generation_prompt=True)
    assert (_logits(tuned, ids) - _logits(_load(path)[0], ids)).abs().max().item() < 1e-2


def test_untied_output_and_wide_vocab_round_trip(tok, tmp_path):
    """Llama-style untied lm_head, and an embedding wider than the tokenizer (padded vocab slots)."""
    torch.manual_seed(3)
    cfg = LlamaConfig(vocab_size=len(tok) + 64, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = LlamaForCausalLM(cfg).eval()
    path = _write(model, tok, tmp_path, "f32")
    r = GGUFReader(path)
    assert "output.weight" in {t.name for t in r.tensors}
    assert r.fields["tokenizer.ggml.token_type"].contents()[-1] == TokenType.UNUSED
    ids = render_ids(tok, CHAT, add_generation_prompt=True)
    assert (_logits(model, ids) - _logits(_load(path)[0], ids)).abs().max().item() < 1e-4


def test_refuses_what_it_cannot_write():
    with pytest.raises(UserError, match="llama-architecture"):
        gguf_export.check_supported(MistralConfig())
    scaled = LlamaConfig(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0})
    with pytest.raises(UserError, match="rope scaling"):
        gguf_export.check_supported(scaled)
    with pytest.raises(UserError, match="biases"):
        gguf_export.check_supported(LlamaConfig(attention_bias=True))
