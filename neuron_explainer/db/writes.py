"""What the writer thread applies: one record type per kind of write, and the applier that turns a batch of them
into idempotent inserts (an explanation is unique per neuron and config key, a score per explanation and key)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, insert, select, tuple_
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

from neuron_explainer.db.codec import load_json, none_to_nan
from neuron_explainer.db.models import (ClassifierScoreRow, ExplanationRow, FailureRow, LLMCallRow, NeuronRow,
                                        NeuronStatsRow, ScoreRow, ScoreWindowsRow)
from neuron_explainer.db.writer import BatchApplier
from neuron_explainer.simulate.types import ScoredWindow, WindowSplit

CHUNK = 400
"""Rows per statement."""


@dataclass(frozen=True)
class NeuronWrite:
    subject_model_id: int
    layer: int
    neuron: int
    values: dict[str, Any]


@dataclass(frozen=True)
class StatsWrite(NeuronWrite):
    pass


@dataclass(frozen=True)
class ExplanationWrite(NeuronWrite):
    pass


@dataclass(frozen=True)
class ScoreWrite(NeuronWrite):
    explanation_key: str
    windows_json: str


@dataclass(frozen=True)
class ClassifierWrite(NeuronWrite):
    explanation_key: str


@dataclass(frozen=True)
class FailureWrite:
    values: dict[str, Any]


@dataclass(frozen=True)
class CallWrite:
    values: dict[str, Any]


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def insert_ignoring_duplicates(connection: Connection, table: Any, rows: Sequence[dict[str, Any]]) -> None:
    """INSERT rows, silently skipping any that violate a unique constraint (SQLite and PostgreSQL natively)."""
    if not rows:
        return
    dialect = connection.dialect.name
    if dialect == "sqlite":
        connection.execute(sqlite_insert(table).on_conflict_do_nothing(), list(rows))
    elif dialect == "postgresql":
        connection.execute(postgresql_insert(table).on_conflict_do_nothing(), list(rows))
    else:
        for row in rows:
            try:
                with connection.begin_nested():
                    connection.execute(insert(table), [row])
            except IntegrityError:
                continue


def number_list(values: Sequence[float]) -> str:
    """JSON array text of `values` at 6 significant digits (about half the size of float64 repr), NaN as null."""
    text = ",".join(["%.6g" % value for value in values])
    if "n" in text:  # only "nan" and "inf" contain an n
        text = ",".join(["%.6g" % value if math.isfinite(value) else "null" for value in values])
    return f"[{text}]"


def windows_json(windows: Sequence[ScoredWindow]) -> str:
    # Written by hand: this is the bulk of every score and of the writer's work, so no generic encoder walk.
    return "[" + ",".join(
        f'{{"window_id":{int(window.window_id)},"split":"{WindowSplit(window.split).value}",'
        f'"tokens":{json.dumps([str(token) for token in window.tokens], ensure_ascii=False, separators=(",", ":"))},'
        f'"true":{number_list(window.true_activations)},"simulated":{number_list(window.simulated_activations)},'
        f'"error":{json.dumps(window.error)}}}'
        for window in windows) + "]"


def windows_from_json(text: str) -> tuple[ScoredWindow, ...]:
    return tuple(ScoredWindow(
        window_id=item["window_id"], split=WindowSplit(item["split"]), tokens=tuple(item["tokens"]),
        true_activations=tuple(none_to_nan(value) for value in item["true"]),
        simulated_activations=tuple(none_to_nan(value) for value in item["simulated"]),
        error=item.get("error")) for item in load_json(text, []))


WriteGuard = Callable[[Connection, Sequence[tuple[int, int] | None]], set[int]]
"""(connection, each record's (layer, neuron) or None) -> positions of records not to write."""


def _unit(record: Any) -> tuple[int, int] | None:
    if isinstance(record, NeuronWrite):
        return (record.layer, record.neuron)
    if isinstance(record, FailureWrite):
        return (record.values["layer"], record.values["neuron"])
    return None


class Applier(BatchApplier):
    """Turns queued write records into rows, resolving neuron and explanation ids by their natural keys."""

    def __init__(self) -> None:
        self._neuron_ids: dict[tuple[int, int, int], int] = {}
        self._staged: dict[tuple[int, int, int], int] = {}
        self.guard: WriteGuard | None = None
        """Decides, inside the transaction, which neuron writes to drop (a worker's lost leases: db/claims.py)."""

    def committed(self) -> None:
        if len(self._neuron_ids) > 2_000_000:
            self._neuron_ids.clear()
        self._neuron_ids.update(self._staged)
        self._staged = {}

    def rolled_back(self) -> None:
        self._staged = {}

    def _resolve_neurons(self, connection: Connection, keys: set[tuple[int, int, int]]) -> dict[tuple[int, int, int], int]:
        known = {key: self._neuron_ids[key] for key in keys if key in self._neuron_ids}
        missing = sorted(keys - known.keys())
        if not missing:
            return known
        insert_ignoring_duplicates(connection, NeuronRow.__table__, [
            {"subject_model_id": model, "layer": layer, "neuron": neuron} for model, layer, neuron in missing])
        table = NeuronRow.__table__
        for chunk in chunks(missing):
            rows = connection.execute(
                select(table.c.id, table.c.subject_model_id, table.c.layer, table.c.neuron)
                .where(tuple_(table.c.subject_model_id, table.c.layer, table.c.neuron).in_(list(chunk))))
            for row in rows:
                key = (row.subject_model_id, row.layer, row.neuron)
                known[key] = row.id
                self._staged[key] = row.id
        return known

    def apply(self, connection: Connection, records: Sequence[Any]) -> list[BaseException | None]:
        dropped = self.guard(connection, [_unit(record) for record in records]) if self.guard is not None else set()
        if not dropped:
            return self._apply_all(connection, records)
        kept = [position for position in range(len(records)) if position not in dropped]
        outcomes: list[BaseException | None] = [None] * len(records)
        for position, outcome in zip(kept, self._apply_all(connection, [records[index] for index in kept]),
                                     strict=True):
            outcomes[position] = outcome
        return outcomes

    def _apply_all(self, connection: Connection, records: Sequence[Any]) -> list[BaseException | None]:
        outcomes: list[BaseException | None] = [None] * len(records)
        neuron_keys = {(record.subject_model_id, record.layer, record.neuron)
                       for record in records if isinstance(record, NeuronWrite)}
        neuron_ids = self._resolve_neurons(connection, neuron_keys) if neuron_keys else {}

        def neuron_id(record: NeuronWrite) -> int:
            return neuron_ids[(record.subject_model_id, record.layer, record.neuron)]

        stats = [dict(record.values, neuron_id=neuron_id(record)) for record in records
                 if isinstance(record, StatsWrite)]
        insert_ignoring_duplicates(connection, NeuronStatsRow.__table__, stats)
        explanations = [dict(record.values, neuron_id=neuron_id(record)) for record in records
                        if isinstance(record, ExplanationWrite)]
        insert_ignoring_duplicates(connection, ExplanationRow.__table__, explanations)

        score_positions = [index for index, record in enumerate(records) if isinstance(record, ScoreWrite)]
        classifier_positions = [index for index, record in enumerate(records)
                                if isinstance(record, ClassifierWrite)]
        explanation_ids: dict[tuple[int, str], int] = {}
        polarities: dict[int, str] = {}
        if score_positions or classifier_positions:
            wanted = sorted({(neuron_id(records[index]), records[index].explanation_key)
                             for index in score_positions + classifier_positions})
            table = ExplanationRow.__table__
            for chunk in chunks(wanted):
                rows = connection.execute(select(table.c.id, table.c.neuron_id, table.c.config_key, table.c.polarity)
                                          .where(tuple_(table.c.neuron_id, table.c.config_key).in_(list(chunk))))
                for row in rows:
                    explanation_ids[(row.neuron_id, row.config_key)] = row.id
                    polarities[row.id] = row.polarity

        def attached(index: int) -> dict[str, Any] | None:
            """The row of a score or classifier score with its explanation's id, or None (and the outcome set)."""
            record = records[index]
            key = (neuron_id(record), record.explanation_key)
            if key not in explanation_ids:
                outcomes[index] = LookupError(
                    f"score for neuron {record.layer}:{record.neuron} names explanation key "
                    f"{record.explanation_key[:12]}..., which is not in the database; record the explanation first")
                return None
            return dict(record.values, neuron_id=key[0], explanation_id=explanation_ids[key])

        classified = [row for row in map(attached, classifier_positions) if row is not None]
        insert_ignoring_duplicates(connection, ClassifierScoreRow.__table__, classified)
        if score_positions:
            scores, windows = [], {}
            for index in score_positions:
                row = attached(index)
                if row is None:
                    continue
                # The score repeats its explanation's polarity, so best-per-neuron-and-polarity needs no join.
                scores.append(dict(row, polarity=polarities[row["explanation_id"]]))
                windows.setdefault((row["explanation_id"], row["config_key"]), records[index].windows_json)
            insert_ignoring_duplicates(connection, ScoreRow.__table__, scores)
            table = ScoreRow.__table__
            details = []
            for chunk in chunks(sorted(windows)):
                rows = connection.execute(select(table.c.id, table.c.explanation_id, table.c.config_key)
                                          .where(tuple_(table.c.explanation_id, table.c.config_key).in_(list(chunk))))
                details += [{"score_id": row.id, "windows_json": windows[(row.explanation_id, row.config_key)]}
                            for row in rows]
            # A score that already existed keeps its own details (first write wins, as for the score itself).
            insert_ignoring_duplicates(connection, ScoreWindowsRow.__table__, details)

        insert_ignoring_duplicates(connection, FailureRow.__table__,
                                   [record.values for record in records if isinstance(record, FailureWrite)])
        calls = [record.values for record in records if isinstance(record, CallWrite)]
        if calls:
            connection.execute(insert(LLMCallRow.__table__), calls)
        return outcomes
