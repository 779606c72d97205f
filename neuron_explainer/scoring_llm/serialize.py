"""Detection and fuzzing scores as JSON lines (the `score` command's output), NaN written as null."""

from __future__ import annotations

import dataclasses
from typing import Any

from neuron_explainer.explain.serialize import json_safe
from neuron_explainer.scoring_llm.types import ClassifierScore, ScorerKind


def classifier_score_to_dict(score: ClassifierScore) -> dict[str, Any]:
    """A JSON-ready object with `"type": "classifier_score"`, holding every passage's label and verdict."""
    fields = dataclasses.asdict(score)
    return json_safe({"type": "classifier_score", **fields, "neuron": str(score.neuron),
                      "scorer": ScorerKind(score.scorer).value})
