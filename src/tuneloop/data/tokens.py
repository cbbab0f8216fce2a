"""Token counts with the real tokenizer and chat template, fast enough for millions of rows.

    counter = TokenCounter(tok)
    totals, answers = counter.count([ex.messages for ex in batch])   # tokens after the template; final answer

Rendering the template and tokenizing every row costs ~0.5 ms on 2 shared cores (1M rows: 8 minutes). Most
templates are additive: the tokens of a chat are the tokens of its "skeleton" (the template rendered with
empty contents, which depends only on the role sequence) plus the tokens of each content on its own. So each
distinct role sequence is rendered once, contents are tokenized in one batch (repeated contents such as the
system instruction only once), and the first rows of every role sequence are checked against the exact
render; one mismatch switches the counter to exact counting for the rest of the run (`counter.exact`).
"""

from __future__ import annotations

VERIFY_PER_SHAPE = 16  # exact renders per role sequence before the additive count is trusted


def _render_len(tok, messages: list) -> int:
    if getattr(tok, "chat_template", None) is None:
        # An encoder (classification head) has no chat template: count the contents joined by newlines, with
        # the tokenizer's own special tokens ([CLS] ... [SEP]), an upper bound on what the head reads.
        return len(tok("\n".join(m["content"] for m in messages))["input_ids"])
    out = tok.apply_chat_template(messages, tokenize=True)
    return len(out["input_ids"] if hasattr(out, "keys") else out)


class TokenCounter:
    def __init__(self, tok):
        self.tok = tok
        self.backend = getattr(tok, "backend_tokenizer", None)
        self.exact = self.backend is None  # slow tokenizers: no batch encoder, count exactly
        self.skeletons: dict = {}
        self.verified: dict = {}

    def _encode_lengths(self, texts: list) -> list:
        unique = list(dict.fromkeys(texts))
        if self.backend is not None:
            lens = [len(e.ids) for e in self.backend.encode_batch(unique, add_special_tokens=False)]
        else:
            lens = [len(self.tok(t, add_special_tokens=False)["input_ids"]) for t in unique]
        table = dict(zip(unique, lens))
        return [table[t] for t in texts]

    def _skeleton(self, messages: list) -> int:
        shape = tuple(m["role"] for m in messages)
        if shape not in self.skeletons:
            self.skeletons[shape] = _render_len(self.tok, [{"role": r, "content": ""} for r in shape])
        return self.skeletons[shape]

    def count(self, conversations: list) -> tuple[list, list]:
        """(total tokens after the chat template, tokens of the final answer's content) per conversation."""
        contents = [m.get("content") or "" for conv in conversations for m in conv]
        lens = self._encode_lengths(contents)
        totals, answers, pos = [], [], 0
        for conv in conversations:
            n = lens[pos: pos + len(conv)]
            pos += len(conv)
            answers.append(n[-1])
            if self.exact:
                totals.append(_render_len(self.tok, _plain(conv)))
                continue
            total = self._skeleton(conv) + sum(n)
            shape = tuple(m["role"] for m in conv)
            if self.verified.get(shape, 0) < VERIFY_PER_SHAPE:
                self.verified[shape] = self.verified.get(shape, 0) + 1
                exact = _render_len(self.tok, _plain(conv))
                if exact != total:
                    self.exact, total = True, exact
            totals.append(total)
        return totals, answers


def _plain(conv: list) -> list:
    return [{"role": m["role"], "content": m.get("content") or ""} for m in conv]
