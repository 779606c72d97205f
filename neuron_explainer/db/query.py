"""Read side: filter, sort and page scored explanations; every user value reaches SQL as a bound parameter.

A result row is one (explanation, score) pair. By default only the best row per neuron and polarity is returned:
among the rows that pass the explanation/score filters (method, explainer model, simulator, run, text, polarity),
the one with the highest Pearson score (undefined scores rank last, ties go to the older row); a neuron explained
on both sides has a positive and a negative best row, never one picked across sides unless the query asks for
`polarity="any"`. The score range then applies to that best
row, so `--max-score 0.2` lists neurons whose best explanation is poor.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

from sqlalchemy import ColumnElement, Connection, Select, and_, column, exists, func, or_, select, table

from neuron_explainer.core.errors import UserError
from neuron_explainer.core.neurons import NeuronId, range_bounds
from neuron_explainer.db.causal import causal_values_by_score
from neuron_explainer.db.classifier import classifier_metrics_by_explanation
from neuron_explainer.db.codec import load_json, none_to_nan
from neuron_explainer.db.models import (UNDEFINED_SORT_SCORE, ExplanationRow, NeuronRow, RecordingRow, ScoreRow,
                                        SubjectModelRow)
from neuron_explainer.db.schema import SEARCH_TABLE
from neuron_explainer.explain.registry import EXPLAINERS
from neuron_explainer.simulate.registry import SIMULATORS

POLARITY_FILTERS = (None, "positive", "negative", "any")
"""Values of ExplanationQuery.polarity."""

MIN_SEARCH_INDEX_CHARS = 3
"""The trigram index finds substrings of at least this many characters; shorter ones fall back to LIKE."""


class SortOrder(str, Enum):
    """How query results are ordered."""

    SCORE = "score"
    LAYER = "layer"
    CREATED = "created"


@dataclass(frozen=True)
class ExplanationQuery:
    """Filters, order and size of a query over scored explanations; empty/None fields do not filter."""

    layers: tuple[int, ...] = ()
    """Only these layers."""
    neurons: tuple[int, ...] = ()
    """Only these neuron indices (within their layer)."""
    min_score: float | None = None
    """Lowest Pearson score (inclusive); rows with an undefined score are excluded when a bound is set."""
    max_score: float | None = None
    """Highest Pearson score (inclusive)."""
    search: str | None = None
    """Case-insensitive substring of the explanation text (taken literally: no wildcards, no query syntax)."""
    method: str | None = None
    """Explainer method (`token-pairs`, `sasc`, `ngram`)."""
    model: str | None = None
    """Subject model id, exactly as recorded."""
    explainer_model: str | None = None
    """Explainer LLM model name, exactly as recorded."""
    simulator: str | None = None
    """Simulator kind (`all-at-once`, `generated`, `lexical`, `embedding`)."""
    run_id: int | None = None
    """Only rows whose explanation or score was written by this run."""
    sort: SortOrder = SortOrder.SCORE
    """Best score first, layer/neuron ascending, or newest explanation first."""
    limit: int | None = 50
    """Most rows returned (None: all)."""
    best_per_neuron: bool = True
    """One row per neuron and polarity (its best), or every (explanation, score) pair."""
    polarity: str | None = None
    """`positive` or `negative`: only that side; None: both sides, best per neuron and polarity; `any`: both
    sides, one best per neuron whatever its polarity."""

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise UserError(f"limit must be at least 1, got {self.limit}")
        for name in ("min_score", "max_score"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise UserError(f"{name.replace('_', '-')} must be a finite number")
        if self.min_score is not None and self.max_score is not None and self.min_score > self.max_score:
            raise UserError(f"min-score {self.min_score} is above max-score {self.max_score}")
        methods = EXPLAINERS.names()
        if self.method is not None and self.method not in methods:
            raise UserError(f"unknown method {self.method!r}: choose from {', '.join(methods)}")
        simulators = SIMULATORS.names()
        if self.simulator is not None and self.simulator not in simulators:
            raise UserError(f"unknown simulator {self.simulator!r}: choose from {', '.join(simulators)}")
        if self.polarity not in POLARITY_FILTERS:
            raise UserError(f"unknown polarity {self.polarity!r}: choose positive, negative or any")
        if not isinstance(self.sort, SortOrder):
            object.__setattr__(self, "sort", SortOrder(self.sort))


@dataclass(frozen=True)
class ResultRow:
    """One scored explanation with the provenance of both the explanation and its score."""

    neuron: NeuronId
    """The neuron."""
    model_id: str
    """Subject model id."""
    model_fingerprint: str
    """Fingerprint of the subject model's weights."""
    manifest_hash: str
    """Hash of the record store's manifest the explanation was made from."""
    explanation_id: int
    """Row id of the explanation."""
    text: str
    """The explanation."""
    method: str
    """Explainer method."""
    polarity: str
    """`positive` or `negative`."""
    explainer_backend: str
    """Explainer backend spec."""
    explainer_model: str
    """Explainer model name."""
    explanation_prompt_hash: str
    """Content hash of the explainer prompt files."""
    explanation_parameters: dict[str, Any]
    """Explainer settings."""
    explanation_key: str
    """Explanation config key."""
    explanation_run_id: int | None
    """Run that wrote the explanation."""
    explained_at: str
    """When the explanation was made (ISO-8601 UTC)."""
    split_seed: int
    """Seed of the window split."""
    score_id: int
    """Row id of the score."""
    score: float
    """Pearson correlation of simulated and true activations (NaN when undefined)."""
    pearson_top: float
    """Pearson over held-out top windows."""
    pearson_random: float
    """Pearson over random windows."""
    rsquared: float
    """Calibrated R^2."""
    absolute_dev_explained: float
    """Calibrated absolute deviation explained."""
    ci_low: float
    """Bootstrap 95% interval of the score, low end."""
    ci_high: float
    """High end."""
    scored_tokens: int
    """Tokens scored."""
    undefined_reason: str | None
    """Why the score is NaN, if it is."""
    simulator: str
    """Simulator kind."""
    simulator_backend: str
    """Simulator backend spec."""
    simulator_model: str
    """Simulator model name."""
    simulator_prompt_hash: str
    """Content hash of the simulator prompt files."""
    score_parameters: dict[str, Any]
    """Simulator/scoring settings."""
    score_key: str
    """Score config key."""
    score_run_id: int | None
    """Run that wrote the score."""
    scored_at: str
    """When the score was made (ISO-8601 UTC)."""
    baselines: dict[str, float] = field(default_factory=dict)
    """Baseline scores, if computed."""
    classifiers: dict[str, dict[str, float | None]] = field(default_factory=dict)
    """Detection / fuzzing metrics of the explanation (accuracy, balanced_accuracy, auroc), by scorer."""
    causal: dict[str, Any] = field(default_factory=dict)
    """Causal score of this score (`value`, `ci_low`, `ci_high`, `ablation`, `undefined_reason`; `run --causal`),
    empty when not computed."""

    @property
    def lexical_ceiling(self) -> float:
        """The neuron's lexical ceiling on this score's windows (a baseline; NaN when not computed)."""
        return self.baselines.get("lexical_ceiling", math.nan)

    def as_dict(self) -> dict[str, Any]:
        """Flat JSON-ready mapping (NaN becomes None; `neuron` split into `layer` and `neuron`)."""
        out: dict[str, Any] = {"layer": self.neuron.layer, "neuron": self.neuron.neuron}
        for name in self.__dataclass_fields__:
            if name == "neuron":
                continue
            out[name] = _finite_or_none(getattr(self, name))
        return out


