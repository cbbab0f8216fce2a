"""Counterfactual probes on toy models with known flip rates, CrowS-Pairs and BBQ scoring on toy scorers, and
the whole audit through a tiny random Llama."""

import re

import numpy as np
import pytest

from tuneloop.data.formats import Example
from tuneloop.evaluate import bias as B

LABELS = ["negative", "neutral", "positive"]
# one identity term per row, one row per category
TEXTS = ["he was rude at the gate", "the christian family missed the flight", "the american crew was late",
         "Adam lost a bag in Denver", "a young passenger got a refund"]


def rows(texts=TEXTS):
    return [Example([{"role": "system", "content": "Classify."}, {"role": "user", "content": t},
                     {"role": "assistant", "content": "neutral"}], "neutral") for t in texts]


def _terms(text):
    return {w.lower() for w in re.findall(r"[A-Za-z]+", text)}


def biased_model(originals):
    """Scores identity words: +1 for the ones in the original inputs, -1 for their counterparts."""
    plus = set().union(*(_terms(t) for t in originals))

    def classify(conversations):
        out = []
        for msgs in conversations:
            words = _terms(msgs[-1]["content"])
            ident = {w for table in B.identity_swaps().values() for w in table} & words
            out.append("positive" if ident & plus else "negative")
        return out
    return classify


def blind_model(conversations):
    """Drops every identity term, then keyword sentiment on what is left."""
    out = []
    for msgs in conversations:
        words = _terms(msgs[-1]["content"]) - {w for t in B.identity_swaps().values() for w in t}
        out.append("negative" if words & {"rude", "late", "lost", "missed"} else "positive")
    return out


def test_swap_terms_keep_case_and_cover_categories():
    swaps = B.identity_swaps()
    assert set(swaps) == {"gender", "race_ethnicity", "religion", "age", "nationality"}
    # WEAT lists are zipped by index: Sarah/Kevin are 4th in female_names/male_names, Jamal/Brett 5th in
    # african_american_names_7/european_american_names_7
    assert B.swap_terms("He lost HIS bag, said Sarah", swaps["gender"]) == "She lost HER bag, said Kevin"
    assert B.swap_terms("Adam and Jamal", swaps["race_ethnicity"]) == "Alonzo and Brett"
    assert B.swap_terms("their theme", swaps["gender"]) == "their theme"  # whole words only
    for cat, table in swaps.items():
        assert all(table[table[k]] for k in table), cat  # every counterpart can be swapped back


def test_biased_toy_model_flips_every_time():
    r = B.counterfactual_probe(rows(), biased_model(TEXTS), LABELS, limit=100, seed=0)
    assert r["n"] == len(TEXTS) and r["score"] == 1.0 and r["ci95"] == [1.0, 1.0]
    assert set(r["by_category"]) == {"gender", "race_ethnicity", "religion", "age", "nationality"}
    assert r["examples"] and r["examples"][0]["original_answer"] != r["examples"][0]["swapped_answer"]


def test_blind_toy_model_never_flips():
    r = B.counterfactual_probe(rows(), blind_model, LABELS, limit=100, seed=0)
    assert r["n"] == len(TEXTS) and r["score"] == 0.0 and r["ci95"] == [0.0, 0.0]


def test_probe_reuses_original_answers_and_subsamples():
    asked = []

    def counting(convs):
        asked.extend(convs)
        return blind_model(convs)
    originals = blind_model([ex.messages[:-1] for ex in rows()])
    r = B.counterfactual_probe(rows(), counting, LABELS, limit=3, seed=1, original_answers=originals)
    assert r["n"] == 3 and len(asked) == 3  # only the swapped inputs were asked
    assert B.counterfactual_probe(rows(["no identity here"]), blind_model, LABELS, 10, 0)["n"] == 0


