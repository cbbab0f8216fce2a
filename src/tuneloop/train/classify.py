"""Sequence classification with a head (encoder or decoder base), LoRA or full fine-tuning: setup -> fit -> save.

    state = setup(resolve("bundled:minilm-l6").path, train_rows, val_rows, ["negative", "neutral", "positive"],
                  cfg.adapter, cfg.train, seed=0)
    history = fit(state, cfg.train, log_path=Path("runs/x/train_log.jsonl"))
    predict(state, ["@united my bag never arrived"])   # -> ["negative"]
    save(state, Path("runs/x"))     # adapter/ (peft, head included) and model/ (merged, plain transformers)
    state = load(Path("runs/x/model"))                  # predict() again later

Rows are `tuneloop.data.formats.Example`s: the input is the user turn (messages[-2]), the target is `.label`.
The head is `AutoModelForSequenceClassification`'s: [CLS] pooling for BERT-style encoders, the last non-pad
token for decoders (which is why a decoder's config must know the pad id). With LoRA the head is new, so it
trains in full (peft SEQ_CLS puts it in modules_to_save) while the body gets low-rank adapters.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tuneloop.config import AdapterConfig, TrainConfig
from tuneloop.errors import UserError
from tuneloop.train import distributed
from tuneloop.train.batching import length_grouped_batches, weight_of, with_weights
from tuneloop.train.sft import _log, _open_log, after_step, build_optimizer, build_peft_config, compile_body, finish
from tuneloop.train.sft import gradient_checkpointing, optimizer_step, resolve_precision, start_position


@dataclass
class ClassifyState:
    model: torch.nn.Module  # peft-wrapped (LoRA/DoRA + trainable head) or the plain model (full)
    tokenizer: object
    labels: list  # class index -> label string
    optimizer: torch.optim.Optimizer | None  # None after load(): prediction only
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    train: list = field(default_factory=list)  # [(input_ids, class index)], + weight when the data has weights
    val: list = field(default_factory=list)
    total_steps: int = 0
    seed: int = 0
    precision: str = "fp32"
    history: list = field(default_factory=list)


def row_text(ex) -> str:
    """The classified input of a chat-shaped example: the user turn right before the answer."""
    return ex.messages[-2]["content"] if len(ex.messages) >= 2 else ex.messages[-1]["content"]


def resolve_labels(labels: list, rows: list) -> list:
    """The configured label list, or the sorted labels seen in the data; every row's label must be in it."""
    seen = sorted({ex.label for ex in rows if ex.label is not None})
    labels = list(labels) or seen
    unknown = [lab for lab in seen if lab not in labels]
    if unknown:
        raise UserError(f"labels {unknown} occur in the data but not in data.labels {labels}; add them or "
                        "filter those rows")
    if len(labels) < 2:
        raise UserError(f"classification needs at least 2 labels, got {labels}; set data.labels")
    return labels


def encode(tok, rows: list, labels: list, max_tokens: int) -> list:
    if not rows:
        return []
    index = {lab: i for i, lab in enumerate(labels)}
    missing = sum(ex.label is None for ex in rows)
    if missing:
        raise UserError(f"{missing} rows have no label; classification needs data.task: classification")
    ids = tok([row_text(ex) for ex in rows], truncation=True, max_length=max_tokens)["input_ids"]
    return [(x, index[ex.label]) for x, ex in zip(ids, rows)]


def load_classifier(model_path: str, labels: list, dtype: torch.dtype, pad_token_id: int):
    """AutoModelForSequenceClassification with a fresh head of len(labels) outputs and the pad id set."""
    from transformers import AutoModelForSequenceClassification

    try:
        return AutoModelForSequenceClassification.from_pretrained(
            model_path, num_labels=len(labels), id2label=dict(enumerate(labels)),
            label2id={lab: i for i, lab in enumerate(labels)}, pad_token_id=pad_token_id, dtype=dtype)
    except ValueError as e:  # an architecture without a sequence-classification class
        raise UserError(f"{model_path}: no sequence-classification head for this architecture ({e})".splitlines()[0])


