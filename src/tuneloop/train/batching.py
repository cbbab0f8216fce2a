"""Tokenize chats with an assistant-only loss mask taken from the tokenized template; length-grouped batches.

    ids, labels = tokenize_chat(tok, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    # labels == -100 everywhere except the assistant's tokens and its end-of-turn token
    batch = collate(features, pad_id)          # padded [B, T] + attention_mask
    batch = collate_packed(features, pad_id)   # [1, sum T] + restarting position_ids (no padding at all)
    batch = collate(features, pad_id, share_prefix=4)  # + "prefix_ids" [1, P]: the tokens all rows start with

A feature is (input_ids, labels), or (input_ids, labels, weight) for an example the data stage reweighted
(`data.group_balance: reweight` writes meta["weight"]); a batch with any weighted feature also carries
"label_weights" (the labels' shape, each token holding its example's weight), which the loss multiplies in.

The mask comes from rendering the template incrementally (conversation up to turn i with the generation
prompt, then through turn i) and checking that each rendering is a token prefix of the full one. No string
matching on role markers, so any template that renders prefix-stable works (ChatML, Llama-3, ...).
"""

from __future__ import annotations

import math
import random

import torch

from tuneloop.errors import UserError

IGNORE = -100
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "</s>")


def render_ids(tok, messages: list, add_generation_prompt: bool = False) -> list:
    out = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def end_of_turn_ids(tok) -> set:
    ids = {tok.eos_token_id} if tok.eos_token_id is not None else set()
    for t in END_OF_TURN:
        i = tok.convert_tokens_to_ids(t)
        if i is not None and i != tok.unk_token_id:
            ids.add(i)
    return ids


def tokenize_chat(tok, messages: list) -> tuple[list, list]:
    """(input_ids, labels): labels copy input_ids on trained assistant tokens (through end-of-turn), else -100.

    A message with "weight": 0 is context only (OpenAI's fine-tuning convention)."""
    clean = [{"role": m["role"], "content": m["content"]} for m in messages]
    full = render_ids(tok, clean)
    labels = [IGNORE] * len(full)
    eot = end_of_turn_ids(tok)
    for i, m in enumerate(messages):
        if m["role"] != "assistant" or m.get("weight", 1) == 0:
            continue
        prompt = render_ids(tok, clean[:i], add_generation_prompt=True) if i else []
        through = render_ids(tok, clean[: i + 1])
        # Where BPE merges the prompt's trailing whitespace into the answer's first token ("\n\n" + "pos"),
        # the prompt is not an exact token prefix; training starts at the first token that differs.
        start = next((j for j, (a, b) in enumerate(zip(prompt, full)) if a != b), len(prompt))
        if full[: len(through)] != through or start > len(through):
            raise UserError("the tokenizer's chat template is not prefix-stable, so the assistant-only loss mask "
                            "cannot be derived from it; use a template that renders turns independently")
        end = len(through)
        # Train through the first end-of-turn token, so the model learns to stop; not the newline after it.
        for j in range(start, end):
            if full[j] in eot:
                end = j + 1
                break
        labels[start:end] = full[start:end]
    return full, labels


def example_weight(ex) -> float:
    """An Example's training weight: meta["weight"] from data.group_balance reweight, else 1."""
    w = getattr(ex, "meta", {}).get("weight", 1.0)
    if not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
        raise UserError(f"an example's meta.weight is {w!r}; weights must be finite numbers >= 0 "
                        "(re-run `tuneloop data` or fix the row)")
    return float(w)


def with_weights(features: list, rows: list) -> list:
    """Append each row's weight to its feature, only when some weight differs from 1: unweighted data keeps
    plain (input_ids, labels) features and the unweighted loss code, bit for bit."""
    weights = [example_weight(ex) for ex in rows]
    if all(w == 1.0 for w in weights):
        return features
    return [(*f, w) for f, w in zip(features, weights)]


def weight_of(feature: tuple) -> float:
    return feature[2] if len(feature) > 2 else 1.0


