"""Scores as JSON objects (one per line in `--out FILE.jsonl`) and back; NaN metrics are written as null."""

from __future__ import annotations

from typing import Any

from neuron_explainer.core.neurons import NeuronId
from neuron_explainer.explain.serialize import json_safe
from neuron_explainer.simulate.types import Metrics, Score, ScoredWindow, SimulatorKind, WindowSplit

_METRIC_FIELDS = ("pearson", "pearson_top", "pearson_random", "rsquared", "absolute_dev_explained", "ci_low",
                  "ci_high")


def _nan_if_none(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def score_to_dict(score: Score) -> dict[str, Any]:
    """A JSON-ready object with `"type": "score"`, holding every scored window so metrics can be recomputed."""
    metrics = score.metrics
    return json_safe({
        "type": "score", "neuron": str(score.neuron), "explanation_text": score.explanation_text,
        "simulator": score.simulator.value, "simulator_backend": score.simulator_backend,
        "simulator_model": score.simulator_model, "prompt_hash": score.prompt_hash, "split_seed": score.split_seed,
        "metrics": {**{name: getattr(metrics, name) for name in _METRIC_FIELDS},
                    "scored_tokens": metrics.scored_tokens, "undefined_reason": metrics.undefined_reason},
        "windows": [{"window_id": window.window_id, "split": window.split.value, "tokens": list(window.tokens),
                     "true_activations": list(window.true_activations),
                     "simulated_activations": list(window.simulated_activations), "error": window.error}
                    for window in score.windows],
        "parameters": score.parameters, "created_at": score.created_at, "prompt_tokens": score.prompt_tokens,
        "completion_tokens": score.completion_tokens, "baselines": score.baselines})


def score_from_dict(data: dict[str, Any]) -> Score:
    """Inverse of `score_to_dict` (null metrics come back as NaN)."""
    raw_metrics = data["metrics"]
    metrics = Metrics(**{name: _nan_if_none(raw_metrics[name]) for name in _METRIC_FIELDS},
                      scored_tokens=raw_metrics["scored_tokens"], undefined_reason=raw_metrics["undefined_reason"])
    windows = tuple(ScoredWindow(window_id=window["window_id"], split=WindowSplit(window["split"]),
                                 tokens=tuple(window["tokens"]), true_activations=tuple(window["true_activations"]),
                                 simulated_activations=tuple(window["simulated_activations"]), error=window["error"])
                    for window in data["windows"])
    return Score(neuron=NeuronId.parse(data["neuron"]), explanation_text=data["explanation_text"],
                 simulator=SimulatorKind(data["simulator"]), simulator_backend=data["simulator_backend"],
                 simulator_model=data["simulator_model"], prompt_hash=data["prompt_hash"],
                 split_seed=data["split_seed"], metrics=metrics, windows=windows, parameters=data["parameters"],
                 created_at=data["created_at"], prompt_tokens=data.get("prompt_tokens", 0),
                 completion_tokens=data.get("completion_tokens", 0),
                 baselines={key: _nan_if_none(value) for key, value in data.get("baselines", {}).items()})