def _cast_to_weight_dtype(module, args):
    """Pre-hook for the fp32 trainable head behind a bf16 frozen body: cast its input, not the whole body."""
    return tuple(a.to(module.weight.dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def setup(model_path: str, train_rows: list, val_rows: list, labels: list, adapter: AdapterConfig,
          train: TrainConfig, seed: int = 0, max_tokens: int = 256) -> ClassifyState:
    """Load the base with a new head, attach the adapter, tokenize, build optimizer and schedule."""
    from tuneloop.models.sources import load_tokenizer

    distributed.check_mode(train, "classify")
    torch.manual_seed(seed)  # the head's initialisation
    if train.threads:
        torch.set_num_threads(train.threads)
    precision = resolve_precision(train.precision)
    labels = resolve_labels(labels, train_rows + val_rows)
    tok = load_tokenizer(model_path)
    # Frozen body in bf16 where the hardware has it (LoRA only); trainable weights stay fp32.
    dtype = torch.bfloat16 if precision == "bf16" and adapter.method != "full" else torch.float32
    model = load_classifier(model_path, labels, dtype, tok.pad_token_id)
    if adapter.method != "full":
        from peft import get_peft_model

        model = get_peft_model(model, build_peft_config(adapter, task_type="SEQ_CLS"))
        for name, mod in model.named_modules():
            if name.endswith("modules_to_save.default") and hasattr(mod, "weight"):
                mod.register_forward_pre_hook(_cast_to_weight_dtype)
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    gradient_checkpointing(model, train)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    model.train()
    distributed.wrap(model, train)  # ddp: every rank starts from rank 0's head and adapter
    compile_body(model, train)
    tok_train = with_weights(encode(tok, train_rows, labels, max_tokens), train_rows)
    tok_val = encode(tok, val_rows, labels, max_tokens)
    opt, sched, total = build_optimizer(model, len(tok_train), train)
    return ClassifyState(model, tok, labels, opt, sched, tok_train, tok_val, total, seed, precision)


def collate(features: list, pad_id: int) -> dict:
    """Right-pad [(input_ids, class[, weight])] to one batch: input_ids/attention_mask [B, T], labels [B]
    (and weights [B] when any feature has one)."""
    width = max(len(f[0]) for f in features)
    input_ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(features), width), dtype=torch.long)
    for b, (ids, *_) in enumerate(features):
        input_ids[b, : len(ids)] = torch.tensor(ids)
        attention[b, : len(ids)] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention,
             "labels": torch.tensor([f[1] for f in features], dtype=torch.long)}
    if any(len(f) > 2 for f in features):
        batch["weights"] = torch.tensor([weight_of(f) for f in features], dtype=torch.float32)
    return batch


