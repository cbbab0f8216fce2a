"""Training invariants on a tiny random Llama: loss definition, accumulation, adapter training, stopping."""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from tuneloop.config import AdapterConfig, TrainConfig
from tuneloop.data.formats import Example
from tuneloop.errors import UserError
from tuneloop.train import sft
from tuneloop.train.batching import IGNORE, collate, collate_packed, tokenize_chat

CONVOS = [
    [{"role": "user", "content": "x " * n + "?"}, {"role": "assistant", "content": "answer " * (1 + n % 3)}]
    for n in (1, 7, 3, 12, 5, 2, 9, 4)  # uneven lengths on purpose
]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def tiny(tiny_lm_dir):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_lm_dir, dtype=torch.float32)


def test_label_token_loss_matches_full_logits_loss(tiny, tokenizer):
    """Running the LM head only at label positions gives the same loss as transformers' full-logits loss."""
    batch = collate([tokenize_chat(tokenizer, c) for c in CONVOS], tokenizer.pad_token_id)
    loss_sum, n = sft.label_token_loss(tiny, batch)
    reference = tiny(**batch).loss  # mean over shifted labels != -100
    assert n == int((batch["labels"][:, 1:] != IGNORE).sum())
    assert torch.allclose(loss_sum / n, reference, atol=1e-5)


def _grads(model):
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def test_accumulation_1x8_equals_8x1(tiny, tokenizer):
    feats = [tokenize_chat(tokenizer, c) for c in CONVOS]
    pad = tokenizer.pad_token_id
    a, b = copy.deepcopy(tiny), copy.deepcopy(tiny)
    loss_a, _ = sft.accumulate_gradients(a, [collate(feats, pad)], "cpu")
    loss_b, _ = sft.accumulate_gradients(b, [collate([f], pad) for f in feats], "cpu")
    assert abs(loss_a - loss_b) < 1e-5
    ga, gb = _grads(a), _grads(b)
    assert ga.keys() == gb.keys() and ga
    for k in ga:
        assert torch.allclose(ga[k], gb[k], atol=1e-5, rtol=1e-4), k


def _examples(n=16):
    return [Example([{"role": "user", "content": f"Is item {i} in stock?"},
                     {"role": "assistant", "content": "yes"}], "yes") for i in range(n)]


def test_lora_training_changes_every_trainable_parameter_and_lowers_loss(tiny_lm_dir):
    adapter = AdapterConfig(method="lora", r=4, alpha=8)
    train = TrainConfig(epochs=4, batch_size=4, lr=5e-3, warmup_ratio=0.0, log_every=1, precision="fp32")
    state = sft.setup(str(tiny_lm_dir), _examples(), _examples(4), adapter, train, seed=0)
    before = {k: p.detach().clone() for k, p in state.model.named_parameters() if p.requires_grad}
    frozen = {k: p.detach().clone() for k, p in state.model.named_parameters() if not p.requires_grad}
    history = sft.fit(state, train)
    after = dict(state.model.named_parameters())
    unchanged = [k for k, v in before.items() if torch.equal(v, after[k])]
    assert before and not unchanged, unchanged
    assert all(torch.equal(v, after[k]) for k, v in frozen.items())  # the base stays frozen
    losses = [r["loss"] for r in history if "loss" in r]
    assert losses[-1] < losses[0]
    assert all(p.dtype == torch.float32 for p in before.values())


