"""Text renderings for the terminal (`query` tables, `show` pages) and JSON forms of stored neurons."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from neuron_explainer.db import NeuronDetail, ResultRow, StoredExplanation, StoredScore
from neuron_explainer.export.escaping import visible_token
from neuron_explainer.export.readable import readable_text
from neuron_explainer.simulate.types import ScoredWindow, WindowSplit


def _number(value: float, digits: int = 3) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.{digits}f}"


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def format_rows_table(rows: Sequence[ResultRow], *, width: int = 120) -> str:
    """A fixed-width table: neuron, polarity, score, classifier and causal scores (when any row has them), method,
    explainer model, lexical ceiling, explanation (clipped to `width`)."""
    if not rows:
        return "no matching explanations"
    scorers = sorted({name for row in rows for name in row.classifiers})
    causal = ("causal",) if any(row.causal for row in rows) else ()
    header = ("neuron", "polarity", "score", *scorers, *causal, "method", "explainer", "ceiling", "explanation")

    def balanced(row: ResultRow, scorer: str) -> str:
        value = row.classifiers.get(scorer, {}).get("balanced_accuracy")
        return _number(float("nan") if value is None else value)

    def causal_value(row: ResultRow) -> tuple[str, ...]:
        value = row.causal.get("value")
        return (_number(float("nan") if value is None else value),) if causal else ()

    cells = [(str(row.neuron), row.polarity, _number(row.score), *(balanced(row, scorer) for scorer in scorers),
              *causal_value(row), row.method, _clip(row.explainer_model, 24), _number(row.lexical_ceiling), readable_text(row.text))
             for row in rows]
    columns = len(header) - 1
    extra = len(scorers) + len(causal)
    numeric = {*range(2, 3 + extra), 5 + extra}
    widths = [max(len(header[index]), *(len(cell[index]) for cell in cells)) for index in range(columns)]
    text_width = max(width - sum(widths) - 2 * columns, 20)
    lines = ["  ".join(value.ljust(size) for value, size in zip(header[:columns], widths)) + "  " + header[-1]]
    for cell in cells:
        lines.append("  ".join(value.rjust(size) if index in numeric else value.ljust(size)
                               for index, (value, size) in enumerate(zip(cell[:columns], widths)))
                     + "  " + _clip(cell[-1], text_width))
    return "\n".join(lines)


def _window_block(window: ScoredWindow, width: int) -> list[str]:
    peak = max((value for value in window.true_activations if math.isfinite(value)), default=float("nan"))
    lines = [f"    window {window.window_id} ({window.split.value}), max true activation {_number(peak, 2)}"
             + (f", not simulated: {window.error}" if window.error else "")]
    columns = []
    for token, true, simulated in zip(window.tokens, window.true_activations, window.simulated_activations):
        label = visible_token(token)[:12]
        true_text, simulated_text = _number(true, 1), _number(simulated, 1)
        columns.append((label, true_text, simulated_text, max(len(label), len(true_text), len(simulated_text))))
    row_width = max(width - 12, 20)
    start = 0
    while start < len(columns):
        used, end = 0, start
        while end < len(columns) and (used + columns[end][3] + 1 <= row_width or end == start):
            used += columns[end][3] + 1
            end += 1
        chunk = columns[start:end]
        for name, position in (("token", 0), ("true", 1), ("sim", 2)):
            lines.append(f"      {name:<6}" + " ".join(column[position].rjust(column[3]) for column in chunk))
        lines.append("")
        start = end
    return lines


def _score_lines(stored: StoredScore) -> list[str]:
    score, metrics = stored.score, stored.score.metrics
    line = (f"    score {_number(metrics.pearson)} [{_number(metrics.ci_low, 2)}, {_number(metrics.ci_high, 2)}]"
            f"  top {_number(metrics.pearson_top)}  random {_number(metrics.pearson_random)}"
            f"  r2 {_number(metrics.rsquared)}  ade {_number(metrics.absolute_dev_explained)}"
            f"  tokens {metrics.scored_tokens}")
    lines = [line, f"      simulator {score.simulator.value} via {score.simulator_backend} ({score.simulator_model}),"
                   f" prompt {score.prompt_hash[:12]}, split seed {score.split_seed}, run {stored.run_id},"
                   f" at {score.created_at}"]
    if metrics.undefined_reason:
        lines.append(f"      undefined: {metrics.undefined_reason}")
    if score.baselines:
        lines.append("      baselines: " + ", ".join(f"{name} {_number(value)}" for name, value in score.baselines.items()))
    return lines


def _explanation_lines(stored: StoredExplanation, *, windows: int, width: int, show_windows: bool) -> list[str]:
    explanation = stored.explanation
    lines = [f"  [{explanation.method.value}, {explanation.polarity.value}] {explanation.text}",
             f"    explainer {explanation.explainer_backend} ({explanation.explainer_model}), prompt "
             f"{explanation.prompt_hash[:12]}, run {stored.run_id}, at {explanation.created_at}, "
             f"tokens {explanation.prompt_tokens}+{explanation.completion_tokens}"]
    if explanation.parameters:
        lines.append("    parameters: " + ", ".join(f"{key}={value}" for key, value in sorted(explanation.parameters.items())))
    if not stored.scores and not stored.classifier_scores:
        lines.append("    (not scored)")
    for stored_score in stored.scores:
        lines += _score_lines(stored_score)
    for classified in stored.classifier_scores:
        metrics = classified.metrics
        lines.append(f"    {classified.scorer.value} balanced accuracy {_number(metrics.balanced_accuracy)}"
                     f"  accuracy {_number(metrics.accuracy)}  auroc {_number(metrics.auroc)} ({metrics.auroc_from})"
                     f"  passages {metrics.answered}/{metrics.passages}, {metrics.positives} positive")
        lines.append(f"      via {classified.backend} ({classified.model}), prompt {classified.prompt_hash[:12]},"
                     f" {classified.requests} requests, tokens {classified.prompt_tokens}+"
                     f"{classified.completion_tokens}, at {classified.created_at}")
    if show_windows and stored.scores and windows > 0:
        scored = [window for window in stored.scores[0].score.windows
                  if window.split in (WindowSplit.SCORE_TOP, WindowSplit.SCORE_RANDOM)]
        ranked = sorted(scored, key=lambda window: -max((v for v in window.true_activations if math.isfinite(v)),
                                                       default=-math.inf))
        lines.append("    top scored windows (true activation vs simulated 0-10):")
        for window in ranked[:windows]:
            lines += _window_block(window, width)
    return lines


def format_neuron_detail(details: Sequence[NeuronDetail], *, windows: int = 3, width: int = 120) -> str:
    """Everything stored about a neuron; the best explanation's top windows with true and simulated values."""
    if not details:
        return "no such neuron in the database"
    lines: list[str] = []
    for detail in details:
        lines.append(f"neuron {detail.neuron} of {detail.model_id} (fingerprint {detail.model_fingerprint[:12]})")
        for manifest_hash, stats in detail.stats:
            lines.append(f"  recording {manifest_hash[:12]}: mean {_number(stats.mean)}, std {_number(stats.std)}, "
                         f"min {_number(stats.min)}, max {_number(stats.max)}, "
                         f"positive {_number(stats.fraction_positive, 2)}, tokens {stats.count}")
        if not detail.explanations:
            lines.append("  no explanations yet")
        for index, stored in enumerate(detail.explanations):
            lines += _explanation_lines(stored, windows=windows, width=width, show_windows=index == 0)
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def format_source_windows(details: Sequence[NeuronDetail], records: str, *, width: int = 120,
                          windows: int = 3) -> str:
    """The windows the best explanation's explainer was shown, read from a record store (true activations)."""
    from neuron_explainer.activations import RecordStore

    store = RecordStore.open(records)
    lines: list[str] = []
    for detail in details:
        if detail.model_id != store.manifest.model_id or not detail.explanations:
            continue
        explanation = detail.explanations[0].explanation
        if detail.neuron.layer not in store.layers:
            lines.append(f"layer {detail.neuron.layer} is not in the record store {records}")
            continue
        record = store.load_neuron(detail.neuron.layer, detail.neuron.neuron)
        known = {window.window_id: window for window in (*record.top_windows, *record.bottom_windows,
                                                          *record.random_windows)}
        shown = [known[window_id] for window_id in explanation.source_window_ids if window_id in known]
        lines.append(f"windows shown to the explainer for {detail.neuron} ({len(shown)} of "
                     f"{len(explanation.source_window_ids)} found in {records}):")
        for window in shown[:windows]:
            lines += _window_block(ScoredWindow(window_id=window.window_id, split=WindowSplit.EXPLAIN,
                                                tokens=window.tokens, true_activations=window.activations,
                                                simulated_activations=(float("nan"),) * len(window.tokens)),
                                   width)
    if not lines:
        return f"the record store {records} holds no recording of these neurons' subject model\n"
    return "\n".join(lines).rstrip() + "\n"


