"""The neuron viewer: a self-contained static site generated from the database (and record stores), and a
local server for it.

Public surface: `build_site(database, out, query=, options=) -> SiteSummary` with `SiteOptions`,
`export_html` (the `--format html` exporter), and `make_server` / `serve_site` / `site_url` (stdlib http.server,
127.0.0.1 by default). See docs/viewer.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from neuron_explainer.export.base import ExportResult
from neuron_explainer.export.html.server import make_server, serve_site, site_url
from neuron_explainer.export.html.site import SITE_MARKER, SiteOptions, SiteSummary, build_site

if TYPE_CHECKING:
    from neuron_explainer.db import Database, ExplanationQuery


def export_html(database: Database, out: Path, query: ExplanationQuery, *,
                records: Path | None = None) -> ExportResult:
    """Exporter for `--format html`: the site for `query`'s neurons in directory `out` (windows from `records`,
    else from each recording's stored path when it exists)."""
    summary = build_site(database, out, query=query, options=SiteOptions(records=records))
    notes = list(summary.notes)
    if summary.record_stores:
        notes.append(f"windows of {summary.neurons_with_records} neurons from {', '.join(summary.record_stores)}")
    notes.append(f"{summary.neurons} neuron pages and {summary.layer_pages} layer pages in {summary.seconds:.1f} s; "
                 f"open {summary.index} or run `neuron-explainer serve {summary.path}`")
    return ExportResult("html", (summary.index,), summary.neurons, tuple(notes))


__all__ = ["SITE_MARKER", "SiteOptions", "SiteSummary", "build_site", "export_html", "make_server", "serve_site",
           "site_url"]
