"""Every read of the results database: has-work checks, runs, usage, one neuron's details, and the bulk reads
exports and the viewer need; each takes a read connection (`Database.reader()`), and nothing else outside db/
touches the table models.

`neuron_details` answers one neuron with four queries; a site of 50,000 neurons would spend minutes in it, so the
bulk reads (`score_windows`, `explanation_sources`, `layer_stats`, `recording_paths`) fetch many neurons at once in
chunks of ids. Their rows are plain JSON-ready values (window details as their stored JSON text) because they go
straight into page data.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, case, func, select

from neuron_explainer.activations.records import NeuronStats
from neuron_explainer.core.failures import FailureKind
from neuron_explainer.core.neurons import NeuronId
from neuron_explainer.db.classifier import classifier_scores_of_neuron
from neuron_explainer.db.codec import load_json, none_to_nan
from neuron_explainer.db.models import (UNDEFINED_SORT_SCORE, ClassifierScoreRow, ExplanationRow, FailureRow,
                                        LLMCallRow, NeuronRow, NeuronStatsRow, RecordingRow, RunRow, ScoreRow,
                                        ScoreWindowsRow, SubjectModelRow)
from neuron_explainer.db.results import NeuronDetail, RunInfo, StoredExplanation, StoredScore, UsageTotals
from neuron_explainer.db.writes import chunks, windows_from_json
from neuron_explainer.explain.types import ExplainerKind, Explanation, Polarity
from neuron_explainer.simulate.types import Metrics, Score, SimulatorKind


# --- runs and usage ------------------------------------------------------------------------------------------


def runs(connection: Connection, *, limit: int | None = 20, run_ids: Sequence[int] = ()) -> list[RunInfo]:
    """Most recent runs first."""
    table = RunRow.__table__
    statement = select(table).order_by(table.c.id.desc()).limit(limit)
    if run_ids:
        statement = statement.where(table.c.id.in_(list(run_ids)))
    return [RunInfo(id=row.id, status=row.status, config=load_json(row.config_json, {}),
                    code_version=row.code_version, host=row.host, pid=row.pid, started_at=row.started_at,
                    ended_at=row.ended_at, totals=load_json(row.totals_json, {}), error=row.error)
            for row in connection.execute(statement)]


def usage_totals(connection: Connection, *, run_id: int | None = None) -> UsageTotals:
    """Summed ledger entries (of one run, or of all)."""
    c = LLMCallRow.__table__
    statement = select(func.count(c.c.id), func.coalesce(func.sum(case((c.c.from_cache, 1), else_=0)), 0),
                       func.coalesce(func.sum(c.c.prompt_tokens), 0),
                       func.coalesce(func.sum(c.c.completion_tokens), 0),
                       func.coalesce(func.sum(c.c.cached_tokens), 0), func.coalesce(func.sum(c.c.cost_usd), 0.0))
    if run_id is not None:
        statement = statement.where(c.c.run_id == run_id)
    row = connection.execute(statement).one()
    return UsageTotals(calls=int(row[0]), cache_hits=int(row[1]), prompt_tokens=int(row[2]),
                       completion_tokens=int(row[3]), cached_tokens=int(row[4]), cost_usd=float(row[5]))


def counts(connection: Connection) -> dict[str, int]:
    """Rows per main table."""
    tables = {"subject_models": SubjectModelRow, "recordings": RecordingRow, "neurons": NeuronRow,
              "explanations": ExplanationRow, "scores": ScoreRow, "classifier_scores": ClassifierScoreRow,
              "failures": FailureRow,
              "llm_calls": LLMCallRow, "runs": RunRow}
    return {name: int(connection.execute(select(func.count()).select_from(model.__table__)).scalar_one())
            for name, model in tables.items()}


# --- has-work checks -------------------------------------------------------------------------------------------


def explained_neurons(connection: Connection, config_key: str) -> set[NeuronId]:
    """Neurons that already have an explanation under this explanation config key."""
    e, n = ExplanationRow.__table__, NeuronRow.__table__
    statement = (select(n.c.layer, n.c.neuron).select_from(e.join(n, n.c.id == e.c.neuron_id))
                 .where(e.c.config_key == config_key))
    return {NeuronId(row.layer, row.neuron) for row in connection.execute(statement)}


def scored_neurons(connection: Connection, *, explanation_key: str, score_key: str) -> set[NeuronId]:
    """Neurons whose explanation under `explanation_key` already has a score under `score_key`."""
    return _neurons_with(connection, ScoreRow.__table__, explanation_key, score_key)


def classified_neurons(connection: Connection, *, explanation_key: str, score_key: str) -> set[NeuronId]:
    """Neurons whose explanation under `explanation_key` has a classifier score under `score_key`."""
    return _neurons_with(connection, ClassifierScoreRow.__table__, explanation_key, score_key)


def _neurons_with(connection: Connection, scores: Any, explanation_key: str, score_key: str) -> set[NeuronId]:
    e, n = ExplanationRow.__table__, NeuronRow.__table__
    statement = (select(n.c.layer, n.c.neuron)
                 .select_from(scores.join(e, e.c.id == scores.c.explanation_id).join(n, n.c.id == scores.c.neuron_id))
                 .where(e.c.config_key == explanation_key, scores.c.config_key == score_key))
    return {NeuronId(row.layer, row.neuron) for row in connection.execute(statement)}


def scores_without_baselines(connection: Connection, *, explanation_key: str, score_key: str) -> set[NeuronId]:
    """Neurons whose score (explanation under `explanation_key`, score under `score_key`) has no `empty` and
    `shuffled` baselines yet (the lexical ceiling, stored with every score, does not count)."""
    s, e, n = ScoreRow.__table__, ExplanationRow.__table__, NeuronRow.__table__
    statement = (select(n.c.layer, n.c.neuron)
                 .select_from(s.join(e, e.c.id == s.c.explanation_id).join(n, n.c.id == s.c.neuron_id))
                 .where(e.c.config_key == explanation_key, s.c.config_key == score_key, ~s.c.baselines_json.contains('"empty":')))
    return {NeuronId(row.layer, row.neuron) for row in connection.execute(statement)}


def failure_reasons(connection: Connection, neuron: NeuronId) -> list[tuple[str, str]]:
    """(stage, reason) of every stored failure of a neuron, newest first."""
    f = FailureRow.__table__
    statement = (select(f.c.stage, f.c.reason).where(f.c.layer == neuron.layer, f.c.neuron == neuron.neuron)
                 .order_by(f.c.id.desc()))
    return [(row.stage, row.reason) for row in connection.execute(statement)]


def failed_neurons(connection: Connection, *, stage: str, config_key: str,
                   kind: FailureKind | str | None = None) -> set[NeuronId]:
    """Neurons with a recorded failure at `stage` under `config_key` (in any run; subtract what succeeded), of one
    kind (transient, permanent) or of any."""
    f = FailureRow.__table__
    statement = select(f.c.layer, f.c.neuron).where(f.c.stage == stage, f.c.config_key == config_key)
    if kind is not None:
        statement = statement.where(f.c.kind == FailureKind(kind).value)
    return {NeuronId(row.layer, row.neuron) for row in connection.execute(statement)}


def load_explanations(connection: Connection, config_key: str, *,
                      neurons: Iterable[NeuronId] | None = None) -> dict[NeuronId, Explanation]:
    """Stored explanations under `config_key` (e.g. to re-score them with a new simulator)."""
    e, n = ExplanationRow.__table__, NeuronRow.__table__
    statement = (select(e, n.c.layer, n.c.neuron).select_from(e.join(n, n.c.id == e.c.neuron_id))
                 .where(e.c.config_key == config_key))
    wanted = set(neurons) if neurons is not None else None
    found = {}
    for row in connection.execute(statement):
        neuron = NeuronId(row.layer, row.neuron)
        if wanted is None or neuron in wanted:
            found[neuron] = explanation_from_row(row, neuron)
    return found


# --- one neuron --------------------------------------------------------------------------------------------------


def neuron_details(connection: Connection, neuron: NeuronId, *, model: str | None = None) -> list[NeuronDetail]:
    """Everything stored about one neuron, one entry per subject model (only `model` if given)."""
    n, m = NeuronRow.__table__, SubjectModelRow.__table__
    e, s, r, st = ExplanationRow.__table__, ScoreRow.__table__, RecordingRow.__table__, NeuronStatsRow.__table__
    statement = (select(n.c.id, m.c.model_id, m.c.fingerprint)
                 .select_from(n.join(m, m.c.id == n.c.subject_model_id))
                 .where(n.c.layer == neuron.layer, n.c.neuron == neuron.neuron).order_by(m.c.model_id))
    if model is not None:
        statement = statement.where(m.c.model_id == model)
    details = []
    for neuron_row in connection.execute(statement).all():
        stats = tuple(
            (row.manifest_hash, neuron_stats_from_row(row._mapping))
            for row in connection.execute(
                select(st, r.c.manifest_hash).select_from(st.join(r, r.c.id == st.c.recording_id))
                .where(st.c.neuron_id == neuron_row.id).order_by(st.c.id)))
        explanation_rows = connection.execute(
            select(e, r.c.manifest_hash).select_from(e.join(r, r.c.id == e.c.recording_id))
            .where(e.c.neuron_id == neuron_row.id).order_by(e.c.id)).all()
        texts = {row.id: row.text for row in explanation_rows}
        classified = classifier_scores_of_neuron(connection, neuron_row.id, neuron, texts)
        scores_by_explanation: dict[int, list[StoredScore]] = {}
        w = ScoreWindowsRow.__table__
        for row in connection.execute(select(s, w.c.windows_json)
                                      .select_from(s.outerjoin(w, w.c.score_id == s.c.id))
                                      .where(s.c.neuron_id == neuron_row.id)
                                      .order_by(s.c.sort_score.desc(), s.c.id)):
            scores_by_explanation.setdefault(row.explanation_id, []).append(
                stored_score_from_row(row, neuron, texts.get(row.explanation_id, "")))
        explanations = [
            StoredExplanation(id=row.id, config_key=row.config_key, run_id=row.run_id,
                              manifest_hash=row.manifest_hash, explanation=explanation_from_row(row, neuron),
                              scores=tuple(scores_by_explanation.get(row.id, ())),
                              classifier_scores=tuple(classified.get(row.id, ())))
            for row in explanation_rows]
        explanations.sort(key=lambda item: -best_sort_score(item))
        details.append(NeuronDetail(neuron=neuron, model_id=neuron_row.model_id,
                                    model_fingerprint=neuron_row.fingerprint, stats=stats,
                                    explanations=tuple(explanations)))
    return details


def best_sort_score(item: StoredExplanation) -> float:
    defined = [stored.score.metrics.pearson for stored in item.scores if math.isfinite(stored.score.metrics.pearson)]
    return max(defined) if defined else UNDEFINED_SORT_SCORE - (0 if item.scores else 1)


def neuron_stats_from_row(values: Mapping[str, Any]) -> NeuronStats:
    # Mapping access: `count` on a Row would be tuple.count.
    return NeuronStats(
        count=values["count"], mean=none_to_nan(values["mean"]), std=none_to_nan(values["std"]),
        min=none_to_nan(values["min"]), max=none_to_nan(values["max"]),
        fraction_positive=none_to_nan(values["fraction_positive"]),
        quantiles=tuple((float(p), float(v)) for p, v in load_json(values["quantiles_json"], [])))


def explanation_from_row(row: Any, neuron: NeuronId) -> Explanation:
    return Explanation(
        neuron=neuron, text=row.text, method=ExplainerKind(row.method), polarity=Polarity(row.polarity),
        explainer_backend=row.explainer_backend, explainer_model=row.explainer_model,
        prompt_hash=row.prompt_hash, parameters=load_json(row.parameters_json, {}),
        source_window_ids=tuple(load_json(row.source_window_ids_json, [])), split_seed=row.split_seed,
        created_at=row.created_at, prompt_tokens=row.prompt_tokens, completion_tokens=row.completion_tokens,
        extra=load_json(row.extra_json, {}))


def stored_score_from_row(row: Any, neuron: NeuronId, explanation_text: str) -> StoredScore:
    metrics = Metrics(
        pearson=none_to_nan(row.pearson), pearson_top=none_to_nan(row.pearson_top),
        pearson_random=none_to_nan(row.pearson_random), rsquared=none_to_nan(row.rsquared),
        absolute_dev_explained=none_to_nan(row.absolute_dev_explained), ci_low=none_to_nan(row.ci_low),
        ci_high=none_to_nan(row.ci_high), scored_tokens=row.scored_tokens, undefined_reason=row.undefined_reason)
    return StoredScore(id=row.id, config_key=row.config_key, run_id=row.run_id, score=Score(
        neuron=neuron, explanation_text=explanation_text, simulator=SimulatorKind(row.simulator),
        simulator_backend=row.simulator_backend, simulator_model=row.simulator_model,
        prompt_hash=row.prompt_hash, split_seed=row.split_seed, metrics=metrics,
        windows=windows_from_json(row.windows_json or "[]"), parameters=load_json(row.parameters_json, {}),
        created_at=row.created_at, prompt_tokens=row.prompt_tokens, completion_tokens=row.completion_tokens,
        baselines={key: none_to_nan(value) for key, value in load_json(row.baselines_json, {}).items()}))


# --- bulk reads for exports and the viewer ---------------------------------------------------------------------

BULK_CHUNK = 500
"""Ids per IN (...) list: well below SQLite's bound-parameter limit."""


