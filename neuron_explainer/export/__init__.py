"""Getting results out: `export(database, format, out)` dispatches to one module per format.

A format is registered in FORMATS as `module:function` and imported only when used, so optional dependencies
(matplotlib for plots) are needed only by the format that uses them. A new format adds one FORMATS entry whose
function follows `Exporter` (database, output path, query) -> ExportResult.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from neuron_explainer.core.errors import UserError
from neuron_explainer.export.base import Exporter, ExportResult

if TYPE_CHECKING:
    from neuron_explainer.db import Database, ExplanationQuery

FORMATS: dict[str, str] = {
    "csv": "neuron_explainer.export.tabular:export_csv",
    "jsonl": "neuron_explainer.export.tabular:export_jsonl",
    "markdown": "neuron_explainer.export.tabular:export_markdown",
    "latex": "neuron_explainer.export.latex:export_latex",
    "plots": "neuron_explainer.export.plots:export_plots",
    "html": "neuron_explainer.export.html:export_html",
}
"""Format name -> `module:function` of its Exporter."""

RECORD_FORMATS = frozenset({"html"})
"""Formats whose exporter also takes `records=` (a record store whose windows it shows)."""


def exporter(format_name: str) -> Exporter:
    """The exporter of a format (UserError naming the known ones if unknown)."""
    if format_name not in FORMATS:
        raise UserError(f"unknown export format {format_name!r}: choose from {', '.join(sorted(FORMATS))}")
    module_name, function_name = FORMATS[format_name].split(":")
    function: Exporter = getattr(importlib.import_module(module_name), function_name)
    return function


def export(database: Database, format_name: str, out: str | Path, *,
           query: ExplanationQuery | None = None, records: str | Path | None = None) -> ExportResult:
    """Export the rows of `query` (default: best explanation of every neuron) in `format_name` to `out`;
    `records` (a record store) only for RECORD_FORMATS."""
    from neuron_explainer.db import ExplanationQuery

    function = exporter(format_name)
    query = query or ExplanationQuery(limit=None)
    if records is None:
        return function(database, Path(out), query)
    if format_name not in RECORD_FORMATS:
        raise UserError(f"--records is used only by --format {', '.join(sorted(RECORD_FORMATS))}")
    return function(database, Path(out), query, records=Path(records))  # type: ignore[call-arg]


__all__ = ["FORMATS", "RECORD_FORMATS", "ExportResult", "Exporter", "export", "exporter"]
