"""Sequence classification: a tiny BERT and the tiny Llama learn a separable task, predict, and round-trip."""

import dataclasses
import math

import pytest
import torch

from tuneloop.config import AdapterConfig, TrainConfig
from tuneloop.data.formats import Example
from tuneloop.errors import UserError
from tuneloop.train import classify

from tests.conftest import build_tiny_bert

SUBJECTS = ["the flight", "my seat", "the crew", "the food", "the gate", "my bag", "the lounge", "the app"]
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "was", "really", "good", "bad", "great", "awful"] + \
        sorted({w for s in SUBJECTS for w in s.split()})


def _rows(words=("good", "bad")) -> list:
    """Separable by one word: 'good' -> positive, 'bad' -> negative, with varied (uneven) context."""
    rows = []
    for i, subject in enumerate(SUBJECTS):
        for word, label in zip(words, ("positive", "negative")):
            text = f"{subject} was {'really ' * (i % 3)}{word}"
            rows.append(Example([{"role": "system", "content": "Classify."}, {"role": "user", "content": text},
                                 {"role": "assistant", "content": label}], label))
    return rows


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), WORDS)


TRAIN = TrainConfig(epochs=8, batch_size=4, lr=1e-2, warmup_ratio=0.0, log_every=4, precision="fp32")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("method,lr", [("lora", 1e-2), ("full", 3e-3)])
def test_tiny_bert_learns_and_predicts(tiny_bert_dir, method, lr):
    adapter = AdapterConfig(method=method, r=4, alpha=8)
    train = dataclasses.replace(TRAIN, lr=lr)
    state = classify.setup(str(tiny_bert_dir), _rows(), _rows()[:4], ["negative", "positive"], adapter, train)
    history = classify.fit(state, train)
    losses = [r["loss"] for r in history if "loss" in r]
    assert losses[-1] < losses[0]
    assert history[-1]["val_accuracy"] == 1.0
    texts = [classify.row_text(ex) for ex in _rows()]
    assert classify.predict(state, texts) == [ex.label for ex in _rows()]
    assert classify.predict(state, ["the crew was good"]) == ["positive"]


def test_tiny_llama_learns_with_pad_token(tiny_lm_dir):
    """Decoder head: pooled at the last non-pad token, so right padding in a mixed-length batch is harmless."""
    adapter = AdapterConfig(method="lora", r=8, alpha=16)
    state = classify.setup(str(tiny_lm_dir), _rows(), [], [], adapter, TRAIN)
    assert state.labels == ["negative", "positive"]  # taken from the data, sorted
    assert state.model.config.pad_token_id == state.tokenizer.pad_token_id is not None
    head = [n for n, p in state.model.named_parameters() if p.requires_grad and "lora" not in n]
    assert head and all("score" in n for n in head)  # the new head trains in full, the body via LoRA
    classify.fit(state, TRAIN)
    texts = [classify.row_text(ex) for ex in _rows()]
    assert classify.predict(state, texts) == [ex.label for ex in _rows()]
    # batched (padded) and one-at-a-time scores agree
    batched = classify.predict_logits(state, texts)
    single = torch.cat([classify.predict_logits(state, [t]) for t in texts])
    assert torch.allclose(batched, single, atol=1e-4)


def test_save_load_round_trip_gives_identical_logits(tiny_lm_dir, tmp_path):
    adapter = AdapterConfig(method="lora", r=4, alpha=8)
    train = TrainConfig(max_steps=3, batch_size=4, lr=3e-3, warmup_ratio=0.0, precision="fp32")
    state = classify.setup(str(tiny_lm_dir), _rows(), [], ["negative", "positive"], adapter, train)
    classify.fit(state, train)
    texts = [classify.row_text(ex) for ex in _rows()[:6]]
    before = classify.predict_logits(state, texts)
    classify.save(state, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "model"]
    merged = classify.predict_logits(state, texts)
    loaded = classify.load(tmp_path / "model")
    assert loaded.labels == ["negative", "positive"]
    assert torch.allclose(before, merged, atol=1e-5)
    assert torch.allclose(merged, classify.predict_logits(loaded, texts), atol=1e-6)


