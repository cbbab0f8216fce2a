"""Preference tuning with DPO (sigmoid loss) on a LoRA/DoRA adapter or the full model: setup -> fit -> save.

    state = setup(model_path, train_pairs, val_pairs, cfg.adapter, cfg.train, beta=0.1, seed=0)
    history = fit(state, cfg.train, log_path=Path("runs/x/train_log.jsonl"))   # loss, reward margin, accuracy
    save(state, Path("runs/x"))      # adapter/ and model/ (merged), as for SFT

A preference row, in any of the accepted forms (the data stage's `Example` with `.rejected`, or a dict):
    {"prompt": [{"role": "user", "content": "Is my flight on time?"}],
     "chosen": "Let me check: please share your booking code.", "rejected": "No idea."}
    {"chosen": [..., {"role": "assistant", "content": "A"}], "rejected": [..., {"role": "assistant", "content": "B"}]}

Loss per pair: -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))), where pi/ref are log-probabilities of the
answer's tokens (summed; the assistant-only mask of `tokenize_chat`, end-of-turn token included) under the
policy and the reference. The reference is the model as loaded, before training; its log-probs are computed
ONCE in setup (with the adapter disabled) and kept as two floats per pair, so no second model stays in
memory and each step costs one forward/backward over the chosen+rejected batch.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from tuneloop.config import AdapterConfig, TrainConfig
from tuneloop.errors import UserError
from tuneloop.train import distributed
from tuneloop.train.batching import IGNORE, collate, example_weight, length_grouped_batches, tokenize_chat
from tuneloop.train.sft import _log, _open_log, after_step, attach_adapter, build_optimizer, causal_lm_parts, finish
from tuneloop.train.sft import compile_body, gradient_checkpointing, optimizer_step, start_position
from tuneloop.train.sft import body_hidden, prefix_sharing, resolve_precision
from tuneloop.train.sft import save as sft_save


@dataclass
class Pair:
    """One preference: the shared conversation so far, then the preferred and the dispreferred answer turns."""

    prompt: list
    chosen: list
    rejected: list


@dataclass
class PairTokens:
    chosen: tuple  # (input_ids, labels) of prompt + chosen; labels only on the final answer's tokens
    rejected: tuple
    ref_chosen: float = 0.0  # reference log-prob of the chosen answer, filled in by setup
    ref_rejected: float = 0.0
    weight: float = 1.0  # the row's data-stage weight (meta.weight), for the weighted mean of pair losses

    def __len__(self) -> int:  # for length grouping: the longer of the two sequences
        return max(len(self.chosen[0]), len(self.rejected[0]))


@dataclass
class DPOState:
    model: torch.nn.Module
    tokenizer: object
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train: list  # [PairTokens]
    val: list
    total_steps: int
    beta: float
    seed: int
    precision: str
    history: list = field(default_factory=list)
    share_prefix: int = 0  # collate()'s share_prefix: the batch's common prompt prefix run once


def to_pair(row) -> Pair:
    """An Example with `.rejected` (prompt = messages[:-1]) or a preference dict -> Pair."""
    from tuneloop.data.formats import CONVERTERS, Example, Mapping
    from tuneloop.data.validate import Rejection

    if isinstance(row, dict):
        try:
            row = CONVERTERS["preference"](row, Mapping({}))
        except Rejection as e:
            raise UserError(f"preference row: {e.message}") from e
    if not isinstance(row, Example) or not row.rejected:
        raise UserError("DPO needs preference rows (prompt, chosen, rejected); set data.format: preference")
    return Pair(row.messages[:-1], row.messages[-1:], row.rejected)


def tokenize_pair(tok, pair: Pair) -> PairTokens:
    # Earlier assistant turns in the prompt are context (weight 0): only the final answer is compared.
    context = [{**m, "weight": 0} for m in pair.prompt]
    chosen, rejected = tokenize_chat(tok, context + pair.chosen), tokenize_chat(tok, context + pair.rejected)
    if all(x == IGNORE for x in chosen[1]) or all(x == IGNORE for x in rejected[1]):
        raise UserError("a preference pair has no assistant answer to score; chosen and rejected must end "
                        "with an assistant turn")
    return PairTokens(chosen, rejected)


def sequence_logps(model, batch: dict) -> torch.Tensor:
    """[B] sum of log p(label token) per row; the LM head runs only at label positions (as in SFT)."""
    body, head = causal_lm_parts(model)
    hidden = body_hidden(body, batch)  # [B, T, D] (T: after the shared prefix when the batch has one)
    targets = batch["labels"][:, 1:]  # [B, T-1]: position t predicts token t+1
    keep = targets != IGNORE
    logits = head(hidden[:, :-1][keep]).float()  # [N_label, V]
    token_logps = -F.cross_entropy(logits, targets[keep], reduction="none")  # [N_label]
    rows = keep.nonzero()[:, 0]
    return torch.zeros(len(targets), device=logits.device).index_add(0, rows, token_logps)


def pair_logps(model, items: list, pad_id: int, device, share_prefix: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen [B], rejected [B]) log-probs, from one forward over the 2B sequences (their common prefix,
    e.g. a system prompt, once with share_prefix)."""
    batch = collate([p.chosen for p in items] + [p.rejected for p in items], pad_id, share_prefix)
    logps = sequence_logps(model, {k: v.to(device) for k, v in batch.items()})
    return logps[: len(items)], logps[len(items):]


