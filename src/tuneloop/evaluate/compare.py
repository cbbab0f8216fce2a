"""Compare two models' answers on the same examples: paired bootstrap 95% CIs for every metric delta,
McNemar's exact test on accuracy, per-example diffs, and the regression gate.

    result = compare_predictions(refs, base_answers, tuned_answers, labels, seed=0)
    result["delta"]["accuracy"]        # {"value": 0.08, "ci95": [0.03, 0.13]}
    result["mcnemar"]                  # {"fixed": 14, "broken": 6, "p_value": 0.115}
    report = check_gate(parse_gate("accuracy>=base+0.05,invalid_rate<=0.02"), tuned_metrics, base_metrics)

Bootstrap: every metric is written as per-example sufficient statistics S [n, k] and a function from their sum
to the score (accuracy: S = correct, score = sum / n; macro-F1: per-class tp, predicted, true counts; BLEU/chrF:
sacrebleu's n-gram statistics). A resample is a row of multinomial counts W [B, n], so all B resampled sums are
one matrix product W @ S, and the same W for both models makes the resamples paired.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from tuneloop.errors import UserError
from tuneloop.evaluate.metrics import INVALID, exact_match, normalize_label, parse_json, rouge_l, token_f1

RESAMPLES = 2000
_CHUNK = 500  # resamples per matrix product: W is [500, n] ints, so memory stays flat for large n


# ---- per-example statistics: metric -> (stats [n, k], score(sums [B, k], n) -> [B]) ---------------------------
def _mean_stat(values) -> tuple:
    return np.asarray(values, dtype=float)[:, None], lambda sums, n: sums[:, 0] / n


def _macro_f1_stat(refs: list, preds: list, labels: list) -> tuple:
    r, p = np.array(refs, dtype=object), np.array(preds, dtype=object)
    cols = []
    for lab in labels:  # tp, predicted, true per class; F1 = 2 tp / (predicted + true) (sklearn, zero_division=0)
        cols += [(r == lab) & (p == lab), p == lab, r == lab]
    stats = np.stack(cols, axis=1).astype(float)

    def score(sums, n):
        tp, pred, true = sums[:, 0::3], sums[:, 1::3], sums[:, 2::3]
        with np.errstate(divide="ignore", invalid="ignore"):
            f1 = np.where(pred + true > 0, 2 * tp / (pred + true), 0.0)
        return f1.mean(axis=1)
    return stats, score


def _sacrebleu_stat(metric, refs: list, answers: list) -> tuple:
    stats = np.array(metric._extract_corpus_statistics(answers, [refs]), dtype=float)

    def score(sums, n):  # sacrebleu's own formula on each resampled sum (a few µs each)
        return np.array([metric._compute_score_from_stats(list(row)).score for row in sums])
    return stats, score


def example_stats(task: str, refs: list, answers: list, labels: list | None = None) -> dict:
    """Per-example statistics for each metric of a task (see the module docstring)."""
    if task == "classification":
        preds = [normalize_label(a, labels) or INVALID for a in answers]
        return {"accuracy": _mean_stat([p == r for p, r in zip(preds, refs)]),
                "macro_f1": _macro_f1_stat(refs, preds, labels),
                "invalid_rate": _mean_stat([p == INVALID for p in preds])}
    if task == "json":
        return {"valid_rate": _mean_stat([_is_json(a) for a in answers]),
                "exact_match": _mean_stat([_same_json(r, a) for r, a in zip(refs, answers)])}
    from sacrebleu.metrics import BLEU, CHRF

    return {"exact_match": _mean_stat([exact_match(r, a) for r, a in zip(refs, answers)]),
            "token_f1": _mean_stat([token_f1(r, a) for r, a in zip(refs, answers)]),
            "rouge_l": _mean_stat([rouge_l(r, a) for r, a in zip(refs, answers)]),
            "bleu": _sacrebleu_stat(BLEU(), refs, answers),
            "chrf": _sacrebleu_stat(CHRF(), refs, answers)}


def _is_json(text: str) -> bool:
    try:
        parse_json(text)
        return True
    except ValueError:
        return False


def _same_json(ref: str, ans: str) -> bool:
    try:
        return parse_json(ans) == parse_json(ref)
    except ValueError:
        return False


# ---- bootstrap --------------------------------------------------------------------------------------------------
def paired_bootstrap(stats_a: np.ndarray, stats_b: np.ndarray, score, seed: int = 0,
                     resamples: int = RESAMPLES) -> dict:
    """Delta score(b) - score(a) with a percentile 95% CI from paired resamples of the examples."""
    n = len(stats_a)
    value = float(score(stats_b.sum(0, keepdims=True), n)[0] - score(stats_a.sum(0, keepdims=True), n)[0])
    if n == 0:
        return {"value": value, "ci95": [value, value]}
    rng = np.random.default_rng(seed)
    deltas = []
    for start in range(0, resamples, _CHUNK):
        w = rng.multinomial(n, np.full(n, 1.0 / n), size=min(_CHUNK, resamples - start)).astype(float)
        deltas.append(score(w @ stats_b, n) - score(w @ stats_a, n))
    lo, hi = np.percentile(np.concatenate(deltas), [2.5, 97.5])
    return {"value": value, "ci95": [float(lo), float(hi)]}


def bootstrap_mean(values, seed: int = 0, resamples: int = RESAMPLES) -> dict:
    """Mean of one per-example vector with its percentile 95% CI (the delta against an all-zero vector)."""
    stats, score = _mean_stat(values)
    return paired_bootstrap(np.zeros_like(stats), stats, score, seed, resamples)


# ---- McNemar and per-example diffs ---------------------------------------------------------------------------
def mcnemar(correct_a, correct_b) -> dict:
    """McNemar's exact test: under H0 the discordant pairs split 50/50, so p = two-sided binomial test."""
    from scipy.stats import binomtest

    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    fixed, broken = int((~a & b).sum()), int((a & ~b).sum())
    p = binomtest(min(fixed, broken), fixed + broken, 0.5).pvalue if fixed + broken else 1.0
    return {"fixed": fixed, "broken": broken, "discordant": fixed + broken, "p_value": float(p)}


