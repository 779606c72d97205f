"""The static site generator: index, per-layer overviews and per-neuron pages from the database (and record stores).

Layout of a site directory:

    index.html                         searchable, sortable table of every neuron (data from data/index.js)
    data/index.js                      `window.NEURON_INDEX = {...}`: one compact row per neuron
    assets/style.css, index.js, neuron.js
    m/<model>/layer-<L>.html           a layer: summary, score histogram, its neurons by score
    m/<model>/<L>/<N>.html             a neuron: stats, explanations with provenance, window heat-maps
    neuron-explainer-site.json         marks the directory as a generated site (what was generated, when)

The site is written into a staging directory next to `out` and swapped in at the end, so a reader (or `serve`)
never sees half a site, and an existing directory is replaced only when it is a site this generator wrote.
"""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import math
import multiprocessing
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from neuron_explainer import __version__
from neuron_explainer.activations import NeuronRecord, RecordStore
from neuron_explainer.activations.weight_views import NeuronWeightView, WeightViews
from neuron_explainer.core.errors import UserError
from neuron_explainer.db import Database, ExplanationQuery, ResultRow, SortOrder
from neuron_explainer.db.reads import StatsEntry, explanation_sources, layer_stats, recording_paths, score_windows
from neuron_explainer.export.html import pages
from neuron_explainer.export.html.encoding import decimals_for, finite_or_none, rounded, script_json, script_safe
from neuron_explainer.export.html.svg import layer_bars, score_histogram
from neuron_explainer.export.html.weights import weight_view_section
from neuron_explainer.export.readable import readable_text
from neuron_explainer.export.summary import GOOD_SCORE, LayerSummary, layer_summaries

logger = logging.getLogger(__name__)

SITE_MARKER = "neuron-explainer-site.json"
"""File that marks a directory as a generated site (an existing `out` without it is never replaced)."""
SITE_FORMAT = "neuron-explainer-site"
NEURON_CHUNK = 256
"""Neurons whose explanations, scores and windows are read from the database together."""
PARALLEL_FROM = 3000
"""With `jobs=0`, sites of at least this many neurons write their pages in several processes."""
MAX_AUTO_JOBS = 8
"""Most processes `jobs=0` starts."""


@dataclass(frozen=True)
class SiteOptions:
    """How much the site shows and where windows come from."""

    records: Path | None = None
    """A record store to take top/random windows from (default: the stored path of each neuron's recording,
    when it still exists)."""
    top_windows: int = 10
    """Top-activating windows shown per neuron (from the record store)."""
    random_windows: int = 5
    """Random windows shown per neuron (from the record store)."""
    bottom_windows: int = 5
    """Most negative windows shown per neuron when the store kept them."""
    threshold: float = GOOD_SCORE
    """Score from which a neuron counts as well explained (layer overviews)."""
    jobs: int = 0
    """Processes writing neuron pages (0: one per idle CPU, up to MAX_AUTO_JOBS, for sites of PARALLEL_FROM
    neurons or more; else 1)."""
    progress: bool = True
    """Show a progress bar on a terminal."""


@dataclass(frozen=True)
class SiteSummary:
    """What a site generation wrote."""

    path: Path
    """The site directory."""
    index: Path
    """Its index.html."""
    neurons: int
    """Neurons in the index (one page each)."""
    layer_pages: int
    """Layer overview pages."""
    neurons_with_records: int
    """Neuron pages that show record-store windows."""
    record_stores: tuple[str, ...]
    """Record stores windows were read from."""
    notes: tuple[str, ...]
    """Anything the user should know."""
    seconds: float
    """Wall time of the generation."""
    jobs: int
    """Processes that wrote neuron pages."""


@dataclass(frozen=True)
class _Model:
    model_id: str
    fingerprint: str
    slug: str


