"""The data report `data/report.html`: one self-contained page (charts as inline SVG) explaining every row.

    write_data_report(Path("runs/x/data/report.html"), manifest, first_rejection_by_rule, candidates, parts,
                      preview_example, tokenizer)

Sections: funnel (input -> kept), rejections by rule with one example each, token-length histograms (prompt
and answer), label balance per split, identity-term representation and flags, PII / dedup / mitigation
counts, and a masking preview: one training example through the chat template with trained tokens marked.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from tuneloop.data.validate import DROP_REASONS, RULES
from tuneloop.report.html import _table, write_page
from tuneloop.report.svg import PALETTE, svg_bars, svg_columns, svg_histogram

STYLE = ("body{max-width:960px}td,th{text-align:left;vertical-align:top}pre{background:#f4f4f4;padding:8px;"
         "white-space:pre-wrap;word-break:break-all}.t{background:#c8f0c8;outline:1px solid #8c8}.c{color:#777}"
         ".flag{color:#b00}")


def _esc(x) -> str:
    return html.escape(str(x))


def funnel(counts: dict) -> str:
    rows, left = [["input rows", counts["input"], ""]], counts["input"]
    for kind, table, meaning in (("rejected", counts["rejected"], RULES), ("dropped", counts["dropped"], DROP_REASONS)):
        for reason, n in sorted(table.items(), key=lambda kv: -kv[1]):
            left -= n
            rows.append([f"- {kind}: {reason}", n, meaning.get(reason, "")])
    rows.append(["= kept (in splits)", counts["kept"], f"checked: {left} == {counts['kept']}"])
    return _table(rows, ["stage", "rows", "meaning"]) + svg_bars([r[0] for r in rows], [r[1] for r in rows],
                                                                  xlabel="rows")


def rejections(examples: dict, counts: dict) -> str:
    if not examples:
        return "<p>No row was rejected.</p>"
    body = []
    for rule, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        ex = examples[rule]
        row = json.dumps(ex["row"], default=str)[:300]
        body.append(f"<tr><td><code>{_esc(rule)}</code></td><td>{n}</td><td>{_esc(ex['file'])}:{ex['line']} "
                    f"<code>{_esc(ex['field'])}</code>: {_esc(ex['message'])}<br><span class='c'>{_esc(row)}</span>"
                    "</td></tr>")
    return f"<table><tr><th>rule</th><th>rows</th><th>first example</th></tr>{''.join(body)}</table>"


def token_histograms(cand, kept: list) -> str:
    if not any(map(cand.tokens.__getitem__, kept)):  # (before the lists: without a tokenizer there are none)
        return "<p>No tokenizer was given, so tokens were not counted.</p>"
    prompt = [cand.tokens[i] - cand.answer_tokens[i] for i in kept]
    answer = [cand.answer_tokens[i] for i in kept]
    return "".join(svg_histogram(xs, bins=40, title=title, xlabel="tokens")
                   for xs, title in ((prompt, "prompt (template + inputs)"), (answer, "answer")))


def label_balance(splits: dict) -> str:
    labels = sorted({lab for s in splits.values() for lab in s["labels"] if lab is not None})
    if not labels:
        return "<p>No labels (generation data).</p>"
    shares = {f"{name} (n={s['n']})": [s["labels"].get(lab, 0) / max(s["n"], 1) for lab in labels]
              for name, s in splits.items()}
    return svg_columns(labels, shares, ylabel="share of split")


def identity_chart(audit: dict) -> str:
    groups = {g: v for g, v in audit["groups"].items() if v.get("rows")}
    if not groups:
        return "<p>No identity terms found in the kept rows.</p>"
    rows = [[g, v["rows"], ", ".join(f"{k}: {r:.2f}" for k, r in v["label_rates"].items())] for g, v in groups.items()]
    flags = "".join(f"<li class='flag'>{_esc(f['group'])}: {_esc(f['label'])} rate {f['rate']:.2f} vs "
                    f"{f['overall']:.2f} overall ({f['rows']} rows)</li>" for f in audit["flags"])
    note = f"<ul>{flags}</ul>" if flags else f"<p>No group deviates by more than {audit['threshold']}.</p>"
    chart = svg_bars(list(groups), [v["rows"] for v in groups.values()], xlabel="kept rows mentioning the group",
                     color=PALETTE[4])
    return chart + _table(rows, ["group", "rows", "label rates"]) + note


def masking_preview(ex, tokenizer) -> str:
    if ex is None or tokenizer is None:
        return "<p>No training example or tokenizer to preview.</p>"
    if getattr(tokenizer, "chat_template", None) is None:  # an encoder: a classification head reads the text
        return "<p>This tokenizer has no chat template (an encoder): a classification head reads the text.</p>"
    from tuneloop.train.batching import IGNORE, tokenize_chat

    ids, labels = tokenize_chat(tokenizer, ex.messages)
    spans = []
    for tid, lab in zip(ids, labels):
        piece = _esc(tokenizer.decode([tid]))
        spans.append(f"<span class='t'>{piece}</span>" if lab != IGNORE else piece)
    trained = sum(lab != IGNORE for lab in labels)
    return (f"<p>{trained} of {len(ids)} tokens are trained (highlighted); the rest is context.</p>"
            f"<pre>{''.join(spans)}</pre>")


def write_data_report(path: Path, manifest: dict, examples: dict, cand, parts: dict, preview, tokenizer) -> Path:
    kept = [i for ids in parts.values() for i in ids]
    counts = manifest["counts"]
    parts_html = [
        f"<h1>Data report: {_esc(manifest['source'])}</h1>",
        f"<p>Format <code>{_esc(manifest['format'])}</code>, source sha256 "
        f"<code>{manifest['source_sha256'][:16]}</code>, data sha256 <code>{manifest['data_sha256'][:16]}</code>, "
        f"seed {manifest['sampling']['seed']}.</p>",
        "<h2>Funnel</h2>", funnel(counts),
        "<h2>Rejections by rule</h2>", rejections(examples, counts["rejected"]),
        "<h2>Token lengths (kept rows)</h2>", token_histograms(cand, kept),
        "<h2>Label balance</h2>", label_balance(manifest["splits"]),
        "<h2>Identity terms</h2>", identity_chart(manifest["audit"]),
        "<h2>PII, deduplication, mitigations</h2>",
        _table([[k, v] for k, v in manifest["pii"]["redacted"].items()] or [["none found", 0]], ["PII type", "redacted"]),
        _table([[k, v] for k, v in manifest["dedup"].items()], ["dedup", "value"]),
        f"<pre>{_esc(json.dumps(manifest['mitigations'], indent=1))}</pre>",
        "<h2>Masking preview</h2>", masking_preview(preview, tokenizer),
    ]
    return write_page(path, "tuneloop data report", parts_html, STYLE)
