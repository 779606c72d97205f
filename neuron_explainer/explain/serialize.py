"""Explanations and failures as JSON objects (one per line in `--out FILE.jsonl`) and back."""

from __future__ import annotations

import math
from typing import Any

from neuron_explainer.core.failures import Failure
from neuron_explainer.core.neurons import NeuronId
from neuron_explainer.explain.types import ExplainerKind, Explanation, Polarity

RAW_OUTPUT_LIMIT = 4000
"""Characters of an unusable answer kept with its failure."""


def json_safe(value: Any) -> Any:
    """NaN and infinities become None (JSON has no NaN); containers are converted recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def explanation_to_dict(explanation: Explanation) -> dict[str, Any]:
    """A JSON-ready object with `"type": "explanation"`."""
    return json_safe({
        "type": "explanation", "neuron": str(explanation.neuron), "text": explanation.text,
        "method": explanation.method.value, "polarity": explanation.polarity.value,
        "explainer_backend": explanation.explainer_backend, "explainer_model": explanation.explainer_model,
        "prompt_hash": explanation.prompt_hash, "parameters": explanation.parameters,
        "source_window_ids": list(explanation.source_window_ids), "split_seed": explanation.split_seed,
        "created_at": explanation.created_at, "prompt_tokens": explanation.prompt_tokens,
        "completion_tokens": explanation.completion_tokens, "extra": explanation.extra})


def explanation_from_dict(data: dict[str, Any]) -> Explanation:
    """Inverse of `explanation_to_dict`."""
    return Explanation(
        neuron=NeuronId.parse(data["neuron"]), text=data["text"], method=ExplainerKind(data["method"]),
        polarity=Polarity(data["polarity"]), explainer_backend=data["explainer_backend"],
        explainer_model=data["explainer_model"], prompt_hash=data["prompt_hash"], parameters=data["parameters"],
        source_window_ids=tuple(data["source_window_ids"]), split_seed=data["split_seed"],
        created_at=data["created_at"], prompt_tokens=data.get("prompt_tokens", 0),
        completion_tokens=data.get("completion_tokens", 0), extra=data.get("extra", {}))


def failure_to_dict(failure: Failure) -> dict[str, Any]:
    """A JSON-ready object with `"type": "failure"` (the raw answer cut to a few KB)."""
    return {"type": "failure", "neuron": str(failure.neuron), "stage": failure.stage, "reason": failure.reason,
            "raw_output": failure.raw_output[:RAW_OUTPUT_LIMIT], "kind": failure.kind.value}
