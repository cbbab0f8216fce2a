"""Causal-LM supervised fine-tuning with LoRA / DoRA (or full fine-tuning): setup -> fit -> save.

    state = setup(model_path, train_rows, val_rows, cfg.adapter, cfg.train, seed=0)
    history = fit(state, cfg.train, log_path=Path("runs/x/train_log.jsonl"))
    save(state, Path("runs/x"))      # adapter/ (peft) and model/ (merged, plain transformers)

Throughput choices (CPU first): batches grouped by length so padding is near zero, and the LM head (vocab
49k x d 576 for SmolLM2 = 21% of the model's FLOPs) runs only at positions that carry a label instead of at
every token. Loss is the mean over all label tokens of an optimizer step, so accumulation splits agree;
examples with a data-stage weight (meta.weight) count their tokens that many times.

Under torchrun / accelerate launch (see `distributed`), every process runs this same code on its share of
each step's examples; only rank 0 writes the log, checkpoints and the saved model.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tuneloop.config import AdapterConfig, TrainConfig
from tuneloop.train import checkpoint, distributed
from tuneloop.train.batching import IGNORE, collate, collate_packed, length_grouped_batches, tokenize_chat
from tuneloop.train.batching import with_weights


@dataclass
class TrainState:
    model: torch.nn.Module  # peft-wrapped (LoRA/DoRA) or the plain model (full)
    tokenizer: object
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train: list  # [(input_ids, labels)], or [(input_ids, labels, weight)] when the data has example weights
    val: list
    total_steps: int
    seed: int
    precision: str
    history: list = field(default_factory=list)
    loss: torch.nn.Module | None = None  # LabelTokenLoss(model); under fsdp its sharded root

    def __post_init__(self):
        if self.loss is None:
            self.loss = LabelTokenLoss(self.model)


def hardware_bf16() -> bool:
    """True where bf16 matmul is native: CUDA with bf16, or x86 CPUs with AVX-512-BF16 / AMX.
    Without it (e.g. AVX2-only or AVX-512F-only CPUs) bf16 runs ~5-40x slower than fp32 here."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(requested: str) -> str:
    if requested == "auto":
        return "bf16" if hardware_bf16() else "fp32"
    return requested


def build_peft_config(adapter: AdapterConfig, task_type: str = "CAUSAL_LM"):
    """AdapterConfig -> peft.LoraConfig (DoRA is LoRA with use_dora)."""
    from peft import LoraConfig

    targets = adapter.target_modules
    targets = targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
    return LoraConfig(r=adapter.r, lora_alpha=adapter.alpha, lora_dropout=adapter.dropout,
                      target_modules=targets, use_dora=adapter.method == "dora", task_type=task_type)


def attach_adapter(model, adapter: AdapterConfig, task_type: str = "CAUSAL_LM"):
    """Wrap with a peft LoRA/DoRA adapter (trainable weights in fp32); `full` returns the model as is."""
    if adapter.method == "full":
        return model
    from peft import get_peft_model

    model = get_peft_model(model, build_peft_config(adapter, task_type))
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    return model


def build_optimizer(model, n_train: int, train: TrainConfig):
    """(AdamW over the trainable parameters, warmup + schedule, total optimizer steps) for n_train examples.

    A step is `grad_accum` micro-batches of `batch_size`; the loops drop an epoch's incomplete last step."""
    steps_per_epoch = max(1, math.ceil(n_train / train.batch_size) // train.grad_accum)
    total = train.max_steps if train.max_steps > 0 else max(1, int(steps_per_epoch * train.epochs))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=train.lr,
                            weight_decay=train.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(train.schedule, int(total * train.warmup_ratio), total))
    return opt, sched, total


