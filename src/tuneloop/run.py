"""The main job: prepare data -> evaluate base -> train -> evaluate tuned -> report -> model card.

    tuneloop run examples/airline-sentiment/config.yaml [--train.lr 1e-4 ...]

The run folder is the hand-off to every later stage (chat, serve, export); see RUN_FILES.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import yaml

from tuneloop.config import RunConfig, to_dict

# The run folder's contract (tested): every file and folder a finished run leaves at its top level
# (plus checkpoints/ when train.save_every > 0, judge.jsonl with eval.judge_url, tensorboard/ and mlruns/ with
# train.report_to; adapter/ only with a lora/dora adapter).
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


def _prepare(cfg: RunConfig, tok, out: Path, main: bool):
    """The data stage into RUN/data on rank 0; every other rank prepares the same seeded splits (held in
    memory) in a scratch folder that is removed at once."""
    from tuneloop.data.prepare import prepare

    if main:
        return prepare(cfg.data, tok, out / "data", cfg.seed)
    with tempfile.TemporaryDirectory(prefix="tuneloop-rank") as scratch:
        return prepare(cfg.data, tok, Path(scratch), cfg.seed)


def _say(msg: str) -> None:
    from tuneloop.train import distributed

    if distributed.is_main():  # one voice under torchrun
        print(f"[tuneloop] {msg}", flush=True)


def evaluate_model(answer, rows: list, cfg: RunConfig) -> tuple[dict, list]:
    """Task metrics of one model's answers on rows, with its examples/s."""
    from tuneloop import recipes
    from tuneloop.evaluate.metrics import task_metrics

    t = time.time()
    answers = answer(rows)
    seconds = time.time() - t
    task, labels = recipes.task(cfg)
    metrics = task_metrics(task, recipes.references(cfg, rows), answers, labels)
    metrics.update(seconds=round(seconds, 1), examples_per_s=round(len(rows) / max(seconds, 1e-9), 2))
    return metrics, answers


def preflight(cfg: RunConfig) -> None:
    """Fail in a second, before loading any model, on problems the user can fix."""
    from tuneloop import recipes
    from tuneloop.data.formats import check_source
    from tuneloop.errors import UserError

    recipes.check(cfg)
    check_source(cfg.data.source)
    if cfg.eval.judge_url:
        from tuneloop.evaluate.judge import MODES, connect

        if cfg.eval.judge_mode not in MODES:
            raise UserError(f"eval.judge_mode '{cfg.eval.judge_mode}' is not one of {', '.join(MODES)}")
        if cfg.train.recipe != "sft":
            raise UserError("eval.judge_url grades generated answers: it needs train.recipe sft")
        cfg.eval.judge_model = connect(cfg.eval.judge_url, cfg.eval.judge_model)[1]  # a dead URL fails now


def load_base(cfg: RunConfig):
    """(causal LM or None, tokenizer, ModelInfo): an encoder base (classify recipe) has no LM to load."""
    from transformers import AutoConfig

    from tuneloop.models.sources import load_causal_lm, load_tokenizer, resolve

    info = resolve(cfg.model.base, cfg.model.revision)
    archs = AutoConfig.from_pretrained(info.path).architectures or []
    if cfg.train.recipe == "classify" and not any(a.endswith("ForCausalLM") for a in archs):
        return None, load_tokenizer(info.path), info
    model, tok, _ = load_causal_lm(info.path)
    return model, tok, info