def _finite_or_none(value: Any) -> Any:
    """NaN and infinities become None, also inside dicts and lists (baselines hold NaN when undefined)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(item) for item in value]
    return value


_scores = ScoreRow.__table__
_explanations = ExplanationRow.__table__
_neurons = NeuronRow.__table__
_models = SubjectModelRow.__table__
_recordings = RecordingRow.__table__
_search = table(SEARCH_TABLE, column("rowid"), column("text"))


def _fts_phrase(text: str) -> str:
    """An FTS5 string literal: the whole input as one phrase, so no query syntax gets through."""
    return '"' + text.replace('"', '""') + '"'


def _pair_filters(query: ExplanationQuery, scores: Any, explanations: Any, *, search_index: bool,
                  walk_scores: bool = False) -> list[ColumnElement[bool]]:
    """Conditions on one (score, explanation) pair that decide whether it competes for best-of-neuron."""
    conditions: list[ColumnElement[bool]] = []
    if query.method is not None:
        conditions.append(explanations.c.method == query.method)
    if query.explainer_model is not None:
        conditions.append(explanations.c.explainer_model == query.explainer_model)
    if query.simulator is not None:
        conditions.append(scores.c.simulator == query.simulator)
    if query.polarity in ("positive", "negative"):
        conditions.append(scores.c.polarity == query.polarity)
    if query.run_id is not None:
        conditions.append(or_(scores.c.run_id == query.run_id, explanations.c.run_id == query.run_id))
    needle = (query.search or "").strip()
    if needle:
        if search_index and len(needle) >= MIN_SEARCH_INDEX_CHARS:
            matches = select(_search.c.rowid).where(_search.c.text.match(_fts_phrase(needle)))
            # `+ 0` keeps the planner from driving the query from the match list, so it walks scores in order.
            target = scores.c.explanation_id + 0 if walk_scores else explanations.c.id
            conditions.append(target.in_(matches))
        else:
            conditions.append(explanations.c.text.icontains(needle, autoescape=True))
    return conditions


def _needs_explanation(query: ExplanationQuery) -> bool:
    return any(value is not None for value in (query.method, query.explainer_model, query.run_id)) or bool(
        (query.search or "").strip())


def _in_ranges(column_: Any, values: tuple[int, ...]) -> ColumnElement[bool]:
    """`column IN values` written as a few BETWEENs over contiguous runs, so 0-14335 is one condition."""
    runs: list[tuple[int, int]] = []
    for value in sorted(set(values)):
        if runs and value == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], value)
        else:
            runs.append((value, value))
    parts = [column_ == start if start == end else column_.between(start, end) for start, end in runs]
    return parts[0] if len(parts) == 1 else or_(*parts)


def _order(query: ExplanationQuery, s: Any, e: Any, n: Any) -> list[ColumnElement[Any]]:
    if query.sort is SortOrder.SCORE:
        return [s.c.sort_score.desc(), n.c.layer, n.c.neuron, s.c.id]
    if query.sort is SortOrder.LAYER:
        return [n.c.layer, n.c.neuron, s.c.sort_score.desc(), s.c.id]
    return [e.c.created_at.desc(), s.c.id.desc()]


def _score_range(query: ExplanationQuery, sort_score: Any) -> list[ColumnElement[bool]]:
    # On sort_score (indexed with neuron_id) rather than pearson; above UNDEFINED_SORT_SCORE means defined.
    conditions: list[ColumnElement[bool]] = []
    if query.min_score is not None or query.max_score is not None:
        conditions.append(sort_score > UNDEFINED_SORT_SCORE)
    if query.min_score is not None:
        conditions.append(sort_score >= query.min_score)
    if query.max_score is not None:
        conditions.append(sort_score <= query.max_score)
    return conditions


def _candidates(query: ExplanationQuery, *, search_index: bool, walk_scores: bool,
                ) -> tuple[Any, Any, Any, Any, list[ColumnElement[bool]]]:
    """Aliases, the FROM clause (only the tables the filters need) and the candidate conditions."""
    s = _scores.alias("ms")
    e = _explanations.alias("me")
    n = _neurons.alias("mn")
    m = _models.alias("mm")
    conditions = _pair_filters(query, s, e, search_index=search_index, walk_scores=walk_scores)
    if query.layers:
        conditions.append(_in_ranges(n.c.layer, query.layers))
    if query.neurons:
        conditions.append(_in_ranges(n.c.neuron, query.neurons))
    if query.model is not None:
        conditions.append(m.c.model_id == query.model)
    joined: Any = s
    if _needs_explanation(query) or query.sort is SortOrder.CREATED:
        joined = joined.join(e, e.c.id == s.c.explanation_id)
    if query.layers or query.neurons or query.model is not None or query.sort is not SortOrder.CREATED:
        joined = joined.join(n, n.c.id == s.c.neuron_id)
    if query.model is not None:
        joined = joined.join(m, m.c.id == n.c.subject_model_id)
    return s, e, n, joined, conditions


def _matching_scores(query: ExplanationQuery, *, search_index: bool, walk_scores: bool) -> Select[Any]:
    """The ids of the matching score rows in query order, limited: walks an index and stops at `limit`.

    Best-per-neuron is NOT EXISTS (a better candidate of the same neuron), so only the rows walked are checked.
    """
    s, e, n, joined, conditions = _candidates(query, search_index=search_index, walk_scores=walk_scores)
    conditions += _score_range(query, s.c.sort_score)
    if query.best_per_neuron:
        rival_scores = _scores.alias("rs")
        rival_explanations = _explanations.alias("re")
        rivals_from = rival_scores
        if _needs_explanation(query):
            rivals_from = rival_scores.join(rival_explanations,
                                            rival_explanations.c.id == rival_scores.c.explanation_id)
        better = or_(rival_scores.c.sort_score > s.c.sort_score,
                     and_(rival_scores.c.sort_score == s.c.sort_score, rival_scores.c.id < s.c.id))
        same_side = [] if query.polarity == "any" else [rival_scores.c.polarity == s.c.polarity]
        rivals = (select(rival_scores.c.id).select_from(rivals_from)
                  .where(rival_scores.c.neuron_id == s.c.neuron_id, *same_side, better,
                         *_pair_filters(query, rival_scores, rival_explanations, search_index=search_index,
                                        walk_scores=walk_scores)))
        conditions.append(~exists(rivals))
    statement = select(s.c.id).select_from(joined).where(*conditions).order_by(*_order(query, s, e, n))
    return statement.limit(query.limit) if query.limit is not None else statement


def _every_match(query: ExplanationQuery, *, search_index: bool) -> Any:
    """The ids of every matching score row, unordered: one pass ranking each neuron's candidates (for exports)."""
    s, _e, _n, joined, conditions = _candidates(query, search_index=search_index, walk_scores=False)
    if not query.best_per_neuron:
        return select(s.c.id.label("id")).select_from(joined).where(
            *conditions, *_score_range(query, s.c.sort_score)).subquery("matches")
    partition = (s.c.neuron_id,) if query.polarity == "any" else (s.c.neuron_id, s.c.polarity)
    rank = func.row_number().over(partition_by=partition, order_by=(s.c.sort_score.desc(), s.c.id))
    ranked = (select(s.c.id.label("id"), s.c.sort_score.label("sort_score"), rank.label("rank"))
              .select_from(joined).where(*conditions).subquery("ranked"))
    return (select(ranked.c.id).where(ranked.c.rank == 1, *_score_range(query, ranked.c.sort_score))
            .subquery("matches"))