def example_diffs(correct_a, correct_b) -> dict:
    """Indices of examples by outcome: fixed (a wrong, b right), broken, both_wrong, both_right."""
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    groups = {"fixed": ~a & b, "broken": a & ~b, "both_wrong": ~a & ~b, "both_right": a & b}
    return {k: {"n": int(m.sum()), "index": np.flatnonzero(m).tolist()} for k, m in groups.items()}


def compare_predictions(references: list, base_answers: list, tuned_answers: list, labels: list | None,
                        seed: int = 0, task: str = "classification", resamples: int = RESAMPLES) -> dict:
    """{"delta": {metric: {"value", "ci95"}}, "mcnemar": {...}, "diffs": {...}} for tuned minus base.

    "Correct" for McNemar and the diffs is the normalized label for classification, exact match otherwise."""
    if not len(references) == len(base_answers) == len(tuned_answers):
        raise ValueError("references and both answer lists must have the same length")
    sa = example_stats(task, references, base_answers, labels)
    sb = example_stats(task, references, tuned_answers, labels)
    delta = {m: paired_bootstrap(sa[m][0], sb[m][0], sa[m][1], seed, resamples) for m in sa}
    key = "accuracy" if task == "classification" else "exact_match"
    ca, cb = sa[key][0][:, 0] > 0, sb[key][0][:, 0] > 0
    return {"delta": delta, "mcnemar": mcnemar(ca, cb), "diffs": example_diffs(ca, cb),
            "bootstrap": {"resamples": resamples, "seed": seed, "method": "paired percentile"}}