def _plain(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if hasattr(value, "value") and isinstance(getattr(value, "value"), str):
        return value.value
    return value


def neuron_detail_as_dict(detail: NeuronDetail) -> dict[str, Any]:
    """JSON-ready form of a NeuronDetail (NaN as null, enums by value)."""
    return {
        "layer": detail.neuron.layer, "neuron": detail.neuron.neuron, "model_id": detail.model_id,
        "model_fingerprint": detail.model_fingerprint,
        "stats": [{"manifest_hash": manifest_hash, **_plain(dataclasses.asdict(stats))}
                  for manifest_hash, stats in detail.stats],
        "explanations": [{
            "id": stored.id, "config_key": stored.config_key, "run_id": stored.run_id,
            "manifest_hash": stored.manifest_hash,
            **{key: _plain(value) for key, value in dataclasses.asdict(stored.explanation).items() if key != "neuron"},
            "scores": [{
                "id": score.id, "config_key": score.config_key, "run_id": score.run_id,
                **{key: _plain(value) for key, value in dataclasses.asdict(score.score).items()
                   if key not in ("neuron", "explanation_text")},
            } for score in stored.scores],
            "classifier_scores": [{
                key: _plain(value) for key, value in dataclasses.asdict(classified).items()
                if key not in ("neuron", "explanation_text")} for classified in stored.classifier_scores],
        } for stored in detail.explanations],
    }
