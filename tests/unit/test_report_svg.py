"""The data report's SVG charts: well-formed, one bar per value, bar sizes in proportion, labels escaped."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np

from tuneloop.report.svg import svg_bars, svg_columns, svg_histogram

NS = "{http://www.w3.org/2000/svg}"


def _rects(svg: str) -> list:
    return [r for r in ET.fromstring(svg).iter(f"{NS}rect")]


def test_bars_are_proportional_and_labels_escaped():
    svg = svg_bars(["a <b> & c", "d", "e"], [200, 50, 0], xlabel="rows")
    widths = [float(r.get("width")) for r in _rects(svg)]
    assert len(widths) == 3 and widths[2] == 0 and abs(widths[0] / widths[1] - 4) < 1e-2
    texts = [t.text for t in ET.fromstring(svg).iter(f"{NS}text")]
    assert "a <b> & c" in texts and "200" in texts and "rows" in texts


def test_columns_one_bar_per_category_and_series_with_a_legend():
    svg = svg_columns(["neg", "pos"], {"train (n=4)": [0.75, 0.25], "test (n=2)": [0.5, 0.5]}, ylabel="share")
    bars = [r for r in _rects(svg) if float(r.get("height")) != 10]  # legend swatches are 10 x 10
    heights = [float(r.get("height")) for r in bars]
    assert len(bars) == 4 and abs(heights[0] / heights[1] - 3) < 1e-2 and heights[2] == heights[3]
    assert {"train (n=4)", "test (n=2)", "neg", "pos", "0.75"} <= {t.text for t in ET.fromstring(svg).iter(f"{NS}text")}


def test_histogram_bins_follow_numpy():
    xs = np.random.default_rng(0).integers(0, 100, 500)
    svg = svg_histogram(xs, bins=10, title="answer", xlabel="tokens")
    counts, _ = np.histogram(xs, bins=10)
    heights = np.array([float(r.get("height")) for r in _rects(svg)])
    assert len(heights) == 10 and np.allclose(heights / heights.max(), counts / counts.max(), atol=1e-2)


def test_edge_inputs_stay_valid_svg():
    assert svg_bars([], []) == ""
    long = svg_bars(["x" * 200], [5])
    assert all(float(r.get("width")) >= 0 for r in _rects(long)) and float(ET.fromstring(long).get("width")) > 1400
    legend = svg_columns(["a"], {"validation (n=20901)": [1.0], "test (n=20901)": [0.0]})
    xs = [float(r.get("x")) for r in _rects(legend) if float(r.get("height")) == 10]
    assert xs[1] - xs[0] > 7 * len("validation (n=20901)")  # legend entries do not overlap
    texts = {t.text for t in ET.fromstring(svg_histogram([0, 2_000_000], bins=2)).iter(f"{NS}text")}
    assert "2,000,000" in texts and not any("e+" in (t or "") for t in texts)
    assert _rects(svg_histogram([7, 7, 7], bins=4))  # a constant histogram still draws
