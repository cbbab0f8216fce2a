"""Training throughput: tuneloop's LoRA loop vs TRL's SFTTrainer, same model, data, LoRA, steps and batch.

    .venv/bin/python bench/train_throughput.py [--examples 256] [--steps 16] [--batch 8] [--ablations] [--seeds 3]
    # -> bench/results/train_throughput.json   (needs `pip install trl==1.16.0 datasets`)
    python bench/train_throughput.py --model /path/SmolLM2.gguf --out bench/results/train_throughput_gpu.json
    # the same on a CUDA machine (peak GPU memory is recorded beside RSS)

Each configuration runs in its own subprocess so peak RSS is its own. Configurations:
  trl_default      TRL SFTTrainer defaults on prompt-completion data (completion-only loss, padded batches)
  trl_packed_bf16  TRL with padding-free packing and bf16
  tuneloop         tuneloop's default loop (length-grouped batches, a micro-batch's shared prompt prefix run once,
                   LM head only at label positions, precision auto)
  tuneloop_packed  tuneloop with train.packing (padding-free rows)
With --ablations, each throughput choice is switched off once to measure its own gain:
  tuneloop_fp32          frozen weights in fp32 instead of bf16 (only where bf16 is native)
  tuneloop_no_prefix     every row run in full (no shared-prefix batches: the system prompt once per row)
  tuneloop_all_logits    the LM head at every position, as transformers' loss does (not only label positions)
  tuneloop_unsorted      random batches (length grouping off: padded like a plain DataLoader)
  tuneloop_compile       train.compile (torch.compile; its compile time is excluded by a warm-up step)
Also measured: this machine's fp32 / bf16 matmul GFLOP/s, and the achieved fraction of the compute limit
(LoRA training ~ 4 x parameters FLOPs per token: forward 2, backward through frozen weights 2).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from machine import cpu_name  # bench/ is this script's folder

RESULTS = Path(__file__).parent / "results" / "train_throughput.json"
INSTRUCTION = ("Classify the sentiment of this customer tweet about an airline. "
               "Answer with one word: negative, neutral or positive.")


def matmul_gflops(dtype_name: str, n: int = 1024, reps: int = 20) -> float:
    import torch

    cuda = torch.cuda.is_available()
    n = 8192 if cuda else n  # a GPU needs a large product to reach its peak
    dtype = getattr(torch, {"fp32": "float32", "bf16": "bfloat16"}[dtype_name])
    a, b = (torch.randn(n, n, dtype=dtype, device="cuda" if cuda else "cpu") for _ in range(2))
    for _ in range(3):
        a @ b
    _sync()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync()
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def load_rows(n: int, seed: int = 0) -> list:
    """n real airline tweets as chat examples, via tuneloop's own data stage (no duplicates)."""
    import random

    from tuneloop.data.clean import clean_text
    from tuneloop.data.formats import Example, read_airline_tweets

    seen, rows = set(), []
    for row in read_airline_tweets():
        text = clean_text(row.fields["text"], single_line=True)
        if text.lower() in seen:
            continue
        seen.add(text.lower())
        rows.append(Example([{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": text},
                             {"role": "assistant", "content": row.fields["label"]}], row.fields["label"]))
    random.Random(seed).shuffle(rows)
    return rows[:n]


def run_tuneloop(args, packed: bool = False, ablation: str = "") -> dict:
    import functools

    from tuneloop.config import AdapterConfig, TrainConfig
    from tuneloop.models.sources import resolve
    from tuneloop.train import batching, sft

    if ablation == "all_logits":
        sft.label_token_loss = all_position_loss
    if ablation == "unsorted":  # a group of one batch: sorting inside it removes no padding
        sft.length_grouped_batches = functools.partial(batching.length_grouped_batches, group=1)
    path = resolve(args.model).path
    rows = load_rows(args.examples)
    train = TrainConfig(max_steps=args.steps, batch_size=args.batch, lr=2e-4, warmup_ratio=0.0, log_every=1,
                        packing=packed, schedule="linear", precision="fp32" if ablation == "fp32" else "auto",
                        compile=ablation == "compile", share_prefix=ablation != "no_prefix")
    state = sft.setup(path, rows, [], AdapterConfig(r=16, alpha=32, target_modules="all-linear"), train,
                      seed=args.seed)
    history = sft.fit(state, train)
    held_out = held_out_loss(state.model, state.tokenizer, args)
    steps = [r for r in history if "loss" in r]
    # Throughput from the log, excluding step 1 (CUDA/compile warm-up): tokens and seconds after it.
    tokens = steps[-1]["tokens"] - steps[0]["tokens"]
    seconds = steps[-1]["elapsed_s"] - steps[0]["elapsed_s"]
    params = sum(p.numel() for p in state.model.parameters())
    return {"tokens": tokens, "seconds": seconds, "final_loss": steps[-1]["loss"], "held_out_loss": held_out,
            "params": params, "precision": state.precision}


HELD_OUT = 64


def held_out_loss(model, tok, args) -> float:
    """Mean label-token loss of the trained model on HELD_OUT fixed rows no configuration trained on, measured
    the same way for every configuration (the last logged training loss depends on which batch came last)."""
    import torch

    from tuneloop.train import sft
    from tuneloop.train.batching import collate, tokenize_chat

    rows = load_rows(args.examples + HELD_OUT)[args.examples:]
    items = [tokenize_chat(tok, ex.messages) for ex in rows]
    device, total, n = next(model.parameters()).device, 0.0, 0
    model.eval()
    with torch.no_grad():
        for s in range(0, len(items), 16):
            batch = collate(items[s: s + 16], tok.pad_token_id)
            loss, k = sft.label_token_loss(model, {k: v.to(device) for k, v in batch.items()})
            total, n = total + float(loss), n + k
    return total / n


def all_position_loss(model, batch: dict):
    """Ablation of sft.label_token_loss: the LM head over every position (what a plain `model(labels=...)`
    does), then cross-entropy on the label positions only. Same loss, more FLOPs and memory."""
    import torch

    from tuneloop.train import sft
    from tuneloop.train.batching import IGNORE

    body, head = sft.causal_lm_parts(model)
    logits = head(sft.body_hidden(body, batch))[:, :-1].float()  # [B, T-1, V]
    targets = batch["labels"][:, 1:]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                             ignore_index=IGNORE, reduction="sum")
    return loss, int((targets != IGNORE).sum())


