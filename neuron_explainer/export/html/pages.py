"""HTML of the three page kinds (index, layer overview, neuron), built from escaped fragments and the page
template in assets/page.html. Nothing here reads the database: site.py gathers the data and passes it in."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from string import Template
from typing import Any

from neuron_explainer.db import ResultRow
from neuron_explainer.db.reads import StatsEntry
from neuron_explainer.export.html.encoding import escape, number
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


def _links(links: Sequence[Link], separator: str) -> str:
    parts = []
    for link in links:
        if link.href is None:
            parts.append(f"<span>{escape(link.label)}</span>")
        else:
            rel = f' rel="{link.rel}" id="link-{link.rel}"' if link.rel else ""
            parts.append(f'<a href="{escape(link.href)}"{rel}>{escape(link.label)}</a>')
    return separator.join(parts)


def render_page(context: PageContext, *, title: str, root: str, kind: str, body: str,
                crumbs: Sequence[Link] = (), neighbours: Sequence[Link] = (), scripts: Sequence[str] = ()) -> str:
    """A complete page; `body` must already be escaped HTML, `scripts` are src paths relative to the site root."""
    return Template(asset_text("page.html")).substitute(
        version=escape(context.version), title=escape(title), root=escape(root), page_kind=escape(kind),
        crumbs=_links(crumbs, " › "), neighbours=_links(neighbours, " "), body=body,
        generated=escape(context.generated),
        scripts="\n".join(f'<script src="{escape(root + src)}"></script>' for src in scripts))


def _interval(low: float, high: float) -> str:
    return f"[{number(low, 2)}, {number(high, 2)}]"


def _summary_cells(summary: LayerSummary) -> str:
    return (f"<td class=num>{summary.neurons}</td><td class=num>{summary.scored}</td>"
            f"<td class=num>{number(summary.mean)}</td><td class=num>{number(summary.median)}</td>"
            f"<td class=num>{number(summary.fraction_good)}</td>"
            f"<td>{_interval(*summary.fraction_good_ci)}</td>")


_SUMMARY_HEAD = ("<th>neurons</th><th>scored</th><th>mean</th><th>median</th><th>fraction ≥ {threshold}</th>"
                 "<th>95% CI</th>")


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
    head = _SUMMARY_HEAD.format(threshold=context.threshold)
    parts = [f"<h1>Neuron explanations</h1><p class=lead>{neuron_count} explained neurons. Click a column to sort; "
             "filter by layer, method and score; search the explanations.</p>",
             "<section id=browser><div id=controls></div><p id=status>Loading the table…</p>"
             "<table id=neurons><thead></thead><tbody></tbody></table><div id=pager></div>"
             "<noscript><p>The searchable table needs JavaScript; the layer pages below list every neuron.</p>"
             "</noscript></section>"]
    for section in sections:
        rows = []
        for summary, href in section.summaries:
            label = "all" if summary.layer is None else f'<a href="{escape(href)}">layer {summary.layer}</a>'
            rows.append(f"<tr><td>{label}</td>{_summary_cells(summary)}</tr>")
        parts.append(
            f"<section class=model><h2>{escape(section.model_id)}</h2>"
            f"<p class=meta>weights fingerprint <code>{escape(section.fingerprint)}</code></p>"
            f"<div class=charts>{section.histogram_svg}{section.layers_svg}</div>"
            f"<table class=summary><thead><tr><th>layer</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody>"
            "</table></section>")
    return render_page(context, title="Neuron explanations", root="", kind="index", body="".join(parts),
                       crumbs=[Link("Index")], scripts=("data/index.js", "assets/index.js"))


def layer_page(context: PageContext, *, model_id: str, layer: int, summary: LayerSummary, histogram_svg: str,
               rows: Sequence[tuple[ResultRow, str]], neighbours: Sequence[Link]) -> str:
    """One layer: summary, histogram, and every neuron of the layer by score (plain HTML, no script)."""
    head = _SUMMARY_HEAD.format(threshold=context.threshold)
    table = [f'<tr><td class=num><a href="{escape(href)}">{row.neuron.neuron}</a></td>'
             f"<td class=num>{number(row.score)}</td><td>{_interval(row.ci_low, row.ci_high)}</td>"
             f"<td>{escape(row.method)}</td><td>{escape(row.explainer_model)}</td><td>{escape(row.text)}</td></tr>"
             for row, href in rows]
    body = (f"<h1>Layer {layer}</h1><p class=meta>{escape(model_id)}</p>"
            f"<table class=summary><thead><tr>{head}</tr></thead><tbody><tr>{_summary_cells(summary)}</tr></tbody>"
            f"</table><div class=charts>{histogram_svg}</div>"
            "<h2>Neurons by best score</h2><table class=neurons><thead><tr><th>neuron</th><th>score</th>"
            "<th>95% CI</th><th>method</th><th>explainer</th><th>explanation</th></tr></thead>"
            f"<tbody>{''.join(table)}</tbody></table>")
    return render_page(context, title=f"Layer {layer} · {model_id}", root="../../", kind="layer", body=body,
                       crumbs=[Link("Index", "../../index.html"), Link(f"{model_id} layer {layer}")],
                       neighbours=neighbours)


def _parameters(values: Mapping[str, Any]) -> str:
    if not values:
        return "none"
    return f"<code>{escape(json.dumps(values, sort_keys=True, ensure_ascii=False, default=str))}</code>"


def _hash(value: str) -> str:
    return f'<code title="{escape(value)}">{escape(value[:12])}</code>'


def _stats_table(stats: Sequence[StatsEntry]) -> str:
    if not stats:
        return "<p class=note>No activation statistics are stored for this neuron.</p>"
    rows = []
    for entry in stats:
        quantiles = " · ".join(f"p{probability * 100:g} {number(value, 3)}" for probability, value in entry.quantiles)
        rows.append(f"<tr><td>{_hash(entry.manifest_hash)}</td><td class=num>{entry.count}</td>"
                    f"<td class=num>{number(entry.mean)}</td><td class=num>{number(entry.std)}</td>"
                    f"<td class=num>{number(entry.min)}</td><td class=num>{number(entry.max)}</td>"
                    f"<td class=num>{number(entry.fraction_positive)}</td><td class=quantiles>{escape(quantiles)}</td>"
                    "</tr>")
    return ("<table class=stats><thead><tr><th>recording</th><th>tokens</th><th>mean</th><th>std</th><th>min</th>"
            "<th>max</th><th>fraction &gt; 0</th><th>quantiles</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def _score_row(row: ResultRow) -> str:
    reason = f' title="{escape(row.undefined_reason)}"' if row.undefined_reason else ""
    return (f"<tr data-score-id={row.score_id}><td>{escape(row.simulator)}</td>"
            f"<td>{escape(row.simulator_backend)}<br><span class=meta>{escape(row.simulator_model)}</span></td>"
            f"<td>{_hash(row.simulator_prompt_hash)}</td><td class='num score'{reason}>{number(row.score)}</td>"
            f"<td>{_interval(row.ci_low, row.ci_high)}</td><td class=num>{number(row.pearson_top)}</td>"
            f"<td class=num>{number(row.pearson_random)}</td><td class=num>{number(row.rsquared)}</td>"
            f"<td class=num>{number(row.absolute_dev_explained)}</td><td class=num>{row.scored_tokens}</td>"
            f"<td>{escape(row.score_run_id if row.score_run_id is not None else '–')}</td>"
            f"<td>{escape(row.scored_at)}</td></tr>")


def _explanations(rows: Sequence[ResultRow]) -> str:
    """Explanations best first, each with its scores (rows arrive best first, one per explanation-score pair)."""
    grouped: dict[int, list[ResultRow]] = {}
    for row in rows:
        grouped.setdefault(row.explanation_id, []).append(row)
    articles = []
    for rank, group in enumerate(grouped.values(), start=1):
        first = group[0]
        run = first.explanation_run_id if first.explanation_run_id is not None else "–"
        articles.append(
            f"<article class=explanation data-explanation-id={first.explanation_id}>"
            f"<h3><span class=rank>#{rank}</span> <span class=text>{escape(first.text)}</span></h3>"
            "<dl class=provenance>"
            f"<dt>method</dt><dd>{escape(first.method)} ({escape(first.polarity)})</dd>"
            f"<dt>explainer</dt><dd>{escape(first.explainer_backend)} · {escape(first.explainer_model)}</dd>"
            f"<dt>prompt</dt><dd>{_hash(first.explanation_prompt_hash)}</dd>"
            f"<dt>run</dt><dd>{escape(run)}</dd><dt>made</dt><dd>{escape(first.explained_at)}</dd>"
            f"<dt>split seed</dt><dd>{first.split_seed}</dd><dt>recording</dt><dd>{_hash(first.manifest_hash)}</dd>"
            f"<dt>parameters</dt><dd>{_parameters(first.explanation_parameters)}</dd>"
            f"<dt>config</dt><dd>{_hash(first.explanation_key)}</dd></dl>"
            "<table class=scores><thead><tr><th>simulator</th><th>backend · model</th><th>prompt</th><th>score</th>"
            "<th>95% CI</th><th>top</th><th>random</th><th>R²</th><th>ADE</th><th>tokens</th><th>run</th>"
            f"<th>scored</th></tr></thead><tbody>{''.join(_score_row(row) for row in group)}</tbody></table>"
            "</article>")
    return "".join(articles)


def neuron_page(context: PageContext, *, model_id: str, fingerprint: str, layer: int, neuron: int,
                rows: Sequence[ResultRow], stats: Sequence[StatsEntry], data_json: str,
                record_note: str, crumbs: Sequence[Link], neighbours: Sequence[Link]) -> str:
    """One neuron: best explanation, statistics, every explanation with scores and provenance, and the window
    heat-maps that assets/neuron.js draws from `data_json` (script-safe JSON, see encoding.script_safe)."""
    best = rows[0]
    body = (f"<h1>Layer {layer}, neuron {neuron}</h1>"
            f"<p class=meta>{escape(model_id)} · weights <code>{escape(fingerprint[:16])}</code></p>"
            f"<section class=best><p class=best-text>{escape(best.text)}</p>"
            f"<p>score <strong class=score>{number(best.score)}</strong> {_interval(best.ci_low, best.ci_high)} · "
            f"{escape(best.method)} · {escape(best.explainer_model)} · simulated by {escape(best.simulator)}</p>"
            "</section>"
            f"<section><h2>Activation statistics</h2>{_stats_table(stats)}</section>"
            f"<section><h2>Explanations</h2>{_explanations(rows)}</section>"
            "<section id=scored-section><h2>Scored windows</h2><p class=note>The windows stored with each score "
            "(held-out windows it was computed on and calibration windows, labelled by split): true activations "
            "(left) and the simulator's 0–10 predictions (right). Hover a token for its value.</p>"
            "<div id=scored></div></section>"
            "<section id=record-section><h2>Recorded windows</h2>"
            f"<p class=note>{escape(record_note)}</p><div id=records></div></section>"
            f'<script type="application/json" id="neuron-data">{data_json}</script>')
    return render_page(context, title=f"Neuron {layer}:{neuron} · {model_id}", root="../../../", kind="neuron",
                       body=body, crumbs=crumbs, neighbours=neighbours, scripts=("assets/neuron.js",))