def length_grouped_batches(lengths: list, batch_size: int, seed: int, group: int = 64) -> list:
    """Batches of indices with similar lengths (little padding), in a seeded random order.

    Shuffle, cut into groups of `group` batches, sort each group by length, then shuffle the batches: the
    order stays random between groups while padding inside a batch is nearly zero."""
    rng = random.Random(seed)
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    batches = []
    span = batch_size * group
    for s in range(0, len(idx), span):
        chunk = sorted(idx[s: s + span], key=lambda i: lengths[i])
        batches += [chunk[j: j + batch_size] for j in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(features: list, pad_id: int, share_prefix: int = 0) -> dict:
    """Right-pad a list of (input_ids, labels[, weight]) to one batch. Shapes: [B, T].

    share_prefix > 0: when the examples start with at least that many identical tokens that no example trains
    on (typically a shared system prompt), the batch carries them once as "prefix_ids" [1, P] and input_ids /
    labels hold only the rest [B, T - P]; attention_mask still spans the whole rows [B, T] (the model runs the
    prefix once and attends to its keys/values from every row). `unshare` gives back the plain batch."""
    p = shared_prefix_len(features) if share_prefix and len(features) > 1 else 0
    p = p if p >= max(share_prefix, 1) else 0
    width = max(len(f[0]) for f in features) - p
    input_ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    labels = torch.full((len(features), width), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(features), p + width), dtype=torch.long)
    for b, (ids, lab, *_) in enumerate(features):
        input_ids[b, : len(ids) - p] = torch.tensor(ids[p:])
        labels[b, : len(lab) - p] = torch.tensor(lab[p:])
        attention[b, : len(ids)] = 1
    batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention}
    if p:
        batch["prefix_ids"] = torch.tensor([features[0][0][:p]])
    if any(len(f) > 2 for f in features):
        rows = torch.tensor([weight_of(f) for f in features], dtype=torch.float32)
        batch["label_weights"] = rows[:, None].expand(-1, width).contiguous()  # [B, T - P]
    return batch


def shared_prefix_len(features: list) -> int:
    """How many leading tokens all examples share, stopping before any example's first trained token is
    predicted (so every label position lies after the prefix) and leaving each example at least one token."""
    ids = [f[0] for f in features]
    first_label = min(next((i for i, x in enumerate(f[1]) if x != IGNORE), len(f[1])) for f in features)
    limit = min(min(len(x) for x in ids) - 1, first_label - 1)
    head, p = ids[0], 0
    while p < limit and all(x[p] == head[p] for x in ids):
        p += 1
    return p


def unshare(batch: dict) -> dict:
    """The plain padded batch of a prefix-sharing one (identity for a batch without "prefix_ids")."""
    if "prefix_ids" not in batch:
        return batch
    b, p = batch["input_ids"].shape[0], batch["prefix_ids"].shape[1]
    out = {"input_ids": torch.cat([batch["prefix_ids"].expand(b, -1), batch["input_ids"]], 1),
           "labels": torch.cat([torch.full((b, p), IGNORE, dtype=torch.long), batch["labels"]], 1),
           "attention_mask": batch["attention_mask"]}
    if "label_weights" in batch:
        w = batch["label_weights"]
        out["label_weights"] = torch.cat([w[:, :1].expand(-1, p), w], 1)
    return out


def collate_packed(features: list, pad_id: int) -> dict:
    """Padding-free batch: the examples concatenated into one row, position ids restarting at 0 for each.

    transformers turns restarting position_ids (with no attention_mask and no cache) into a block-diagonal
    causal mask, so no token attends across examples. Shapes: [1, sum of lengths]. The first token of each
    example is never a target, so the last token of one example does not learn to predict the next one."""
    ids, labels, pos, weights = [], [], [], []
    for f in features:
        ids += f[0]
        labels += [IGNORE] + list(f[1][1:])
        pos += list(range(len(f[0])))
        weights += [weight_of(f)] * len(f[0])
    batch = {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]), "position_ids": torch.tensor([pos])}
    if any(len(f) > 2 for f in features):
        batch["label_weights"] = torch.tensor([weights], dtype=torch.float32)  # [1, sum T]
    return batch
