"""The CUDA paths (run only where a GPU is present: `pytest -m gpu`): bf16 frozen weights with fp32 adapters,
training that agrees with fp32, and generation on the device."""

import pytest
import torch

from tuneloop.config import AdapterConfig, TrainConfig
from tuneloop.data.formats import Example
from tuneloop.train import sft

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _rows(n: int = 16) -> list:
    return [Example([{"role": "user", "content": f"seat {i} " + "x " * (i % 5) + "free?"},
                     {"role": "assistant", "content": ["yes", "no"][i % 2]}], None) for i in range(n)]


def _train(model_dir, precision: str, steps: int = 8):
    cfg = TrainConfig(max_steps=steps, batch_size=4, lr=5e-3, warmup_ratio=0.0, log_every=1, precision=precision)
    state = sft.setup(str(model_dir), _rows(), [], AdapterConfig(r=4, alpha=8), cfg, seed=0)
    return state, [r["loss"] for r in sft.fit(state, cfg) if "loss" in r]


def test_auto_precision_stores_frozen_weights_in_bf16_and_adapters_in_fp32(tiny_lm_dir):
    state, losses = _train(tiny_lm_dir, "auto")
    assert state.precision == "bf16"
    frozen = {p.dtype for p in state.model.parameters() if not p.requires_grad}
    trainable = {p.dtype for p in state.model.parameters() if p.requires_grad}
    assert frozen == {torch.bfloat16} and trainable == {torch.float32}
    assert all(p.is_cuda for p in state.model.parameters())
    assert losses[-1] < losses[0]


def test_bf16_training_follows_fp32(tiny_lm_dir):
    _, bf16 = _train(tiny_lm_dir, "bf16")
    _, fp32 = _train(tiny_lm_dir, "fp32")
    assert bf16[0] == pytest.approx(fp32[0], rel=2e-2)  # same data and init: only rounding differs
    assert bf16[-1] == pytest.approx(fp32[-1], rel=0.15, abs=0.05)


def test_generation_on_cuda_matches_cpu(tiny_lm_dir):
    from transformers import AutoModelForCausalLM

    from tuneloop.evaluate.generate import generate
    from tuneloop.models.sources import load_tokenizer

    tok = load_tokenizer(str(tiny_lm_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir), dtype=torch.float32).eval()
    convs = [r.messages[:-1] for r in _rows(6)]
    on_cpu = generate(model, tok, convs, max_new_tokens=6, batch_size=3)
    on_gpu = generate(model.cuda(), tok, convs, max_new_tokens=6, batch_size=3)
    assert on_gpu == on_cpu  # greedy, fp32: the device must not change the answers
