"""The run report: one self-contained HTML file (images embedded as base64 PNG, no network).

    write_report(Path("runs/airline-sentiment"), metrics, history, manifest)   # -> report.html
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

# Shared by the run, eval and data reports; each page adds its own rules after these.
STYLE = ("body{font-family:system-ui,sans-serif;margin:2em auto;color:#222}"
         "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px}"
         "th{background:#f4f4f4}code{background:#f4f4f4;padding:1px 4px}")


def write_page(path: Path, title: str, parts: list, style: str = "") -> Path:
    """One self-contained HTML page (no external assets) from HTML fragments."""
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}{style}</style></head><body>{''.join(parts)}</body></html>")
    Path(path).write_text(page, encoding="utf-8")
    return Path(path)


def subplots(*grid: int, figsize: tuple, **kw):
    """(figure, axes) like pyplot.subplots, on a Figure that savefig renders with Agg (PNG)."""
    # The object-oriented API, not pyplot: no global figure registry to leak from a long-running server, no GUI
    # backend to pick. Imported here: ~0.7 s of CPU that pages without charts (write_page, _table) skip.
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*grid, **kw)


def figure_to_img(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return f'<img alt="chart" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def loss_chart(history: list) -> str:
    steps = [r for r in history if "loss" in r]
    if not steps:
        return "<p>No training steps were logged.</p>"
    fig, ax = subplots(figsize=(6, 3.2))
    ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], label="train loss (assistant tokens)")
    val = [r for r in history if "val_loss" in r]
    if val:
        ax.scatter([r["step"] for r in val], [r["val_loss"] for r in val], color="C3", zorder=3,
                   label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy")
    ax.grid(alpha=0.3)
    ax.legend()
    return figure_to_img(fig)


def _table(rows: list, header: list) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def confusion_table(m: dict) -> str:
    labels = m["confusion"]["labels"]
    rows = [[f"true {lab}"] + row for lab, row in zip(labels, m["confusion"]["matrix"])]
    return _table(rows, [""] + [f"pred {lab}" for lab in labels])


def write_report(run_dir: Path, metrics: dict, history: list, manifest: dict, bias: dict | None = None) -> Path:
    from tuneloop.report.eval_html import bias_section, confusion_section, judge_section, metric_section

    counts = manifest["counts"]
    funnel = [["input rows", counts["input"]]] + [[f"rejected: {k}", v] for k, v in counts["rejected"].items()] + \
             [[f"dropped: {k}", v] for k, v in counts["dropped"].items()] + [["kept (in splits)", counts["kept"]]]
    splits = [[name, s["n"], ", ".join(f"{k}: {v}" for k, v in sorted(s["labels"].items()))]
              for name, s in manifest["splits"].items()]
    parts = [
        f"<h1>tuneloop run: {html.escape(run_dir.name)}</h1>",
        f"<p>Base model <code>{html.escape(metrics.get('base_model', ''))}</code>, data sha256 "
        f"<code>{metrics.get('data_sha256', '')[:16]}</code>, {metrics['train']['steps']} steps on "
        f"{metrics['train']['examples']} examples ({metrics['train']['precision']}), "
        f"total {metrics['timings']['total_s']:.0f} s.</p>",
        "<h2>Base vs tuned on the held-out test split</h2>", metric_section(metrics),
        "<h2>Training</h2>", loss_chart(history),
        "<h2>Confusion matrices</h2>", confusion_section(metrics),
        *(["<h2>Bias audit</h2>", bias_section(bias)] if bias else []),
        *(["<h2>LLM judge</h2>", judge_section(metrics["judge"])] if metrics.get("judge") else []),
        "<h2>Data</h2>", _table(funnel, ["stage", "rows"]), _table(splits, ["split", "rows", "labels"]),
        "<p>Full data report: <a href='data/report.html'>data/report.html</a>.</p>",
    ]
    return write_page(run_dir / "report.html", "tuneloop report", parts,
                      "body{max-width:900px}td,th{padding:4px 10px;text-align:right}")
