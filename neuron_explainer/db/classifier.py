"""Rows of `classifier_scores` (detection and fuzzing) to and from ClassifierScore, and their batched read."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, select

from neuron_explainer.db.codec import dump_json, float_or_none, load_json, none_to_nan, redact, utc_iso
from neuron_explainer.db.models import ClassifierScoreRow
from neuron_explainer.scoring_llm.types import ClassifiedPassage, ClassifierMetrics, ClassifierScore, ScorerKind
from neuron_explainer.core.neurons import NeuronId

_CHUNK = 400


def classifier_values(score: ClassifierScore, *, config_key: str, run_id: int | None) -> dict[str, Any]:
    """The column values of one classifier score (explanation and neuron ids are resolved by the writer)."""
    metrics = score.metrics
    passages = [{"window_id": item.window_id, "label": item.label, "marked": list(item.marked),
                 "prediction": item.prediction, "probability": item.probability, "error": item.error}
                for item in score.passages]
    return {"config_key": config_key, "scorer": ScorerKind(score.scorer).value, "backend": redact(score.backend),
            "model": score.model, "prompt_hash": score.prompt_hash, "split_seed": score.split_seed,
            "parameters_json": dump_json(score.parameters), "accuracy": float_or_none(metrics.accuracy),
            "balanced_accuracy": float_or_none(metrics.balanced_accuracy), "auroc": float_or_none(metrics.auroc),
            "passages": metrics.passages, "answered": metrics.answered, "positives": metrics.positives,
            "auroc_from": metrics.auroc_from, "undefined_reason": metrics.undefined_reason,
            "passages_json": dump_json(passages), "prompt_tokens": score.prompt_tokens,
            "completion_tokens": score.completion_tokens, "requests": score.requests,
            "created_at": utc_iso(score.created_at), "run_id": run_id}


def classifier_score_from_row(row: Any, neuron: NeuronId, explanation_text: str) -> ClassifierScore:
    """A stored row back as a ClassifierScore."""
    metrics = ClassifierMetrics(
        accuracy=none_to_nan(row.accuracy), balanced_accuracy=none_to_nan(row.balanced_accuracy),
        auroc=none_to_nan(row.auroc), passages=row.passages, answered=row.answered, positives=row.positives,
        auroc_from=row.auroc_from, undefined_reason=row.undefined_reason)
    passages = tuple(ClassifiedPassage(window_id=item["window_id"], label=bool(item["label"]),
                                       marked=tuple(item["marked"]), prediction=item["prediction"],
                                       probability=item["probability"], error=item["error"])
                     for item in load_json(row.passages_json, []))
    return ClassifierScore(
        neuron=neuron, explanation_text=explanation_text, scorer=ScorerKind(row.scorer), backend=row.backend,
        model=row.model, prompt_hash=row.prompt_hash, split_seed=row.split_seed, metrics=metrics, passages=passages,
        parameters=load_json(row.parameters_json, {}), created_at=row.created_at, prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens, requests=row.requests)


def classifier_metrics_by_explanation(connection: Connection, explanation_ids: Iterable[int]
                                      ) -> dict[int, dict[str, dict[str, float | None]]]:
    """explanation id -> scorer -> {accuracy, balanced_accuracy, auroc} of its newest classifier score per scorer
    (for query rows and exports, which show metrics, not passages)."""
    table = ClassifierScoreRow.__table__
    wanted = sorted(set(explanation_ids))
    found: dict[int, dict[str, dict[str, float | None]]] = {}
    for start in range(0, len(wanted), _CHUNK):
        rows = connection.execute(
            select(table.c.explanation_id, table.c.scorer, table.c.accuracy, table.c.balanced_accuracy,
                   table.c.auroc).where(table.c.explanation_id.in_(wanted[start:start + _CHUNK]))
            .order_by(table.c.id))
        for row in rows:
            found.setdefault(row.explanation_id, {})[row.scorer] = {
                "accuracy": row.accuracy, "balanced_accuracy": row.balanced_accuracy, "auroc": row.auroc}
    return found


def classifier_scores_of_neuron(connection: Connection, neuron_row_id: int, neuron: NeuronId,
                                texts: dict[int, str]) -> dict[int, list[ClassifierScore]]:
    """explanation id -> its classifier scores (oldest first) for one neuron (the `show` command)."""
    table = ClassifierScoreRow.__table__
    found: dict[int, list[ClassifierScore]] = {}
    for row in connection.execute(select(table).where(table.c.neuron_id == neuron_row_id).order_by(table.c.id)):
        found.setdefault(row.explanation_id, []).append(
            classifier_score_from_row(row, neuron, texts.get(row.explanation_id, "")))
    return found
