"""A cheap reference for every classification comparison: frozen bundled-MiniLM embeddings + logistic regression.

    ref = reference_baseline(train_rows, test_rows, labels)   # same metrics as the LLMs, plus "seconds"

Input text = the user message (`messages[-2]["content"]`), label = `Example.label`. Embeddings are the mean of
MiniLM's last hidden states over real tokens (how all-MiniLM-L6-v2 was trained), L2-normalized; the classifier
is scikit-learn's LogisticRegression (class_weight="balanced", so macro-F1 is not won by the majority class).
If this beats the tuned LLM, fine-tuning the LLM was not worth it for this task.
"""

from __future__ import annotations

import time

import numpy as np

from tuneloop.errors import UserError

ENCODER = "bundled:minilm-l6"


def embed(texts: list, model_spec: str = ENCODER, batch_size: int = 64, max_length: int = 128) -> np.ndarray:
    """Mean-pooled, L2-normalized sentence embeddings [n, 384] from a frozen encoder."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from tuneloop.models.sources import resolve

    path = resolve(model_spec).path
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    out = []
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths per batch: less padding
    with torch.no_grad():
        for s in range(0, len(order), batch_size):
            batch = tok([texts[i] for i in order[s: s + batch_size]], padding=True, truncation=True,
                        max_length=max_length, return_tensors="pt")
            hidden = model(**batch).last_hidden_state  # [B, T, 384]
            mask = batch["attention_mask"][..., None].float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    emb = np.concatenate(out) if out else np.zeros((0, 384), dtype=np.float32)
    result = np.empty_like(emb)
    result[order] = emb
    return result


def reference_baseline(train_rows: list, test_rows: list, labels: list, seed: int = 0) -> dict:
    """Train on train_rows, score test_rows with classification_metrics; adds answers, seconds, n_train."""
    from sklearn.linear_model import LogisticRegression

    from tuneloop.evaluate.metrics import classification_metrics

    train = [ex for ex in train_rows if ex.label is not None]
    if len({ex.label for ex in train}) < 2:
        raise UserError("the reference baseline needs a training split with at least two labels")
    t = time.time()
    x_train = embed([ex.messages[-2]["content"] for ex in train])
    x_test = embed([ex.messages[-2]["content"] for ex in test_rows])
    clf = LogisticRegression(max_iter=2000, C=1.0, class_weight="balanced", random_state=seed)
    clf.fit(x_train, [ex.label for ex in train])
    answers = [str(a) for a in clf.predict(x_test)] if len(test_rows) else []
    metrics = classification_metrics([ex.label for ex in test_rows], answers, list(labels))
    metrics.update({"model": f"{ENCODER} + LogisticRegression", "n_train": len(train),
                    "seconds": round(time.time() - t, 1), "answers": answers})
    return metrics
