"""What the nights did: one summary per run (status, selection, totals, spend, duration) and the stored failures
(neuron, stage, kind, reason), each marked open until a later run stored the result it lacked."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Connection, and_, exists, func, or_, select

from neuron_explainer.db.codec import load_json
from neuron_explainer.db.models import (ExplanationRow, FailureRow, LLMCallRow, NeuronRow, RunRow, ScoreRow,
                                        SubjectModelRow)
from neuron_explainer.core.neurons import NeuronId


@dataclass(frozen=True)
class RunRecord:
    """One run as the `runs` command shows it."""

    id: int
    """Run id."""
    status: str
    """completed, failed, running, stopped: budget / backend failing / interrupted."""
    started_at: str
    """Start (ISO-8601 UTC)."""
    seconds: float | None
    """Wall time; None while running."""
    selection: str
    """What it was asked to do: neurons spec, sample or limit, explainers, simulator, backend."""
    selected: int | None
    """Neurons selected (None when the run ended before selecting)."""
    done: int | None
    """Neurons processed."""
    skipped: int | None
    """Neurons already done before it."""
    explained: int | None
    """Explanations written."""
    scored: int | None
    """Scores written."""
    failed: int | None
    """Failures written."""
    tokens: int
    """Prompt + completion tokens in its ledger."""
    cost_usd: float
    """Its ledger's estimated spend."""
    reason: str | None
    """Why it stopped early or failed."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


@dataclass(frozen=True)
class FailureRecord:
    """One stored failure as the `failures` command shows it."""

    run_id: int | None
    """The run that stored it."""
    model_id: str | None
    """Subject model of the neuron (None when the failure came before the recording was registered)."""
    neuron: NeuronId
    """The neuron."""
    stage: str
    """explain, simulate or score."""
    kind: str
    """transient (retried by the next run) or permanent (retried with --retry-failed)."""
    reason: str
    """One line saying what went wrong."""
    created_at: str
    """When (ISO-8601 UTC)."""
    open: bool
    """No later run stored the result this unit lacked."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {**asdict(self), "neuron": str(self.neuron)}


def _seconds(started: str, ended: str | None) -> float | None:
    if ended is None:
        return None
    try:
        return round((dt.datetime.fromisoformat(ended) - dt.datetime.fromisoformat(started)).total_seconds(), 1)
    except ValueError:
        return None


def _setting(config: dict[str, Any], section: str, key: str, flat: str | None = None) -> Any:
    """A stored run config's setting: nested (`config[section][key]`) or, in runs stored before the config had
    sections, flat (`config[flat]`)."""
    table = config.get(section)
    if isinstance(table, dict):
        return table.get(key)
    return config.get(flat or key)


def _selection(config: dict[str, Any]) -> str:
    parts = [f"neurons {_setting(config, 'explain', 'neurons') or 'all'}"]
    for section, key in (("explain", "sample"), ("run", "limit")):
        if _setting(config, section, key) is not None:
            parts.append(f"{key} {_setting(config, section, key)}")
    explainers = _setting(config, "explain", "explainers") or []
    parts.append("+".join(explainers) if isinstance(explainers, list) else str(explainers))
    if _setting(config, "simulate", "simulator"):
        parts.append(str(_setting(config, "simulate", "simulator")))
    backend = _setting(config, "llm", "backend", "llm")
    if backend:
        parts.append(str(backend).split("@", 1)[0])
    return ", ".join(parts)


def read_runs(connection: Connection, *, limit: int | None = 20) -> list[RunRecord]:
    """The latest runs first, with their ledger totals."""
    r, c = RunRow.__table__, LLMCallRow.__table__
    usage = {row.run_id: (int(row.tokens), float(row.cost)) for row in connection.execute(
        select(c.c.run_id, func.coalesce(func.sum(c.c.prompt_tokens + c.c.completion_tokens), 0).label("tokens"),
               func.coalesce(func.sum(c.c.cost_usd), 0.0).label("cost")).group_by(c.c.run_id))}
    records = []
    for row in connection.execute(select(r).order_by(r.c.id.desc()).limit(limit)):
        totals = load_json(row.totals_json, {})
        config = load_json(row.config_json, {})
        tokens, cost = usage.get(row.id, (0, 0.0))
        records.append(RunRecord(
            id=row.id, status=row.status, started_at=row.started_at, seconds=_seconds(row.started_at, row.ended_at),
            selection=_selection(config), selected=totals.get("selected"), done=totals.get("done"),
            skipped=totals.get("skipped"), explained=totals.get("explained"), scored=totals.get("scored"),
            failed=totals.get("failed"), tokens=tokens, cost_usd=round(cost, 6),
            reason=totals.get("stop_reason") or row.error))
    return records


def read_failures(connection: Connection, *, neurons: Sequence[NeuronId] = (), run_id: int | None = None,
                  include_resolved: bool = False, limit: int | None = None) -> list[FailureRecord]:
    """Stored failures, newest first: by default only open ones, the latest per unit of work."""
    f, n, e, s = FailureRow.__table__, NeuronRow.__table__, ExplanationRow.__table__, ScoreRow.__table__
    m = SubjectModelRow.__table__

    def solved(table: Any) -> Any:
        return exists(select(n.c.id).select_from(table.join(n, n.c.id == table.c.neuron_id)).where(
            table.c.config_key == f.c.config_key, n.c.layer == f.c.layer, n.c.neuron == f.c.neuron,
            n.c.subject_model_id == f.c.subject_model_id))

    explained, scored = solved(e), solved(s)
    statement = (select(f, m.c.model_id, explained.label("explained"), scored.label("scored"))
                 .select_from(f.outerjoin(m, m.c.id == f.c.subject_model_id)).order_by(f.c.id.desc()))
    if run_id is not None:
        statement = statement.where(f.c.run_id == run_id)
    if neurons:
        statement = statement.where(or_(*(and_(f.c.layer == neuron.layer, f.c.neuron == neuron.neuron)
                                          for neuron in neurons)))
    records: list[FailureRecord] = []
    seen: set[tuple[Any, ...]] = set()
    for row in connection.execute(statement):
        unit = (row.stage, row.config_key, row.subject_model_id, row.layer, row.neuron)
        is_open = not (row.explained if row.stage == "explain" else row.scored) and unit not in seen
        seen.add(unit)
        if not include_resolved and not is_open:
            continue
        records.append(FailureRecord(run_id=row.run_id, model_id=row.model_id, neuron=NeuronId(row.layer, row.neuron), stage=row.stage,
                                     kind=row.kind, reason=row.reason, created_at=row.created_at, open=is_open))
        if limit is not None and len(records) >= limit:
            break
    return records