# ---- regression gate ------------------------------------------------------------------------------------------
_CLAUSE = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(>=|<=|>|<)\s*(.+?)\s*$")
_TERM = re.compile(r"\s*([+-]?)\s*(base|\d+(?:\.\d*)?(?:e[+-]?\d+)?|\.\d+)\s*", re.I)
_OPS = {">=": np.greater_equal, "<=": np.less_equal, ">": np.greater, "<": np.less}


@dataclass
class Clause:
    """`metric op [base] + const`: compares the candidate's metric with a constant, or with the base
    model's value of the same metric plus a constant."""

    text: str
    metric: str
    op: str
    uses_base: bool
    const: float


def parse_gate(spec: str) -> list:
    """'accuracy>=base+0.05,invalid_rate<=0.02' -> [Clause, Clause]; a malformed clause is a UserError."""
    clauses = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        m = _CLAUSE.match(part)
        if not m:
            raise UserError(f"gate clause '{part}' is not METRIC OP VALUE (e.g. accuracy>=base+0.05)")
        metric, op, rhs = m.groups()
        pos, uses_base, const = 0, False, 0.0
        while pos < len(rhs):
            t = _TERM.match(rhs, pos)
            if not t or t.end() == pos or (pos > 0 and not t.group(1)):
                raise UserError(f"gate clause '{part}': cannot read '{rhs[pos:]}' (use base, numbers, + and -)")
            sign = -1.0 if t.group(1) == "-" else 1.0
            if t.group(2).lower() == "base":
                if uses_base or sign < 0:
                    raise UserError(f"gate clause '{part}': 'base' may appear once, added")
                uses_base = True
            else:
                const += sign * float(t.group(2))
            pos = t.end()
        clauses.append(Clause(part, metric, op, uses_base, const))
    if not clauses:
        raise UserError("empty --gate (example: --gate 'accuracy>=base+0.05,invalid_rate<=0.02')")
    return clauses


def metric_value(metrics: dict, name: str) -> float:
    """A number from a metrics dict by name or dotted path (e.g. length.answer.mean, per_class.negative.f1)."""
    node = metrics
    for part in name.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, bool) or not isinstance(node, (int, float)):
        known = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
        raise UserError(f"gate metric '{name}' is not in the results (available: {', '.join(known)})")
    return float(node)


def check_gate(clauses: list, tuned: dict, base: dict | None = None) -> dict:
    """Evaluate each clause on the candidate's metrics; {"passed": bool, "clauses": [...]}."""
    rows = []
    for c in clauses:
        if c.uses_base and base is None:
            raise UserError(f"gate clause '{c.text}' uses 'base', which needs two models (tuneloop compare)")
        value = metric_value(tuned, c.metric)
        threshold = (metric_value(base, c.metric) if c.uses_base else 0.0) + c.const
        # rounded so that 0.80 + 0.05 passes a tuned 0.85 (binary floats make the sum 0.8500000000000001)
        rows.append({"clause": c.text, "value": value, "threshold": threshold,
                     "passed": bool(_OPS[c.op](round(value, 9), round(threshold, 9)))})
    return {"passed": all(r["passed"] for r in rows), "clauses": rows}


def bias_deltas(base: dict, tuned: dict, seed: int = 0, resamples: int = RESAMPLES) -> dict:
    """Per bias suite: {"base", "tuned", "n", "delta": {"value", "ci95"}} from the paired per-item vectors."""
    out = {}
    for suite in sorted(set(base) & set(tuned)):
        a, b = base[suite].get("_values"), tuned[suite].get("_values")
        row = {"base": base[suite].get("score"), "tuned": tuned[suite].get("score"),
               "n": tuned[suite].get("n", 0)}
        if a is not None and b is not None and len(a) == len(b) and len(a):
            sa, score = _mean_stat(a)
            row["delta"] = paired_bootstrap(sa, _mean_stat(b)[0], score, seed, resamples)
        out[suite] = row
    return out