def build_select(query: ExplanationQuery, *, search_index: bool, walk_scores: bool = False) -> Select[Any]:
    """The SELECT for `query` (exposed for tests and EXPLAIN QUERY PLAN).

    With a limit, two steps in one statement: a narrow subquery walks the matching score ids in order and stops
    at the limit, touching only the tables its filters need; the outer query fetches the wide rows for just those
    ids. Without a limit, every match is found in one ranking pass and joined. `walk_scores` makes a text search
    check matches while walking scores best-first instead of starting from the matches (faster when the text is
    common).
    """
    s = _scores.alias("s")
    e = _explanations.alias("e")
    n = _neurons.alias("n")
    m = _models.alias("m")
    r = _recordings.alias("r")
    columns = [
        n.c.layer, n.c.neuron, m.c.model_id, m.c.fingerprint, r.c.manifest_hash,
        e.c.id.label("explanation_id"), e.c.text, e.c.method, e.c.polarity, e.c.explainer_backend,
        e.c.explainer_model, e.c.prompt_hash.label("explanation_prompt_hash"),
        e.c.parameters_json.label("explanation_parameters_json"), e.c.config_key.label("explanation_key"),
        e.c.run_id.label("explanation_run_id"), e.c.created_at.label("explained_at"), e.c.split_seed,
        s.c.id.label("score_id"), s.c.pearson, s.c.pearson_top, s.c.pearson_random, s.c.rsquared,
        s.c.absolute_dev_explained, s.c.ci_low, s.c.ci_high, s.c.scored_tokens, s.c.undefined_reason,
        s.c.simulator, s.c.simulator_backend, s.c.simulator_model, s.c.prompt_hash.label("simulator_prompt_hash"),
        s.c.parameters_json.label("score_parameters_json"), s.c.config_key.label("score_key"),
        s.c.run_id.label("score_run_id"), s.c.created_at.label("scored_at"), s.c.baselines_json,
    ]
    tables: Any = (s.join(e, e.c.id == s.c.explanation_id).join(n, n.c.id == s.c.neuron_id)
                   .join(m, m.c.id == n.c.subject_model_id).join(r, r.c.id == e.c.recording_id))
    if query.limit is None:
        matches = _every_match(query, search_index=search_index)
        statement = select(*columns).select_from(matches.join(tables, s.c.id == matches.c.id))
    else:
        statement = select(*columns).select_from(tables).where(
            s.c.id.in_(_matching_scores(query, search_index=search_index, walk_scores=walk_scores)))
    return statement.order_by(*_order(query, s, e, n))