def model_slug(model_id: str, fingerprint: str) -> str:
    """A path segment for a subject model: readable, filesystem-safe, distinct per (id, fingerprint)."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", model_id.rsplit("/", 1)[-1]).strip("-.")[:40] or "model"
    digest = hashlib.sha256(f"{model_id}\0{fingerprint}".encode()).hexdigest()[:8]
    return f"{readable}-{digest}"


def neuron_href(slug: str, layer: int, neuron: int) -> str:
    """Path of a neuron page relative to the site root."""
    return f"m/{slug}/{layer}/{neuron}.html"


def layer_href(slug: str, layer: int) -> str:
    """Path of a layer page relative to the site root."""
    return f"m/{slug}/layer-{layer}.html"


class _RecordStores:
    """Which record store holds a neuron's windows: the one given explicitly, else the registered path of the
    recording its best explanation was made from, while that store still exists."""

    def __init__(self, explicit: RecordStore | None, registered: Mapping[str, str]) -> None:
        self._explicit = explicit
        self._registered = registered
        self._opened: dict[str, RecordStore | None] = {}
        self._views: dict[Path, WeightViews | None] = {}
        self.used: set[str] = set()

    def has_store(self, model_id: str, manifest_hash: str) -> bool:
        """Whether some record store answers for this model and recording."""
        return self._store(model_id, manifest_hash) is not None

    def record(self, model_id: str, manifest_hash: str, layer: int, neuron: int) -> NeuronRecord | None:
        """The neuron's record, or None when no store holds it."""
        store = self._store(model_id, manifest_hash)
        if store is None or layer not in store.layers or not 0 <= neuron < store.neurons_per_layer:
            return None
        self.used.add(str(store.path))
        return store.load_neuron(layer, neuron)

    def weight_view(self, model_id: str, manifest_hash: str, layer: int, neuron: int) -> NeuronWeightView | None:
        """The neuron's weight view, or None when its store has none."""
        store = self._store(model_id, manifest_hash)
        if store is None or layer not in store.layers or not 0 <= neuron < store.neurons_per_layer:
            return None
        if store.path not in self._views:
            self._views[store.path] = WeightViews.open(store)
        views = self._views[store.path]
        return views.neuron(layer, neuron) if views is not None else None

    def _store(self, model_id: str, manifest_hash: str) -> RecordStore | None:
        if self._explicit is not None:
            return self._explicit if self._explicit.manifest.model_id == model_id else None
        if manifest_hash not in self._opened:
            path = self._registered.get(manifest_hash)
            store = None
            if path and Path(path).is_dir():
                try:
                    store = RecordStore.open(path)
                except UserError as exc:
                    logger.warning("not showing windows from %s: %s", path, exc)
            self._opened[manifest_hash] = store
        return self._opened[manifest_hash]


def _prepare_target(out: Path) -> Path:
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; the html export writes a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / SITE_MARKER).is_file():
        raise UserError(f"refusing to replace {out}: it is a non-empty directory that is not a generated site")
    if not out.parent.exists():
        raise UserError(f"cannot create {out}: directory {out.parent} does not exist")
    staging = out.parent / f".{out.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        staging.mkdir()
    except OSError as exc:
        raise UserError(f"cannot create {out}: {exc.strerror or exc}") from None
    return staging


def _swap_into_place(staging: Path, out: Path) -> None:
    if out.exists():
        # A directory cannot be renamed over a non-empty one: move the old site aside first.
        old = out.parent / f".{out.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
        os.replace(out, old)
        os.replace(staging, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out)


def _round_score(value: float) -> float | None:
    return round(value, 4) if math.isfinite(value) else None


