"""Token counts with the real tokenizer and chat template, fast enough for millions of rows.

    counter = TokenCounter(tok)
    totals, answers = counter.count([ex.messages for ex in batch])   # tokens after the template; final answer

Rendering the template and tokenizing every row costs ~0.5 ms on 2 shared cores (1M rows: 8 minutes). Most
templates are additive: the tokens of a chat are the tokens of its "skeleton" (the template rendered with
empty contents, which depends only on the role sequence) plus the tokens of each content on its own. So each
distinct role sequence is rendered once, contents are tokenized in one batch (repeated contents such as the
system instruction only once), and the first rows of every role sequence are checked against the exact
render; one mismatch switches the counter to exact counting for the rest of the run (`counter.exact`).

Tokenizing the contents is the larger cost: ~110 us per tweet with SmolLM2's byte-level BPE, most of it its
pre-tokenizer regex. Byte-level BPE tokenizes each pre-token (a word with its leading space, a digit run,
...) on its own, so a content's token count is the sum of its pre-tokens' counts: the GPT-2 split is run
here (printable ASCII: its pattern in ASCII classes for Python's re, ~16 us per tweet; other text: the
`regex` module's Unicode classes, ~25 us) and each distinct pre-token is tokenized once (~98% of a file's
pre-tokens repeat). Only tokenizers whose pipeline is exactly that (no normalizer, a ByteLevel pre-tokenizer
with the GPT-2 regex) take this path. A text holding an added token's text, or a character the tokenizer's
Oniguruma and `regex` class differently (each new character is probed with both: letter, digit, other or
space; ~17k characters assigned in recent Unicode versions differ), goes to the tokenizer. The first
VERIFY_TEXTS texts are counted both ways; one mismatch switches to the tokenizer for the rest of the run
(`counter.by_pieces` False).
"""

from __future__ import annotations

import re

import regex  # Unicode classes (\p{L}) for Python; a dependency of transformers

VERIFY_PER_SHAPE = 16  # exact renders per role sequence before the additive count is trusted
VERIFY_TEXTS = 256  # texts counted by pre-tokens and by the tokenizer before the sum is trusted
MAX_PIECES = 500_000  # pre-token counts remembered (~80 MB at most); the table starts over beyond
# The split HF's ByteLevel pre-tokenizer applies when use_regex is on (GPT-2's, fixed in the tokenizers crate):
#   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
# on printable ASCII with tab and line breaks, where \p{L} is [A-Za-z], \p{N} [0-9] and \s [\t\n\r ]:
GPT2_SPLIT_ASCII = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\t\n\r A-Za-z0-9]+"
                              r"|[\t\n\r ]+(?![^\t\n\r ])|[\t\n\r ]+")
_NOT_PLAIN = re.compile(r"[^\t\n\r\x20-\x7e]")
GPT2_SPLIT = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
_PROBES = ("x{}", "1{}", "{}!")  # one piece or two: a letter, a digit, other non-space, a space split differently


def _counts_by_pieces(backend) -> bool:
    """Whether the tokenizer's pipeline counts tokens per pre-token of the GPT-2 split."""
    if backend is None:
        return False
    from tokenizers import pre_tokenizers  # loaded with the tokenizer already (not for --tokenizer none)

    pre = backend.pre_tokenizer
    return backend.normalizer is None and isinstance(pre, pre_tokenizers.ByteLevel) and pre.use_regex \
        and not pre.add_prefix_space


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
        if self.backend is not None and (self.backend.truncation is not None or self.backend.padding is not None):
            from tokenizers import Tokenizer  # a copy without them: counts are not cut or padded, and the
            self.backend = Tokenizer.from_str(self.backend.to_str())  # caller's tokenizer keeps its settings
            self.backend.no_truncation()
            self.backend.no_padding()
        self.exact = self.backend is None  # slow tokenizers: no batch encoder, count exactly
        self.skeletons: dict = {}
        self.verified: dict = {}
        self.by_pieces = _counts_by_pieces(self.backend)
        added = [t.content for t in getattr(self.backend, "get_added_tokens_decoder", dict)().values()]
        self.added = re.compile("|".join(map(re.escape, added))) if added else None
        self.piece_lens: dict = {}
        self.char_ok: dict = {}  # character -> the pre-tokenizer and GPT2_SPLIT class it alike
        self.to_verify = VERIFY_TEXTS

    def _tokenizer_lengths(self, texts: list) -> list:
        if self.backend is not None:
            # encode_batch_fast (tokenizers >= 0.20): the same ids without character offsets, ~half the CPU
            encode = getattr(self.backend, "encode_batch_fast", None) or self.backend.encode_batch
            return [len(e.ids) for e in encode(texts, add_special_tokens=False)]
        return [len(self.tok(t, add_special_tokens=False)["input_ids"]) for t in texts]

    def _encode_lengths(self, texts: list) -> list:
        unique = list(dict.fromkeys(texts))
        table = self._piece_lengths(unique) if self.by_pieces else {}
        rest = [t for t in unique if t not in table]
        table.update(zip(rest, self._tokenizer_lengths(rest)))
        return [table[t] for t in texts]

    def _split(self, text: str) -> list | None:
        """The text's pre-tokens, or None when it must go to the tokenizer."""
        if self.added and self.added.search(text):
            return None  # the tokenizer cuts added tokens out before it pre-tokenizes
        if not _NOT_PLAIN.search(text):
            return GPT2_SPLIT_ASCII.findall(text)
        chars, ok = set(text), self.char_ok
        for c in chars.difference(ok):
            ok[c] = self._same_class(c)
        return GPT2_SPLIT.findall(text) if all(map(ok.__getitem__, chars)) else None

    def _same_class(self, c: str) -> bool:
        pre = self.backend.pre_tokenizer.pre_tokenize_str
        try:
            return all(len(pre(p.format(c))) == len(GPT2_SPLIT.findall(p.format(c))) for p in _PROBES)
        except Exception:  # e.g. a lone surrogate, which the tokenizer cannot take
            return False

    def _piece_lengths(self, texts: list) -> dict:
        """{text: token count} as the sum of its pre-tokens' counts, for the texts that may be counted so."""
        split = [(t, self._split(t)) for t in texts]
        plain, pieces = [t for t, ps in split if ps is not None], [ps for _, ps in split if ps is not None]
        lens = self.piece_lens
        if len(lens) > MAX_PIECES:
            lens.clear()
        missing = list(dict.fromkeys(p for ps in pieces for p in ps if p not in lens))
        lens.update(zip(missing, self._tokenizer_lengths(missing)))
        table = {t: sum(map(lens.__getitem__, ps)) for t, ps in zip(plain, pieces)}
        if self.to_verify > 0 and plain:
            check = plain[: self.to_verify]
            self.to_verify -= len(check)
            if [table[t] for t in check] != self._tokenizer_lengths(check):
                self.by_pieces = False  # this tokenizer is not additive here after all: count exactly from now on
                return {}
        return table

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
