"""Bar charts and histograms as inline SVG, for reports whose charts are only bars (the data report).

    svg_bars(["input rows", "- dropped: duplicate", "= kept"], [200000, 22753, 167208], xlabel="rows")
    svg_columns(["negative", "positive"], {"train (n=90)": [0.6, 0.4], "test (n=10)": [0.5, 0.5]})
    svg_histogram([12, 40, 33, 18], bins=40, title="answer", xlabel="tokens")

Why not matplotlib here: importing it and drawing the data report's three PNG charts cost ~1.2 s of CPU per
`tuneloop data prepare` (measured on the project VM: import 0.7 s, ~0.2 s per chart), whatever the file's
size. As SVG the bars are a few hundred bytes of markup each, stay sharp when zoomed, and their labels can be
searched and copied. The run and eval reports (lines, error bars) keep matplotlib.
"""

from __future__ import annotations

import html

import numpy as np

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")  # matplotlib's C0..C5
CHAR_W = 7  # px per character of 12 px text (a conservative width for label columns)


def _svg(width: int, height: int, body: list) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
            f'font-size="12">{"".join(body)}</svg>')


def _text(x: float, y: float, s, anchor: str = "start", extra: str = "") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{extra}>{html.escape(str(s))}</text>'


def _num(x: float) -> str:
    """An axis number: thousands separated, no exponent (2,000,000 rather than 2e+06)."""
    return f"{x:,.0f}" if abs(x) >= 10 else f"{x:.2g}"


def svg_bars(labels: list, values: list, *, xlabel: str = "", color: str = PALETTE[0], width: int = 680) -> str:
    """Horizontal bars, one labelled row per value, the value written at the bar's end ("" for no values)."""
    if not labels:
        return ""
    row, left = 22, CHAR_W * max(len(str(lab)) for lab in labels) + 12
    width = max(width, left + 190)  # a long label widens the chart rather than squeezing the bars away
    span = width - left - 90  # room for the value text after the longest bar
    top = max(max(values), 1)
    body = []
    for k, (lab, v) in enumerate(zip(labels, values)):
        y, w = 4 + k * row, span * v / top
        body += [_text(left - 6, y + 15, lab, "end"),
                 f'<rect x="{left}" y="{y + 3}" width="{w:.1f}" height="{row - 6}" fill="{color}"/>',
                 _text(left + w + 4, y + 15, f"{v:,}")]
    height = 8 + row * len(labels) + (20 if xlabel else 0)
    if xlabel:
        body.append(_text(left + span / 2, height - 6, xlabel, "middle", ' fill="#555"'))
    return _svg(width, height, body)


def svg_columns(categories: list, series: dict, *, ylabel: str = "", width: int = 680, height: int = 240) -> str:
    """Grouped vertical bars: for each category one bar per series (name -> values), with a legend; values are
    written above the bars (two decimals)."""
    left, bottom, top_pad = 50, 40, 30
    plot_w, plot_h = width - left - 10, height - bottom - top_pad
    top = max([max(v, default=0) for v in series.values()] + [1e-9])
    group = plot_w / max(len(categories), 1)
    bar = 0.8 * group / max(len(series), 1)
    body = [f'<line x1="{left}" y1="{top_pad + plot_h}" x2="{width - 10}" y2="{top_pad + plot_h}" stroke="#888"/>']
    legend_x = left
    for s, (name, values) in enumerate(series.items()):
        color = PALETTE[s % len(PALETTE)]
        body += [f'<rect x="{legend_x}" y="6" width="10" height="10" fill="{color}"/>', _text(legend_x + 14, 15, name)]
        legend_x += 14 + CHAR_W * len(str(name)) + 16
        for k, v in enumerate(values):
            h = plot_h * v / top
            x = left + k * group + 0.1 * group + s * bar
            body += [f'<rect x="{x:.1f}" y="{top_pad + plot_h - h:.1f}" width="{bar:.1f}" height="{h:.1f}" '
                     f'fill="{color}"/>', _text(x + bar / 2, top_pad + plot_h - h - 3, f"{v:.2f}", "middle",
                                                 ' font-size="10"')]
    for k, cat in enumerate(categories):
        body.append(_text(left + (k + 0.5) * group, top_pad + plot_h + 16, cat, "middle"))
    if ylabel:
        body.append(_text(12, top_pad + plot_h / 2, ylabel, "middle",
                          f' transform="rotate(-90 12 {top_pad + plot_h / 2:.1f})" fill="#555"'))
    return _svg(width, height, body)


def svg_histogram(values, *, bins: int = 40, title: str = "", xlabel: str = "", color: str = PALETTE[2],
                  width: int = 340, height: int = 200) -> str:
    """A histogram (numpy's bin edges) with the x range and the tallest bin's count written on the axes."""
    counts, edges = np.histogram(np.asarray(values, dtype=float), bins=bins)
    left, bottom, top_pad = 44, 34, 22
    plot_w, plot_h = width - left - 10, height - bottom - top_pad
    top, step = max(int(counts.max()), 1), plot_w / len(counts)
    body = [_text(left + plot_w / 2, 14, title, "middle"),
            f'<line x1="{left}" y1="{top_pad + plot_h}" x2="{left + plot_w}" y2="{top_pad + plot_h}" stroke="#888"/>',
            _text(left - 4, top_pad + 10, _num(top), "end", ' font-size="10"')]
    for k, n in enumerate(counts.tolist()):
        h = plot_h * n / top
        body.append(f'<rect x="{left + k * step:.1f}" y="{top_pad + plot_h - h:.1f}" width="{max(step - 1, 1):.1f}" '
                    f'height="{h:.1f}" fill="{color}"/>')
    body += [_text(left, top_pad + plot_h + 14, _num(edges[0]), "start", ' font-size="10"'),
             _text(left + plot_w, top_pad + plot_h + 14, _num(edges[-1]), "end", ' font-size="10"'),
             _text(left + plot_w / 2, height - 4, xlabel, "middle", ' fill="#555"')]
    return _svg(width, height, body)
