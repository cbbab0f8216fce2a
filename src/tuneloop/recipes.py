"""What `tuneloop run` trains and how each model answers the test split, per `train.recipe`.

    tuneloop run config.yaml --train.recipe classify      # sft (default) | classify | dpo

  sft       causal-LM chat fine-tuning; base and tuned answer by greedy generation.
  classify  a sequence-classification head (encoder such as bundled:minilm-l6, or a decoder); the tuned model
            answers with the head's label; a causal-LM base is still evaluated by generation, an encoder base
            has no way to answer (the MiniLM + logistic-regression reference stands in for "frozen encoder").
  dpo       preference pairs (data.format preference); each model "answers" chosen or rejected by which of
            the two has the higher mean log-probability per token, so accuracy = preference accuracy with CIs.

Every recipe returns a `Trained` whose `answer(rows)` gives strings the task metrics score against
`references(rows)`, so the comparison, gate, report and model card are shared.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from tuneloop.config import RunConfig
from tuneloop.errors import UserError

PREFERENCE_LABELS = ["chosen", "rejected"]


@dataclass
class Trained:
    answer: Callable[[list], list]  # test rows -> answer strings
    model: object  # the tuned causal LM for the log-likelihood bias suites, or None (classifier head)
    probe: Callable[[list], list] | None  # conversations -> answers for the counterfactual probe (None = generate)
    history: list
    steps: int
    examples: int
    precision: str


def task(cfg: RunConfig) -> tuple[str, list | None]:
    """(metric task, labels) the answers are scored with."""
    if cfg.train.recipe == "dpo":
        return "classification", PREFERENCE_LABELS
    return cfg.data.task, (cfg.data.labels if cfg.data.task == "classification" else None)


def references(cfg: RunConfig, rows: list) -> list:
    if cfg.train.recipe == "dpo":
        return ["chosen"] * len(rows)
    return [ex.label if cfg.data.task == "classification" else ex.messages[-1]["content"] for ex in rows]


def generation_answers(model, tok, cfg: RunConfig, desc: str) -> Callable[[list], list]:
    from tuneloop.evaluate.generate import generate

    return lambda rows: generate(model, tok, [ex.messages[:-1] for ex in rows], cfg.eval.max_new_tokens,
                                 cfg.eval.batch_size, desc=desc)


def preference_answers(model, tok, cfg: RunConfig) -> Callable[[list], list]:
    """rows -> "chosen" / "rejected": whichever answer has the higher mean log-probability per token.

    Per token, because a summed log-probability prefers the shorter answer whatever its content."""
    from tuneloop.train import dpo
    from tuneloop.train.batching import length_grouped_batches

    @torch.no_grad()
    def answer(rows: list) -> list:
        items = [dpo.tokenize_pair(tok, dpo.to_pair(r)) for r in rows]
        device, out = next(model.parameters()).device, [""] * len(items)
        was_training = model.training
        model.eval()
        for idx in length_grouped_batches([len(p) for p in items], cfg.eval.batch_size, seed=0):
            chosen, rejected = dpo.pair_logps(model, [items[i] for i in idx], tok.pad_token_id, device)
            for i, c, r in zip(idx, chosen.tolist(), rejected.tolist()):
                out[i] = "chosen" if c / _answer_tokens(items[i].chosen) > r / _answer_tokens(items[i].rejected) \
                    else "rejected"
        model.train(was_training)
        return out

    return answer


def _answer_tokens(tokens: tuple) -> int:
    """Trained (label) tokens of one tokenized answer: (input_ids, labels)."""
    from tuneloop.train.batching import IGNORE

    return max(1, sum(lab != IGNORE for lab in tokens[1]))


def base_answers(cfg: RunConfig, base, tok) -> Callable[[list], list] | None:
    """How the untrained base answers, or None where it cannot (an encoder without a head)."""
    if base is None:
        return None
    if cfg.train.recipe == "dpo":
        return preference_answers(base, tok, cfg)
    return generation_answers(base, tok, cfg, "eval base")


def train_sft(cfg: RunConfig, model_path: str, base, data, out: Path) -> Trained:
    from tuneloop.train import sft

    # fp32 training can reuse the loaded base (peft wraps it in place); bf16 reloads with bf16 frozen weights.
    reuse = base if sft.resolve_precision(cfg.train.precision) == "fp32" else None
    state = sft.setup(model_path, data.splits["train"], data.splits["validation"], cfg.adapter, cfg.train,
                      cfg.seed, model=reuse)
    sft.fit(state, cfg.train, out / "train_log.jsonl", out / "checkpoints")
    sft.save(state, out)
    return Trained(generation_answers(state.model, state.tokenizer, cfg, "eval tuned"), state.model, None,
                   state.history, state.total_steps, len(state.train), state.precision)


def train_classify(cfg: RunConfig, model_path: str, base, data, out: Path) -> Trained:
    from tuneloop.train import classify

    if cfg.data.task != "classification":
        raise UserError("train.recipe classify needs data.task classification (rows with labels)")
    state = classify.setup(model_path, data.splits["train"], data.splits["validation"], cfg.data.labels,
                           cfg.adapter, cfg.train, cfg.seed, max_tokens=cfg.data.max_tokens)
    classify.fit(state, cfg.train, out / "train_log.jsonl", out / "checkpoints")
    classify.save(state, out)
    def probe(conversations: list) -> list:  # the head reads the last user turn, as in training
        return classify.predict(state, [c[-1]["content"] for c in conversations], batch_size=cfg.eval.batch_size)

    return Trained(lambda rows: probe([ex.messages[:-1] for ex in rows]), None, probe, state.history, state.total_steps, len(state.train), state.precision)


def train_dpo(cfg: RunConfig, model_path: str, base, data, out: Path) -> Trained:
    from tuneloop.train import dpo

    if any(getattr(ex, "rejected", None) is None for ex in data.splits["train"]):
        raise UserError("train.recipe dpo needs preference rows (prompt/chosen/rejected): set data.format "
                        "preference")
    state = dpo.setup(model_path, data.splits["train"], data.splits["validation"], cfg.adapter, cfg.train,
                      beta=cfg.train.dpo_beta, seed=cfg.seed)
    dpo.fit(state, cfg.train, out / "train_log.jsonl", out / "checkpoints")
    dpo.save(state, out)
    return Trained(preference_answers(state.model, state.tokenizer, cfg), state.model, None, state.history,
                   state.total_steps, len(state.train), state.precision)


RECIPES = {"sft": train_sft, "classify": train_classify, "dpo": train_dpo}


def check(cfg: RunConfig) -> None:
    if cfg.train.recipe not in RECIPES:
        raise UserError(f"train.recipe '{cfg.train.recipe}' is not one of {', '.join(RECIPES)}")
    if cfg.train.recipe == "dpo" and cfg.data.format not in ("preference", "auto"):
        raise UserError(f"train.recipe dpo needs data.format preference (got {cfg.data.format})")
