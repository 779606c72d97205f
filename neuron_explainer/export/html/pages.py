"""HTML of the three page kinds (index, layer overview, neuron) from the autoescaping jinja2 templates in templates/.

Every value is HTML-escaped unless this module marks it safe (inline SVG from svg.py, script-safe JSON from
encoding.py). Nothing here reads the database: site.py gathers the data and passes it in."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import jinja2
from markupsafe import Markup

from neuron_explainer.db import ResultRow
from neuron_explainer.db.reads import StatsEntry
from neuron_explainer.export.html.encoding import number
from neuron_explainer.export.readable import readable_text
from neuron_explainer.export.summary import LayerSummary

ASSET_FILES = ("style.css", "index.js", "neuron.js")
"""Static files copied into the site's assets/ directory."""


@lru_cache(maxsize=None)
def asset_text(name: str) -> str:
    """Text of a packaged asset file."""
    return resources.files("neuron_explainer.export.html").joinpath("assets", name).read_text(encoding="utf-8")


@dataclass(frozen=True)
class PageContext:
    """What every page of one site shares."""

    version: str
    """neuron-explainer version that generated the site."""
    generated: str
    """Generation time (ISO-8601 UTC)."""
    threshold: float
    """Score from which a neuron counts as well explained."""


@dataclass(frozen=True)
class Link:
    """A navigation link (href relative to the page; None renders plain text)."""

    label: str
    """Visible text."""
    href: str | None = None
    """Target."""
    rel: str = ""
    """`prev` / `next` where it applies."""


@lru_cache(maxsize=1)
def _templates() -> jinja2.Environment:
    environment = jinja2.Environment(loader=jinja2.PackageLoader("neuron_explainer.export.html", "templates"),
                                     autoescape=True, trim_blocks=True, lstrip_blocks=True,
                                     undefined=jinja2.StrictUndefined)
    environment.filters["number"] = number
    environment.filters["json_text"] = _json_text
    environment.filters["quantiles"] = _quantiles
    environment.filters["readable"] = readable_text
    return environment


def _json_text(values: Mapping[str, Any]) -> str:
    return json.dumps(values, sort_keys=True, ensure_ascii=False, default=str)


def _quantiles(pairs: Sequence[tuple[float, float]]) -> str:
    return " · ".join(f"p{probability * 100:g} {number(value, 3)}" for probability, value in pairs)


def render_page(template: str, context: PageContext, *, root: str, kind: str, crumbs: Sequence[Link] = (),
                neighbours: Sequence[Link] = (), scripts: Sequence[str] = (), **values: Any) -> str:
    """A complete page from `template` (which extends page.html); `scripts` are src paths relative to the site
    root. Values are escaped by the template unless wrapped in `Markup`."""
    return _templates().get_template(template).render(context=context, root=root, kind=kind, crumbs=crumbs,
                                                      neighbours=neighbours, scripts=scripts, **values)


@dataclass(frozen=True)
class ModelSection:
    """One subject model's part of the index page."""

    model_id: str
    """Subject model id."""
    fingerprint: str
    """Its weights fingerprint."""
    summaries: Sequence[tuple[LayerSummary, str]]
    """(summary, layer page href) per layer, then the total row (href empty)."""
    histogram_svg: str
    """Inline SVG of all best scores."""
    layers_svg: str
    """Inline SVG of the fraction of well-explained neurons per layer."""


def index_page(context: PageContext, *, sections: Sequence[ModelSection], neuron_count: int) -> str:
    """The index: a client-side table over data/index.js, then per-model layer summaries and charts."""
    return render_page("index.html", context, root="", kind="index", crumbs=[Link("Index")],
                       scripts=("data/index.js", "assets/index.js"), sections=sections, neuron_count=neuron_count)


def layer_page(context: PageContext, *, model_id: str, layer: int, summary: LayerSummary, histogram_svg: str,
               rows: Sequence[tuple[ResultRow, str]], neighbours: Sequence[Link]) -> str:
    """One layer: summary, histogram, and every neuron of the layer by score (plain HTML, no script)."""
    return render_page("layer.html", context, root="../../", kind="layer",
                       crumbs=[Link("Index", "../../index.html"), Link(f"{model_id} layer {layer}")],
                       neighbours=neighbours, model_id=model_id, layer=layer, summary=summary,
                       histogram_svg=Markup(histogram_svg), rows=rows)


def neuron_page(context: PageContext, *, model_id: str, fingerprint: str, layer: int, neuron: int,
                rows: Sequence[ResultRow], stats: Sequence[StatsEntry], data_json: str,
                record_note: str, crumbs: Sequence[Link], neighbours: Sequence[Link], extra: str = "") -> str:
    """One neuron: best explanation, statistics, every explanation with scores and provenance (best first; rows
    arrive one per explanation-score pair), and the window heat-maps that assets/neuron.js draws from `data_json`
    (script-safe JSON, see encoding.script_safe); `extra` is trusted HTML placed after the recorded windows."""
    grouped: dict[int, list[ResultRow]] = {}
    for row in rows:
        grouped.setdefault(row.explanation_id, []).append(row)
    return render_page("neuron.html", context, root="../../../", kind="neuron", crumbs=crumbs,
                       neighbours=neighbours, scripts=("assets/neuron.js",), model_id=model_id,
                       fingerprint=fingerprint, layer=layer, neuron=neuron, rows=rows, stats=stats,
                       explanations=list(grouped.values()), record_note=record_note, data_json=Markup(data_json),
                       extra=Markup(extra))
