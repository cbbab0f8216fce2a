"""Task metrics. Classification-as-generation: the answer normalizer, accuracy, macro-F1, per-class P/R,
confusion matrix and invalid-answer rate.

    normalize_label("Negative.", ["negative", "neutral", "positive"])  -> "negative"
    normalize_label("I think it's mixed", [...])                         -> None   (invalid)

Normalizer (documented in the README): lowercase the answer and replace non-alphanumerics by spaces; if the
answer starts with a label, that label; else if exactly one distinct label occurs anywhere, that label; else
the answer is invalid. Invalid answers count as wrong for accuracy and recall.
"""

from __future__ import annotations

import re

INVALID = "<invalid>"


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


def normalize_label(answer: str, labels: list) -> str | None:
    a = _norm(answer)
    normed = {_norm(lab): lab for lab in labels}
    for n, lab in sorted(normed.items(), key=lambda kv: -len(kv[0])):
        if a == n or a.startswith(n + " "):
            return lab
    found = {lab for n, lab in normed.items() if re.search(rf"\b{re.escape(n)}\b", a)}
    return found.pop() if len(found) == 1 else None


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