def run(cfg: RunConfig) -> dict:
    from tuneloop import recipes
    from tuneloop.errors import UserError
    from tuneloop.report.html import write_report
    from tuneloop.report.model_card import write_model_card
    from tuneloop.train import distributed

    distributed.init()  # under torchrun / accelerate launch: join the group; one process: no-op
    main = distributed.is_main()
    preflight(cfg)
    start = time.time()
    timings: dict = {}
    out = Path(cfg.output_dir)
    if cfg.train.resume:
        if not (out / "checkpoints").is_dir():
            raise UserError(f"train.resume: no checkpoints in {out}/checkpoints to resume from")
    elif out.exists() and main:
        shutil.rmtree(out)
    if main:
        out.mkdir(parents=True, exist_ok=True)
    distributed.barrier()

    t = time.time()
    base, tok, info = load_base(cfg)
    timings["load_model_s"] = round(time.time() - t, 1)
    _say(f"base model {info.spec} -> {info.path}")

    t = time.time()
    data = _prepare(cfg, tok, out, main)
    timings["data_s"] = round(time.time() - t, 1)
    c = data.ledger
    _say(f"data: {c.input} rows in, {c.kept} kept, rejected {dict(c.rejected)}, dropped {dict(c.dropped)}")
    _say("splits: " + ", ".join(f"{k}={len(v)}" for k, v in data.splits.items()))
    if main:
        (out / "config.yaml").write_text(yaml.safe_dump({**to_dict(cfg), "resolved_model": info.to_dict()},
                                                        sort_keys=False))
    test = data.splits["test"]

    results: dict = {}
    answers: dict = {}
    bias: dict = {}
    base_answer = recipes.base_answers(cfg, base, tok) if cfg.eval.evaluate_base and main else None
    if base_answer is not None:
        t = time.time()
        results["base"], answers["base"] = evaluate_model(base_answer, test, cfg)
        timings["eval_base_s"] = round(time.time() - t, 1)
        _say(_fmt("base", results["base"]))
        if cfg.eval.bias:  # before training: peft wraps the base model in place
            bias["base"] = _bias(base, tok, test, cfg, answers["base"], None, timings, "base")

    t = time.time()
    _say(f"training {cfg.train.recipe} ({cfg.adapter.method}) on {info.spec}")
    trained = recipes.RECIPES[cfg.train.recipe](cfg, info.path, base, data, out)  # every rank trains
    timings["train_s"] = round(time.time() - t, 1)
    if not main:  # rank 0 alone evaluates and reports
        distributed.close()
        return {}
    _say(f"trained {trained.steps} steps on {trained.examples} examples ({trained.precision})")

    t = time.time()
    results["tuned"], answers["tuned"] = evaluate_model(trained.answer, test, cfg)
    timings["eval_tuned_s"] = round(time.time() - t, 1)
    _say(_fmt("tuned", results["tuned"]))
    if "base" in bias:
        bias["tuned"] = _bias(trained.model, tok, test, cfg, answers["tuned"], trained.probe, timings, "tuned")
    extra = _comparison(cfg, data.splits["train"], test, answers, bias, timings)

    if cfg.eval.judge_url and "base" in answers:
        from tuneloop.evaluate.judge import judge

        t = time.time()
        extra["metrics"]["judge"] = judge(
            cfg.eval.judge_url, cfg.eval.judge_model, [ex.messages[:-1] for ex in test], answers["base"],
            answers["tuned"], mode=cfg.eval.judge_mode, n=cfg.eval.judge_n, seed=cfg.seed,
            references=[ex.messages[-1]["content"] for ex in test], out_path=out / "judge.jsonl")
        timings["judge_s"] = round(time.time() - t, 1)

    timings["total_s"] = round(time.time() - start, 1)
    metrics = {k: {m: v for m, v in r.items() if m != "predictions"} for k, r in results.items()}
    metrics.update(extra["metrics"])
    task, labels = recipes.task(cfg)
    metrics.update({"task": task, "labels": labels, "recipe": cfg.train.recipe, "base_model": info.spec,
                    "data_sha256": data.manifest["data_sha256"], "timings": timings,
                    "train": {"steps": trained.steps, "examples": trained.examples, "precision": trained.precision,
                              "final_val_loss": trained.history[-1].get("val_loss")}})
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    _write_samples(out / "samples.jsonl", test, answers, results, cfg.eval.samples)
    write_report(out, metrics, trained.history, data.manifest, extra["bias_report"])
    write_model_card(out, cfg, info, metrics, data.manifest)
    _say(f"done in {timings['total_s']:.0f}s: {out}")
    distributed.close()
    return metrics


def _bias(model, tok, test: list, cfg: RunConfig, answers: list, probe, timings: dict, name: str) -> dict:
    """Bias audit of one model; `probe` answers conversations where the model cannot generate (a head)."""
    from tuneloop.evaluate.bias import BiasSizes, bias_audit

    t = time.time()
    sizes = BiasSizes(counterfactual=cfg.eval.bias_counterfactual, crows_pairs=cfg.eval.bias_crows_pairs,
                      bbq=cfg.eval.bias_bbq, batch_size=cfg.eval.batch_size)
    # Counterfactual flips need one label per answer; preference answers (chosen/rejected) are not about the
    # text, so DPO models are probed by generation (output shift), like generation tasks.
    labels = cfg.data.labels if cfg.data.task == "classification" and cfg.train.recipe != "dpo" else None
    audit = bias_audit(model, tok, test, labels, classify_fn=probe, seed=cfg.seed, sizes=sizes,
                       original_answers=None if cfg.train.recipe == "dpo" else answers)
    timings[f"bias_{name}_s"] = round(time.time() - t, 1)
    _say(f"bias {name}: " + ", ".join(f"{k}={v.get('score')} (n={v.get('n')})" for k, v in audit.items()))
    return audit


def _comparison(cfg: RunConfig, train: list, test: list, answers: dict, bias: dict, timings: dict) -> dict:
    """Deltas with paired-bootstrap CIs, McNemar, the cheap reference baseline and bias deltas."""
    from tuneloop import recipes
    from tuneloop.evaluate.bias import public
    from tuneloop.evaluate.compare import bias_deltas, compare_predictions

    out: dict = {}
    task, labels = recipes.task(cfg)
    if "base" in answers:
        cmp = compare_predictions(recipes.references(cfg, test), answers["base"], answers["tuned"], labels,
                                  seed=cfg.seed, task=task)
        out.update(delta=cmp["delta"], mcnemar=cmp["mcnemar"], diffs=cmp["diffs"])
    if cfg.eval.reference and labels and cfg.train.recipe != "dpo":
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
    keys = [k for k in ("accuracy", "macro_f1", "invalid_rate", "exact_match", "token_f1", "rouge_l", "chrf")
            if isinstance(m.get(k), (int, float))]
    return (f"{name}: n={m['n']} " + " ".join(f"{k}={m[k]:.3f}" for k in keys)
            + f" ({m['examples_per_s']} ex/s)")


def _write_samples(path: Path, rows: list, answers: dict, results: dict, limit: int) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for i, ex in enumerate(rows if limit < 0 else rows[:limit]):
            rec = {"input": ex.messages[-2]["content"], "reference": ex.messages[-1]["content"]}
            for name in answers:
                rec[f"{name}_answer"] = answers[name][i]
                if "predictions" in results[name]:
                    rec[f"{name}_prediction"] = results[name]["predictions"][i]
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