def test_generation_probe_measures_sentiment_shift():
    def gen(convs):
        return ["what a wonderful trip" if "she" in _terms(m[-1]["content"]) else "a terrible trip" for m in convs]
    r = B.counterfactual_probe(rows(["he was late"]), gen, None, limit=10, seed=0)
    # "a terrible trip": -1/3; "what a wonderful trip": +1/4 -> shift 7/12
    assert r["n"] == 1 and r["score"] == pytest.approx(1 / 4 + 1 / 3)
    assert r["length_shift"] == 1.0


def test_crows_pairs_on_toy_scorers():
    stereo = {r["sentence"].replace("[MASK]", r["mask1"]) for r in B.load_crows_pairs(40, seed=0)}
    pro = B.crows_pairs(lambda texts: [float(t in stereo) for t in texts], 40, seed=0)
    anti = B.crows_pairs(lambda texts: [float(t not in stereo) for t in texts], 40, seed=0)
    assert (pro["score"], pro["n"], anti["score"]) == (1.0, 40, 0.0)
    assert sum(v["n"] for v in pro["by_bias_type"].values()) == 40


def test_bbq_on_toy_choosers():
    items = B.load_bbq(60, seed=0)
    n_amb = sum(it["ambiguous"] for it in items)
    assert 0 < n_amb < 60 and all(len(it["options"]) == 3 for it in items)
    oracle = B.bbq(lambda its: [it["answer"] for it in its], 60, seed=0)
    assert (oracle["accuracy_ambiguous"], oracle["accuracy_disambiguated"], oracle["score"]) == (1.0, 1.0, 0.0)
    unknown = B.bbq(lambda its: [next(i for i, o in enumerate(it["options"]) if B._is_unknown(o)) for it in its],
                    60, seed=0)
    assert (unknown["accuracy_ambiguous"], unknown["accuracy_disambiguated"]) == (1.0, 0.0)
    assume = B.bbq(lambda its: [next(i for i, o in enumerate(it["options"]) if not B._is_unknown(o))
                                for it in its], 60, seed=0)
    assert assume["score"] == 1.0 and assume["n_ambiguous"] == n_amb


def test_sequence_logliks_match_transformers_loss(tiny_lm_dir, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir).eval()
    texts = ["The poor are ignorant.", "Short one", "A much longer sentence about the rich people here."]
    ll = B.sequence_logliks(model, tokenizer, texts, batch_size=2)  # padded batches
    for text, got in zip(texts, ll):
        ids = torch.tensor([[tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            loss = model(input_ids=ids, labels=ids).loss.item()
        assert got == pytest.approx(-loss * (ids.shape[1] - 1), rel=1e-4)


def test_bias_audit_through_tiny_llama(tiny_lm_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir).eval()
    sizes = B.BiasSizes(counterfactual=4, crows_pairs=6, bbq=6, max_new_tokens=2, batch_size=4)
    audit = B.bias_audit(model, tokenizer, rows(), LABELS, seed=0, sizes=sizes)
    assert {k: v["n"] for k, v in audit.items()} == {"counterfactual": 4, "crows_pairs": 6, "bbq": 6}
    for v in audit.values():
        assert 0.0 <= v["score"] <= 1.0 and v["ci95"][0] <= v["score"] <= v["ci95"][1]
    assert "_values" not in B.public(audit)["bbq"]
    endpoint_like = B.bias_audit(None, None, rows(), LABELS, classify_fn=blind_model, sizes=sizes)
    assert endpoint_like["counterfactual"]["score"] == 0.0 and endpoint_like["crows_pairs"]["n"] == 0


def test_letter_choices_agree_with_full_forward(tiny_lm_dir, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    from tuneloop.train.batching import render_ids

    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir).eval()
    items = B.load_bbq(4, seed=3)
    convs = [B.bbq_prompt(it) for it in items]
    got = B.letter_choices(model, tokenizer, convs, [3] * 4, batch_size=4)
    letters = [tokenizer.convert_tokens_to_ids(c) for c in "ABC"]
    for conv, g in zip(convs, got):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([render_ids(tokenizer, conv, True)])).logits[0, -1]
        assert g == int(np.argmax(logits[letters].numpy()))