def gradient_checkpointing(model, train: TrainConfig) -> None:
    """train.gradient_checkpointing for any transformers model, peft-wrapped or not: keep only each layer's
    input in the forward pass and recompute the rest in the backward (less memory, one more forward)."""
    if train.gradient_checkpointing:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        # Non-reentrant checkpointing recomputes correctly even when no input requires grad (frozen embeddings
        # under LoRA), so peft's enable_input_require_grads, needed by the reentrant variant, is not.
        if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.24 name
            base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def compile_body(model, train: TrainConfig) -> None:
    """train.compile: torch.compile the decoder/encoder body in place (names and state dict unchanged).

    The body only: the loss code around it (label positions, head) stays eager. dynamic=True: batch shapes
    change every step (length grouping), and one symbolic-shape graph beats a recompile per new length.
    Measured on 2 CPU cores (SmolLM2-135M LoRA, bench/train_throughput.py): 1.34x eager steady-state
    tokens/s without shared-prefix batches, after ~15 min of compiling (cold cache); it turns prefix sharing
    off, so on data with a shared system prompt it ran at 0.94x the eager default. Compiling each decoder layer
    instead compiled in 3 min but ran at 0.67x eager (guards on per-layer attributes), so it is not used."""
    if train.compile:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        getattr(base, base.base_model_prefix).compile(dynamic=True)


def start_position(state, cfg: TrainConfig, ckpt_dir: Path | None, **counters) -> dict:
    """Where a loop starts: the newest checkpoint's position with cfg.resume, else step 0 (plus counters)."""
    if cfg.resume and ckpt_dir is not None and checkpoint.latest(ckpt_dir) is not None:
        return checkpoint.load_checkpoint(checkpoint.latest(ckpt_dir), state)
    return {"step": 0, "epoch": 0, "batch": 0, **counters, "best_val": None, "bad_evals": 0}


def optimizer_step(state, params: list, max_grad_norm: float) -> None:
    """Clip (when max_grad_norm > 0), step optimizer and schedule, clear gradients."""
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    state.optimizer.step()
    state.scheduler.step()
    state.optimizer.zero_grad(set_to_none=True)


