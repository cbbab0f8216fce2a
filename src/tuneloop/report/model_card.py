"""The run folder's README.md: a model card (what was trained, on what, how, how well, and its limits)."""

from __future__ import annotations

from pathlib import Path

from tuneloop.config import RunConfig


REFERENCE_NOTE = """
The reference is frozen MiniLM embeddings + logistic regression on the same training split: when it matches
the tuned model, the LLM fine-tune is not worth its cost.
"""


def write_model_card(run_dir: Path, cfg: RunConfig, info, metrics: dict, manifest: dict) -> Path:
    a, t = cfg.adapter, cfg.train
    method = f"{a.method.upper()} (r={a.r}, alpha={a.alpha}, dropout={a.dropout}, targets={a.target_modules})" \
        if a.method != "full" else "full fine-tuning"
    models = [k for k in ("base", "tuned", "reference") if k in metrics]
    rows = []
    for m in ("accuracy", "macro_f1", "invalid_rate"):
        d = metrics.get("delta", {}).get(m)
        delta = f" | {d['value']:+.3f} [{d['ci95'][0]:.3f}, {d['ci95'][1]:.3f}]" if d else ""
        rows.append(f"| {m} | " + " | ".join(f"{metrics[k][m]:.3f}" for k in models) + delta + " |")
    bias = "".join(f"\n| {suite} | {_num(v.get('base'))} | {_num(v.get('tuned'))} | {v.get('n')} |"
                   for suite, v in metrics.get("bias", {}).items())
    splits = ", ".join(f"{k} {v['n']}" for k, v in manifest["splits"].items())
    text = f"""# {cfg.name}

Fine-tuned by [tuneloop](https://pypi.org/project/tuneloop/) from **{info.spec}**
(weights: `{info.origin}`{f", sha256 `{info.sha256[:16]}`" if info.sha256 else ""}).

## Use

```bash
tuneloop chat {run_dir}                      # interactive, with the training system message
python -c "from transformers import AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained('{run_dir}/model')"
```

`model/` holds merged weights (plain transformers); `adapter/` the {a.method.upper()} adapter for the base (peft).

## Training

- Task: {cfg.data.task}{f" over labels {cfg.data.labels}" if cfg.data.labels else ""}
- Data: `{cfg.data.source}` (source sha256 `{manifest['source_sha256'][:16]}`), splits {splits};
  split data sha256 `{manifest['data_sha256'][:16]}`. Rows in: {manifest['counts']['input']}, rejected:
  {manifest['counts']['rejected'] or 'none'}, dropped: {manifest['counts']['dropped'] or 'none'}.
- Method: {method}; loss on assistant tokens only.
- Hyperparameters: lr {t.lr}, {t.schedule} schedule, warmup {t.warmup_ratio}, batch {t.batch_size} x
  accumulation {t.grad_accum}, {metrics['train']['steps']} steps, precision {metrics['train']['precision']},
  seed {cfg.seed}.
- System message: "{cfg.data.instruction}"

## Evaluation (held-out test split)

| metric | {" | ".join(models)}{" | tuned - base [95% CI]" if "delta" in metrics else ""} |
|---|{"---|" * (len(models) + ("delta" in metrics))}
{chr(10).join(rows)}
{REFERENCE_NOTE if "reference" in metrics else ""}{"" if not bias else chr(10) + "Bias audit (see report.html for CIs):" + chr(10) + chr(10) + "| suite | base | tuned | n |" + chr(10) + "|---|---|---|---|" + bias + chr(10)}
Invalid answers (not mapping to exactly one label) count as wrong. Full numbers: `metrics.json`; per-example
answers: `samples.jsonl`; charts: `report.html`.

## Limitations

- Evaluated only on a held-out split of the same source; expect lower scores on other domains or phrasing.
- A {info.spec} model is small: it can be confidently wrong, and it inherits the base model's biases and the
  labelling biases of its training data (labels here came from annotators, with their own errors).
- Outside the trained task (the system message above) the model behaves like its base model.
"""
    path = run_dir / "README.md"
    path.write_text(text, encoding="utf-8")
    return path


def _num(x) -> str:
    return f"{x:.3f}" if isinstance(x, (int, float)) else "-"