def _row(values: Any) -> ResultRow:
    return ResultRow(
        neuron=NeuronId(values.layer, values.neuron), model_id=values.model_id,
        model_fingerprint=values.fingerprint, manifest_hash=values.manifest_hash,
        explanation_id=values.explanation_id, text=values.text, method=values.method, polarity=values.polarity,
        explainer_backend=values.explainer_backend, explainer_model=values.explainer_model,
        explanation_prompt_hash=values.explanation_prompt_hash,
        explanation_parameters=load_json(values.explanation_parameters_json, {}),
        explanation_key=values.explanation_key, explanation_run_id=values.explanation_run_id,
        explained_at=values.explained_at, split_seed=values.split_seed, score_id=values.score_id,
        score=none_to_nan(values.pearson), pearson_top=none_to_nan(values.pearson_top),
        pearson_random=none_to_nan(values.pearson_random), rsquared=none_to_nan(values.rsquared),
        absolute_dev_explained=none_to_nan(values.absolute_dev_explained), ci_low=none_to_nan(values.ci_low),
        ci_high=none_to_nan(values.ci_high), scored_tokens=values.scored_tokens,
        undefined_reason=values.undefined_reason, simulator=values.simulator,
        simulator_backend=values.simulator_backend, simulator_model=values.simulator_model,
        simulator_prompt_hash=values.simulator_prompt_hash,
        score_parameters=load_json(values.score_parameters_json, {}), score_key=values.score_key,
        score_run_id=values.score_run_id, scored_at=values.scored_at,
        baselines={key: none_to_nan(value) for key, value in load_json(values.baselines_json, {}).items()},
    )


