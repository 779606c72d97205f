"""The lexical ceiling's predictor: each token's mean activation in a neuron's explain windows, as a lookup table.

It answers "how much of this neuron is just which token it sits on?" with the best token-level predictor that
sees only what an explainer sees. Tokens are keyed exactly as decoded (" the" and "the" differ). A token seen `n`
times gets `(sum + k * mean) / (n + k)`: its mean shrunk toward the neuron's mean over the explain windows, so a
token seen once is not trusted like one seen often; a token never seen gets the neuron's mean itself (the back-off).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from neuron_explainer.activations.records import Window

DEFAULT_SHRINKAGE = 1.0
"""Pseudo-count `k` of the neuron's mean added to every token."""


@dataclass(frozen=True)
class TokenLookup:
    """Token -> predicted activation, fitted on some windows."""

    values: Mapping[str, float]
    """Shrunk mean activation per token seen."""
    fallback: float
    """Prediction for tokens never seen: the mean activation over the fitted windows."""
    shrinkage: float
    """The pseudo-count used."""

    @classmethod
    def fit(cls, windows: Sequence[Window], *, shrinkage: float = DEFAULT_SHRINKAGE) -> TokenLookup:
        """The lookup of these windows (fallback 0 when they hold no tokens)."""
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        total, tokens = 0.0, 0
        for window in windows:
            for token, value in zip(window.tokens, window.activations, strict=True):
                sums[token] = sums.get(token, 0.0) + value
                counts[token] = counts.get(token, 0) + 1
                total += value
                tokens += 1
        mean = total / tokens if tokens else 0.0
        values = {token: (sums[token] + shrinkage * mean) / (counts[token] + shrinkage) for token in sums}
        return cls(values=values, fallback=mean, shrinkage=shrinkage)

    def predict(self, tokens: Sequence[str]) -> tuple[float, ...]:
        """Prediction per token."""
        return tuple(self.values.get(token, self.fallback) for token in tokens)