def index_script(rows: Sequence[ResultRow], threshold: float) -> str:
    """data/index.js for best-per-neuron `rows` in site order: `window.NEURON_INDEX` with one compact row each."""
    models = _models_of(rows)
    model_index = {(model.model_id, model.fingerprint): index for index, model in enumerate(models)}
    lookups: dict[str, dict[str, int]] = {"methods": {}, "explainers": {}, "simulators": {}, "polarities": {}}

    def code(kind: str, value: str) -> int:
        return lookups[kind].setdefault(value, len(lookups[kind]))

    compact = [[model_index[(row.model_id, row.model_fingerprint)], row.neuron.layer, row.neuron.neuron,
                _round_score(row.score), _round_score(row.ci_low), _round_score(row.ci_high),
                code("methods", row.method), code("explainers", row.explainer_model),
                code("simulators", row.simulator), readable_text(row.text), code("polarities", row.polarity)]
               for row in rows]
    value = {"columns": ["model", "layer", "neuron", "score", "ci_low", "ci_high", "method", "explainer",
                         "simulator", "text", "polarity"],
             "models": [{"id": model.model_id, "fingerprint": model.fingerprint, "slug": model.slug}
                        for model in models],
             **{kind: list(table) for kind, table in lookups.items()}, "threshold": threshold, "rows": compact}
    return f"window.NEURON_INDEX = {script_json(value)};\n"


def _record_json(record: NeuronRecord, shown: set[int], options: SiteOptions) -> str:
    """Record-store windows for a page: tokens once per window id, activations rounded to the page's scale."""
    groups = {"top": record.top_windows[:options.top_windows],
              "random": record.random_windows[:options.random_windows],
              "bottom": record.bottom_windows[:options.bottom_windows]}
    arrays = {name: np.asarray([window.activations for window in group], dtype=np.float64)
              for name, group in groups.items()}
    decimals = decimals_for(max((_array_peak(array) for array in arrays.values()), default=0.0))
    tokens: dict[str, list[str]] = {}
    value: dict[str, Any] = {"tokens": tokens, "recorded": {"top": len(record.top_windows),
                                                            "random": len(record.random_windows),
                                                            "bottom": len(record.bottom_windows)}}
    for name, group in groups.items():
        entries = []
        for window, activations in zip(group, rounded(arrays[name], decimals)):
            tokens.setdefault(str(window.window_id), list(window.tokens))
            entry: dict[str, Any] = {"id": window.window_id, "act": activations}
            if window.window_id in shown:
                entry["shown"] = True
            entries.append(entry)
        value[name] = entries
    return script_json(value)


def _array_peak(array: np.ndarray) -> float:
    finite = np.abs(array[np.isfinite(array)])
    return float(finite.max()) if finite.size else 0.0


def _neuron_data(rows: Sequence[ResultRow], windows: Mapping[int, str], sources: Mapping[int, list[int]],
                 record: NeuronRecord | None, options: SiteOptions) -> str:
    """The script-safe JSON a neuron page embeds for neuron.js: each score with its windows spliced in as stored
    (not decoded and re-encoded: most of a page's data), then the record-store windows."""
    scores = []
    for row in rows:
        meta = script_json({"id": row.score_id, "explanation": row.text, "method": row.method,
                            "simulator": row.simulator, "score": finite_or_none(row.score)})
        scores.append(f'{{"meta":{meta},"windows":{script_safe(windows.get(row.score_id, "[]"))}}}')
    shown = {window_id for row in rows for window_id in sources.get(row.explanation_id, [])}
    records = _record_json(record, shown, options) if record is not None else "null"
    return f'{{"scores":[{",".join(scores)}],"records":{records}}}'


def _stats_from_record(record: NeuronRecord, manifest_hash: str) -> StatsEntry:
    stats = record.stats
    return StatsEntry(manifest_hash=manifest_hash, count=stats.count, mean=finite_or_none(stats.mean),
                      std=finite_or_none(stats.std), min=finite_or_none(stats.min), max=finite_or_none(stats.max),
                      fraction_positive=finite_or_none(stats.fraction_positive), quantiles=stats.quantiles)


