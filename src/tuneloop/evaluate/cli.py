"""`tuneloop eval` and `tuneloop compare`: evaluate one model, or a base and a candidate, on a split file.

    tuneloop eval runs/airline-sentiment --data runs/airline-sentiment/data/test.jsonl
    tuneloop compare bundled:smollm2-135m-instruct runs/airline-sentiment \\
        --data runs/airline-sentiment/data/test.jsonl --gate "accuracy>=base+0.05,invalid_rate<=0.02"

A model is a model spec (bundled:..., a Hugging Face folder, a .gguf file), a run folder (its model/ is used,
its training log is charted and its data/train.jsonl feeds the reference baseline), or the base URL of an
OpenAI-compatible endpoint (http://127.0.0.1:8000/v1; answers through the `openai` SDK, no log-likelihoods).
Writes OUT/metrics.json, OUT/answers.jsonl and OUT/report.html (and OUT/judge.jsonl with --judge URL, an
LLM-as-judge grading the candidate against the base: evaluate/judge.py). Exit code 1 when the --gate fails.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path


from tuneloop.errors import UserError


@dataclass
class Target:
    """One model under evaluation: a local causal LM (model + tok) or an endpoint (client + model name)."""

    spec: str
    model: object = None
    tok: object = None
    client: object = None
    endpoint_model: str = ""
    run_dir: Path | None = None
    run_config: dict = field(default_factory=dict)


def load_target(spec: str, endpoint_model: str = "") -> Target:
    if spec.startswith(("http://", "https://")):
        from tuneloop.evaluate.generate import connect

        client, endpoint_model = connect(spec, endpoint_model)
        return Target(spec, client=client, endpoint_model=endpoint_model)
    from tuneloop.models.sources import load_causal_lm

    from tuneloop.run import open_run

    spec_path, cfg = open_run(spec)
    model, tok, _ = load_causal_lm(spec_path)
    return Target(spec, model, tok, run_dir=Path(spec) if cfg is not None else None, run_config=cfg or {})


def answer(t: Target, conversations: list, max_new_tokens: int, batch_size: int, desc: str) -> list:
    """Greedy answers from a local model (batched, KV cache) or an endpoint (8 requests in flight)."""
    if t.client is None:
        from tuneloop.evaluate.generate import generate

        return generate(t.model, t.tok, conversations, max_new_tokens, batch_size, desc=desc)

    def one(msgs):
        r = t.client.chat.completions.create(model=t.endpoint_model, messages=msgs, temperature=0,
                                             max_tokens=max_new_tokens)
        return (r.choices[0].message.content or "").strip()
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, conversations))


def evaluate_target(t: Target, rows: list, ns, name: str) -> tuple:
    """(metrics, answers) for one model: task metrics, throughput, and LM loss for local models."""
    from tuneloop.evaluate.metrics import lm_metrics, task_metrics

    start = time.time()
    answers = answer(t, [ex.messages[:-1] for ex in rows], ns.max_new_tokens, ns.batch_size, f"eval {name}")
    seconds = time.time() - start
    refs = [ex.label if ns.task == "classification" else ex.messages[-1]["content"] for ex in rows]
    metrics = task_metrics(ns.task, refs, answers, ns.labels, ns.schema)
    metrics.update({"model": t.spec, "seconds": round(seconds, 2), "examples_per_s": round(len(rows) / seconds, 2)})
    if t.model is not None:
        metrics["lm"] = lm_metrics(t.model, t.tok, [ex.messages for ex in rows], ns.batch_size)
    return metrics, answers


def _parser(prog: str, doc: str, n_models: int) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=doc)
    for name in (["model"] if n_models == 1 else ["base", "candidate"]):
        p.add_argument(name, help="model spec, run folder, or OpenAI-compatible base URL (http://.../v1)")
    p.add_argument("--data", required=True, help="split JSONL written by tuneloop (e.g. RUN/data/test.jsonl)")
    p.add_argument("--out", default="eval", help="output folder (default: eval)")
    p.add_argument("--task", choices=["auto", "classification", "generation", "json"], default="auto",
                   help="metric set; auto = classification when every row has a label")
    p.add_argument("--labels", help="comma-separated labels (default: the run's data.labels, else the data's)")
    p.add_argument("--schema", help="JSON Schema file for --task json")
    p.add_argument("--train", help="training split for the reference baseline (default: RUN/data/train.jsonl)")
    p.add_argument("--limit", type=int, default=0, help="evaluate the first N rows only (0 = all)")
    p.add_argument("--max-new-tokens", type=int, default=0, help="default: 8 for classification, else 256")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--gate", help="e.g. 'accuracy>=base+0.05,invalid_rate<=0.02'; exit 1 when it fails")
    p.add_argument("--no-bias", action="store_true", help="skip the bias audit")
    p.add_argument("--bias-n", type=int, default=0, help="cap every bias suite at N items (0 = defaults)")
    p.add_argument("--no-reference", action="store_true", help="skip the MiniLM + logistic regression baseline")
    p.add_argument("--endpoint-model", default="", help="model name to request from an endpoint")
    p.add_argument("--seed", type=int, default=0)
    if n_models == 2:
        p.add_argument("--judge", default="", metavar="URL",
                       help="LLM-as-judge: OpenAI-compatible base URL that grades candidate vs base (OUT/judge.jsonl)")
        p.add_argument("--judge-model", default="", help="judge model name (default: the endpoint's first model)")
        p.add_argument("--judge-mode", choices=["pairwise", "rubric"], default="pairwise",
                       help="pairwise (both orders, swapped to cancel position bias) or rubric (1-5 per answer)")
        p.add_argument("--judge-n", type=int, default=50, help="rows sent to the judge, seeded sample (0 = all)")
    return p


def _setup(ns, targets: list) -> list:
    """Load the rows and settle task, labels, schema and generation length."""
    from tuneloop.data.prepare import load_split

    path = Path(ns.data)
    if not path.is_file():
        raise UserError(f"data file not found: {path} (a split JSONL such as RUN/data/test.jsonl)")
    try:
        rows = load_split(path)
    except (json.JSONDecodeError, KeyError) as e:
        raise UserError(f"{path} is not a tuneloop split file ({type(e).__name__}: {e})") from e
    rows = rows[: ns.limit] if ns.limit > 0 else rows
    if not rows:
        raise UserError(f"{path} has no rows")
    if ns.task == "auto":
        ns.task = "classification" if all(ex.label is not None for ex in rows) else "generation"
    run_labels = next((t.run_config.get("data", {}).get("labels") for t in targets if t.run_config), None)
    ns.labels = ns.labels.split(",") if ns.labels else run_labels or sorted({ex.label for ex in rows if ex.label})
    ns.schema = json.loads(Path(ns.schema).read_text()) if ns.schema else None
    ns.max_new_tokens = ns.max_new_tokens or (8 if ns.task == "classification" else 256)
    if ns.task == "classification" and any(ex.label not in ns.labels for ex in rows):
        raise UserError(f"some rows have labels outside {ns.labels}; pass --labels")
    return rows


def _reference(ns, targets: list, rows: list) -> dict | None:
    if ns.no_reference or ns.task != "classification":
        return None
    from tuneloop.data.prepare import load_split
    from tuneloop.evaluate.reference import reference_baseline

    train = Path(ns.train) if ns.train else next((t.run_dir / "data" / "train.jsonl" for t in targets
                                                  if t.run_dir and (t.run_dir / "data" / "train.jsonl").is_file()),
                                                 None)
    if train is None:
        return None
    return reference_baseline(load_split(train), rows, ns.labels, ns.seed)


def _bias(ns, t: Target, rows: list, answers: list) -> dict | None:
    if ns.no_bias:
        return None
    from tuneloop.evaluate.bias import BiasSizes, bias_audit

    sizes = BiasSizes(batch_size=ns.batch_size, max_new_tokens=ns.max_new_tokens)
    if ns.bias_n:
        sizes.counterfactual = sizes.crows_pairs = sizes.bbq = ns.bias_n
    labels = ns.labels if ns.task == "classification" else None
    classify = lambda convs: answer(t, convs, ns.max_new_tokens, ns.batch_size, "bias probe")  # noqa: E731
    return bias_audit(t.model, t.tok, rows, labels, classify, ns.seed, sizes, original_answers=answers)


def _finish(ns, result: dict, rows: list, answers: dict, targets: list) -> int:
    from tuneloop.evaluate.bias import public
    from tuneloop.evaluate.compare import check_gate, parse_gate
    from tuneloop.report.eval_html import write_eval_report

    names = list(answers)
    if ns.gate:
        base = result.get("base") if len(names) == 2 else None
        result["gate"] = {"spec": ns.gate, **check_gate(parse_gate(ns.gate), result[names[-1]], base)}
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    saved = {k: (v if k not in ("bias",) else {m: public(b) for m, b in v.items()}) for k, v in result.items()}
    if isinstance(saved.get("reference"), dict):
        saved["reference"] = {k: v for k, v in saved["reference"].items() if k not in ("answers", "predictions")}
    for name in names:
        saved[name] = {k: v for k, v in saved[name].items() if k != "predictions"}
    (out / "metrics.json").write_text(json.dumps(saved, indent=2))
    with open(out / "answers.jsonl", "w", encoding="utf-8") as f:
        for i, ex in enumerate(rows):
            rec = {"input": ex.messages[-2]["content"], "reference": ex.messages[-1]["content"]}
            f.write(json.dumps({**rec, **{f"{n}_answer": answers[n][i] for n in names}}, ensure_ascii=False) + "\n")
    history = _history(next((t.run_dir for t in reversed(targets) if t.run_dir), None))
    write_eval_report(out, result, rows, answers, history)
    print(f"[tuneloop] wrote {out / 'metrics.json'} and {out / 'report.html'}")
    if "gate" in result:
        for c in result["gate"]["clauses"]:
            print(f"[tuneloop] gate {c['clause']}: {c['value']:.4f} vs {c['threshold']:.4f} "
                  f"{'ok' if c['passed'] else 'FAILED'}")
        return 0 if result["gate"]["passed"] else 1
    return 0


def _history(run_dir: Path | None) -> list:
    log = run_dir / "train_log.jsonl" if run_dir else None
    if not log or not log.is_file():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def _header(ns, rows: list, targets: list) -> dict:
    return {"task": ns.task, "labels": ns.labels if ns.task == "classification" else None, "data": str(ns.data),
            "n": len(rows), "seed": ns.seed, "models": {n: t.spec for n, t in targets}}


def cmd_eval(args: list) -> int:
    """Evaluate one model on a split file: task metrics, bias audit, reference baseline, HTML report."""
    ns = _parser("tuneloop eval", cmd_eval.__doc__, 1).parse_args(args)
    t = load_target(ns.model, ns.endpoint_model)
    rows = _setup(ns, [t])
    result = _header(ns, rows, [("model", t)])
    result["model"], answers = evaluate_target(t, rows, ns, "model")
    ref = _reference(ns, [t], rows)
    if ref:
        result["reference"] = ref
    bias = _bias(ns, t, rows, answers)
    if bias:
        result["bias"] = {"model": bias}
    return _finish(ns, result, rows, {"model": answers}, [t])


def cmd_compare(args: list) -> int:
    """Compare a base and a candidate model: metric deltas with 95% CIs, McNemar, diffs, bias, gate."""
    from tuneloop.evaluate.compare import bias_deltas, compare_predictions

    ns = _parser("tuneloop compare", cmd_compare.__doc__, 2).parse_args(args)
    if ns.judge:  # fail on a bad judge URL before spending minutes on generation
        from tuneloop.evaluate.judge import connect

        ns.judge_model = connect(ns.judge, ns.judge_model)[1]
    targets = [("base", load_target(ns.base, ns.endpoint_model)),
               ("tuned", load_target(ns.candidate, ns.endpoint_model))]
    rows = _setup(ns, [t for _, t in targets])
    result, answers = _header(ns, rows, targets), {}
    for name, t in targets:
        result[name], answers[name] = evaluate_target(t, rows, ns, name)
    refs = [ex.label if ns.task == "classification" else ex.messages[-1]["content"] for ex in rows]
    result.update(compare_predictions(refs, answers["base"], answers["tuned"], ns.labels, ns.seed, ns.task))
    ref = _reference(ns, [t for _, t in targets], rows)
    if ref:
        result["reference"] = ref
    if not ns.no_bias:
        per_model = {name: _bias(ns, t, rows, answers[name]) for name, t in targets}
        result["bias"] = {**per_model, "delta": bias_deltas(per_model["base"], per_model["tuned"], ns.seed)}
    if ns.judge:
        from tuneloop.evaluate.judge import judge

        result["judge"] = judge(ns.judge, ns.judge_model, [ex.messages[:-1] for ex in rows], answers["base"],
                                answers["tuned"], ns.judge_mode, ns.judge_n, ns.seed,
                                [ex.messages[-1]["content"] for ex in rows], Path(ns.out) / "judge.jsonl")
    return _finish(ns, result, rows, answers, [t for _, t in targets])
