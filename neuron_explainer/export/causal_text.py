"""Causal scores for `show`: one line per score that has one, and a JSON-ready form."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from neuron_explainer.causal import CausalScore
from neuron_explainer.db import NeuronDetail


def _number(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def format_causal_scores(details: Sequence[NeuronDetail], causal: Mapping[int, CausalScore]) -> str:
    """`causal score of "<explanation>" (simulator): 0.62 [0.41, 0.80]` lines, or nothing when none is stored."""
    lines = []
    for detail in details:
        for stored in detail.explanations:
            for item in stored.scores:
                found = causal.get(item.id)
                if found is None:
                    continue
                value = (f"undefined ({found.undefined_reason})" if found.undefined_reason else
                         f"{_number(found.value)} [{_number(found.ci_low)}, {_number(found.ci_high)}]")
                lines.append(f"  causal {value}: KL per token simulated {found.kl_simulated:.3g} vs {found.ablation}-"
                             f"ablated {found.kl_ablated:.3g} over {found.tokens} tokens; loss recovered "
                             f"{_number(found.loss_recovered)}  ({item.score.simulator.value}, score {item.id}: "
                             f"{stored.explanation.text[:60]!r})")
    return ("causal scores (1 - KL_sim / KL_ablate, held-out windows):\n" + "\n".join(lines) + "\n") if lines else ""


def causal_scores_as_dict(causal: Mapping[int, CausalScore]) -> dict[str, Any]:
    """{score id: causal score fields} with NaN as null."""
    return {str(score_id): {key: (None if isinstance(value, float) and math.isnan(value) else value)
                            for key, value in score.as_dict().items()} for score_id, score in causal.items()}