def _record_note(record: NeuronRecord | None, options: SiteOptions, *, any_store: bool) -> str:
    if record is not None:
        parts = [f"{min(options.top_windows, len(record.top_windows))} of {len(record.top_windows)} "
                 "top-activating windows",
                 f"{min(options.random_windows, len(record.random_windows))} of the "
                 f"{len(record.random_windows)} shared random windows"]
        if record.bottom_windows:
            parts.append(f"{min(options.bottom_windows, len(record.bottom_windows))} most negative windows")
        return ("From the record store: " + ", ".join(parts) + " (true activations). Windows the explainer was "
                "shown and windows that were scored are marked.")
    if any_store:
        return "The record store does not hold this neuron; only the scored windows above are available."
    return ("No record store was available (export with --records DIR to include each neuron's top and random "
            "windows); only the scored windows above are shown.")


def _group_by_neuron(rows: Iterator[ResultRow], fingerprint: str) -> dict[int, list[ResultRow]]:
    grouped: dict[int, list[ResultRow]] = {}
    for row in rows:
        if row.model_fingerprint == fingerprint:
            grouped.setdefault(row.neuron.neuron, []).append(row)
    return grouped


def _write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


@dataclass(frozen=True)
class _Chunk:
    """Neurons of one layer of one model whose pages are read and written together."""

    model: _Model
    layer: int
    neurons: tuple[int, ...]
    neighbours: tuple[tuple[pages.Link, ...], ...]
    """Prev/next links of each neuron (same order as `neurons`)."""


@dataclass(frozen=True)
class _ChunkResult:
    pages: int
    with_records: int
    stores: frozenset[str]


class _PageWriter:
    """Writes neuron pages chunk by chunk; one per process when pages are written in parallel."""

    def __init__(self, database: Database, root: Path, options: SiteOptions, context: pages.PageContext,
                 registered: Mapping[str, str]) -> None:
        self.database = database
        self.root = root
        self.options = options
        self.context = context
        explicit = RecordStore.open(options.records) if options.records is not None else None
        self.stores = _RecordStores(explicit, registered)

    def write_chunk(self, chunk: _Chunk) -> _ChunkResult:
        model, layer = chunk.model, chunk.layer
        query = ExplanationQuery(layers=(layer,), neurons=chunk.neurons, model=model.model_id, sort=SortOrder.LAYER,
                                 limit=None, best_per_neuron=False)
        grouped = _group_by_neuron(self.database.iter_query(query), model.fingerprint)
        pairs = [row for rows in grouped.values() for row in rows]
        with self.database.reader() as connection:
            windows = score_windows(connection, [row.score_id for row in pairs])
            sources = explanation_sources(connection, [row.explanation_id for row in pairs])
            stats = layer_stats(connection, model_id=model.model_id, fingerprint=model.fingerprint, layer=layer,
                                neurons=chunk.neurons)
        written = with_records = 0
        for neuron, neighbours in zip(chunk.neurons, chunk.neighbours):
            rows = grouped.get(neuron)
            if rows:
                with_records += self._neuron_page(model, layer, neuron, rows, windows, sources,
                                                  stats.get(neuron, []), neighbours)
                written += 1
        return _ChunkResult(written, with_records, frozenset(self.stores.used))

    def _neuron_page(self, model: _Model, layer: int, neuron: int, rows: list[ResultRow],
                     windows: Mapping[int, str], sources: Mapping[int, list[int]],
                     stats: list[StatsEntry], neighbours: Sequence[pages.Link]) -> int:
        best = rows[0]
        record = self.stores.record(model.model_id, best.manifest_hash, layer, neuron)
        if record is not None and not stats:
            stats = [_stats_from_record(record, best.manifest_hash)]
        crumbs = [pages.Link("Index", "../../../index.html"),
                  pages.Link(f"{model.model_id} layer {layer}", f"../layer-{layer}.html"),
                  pages.Link(f"neuron {neuron}")]
        note = _record_note(record, self.options, any_store=self.stores.has_store(model.model_id, best.manifest_hash))
        html = pages.neuron_page(self.context, model_id=model.model_id, fingerprint=model.fingerprint, layer=layer,
                                 neuron=neuron, rows=rows, stats=stats,
                                 data_json=_neuron_data(rows, windows, sources, record, self.options),
                                 record_note=note, crumbs=crumbs, neighbours=neighbours,
                                 extra=weight_view_section(self.stores.weight_view(model.model_id, best.manifest_hash,
                                                                                   layer, neuron)))
        _write(self.root, neuron_href(model.slug, layer, neuron), html)
        return int(record is not None)


