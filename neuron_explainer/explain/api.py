"""`explain_neuron`: one neuron's record in, one Explanation (or a Failure with the raw answer) out."""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from neuron_explainer.activations.records import NeuronRecord
from neuron_explainer.activations.weight_views import NeuronWeightView
from neuron_explainer.core.errors import UserError
from neuron_explainer.core.failures import Failure
from neuron_explainer.core.prompts import load_prompt_files
from neuron_explainer.explain.parsing import clean_explanation
from neuron_explainer.explain.splits import SplitConfig, oriented_record, split_neuron
from neuron_explainer.explain.token_pairs import (PROMPT_FILES, PROMPT_FILES_WITH_WEIGHTS, build_prompt,
                                                  render_as_text, scale_windows, weight_view_text)
from neuron_explainer.explain.types import ExplainerKind, Explanation, Polarity
from neuron_explainer.llm.base import LLMBackend
from neuron_explainer.llm.errors import LLMError, backend_failure

logger = logging.getLogger(__name__)

CandidateRanker = Callable[[Sequence[str]], Awaitable[Sequence[float]]]
"""Scores candidate explanation texts of one neuron (higher is better; NaN = unusable), e.g. by simulation on the
calibrate split; built by `neuron_explainer.scoring.calibrate_ranker`."""

CONTEXT_SAFETY_TOKENS = 64
"""Context tokens left unused on top of the answer budget, for chat-template overhead we cannot see."""


@dataclass(frozen=True)
class ExplainConfig:
    """Settings of the token-pair explainer; everything that changes the text is recorded with it."""

    split: SplitConfig = field(default_factory=SplitConfig)
    """Which windows are explained (and, by exclusion, scored)."""
    polarity: Polarity = Polarity.POSITIVE
    """Explain the positive activations, or the negated ones of the bottom windows."""
    candidates: int = 1
    """Explanations drawn; with more than one the best on the calibrate split is kept (needs a ranker)."""
    temperature: float | None = None
    """Sampling temperature; None = 0 for one candidate, 1 for several."""
    max_answer_tokens: int = 60
    """Tokens allowed for each answer."""
    nonzero_threshold: float = 0.2
    """Repeat the non-zero pairs when fewer than this fraction of the shown activations are non-zero."""
    with_weights: bool = False
    """Also show the neuron's weight views (output and input tokens; `neuron-explainer weights`) in the prompt."""
    weight_view_tokens: int = 10
    """Tokens shown per weight-view list when `with_weights` is set."""

    def identity_parameters(self) -> dict[str, object]:
        """The settings that change the text (part of the explanation's config key); old keys stay unchanged when
        weights are off."""
        parameters: dict[str, object] = {
            **self.split.as_dict(), "candidates": self.candidates, "temperature": self.effective_temperature,
            "max_answer_tokens": self.max_answer_tokens, "nonzero_threshold": self.nonzero_threshold}
        if self.with_weights:
            parameters["weight_view_tokens"] = self.weight_view_tokens
        return parameters

    @property
    def prompt_files(self) -> tuple[str, ...]:
        """The prompt files this configuration reads."""
        return PROMPT_FILES_WITH_WEIGHTS if self.with_weights else PROMPT_FILES

    @property
    def effective_temperature(self) -> float:
        """The temperature actually used."""
        if self.temperature is not None:
            return self.temperature
        return 0.0 if self.candidates == 1 else 1.0


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


