"""DPO on the tiny Llama: input forms, answer-only masks, reference invariant, log(2) at step 0, margin grows."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from tuneloop.config import AdapterConfig, TrainConfig
from tuneloop.data.formats import Example
from tuneloop.errors import UserError
from tuneloop.train import dpo
from tuneloop.train.batching import IGNORE, collate


pytestmark = pytest.mark.usefixtures("one_thread")


def _pairs(n: int = 8) -> list:
    """Prefer a polite full answer over a curt one; uneven prompt lengths on purpose."""
    return [{"prompt": [{"role": "user", "content": f"Is item {i} in stock{'?' * (1 + i % 3)}"}],
             "chosen": "Yes, it is in stock.", "rejected": "no"} for i in range(n)]


def test_preference_forms_become_pairs():
    chat = {"chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello!"}],
            "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "go away"}]}
    assert dpo.to_pair(chat) == dpo.Pair([{"role": "user", "content": "hi"}],
                                         [{"role": "assistant", "content": "hello!"}],
                                         [{"role": "assistant", "content": "go away"}])
    plain = dpo.to_pair({"prompt": "hi", "chosen": "hello!", "rejected": "go away"})
    assert plain == dpo.to_pair(chat)
    example = Example([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello!"}],
                      rejected=[{"role": "assistant", "content": "go away"}])
    assert dpo.to_pair(example) == plain
    with pytest.raises(UserError, match="same answer"):
        dpo.to_pair({"prompt": "hi", "chosen": "x", "rejected": "x"})
    with pytest.raises(UserError, match="preference"):
        dpo.to_pair(Example([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]))


def test_only_the_final_answer_is_scored(tokenizer):
    """Earlier assistant turns in a multi-turn prompt are context; the answer's end-of-turn token counts."""
    pair = dpo.to_pair({"prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                                   {"role": "user", "content": "in stock?"}],
                        "chosen": "Yes.", "rejected": "No way"})
    tokens = dpo.tokenize_pair(tokenizer, pair)
    for (ids, labels), text in ((tokens.chosen, "Yes."), (tokens.rejected, "No way")):
        scored = [t for t in labels if t != IGNORE]
        assert tokenizer.decode(scored) == text + "<|im_end|>"
        assert labels[: len(ids) - len(scored) - 1] == [IGNORE] * (len(ids) - len(scored) - 1)


def _direct_logps(model, ids: list, labels: list) -> float:
    """log p(answer) from the full logits of one unpadded sequence: independent of dpo.sequence_logps."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
    logp = torch.log_softmax(logits, -1)
    return sum(float(logp[t, labels[t + 1]]) for t in range(len(ids) - 1) if labels[t + 1] != IGNORE)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_reference_logps_equal_the_base_models(tiny_lm_dir, method):
    train = TrainConfig(max_steps=1, batch_size=3, precision="fp32")
    state = dpo.setup(str(tiny_lm_dir), _pairs(6), [], AdapterConfig(method=method, r=4), train)
    base = AutoModelForCausalLM.from_pretrained(tiny_lm_dir, dtype=torch.float32).eval()
    for p in state.train:
        assert math.isclose(p.ref_chosen, _direct_logps(base, *p.chosen), abs_tol=1e-4)
        assert math.isclose(p.ref_rejected, _direct_logps(base, *p.rejected), abs_tol=1e-4)
    assert all(p.ref_chosen != p.ref_rejected for p in state.train)


@pytest.mark.parametrize("share", [0, 4], ids=["padded", "shared-prefix"])
def test_sequence_logps_ignore_padding(tiny_lm_dir, tokenizer, share):
    """Per-row log-probs of a padded batch (and of one whose common prompt prefix runs once) == each row alone."""
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir, dtype=torch.float32).eval()
    tokens = [dpo.tokenize_pair(tokenizer, dpo.to_pair(r)) for r in _pairs(4)]
    feats = [t.chosen for t in tokens] + [t.rejected for t in tokens]
    batch = collate(feats, tokenizer.pad_token_id, share_prefix=share)
    assert ("prefix_ids" in batch) == bool(share)  # the template's default system prompt is shared
    with torch.no_grad():
        batched = dpo.sequence_logps(model, batch)
    assert torch.allclose(batched, torch.tensor([_direct_logps(model, *f) for f in feats]), atol=1e-4)


def test_loss_at_step_zero_is_log2(tiny_lm_dir):
    """Policy == reference before the first update, so every pair's margin is 0 and its loss log(2)."""
    train = TrainConfig(max_steps=1, batch_size=4, log_every=1, precision="fp32")
    state = dpo.setup(str(tiny_lm_dir), _pairs(8), [], AdapterConfig(method="lora", r=4), train)
    history = dpo.fit(state, train)
    assert abs(history[0]["loss"] - math.log(2)) < 1e-4
    assert history[0]["reward_margin"] == 0.0


