"""What an export needs from a run folder: the base model, the adapter, the tokenizer and test prompts.

    src = read_run("runs/airline-sentiment")
    reference = load_trained(src, merge=False)   # base + LoRA adapter, unmerged: the model as trained
    merged = load_trained(src, merge=True)       # the same weights folded into plain Linear layers

A run folder (see tuneloop.run.RUN_FILES) has adapter/ (peft adapter + tokenizer), model/ (merged
safetensors) and config.yaml whose `resolved_model.path` is the base model folder. A full fine-tune has
no adapter/; then model/ is both the trained model and the thing to export.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from tuneloop.errors import UserError

# Used when the run has no data/test.jsonl: short chats that exercise the template and a few turns.
BUILTIN_PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are a concise assistant."},
     {"role": "user", "content": "Name three primary colours."}],
    [{"role": "user", "content": "Write one sentence about the sea."}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Count from one to five."}],
    [{"role": "user", "content": "@united my bag is lost again, flight UA 123"}],
]


@dataclass
class RunSource:
    run_dir: Path
    base_path: Path | None  # the folder the adapter was trained on; None for a full fine-tune
    adapter_dir: Path | None  # peft adapter; None for a full fine-tune
    model_dir: Path | None  # the run's merged model/


def read_run(run_dir: str | Path) -> RunSource:
    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        raise UserError(f"{run} is not a run folder (no config.yaml); pass the folder `tuneloop run` wrote")
    adapter = run / "adapter"
    model = run / "model"
    has_adapter = (adapter / "adapter_config.json").is_file()
    has_model = (model / "config.json").is_file()
    if not has_adapter and not has_model:
        raise UserError(f"{run} has neither adapter/ nor model/ (did the run finish?)")
    base = _base_path(yaml.safe_load((run / "config.yaml").read_text()) or {}) if has_adapter else None
    return RunSource(run, base, adapter if has_adapter else None, model if has_model else None)


def _base_path(cfg: dict) -> Path:
    """The base model folder; re-resolved from the spec when the recorded cache folder has gone."""
    recorded = (cfg.get("resolved_model") or {}).get("path")
    if recorded and (Path(recorded) / "config.json").is_file():
        return Path(recorded)
    spec = (cfg.get("model") or {}).get("base")
    if not spec:
        raise UserError("config.yaml records no base model (resolved_model.path or model.base); "
                        "the adapter cannot be merged without it")
    from tuneloop.models.sources import resolve

    return Path(resolve(spec, (cfg.get("model") or {}).get("revision") or "main").path)


def load_tokenizer(src: RunSource):
    """The tokenizer the run trained with (saved next to the adapter and the merged model)."""
    from transformers import AutoTokenizer

    folder = src.adapter_dir or src.model_dir
    tok = AutoTokenizer.from_pretrained(folder)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_trained(src: RunSource, merge: bool):
    """The trained model in fp32 on CPU, eval mode: base + adapter (merged or not), or the run's model/."""
    from transformers import AutoModelForCausalLM

    if src.adapter_dir is None:
        return AutoModelForCausalLM.from_pretrained(src.model_dir, dtype=torch.float32).eval()
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(src.base_path, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, src.adapter_dir)
    return (model.merge_and_unload() if merge else model).eval()


def chat_eos_id(tok) -> int:
    """The token that ends an assistant turn in the chat template (`<|im_end|>` for ChatML).

    Found by rendering a one-turn chat and taking the first end-of-turn token after the answer, so it is
    the token the model was trained to emit; runtimes must stop on it, whatever the tokenizer's eos is."""
    from tuneloop.train.batching import end_of_turn_ids, render_ids

    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
    start = len(render_ids(tok, msgs[:1], add_generation_prompt=True))
    eot = end_of_turn_ids(tok)
    for i in render_ids(tok, msgs)[start:]:
        if i in eot:
            return i
    return tok.eos_token_id


def parity_prompts(src: RunSource, n: int) -> tuple[list, str]:
    """(conversations without the final answer, where they came from): the run's test split, else built-in."""
    test = src.run_dir / "data" / "test.jsonl"
    convs = []
    if test.is_file():
        with open(test, encoding="utf-8") as f:
            for line in f:
                if len(convs) >= n:
                    break
                msgs = json.loads(line)["messages"] if line.strip() else []
                if msgs and msgs[-1]["role"] == "assistant":
                    msgs = msgs[:-1]
                if msgs:
                    convs.append([{"role": m["role"], "content": m["content"]} for m in msgs])
    if convs:
        return convs, str(test)
    return [BUILTIN_PROMPTS[i % len(BUILTIN_PROMPTS)] for i in range(n)], "built-in"
