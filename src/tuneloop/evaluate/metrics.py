"""Task metrics, by task type (TASK_METRICS). Classification-as-generation: the answer normalizer, accuracy,
macro-F1, per-class P/R, confusion matrix and invalid-answer rate. Generation: exact match, token F1, ROUGE-L,
BLEU and chrF (sacrebleu), length statistics. Structured output: JSON validity and schema match. Language
modelling: loss and perplexity on the reference answers (lm_metrics).

    normalize_label("Negative.", ["negative", "neutral", "positive"])  -> "negative"
    normalize_label("I think it's mixed", [...])                         -> None   (invalid)

Normalizer (documented in the README): lowercase the answer and replace non-alphanumerics by spaces; if the
answer starts with a label, that label; else if exactly one distinct label occurs in its first sentence, or
else in the whole answer, that label; else the answer is invalid (e.g. "negative, neutral or positive").
Invalid answers count as wrong for accuracy and recall.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter

import numpy as np

from tuneloop.errors import UserError

INVALID = "<invalid>"


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


def normalize_label(answer: str, labels: list) -> str | None:
    a = _norm(answer)
    normed = {_norm(lab): lab for lab in labels}
    for n, lab in sorted(normed.items(), key=lambda kv: -len(kv[0])):
        if a == n or a.startswith(n + " "):
            return lab
    # "The sentiment is neutral. The customer expresses a positive ..." -> the first sentence decides.
    for text in (_norm(re.split(r"[.!?\n]", answer.strip(), maxsplit=1)[0]), a):
        found = {lab for n, lab in normed.items() if re.search(rf"\b{re.escape(n)}\b", text)}
        if len(found) == 1:
            return found.pop()
    return None


def classification_metrics(references: list, answers: list, labels: list) -> dict:
    """Metrics for generated answers against reference labels."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    preds = [normalize_label(a, labels) or INVALID for a in answers]
    n = len(references)
    correct = sum(p == r for p, r in zip(preds, references))
    p, r, f, support = precision_recall_fscore_support(references, preds, labels=labels, average=None,
                                                       zero_division=0)
    cm = confusion_matrix(references, preds, labels=labels + [INVALID])
    return {
        "n": n,
        "accuracy": correct / n if n else 0.0,
        "macro_f1": float(f.mean()) if len(f) else 0.0,
        "invalid_rate": sum(x == INVALID for x in preds) / n if n else 0.0,
        "per_class": {lab: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                            "support": int(support[i])} for i, lab in enumerate(labels)},
        "confusion": {"labels": labels + [INVALID], "matrix": cm.tolist()},
        "predictions": preds,
    }


# ---- generation: answers compared with reference texts -------------------------------------------------------
# Text normalizer for exact match and token F1 (the SQuAD convention): lowercase, drop punctuation and the
# articles a/an/the, collapse whitespace. ROUGE-L, BLEU and chrF see the raw text (sacrebleu tokenizes itself).
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_text(text: str) -> str:
    text = re.sub(r"[^\w\s]", " ", text.lower())
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(reference: str, answer: str) -> float:
    return float(normalize_text(reference) == normalize_text(answer))


def token_f1(reference: str, answer: str) -> float:
    """Bag-of-tokens F1 between normalized texts (1.0 when both are empty)."""
    ref, ans = normalize_text(reference).split(), normalize_text(answer).split()
    if not ref or not ans:
        return float(ref == ans)
    common = sum((Counter(ref) & Counter(ans)).values())
    if common == 0:
        return 0.0
    p, r = common / len(ans), common / len(ref)
    return 2 * p * r / (p + r)


def _lcs(a: list, b: list) -> int:
    """Length of the longest common subsequence; O(len(a) * len(b)) time, O(len(b)) memory."""
    row = [0] * (len(b) + 1)
    for x in a:
        prev = 0  # row[j-1] of the previous line
        for j, y in enumerate(b, start=1):
            prev, row[j] = row[j], prev + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(reference: str, answer: str) -> float:
    """ROUGE-L F1 on lowercased alphanumeric tokens (the rouge-score tokenizer, without stemming)."""
    ref, ans = re.findall(r"[a-z0-9]+", reference.lower()), re.findall(r"[a-z0-9]+", answer.lower())
    lcs = _lcs(ref, ans)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(ans), lcs / len(ref)
    return 2 * p * r / (p + r)