def run_trl(args, packed_bf16: bool) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from tuneloop.models.sources import resolve

    path = resolve(args.model).path
    rows = load_rows(args.examples)
    data = Dataset.from_list([{"prompt": ex.messages[:-1], "completion": ex.messages[-1:]} for ex in rows])
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16 if packed_bf16 else torch.float32)
    tokens: dict = {}

    # TRL's own default is bf16 mixed precision. On a CPU without native bf16 that default would run at ~1% of
    # fp32 speed, so there the "default" config turns it off (in TRL's favour); on a GPU it stays TRL's default.
    bf16 = True if packed_bf16 else (None if torch.cuda.is_available() else False)
    cfg = SFTConfig(output_dir=os.path.join(args.tmp, "trl"), max_steps=args.steps,
                    per_device_train_batch_size=args.batch, learning_rate=2e-4, lr_scheduler_type="linear",
                    logging_steps=1, save_strategy="no", report_to=[], seed=args.seed, use_cpu=not torch.cuda.is_available(),
                    packing=packed_bf16, padding_free=packed_bf16, bf16=bf16, dataloader_num_workers=0)
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=data, processing_class=tok,
                         peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                                task_type="CAUSAL_LM"))
    collate = trainer.data_collator
    fed: list = []  # non-pad tokens of each batch in the order built (the loader may build one ahead)

    def counting(features):  # counted as tuneloop counts them
        batch = collate(features)
        mask = batch.get("attention_mask")
        fed.append(int(mask.sum()) if mask is not None else int(batch["input_ids"].numel()))
        return batch

    class StepClock(TrainerCallback):  # time from the end of step 1 to the end (warm-up excluded, as for tuneloop)
        def on_step_end(self, args_, state, control, **kw):
            _sync()
            tokens.setdefault("t1", time.perf_counter()) if state.global_step == 1 else None
            tokens["t_end"] = time.perf_counter()

    trainer.data_collator = counting
    trainer.add_callback(StepClock())
    trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    with torch.autocast(trainer.model.device.type, dtype=torch.bfloat16, enabled=bool(trainer.args.bf16)):
        held_out = held_out_loss(trainer.model, tok, args)
    return {"tokens": sum(fed[1: args.steps]), "seconds": tokens["t_end"] - tokens["t1"], "final_loss": losses[-1],
            "held_out_loss": held_out, "params": None, "precision": "bf16 autocast" if trainer.args.bf16 else "fp32"}