@torch.no_grad()
def fill_reference(model, items: list, pad_id: int, batch_size: int) -> None:
    """Reference log-probs of every pair, once: the adapter disabled (= the base), or the untrained full model."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    disabled = model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()
    with disabled:
        for idx in length_grouped_batches([len(p) for p in items], batch_size, seed=0):
            chosen, rejected = pair_logps(model, [items[i] for i in idx], pad_id, device)
            for i, c, r in zip(idx, chosen.tolist(), rejected.tolist()):
                items[i].ref_chosen, items[i].ref_rejected = c, r
    model.train(was_training)


def dpo_terms(model, items: list, beta: float, pad_id: int, device,
              share_prefix: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-pair loss [B], per-pair reward margin [B]) with the stored reference log-probs."""
    chosen, rejected = pair_logps(model, items, pad_id, device, share_prefix)
    ref = torch.tensor([[p.ref_chosen, p.ref_rejected] for p in items], device=device)
    margin = beta * ((chosen - ref[:, 0]) - (rejected - ref[:, 1]))  # chosen reward - rejected reward
    return -F.logsigmoid(margin), margin.detach()


def setup(model_path: str, train_rows: list, val_rows: list, adapter: AdapterConfig, train: TrainConfig,
          beta: float = 0.1, seed: int = 0) -> DPOState:
    """Load the base, attach the adapter, tokenize pairs, compute reference log-probs, build the optimizer."""
    from transformers import AutoModelForCausalLM

    from tuneloop.models.sources import load_tokenizer

    if beta <= 0:
        raise UserError(f"DPO beta must be > 0 (got {beta}); 0.1 is the usual start")
    distributed.check_mode(train, "dpo")
    torch.manual_seed(seed)
    if train.threads:
        torch.set_num_threads(train.threads)
    precision = resolve_precision(train.precision)
    tok = load_tokenizer(model_path)
    dtype = torch.bfloat16 if precision == "bf16" and adapter.method != "full" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    model = attach_adapter(model, adapter)
    gradient_checkpointing(model, train)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    model.train()
    distributed.wrap(model, train)  # ddp: every rank starts from rank 0's adapter
    compile_body(model, train)
    tok_train = [tokenize_pair(tok, to_pair(r)) for r in train_rows]
    for p, r in zip(tok_train, train_rows):
        p.weight = example_weight(r)
    tok_val = [tokenize_pair(tok, to_pair(r)) for r in val_rows]
    fill_reference(model, tok_train + tok_val, tok.pad_token_id, train.batch_size)
    opt, sched, total = build_optimizer(model, len(tok_train), train)
    return DPOState(model, tok, opt, sched, tok_train, tok_val, total, beta, seed, precision,
                    share_prefix=prefix_sharing(train))


def accumulate_gradients(state: DPOState, micro: list, device) -> tuple[float, list]:
    """Backward over this process's micro-batches (lists of PairTokens) of one step; returns the step's (mean
    loss, margins) over all processes.

    Normalized by the step's pair count on all ranks, so accumulation splits and process counts give the same
    gradient (scaled by the world size because gradients are then averaged over ranks, as in sft). Pairs with
    a data-stage weight make it the weighted mean sum_p w_p * loss_p / sum_p w_p (all 1: the plain mean, bit
    for bit, since multiplying by 1.0 is exact)."""
    n = distributed.all_reduce_sum(sum(p.weight for m in micro for p in m)) or 1.0
    loss_total, margins = 0.0, []
    for items in micro:
        losses, margin = dpo_terms(state.model, items, state.beta, state.tokenizer.pad_token_id, device,
                                   state.share_prefix)
        losses = losses * torch.tensor([p.weight for p in items], device=device)  # [B]
        (losses.sum() * distributed.world() / n).backward()
        loss_total += float(losses.detach().sum())
        margins += margin.tolist()
    return distributed.all_reduce_sum(loss_total) / n, distributed.gather(margins)


