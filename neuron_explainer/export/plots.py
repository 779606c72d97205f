"""Figures (PNG and PDF): score histogram, score by layer, method-vs-method scatter. matplotlib is optional."""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path
from typing import Any

from neuron_explainer.core.errors import UserError
from neuron_explainer.db import Database, ExplanationQuery
from neuron_explainer.explain.registry import EXPLAINERS
from neuron_explainer.export.base import ExportResult
from neuron_explainer.export.paper import provenance

FIGURE_FORMATS = ("png", "pdf")


def _figure_class() -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401 - Agg: no display needed
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError("plots need matplotlib: pip install matplotlib "
                        "(or pip install 'neuron-explainer[plots]')") from None
    return Figure


def _save(figure: Any, out: Path, stem: str) -> list[Path]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    paths = []
    for suffix in FIGURE_FORMATS:
        path = out / f"{stem}.{suffix}"
        figure.savefig(path, dpi=150)
        paths.append(path)
    return paths


def export_plots(database: Database, out: Path, query: ExplanationQuery) -> ExportResult:
    """Write the figures into directory `out` (created if missing)."""
    figure_class = _figure_class()
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; plots go into a directory")
    if not out.parent.exists():
        raise UserError(f"cannot create {out}: directory {out.parent} does not exist")
    try:
        out.mkdir(exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {out}: {exc.strerror or exc}") from None
    best_query = dataclasses.replace(query, limit=None, best_per_neuron=True)
    every = list(database.iter_query(best_query))
    best = [row for row in every if math.isfinite(row.score)]
    if not best:
        raise UserError("no scored explanations match; nothing to plot")
    paths: list[Path] = []
    notes: list[str] = []
    names = provenance(every)
    method = f"{names['explainer']}; simulator {names['simulator']}"
    undefined = len(every) - len(best)
    undefined_note = (f"{undefined} of {len(every)} best scores are undefined (not shown)" if undefined
                      else f"all {len(every)} best scores defined")

    # Best rows are per neuron and polarity (unless the query asked for `any`): each side is its own series.
    sides = sorted({row.polarity for row in best}, key=lambda side: (side != "positive", side))
    figure = figure_class(figsize=(5.5, 4))
    axes = figure.add_subplot()
    axes.hist([[row.score for row in best if row.polarity == side] for side in sides], bins=40, range=(-1, 1),
              color=["#4477aa", "#cc6677"][:len(sides)], stacked=True, label=sides)
    axes.set_xlabel("best explanation score (Pearson r)")
    axes.set_ylabel("neurons")
    axes.set_title(f"{names['model']}: {len(best)} best scores (neuron x polarity)\n{method}", fontsize=9)
    axes.legend(loc="best")
    figure.text(0.01, 0.01, undefined_note, fontsize=8, color="#555555")
    paths += _save(figure, out, "score_histogram")

    by_layer: dict[int, list[float]] = {}
    for row in best:
        if row.polarity == sides[0]:
            by_layer.setdefault(row.neuron.layer, []).append(row.score)
    layers = sorted(by_layer)
    figure = figure_class(figsize=(max(5.5, 0.3 * len(layers) + 2), 4))
    axes = figure.add_subplot()
    # Outliers are the best- and worst-explained neurons: the ones a reader looks for, so they stay visible.
    axes.boxplot([by_layer[layer] for layer in layers], positions=layers, widths=0.6, showfliers=True,
                 manage_ticks=False, flierprops={"marker": "o", "markersize": 3, "markerfacecolor": "#4477aa",
                                                 "markeredgecolor": "none", "alpha": 0.7})
    axes.plot(layers, [sum(by_layer[layer]) / len(by_layer[layer]) for layer in layers], "o-", color="#cc6677",
              markersize=3, label="mean")
    step = max(1, math.ceil(len(layers) / 16))
    axes.set_xticks(layers[::step])
    axes.set_xlim(layers[0] - 0.7, layers[-1] + 0.7)
    axes.set_xlabel("layer")
    axes.set_ylabel(f"best explanation score ({sides[0]}, Pearson r)")
    axes.set_title(f"{names['model']}, by layer\n{method}", fontsize=9)
    axes.legend(loc="best")
    figure.text(0.01, 0.01, undefined_note, fontsize=8, color="#555555")
    if undefined:
        notes.append(undefined_note)
    paths += _save(figure, out, "score_by_layer")

    per_method: dict[str, dict[tuple[str, int, int, str], float]] = {}
    wanted = [query.method] if query.method is not None else EXPLAINERS.names()
    for method in wanted:
        method_rows = database.iter_query(dataclasses.replace(best_query, method=method))
        scores = {(row.model_id, row.neuron.layer, row.neuron.neuron, row.polarity): row.score
                  for row in method_rows if math.isfinite(row.score)}
        if scores:
            per_method[method] = scores
    methods = sorted(per_method)
    pairs = [(first, second) for first, second in itertools.combinations(methods, 2)
             if per_method[first].keys() & per_method[second].keys()]
    if pairs:
        figure = figure_class(figsize=(4 * len(pairs), 4))
        for index, (first, second) in enumerate(pairs, start=1):
            axes = figure.add_subplot(1, len(pairs), index)
            shared = sorted(per_method[first].keys() & per_method[second].keys())
            axes.scatter([per_method[first][key] for key in shared], [per_method[second][key] for key in shared],
                         s=6, alpha=0.5, color="#117733")
            axes.plot([-1, 1], [-1, 1], color="grey", linewidth=0.8)
            axes.set_xlim(-1, 1)
            axes.set_ylim(-1, 1)
            axes.set_xlabel(f"{first} score")
            axes.set_ylabel(f"{second} score")
            axes.set_title(f"neurons scored by both: {len(shared)}")
        paths += _save(figure, out, "method_scatter")
    else:
        notes.append("method scatter skipped: no neuron has scored explanations from two methods")
    return ExportResult("plots", tuple(paths), len(best), tuple(notes))
