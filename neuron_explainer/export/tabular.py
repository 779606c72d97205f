"""CSV, JSON Lines and Markdown exports of query rows."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from neuron_explainer.db import Database, ExplanationQuery, ResultRow, SortOrder
from neuron_explainer.db.codec import dump_json
from neuron_explainer.export.base import ExportResult, atomic_text_file
from neuron_explainer.export.escaping import csv_cell, markdown_escape
from neuron_explainer.export.paper import interval
from neuron_explainer.export.summary import layer_summaries

CSV_COLUMNS: tuple[str, ...] = ("layer", "neuron") + tuple(
    field.name for field in dataclasses.fields(ResultRow) if field.name != "neuron")
"""Column order of CSV output: every ResultRow field, dict fields as JSON text."""


def write_csv_rows(rows: Iterable[ResultRow], handle: IO[str]) -> int:
    """Write rows as CSV (header first) to an open text handle; returns the row count."""
    writer = csv.writer(handle)
    writer.writerow(CSV_COLUMNS)
    count = 0
    for row in rows:
        values = row.as_dict()
        writer.writerow([csv_cell(dump_json(values[name]) if isinstance(values[name], dict) else values[name])
                         for name in CSV_COLUMNS])
        count += 1
    return count


def export_csv(database: Database, out: Path, query: ExplanationQuery) -> ExportResult:
    """One CSV row per query row (best explanation per neuron by default), formula-injection safe."""
    with atomic_text_file(out, newline="") as handle:
        count = write_csv_rows(database.iter_query(query), handle)
    return ExportResult("csv", (out,), count)


def export_jsonl(database: Database, out: Path, query: ExplanationQuery) -> ExportResult:
    """One JSON object per neuron: model, layer, neuron and its explanations (rows) with full provenance."""
    ordered = dataclasses.replace(query, sort=SortOrder.LAYER)
    count = 0
    with atomic_text_file(out) as handle:
        current: dict[str, Any] | None = None
        for row in database.iter_query(ordered):
            key = (row.model_id, row.neuron.layer, row.neuron.neuron)
            if current is None or (current["model_id"], current["layer"], current["neuron"]) != key:
                if current is not None:
                    handle.write(json.dumps(current, ensure_ascii=False, allow_nan=False) + "\n")
                current = {"model_id": row.model_id, "layer": row.neuron.layer, "neuron": row.neuron.neuron,
                           "explanations": []}
                count += 1
            entry = row.as_dict()
            for name in ("model_id", "layer", "neuron"):
                entry.pop(name)
            current["explanations"].append(entry)
        if current is not None:
            handle.write(json.dumps(current, ensure_ascii=False, allow_nan=False) + "\n")
    return ExportResult("jsonl", (out,), count)


def _number(value: float, digits: int = 3) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.{digits}f}"


def export_markdown(database: Database, out: Path, query: ExplanationQuery) -> ExportResult:
    """A Markdown table of the rows, then the per-layer summary; every cell escaped."""
    rows = database.query(query)
    summaries = layer_summaries(database.iter_query(dataclasses.replace(query, limit=None, best_per_neuron=True)),
                                polarity_any=query.polarity == "any")
    lines = ["# Neuron explanations", "",
             "| Layer | Neuron | Polarity | Model | Score | Lexical ceiling | 95% CI | Method | Explainer | Explanation |",
             "|---:|---:|---|---|---:|---:|---|---|---|---|"]
    for row in rows:
        lines.append(" | ".join([
            "", str(row.neuron.layer), str(row.neuron.neuron), row.polarity, markdown_escape(row.model_id),
            _number(row.score), _number(row.lexical_ceiling),
            interval(row.ci_low, row.ci_high), markdown_escape(row.method),
            markdown_escape(row.explainer_model), markdown_escape(row.text), ""]).strip())
    lines += ["", "## Per layer", "",
              "| Polarity | Layer | Neurons | Undefined | Mean | Mean (undefined = 0) | Median | Fraction >= 0.8 | "
              "95% CI |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for summary in summaries:
        lines.append(f"| {summary.polarity} | {'all' if summary.layer is None else summary.layer} | "
                     f"{summary.neurons} | {summary.neurons - summary.scored} | {_number(summary.mean)} | "
                     f"{_number(summary.mean_undefined_as_zero)} | "
                     f"{_number(summary.median)} | {_number(summary.fraction_good)} | "
                     f"{interval(*summary.fraction_good_ci, 3)} |")
    with atomic_text_file(out) as handle:
        handle.write("\n".join(lines) + "\n")
    return ExportResult("markdown", (out,), len(rows))
