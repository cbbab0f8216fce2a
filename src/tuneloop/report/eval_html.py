"""The evaluation report: one self-contained HTML file (charts as base64 PNG, no network).

    write_eval_report(Path("eval"), result, rows, answers, history)   # -> eval/report.html

`result` is what `tuneloop eval` / `tuneloop compare` save as metrics.json (before the private per-item vectors
are dropped): model sections ("model", or "base" and "tuned"), optional "reference", "delta", "mcnemar",
"diffs", "bias", "judge" and "gate". The section builders (metric_section, bias_section, diff_section,
judge_section) also serve the run report.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from tuneloop.report.html import _table, confusion_table, figure_to_img, loss_chart, subplots, write_page

HEADLINE = {"classification": ("accuracy", "macro_f1", "invalid_rate"),
            "generation": ("exact_match", "token_f1", "rouge_l", "bleu", "chrf"),
            "json": ("valid_rate", "schema_match_rate", "exact_match")}
MODELS = ("model", "base", "tuned")
DIFF_ROWS = 20  # examples shown per diff group


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def _ci(d: dict | None) -> str:
    if not d or d.get("ci95") is None:
        return "–"
    lo, hi = d["ci95"]
    return f"[{lo:+.3f}, {hi:+.3f}]"


def metric_section(result: dict) -> str:
    """Metric table (models, delta with its 95% CI, reference) and a bar chart."""
    task = result.get("task", "classification")
    names = [n for n in MODELS if n in result]
    has_ref = "reference" in result
    header = ["metric"] + [f"{n} (n={result[n]['n']})" for n in names]
    header += (["delta", "95% CI"] if "delta" in result else []) + (["reference"] if has_ref else [])
    rows = []
    for m in HEADLINE[task]:
        row = [m] + [_fmt(result[n].get(m)) for n in names]
        if "delta" in result:
            d = result["delta"].get(m)
            row += [f"{d['value']:+.3f}" if d else "–", _ci(d)]
        rows.append(row + ([_fmt(result["reference"].get(m))] if has_ref else []))
    for n in names:
        if "lm" in result[n]:
            rows.append([f"{n}: loss / perplexity", f"{result[n]['lm']['loss']:.3f} / "
                                                    f"{result[n]['lm']['perplexity']:.1f}"]
                        + [""] * (len(header) - 2))
    speed = ", ".join(f"{n}: {result[n].get('examples_per_s', '–')} ex/s" for n in names)
    parts = [_table(rows, header), f"<p>Throughput: {html.escape(speed)}.</p>"]
    if "mcnemar" in result:
        mc = result["mcnemar"]
        parts.append(f"<p>McNemar's exact test: {mc['fixed']} fixed, {mc['broken']} broken, "
                     f"p = {mc['p_value']:.4g}.</p>")
    if has_ref:
        ref = result["reference"]
        parts.append(f"<p>Reference: {html.escape(ref['model'])} trained on {ref['n_train']} examples in "
                     f"{ref['seconds']} s. If it matches the fine-tuned LLM, the LLM is not worth its cost.</p>")
    parts.append(_metric_chart(result, names + (["reference"] if has_ref else []), HEADLINE[task]))
    return "".join(parts)


def _metric_chart(result: dict, names: list, metrics: tuple) -> str:
    fig, ax = subplots(figsize=(6.5, 3.2))
    width = 0.8 / len(names)
    for i, n in enumerate(names):
        vals = [float(result[n].get(m) or 0.0) for m in metrics]
        bars = ax.bar([x + i * width for x in range(len(metrics))], vals, width, label=n)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks([x + width * (len(names) - 1) / 2 for x in range(len(metrics))], metrics)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return figure_to_img(fig)


def confusion_section(result: dict) -> str:
    names = [n for n in (*MODELS, "reference") if n in result and "confusion" in result[n]]
    return "".join(f"<h3>{n}</h3>{confusion_table(result[n])}" for n in names) or "<p>Not a classification task.</p>"


def bias_section(bias: dict) -> str:
    """Table per suite (score per model, delta with CI, n) and a chart with 95% CI error bars."""
    names = [n for n in MODELS if n in bias]
    suites = sorted({s for n in names for s in bias[n]})
    delta = bias.get("delta", {})
    rows = []
    for s in suites:
        first = bias[names[0]].get(s, {})
        row = [s, first.get("measure", first.get("note", ""))]
        row += [f"{_fmt(bias[n][s].get('score'))} {_ci(bias[n][s])}" for n in names]
        row += [f"{delta[s]['delta']['value']:+.3f} {_ci(delta[s]['delta'])}" if "delta" in delta.get(s, {})
                else "–"] if delta else []
        rows.append(row + [first.get("n", 0)])
    header = ["suite", "measure"] + names + (["delta (95% CI)"] if delta else []) + ["n"]
    extra = []
    for n in names:
        bbq = bias[n].get("bbq", {})
        if bbq.get("n"):
            extra.append(f"<p>BBQ {n}: accuracy {_fmt(bbq['accuracy_ambiguous'])} on {bbq['n_ambiguous']} "
                         f"ambiguous and {_fmt(bbq['accuracy_disambiguated'])} on {bbq['n_disambiguated']} "
                         "disambiguated contexts.</p>")
    return _table(rows, header) + "".join(extra) + _bias_chart(bias, names, suites) + _flip_examples(bias, names)


def _bias_chart(bias: dict, names: list, suites: list) -> str:
    suites = [s for s in suites if any(bias[n].get(s, {}).get("score") is not None for n in names)]
    if not suites:
        return ""
    fig, ax = subplots(figsize=(6.5, 3.0))
    width = 0.8 / len(names)
    for i, n in enumerate(names):
        res = [bias[n].get(s, {}) for s in suites]
        vals = np.array([r.get("score") or 0.0 for r in res])
        lo = np.array([(r.get("ci95") or [v, v])[0] for r, v in zip(res, vals)])
        hi = np.array([(r.get("ci95") or [v, v])[1] for r, v in zip(res, vals)])
        ax.bar([x + i * width for x in range(len(suites))], vals, width, label=n,
               yerr=[np.maximum(vals - lo, 0), np.maximum(hi - vals, 0)], capsize=3)
    ax.set_xticks([x + width * (len(names) - 1) / 2 for x in range(len(suites))], suites)
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return figure_to_img(fig)


def _flip_examples(bias: dict, names: list) -> str:
    rows = [[n, e["category"], e["original"], e["swapped"], e["original_answer"], e["swapped_answer"]]
            for n in names for e in bias[n].get("counterfactual", {}).get("examples", [])[:5]]
    if not rows:
        return ""
    return "<h3>Counterfactual changes</h3>" + _table(rows, ["model", "category", "input", "swapped input",
                                                              "answer", "answer after swap"])


def diff_section(result: dict, rows: list, answers: dict) -> str:
    """Counts of fixed / broken / both wrong / both right, and the fixed and broken examples."""
    diffs = result["diffs"]
    parts = [_table([[k.replace("_", " "), v["n"]] for k, v in diffs.items()], ["outcome", "examples"])]
    for group in ("fixed", "broken"):
        idx = diffs[group]["index"][:DIFF_ROWS]
        if idx:
            table = [[i, rows[i].messages[-2]["content"], rows[i].messages[-1]["content"], answers["base"][i],
                      answers["tuned"][i]] for i in idx]
            parts.append(f"<h3>{group} (first {len(idx)} of {diffs[group]['n']})</h3>"
                         + _table(table, ["#", "input", "reference", "base answer", "tuned answer"]))
    return "".join(parts)


def judge_section(j: dict) -> str:
    """LLM-as-judge: rates (tuned = B over base = A) with 95% CIs, bias checks, and the first items' verdicts."""
    if j["mode"] == "pairwise":
        rows = [[k.replace("_", " "), _fmt(j[k]["value"]), _ci(j[k])]
                for k in ("win_rate", "tie_rate", "loss_rate", "win_minus_loss")]
        rows += [["position consistency", _fmt(j["position_consistency"]), "–"],
                 ["first-position rate (0.5 = no position bias)", _fmt(j["first_position_rate"]), "–"]]
        cols = ["#", "input", "base answer", "tuned answer", "verdict, base shown first",
                "verdict, tuned shown first", "outcome"]
        ex = [[e["index"], e["input"], e["answer_a"], e["answer_b"], e["verdict_ab"], e["verdict_ba"],
               e["outcome"]] for e in j["examples"]]
    else:
        rows = [[label, _fmt(j[k]["value"]), _ci(j[k])]
                for label, k in (("base mean score", "mean_a"), ("tuned mean score", "mean_b"), ("delta", "delta"))]
        cols = ["#", "input", "base answer", "tuned answer", "base score", "tuned score", "outcome"]
        ex = [[e["index"], e["input"], e["answer_a"], e["answer_b"], e["score_a"], e["score_b"], e["outcome"]]
              for e in j["examples"]]
    rows.append(["invalid verdicts", _fmt(j["invalid_rate"]), "–"])
    head = (f"<p>Judge <code>{html.escape(j['model'])}</code> at <code>{html.escape(j['url'])}</code>, "
            f"{j['mode']} mode, n={j['n']}, temperature 0. Every prompt and reply: "
            f"<code>{html.escape(str(j.get('prompts')))}</code>.</p>")
    return head + _table(rows, ["measure", "value", "95% CI"]) + "<h3>First items</h3>" + _table(ex, cols)


