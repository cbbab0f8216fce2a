"""/v1/embeddings on the bundled MiniLM encoder (mean pooling + L2 norm, as its sentence-transformers config says)."""

from __future__ import annotations

import asyncio

import httpx2 as httpx
import numpy as np
import openai
import pytest

from tuneloop.serve.app import build_app
from tuneloop.serve.engine import LocalEngine
from tuneloop.serve.settings import ServeSettings


@pytest.mark.integration
def test_embeddings_match_mean_pooling_and_rank_paraphrases_closer():
    import torch
    from transformers import AutoModel, AutoTokenizer

    from tuneloop.models.sources import resolve

    path = resolve("bundled:minilm-l6").path
    app = build_app(LocalEngine(path, "minilm"), ServeSettings())
    texts = ["my flight was cancelled", "the airline cancelled my flight", "I love this pasta recipe"]

    async def main():
        async with app.router.lifespan_context(app):
            http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
            c = openai.AsyncOpenAI(base_url="http://t/v1", api_key="x", http_client=http,
                                   _strict_response_validation=True)
            as_float = await c.embeddings.create(model="minilm", input=texts, encoding_format="float")
            # The SDK's default asks for base64 and decodes it after parsing; its strict mode validates the
            # still-encoded string against list[float] first, so that path is checked with a default client.
            loose = openai.AsyncOpenAI(base_url="http://t/v1", api_key="x", http_client=http)
            as_b64 = await loose.embeddings.create(model="minilm", input=texts)
            with pytest.raises(openai.BadRequestError, match="causal language model"):
                await c.chat.completions.create(model="minilm", messages=[{"role": "user", "content": "hi"}])
            return as_b64, as_float

    as_b64, as_float = asyncio.run(main())
    vec = np.array([d.embedding for d in as_float.data])
    assert np.allclose(np.array([d.embedding for d in as_b64.data]), vec, atol=1e-6)
    assert vec.shape == (3, 384) and np.allclose(np.linalg.norm(vec, axis=1), 1, atol=1e-4)
    sims = vec @ vec.T
    assert sims[0, 1] > sims[0, 2] and sims[0, 1] > sims[1, 2]
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    batch = tok(texts[:1], return_tensors="pt")
    with torch.no_grad():
        ref = model(**batch).last_hidden_state.mean(1)
    assert np.allclose(vec[0], torch.nn.functional.normalize(ref, dim=-1)[0].numpy(), atol=1e-4)
    assert as_float.usage.prompt_tokens == sum(len(tok(t)["input_ids"]) for t in texts)
