"""Causal scores in the database: one `causal_scores` row per score, written by `run --causal`, read by `show`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict

from sqlalchemy import Connection, select

from neuron_explainer.causal import CausalScore
from neuron_explainer.db.codec import dump_json, float_or_none, load_json, none_to_nan, utc_iso
from neuron_explainer.db.database import Database
from neuron_explainer.db.writes import insert_ignoring_duplicates
from neuron_explainer.db.models import CausalScoreRow

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
        for start in range(0, len(wanted), 500):
            statement = select(table).where(table.c.score_id.in_(wanted[start:start + 500]))
            for row in connection.execute(statement):
                details = load_json(row.details_json, {})
                found[row.score_id] = CausalScore(
                    value=none_to_nan(row.value), ci_low=none_to_nan(row.ci_low), ci_high=none_to_nan(row.ci_high),
                    ablation=row.ablation, undefined_reason=row.undefined_reason,
                    **{key: none_to_nan(value) if key not in ("windows", "tokens") else int(value)
                       for key, value in details.items()})
    return found