def test_accumulation_1x4_equals_4x1(tiny_bert_dir):
    import copy

    state = classify.setup(str(tiny_bert_dir), _rows(), [], [], AdapterConfig(method="full"), TRAIN)
    feats = state.train[:4]
    pad = state.tokenizer.pad_token_id
    a, b = copy.deepcopy(state.model), copy.deepcopy(state.model)
    a.eval(), b.eval()  # BERT has dropout; the invariant is about normalization
    loss_a, _ = classify.accumulate_gradients(a, [classify.collate(feats, pad)], "cpu")
    loss_b, _ = classify.accumulate_gradients(b, [classify.collate([f], pad) for f in feats], "cpu")
    assert math.isclose(loss_a, loss_b, abs_tol=1e-5)
    for (k, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        if pa.grad is not None:
            assert torch.allclose(pa.grad, pb.grad, atol=1e-5, rtol=1e-4), k


def _class_step(model, micro: list) -> tuple[float, dict]:
    loss, _ = classify.accumulate_gradients(model, micro, "cpu")
    return loss, {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def test_weight_two_equals_the_example_twice_and_weight_zero_removes(tiny_bert_dir):
    """Weighted mean CE over the step's examples (meta.weight from data.group_balance reweight)."""
    import copy

    rows = _rows()[:4]
    for ex, w in zip(rows, [1.0, 2.0, 0.0, 1.0]):
        ex.meta["weight"] = w
    state = classify.setup(str(tiny_bert_dir), rows, [], [], AdapterConfig(method="full"), TRAIN)
    feats, pad = state.train, state.tokenizer.pad_token_id
    assert [f[2] for f in feats] == [1.0, 2.0, 0.0, 1.0]
    state.model.eval()  # the invariant is about the loss, not dropout
    weighted = _class_step(copy.deepcopy(state.model), [classify.collate(feats[:2], pad),
                                                        classify.collate(feats[2:], pad)])
    plain = [f[:2] for f in feats]
    dup = _class_step(copy.deepcopy(state.model), [classify.collate([plain[0], plain[1], plain[1], plain[3]], pad)])
    assert abs(weighted[0] - dup[0]) < 1e-6
    assert weighted[1].keys() == dup[1].keys() and weighted[1]
    for k in weighted[1]:
        assert torch.allclose(weighted[1][k], dup[1][k], atol=1e-6, rtol=0), k
    unweighted = classify.setup(str(tiny_bert_dir), _rows()[:4], [], [], AdapterConfig(method="full"), TRAIN)
    assert all(len(f) == 2 for f in unweighted.train)  # no weights: the plain features and loss path


def test_bf16_body_with_fp32_head_runs(tiny_bert_dir):
    train = TrainConfig(max_steps=2, batch_size=4, precision="bf16")
    state = classify.setup(str(tiny_bert_dir), _rows(), [], [], AdapterConfig(method="lora", r=4), train)
    trainable = [p for p in state.model.parameters() if p.requires_grad]
    frozen = [p for p in state.model.parameters() if not p.requires_grad and p.is_floating_point()]
    assert all(p.dtype == torch.float32 for p in trainable) and {p.dtype for p in frozen} == {torch.bfloat16}
    history = classify.fit(state, train)
    assert math.isfinite(history[-2]["loss"])


def test_unknown_label_is_a_user_error(tiny_bert_dir):
    with pytest.raises(UserError, match="data.labels"):
        classify.setup(str(tiny_bert_dir), _rows(), [], ["positive", "neutral"], AdapterConfig(), TRAIN)


def _airline(per_label: int, n_test: int):
    """Real airline tweets, seeded: a label-balanced training sample (the project's data.balance_train; the
    raw data is 60% negative) and a held-out sample with the real label mix."""
    import random

    from tuneloop.data.clean import clean_text
    from tuneloop.data.formats import read_airline_tweets

    rows = []
    for row in random.Random(0).sample(list(read_airline_tweets()), 3000):
        text, label = clean_text(row.fields["text"], single_line=True), row.fields["label"]
        rows.append(Example([{"role": "user", "content": text}, {"role": "assistant", "content": label}], label))
    test, rest = rows[:n_test], rows[n_test:]
    train = [ex for lab in ("negative", "neutral", "positive") for ex in [r for r in rest if r.label == lab][:per_label]]
    return train, test


@pytest.mark.integration
def test_lora_minilm_on_real_airline_tweets():
    """LoRA on the bundled MiniLM encoder, 300 real tweets, 1 epoch: macro-F1 on 200 held-out tweets > 0.5
    (measured 0.57; majority-class guessing scores 0.25)."""
    from sklearn.metrics import f1_score

    from tuneloop.models.sources import resolve

    train_rows, test_rows = _airline(100, 200)
    labels = ["negative", "neutral", "positive"]
    adapter = AdapterConfig(method="lora", r=16, alpha=64)
    train = TrainConfig(epochs=1, batch_size=4, lr=1e-3, warmup_ratio=0.1, log_every=10, precision="fp32")
    state = classify.setup(resolve("bundled:minilm-l6").path, train_rows, [], labels, adapter, train, max_tokens=96)
    classify.fit(state, train)
    pred = classify.predict(state, [classify.row_text(ex) for ex in test_rows])
    f1 = f1_score([ex.label for ex in test_rows], pred, average="macro")
    assert f1 > 0.5, f1
