"""Merged export: the LoRA adapter folded into the base weights, saved as one plain safetensors folder.

    tuneloop export runs/airline-sentiment --format merged [--dtype f16]
    # -> runs/airline-sentiment/export/merged-f32/{config.json, generation_config.json, model.safetensors,
    #    tokenizer.json, tokenizer_config.json, chat_template.jinja, export.json, parity.json}
    AutoModelForCausalLM.from_pretrained("runs/airline-sentiment/export/merged-f32")   # plain transformers
    vllm serve runs/airline-sentiment/export/merged-f32                               # same folder on GPUs

The folder is what vLLM and transformers expect of a hub checkpoint: config.json naming the architecture
and dtype, safetensors weights (sharded with an index past 5 GB), the tokenizer with its chat template, and
generation_config.json whose eos is the chat's end-of-turn token, so every runtime stops where the model
was trained to stop. No custom code, no pickles.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tuneloop.export.source import chat_eos_id

DTYPES = {"f32": torch.float32, "f16": torch.float16}
# What a runtime needs to find in the folder (tested); weights are model.safetensors or shards + index.
REQUIRED_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")


def generation_config(model, tok):
    """The model's generation config with the chat's end-of-turn token first among the eos ids."""
    from transformers import GenerationConfig

    gen = GenerationConfig.from_model_config(model.config) if model.generation_config is None \
        else GenerationConfig.from_dict(model.generation_config.to_dict())
    old = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
    eos = [chat_eos_id(tok)] + [i for i in old + [tok.eos_token_id] if i is not None]
    gen.eos_token_id = list(dict.fromkeys(eos))  # ordered, unique
    gen.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else gen.eos_token_id[0]
    gen.bos_token_id = tok.bos_token_id
    return gen


def save_merged(model, tok, out: Path, dtype: str) -> list:
    """Write the merged model + tokenizer + generation config to `out`; returns the file names written."""
    if not tok.chat_template:
        from tuneloop.errors import UserError

        raise UserError("the run's tokenizer has no chat template; the export would not know how to format "
                        "chats (set one on the tokenizer in the base model folder and re-run)")
    out.mkdir(parents=True, exist_ok=True)
    model = model.to(DTYPES[dtype])
    model.generation_config = generation_config(model, tok)
    # A gguf-sourced base can carry quantizer marks; the weights here are plain tensors, so clear them or
    # save_pretrained refuses and config.json would tell vLLM to expect a quantized checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return sorted(p.name for p in out.iterdir())


def check_layout(folder: Path) -> list:
    """Problems a runtime would hit loading `folder` (empty list when none)."""
    problems = [f"missing {name}" for name in REQUIRED_FILES if not (folder / name).is_file()]
    if not ((folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file()):
        problems.append("no safetensors weights")
    if list(folder.glob("*.bin")) or list(folder.glob("*.pt")):
        problems.append("pickled weights present")
    return problems