def _walk_scores(connection: Connection, query: ExplanationQuery, *, search_index: bool) -> bool:
    """Whether a text search should walk scores best-first rather than start from its matches.

    Starting from the matches reads every match; walking reads about limit / selectivity score rows, where the
    selectivity is the matching fraction of explanations times the fraction of layers asked for. Counting the
    matches costs one index read; walk when that is the cheaper plan (e.g. beyond 4,000 matches out of 360,000
    explanations for a top 50 over all layers).
    """
    needle = (query.search or "").strip()
    if not (search_index and len(needle) >= MIN_SEARCH_INDEX_CHARS and query.sort is SortOrder.SCORE
            and query.limit is not None and not query.neurons):
        return False
    matches = connection.execute(select(func.count()).select_from(_search)
                                 .where(_search.c.text.match(_fts_phrase(needle)))).scalar_one()
    explanations = connection.execute(select(func.max(_explanations.c.id))).scalar() or 0
    layer_fraction = 1.0
    if query.layers:
        layers = (connection.execute(select(func.max(_neurons.c.layer))).scalar() or 0) + 1
        layer_fraction = min(len(query.layers) / layers, 1.0)
    return matches * matches * layer_fraction > query.limit * explanations


def run_query(connection: Connection, query: ExplanationQuery, *, search_index: bool,
              walk_scores: bool | None = None) -> Iterator[ResultRow]:
    """Stream the rows of `query` (inside the caller's connection); `walk_scores` None picks the search plan."""
    if walk_scores is None:
        walk_scores = _walk_scores(connection, query, search_index=search_index)
    statement = build_select(query, search_index=search_index, walk_scores=walk_scores)
    result = connection.execution_options(yield_per=1000).execute(statement)
    for batch in result.partitions(500):
        rows = [_row(values) for values in batch]
        metrics = classifier_metrics_by_explanation(connection, [row.explanation_id for row in rows])
        causal = causal_values_by_score(connection, [row.score_id for row in rows])
        for row in rows:
            if row.explanation_id in metrics or row.score_id in causal:
                row = replace(row, classifiers=metrics.get(row.explanation_id, {}), causal=causal.get(row.score_id, {}))
            yield row


def parse_int_list(text: str, *, what: str) -> tuple[int, ...]:
    """Parse `3`, `0-5` or `1,4,7-9` into sorted unique non-negative ints (for layer/neuron filters)."""
    values: set[int] = set()
    for piece in text.split(","):
        piece = piece.strip()
        try:
            start, end = range_bounds(piece)
        except ValueError:
            raise UserError(f"malformed {what} filter {piece!r}: use N, A-B or a comma list") from None
        if start < 0 or start > end:
            raise UserError(f"malformed {what} filter {piece!r}: need 0 <= start <= end")
        if end - start > 1_000_000:
            raise UserError(f"{what} filter {piece!r} is too wide")
        values.update(range(start, end + 1))
    return tuple(sorted(values))
