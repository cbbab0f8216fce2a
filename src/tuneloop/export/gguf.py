"""GGUF export for llama-architecture models: f32/f16 weights, hyperparameters, tokenizer and chat template.

    tuneloop export runs/airline-sentiment --format gguf --dtype f16
    # -> runs/airline-sentiment/export/gguf-f16/{model-f16.gguf, Modelfile, export.json, parity.json}
    llama-cli -m runs/airline-sentiment/export/gguf-f16/model-f16.gguf -cnv   # template read from the file
    ollama create airline -f runs/airline-sentiment/export/gguf-f16/Modelfile

Written with the `gguf` package (llama.cpp's own writer) under llama.cpp's names: `token_embd`,
`blk.N.attn_q`, ..., `output_norm`, `output` (omitted when tied to the embedding), hyperparameters under
`llama.*`, a byte-level BPE tokenizer under `tokenizer.ggml.*` (tokens, token types, merges, special ids)
and `tokenizer.chat_template`. llama.cpp's rotary embedding pairs adjacent dimensions (0,1),(2,3)... while
transformers rotates halves (i, i+d/2), so q and k rows are permuted per head on the way out; transformers'
GGUF loader undoes exactly that permutation on the way in.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tuneloop.errors import UserError
from tuneloop.export.source import chat_eos_id

NUMPY_DTYPES = {"f32": np.float32, "f16": np.float16}


def check_supported(config) -> None:
    """Refuse what this writer would silently get wrong (and name what is supported)."""
    if config.model_type != "llama":
        raise UserError(f"GGUF export supports llama-architecture models (SmolLM, Llama, TinyLlama); this run's "
                        f"model is '{config.model_type}': use --format merged and llama.cpp's convert_hf_to_gguf.py")
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise UserError(f"GGUF export does not write rope scaling '{rope.get('rope_type')}' yet; "
                        "use --format merged")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise UserError("GGUF export does not write attention/MLP biases yet; use --format merged")
    if getattr(config, "hidden_act", "silu") != "silu":
        raise UserError(f"GGUF llama models use SiLU; this model uses '{config.hidden_act}': use --format merged")


def rotary_to_interleaved(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Rows of a q/k projection from transformers' half-split rotary layout to llama.cpp's paired one.

    Per head the rows are [x_0 .. x_{d/2-1}, y_0 .. y_{d/2-1}] (x_i rotates with y_i); llama.cpp wants
    [x_0, y_0, x_1, y_1, ...]. Shape (n_heads*d, in) -> same shape."""
    d = w.shape[0] // n_heads
    return w.reshape(n_heads, 2, d // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _add_hparams(w, config) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rope = getattr(config, "rope_parameters", None) or {}
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_block_count(config.num_hidden_layers)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(config.num_attention_heads)
    w.add_head_count_kv(config.num_key_value_heads)
    w.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    w.add_vocab_size(config.vocab_size)
    if head_dim * config.num_attention_heads != config.hidden_size:
        w.add_key_length(head_dim)  # llama.cpp assumes hidden/heads unless told
        w.add_value_length(head_dim)


def _add_tensors(w, model, dtype: str) -> int:
    """Add every weight under its llama.cpp name; 1-D tensors (norms) stay f32 as llama.cpp expects."""
    from gguf import MODEL_ARCH, get_tensor_name_map

    cfg = model.config
    names = get_tensor_name_map(MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    total = 0
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue  # a file without `output.weight` is read as tied, by llama.cpp and by transformers
        stem, suffix = hf_name.rsplit(".", 1)
        gguf_name = names.get_name(stem)
        if gguf_name is None:
            raise UserError(f"GGUF export: no llama.cpp name for tensor '{hf_name}'; use --format merged")
        data = tensor.detach().to("cpu").float().numpy()
        if stem.endswith("self_attn.q_proj"):
            data = rotary_to_interleaved(data, cfg.num_attention_heads)
        elif stem.endswith("self_attn.k_proj"):
            data = rotary_to_interleaved(data, cfg.num_key_value_heads)
        data = np.ascontiguousarray(data.astype(NUMPY_DTYPES[dtype] if data.ndim > 1 else np.float32))
        w.add_tensor(f"{gguf_name}.{suffix}", data)
        total += data.nbytes
    return total


def pre_tokenizer_name(tok) -> str:
    """llama.cpp's name for how text is split before BPE, read off the tokenizer.json pre-tokenizer.

    llama.cpp keys behaviour on this name. Plain GPT-2 splitting without space clean-up on decode is
    'smollm'; a Split regex is matched against the ones transformers' GGUF reader maps each name to."""
    spec = json.loads(tok.backend_tokenizer.to_str())
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    if len(steps) == 1 and steps[0].get("type") == "ByteLevel" and steps[0].get("use_regex", True):
        return "gpt-2" if getattr(tok, "clean_up_tokenization_spaces", False) else "smollm"
    split = next((s for s in steps if s.get("type") == "Split"), None)
    if split is not None:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

        regex = (split.get("pattern") or {}).get("Regex")
        for name in ("llama-bpe", "qwen2", "gpt-4o", "tekken"):
            if GGUF_PRE_TOKENIZER_SPLITS.get(name) == regex:
                return name
    raise UserError("GGUF export: the tokenizer's pre-tokenizer is not one llama.cpp knows by name; "
                    "use --format merged and llama.cpp's convert_hf_to_gguf.py")


def _add_tokenizer(w, tok, vocab_size: int) -> None:
    from gguf import TokenType

    spec = json.loads(tok.backend_tokenizer.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or (spec.get("decoder") or {}).get("type") != "ByteLevel":
        raise UserError("GGUF export supports byte-level BPE tokenizers (GPT-2 style, as SmolLM and Llama 3 "
                        "use); use --format merged for this model")
    by_id = {i: t for t, i in tok.get_vocab().items()}
    added = tok.added_tokens_decoder  # id -> AddedToken
    tokens, types = [], []
    for i in range(vocab_size):  # the embedding can be wider than the tokenizer: pad with unused slots
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
        else:
            tokens.append(by_id[i])
            types.append(TokenType.NORMAL if i not in added else
                         TokenType.CONTROL if added[i].special else TokenType.USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre_tokenizer_name(tok))
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    _add_special_ids(w, tok)
    w.add_chat_template(tok.chat_template)


def _add_special_ids(w, tok) -> None:
    eos = chat_eos_id(tok)
    if tok.bos_token_id is not None:
        w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(eos)  # llama.cpp and Ollama stop on eos: make it the chat's end-of-turn token
    w.add_eot_token_id(eos)
    if tok.unk_token_id is not None:
        w.add_unk_token_id(tok.unk_token_id)
    if tok.pad_token_id is not None:
        w.add_pad_token_id(tok.pad_token_id)
    probe = tok("a")["input_ids"]  # does the tokenizer itself add BOS/EOS to plain text?
    w.add_add_bos_token(bool(probe) and probe[0] == tok.bos_token_id)
    w.add_add_eos_token(bool(probe) and probe[-1] == tok.eos_token_id and len(probe) > 1)


def write_gguf(model, tok, path: Path, dtype: str, name: str) -> dict:
    """Write `model` (fp32, merged) and `tok` to one GGUF file; returns {"tensors", "tensor_bytes"}."""
    import gguf

    check_supported(model.config)
    if not tok.chat_template:
        raise UserError("the run's tokenizer has no chat template, so the GGUF would carry none; "
                        "set one on the base model's tokenizer and re-run")
    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    w.add_name(name)
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
    _add_hparams(w, model.config)
    _add_tokenizer(w, tok, model.config.vocab_size)
    nbytes = _add_tensors(w, model, dtype)
    n_tensors = len(w.tensors[-1])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"tensors": n_tensors, "tensor_bytes": nbytes}


def write_modelfile(folder: Path, gguf_name: str, tok) -> Path:
    """An Ollama Modelfile next to the GGUF; the template itself comes from the file's metadata."""
    stop = tok.convert_ids_to_tokens(chat_eos_id(tok))
    path = folder / "Modelfile"
    path.write_text(f"FROM ./{gguf_name}\nPARAMETER stop \"{stop}\"\nPARAMETER temperature 0\n")
    return path