@dataclass(frozen=True)
class StatsEntry:
    """A neuron's activation statistics in one recording, as stored."""

    manifest_hash: str
    """Recording they were computed on."""
    count: int
    """Tokens seen."""
    mean: float | None
    """Mean activation (None when undefined)."""
    std: float | None
    """Standard deviation."""
    min: float | None
    """Smallest activation."""
    max: float | None
    """Largest activation."""
    fraction_positive: float | None
    """Fraction of tokens above 0."""
    quantiles: tuple[tuple[float, float], ...]
    """(probability, value) pairs."""


def score_windows(connection: Connection, score_ids: Sequence[int]) -> dict[int, str]:
    """Per-window details of each score as the stored JSON text (see ScoreWindowsRow: a list of {window_id, split,
    tokens, true, simulated, error}); pages embed it without decoding it."""
    table = ScoreWindowsRow.__table__
    found: dict[int, str] = {}
    for chunk in chunks(sorted(set(score_ids)), BULK_CHUNK):
        statement = select(table.c.score_id, table.c.windows_json).where(table.c.score_id.in_(list(chunk)))
        for row in connection.execute(statement):
            found[row.score_id] = row.windows_json or "[]"
    return found


def explanation_sources(connection: Connection, explanation_ids: Sequence[int]) -> dict[int, list[int]]:
    """Record-store window ids each explanation's explainer was shown."""
    table = ExplanationRow.__table__
    found: dict[int, list[int]] = {}
    for chunk in chunks(sorted(set(explanation_ids)), BULK_CHUNK):
        statement = select(table.c.id, table.c.source_window_ids_json).where(table.c.id.in_(list(chunk)))
        for row in connection.execute(statement):
            found[row.id] = [int(value) for value in json.loads(row.source_window_ids_json or "[]")]
    return found