def test_tuned_model_stops_at_end_of_turn(tiny_lm_dir, tmp_path):
    """The end-of-turn token is trained, so generation terminates instead of running to max_new_tokens."""
    from tuneloop.evaluate.generate import generate

    adapter = AdapterConfig(method="full")
    train = TrainConfig(epochs=30, batch_size=8, lr=3e-3, warmup_ratio=0.0, log_every=10, precision="fp32")
    state = sft.setup(str(tiny_lm_dir), _examples(), [], adapter, train, seed=0)
    sft.fit(state, train)
    sft.save(state, tmp_path)
    prompt = [[{"role": "user", "content": "Is item 99 in stock?"}]]
    out = state.model.generate(
        torch.tensor([tokenize_chat(state.tokenizer, prompt[0] + [{"role": "assistant", "content": ""}])[0][:-2]]),
        max_new_tokens=20, do_sample=False, eos_token_id=state.tokenizer.eos_token_id)
    assert state.tokenizer.eos_token_id in out[0].tolist()
    assert generate(state.model, state.tokenizer, prompt, max_new_tokens=20) == ["yes"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # full fine-tuning: no adapter/


def test_dora_config_and_lr_schedules():
    cfg = sft.build_peft_config(AdapterConfig(method="dora", r=8, target_modules="q_proj, v_proj"))
    assert cfg.use_dora and cfg.r == 8 and set(cfg.target_modules) == {"q_proj", "v_proj"}
    cos = sft.lr_lambda("cosine", warmup=2, total=10)
    assert [round(cos(s), 3) for s in (0, 1, 2, 10)] == [0.5, 1.0, 1.0, 0.0]
    lin = sft.lr_lambda("linear", warmup=0, total=4)
    assert [lin(s) for s in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert sft.resolve_precision("fp32") == "fp32"


def test_packed_loss_is_token_weighted_mean_of_sequence_losses(tiny, tokenizer):
    """Packing without cross-contamination: one packed row gives each sequence's own loss."""
    from tuneloop.train.batching import collate_packed

    feats = [tokenize_chat(tokenizer, c) for c in CONVOS]
    packed_sum, packed_n = sft.label_token_loss(tiny, collate_packed(feats, tokenizer.pad_token_id))
    sums, counts = zip(*(sft.label_token_loss(tiny, collate([f], tokenizer.pad_token_id)) for f in feats))
    expected = sum(float(s) for s in sums) / sum(counts)
    assert packed_n == sum(counts)
    assert abs(float(packed_sum) / packed_n - expected) < 1e-5


def test_packed_and_padded_training_give_the_same_gradients(tiny, tokenizer):
    from tuneloop.train.batching import collate_packed

    feats = [tokenize_chat(tokenizer, c) for c in CONVOS]
    a, b = copy.deepcopy(tiny), copy.deepcopy(tiny)
    sft.accumulate_gradients(a, [collate(feats, tokenizer.pad_token_id)], "cpu")
    sft.accumulate_gradients(b, [collate_packed(feats, tokenizer.pad_token_id)], "cpu")
    ga, gb = _grads(a), _grads(b)
    for k in ga:
        assert torch.allclose(ga[k], gb[k], atol=1e-5, rtol=1e-4), k


def _setup_and_step(tiny_lm_dir, tokenizer, **train_kw):
    """A fresh tiny LoRA setup (same seed) and one accumulation over a fixed batch: (loss, gradients, state)."""
    train = TrainConfig(precision="fp32", threads=1, **train_kw)
    state = sft.setup(str(tiny_lm_dir), _examples(4), [], AdapterConfig(method="lora", r=4, alpha=8), train, seed=0)
    batch = collate([tokenize_chat(tokenizer, c) for c in CONVOS], tokenizer.pad_token_id)
    loss, _ = sft.accumulate_gradients(state.model, [batch], "cpu")
    return loss, _grads(state.model), state


def test_gradient_checkpointing_recomputes_and_gives_the_same_loss_and_gradients(tiny_lm_dir, tokenizer,
                                                                                 monkeypatch):
    loss, grads, _ = _setup_and_step(tiny_lm_dir, tokenizer)
    calls = []
    train = TrainConfig(precision="fp32", threads=1, gradient_checkpointing=True)
    state = sft.setup(str(tiny_lm_dir), _examples(4), [], AdapterConfig(method="lora", r=4, alpha=8), train, seed=0)
    mlp = sft.causal_lm_parts(state.model)[0].layers[0].mlp
    forward = mlp.forward  # counted on the instance: the recompute skips module hooks
    monkeypatch.setattr(mlp, "forward", lambda x: calls.append(1) or forward(x))
    batch = collate([tokenize_chat(tokenizer, c) for c in CONVOS], tokenizer.pad_token_id)
    loss_ckpt, _ = sft.accumulate_gradients(state.model, [batch], "cpu")
    assert len(calls) == 2  # forward, then recomputed in the backward
    grads_ckpt = _grads(state.model)
    assert abs(loss - loss_ckpt) < 1e-5 and grads.keys() == grads_ckpt.keys() and grads
    for k in grads:
        assert torch.allclose(grads[k], grads_ckpt[k], atol=1e-5, rtol=0), k


@pytest.mark.slow  # inductor compiles the body for ~1-3 min on 2 CPU cores
def test_compiled_body_gives_the_same_loss_and_gradients(tiny_lm_dir, tokenizer):
    loss, grads, _ = _setup_and_step(tiny_lm_dir, tokenizer)
    loss_c, grads_c, state = _setup_and_step(tiny_lm_dir, tokenizer, compile=True)
    body, _ = sft.causal_lm_parts(state.model)
    assert body._compiled_call_impl is not None
    assert abs(loss - loss_c) < 1e-5
    for k in grads:
        assert torch.allclose(grads[k], grads_c[k], atol=1e-5, rtol=1e-4), k


def _weighted(feats: list, weights: list) -> list:
    return [(*f, w) for f, w in zip(feats, weights)]


def _step(model, micro: list) -> tuple[float, dict]:
    loss, _ = sft.accumulate_gradients(model, micro, "cpu")
    return loss, _grads(model)


def _assert_same_step(a: tuple, b: tuple, tol: float = 1e-6) -> None:
    assert abs(a[0] - b[0]) < tol, (a[0], b[0])
    assert a[1].keys() == b[1].keys() and a[1]
    for k in a[1]:
        assert torch.allclose(a[1][k], b[1][k], atol=tol, rtol=0), k


@pytest.mark.parametrize("make", [collate, collate_packed], ids=["padded", "packed"])
def test_weight_two_equals_the_example_twice_in_the_step(tiny, tokenizer, make):
    """sum_e w_e CE_e / sum_e w_e n_e over the whole step: weight 2 == the example twice, across micro-batches."""
    feats, pad = [tokenize_chat(tokenizer, c) for c in CONVOS[:4]], tokenizer.pad_token_id
    w = _weighted(feats, [1.0, 2.0, 1.0, 0.5])
    weighted = _step(copy.deepcopy(tiny), [make(w[:2], pad), make(w[2:], pad)])  # 2 x 2 accumulation
    # weight 0.5 has no duplicate form, so the reference keeps it in a weighted micro-batch of its own
    twice = [feats[0], feats[1], feats[1], feats[2]]
    reference = _step(copy.deepcopy(tiny), [make(twice, pad), make([(*feats[3], 0.5)], pad)])
    _assert_same_step(weighted, reference)


def test_weight_two_equals_duplicate_and_weight_zero_removes(tiny, tokenizer):
    feats, pad = [tokenize_chat(tokenizer, c) for c in CONVOS[:4]], tokenizer.pad_token_id
    doubled = _step(copy.deepcopy(tiny), [collate(_weighted(feats, [1.0, 2.0, 1.0, 1.0]), pad)])
    twice = _step(copy.deepcopy(tiny), [collate([feats[0], feats[1], feats[1], feats[2], feats[3]], pad)])
    _assert_same_step(doubled, twice)
    zero = _step(copy.deepcopy(tiny), [collate(_weighted(feats, [0.0, 1.0, 1.0, 1.0]), pad)])
    without = _step(copy.deepcopy(tiny), [collate(feats[1:], pad)])
    _assert_same_step(zero, without)


def test_weights_reach_the_train_features_only_when_some_differ_from_one(tiny_lm_dir):
    """Unweighted data keeps plain (input_ids, labels) features, so its loss code is unchanged."""
    train = TrainConfig(max_steps=1, batch_size=4, precision="fp32", threads=1)
    adapter = AdapterConfig(method="lora", r=4, alpha=8)
    rows = _examples(4)
    for ex in rows:
        ex.meta["weight"] = 1.0
    assert all(len(f) == 2 for f in sft.setup(str(tiny_lm_dir), rows, [], adapter, train).train)
    rows[1].meta["weight"] = 2.5
    state = sft.setup(str(tiny_lm_dir), rows, [], adapter, train)
    assert [f[2] for f in state.train] == [1.0, 2.5, 1.0, 1.0]
    assert sft.fit(state, train)[0]["loss"] > 0
    rows[1].meta["weight"] = -1
    with pytest.raises(UserError, match="weight"):
        sft.setup(str(tiny_lm_dir), rows, [], adapter, train)


SYSTEM = {"role": "system", "content": "You sort support tickets. Answer with one word."}


@pytest.mark.parametrize("weights", [None, [1.0, 2.0, 0.5, 1.0, 0.0, 1.0, 3.0, 1.0]], ids=["plain", "weighted"])
def test_shared_prefix_batch_gives_the_same_loss_and_gradients(tiny, tokenizer, weights):
    """The common system prompt run once per batch == every row run in full (loss and every gradient)."""
    from tuneloop.train.batching import shared_prefix_len, unshare

    feats = [tokenize_chat(tokenizer, [SYSTEM, *c]) for c in CONVOS]
    feats = _weighted(feats, weights) if weights else feats
    pad = tokenizer.pad_token_id
    shared, plain = collate(feats, pad, share_prefix=4), collate(feats, pad)
    p = shared["prefix_ids"].shape[1]
    assert p == shared_prefix_len(feats) >= 10  # the system turn and the user turn's header
    first_label = min(next(i for i, x in enumerate(f[1]) if x != IGNORE) for f in feats)
    assert p < first_label  # every trained token is predicted after the prefix
    for k, v in unshare(shared).items():
        assert torch.equal(v, plain[k]), k
    assert sft.label_count(shared) == sft.label_count(plain)
    _assert_same_step(_step(copy.deepcopy(tiny), [shared]), _step(copy.deepcopy(tiny), [plain]), tol=1e-5)


def test_no_prefix_is_split_off_when_rows_differ_from_the_start_or_one_row(tokenizer):
    feats = [tokenize_chat(tokenizer, c) for c in CONVOS]
    one = collate(feats[:1], tokenizer.pad_token_id, share_prefix=4)
    assert "prefix_ids" not in one
    other = [tokenize_chat(tokenizer, [{"role": "system", "content": "z"}, *CONVOS[0]])] + feats[1:]
    # rows share only "<|im_start|>" (1 token): below the minimum, the batch stays plain
    assert "prefix_ids" not in collate(other, tokenizer.pad_token_id, share_prefix=4)


def test_prefix_sharing_is_on_by_default_and_off_where_it_cannot_apply():
    assert sft.prefix_sharing(TrainConfig()) == sft.MIN_SHARED_PREFIX
    for off in ({"share_prefix": False}, {"packing": True}, {"gradient_checkpointing": True}, {"compile": True}):
        assert sft.prefix_sharing(TrainConfig(**off)) == 0, off


ARCHITECTURES = {  # tiny random decoders of other families: their attention, cache and mask code differ
    "qwen2": {},  # q/k/v biases
    "mistral": {"sliding_window": 16},  # rows of 23-32 tokens cross the window
    "gemma2": {"head_dim": 8, "sliding_window": 16},  # alternating sliding / global layers, soft-capping
    "gpt_neox": {},  # fused qkv, partial rotary
    "phi3": {},  # fused qkv and gate/up
}


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_shared_prefix_matches_full_rows_across_architectures(arch):
    from transformers import AutoConfig

    torch.manual_seed(0)
    cfg = AutoConfig.for_model(arch, vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                               pad_token_id=0, bos_token_id=1, eos_token_id=2, **ARCHITECTURES[arch])
    model = AutoModelForCausalLM.from_config(cfg).float()
    g = torch.Generator().manual_seed(0)
    prefix = torch.randint(5, 300, (20,), generator=g).tolist()  # e.g. a system prompt
    feats = []
    for n in (5, 9, 3, 12):
        rest = torch.randint(5, 300, (n,), generator=g).tolist()
        feats.append((prefix + rest, [IGNORE] * (len(prefix) + 1) + rest[1:]))
    shared = collate(feats, 0, share_prefix=4)
    assert shared["prefix_ids"].shape == (1, 20)
    _assert_same_step(_step(copy.deepcopy(model), [shared]), _step(copy.deepcopy(model), [collate(feats, 0)]),
                      tol=1e-5)
