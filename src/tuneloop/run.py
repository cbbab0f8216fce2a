"""The main job: prepare data -> evaluate base -> train -> evaluate tuned -> report -> model card.

    tuneloop run examples/airline-sentiment/config.yaml [--train.lr 1e-4 ...]

The run folder is the hand-off to every later stage (chat, serve, export); see RUN_FILES.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import yaml

from tuneloop.config import RunConfig, to_dict

# The run folder's contract (tested): every file and folder a finished run leaves at its top level
# (plus checkpoints/ when train.save_every > 0).
RUN_FILES = ("README.md", "adapter", "config.yaml", "data", "metrics.json", "model", "report.html",
             "samples.jsonl", "train_log.jsonl")
DATA_FILES = ("dropped.jsonl", "manifest.json", "rejected.jsonl", "report.html", "test.jsonl", "train.jsonl",
              "validation.jsonl")


def open_run(target: str) -> tuple[str, dict | None]:
    """(model path, run config) for a finished run folder (its merged model/), else (target, None).

    How chat, eval and serve accept "a run folder or any model spec" in one place."""
    from tuneloop.errors import UserError

    run_dir = Path(target)
    if not (run_dir / "config.yaml").is_file():
        return target, None
    if not (run_dir / "model" / "config.json").is_file():
        raise UserError(f"{run_dir} has no model/ yet (did the run finish?)")
    return str(run_dir / "model"), yaml.safe_load((run_dir / "config.yaml").read_text()) or {}


def _say(msg: str) -> None:
    print(f"[tuneloop] {msg}", flush=True)


def evaluate_model(model, tok, rows: list, cfg: RunConfig, desc: str) -> tuple[dict, list]:
    from tuneloop.evaluate.generate import generate
    from tuneloop.evaluate.metrics import classification_metrics

    t = time.time()
    answers = generate(model, tok, [ex.messages[:-1] for ex in rows], cfg.eval.max_new_tokens,
                       cfg.eval.batch_size, desc=desc)
    seconds = time.time() - t
    metrics = classification_metrics([ex.label for ex in rows], answers, cfg.data.labels)
    metrics.update(seconds=round(seconds, 1), examples_per_s=round(len(rows) / max(seconds, 1e-9), 2))
    return metrics, answers


def preflight(cfg: RunConfig) -> None:
    """Fail in a second, before loading any model, on problems the user can fix."""
    from tuneloop.data.formats import check_source

    check_source(cfg.data.source)


def run(cfg: RunConfig) -> dict:
    from tuneloop.data.prepare import prepare
    from tuneloop.errors import UserError
    from tuneloop.models.sources import load_causal_lm
    from tuneloop.report.html import write_report
    from tuneloop.report.model_card import write_model_card
    from tuneloop.train import sft

    preflight(cfg)
    start = time.time()
    timings: dict = {}
    out = Path(cfg.output_dir)
    if cfg.train.resume:
        if not (out / "checkpoints").is_dir():
            raise UserError(f"train.resume: no checkpoints in {out}/checkpoints to resume from")
    elif out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)

    t = time.time()
    base, tok, info = load_causal_lm(cfg.model.base, cfg.model.revision)
    timings["load_model_s"] = round(time.time() - t, 1)
    _say(f"base model {info.spec} -> {info.path}")

    t = time.time()
    data = prepare(cfg.data, tok, out / "data", cfg.seed)
    timings["data_s"] = round(time.time() - t, 1)
    c = data.ledger
    _say(f"data: {c.input} rows in, {c.kept} kept, rejected {dict(c.rejected)}, dropped {dict(c.dropped)}")
    _say("splits: " + ", ".join(f"{k}={len(v)}" for k, v in data.splits.items()))
    (out / "config.yaml").write_text(yaml.safe_dump({**to_dict(cfg), "resolved_model": info.to_dict()},
                                                    sort_keys=False))
    test = data.splits["test"]

    results: dict = {}
    answers: dict = {}
    if cfg.eval.evaluate_base:
        t = time.time()
        results["base"], answers["base"] = evaluate_model(base, tok, test, cfg, "eval base")
        timings["eval_base_s"] = round(time.time() - t, 1)
        _say(_fmt("base", results["base"]))
    bias: dict = {}
    if cfg.eval.bias and cfg.eval.evaluate_base:  # before training: peft wraps the base model in place
        bias["base"] = _bias(base, tok, test, cfg, answers["base"], timings, "base")

    t = time.time()
    state = sft.setup(info.path, data.splits["train"], data.splits["validation"], cfg.adapter, cfg.train,
                      cfg.seed, model=base if sft.resolve_precision(cfg.train.precision) == "fp32" else None)
    _say(f"training {cfg.adapter.method} for {state.total_steps} steps on {len(state.train)} examples "
         f"({state.precision})")
    sft.fit(state, cfg.train, out / "train_log.jsonl", out / "checkpoints")
    sft.save(state, out)
    timings["train_s"] = round(time.time() - t, 1)

    t = time.time()
    results["tuned"], answers["tuned"] = evaluate_model(state.model, tok, test, cfg, "eval tuned")
    timings["eval_tuned_s"] = round(time.time() - t, 1)
    _say(_fmt("tuned", results["tuned"]))
    if "base" in bias:
        bias["tuned"] = _bias(state.model, tok, test, cfg, answers["tuned"], timings, "tuned")
    extra = _comparison(cfg, data.splits["train"], test, answers, bias, timings)

    timings["total_s"] = round(time.time() - start, 1)
    metrics = {k: {m: v for m, v in r.items() if m != "predictions"} for k, r in results.items()}
    metrics.update(extra["metrics"])
    metrics.update({"task": cfg.data.task, "labels": cfg.data.labels, "base_model": info.spec,
                    "data_sha256": data.manifest["data_sha256"], "timings": timings,
                    "train": {"steps": state.total_steps, "examples": len(state.train), "precision": state.precision,
                              "final_val_loss": state.history[-1].get("val_loss")}})
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    _write_samples(out / "samples.jsonl", test, answers, results, cfg.eval.samples)
    write_report(out, metrics, state.history, data.manifest, extra["bias_report"])
    write_model_card(out, cfg, info, metrics, data.manifest)
    _say(f"done in {timings['total_s']:.0f}s: {out}")
    return metrics


def _bias(model, tok, test: list, cfg: RunConfig, answers: list, timings: dict, name: str) -> dict:
    from tuneloop.evaluate.bias import BiasSizes, bias_audit

    t = time.time()
    sizes = BiasSizes(counterfactual=cfg.eval.bias_counterfactual, crows_pairs=cfg.eval.bias_crows_pairs,
                      bbq=cfg.eval.bias_bbq, batch_size=cfg.eval.batch_size)
    labels = cfg.data.labels if cfg.data.task == "classification" else None
    audit = bias_audit(model, tok, test, labels, seed=cfg.seed, sizes=sizes, original_answers=answers)
    timings[f"bias_{name}_s"] = round(time.time() - t, 1)
    _say(f"bias {name}: " + ", ".join(f"{k}={v.get('score')} (n={v.get('n')})" for k, v in audit.items()))
    return audit


def _comparison(cfg: RunConfig, train: list, test: list, answers: dict, bias: dict, timings: dict) -> dict:
    """Deltas with paired-bootstrap CIs, McNemar, the cheap reference baseline and bias deltas."""
    from tuneloop.evaluate.bias import public
    from tuneloop.evaluate.compare import bias_deltas, compare_predictions

    out: dict = {}
    labels = cfg.data.labels if cfg.data.task == "classification" else None
    refs = [ex.label if labels else ex.messages[-1]["content"] for ex in test]
    if "base" in answers:
        cmp = compare_predictions(refs, answers["base"], answers["tuned"], labels, seed=cfg.seed, task=cfg.data.task)
        out.update(delta=cmp["delta"], mcnemar=cmp["mcnemar"], diffs=cmp["diffs"])
    if cfg.eval.reference and labels:
        from tuneloop.evaluate.reference import reference_baseline

        t = time.time()
        ref = reference_baseline(train, test, labels, seed=cfg.seed)
        out["reference"] = {k: v for k, v in ref.items() if k not in ("answers", "predictions")}
        timings["reference_s"] = round(time.time() - t, 1)
        _say(_fmt("reference", {**out["reference"], "examples_per_s": "-"}))
    bias_report = None
    if "tuned" in bias:
        out["bias"] = bias_deltas(bias["base"], bias["tuned"], seed=cfg.seed)
        bias_report = {"base": bias["base"], "tuned": bias["tuned"], "delta": out["bias"]}
        out["bias_detail"] = {k: public(v) for k, v in bias.items()}
    return {"metrics": out, "bias_report": bias_report}


def _fmt(name: str, m: dict) -> str:
    return (f"{name}: n={m['n']} accuracy={m['accuracy']:.3f} macro_f1={m['macro_f1']:.3f} "
            f"invalid_rate={m['invalid_rate']:.3f} ({m['examples_per_s']} ex/s)")


def _write_samples(path: Path, rows: list, answers: dict, results: dict, limit: int) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for i, ex in enumerate(rows if limit < 0 else rows[:limit]):
            rec = {"input": ex.messages[-2]["content"], "reference": ex.messages[-1]["content"]}
            for name in answers:
                rec[f"{name}_answer"] = answers[name][i]
                rec[f"{name}_prediction"] = results[name]["predictions"][i]
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
