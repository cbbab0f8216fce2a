"""Batched greedy generation with a KV cache, for evaluation and chat; and the client for endpoints.

    answers = generate(model, tok, [ex.messages[:-1] for ex in test], max_new_tokens=8, batch_size=32)
    client, model_name = connect("http://127.0.0.1:8000/v1")    # an OpenAI-compatible server instead

Prompts are sorted by length before batching (left padding, so little wasted compute) and answers are
returned in the input order.
"""

from __future__ import annotations

import os

import torch
from tqdm.auto import tqdm

from tuneloop.train.batching import end_of_turn_ids, render_ids


@torch.no_grad()
def generate(model, tok, conversations: list, max_new_tokens: int = 64, batch_size: int = 16,
             desc: str = "generate") -> list:
    """Greedy answers (str) for a list of chat prompts (messages without the final assistant turn)."""
    model.eval()
    device = next(model.parameters()).device
    prompts = [render_ids(tok, msgs, add_generation_prompt=True) for msgs in conversations]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    stop = sorted(end_of_turn_ids(tok))
    pad = tok.pad_token_id if tok.pad_token_id is not None else stop[0]
    out = [""] * len(prompts)
    bar = tqdm(total=len(prompts), desc=desc, unit="ex", dynamic_ncols=True, leave=False)
    for s in range(0, len(order), batch_size):
        idx = order[s: s + batch_size]
        width = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for b, i in enumerate(idx):  # left padding: every prompt ends at the last column
            ids[b, width - len(prompts[i]):] = torch.tensor(prompts[i])
            mask[b, width - len(prompts[i]):] = 1
        gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                             max_new_tokens=max_new_tokens, eos_token_id=stop, pad_token_id=pad)
        for b, i in enumerate(idx):
            out[i] = tok.decode(gen[b, width:], skip_special_tokens=True).strip()
        bar.update(len(idx))
    bar.close()
    return out


def connect(url: str, model: str = "", what: str = "", option: str = "--endpoint-model", timeout: float = 600):
    """(openai client, model name) for an OpenAI-compatible base URL; an empty name takes its first model.

    Fails here, with one line, when the URL cannot list models: before any model is loaded or trained."""
    from openai import OpenAI

    from tuneloop.errors import UserError

    client = OpenAI(base_url=url, api_key=os.environ.get("OPENAI_API_KEY", "none"), max_retries=2, timeout=timeout)
    if not model:
        try:
            model = client.models.list().data[0].id
        except Exception as e:  # connection refused, 404, empty list: all mean "cannot use this URL"
            raise UserError(f"{what}cannot list models at {url} ({type(e).__name__}); is the server up? "
                            f"(or pass {option})") from e
    return client, model