_worker: _PageWriter | None = None
"""The page writer of a pool process (set by `_start_worker`)."""


def _start_worker(url: str, root: Path, options: SiteOptions, context: pages.PageContext,
                  registered: dict[str, str]) -> None:
    """Initialise a pool process: open the database (read-only use) and its page writer, closed when it exits."""
    global _worker
    from neuron_explainer.db import open_database

    _worker = _PageWriter(open_database(url, create=False), root, options, context, registered)


def _write_chunk_in_worker(chunk: _Chunk) -> _ChunkResult:
    assert _worker is not None, "the pool initialiser opens the page writer"
    return _worker.write_chunk(chunk)


def _parallel_pages(database: Database, staging: Path, options: SiteOptions, context: pages.PageContext,
                    registered: Mapping[str, str], chunks: Sequence[_Chunk], jobs: int,
                    add: Callable[[_ChunkResult, int], None]) -> None:
    """Write the chunks in a pool of `jobs` processes, reporting each chunk as it finishes. The processes are
    spawned, not forked (a forked child would inherit the database writer thread); spawning imports the caller's
    main module, which the CLI's guards. The database URL (with any password) reaches them through the pool's
    pipe, never a command line."""
    url = database.url.render_as_string(hide_password=False)
    pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=min(jobs, len(chunks)), mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker, initargs=(url, staging, options, context, dict(registered)))
    with pool:
        futures = {pool.submit(_write_chunk_in_worker, chunk): chunk for chunk in chunks}
        try:
            for future in concurrent.futures.as_completed(futures):
                add(future.result(), len(futures[future].neurons))
        except concurrent.futures.process.BrokenProcessPool as exc:
            raise RuntimeError(f"a page-writing process failed: {exc}") from None
        finally:
            for future in futures:
                future.cancel()


def _one_row_per_neuron(rows: Sequence[ResultRow]) -> list[ResultRow]:
    """The first row of each neuron (a neuron's page shows every explanation, of both polarities)."""
    seen: set[tuple[str, str, int, int]] = set()
    unique = []
    for row in rows:
        key = (row.model_id, row.model_fingerprint, row.neuron.layer, row.neuron.neuron)
        if key not in seen:
            seen.add(key)
            unique.append(row)
    return unique


def _chunks(models: Sequence[_Model], best_rows: Sequence[ResultRow]) -> list[_Chunk]:
    """Chunks of neurons in site order, each neuron with links to its neighbours in that order."""
    slug_of = {(model.model_id, model.fingerprint): model for model in models}
    keyed = [(slug_of[(row.model_id, row.model_fingerprint)], row.neuron.layer, row.neuron.neuron)
             for row in best_rows]
    root = "../../../"
    links = []
    for index, (model, layer, neuron) in enumerate(keyed):
        neighbours = []
        if index > 0:
            before_model, before_layer, before_neuron = keyed[index - 1]
            neighbours.append(pages.Link(f"← {before_layer}:{before_neuron}",
                                         root + neuron_href(before_model.slug, before_layer, before_neuron), "prev"))
        if index + 1 < len(keyed):
            after_model, after_layer, after_neuron = keyed[index + 1]
            neighbours.append(pages.Link(f"{after_layer}:{after_neuron} →",
                                         root + neuron_href(after_model.slug, after_layer, after_neuron), "next"))
        links.append(tuple(neighbours))
    chunks: list[_Chunk] = []
    start = 0
    while start < len(keyed):
        model, layer, _ = keyed[start]
        end = start
        while end < len(keyed) and end - start < NEURON_CHUNK and keyed[end][:2] == (model, layer):
            end += 1
        chunks.append(_Chunk(model, layer, tuple(neuron for _, _, neuron in keyed[start:end]),
                             tuple(links[start:end])))
        start = end
    return chunks


