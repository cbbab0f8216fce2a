"""Paired bootstrap on distributions with known answers, McNemar's exact test, diffs and the regression gate."""

import numpy as np
import pytest

from tuneloop.errors import UserError
from tuneloop.evaluate import compare as C


def test_paired_shift_has_zero_width_ci():
    x = np.random.default_rng(1).normal(size=300)
    stats_a, score = C._mean_stat(x)
    stats_b, _ = C._mean_stat(x + 0.5)  # every example improves by exactly 0.5
    d = C.paired_bootstrap(stats_a, stats_b, score, seed=0)
    assert d["value"] == pytest.approx(0.5)
    assert d["ci95"] == pytest.approx([0.5, 0.5])


def test_bernoulli_ci_matches_normal_approximation():
    n, p = 4000, 0.3
    values = np.random.default_rng(2).random(n) < p
    mean = values.mean()
    half = 1.96 * np.sqrt(mean * (1 - mean) / n)  # the CLT interval the bootstrap must approach
    d = C.bootstrap_mean(values, seed=0, resamples=4000)
    assert d["value"] == pytest.approx(mean)
    assert d["ci95"][0] == pytest.approx(mean - half, abs=0.004)
    assert d["ci95"][1] == pytest.approx(mean + half, abs=0.004)


def test_bootstrap_ci_covers_true_mean_about_95_percent():
    rng = np.random.default_rng(3)
    covered = 0
    for s in range(200):
        lo, hi = C.bootstrap_mean(rng.normal(0.2, 1.0, size=200), seed=s, resamples=500)["ci95"]
        covered += lo <= 0.2 <= hi
    assert 0.90 <= covered / 200 <= 0.99


def test_seeded_bootstrap_is_reproducible():
    v = np.random.default_rng(4).random(100)
    assert C.bootstrap_mean(v, seed=7) == C.bootstrap_mean(v, seed=7)
    assert C.bootstrap_mean(v, seed=7)["ci95"] != C.bootstrap_mean(v, seed=8)["ci95"]


def test_macro_f1_and_bleu_points_match_their_libraries():
    from sacrebleu.metrics import BLEU
    from sklearn.metrics import f1_score

    labels = ["a", "b", "c"]
    refs = ["a", "a", "b", "c", "c", "b"]
    base, tuned = ["a", "b", "b", "xx", "c", "a"], ["a", "a", "b", "c", "b", "b"]
    r = C.compare_predictions(refs, base, tuned, labels, seed=0)
    expected = (f1_score(refs, tuned, labels=labels, average="macro", zero_division=0)
                - f1_score(refs, [p if p in labels else "<invalid>" for p in base], labels=labels,
                           average="macro", zero_division=0))
    assert r["delta"]["macro_f1"]["value"] == pytest.approx(expected)
    assert r["delta"]["accuracy"]["value"] == pytest.approx(5 / 6 - 3 / 6)
    assert r["delta"]["invalid_rate"]["value"] == pytest.approx(-1 / 6)
    lo, hi = r["delta"]["accuracy"]["ci95"]
    assert lo <= r["delta"]["accuracy"]["value"] <= hi

    refs_t = ["the cat sat on a mat", "a dog ran", "hello world"]
    b_ans, t_ans = ["a cat", "dog", "hi"], ["the cat sat on the mat", "a dog ran", "hello there world"]
    g = C.compare_predictions(refs_t, b_ans, t_ans, None, task="generation")
    bleu = BLEU().corpus_score(t_ans, [refs_t]).score - BLEU().corpus_score(b_ans, [refs_t]).score
    assert g["delta"]["bleu"]["value"] == pytest.approx(bleu)
    assert set(g["delta"]) == {"exact_match", "token_f1", "rouge_l", "bleu", "chrf"}


def test_mcnemar_exact_hand_computed():
    base = [False] * 9 + [True] + [True] * 5
    tuned = [True] * 9 + [False] + [True] * 5
    m = C.mcnemar(base, tuned)
    assert (m["fixed"], m["broken"]) == (9, 1)
    assert m["p_value"] == pytest.approx(2 * (1 + 10) / 2 ** 10)  # 2 * P(X <= 1), X ~ Bin(10, 1/2)
    assert C.mcnemar([True, False], [True, False])["p_value"] == 1.0


def test_example_diffs():
    d = C.example_diffs([True, False, False, True], [False, True, False, True])
    assert {k: v["index"] for k, v in d.items()} == {"fixed": [1], "broken": [0], "both_wrong": [2],
                                                     "both_right": [3]}


def test_gate_parse_and_check():
    clauses = C.parse_gate("accuracy>=base+0.05, invalid_rate<=0.02,macro_f1 > base - 0.1")
    assert [(c.metric, c.op, c.uses_base, c.const) for c in clauses] == [
        ("accuracy", ">=", True, 0.05), ("invalid_rate", "<=", False, 0.02), ("macro_f1", ">", True, -0.1)]
    base = {"accuracy": 0.80, "invalid_rate": 0.1, "macro_f1": 0.5}
    ok = C.check_gate(clauses, {"accuracy": 0.85, "invalid_rate": 0.02, "macro_f1": 0.41}, base)
    assert ok["passed"] and all(c["passed"] for c in ok["clauses"])
    bad = C.check_gate(clauses, {"accuracy": 0.84, "invalid_rate": 0.0, "macro_f1": 0.6}, base)
    assert not bad["passed"] and [c["passed"] for c in bad["clauses"]] == [False, True, True]
    assert not C.check_gate(C.parse_gate("accuracy<0.5"), {"accuracy": 0.5})["passed"]
    assert C.check_gate(C.parse_gate("length.answer.mean<=3"), {"length": {"answer": {"mean": 3}}})["passed"]


@pytest.mark.parametrize("spec", ["accuracy=>0.5", "accuracy>=", "accuracy>=base+base", "accuracy>=-base",
                                  "accuracy>=0.1 0.2", "", "acc uracy>=1"])
def test_gate_rejects_malformed(spec):
    with pytest.raises(UserError):
        C.parse_gate(spec)


def test_gate_unknown_metric_and_missing_base():
    with pytest.raises(UserError, match="available: accuracy"):
        C.check_gate(C.parse_gate("acc>=0.5"), {"accuracy": 0.9})
    with pytest.raises(UserError, match="two models"):
        C.check_gate(C.parse_gate("accuracy>=base"), {"accuracy": 0.9})


def test_bias_deltas_pair_the_items():
    base = {"s": {"score": 0.5, "n": 4, "_values": [1, 0, 1, 0]}}
    tuned = {"s": {"score": 0.5, "n": 4, "_values": [1, 0, 1, 0]}}
    d = C.bias_deltas(base, tuned)["s"]
    assert d["delta"] == {"value": 0.0, "ci95": [0.0, 0.0]} and d["n"] == 4