@torch.no_grad()
def evaluate(state: DPOState, batch_size: int, items: list | None = None) -> dict:
    """Validation (or `items`) DPO loss, mean reward margin and preference accuracy."""
    items = state.val if items is None else items
    if not items:
        return {"val_loss": float("nan")}
    state.model.eval()
    device = next(state.model.parameters()).device
    losses, margins = [], []
    for idx in length_grouped_batches([len(p) for p in items], batch_size, seed=0):
        loss, margin = dpo_terms(state.model, [items[i] for i in idx], state.beta, state.tokenizer.pad_token_id, device)
        losses += loss.tolist()
        margins += margin.tolist()
    state.model.train()
    return {"val_loss": round(sum(losses) / len(losses), 5), **_margin_stats(margins, "val_")}


def _margin_stats(margins: list, prefix: str = "") -> dict:
    return {prefix + "reward_margin": round(sum(margins) / len(margins), 5),
            prefix + "reward_accuracy": round(sum(m > 0 for m in margins) / len(margins), 4)}


def fit(state: DPOState, cfg: TrainConfig, log_path: Path | None = None, ckpt_dir: Path | None = None) -> list:
    """The loop: accumulate, clip, step, log loss / reward margin / accuracy, validate, checkpoint."""
    device = next(state.model.parameters()).device
    params = [p for p in state.model.parameters() if p.requires_grad]
    pos = start_position(state, cfg, ckpt_dir)
    log = _open_log(log_path, state.history, cfg) if distributed.is_main() else None
    t0, stop = time.time(), False
    bar = tqdm(total=state.total_steps, initial=pos["step"], desc="dpo", unit="step", dynamic_ncols=True,
               disable=not distributed.is_main())
    window = {"loss": 0.0, "steps": 0, "margins": []}
    while pos["step"] < state.total_steps and not stop:
        batches = length_grouped_batches([len(p) for p in state.train], cfg.batch_size, state.seed + pos["epoch"])
        for s in range(pos["batch"], len(batches) - cfg.grad_accum + 1, cfg.grad_accum):
            shares = [distributed.share([state.train[i] for i in idx]) for idx in batches[s: s + cfg.grad_accum]]
            step_loss, margins = accumulate_gradients(state, [part for part in shares if part], device)
            distributed.average_gradients(params, cfg.distributed)
            optimizer_step(state, params, cfg.max_grad_norm)
            pos.update(step=pos["step"] + 1, batch=s + cfg.grad_accum)
            window.update(loss=window["loss"] + step_loss, steps=window["steps"] + 1,
                          margins=window["margins"] + margins)
            last = pos["step"] >= state.total_steps
            if pos["step"] % cfg.log_every == 0 or last:
                rec = {"step": pos["step"], "epoch": pos["epoch"], "loss": round(window["loss"] / window["steps"], 5),
                       **_margin_stats(window["margins"]), "lr": state.scheduler.get_last_lr()[0],
                       "elapsed_s": round(time.time() - t0, 2)}
                _log(state, log, rec)
                bar.set_postfix(loss=f"{rec['loss']:.4f}", margin=f"{rec['reward_margin']:.3f}")
                window = {"loss": 0.0, "steps": 0, "margins": []}
            stop = after_step(state, cfg, pos, ckpt_dir, log, last, lambda: evaluate(state, cfg.batch_size))
            bar.update(1)
            if last or stop:
                break
        else:
            pos.update(epoch=pos["epoch"] + 1, batch=0)
    bar.close()
    return finish(state, cfg, pos, ckpt_dir, log, t0, stop, lambda: evaluate(state, cfg.batch_size))


def save(state: DPOState, run_dir: Path) -> None:
    """The same artifacts as SFT: adapter/ (peft) and model/ (merged, plain transformers)."""
    sft_save(state, run_dir)