def _layer_pages(root: Path, context: pages.PageContext, model: _Model, entries: Sequence[ResultRow],
                 summaries: Sequence[LayerSummary], threshold: float) -> list[tuple[LayerSummary, str]]:
    """One overview page per layer; returns (summary, href) per layer plus the total row."""
    by_layer: dict[int, list[ResultRow]] = {}
    for row in entries:
        by_layer.setdefault(row.neuron.layer, []).append(row)
    layers = sorted(by_layer)
    linked = []
    for summary in summaries:
        if summary.layer is None:
            linked.append((summary, ""))
            continue
        layer = summary.layer
        rows = sorted(by_layer[layer], key=lambda row: (-(row.score if math.isfinite(row.score) else -9.0),
                                                         row.neuron.neuron))
        position = layers.index(layer)
        neighbours = []
        if position > 0:
            neighbours.append(pages.Link(f"← layer {layers[position - 1]}", f"layer-{layers[position - 1]}.html",
                                         "prev"))
        if position + 1 < len(layers):
            neighbours.append(pages.Link(f"layer {layers[position + 1]} →", f"layer-{layers[position + 1]}.html",
                                         "next"))
        html = pages.layer_page(
            context, model_id=model.model_id, layer=layer, summary=summary,
            histogram_svg=score_histogram([row.score for row in rows], threshold=threshold),
            rows=[(row, f"{layer}/{row.neuron.neuron}.html") for row in rows], neighbours=neighbours)
        _write(root, layer_href(model.slug, layer), html)
        linked.append((summary, layer_href(model.slug, layer)))
    return linked


def _models_of(rows: Sequence[ResultRow]) -> list[_Model]:
    keys = sorted({(row.model_id, row.model_fingerprint) for row in rows})
    return [_Model(model_id, fingerprint, model_slug(model_id, fingerprint)) for model_id, fingerprint in keys]


def _jobs(options: SiteOptions, neurons: int) -> int:
    if options.jobs > 0:
        return options.jobs
    # Worker start-up (imports, opening the database) costs about a second; small sites are faster in-process.
    if neurons < PARALLEL_FROM:
        return 1
    # Only CPUs that are idle now help: on a busy machine extra processes just compete with each other.
    idle = (os.cpu_count() or 1) - os.getloadavg()[0]
    return max(1, min(int(idle), MAX_AUTO_JOBS))


def _neuron_pages(database: Database, staging: Path, options: SiteOptions, context: pages.PageContext,
                  registered: Mapping[str, str], chunks: Sequence[_Chunk], jobs: int, bar: Any) -> _ChunkResult:
    total = _ChunkResult(0, 0, frozenset())

    def add(result: _ChunkResult, size: int) -> None:
        nonlocal total
        total = _ChunkResult(total.pages + result.pages, total.with_records + result.with_records,
                             total.stores | result.stores)
        bar.update(size)

    if jobs <= 1:
        writer = _PageWriter(database, staging, options, context, registered)
        for chunk in chunks:
            add(writer.write_chunk(chunk), len(chunk.neurons))
    else:
        _parallel_pages(database, staging, options, context, registered, chunks, jobs, add)
    return total


