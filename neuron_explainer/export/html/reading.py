"""Bulk reads the site needs beyond `Database.iter_query`: per-window score details, statistics, explainer
source windows and recording paths, fetched for many neurons at once.

`Database.neuron_details` answers one neuron with four queries; a site of 50,000 neurons would spend minutes
in it, so these read the same tables (the database's own models, through `Database.reader()`) in chunks of ids.
Rows come back as plain JSON-ready values (window details as their stored JSON text) because they go straight
into page data.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from sqlalchemy import Connection, select

from neuron_explainer.db.models import (ExplanationRow, NeuronRow, NeuronStatsRow, RecordingRow, ScoreWindowsRow,
                                        SubjectModelRow)

CHUNK = 500
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


def _chunks(values: Sequence[int]) -> Iterator[Sequence[int]]:
    for start in range(0, len(values), CHUNK):
        yield values[start:start + CHUNK]


def score_windows(connection: Connection, score_ids: Sequence[int]) -> dict[int, str]:
    """Per-window details of each score as the stored JSON text (see ScoreWindowsRow: a list of {window_id, split,
    tokens, true, simulated, error}); pages embed it without decoding it."""
    table = ScoreWindowsRow.__table__
    found: dict[int, str] = {}
    for chunk in _chunks(sorted(set(score_ids))):
        statement = select(table.c.score_id, table.c.windows_json).where(table.c.score_id.in_(list(chunk)))
        for row in connection.execute(statement):
            found[row.score_id] = row.windows_json or "[]"
    return found


def explanation_sources(connection: Connection, explanation_ids: Sequence[int]) -> dict[int, list[int]]:
    """Record-store window ids each explanation's explainer was shown."""
    table = ExplanationRow.__table__
    found: dict[int, list[int]] = {}
    for chunk in _chunks(sorted(set(explanation_ids))):
        statement = select(table.c.id, table.c.source_window_ids_json).where(table.c.id.in_(list(chunk)))
        for row in connection.execute(statement):
            found[row.id] = [int(value) for value in json.loads(row.source_window_ids_json or "[]")]
    return found


def layer_stats(connection: Connection, *, model_id: str, fingerprint: str, layer: int,
                neurons: Sequence[int]) -> dict[int, list[StatsEntry]]:
    """Statistics of some neurons (at most CHUNK) of one layer of one subject model, by neuron index."""
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
