"""Causal scores in the database: one `causal_scores` row per score, written by `run --causal`, read by `show`,
`query` and the exports."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, select

from neuron_explainer.causal import CausalScore
from neuron_explainer.db.codec import dump_json, float_or_none, load_json, none_to_nan, utc_iso
from neuron_explainer.db.models import CausalScoreRow
from neuron_explainer.db.writes import insert_ignoring_duplicates

if TYPE_CHECKING:  # the query module reads causal values, and the database module imports it
    from neuron_explainer.db.database import Database

_CHUNK = 500

_TOP_LEVEL = ("value", "ci_low", "ci_high", "ablation", "undefined_reason")


def record_causal_scores(database: Database, scores: Mapping[int, CausalScore], *,
                         run_id: int | None = None) -> None:
    """Store causal scores by score row id (an existing row for a score is kept: the first one wins)."""
    rows = []
    for score_id, score in scores.items():
        values = asdict(score)
        rows.append({"score_id": score_id, "value": float_or_none(score.value),
                     "ci_low": float_or_none(score.ci_low), "ci_high": float_or_none(score.ci_high),
                     "ablation": score.ablation, "undefined_reason": score.undefined_reason,
                     "details_json": dump_json({key: value for key, value in values.items()
                                                if key not in _TOP_LEVEL}),
                     "created_at": utc_iso(), "run_id": run_id})

    def write(connection: Connection) -> None:
        insert_ignoring_duplicates(connection, CausalScoreRow.__table__, rows)

    # The writer thread owns the write connection; going through it keeps writes ordered after queued scores.
    database._writer.call(write).result()  # noqa: SLF001 - db-package internal


def load_causal_scores(database: Database, score_ids: Iterable[int]) -> dict[int, CausalScore]:
    """Stored causal scores of these score ids (absent ids have none)."""
    wanted = sorted(set(score_ids))
    table = CausalScoreRow.__table__
    found: dict[int, CausalScore] = {}
    with database.reader() as connection:
        for start in range(0, len(wanted), _CHUNK):
            statement = select(table).where(table.c.score_id.in_(wanted[start:start + _CHUNK]))
            for row in connection.execute(statement):
                details = load_json(row.details_json, {})
                found[row.score_id] = CausalScore(
                    value=none_to_nan(row.value), ci_low=none_to_nan(row.ci_low), ci_high=none_to_nan(row.ci_high),
                    ablation=row.ablation, undefined_reason=row.undefined_reason,
                    **{key: none_to_nan(value) if key not in ("windows", "tokens") else int(value)
                       for key, value in details.items()})
    return found


def causal_values_by_score(connection: Connection, score_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """score id -> {value, ci_low, ci_high, ablation, undefined_reason} of its causal score (query rows and
    exports; absent ids have none)."""
    wanted = sorted(set(score_ids))
    table = CausalScoreRow.__table__
    found: dict[int, dict[str, Any]] = {}
    for start in range(0, len(wanted), _CHUNK):
        rows = connection.execute(select(table.c.score_id, *(table.c[name] for name in _TOP_LEVEL))
                                  .where(table.c.score_id.in_(wanted[start:start + _CHUNK])))
        for row in rows:
            found[row.score_id] = {name: getattr(row, name) for name in _TOP_LEVEL}
    return found
