"""Inline SVG charts drawn in Python (no plotting library, no script): score histograms and per-layer bars."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from neuron_explainer.export.html.encoding import escape

_BAR = "#4477aa"
_GOOD = "#228833"
_AXIS = "#555555"


def histogram_counts(scores: Sequence[float], *, bins: int, low: float, high: float) -> list[int]:
    """Counts of the finite scores in `bins` equal bins over [low, high] (values outside are clipped in)."""
    values = np.clip(np.array([score for score in scores if math.isfinite(score)], dtype=float), low, high)
    counts, _ = np.histogram(values, bins=bins, range=(low, high))
    return [int(count) for count in counts]


def score_histogram(scores: Sequence[float], *, threshold: float, bins: int = 40, low: float = -1.0,
                    high: float = 1.0, label: str = "best explanation score (Pearson)") -> str:
    """An SVG histogram of scores with a dashed line at `threshold`; each bar's title gives its range and count."""
    counts = histogram_counts(scores, bins=bins, low=low, high=high)
    width, height = 640, 240
    left, right, top, bottom = 48, 12, 12, 40
    plot_width, plot_height = width - left - right, height - top - bottom
    peak = max(counts) if counts and max(counts) > 0 else 1
    bar_width = plot_width / bins

    def x_of(value: float) -> float:
        return left + (value - low) / (high - low) * plot_width

    parts = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{escape(f"histogram of {sum(counts)} scores")}">']
    for index, count in enumerate(counts):
        if count == 0:
            continue
        bar_height = count / peak * plot_height
        start = low + index * (high - low) / bins
        end = start + (high - low) / bins
        parts.append(f'<rect class="bar" x="{left + index * bar_width + 0.5:.1f}" '
                     f'y="{top + plot_height - bar_height:.1f}" '
                     f'width="{max(bar_width - 1, 0.5):.1f}" height="{bar_height:.1f}" fill="{_BAR}" '
                     f'data-count="{count}"><title>{start:.2f} to {end:.2f}: {count}</title></rect>')
    axis_y = top + plot_height
    parts.append(f'<line x1="{left}" y1="{axis_y}" x2="{width - right}" y2="{axis_y}" stroke="{_AXIS}"/>')
    parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{axis_y}" stroke="{_AXIS}"/>')
    for tick in np.linspace(low, high, 5):
        x = x_of(float(tick))
        parts.append(f'<line x1="{x:.1f}" y1="{axis_y}" x2="{x:.1f}" y2="{axis_y + 4}" stroke="{_AXIS}"/>')
        parts.append(f'<text x="{x:.1f}" y="{axis_y + 16}" text-anchor="middle" font-size="11">{tick:g}</text>')
    parts.append(f'<text x="{left - 6}" y="{top + 10}" text-anchor="end" font-size="11">{peak}</text>')
    parts.append(f'<text x="{left - 6}" y="{axis_y}" text-anchor="end" font-size="11">0</text>')
    if low <= threshold <= high:
        x = x_of(threshold)
        parts.append(f'<line class="threshold" x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{axis_y}" stroke="{_GOOD}" '
                     f'stroke-dasharray="4 3"/>')
        parts.append(f'<text x="{x - 3:.1f}" y="{top + 10}" text-anchor="end" font-size="11" fill="{_GOOD}">'
                     f'{threshold:g}</text>')
    parts.append(f'<text x="{left + plot_width / 2:.1f}" y="{height - 6}" text-anchor="middle" font-size="12">'
                 f'{escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def layer_bars(values: Sequence[tuple[int, float]], *, label: str, low: float = 0.0, high: float = 1.0) -> str:
    """An SVG bar chart of one value per layer (e.g. the fraction of well-explained neurons); NaN draws no bar."""
    width, height = 640, 200
    left, right, top, bottom = 48, 12, 12, 40
    plot_width, plot_height = width - left - right, height - top - bottom
    count = max(len(values), 1)
    bar_width = plot_width / count
    axis_y = top + plot_height
    parts = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="{escape(label)} by layer">']
    for index, (layer, value) in enumerate(values):
        x = left + index * bar_width
        if math.isfinite(value):
            share = (min(max(value, low), high) - low) / (high - low)
            parts.append(f'<rect class="bar" x="{x + 0.5:.1f}" y="{axis_y - share * plot_height:.1f}" '
                         f'width="{max(bar_width - 1, 0.5):.1f}" height="{share * plot_height:.1f}" fill="{_GOOD}">'
                         f'<title>layer {layer}: {value:.3f}</title></rect>')
        if count <= 40 or index % math.ceil(count / 40) == 0:
            parts.append(f'<text x="{x + bar_width / 2:.1f}" y="{axis_y + 14}" text-anchor="middle" '
                         f'font-size="10">{layer}</text>')
    parts.append(f'<line x1="{left}" y1="{axis_y}" x2="{width - right}" y2="{axis_y}" stroke="{_AXIS}"/>')
    parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{axis_y}" stroke="{_AXIS}"/>')
    parts.append(f'<text x="{left - 6}" y="{top + 10}" text-anchor="end" font-size="11">{high:g}</text>')
    parts.append(f'<text x="{left - 6}" y="{axis_y}" text-anchor="end" font-size="11">{low:g}</text>')
    parts.append(f'<text x="{left + plot_width / 2:.1f}" y="{height - 6}" text-anchor="middle" font-size="12">'
                 f'{escape(label)} by layer</text>')
    parts.append("</svg>")
    return "".join(parts)
