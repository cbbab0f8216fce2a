"""Token counts for the too_long rule and the report: the fast paths count what the tokenizer counts.

    .venv/bin/python -m pytest tests/unit/test_data_tokens.py -q
"""

from __future__ import annotations

import random
import types

import regex
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from tuneloop.data.tokens import GPT2_SPLIT_ASCII, TokenCounter, _render_len
from tests.unit.test_data_fastpaths import bench_like_texts, utf8_texts

ASCII_PIECES = ["it's", "we'll", "I'M", "'re", "'", "  ", "   ", "\t", "\n", "\n\n", " \n ", "x", "Word", "123", "4.5",
                "!!", "?", " ", "@united", "#tag", "http://t.co/x1", "don't", "a-b", "__", "$9.99", "\r\n", "''s"]


def exact(tok, texts: list) -> list:
    return [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]


def test_ascii_split_equals_the_gpt2_pattern():
    """The ASCII spelling of GPT-2's split gives the pieces the Unicode pattern gives, on printable ASCII."""
    gpt2 = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
    rng = random.Random(1)
    chars = [chr(i) for i in range(0x20, 0x7f)] + ["\t", "\n", "\r"]
    texts = ["".join(rng.choices(ASCII_PIECES, k=rng.randint(0, 12))) for _ in range(3000)]
    texts += ["".join(rng.choices(chars, k=rng.randint(0, 30))) for _ in range(3000)] + bench_like_texts(200)
    for t in texts:
        if t.isascii():
            assert GPT2_SPLIT_ASCII.findall(t) == gpt2.findall(t), repr(t)


def test_counts_by_pretokens_equal_the_tokenizer(tokenizer):
    rng = random.Random(0)
    soup = ["".join(rng.choices(ASCII_PIECES, k=rng.randint(0, 12))) for _ in range(2000)]
    texts = bench_like_texts(300) + utf8_texts() + soup + ["", "<|im_start|>user", "a <|im_end|> b", "x\x1cy"]
    counter = TokenCounter(tokenizer)
    assert counter.by_pieces  # SmolLM2: no normalizer, ByteLevel with the GPT-2 regex
    got = []
    for s in range(0, len(texts), 500):  # batches, as prepare() sends them; the table persists across them
        got += counter._encode_lengths(texts[s: s + 500])
    assert got == exact(tokenizer, texts)
    assert counter.by_pieces and counter.to_verify <= 0  # verified, still on
    assert len(counter.piece_lens) > 1000 and sum(counter._split(t) is not None for t in texts) > 2800
    assert counter.char_ok["é"] and counter.char_ok["😀"]


def test_characters_the_two_regex_engines_class_differently_go_to_the_tokenizer(tokenizer):
    counter = TokenCounter(tokenizer)
    assert not counter._same_class("\u0558")  # an Armenian letter of Unicode 16: a letter to regex, not here
    texts = ["բ\u0558բ ok", "x\u0558 1\u0558", "plain text"] * 100
    assert counter._split(texts[0]) is None and counter._split("plain text") is not None
    assert counter._encode_lengths(texts) == exact(tokenizer, texts) and counter.by_pieces


def test_whole_conversation_counts_equal_the_rendered_template(tokenizer):
    convs = [[{"role": "system", "content": "Classify."}, {"role": "user", "content": t},
              {"role": "assistant", "content": "negative"}] for t in bench_like_texts(40)]
    totals, answers = TokenCounter(tokenizer).count(convs)
    assert totals == [_render_len(tokenizer, c) for c in convs]
    assert answers == exact(tokenizer, ["negative"] * len(convs))


def test_a_wrong_split_is_caught_and_counting_goes_exact(tokenizer):
    counter = TokenCounter(tokenizer)
    counter._split = list  # one piece per character: the sums are too large
    texts = ["hello world", "the gate agent was rude", "a"]
    assert counter._encode_lengths(texts) == exact(tokenizer, texts)
    assert not counter.by_pieces


def test_other_pipelines_are_counted_by_the_tokenizer():
    vocab = {"[UNK]": 0, "hello": 1, "world": 2}
    for norm, pre in ((normalizers.Lowercase(), pre_tokenizers.ByteLevel()),
                      (None, pre_tokenizers.Whitespace()),
                      (None, pre_tokenizers.ByteLevel(add_prefix_space=True))):
        raw = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
        if norm is not None:
            raw.normalizer = norm
        raw.pre_tokenizer = pre
        tok = PreTrainedTokenizerFast(tokenizer_object=raw)
        counter = TokenCounter(tok)
        assert not counter.by_pieces
        assert counter._encode_lengths(["hello world", "Hello"]) == exact(tok, ["hello world", "Hello"])


def test_a_tokenizer_set_to_truncate_or_pad_is_counted_in_full_and_left_as_it_was(tokenizer):
    from tests.conftest import TOKENIZER_DIR
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    tok.backend_tokenizer.enable_truncation(max_length=3)
    tok.backend_tokenizer.enable_padding(length=64)
    texts = ["the gate agent was rude to everyone at the desk", "ok", "é ü 😀 and more words here"] * 100
    assert len(tok.backend_tokenizer.encode(texts[0], add_special_tokens=False).ids) == 64  # cut to 3, padded to 64
    counts = TokenCounter(tok)._encode_lengths(texts)
    assert tok.backend_tokenizer.truncation is not None and tok.backend_tokenizer.padding is not None
    assert counts == exact(tokenizer, texts) and counts[0] > 3


def test_tokenizers_without_the_offset_free_batch_encoder_count_the_same(tokenizer):
    """encode_batch_fast (tokenizers >= 0.20) skips character offsets; older versions use encode_batch."""
    texts = bench_like_texts(20)
    counter = TokenCounter(tokenizer)
    fast = counter._tokenizer_lengths(texts)
    counter.backend = types.SimpleNamespace(encode_batch=counter.backend.encode_batch)  # no encode_batch_fast
    assert counter._tokenizer_lengths(texts) == fast == exact(tokenizer, texts)