def lr_lambda(schedule: str, warmup: int, total: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        if schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        if schedule == "linear":
            return max(0.0, 1 - progress)
        return 1.0
    return f


def setup(model_path: str, train_rows: list, val_rows: list, adapter: AdapterConfig, train: TrainConfig,
          seed: int = 0, model=None) -> TrainState:
    """Load the base, attach the adapter, tokenize the data, build optimizer and schedule."""
    from transformers import AutoModelForCausalLM

    from tuneloop.models.sources import load_tokenizer

    distributed.check_mode(train)
    torch.manual_seed(seed)
    if train.threads:
        torch.set_num_threads(train.threads)
    precision = resolve_precision(train.precision)
    tok = load_tokenizer(model_path)
    if model is None:
        # Frozen base weights stored in bf16 when the hardware has it: half the memory traffic and native
        # bf16 matmuls, with no autocast on every step; trainable adapter weights stay fp32.
        dtype = torch.bfloat16 if precision == "bf16" and adapter.method != "full" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    model = attach_adapter(model, adapter)
    gradient_checkpointing(model, train)
    model.to("cuda" if torch.cuda.is_available() else "cpu")  # under torchrun: this rank's GPU (LOCAL_RANK)
    model.train()
    loss = distributed.wrap(model, train, root=LabelTokenLoss(model))  # before the optimizer: fsdp re-creates params
    compile_body(model, train)
    tok_train = with_weights([tokenize_chat(tok, ex.messages) for ex in train_rows], train_rows)
    tok_val = [tokenize_chat(tok, ex.messages) for ex in val_rows]
    opt, sched, total = build_optimizer(model, len(tok_train), train)
    return TrainState(model, tok, opt, sched, tok_train, tok_val, total, seed, precision, loss=loss)


def causal_lm_parts(model):
    """(decoder body, lm_head) of a (possibly peft-wrapped) causal LM."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, base.base_model_prefix), base.get_output_embeddings()


def label_token_loss(model, batch: dict) -> tuple[torch.Tensor, int | float]:
    """Sum of next-token cross-entropy over label positions, and their count.

    The body runs on all tokens; the LM head only on the positions whose next token is a label. A batch with
    "label_weights" gives the weighted sum and the weighted count (sum of the label tokens' weights)."""
    body, head = causal_lm_parts(model)
    hidden = body_hidden(body, batch)  # [B, T, D]
    targets = batch["labels"][:, 1:]  # [B, T-1]: position t predicts token t+1
    keep = targets != IGNORE
    logits = head(hidden[:, :-1][keep]).float()  # [N_label, V]
    if "label_weights" not in batch:
        return torch.nn.functional.cross_entropy(logits, targets[keep], reduction="sum"), int(keep.sum())
    weights = batch["label_weights"][:, 1:][keep]  # [N_label]: the example weight of each target token
    loss = torch.nn.functional.cross_entropy(logits, targets[keep], reduction="none")
    return (loss * weights).sum(), float(weights.sum())


def body_hidden(body, batch: dict) -> torch.Tensor:
    """The decoder body's last hidden states [B, T, D] for a padded, packed or prefix-sharing batch."""
    if "position_ids" in batch:  # packed: block-diagonal attention from restarting position ids
        return body(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).last_hidden_state
    if "prefix_ids" in batch:
        return shared_prefix_hidden(body, batch)
    return body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).last_hidden_state


def shared_prefix_hidden(body, batch: dict) -> torch.Tensor:
    """Hidden states [B, T-P, D] of the rows after their common prefix, the prefix [1, P] run only once.

    The prefix's keys/values stay in the autograd graph and are repeated for every row, so the backward sums
    each row's gradient into the one prefix computation: the same loss and gradients as running every row in
    full, for (B-1)*P fewer tokens through the model. Positions continue from P (the cache length). With
    LoRA dropout > 0 the rows share the prefix's one dropout mask."""
    from transformers import DynamicCache

    cache = DynamicCache(config=body.config)
    name = _cache_kwarg(type(body))
    body(input_ids=batch["prefix_ids"], use_cache=True, **{name: cache})
    cache.batch_repeat_interleave(batch["input_ids"].shape[0])
    return body(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=True,
                **{name: cache}).last_hidden_state


@functools.lru_cache(maxsize=None)  # once per model class, not per micro-batch
def _cache_kwarg(body_class: type) -> str:
    """transformers 5.2x renamed `past_key_values` to `cache`; use the name this model's forward takes."""
    import inspect

    return "cache" if "cache" in inspect.signature(body_class.forward).parameters else "past_key_values"


def prefix_sharing(cfg: TrainConfig) -> int:
    """collate()'s share_prefix for this run: the minimum shared prefix worth splitting off, 0 = off.

    Off where the extra cached forward does not fit: packed rows (no prefix), gradient checkpointing (no
    cache in training), torch.compile (a second graph) and fsdp (a sharded layer run twice per step)."""
    off = (cfg.packing or cfg.gradient_checkpointing or cfg.compile
           or (distributed.world() > 1 and cfg.distributed == "fsdp"))
    return 0 if off or not cfg.share_prefix else MIN_SHARED_PREFIX


MIN_SHARED_PREFIX = 4  # tokens; below this the extra forward call costs about what it saves


def label_count(batch: dict) -> int | float:
    """The loss normalizer's share of one batch: its label tokens, each counted with its example's weight."""
    keep = batch["labels"][:, 1:] != IGNORE
    if "label_weights" not in batch:
        return int(keep.sum())
    return float(batch["label_weights"][:, 1:][keep].sum())


class LabelTokenLoss(torch.nn.Module):
    """`label_token_loss` as a module: the root FSDP shards, so its forward gathers the embeddings and head."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch: dict) -> tuple[torch.Tensor, int]:
        return label_token_loss(self.model, batch)


def accumulate_gradients(model, micro: list, device) -> tuple[float, int]:
    """Backward over this process's micro-batches of one optimizer step; returns the step's (mean label-token
    loss, non-pad tokens) over all processes. `model`: the causal LM or its LabelTokenLoss.

    Normalized by the label tokens of the whole step on all ranks, not per micro-batch, so 1 x 8 and 8 x 1
    accumulation, and 1 or N processes, give the same gradient on uneven lengths. With example weights both
    sums are weighted: sum_e w_e * CE_e / sum_e w_e * n_e, so weight 2 == the example twice in the step."""
    loss_of = model if isinstance(model, LabelTokenLoss) else LabelTokenLoss(model)
    n_labels = distributed.all_reduce_sum(sum(label_count(m) for m in micro)) or 1.0  # 0 labels: zero gradient
    # Gradients are then averaged over ranks (distributed.average_gradients, or FSDP's reduce-scatter): the
    # average of world * (rank's loss sum) / n_labels is the single-process gradient.
    scale = distributed.world() / n_labels
    loss_total, tokens = 0.0, 0
    for m in micro:
        loss_sum, _ = loss_of(_to(m, device))
        (loss_sum * scale).backward()
        loss_total += float(loss_sum.detach())
        tokens += int(m["attention_mask"].sum()) if "attention_mask" in m else m["input_ids"].numel()
    return distributed.all_reduce_sum(loss_total) / n_labels, int(distributed.all_reduce_sum(tokens))


def local_share(features: list) -> list:
    """This process's examples of a global micro-batch: every world-th one. A rank left with none gets a
    1-token example without labels (zero gradient), so all ranks run the same forwards, as FSDP requires."""
    mine = distributed.share(features)
    return mine or [(features[0][0][:1], [IGNORE])]


def _to(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def evaluate_loss(state: TrainState, batch_size: int) -> float:
    if not state.val:
        return float("nan")
    state.model.eval()
    total, n = 0.0, 0
    device = next(state.model.parameters()).device
    # Every rank computes the whole validation loss (identical results; equal forwards, as FSDP requires).
    for idx in length_grouped_batches([len(x[0]) for x in state.val], batch_size, seed=0):
        loss, k = state.loss(_to(collate([state.val[i] for i in idx], state.tokenizer.pad_token_id), device))
        total, n = total + float(loss), n + k
    state.model.train()
    return total / max(n, 1)


def fit(state: TrainState, cfg: TrainConfig, log_path: Path | None = None, ckpt_dir: Path | None = None) -> list:
    """The training loop: accumulate, clip, step, log, validate, checkpoint. Returns the logged records.

    With cfg.resume and a checkpoint in ckpt_dir, continues exactly where that checkpoint left off."""
    device = next(state.model.parameters()).device
    pad = state.tokenizer.pad_token_id
    make_batch = collate_packed if cfg.packing else functools.partial(collate, share_prefix=prefix_sharing(cfg))
    params = [p for p in state.model.parameters() if p.requires_grad]
    pos = start_position(state, cfg, ckpt_dir, tokens=0)  # every rank loads the same checkpoint
    log = _open_log(log_path, state.history, cfg) if distributed.is_main() else None
    bar = tqdm(total=state.total_steps, initial=pos["step"], desc="train", unit="step", dynamic_ncols=True,
               disable=not distributed.is_main())
    t0, window = time.time(), {"loss": 0.0, "steps": 0, "tokens": 0, "start": time.time()}
    stop = False

    def validate() -> dict:
        return {"val_loss": round(evaluate_loss(state, cfg.batch_size), 5)}

    while pos["step"] < state.total_steps and not stop:
        batches = length_grouped_batches([len(x[0]) for x in state.train], cfg.batch_size, state.seed + pos["epoch"])
        for s in range(pos["batch"], len(batches) - cfg.grad_accum + 1, cfg.grad_accum):
            micro = [make_batch(local_share([state.train[i] for i in idx]), pad)
                     for idx in batches[s: s + cfg.grad_accum]]
            step_loss, n_tokens = accumulate_gradients(state.loss, micro, device)
            distributed.average_gradients(params, cfg.distributed)
            optimizer_step(state, params, cfg.max_grad_norm)
            pos.update(step=pos["step"] + 1, batch=s + cfg.grad_accum, tokens=pos["tokens"] + n_tokens)
            window.update(loss=window["loss"] + step_loss, steps=window["steps"] + 1,
                          tokens=window["tokens"] + n_tokens)
            last = pos["step"] >= state.total_steps
            if pos["step"] % cfg.log_every == 0 or last:
                _log_window(state, pos, window, t0, log, bar)
            stop = after_step(state, cfg, pos, ckpt_dir, log, last, validate)
            bar.update(1)
            if last or stop:
                break
        else:
            pos.update(epoch=pos["epoch"] + 1, batch=0)
    bar.close()
    return finish(state, cfg, pos, ckpt_dir, log, t0, stop, validate)


def after_step(state, cfg: TrainConfig, pos: dict, ckpt_dir: Path | None, log, last: bool, validate) -> bool:
    """Periodic validation (with early stopping) and checkpointing after an optimizer step; True = stop.

    Shared by the SFT, classification and DPO loops; `validate()` returns a dict with at least val_loss."""
    val, stop = None, False
    if cfg.eval_every and pos["step"] % cfg.eval_every == 0 and not last:
        metrics = validate()
        _log(state, log, {"step": pos["step"], **metrics})
        val, stop = metrics["val_loss"], _early_stop(pos, metrics["val_loss"], cfg.patience)
    writes = ckpt_dir is not None and cfg.save_every  # every rank: fsdp gathers its shards, rank 0 writes
    if writes and pos["step"] % cfg.save_every == 0 and not last:
        checkpoint.save_checkpoint(ckpt_dir, state, pos, cfg.keep_last, val)
    return stop


def finish(state, cfg: TrainConfig, pos: dict, ckpt_dir: Path | None, log, t0: float, stop: bool, validate) -> list:
    """Final validation, final checkpoint, close the log; returns the history."""
    metrics = validate()
    _log(state, log, {"step": pos["step"], **metrics, "elapsed_s": round(time.time() - t0, 2),
                      **({"early_stopped": True} if stop else {})})
    if ckpt_dir is not None and cfg.save_every:
        checkpoint.save_checkpoint(ckpt_dir, state, pos, cfg.keep_last, metrics["val_loss"])
    if log:
        log.close()
    return state.history


def _open_log(log_path: Path | None, history: list, cfg: TrainConfig):
    """train_log.jsonl (restarted from the possibly restored history) plus the trackers in cfg.report_to."""
    from dataclasses import asdict

    from tuneloop.train.tracking import open_log

    return open_log(log_path, history, cfg.report_to, params=asdict(cfg))


def _log(state: TrainState, log, rec: dict) -> None:
    state.history.append(rec)
    if log:
        log.record(rec)


def _log_window(state: TrainState, pos: dict, window: dict, t0: float, log, bar) -> None:
    rate = window["tokens"] / max(time.time() - window["start"], 1e-9)
    rec = {"step": pos["step"], "epoch": pos["epoch"], "loss": round(window["loss"] / max(window["steps"], 1), 5),
           "lr": state.scheduler.get_last_lr()[0], "tokens": pos["tokens"], "tokens_per_s": round(rate, 1),
           "elapsed_s": round(time.time() - t0, 2)}
    _log(state, log, rec)
    bar.set_postfix(loss=f"{rec['loss']:.4f}", tok_s=f"{rate:.0f}")
    window.update(loss=0.0, steps=0, tokens=0, start=time.time())


def _early_stop(pos: dict, val: float, patience: int) -> bool:
    """Track the best validation loss; True after `patience` evaluations without improvement."""
    if pos["best_val"] is None or val < pos["best_val"]:
        pos.update(best_val=val, bad_evals=0)
        return False
    pos["bad_evals"] += 1
    return patience > 0 and pos["bad_evals"] >= patience


def save(state: TrainState, run_dir: Path) -> None:
    """adapter/ (peft weights + config) and model/ (merged weights, loads in plain transformers).

    Rank 0 writes; every rank returns once the files exist. Under fsdp every rank must call it (it gathers)."""
    model = distributed.unsharded_copy(state.model) if distributed.sharded(state.model) else state.model
    if not distributed.is_main():
        distributed.barrier()
        return
    model.eval()
    if hasattr(model, "merge_and_unload"):
        model.save_pretrained(run_dir / "adapter")
        state.tokenizer.save_pretrained(run_dir / "adapter")
        merged = model.merge_and_unload()
    else:
        merged = model
    merged = merged.to(torch.float32)
    merged.save_pretrained(run_dir / "model")
    state.tokenizer.save_pretrained(run_dir / "model")
    state.model, state.loss = merged, LabelTokenLoss(merged)
    distributed.barrier()