def logits_of(model, batch: dict) -> torch.Tensor:
    """[B, num_labels] fp32 class scores."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()


def accumulate_gradients(model, micro: list, device) -> tuple[float, int]:
    """Backward over this process's micro-batches of one step; returns the step's (mean cross-entropy, correct
    predictions) over all processes.

    Normalized by the step's example count on all ranks, so accumulation splits and process counts give the
    same gradient (scaled by the world size because gradients are then averaged over ranks, as in sft).
    With example weights: sum_e w_e * CE_e / sum_e w_e, the weighted mean."""
    n = distributed.all_reduce_sum(sum(float(m["weights"].sum()) if "weights" in m else len(m["labels"])
                                       for m in micro)) or 1.0
    loss_total, correct = 0.0, 0
    for m in micro:
        m = {k: v.to(device) for k, v in m.items()}
        logits = logits_of(model, m)
        if "weights" in m:
            loss = (torch.nn.functional.cross_entropy(logits, m["labels"], reduction="none") * m["weights"]).sum()
        else:
            loss = torch.nn.functional.cross_entropy(logits, m["labels"], reduction="sum")
        (loss * distributed.world() / n).backward()
        loss_total += float(loss.detach())
        correct += int((logits.argmax(-1) == m["labels"]).sum())
    return distributed.all_reduce_sum(loss_total) / n, int(distributed.all_reduce_sum(correct))


@torch.no_grad()
def evaluate(state: ClassifyState, batch_size: int) -> dict:
    """{"val_loss", "val_accuracy"} over the validation split (NaN without one)."""
    if not state.val:
        return {"val_loss": float("nan"), "val_accuracy": float("nan")}
    state.model.eval()
    device = next(state.model.parameters()).device
    loss, correct = 0.0, 0
    for idx in length_grouped_batches([len(x[0]) for x in state.val], batch_size, seed=0):
        m = {k: v.to(device) for k, v in collate([state.val[i] for i in idx], state.tokenizer.pad_token_id).items()}
        logits = logits_of(state.model, m)
        loss += float(torch.nn.functional.cross_entropy(logits, m["labels"], reduction="sum"))
        correct += int((logits.argmax(-1) == m["labels"]).sum())
    state.model.train()
    return {"val_loss": round(loss / len(state.val), 5), "val_accuracy": round(correct / len(state.val), 4)}


def fit(state: ClassifyState, cfg: TrainConfig, log_path: Path | None = None, ckpt_dir: Path | None = None) -> list:
    """The loop: accumulate, clip, step, log loss/accuracy, validate, early-stop, checkpoint."""
    device = next(state.model.parameters()).device
    params = [p for p in state.model.parameters() if p.requires_grad]
    pos = start_position(state, cfg, ckpt_dir)
    log = _open_log(log_path, state.history, cfg) if distributed.is_main() else None
    t0, stop = time.time(), False
    bar = tqdm(total=state.total_steps, initial=pos["step"], desc="classify", unit="step", dynamic_ncols=True,
               disable=not distributed.is_main())
    window = {"loss": 0.0, "steps": 0, "correct": 0, "seen": 0}
    while pos["step"] < state.total_steps and not stop:
        batches = length_grouped_batches([len(x[0]) for x in state.train], cfg.batch_size, state.seed + pos["epoch"])
        for s in range(pos["batch"], len(batches) - cfg.grad_accum + 1, cfg.grad_accum):
            step_idx = batches[s: s + cfg.grad_accum]
            shares = [distributed.share([state.train[i] for i in idx]) for idx in step_idx]  # this rank's examples
            micro = [collate(part, state.tokenizer.pad_token_id) for part in shares if part]
            step_loss, correct = accumulate_gradients(state.model, micro, device)
            distributed.average_gradients(params, cfg.distributed)
            optimizer_step(state, params, cfg.max_grad_norm)
            pos.update(step=pos["step"] + 1, batch=s + cfg.grad_accum)
            seen = sum(len(idx) for idx in step_idx)
            window.update(loss=window["loss"] + step_loss, steps=window["steps"] + 1,
                          correct=window["correct"] + correct, seen=window["seen"] + seen)
            last = pos["step"] >= state.total_steps
            if pos["step"] % cfg.log_every == 0 or last:
                rec = {"step": pos["step"], "epoch": pos["epoch"], "loss": round(window["loss"] / window["steps"], 5),
                       "accuracy": round(window["correct"] / window["seen"], 4),
                       "lr": state.scheduler.get_last_lr()[0], "elapsed_s": round(time.time() - t0, 2)}
                _log(state, log, rec)
                bar.set_postfix(loss=f"{rec['loss']:.4f}", acc=f"{rec['accuracy']:.2f}")
                window = {"loss": 0.0, "steps": 0, "correct": 0, "seen": 0}
            stop = after_step(state, cfg, pos, ckpt_dir, log, last, lambda: evaluate(state, cfg.batch_size))
            bar.update(1)
            if last or stop:
                break
        else:
            pos.update(epoch=pos["epoch"] + 1, batch=0)
    bar.close()
    return finish(state, cfg, pos, ckpt_dir, log, t0, stop, lambda: evaluate(state, cfg.batch_size))


@torch.no_grad()
def predict_logits(state: ClassifyState, texts: list, batch_size: int = 32, max_tokens: int = 256) -> torch.Tensor:
    """[len(texts), num_labels] fp32 scores, in input order (batches sorted by length for little padding)."""
    if not texts:
        return torch.zeros(0, len(state.labels))
    was_training = state.model.training
    state.model.eval()
    device = next(state.model.parameters()).device
    ids = state.tokenizer(list(texts), truncation=True, max_length=max_tokens)["input_ids"]
    out = torch.zeros(len(texts), len(state.labels))
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    for s in range(0, len(order), batch_size):
        idx = order[s: s + batch_size]
        batch = collate([(ids[i], 0) for i in idx], state.tokenizer.pad_token_id)
        out[idx] = logits_of(state.model, {k: v.to(device) for k, v in batch.items()}).cpu()
    state.model.train(was_training)
    return out


def predict(state: ClassifyState, texts: list, batch_size: int = 32) -> list:
    """Label strings for raw input texts."""
    return [state.labels[i] for i in predict_logits(state, texts, batch_size).argmax(-1).tolist()]


def save(state: ClassifyState, run_dir: Path) -> None:
    """adapter/ (peft: LoRA weights + the trained head) and model/ (merged; AutoModelForSequenceClassification
    loads it, with id2label naming the classes). Rank 0 writes; every rank returns once the files exist."""
    if not distributed.is_main():
        distributed.barrier()
        return
    model = state.model
    model.eval()
    if hasattr(model, "merge_and_unload"):
        model.save_pretrained(run_dir / "adapter")
        state.tokenizer.save_pretrained(run_dir / "adapter")
        model = model.merge_and_unload()
    model = model.to(torch.float32)
    model.save_pretrained(run_dir / "model")
    state.tokenizer.save_pretrained(run_dir / "model")
    (run_dir / "model" / "labels.json").write_text(json.dumps(state.labels))
    state.model = model
    distributed.barrier()


def load(model_dir: Path) -> ClassifyState:
    """A saved model/ folder -> a prediction-only state."""
    from transformers import AutoModelForSequenceClassification

    from tuneloop.models.sources import load_tokenizer

    model_dir = Path(model_dir)
    if not (model_dir / "labels.json").is_file():
        raise UserError(f"{model_dir} is not a saved classifier (no labels.json); pass the run's model/ folder")
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    labels = json.loads((model_dir / "labels.json").read_text())
    return ClassifyState(model, load_tokenizer(str(model_dir)), labels, None, None)