def build_site(database: Database, out: str | Path, *, query: ExplanationQuery | None = None,
               options: SiteOptions = SiteOptions()) -> SiteSummary:
    """Generate the static site for the neurons `query` selects (default: every neuron with a scored explanation)
    into directory `out`, replacing a site generated there before."""
    from tqdm import tqdm

    started = time.perf_counter()
    out = Path(out)
    explicit = RecordStore.open(options.records) if options.records is not None else None
    best_query = dataclasses.replace(query or ExplanationQuery(limit=None), best_per_neuron=True)
    best_rows = sorted(database.iter_query(best_query),
                       key=lambda row: (row.model_id, row.model_fingerprint, row.neuron.layer, row.neuron.neuron))
    # One page per neuron (its page shows both polarities); the index lists the best row of each polarity.
    page_rows = _one_row_per_neuron(best_rows)
    models = _models_of(best_rows)
    notes: list[str] = []
    if not best_rows:
        notes.append("no scored explanations match; the site has an empty index")
    if explicit is not None and explicit.manifest.model_id not in {model.model_id for model in models}:
        notes.append(f"the record store {options.records} holds model {explicit.manifest.model_id!r}, which has no "
                     "neurons in this site; its windows are not shown")
    with database.reader() as connection:
        registered = recording_paths(connection)
    context = pages.PageContext(version=__version__, threshold=options.threshold,
                                generated=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    jobs = _jobs(options, len(page_rows))

    staging = _prepare_target(out)
    try:
        for name in pages.ASSET_FILES:
            _write(staging, f"assets/{name}", pages.asset_text(name))
        _write(staging, "data/index.js", index_script(best_rows, options.threshold))
        sections = []
        layer_count = 0
        for model in models:
            entries = [row for row in best_rows
                       if (row.model_id, row.model_fingerprint) == (model.model_id, model.fingerprint)]
            summaries = layer_summaries(entries, threshold=options.threshold,
                                        polarity_any=best_query.polarity == "any")
            # Layer pages list the first side's best rows (positive when present); the other side's summary rows
            # are shown on the index without a page of their own.
            first_side = summaries[0].polarity
            primary = [summary for summary in summaries if summary.polarity == first_side]
            side_entries = [row for row in entries if best_query.polarity == "any" or row.polarity == first_side]
            linked = _layer_pages(staging, context, model, side_entries, primary, options.threshold)
            linked += [(summary, "") for summary in summaries if summary.polarity != first_side]
            layer_count += len(linked) - 1
            sections.append(pages.ModelSection(
                model_id=model.model_id, fingerprint=model.fingerprint, summaries=linked,
                histogram_svg=score_histogram([row.score for row in entries], threshold=options.threshold),
                layers_svg=layer_bars([(summary.layer, summary.fraction_good) for summary in primary
                                       if summary.layer is not None],
                                      label=f"fraction of neurons ≥ {options.threshold:g} ({first_side})")))
        _write(staging, "index.html", pages.index_page(context, sections=sections,
                                                            neuron_count=len(page_rows)))
        with tqdm(total=len(page_rows), unit="neuron", desc="html", disable=None if options.progress else True,
                  dynamic_ncols=True) as bar:
            written = _neuron_pages(database, staging, options, context, registered,
                                    _chunks(models, page_rows), jobs, bar)
        if options.records is None and not written.stores and best_rows:
            notes.append("no record store found at the recorded paths: neuron pages show only the scored windows "
                         "(pass --records DIR to include top and random windows)")
        _write(staging, SITE_MARKER, json.dumps({
            "format": SITE_FORMAT, "version": 1, "generator": f"neuron-explainer {__version__}",
            "generated": context.generated, "neurons": len(page_rows),
            "models": [{"id": model.model_id, "fingerprint": model.fingerprint, "slug": model.slug}
                       for model in models]}, indent=2) + "\n")
        _swap_into_place(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return SiteSummary(path=out, index=out / "index.html", neurons=len(page_rows), layer_pages=layer_count,
                       neurons_with_records=written.with_records, record_stores=tuple(sorted(written.stores)),
                       notes=tuple(notes), seconds=time.perf_counter() - started, jobs=jobs)