def length_stats(texts: list) -> dict:
    """Whitespace-token lengths: mean, median, 95th percentile, max."""
    lens = np.array([len(t.split()) for t in texts] or [0])
    return {"mean": float(lens.mean()), "p50": float(np.percentile(lens, 50)),
            "p95": float(np.percentile(lens, 95)), "max": int(lens.max())}


def generation_metrics(references: list, answers: list) -> dict:
    """Exact match, token F1, ROUGE-L (means over examples), corpus BLEU and chrF (sacrebleu, 0-100),
    and answer/reference length statistics."""
    from sacrebleu.metrics import BLEU, CHRF

    n = len(references)
    per = {"exact_match": [exact_match(r, a) for r, a in zip(references, answers)],
           "token_f1": [token_f1(r, a) for r, a in zip(references, answers)],
           "rouge_l": [rouge_l(r, a) for r, a in zip(references, answers)]}
    out: dict = {"n": n, **{k: float(np.mean(v)) if n else 0.0 for k, v in per.items()}}
    out["bleu"] = BLEU().corpus_score(answers, [references]).score if n else 0.0
    out["chrf"] = CHRF().corpus_score(answers, [references]).score if n else 0.0
    out["length"] = {"answer": length_stats(answers), "reference": length_stats(references)}
    return out


# ---- structured output: JSON validity and schema match -------------------------------------------------------
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.S)


def parse_json(answer: str):
    """The JSON value in an answer (a ```json fence around it is allowed); raises ValueError if none."""
    text = answer.strip()
    m = _FENCE.match(text)
    return json.loads(m.group(1) if m else text)


def json_metrics(references: list, answers: list, schema: dict | None = None) -> dict:
    """valid_rate: answers that parse as JSON; schema_match_rate: valid and conforming to `schema`
    (jsonschema, the draft the schema declares); exact_match: parsed value equals the parsed reference."""
    import jsonschema

    validator = jsonschema.validators.validator_for(schema)(schema) if schema else None
    valid = schema_ok = same = 0
    for ref, ans in zip(references, answers):
        try:
            value = parse_json(ans)
        except ValueError:
            continue
        valid += 1
        schema_ok += validator is None or validator.is_valid(value)
        try:
            same += value == parse_json(ref)
        except ValueError:
            pass
    n = len(references)
    return {"n": n, "valid_rate": valid / n if n else 0.0, "invalid_rate": 1 - valid / n if n else 0.0,
            "schema_match_rate": schema_ok / n if n else 0.0, "exact_match": same / n if n else 0.0}


# ---- language modelling: loss and perplexity on the reference answers ----------------------------------------
def lm_metrics(model, tok, conversations: list, batch_size: int = 8) -> dict:
    """Mean next-token cross-entropy over assistant tokens (the training loss), and perplexity = exp(loss)."""
    import torch

    from tuneloop.train.batching import collate, tokenize_chat
    from tuneloop.train.sft import label_token_loss

    feats = [tokenize_chat(tok, msgs) for msgs in conversations]
    order = sorted(range(len(feats)), key=lambda i: len(feats[i][0]))
    device = next(model.parameters()).device
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for s in range(0, len(order), batch_size):
            batch = collate([feats[i] for i in order[s: s + batch_size]], tok.pad_token_id)
            loss, k = label_token_loss(model, {k: v.to(device) for k, v in batch.items()})
            total, count = total + float(loss), count + k
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(loss), "tokens": count}


TASK_METRICS = {"classification": classification_metrics, "generation": generation_metrics,
                "json": json_metrics}


def task_metrics(task: str, references: list, answers: list, labels: list | None = None,
                 schema: dict | None = None) -> dict:
    """Dispatch on the task type: classification (needs labels), generation, json (optional schema)."""
    if task not in TASK_METRICS:
        raise UserError(f"unknown task '{task}' (use {', '.join(TASK_METRICS)})")
    if task == "classification":
        return classification_metrics(references, answers, list(labels or []))
    if task == "json":
        return json_metrics(references, answers, schema)
    return generation_metrics(references, answers)
