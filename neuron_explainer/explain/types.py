"""Records the explainers produce: an explanation with full provenance, or a failure with the raw answer."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar

from neuron_explainer.core.neurons import NeuronId
from neuron_explainer.core.registry import Name


class ExplainerKind(Name):
    """How an explanation was made: the name of an explainer (see `explain.registry` for the ones there are)."""

    __slots__ = ()
    TOKEN_PAIRS: ClassVar[ExplainerKind]
    SASC: ClassVar[ExplainerKind]
    NGRAM: ClassVar[ExplainerKind]
    LEXICON: ClassVar[ExplainerKind]


ExplainerKind.TOKEN_PAIRS = ExplainerKind("token-pairs")
ExplainerKind.SASC = ExplainerKind("sasc")
ExplainerKind.NGRAM = ExplainerKind("ngram")
ExplainerKind.LEXICON = ExplainerKind("lexicon")


class Polarity(str, Enum):
    """Which direction of the neuron an explanation describes."""

    POSITIVE = "positive"
    NEGATIVE = "negative"


@dataclass(frozen=True)
class Explanation:
    """One short natural-language hypothesis about what makes a neuron fire, with its provenance."""

    neuron: NeuronId
    """The neuron explained."""
    text: str
    """The cleaned one-phrase explanation."""
    method: ExplainerKind
    """Which explainer produced it."""
    polarity: Polarity
    """Positive activations, or the negated activations for the negative side."""
    explainer_backend: str
    """Backend spec (e.g. `openai:gpt-4o-mini`, `local:default`, `none` for LLM-free explainers); never a key."""
    explainer_model: str
    """Model name as the backend reports it."""
    prompt_hash: str
    """Content hash of the prompt template(s) and few-shot files used (`none` when no prompt)."""
    parameters: dict[str, Any]
    """Every setting that affects the text (n, temperature, example counts, stratified, ...), JSON-serialisable."""
    source_window_ids: tuple[int, ...]
    """Record-store window ids the explainer was shown (never scored)."""
    split_seed: int
    """Seed of the explain/calibrate/score split."""
    created_at: str
    """ISO-8601 UTC timestamp."""
    prompt_tokens: int = 0
    """Prompt tokens spent making it (all candidates)."""
    completion_tokens: int = 0
    """Completion tokens spent making it (all candidates)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Method-specific details (SASC candidates and synthetic scores, best-of-n candidates), JSON-serialisable."""