def layer_stats(connection: Connection, *, model_id: str, fingerprint: str, layer: int,
                neurons: Sequence[int]) -> dict[int, list[StatsEntry]]:
    """Statistics of some neurons (at most BULK_CHUNK) of one layer of one subject model, by neuron index."""
    n, m = NeuronRow.__table__, SubjectModelRow.__table__
    st, r = NeuronStatsRow.__table__, RecordingRow.__table__
    statement = (select(n.c.neuron, r.c.manifest_hash, st.c["count"], st.c.mean, st.c.std, st.c.min, st.c.max,
                        st.c.fraction_positive, st.c.quantiles_json)
                 .select_from(st.join(n, n.c.id == st.c.neuron_id).join(m, m.c.id == n.c.subject_model_id)
                              .join(r, r.c.id == st.c.recording_id))
                 .where(m.c.model_id == model_id, m.c.fingerprint == fingerprint, n.c.layer == layer,
                        n.c.neuron.in_(list(neurons)))
                 .order_by(n.c.neuron, st.c.id))
    found: dict[int, list[StatsEntry]] = {}
    for row in connection.execute(statement):
        values = row._mapping
        found.setdefault(values["neuron"], []).append(StatsEntry(
            manifest_hash=values["manifest_hash"], count=int(values["count"]), mean=values["mean"],
            std=values["std"], min=values["min"], max=values["max"], fraction_positive=values["fraction_positive"],
            quantiles=tuple((float(p), float(v)) for p, v in json.loads(values["quantiles_json"] or "[]"))))
    return found


def recording_paths(connection: Connection) -> dict[str, str]:
    """Where each registered recording's record store was (manifest hash -> path as registered)."""
    table = RecordingRow.__table__
    return {row.manifest_hash: row.path for row in connection.execute(select(table.c.manifest_hash, table.c.path))}