async def explain_neuron(record: NeuronRecord, backend: LLMBackend, *, config: ExplainConfig = ExplainConfig(),
                         ranker: CandidateRanker | None = None,
                         weight_view: NeuronWeightView | None = None) -> Explanation | Failure:
    """Explain one neuron with the token-activation-pair method (with `config.with_weights`, also showing
    `weight_view`).

    Returns a Failure (with the raw answers) when the neuron never fires in its explain windows, the prompt cannot
    fit the backend's context, the backend errors, or no answer parses into a usable phrase.
    """
    if config.candidates < 1:
        raise UserError("--candidates must be at least 1")
    if config.candidates > 1 and ranker is None:
        raise ValueError("best-of-n explanation needs a ranker (neuron_explainer.scoring.calibrate_ranker)")
    oriented = oriented_record(record, config.polarity)
    split = split_neuron(oriented, config.split)
    if not split.explain:
        return Failure(record.neuron, "explain", "the record has no top windows left to explain")
    scaled = scale_windows(split.explain)
    if not any(value > 0 for window in scaled for value in window.values):
        return Failure(record.neuron, "explain", f"no {config.polarity.value} activation in the explain windows")

    files = load_prompt_files(config.prompt_files)
    weights = ""
    if config.with_weights:
        if weight_view is None:
            return Failure(record.neuron, "explain", f"the record store has no weight views of layer "
                                                     f"{record.neuron.layer} (`neuron-explainer weights`)")
        weights = weight_view_text(files, weight_view, polarity=config.polarity, tokens=config.weight_view_tokens)
    budget = backend.capabilities.context_window - config.max_answer_tokens - CONTEXT_SAFETY_TOKENS
    prompt = build_prompt(scaled, token_budget=budget, nonzero_threshold=config.nonzero_threshold, files=files,
                          weights=weights)
    if prompt is None:
        return Failure(record.neuron, "explain",
                       f"the prompt does not fit the {backend.capabilities.context_window}-token context of {backend.name}")
    request = prompt.messages if backend.capabilities.chat else render_as_text(prompt.messages)
    try:
        result = await backend.generate(request, n=config.candidates, temperature=config.effective_temperature,
                                        max_tokens=config.max_answer_tokens, seed=config.split.seed,
                                        stop=None if backend.capabilities.chat else ["\n\n"])
    except LLMError as exc:
        if exc.stops_run:
            raise
        logger.warning("explaining %s failed: %s", record.neuron, exc)
        return backend_failure(record.neuron, "explain", "backend error", exc)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - one neuron's backend failure must not end a night's run
        logger.warning("explaining %s failed: %s", record.neuron, exc)
        return backend_failure(record.neuron, "explain", "backend error", exc)

    raw_answers = [generation.text for generation in result.generations]
    parsed = [(raw, clean_explanation(raw)) for raw in raw_answers]
    usable: list[str] = []
    rejected: list[dict[str, str]] = []
    for raw, outcome in parsed:
        if outcome.text is None:
            rejected.append({"raw": raw, "reason": outcome.reason or "unusable"})
        elif outcome.text.casefold() not in {text.casefold() for text in usable}:
            usable.append(outcome.text)
    if not usable:
        reason = rejected[0]["reason"] if rejected else "the backend returned no answer"
        return Failure(record.neuron, "explain", f"no usable explanation: {reason}",
                       raw_output="\n---\n".join(raw_answers))

    extra: dict[str, object] = {}
    chosen = usable[0]
    if config.candidates > 1 and ranker is not None:
        ranks = [float(value) for value in await ranker(usable)]
        best = max(range(len(usable)), key=lambda index: -math.inf if math.isnan(ranks[index]) else ranks[index])
        chosen = usable[best]
        extra["candidates"] = [{"text": text, "calibrate_pearson": None if math.isnan(rank) else rank}
                               for text, rank in zip(usable, ranks)]
    if rejected:
        extra["rejected"] = rejected

    parameters: dict[str, object] = {
        **config.identity_parameters(), "windows_shown": len(prompt.shown_windows), "few_shot_examples": prompt.few_shot_count,
        "nonzero_repeated": prompt.nonzero_repeated, "truncated": prompt.truncated,
        "prompt_style": "chat" if backend.capabilities.chat else "completion"}
    return Explanation(
        neuron=record.neuron, text=chosen, method=ExplainerKind.TOKEN_PAIRS, polarity=config.polarity,
        explainer_backend=backend.name, explainer_model=backend.model, prompt_hash=files.hash,
        parameters=parameters,
        source_window_ids=tuple(window.window_id for window in prompt.shown_windows if window.window_id is not None),
        split_seed=config.split.seed, created_at=_now(), prompt_tokens=result.usage.prompt_tokens,
        completion_tokens=result.usage.completion_tokens, extra=extra)