def write_eval_report(out_dir: Path, result: dict, rows: list, answers: dict, history: list | None = None) -> Path:
    models = ", ".join(f"{n}: <code>{html.escape(str(s))}</code>" for n, s in result.get("models", {}).items())
    parts = [f"<h1>tuneloop evaluation</h1><p>{models}; data <code>{html.escape(result.get('data', ''))}</code> "
             f"(n={len(rows)}, task {result.get('task')}).</p>",
             "<h2>Metrics</h2>", metric_section(result)]
    if "gate" in result:
        g = result["gate"]
        parts += [f"<h2>Regression gate: {'PASSED' if g['passed'] else 'FAILED'}</h2>",
                  _table([[c["clause"], f"{c['value']:.4f}", f"{c['threshold']:.4f}", "ok" if c["passed"]
                           else "FAILED"] for c in g["clauses"]], ["clause", "value", "threshold", "result"])]
    parts += ["<h2>Confusion matrices</h2>", confusion_section(result)]
    if "bias" in result:
        parts += ["<h2>Bias audit</h2>", bias_section(result["bias"])]
    if "judge" in result:
        parts += ["<h2>LLM judge</h2>", judge_section(result["judge"])]
    if "diffs" in result:
        parts += ["<h2>Per-example differences</h2>", diff_section(result, rows, answers)]
    if history:
        parts += ["<h2>Training</h2>", loss_chart(history)]
    return write_page(Path(out_dir) / "report.html", "tuneloop evaluation", parts,
                      "body{max-width:1000px}td,th{text-align:right;max-width:320px}")
