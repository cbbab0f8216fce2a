"""Assistant-only loss mask from the tokenized chat template (ChatML and Llama-3 style), batching helpers."""

import copy

import pytest

from tuneloop.errors import UserError
from tuneloop.train.batching import IGNORE, collate, length_grouped_batches, tokenize_chat

LLAMA3_TEMPLATE = (
    "{{ '<|begin_of_text|>' }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

CONVO = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Sentiment of 'great flight'?"},
    {"role": "assistant", "content": "positive"},
    {"role": "user", "content": "And 'lost my bag'?"},
    {"role": "assistant", "content": "negative, sadly"},
]


def trained_spans(tok, ids, labels):
    """Decoded runs of consecutive trained tokens."""
    spans, cur = [], []
    for i, lab in zip(ids, labels):
        if lab != IGNORE:
            assert lab == i
            cur.append(i)
        elif cur:
            spans.append(tok.decode(cur))
            cur = []
    if cur:
        spans.append(tok.decode(cur))
    return spans


def test_chatml_mask_covers_exactly_assistant_turns(tokenizer):
    ids, labels = tokenize_chat(tokenizer, CONVO)
    assert trained_spans(tokenizer, ids, labels) == ["positive<|im_end|>", "negative, sadly<|im_end|>"]
    # everything else, system prompt and user turns and role headers, is masked
    assert sum(lab != IGNORE for lab in labels) == len(tokenizer("positive<|im_end|>")["input_ids"]) + len(
        tokenizer("negative, sadly<|im_end|>")["input_ids"])


def test_weight_zero_turn_is_context_only(tokenizer):
    convo = copy.deepcopy(CONVO)
    convo[2]["weight"] = 0
    ids, labels = tokenize_chat(tokenizer, convo)
    assert trained_spans(tokenizer, ids, labels) == ["negative, sadly<|im_end|>"]


@pytest.fixture(scope="module")
def llama3_tokenizer(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.add_special_tokens({"additional_special_tokens": [
        "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]})
    tok.chat_template = LLAMA3_TEMPLATE
    return tok


def test_llama3_style_mask(llama3_tokenizer):
    ids, labels = tokenize_chat(llama3_tokenizer, CONVO)
    spans = trained_spans(llama3_tokenizer, ids, labels)
    # The GPT-2-style pre-tokenizer merges the header's "\n\n" with the answer's first word, so that one
    # boundary token carries a newline; nothing else outside the answer is trained.
    assert [s.lstrip("\n") for s in spans] == ["positive<|eot_id|>", "negative, sadly<|eot_id|>"]


def test_template_that_is_not_prefix_stable_is_refused(tokenizer):
    tok = copy.deepcopy(tokenizer)
    # renders the number of messages first, so earlier renderings are not prefixes of the full one
    tok.chat_template = "{{ messages|length }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(UserError, match="prefix-stable"):
        tokenize_chat(tok, CONVO)


def test_length_grouped_batches_cover_every_index_once_and_group_lengths():
    lengths = [(i * 37) % 101 for i in range(500)]
    batches = length_grouped_batches(lengths, batch_size=8, seed=1, group=64)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(500))
    # inside a batch lengths are close: far less spread than random batches would have
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 5
    assert batches == length_grouped_batches(lengths, batch_size=8, seed=1, group=64)  # seeded
    assert batches != length_grouped_batches(lengths, batch_size=8, seed=2, group=64)


def test_collate_pads_right_and_masks_padding():
    batch = collate([([5, 6, 7], [IGNORE, 6, 7]), ([8], [8])], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