@pytest.mark.parametrize("method,lr", [("lora", 1e-2), ("full", 1e-3)])
def test_dpo_increases_the_chosen_vs_rejected_margin(tiny_lm_dir, tmp_path, method, lr):
    train = TrainConfig(epochs=6, batch_size=4, lr=lr, warmup_ratio=0.0, log_every=2, precision="fp32")
    state = dpo.setup(str(tiny_lm_dir), _pairs(12), _pairs(16)[12:], AdapterConfig(method=method, r=8, alpha=16),
                      train, beta=0.1)
    before = dpo.evaluate(state, 4, items=state.train)
    history = dpo.fit(state, train, log_path=tmp_path / "train_log.jsonl")
    after = dpo.evaluate(state, 4, items=state.train)
    assert before["val_reward_margin"] == 0.0
    assert after["val_reward_margin"] > 0.5 and after["val_reward_accuracy"] == 1.0
    assert history[-1]["val_reward_accuracy"] == 1.0  # held-out prompts of the same kind
    logged = [r for r in history if "reward_margin" in r]
    assert logged[-1]["loss"] < logged[0]["loss"] and logged[-1]["reward_margin"] > logged[0]["reward_margin"]
    assert (tmp_path / "train_log.jsonl").read_text().count("\n") == len(history)
    dpo.save(state, tmp_path)
    expected = ["model", "train_log.jsonl"] + (["adapter"] if method == "lora" else [])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(expected)


def test_beta_must_be_positive(tiny_lm_dir):
    with pytest.raises(UserError, match="beta"):
        dpo.setup(str(tiny_lm_dir), _pairs(2), [], AdapterConfig(), TrainConfig(), beta=0.0)


def test_weight_two_equals_the_pair_twice_and_weight_zero_removes(tiny_lm_dir):
    """Weighted mean of per-pair losses (meta.weight from data.group_balance reweight) over the whole step."""
    import copy
    import dataclasses

    rows = [Example([{"role": "user", "content": f"Is item {i} in stock{'?' * (1 + i % 3)}"},
                     {"role": "assistant", "content": "Yes, it is in stock."}], meta={"weight": w},
                    rejected=[{"role": "assistant", "content": "no"}]) for i, w in enumerate([1.0, 2.0, 0.0, 1.0])]
    train = TrainConfig(max_steps=1, batch_size=4, precision="fp32")
    state = dpo.setup(str(tiny_lm_dir), rows, [], AdapterConfig(method="lora", r=4), train)
    assert [p.weight for p in state.train] == [1.0, 2.0, 0.0, 1.0]

    def step(micro):
        s = dataclasses.replace(state, model=copy.deepcopy(state.model))
        loss, _ = dpo.accumulate_gradients(s, micro, "cpu")
        return loss, {k: p.grad.clone() for k, p in s.model.named_parameters() if p.grad is not None}

    weighted = step([state.train[:2], state.train[2:]])
    plain = [dataclasses.replace(p, weight=1.0) for p in state.train]
    dup = step([[plain[0], plain[1]], [plain[1], plain[3]]])
    assert abs(weighted[0] - dup[0]) < 1e-6
    assert weighted[1].keys() == dup[1].keys() and weighted[1]
    for k in weighted[1]:
        assert torch.allclose(weighted[1][k], dup[1][k], atol=1e-6, rtol=0), k