RUNNERS = {
    "trl_default": lambda a: run_trl(a, False),
    "trl_packed_bf16": lambda a: run_trl(a, True),
    "tuneloop": lambda a: run_tuneloop(a),
    "tuneloop_packed": lambda a: run_tuneloop(a, packed=True),
}
ABLATIONS = {
    "tuneloop_fp32": lambda a: run_tuneloop(a, ablation="fp32"),
    "tuneloop_no_prefix": lambda a: run_tuneloop(a, ablation="no_prefix"),
    "tuneloop_all_logits": lambda a: run_tuneloop(a, ablation="all_logits"),
    "tuneloop_unsorted": lambda a: run_tuneloop(a, ablation="unsorted"),
    "tuneloop_compile": lambda a: run_tuneloop(a, ablation="compile"),
}


def child(args) -> None:
    import torch

    out = {**RUNNERS, **ABLATIONS}[args.child](args)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available():
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print("RESULT " + json.dumps(out), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=256)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--only", default=",".join(RUNNERS))
    p.add_argument("--ablations", nargs="?", const=",".join(ABLATIONS), default="",
                   help="also run each throughput choice switched off (all, or a comma list of names)")
    p.add_argument("--model", default="bundled:smollm2-135m-instruct", help="model spec (folder, .gguf, bundled:)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--seeds", type=int, default=1,
                   help="also train trl_default and tuneloop with seeds 1..N-1 (held-out loss spread over seeds)")
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--tmp", default="/tmp/tuneloop-bench")
    args = p.parse_args()
    if args.child:
        return child(args)
    gflops = {"fp32": round(matmul_gflops("fp32"), 1), "bf16": round(matmul_gflops("bf16"), 1)}
    print(f"matmul GFLOP/s: {gflops}")
    results, skipped = {}, {}
    names = args.only.split(",") + [a for a in args.ablations.split(",") if a]
    runs = [(n, 0) for n in names] + [(n, s) for s in range(1, args.seeds) for n in ("trl_default", "tuneloop")]
    seeded: dict = {}
    for name, seed in runs:
        if ("bf16" in name or name == "tuneloop_fp32") and not _bf16_native():
            # Without AVX-512-BF16/AMX, bf16 matmuls run at ~1% of fp32 here: minutes per step, no information.
            skipped[name] = f"no native bf16 on this CPU (bf16 matmul {gflops['bf16']} GFLOP/s)"
            print(f"{name}: skipped ({skipped[name]})")
            continue
        cmd = [sys.executable, __file__, "--child", name, "--examples", str(args.examples), "--steps",
               str(args.steps), "--batch", str(args.batch), "--tmp", args.tmp, "--model", args.model,
               "--seed", str(seed)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            print(f"{name}: failed\n{proc.stderr[-2000:]}")
            continue
        r = json.loads(line[0][7:])
        r["tokens_per_s"] = r["tokens"] / r["seconds"]
        seeded.setdefault(name, []).append(r["held_out_loss"])
        if seed:
            print(f"{name:20s} seed {seed}: {r['tokens_per_s']:8.1f} tok/s  held-out {r['held_out_loss']:.4f}")
            continue
        results[name] = r
        gpu = f"  GPU {r['peak_gpu_mb']:6.0f} MB" if "peak_gpu_mb" in r else ""
        print(f"{name:20s} {r['tokens_per_s']:8.1f} tok/s  peak {r['peak_rss_mb']:7.0f} MB{gpu}  "
              f"loss {r['final_loss']:.4f}  held-out {r['held_out_loss']:.4f}  ({r['precision']})")
    params = next((r["params"] for r in results.values() if r.get("params")), 134_515_008)
    best = results.get("tuneloop", {})
    limit = gflops["bf16"] if best.get("precision") == "bf16" else gflops["fp32"]
    out = {
        "tokens_per_s": {k: round(v["tokens_per_s"], 1) for k, v in results.items()},
        "peak_rss_mb": {k: round(v["peak_rss_mb"], 1) for k, v in results.items()},
        "final_loss": {k: round(v["final_loss"], 5) for k, v in results.items()},
        "held_out_loss": {k: round(v["held_out_loss"], 5) for k, v in results.items()},
        "held_out_loss_vs_trl_default": (round(best["held_out_loss"] / results["trl_default"]["held_out_loss"] - 1, 4)
                                         if best and "trl_default" in results else None),
        **({"held_out_loss_seeds": {k: [round(x, 5) for x in v] for k, v in seeded.items() if len(v) > 1},
            "held_out_loss_mean_vs_trl_default": round(_mean(seeded["tuneloop"]) / _mean(seeded["trl_default"]) - 1, 4)}
           if args.seeds > 1 and len(seeded.get("tuneloop", [])) > 1 and len(seeded.get("trl_default", [])) > 1
           else {}),
        "speedup_vs_trl_default": (round(best["tokens_per_s"] / results["trl_default"]["tokens_per_s"], 3)
                                   if best and "trl_default" in results else None),
        "fraction_of_bf16_limit": (round(best["tokens_per_s"] * 4 * params / (gflops["bf16"] * 1e9), 3)
                                   if best else None),
        "fraction_of_own_precision_limit": (round(best["tokens_per_s"] * 4 * params / (limit * 1e9), 3)
                                            if best else None),
        # Shared prefixes are computed once per batch, so tokens trained/s x 4P can exceed the limit; the run
        # without prefix sharing computes every token it counts: its fraction is the real compute efficiency.
        **({"fraction_of_own_precision_limit_no_prefix": round(
            results["tuneloop_no_prefix"]["tokens_per_s"] * 4 * params / (limit * 1e9), 3)}
           if "tuneloop_no_prefix" in results else {}),
        **({"peak_gpu_mb": {k: round(v["peak_gpu_mb"], 1) for k, v in results.items() if "peak_gpu_mb" in v}}
           if any("peak_gpu_mb" in v for v in results.values()) else {}),
        "ablation_gain": {k[len("tuneloop_"):]: round(best["tokens_per_s"] / v["tokens_per_s"], 3)
                          for k, v in results.items() if k in ABLATIONS and best},
        "matmul_gflops": gflops,
        "skipped": skipped,
        "setup": {"examples": args.examples, "steps": args.steps, "global_batch": args.batch, "seeds": args.seeds,
                  "lora": "r=16, alpha=32, all-linear", "model": args.model,
                  "throughput": "non-pad tokens/s after the first optimizer step (warm-up excluded)"},
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "gpu": _gpu_name(),
                    "bf16_native": _bf16_native()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))



def _mean(xs: list) -> float:
    return sum(xs) / len(xs)


def _gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def _bf16_native() -> bool:
    from tuneloop.train.sft import hardware_bf16

    return hardware_bf16()


if __name__ == "__main__":
    main()
