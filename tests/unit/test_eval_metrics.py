"""Each metric pinned against hand-computed values and sacrebleu's reference implementation."""

import math

import pytest

from tuneloop.evaluate import metrics as M


def test_classification_hand_computed():
    labels = ["negative", "positive"]
    refs = ["negative", "negative", "positive", "positive"]
    answers = ["Negative.", "positive", "I think positive", "mixed feelings"]
    m = M.classification_metrics(refs, answers, labels)
    assert m["accuracy"] == 0.5 and m["invalid_rate"] == 0.25
    # negative: tp 1, predicted 1, true 2 -> P 1, R .5, F1 2/3; positive: tp 1, predicted 2, true 2 -> F1 .5
    assert m["per_class"]["negative"]["f1"] == pytest.approx(2 / 3)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.5) / 2)
    assert m["confusion"]["matrix"] == [[1, 1, 0], [0, 1, 1], [0, 0, 0]]


def test_exact_match_and_token_f1():
    assert M.normalize_text("The  Cat, sat!") == "cat sat"
    assert M.exact_match("The cat.", "cat") == 1.0 and M.exact_match("cat", "dog") == 0.0
    # ref "cat sat on mat" (4 tokens), answer "cat on mat" (3): 3 shared -> P 1, R 3/4, F1 6/7
    assert M.token_f1("the cat sat on the mat", "a cat on a mat") == pytest.approx(6 / 7)
    assert M.token_f1("cat", "dog") == 0.0 and M.token_f1("", "") == 1.0


def test_rouge_l_hand_computed():
    # LCS of "the cat sat on the mat" and "the cat on the mat" is 5 tokens: P 5/5, R 5/6, F 10/11
    assert M.rouge_l("the cat sat on the mat", "the cat on the mat") == pytest.approx(10 / 11)
    assert M.rouge_l("a b c d", "d c b a") == pytest.approx(0.25)
    assert M.rouge_l("abc", "xyz") == 0.0


def test_bleu_chrf_match_sacrebleu_and_hand_values():
    from sacrebleu.metrics import BLEU, CHRF

    refs, hyps = ["the cat sat on a mat"], ["the cat sat on the mat"]
    g = M.generation_metrics(refs, hyps)
    # clipped n-gram precisions 5/6, 3/5, 2/4, 1/3, no brevity penalty
    assert g["bleu"] == pytest.approx(100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25)
    assert g["bleu"] == pytest.approx(BLEU().corpus_score(hyps, [refs]).score)
    assert g["chrf"] == pytest.approx(CHRF().corpus_score(hyps, [refs]).score)
    assert M.generation_metrics(["same words"], ["same words"])["chrf"] == pytest.approx(100.0)
    assert M.generation_metrics(["aaaa"], ["zzzz"])["chrf"] == 0.0


def test_generation_metrics_means_and_lengths():
    g = M.generation_metrics(["a b", "c d e f"], ["a b", "c"])
    assert g["n"] == 2 and g["exact_match"] == 0.5
    assert g["token_f1"] == pytest.approx((1 + 2 * 1 * 0.25 / 1.25) / 2)
    assert g["length"]["answer"] == {"mean": 1.5, "p50": 1.5, "p95": pytest.approx(1.95), "max": 2}
    assert g["length"]["reference"]["mean"] == 3.0


def test_json_validity_and_schema():
    schema = {"type": "object", "properties": {"a": {"type": "integer", "minimum": 2}}, "required": ["a"]}
    refs = ['{"a": 1}', '{"a": 2}', '{"a": 3}']
    answers = ['{"a": 1}', '```json\n{"a": 2}\n```', "not json"]
    m = M.json_metrics(refs, answers, schema)
    assert m["valid_rate"] == pytest.approx(2 / 3) and m["invalid_rate"] == pytest.approx(1 / 3)
    assert m["schema_match_rate"] == pytest.approx(1 / 3)  # {"a": 1} breaks minimum
    assert m["exact_match"] == pytest.approx(2 / 3)
    assert M.json_metrics(refs, answers)["schema_match_rate"] == pytest.approx(2 / 3)


def test_lm_loss_of_uniform_model_is_log_vocab(tiny_lm_dir, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    with torch.no_grad():
        model.get_output_embeddings().weight.zero_()  # every logit 0: uniform next-token distribution
    convs = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}],
             [{"role": "user", "content": "bye"}, {"role": "assistant", "content": "see you"}]]
    m = M.lm_metrics(model, tokenizer, convs, batch_size=1)
    assert m["loss"] == pytest.approx(math.log(model.config.vocab_size), rel=1e-5)
    assert m["perplexity"] == pytest.approx(model.config.vocab_size, rel=1e-4)
    assert m["tokens"] > 4


def test_lm_loss_matches_transformers_loss(tiny_lm_dir, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    from tuneloop.train.batching import tokenize_chat

    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir).eval()
    conv = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]
    ids, labels = tokenize_chat(tokenizer, conv)
    with torch.no_grad():
        ref = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss.item()
    assert M.lm_metrics(model, tokenizer, [conv])["loss"] == pytest.approx(ref, rel=1e-5)


def test_task_dispatch_rejects_unknown_task():
    from tuneloop.errors import UserError

    with pytest.raises(UserError):
        M.task_metrics("regression", ["a"], ["a"])
    assert M.task_metrics("generation", ["a"], ["a"])["exact_match"] == 1.0
