"""Detection and fuzzing scoring (after Paulo et al. 2024): a chat model classifies held-out passages from the
explanation alone, several passages per request, and the verdicts are compared with what the neuron did.

Detection shows the scored windows of the split (held-out top and random) and asks which ones the neuron fires in.
Fuzzing shows the activating ones among them with some tokens marked, the right tokens for half of them and as many
non-firing tokens for the other half, and asks whether the marks are right. Neither needs logprobs; when the backend
returns them, the probability of the `1` verdict ranks the passages for the AUROC.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from neuron_explainer.activations.records import NeuronRecord, Window
from neuron_explainer.core.errors import UserError
from neuron_explainer.explain.formatting import printable_token
from neuron_explainer.core.prompts import PromptFiles, load_prompt_files
from neuron_explainer.explain.splits import SplitConfig, check_no_leakage, oriented_record, split_neuron
from neuron_explainer.explain.token_pairs import render_as_text
from neuron_explainer.core.failures import Failure
from neuron_explainer.explain.types import Explanation, Polarity
from neuron_explainer.llm.base import GenerateResult, LLMBackend, Message, Prompt
from neuron_explainer.llm.errors import LLMError
from neuron_explainer.scoring_llm.types import (ClassifiedPassage, ClassifierMetrics, ClassifierScore, ScorerKind)
from neuron_explainer.simulate.generated import MAX_TOP_LOGPROBS, logprob_expected_value, parse_answer

logger = logging.getLogger(__name__)

NAN = float("nan")
EXAMPLES_FILE = "scorer/examples.json"
MARK_OPEN, MARK_CLOSE = "[[", "]]"
ANSWER_TOKENS_PER_PASSAGE = 6
"""Generous token allowance per answer line (`12<TAB>1<NL>`)."""


def prompt_file_names(kind: ScorerKind) -> tuple[str, ...]:
    """The prompt files a classifier scorer reads (their joint hash is stored with every score)."""
    return (f"scorer/{kind.value}/system.md", f"scorer/{kind.value}/request.md", EXAMPLES_FILE)


@dataclass(frozen=True)
class ClassifierConfig:
    """Settings of a detection or fuzzing scorer; all recorded with every score."""

    passages_per_request: int = 10
    """Passages classified in one request (fewer requests per neuron, longer answers)."""
    active_fraction: float = 0.3
    """A token fires when its activation reaches this fraction of the neuron's largest top-window activation."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready parameters."""
        return {"passages_per_request": self.passages_per_request, "active_fraction": self.active_fraction}


@dataclass(frozen=True)
class _Passage:
    window: Window
    label: bool
    marked: tuple[int, ...]


def render_passage(tokens: Sequence[str], marked: Sequence[int] = ()) -> str:
    """One line of escaped passage text; runs of marked tokens are wrapped in [[...]]."""
    chosen = set(marked)
    parts: list[str] = []
    for position, token in enumerate(tokens):
        text = printable_token(token)
        if position in chosen and position - 1 not in chosen:
            parts.append(MARK_OPEN)
        parts.append(text)
        if position in chosen and position + 1 not in chosen:
            parts.append(MARK_CLOSE)
    return "".join(parts)


def classification_metrics(labels: Sequence[bool], predictions: Sequence[int],
                           probabilities: Sequence[float | None], passages: int) -> ClassifierMetrics:
    """Accuracy, balanced accuracy and AUROC of answered passages (probabilities rank when all are present)."""
    answered = len(labels)
    positives = sum(1 for label in labels if label)
    use_probabilities = answered > 0 and all(value is not None for value in probabilities)
    ranks_by = [float(value) for value in probabilities] if use_probabilities else [float(p) for p in predictions]
    if answered == 0:
        return ClassifierMetrics(NAN, NAN, NAN, passages, 0, 0, "verdicts", "no passage was answered")
    accuracy = sum(1 for label, prediction in zip(labels, predictions) if bool(prediction) == label) / answered
    source = "logprobs" if use_probabilities else "verdicts"
    if positives in (0, answered):
        reason = "every answered passage has the same label"
        return ClassifierMetrics(accuracy, NAN, NAN, passages, answered, positives, source, reason)
    true_positive = sum(1 for label, prediction in zip(labels, predictions) if label and prediction)
    true_negative = sum(1 for label, prediction in zip(labels, predictions) if not label and not prediction)
    balanced = (true_positive / positives + true_negative / (answered - positives)) / 2
    return ClassifierMetrics(accuracy, balanced, auroc(labels, ranks_by), passages, answered, positives, source)


def auroc(labels: Sequence[bool], values: Sequence[float]) -> float:
    """Probability that a random positive outranks a random negative (ties count half); NaN without both."""
    positive = np.array([value for label, value in zip(labels, values) if label], dtype=np.float64)
    negative = np.array([value for label, value in zip(labels, values) if not label], dtype=np.float64)
    if positive.size == 0 or negative.size == 0:
        return NAN
    greater = (positive[:, None] > negative[None, :]).sum()
    ties = (positive[:, None] == negative[None, :]).sum()
    return float((greater + 0.5 * ties) / (positive.size * negative.size))


def classifier_messages(kind: ScorerKind, explanation: str,
                        passages: Sequence[tuple[Sequence[str], Sequence[int]]]) -> tuple[Message, ...]:
    """A detection or fuzzing chat: instructions and the worked example as turns (identical in every request, a
    stable prefix providers' prompt caches can serve), then `explanation` with its (tokens, marked) passages."""
    files: PromptFiles = load_prompt_files(prompt_file_names(kind))

    def request(text: str, lines: Sequence[str]) -> str:
        numbered = "\n".join(f"{index}\t{line}" for index, line in enumerate(lines, start=1))
        return files.render(f"scorer/{kind.value}/request.md", explanation=" ".join(text.split()),
                            passages=numbered).rstrip("\n")

    messages = [Message("system", files.text(f"scorer/{kind.value}/system.md").strip())]
    for example in files.json(EXAMPLES_FILE)[kind.value]:
        if kind is ScorerKind.FUZZING:
            lines = [render_passage([token for token, _ in pairs], [index for index, (_, mark) in enumerate(pairs)
                                                                    if mark]) for pairs in example["passages"]]
        else:
            lines = [render_passage(tokens) for tokens in example["passages"]]
        messages.append(Message("user", request(example["explanation"], lines)))
        messages.append(Message("assistant", "\n".join(f"{index}\t{int(answer)}" for index, answer
                                                       in enumerate(example["answers"], start=1))))
    messages.append(Message("user", request(explanation, [render_passage(tokens, marked)
                                                          for tokens, marked in passages])))
    return tuple(messages)


class ClassifierScorer:
    """Scores explanations by detection or fuzzing with one chat (or completion) backend."""

    def __init__(self, kind: ScorerKind | str, backend: LLMBackend, *,
                 config: ClassifierConfig = ClassifierConfig()) -> None:
        self.kind = ScorerKind(kind)
        if self.kind is ScorerKind.SIMULATION:
            raise ValueError("simulation is not a classifier scorer")
        if not (backend.capabilities.chat or backend.capabilities.completion):
            raise UserError(f"{backend.name} accepts neither chat nor completion prompts")
        if config.passages_per_request < 1 or not 0 < config.active_fraction <= 1:
            raise UserError("a classifier scorer needs passages_per_request >= 1 and 0 < active_fraction <= 1")
        self.backend = backend
        self.config = config
        self._files = load_prompt_files(prompt_file_names(self.kind))
        self.prompt_hash = self._files.hash
        self._top_logprobs = (min(MAX_TOP_LOGPROBS, backend.capabilities.max_top_logprobs)
                              if backend.capabilities.generated_logprobs else 0)

    @property
    def parameters(self) -> dict[str, Any]:
        """Settings that affect the score."""
        return {**self.config.as_dict(), "top_logprobs": self._top_logprobs, "answer_format": "index<TAB>0|1",
                "prompt_style": "chat" if self.backend.capabilities.chat else "completion"}

    # --- prompts -----------------------------------------------------------------------------------------------

    def build_prompt(self, explanation: str, passages: Sequence[tuple[Sequence[str], Sequence[int]]]) -> Prompt:
        """The whole prompt for one request: the stable prefix, then this explanation's passages."""
        messages = classifier_messages(self.kind, explanation, passages)
        return messages if self.backend.capabilities.chat else render_as_text(messages)

    # --- passages ----------------------------------------------------------------------------------------------

    def passages(self, record: NeuronRecord, split: SplitConfig, polarity: Polarity) -> list[_Passage]:
        """The labelled passages of one neuron: the split's scored windows (detection) or the firing ones among
        them with right or wrong marks (fuzzing); seeded, so every run shows the same."""
        oriented = oriented_record(record, polarity)
        windows = split_neuron(oriented, split).scored
        reference = max((value for window in oriented.top_windows for value in window.activations), default=0.0)
        threshold = self.config.active_fraction * reference if reference > 0 else math.inf

        def firing(window: Window) -> list[int]:
            return [position for position, value in enumerate(window.activations) if value >= threshold]

        if self.kind is ScorerKind.DETECTION:
            return [_Passage(window, bool(firing(window)), ()) for window in windows]
        active = [window for window in windows if firing(window) and len(firing(window)) < len(window.tokens)]
        rng = random.Random(f"{split.seed}:{record.neuron.layer}:{record.neuron.neuron}:fuzzing")
        rng.shuffle(active)
        passages = []
        for index, window in enumerate(active):
            right = firing(window)
            if index % 2 == 0:
                passages.append(_Passage(window, True, tuple(right)))
            else:
                quiet = [position for position in range(len(window.tokens)) if position not in set(right)]
                passages.append(_Passage(window, False, tuple(sorted(rng.sample(quiet, min(len(right), len(quiet)))))))
        return passages

    # --- scoring -----------------------------------------------------------------------------------------------

    async def score(self, record: NeuronRecord, explanation: Explanation | str, *, split: SplitConfig = SplitConfig(),
                    polarity: Polarity = Polarity.POSITIVE) -> ClassifierScore | Failure:
        """Classify one neuron's held-out passages from `explanation`; a Failure when nothing could be asked or
        answered (an error that stops the run is raised)."""
        if isinstance(explanation, Explanation):
            text, polarity, explained = explanation.text, explanation.polarity, explanation.source_window_ids
        else:
            text, explained = explanation, ()
        check_no_leakage(split_neuron(oriented_record(record, polarity), split), explained_ids=explained)
        passages = self.passages(record, split, polarity)
        if not passages:
            return Failure(record.neuron, self.kind.value, f"no passages to show for {self.kind.value} "
                                                           "(no firing window among the held-out windows)")
        size = self.config.passages_per_request
        batches = [passages[start:start + size] for start in range(0, len(passages), size)]
        prompts = [self.build_prompt(text, [(item.window.tokens, item.marked) for item in batch]) for batch in batches]
        limits = [ANSWER_TOKENS_PER_PASSAGE * len(batch) + 16 for batch in batches]
        outcomes: list[GenerateResult | BaseException]
        if self.backend.capabilities.batching:
            outcomes = list(await self.backend.generate_many(prompts, temperature=0.0, max_tokens=max(limits),
                                                             top_logprobs=self._top_logprobs))
        else:
            outcomes = list(await asyncio.gather(
                *(self.backend.generate(prompt, temperature=0.0, max_tokens=limit, top_logprobs=self._top_logprobs)
                  for prompt, limit in zip(prompts, limits)), return_exceptions=True))
        verdicts: list[ClassifiedPassage] = []
        prompt_tokens = completion_tokens = 0
        for batch, outcome in zip(batches, outcomes):
            if isinstance(outcome, UserError) and not (isinstance(outcome, LLMError) and not outcome.stops_run):
                raise outcome
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, Exception):
                    raise outcome
                logger.warning("%s request for %s failed: %s", self.kind.value, record.neuron, outcome)
                error = f"backend error: {type(outcome).__name__}: {outcome}"
                verdicts += [_unanswered(item, error) for item in batch]
                continue
            prompt_tokens += outcome.usage.prompt_tokens
            completion_tokens += outcome.usage.completion_tokens
            verdicts += _read_verdicts(outcome, batch)
        answered = [item for item in verdicts if item.prediction is not None]
        if not answered:
            return Failure(record.neuron, self.kind.value, f"no {self.kind.value} verdict could be read: "
                                                           f"{verdicts[0].error}")
        metrics = classification_metrics([item.label for item in answered],
                                          [int(item.prediction or 0) for item in answered],
                                          [item.probability for item in answered], len(verdicts))
        return ClassifierScore(
            neuron=record.neuron, explanation_text=text, scorer=self.kind, backend=self.backend.name,
            model=self.backend.model, prompt_hash=self.prompt_hash, split_seed=split.seed, metrics=metrics,
            passages=tuple(verdicts), parameters={**split.as_dict(), **self.parameters, "polarity": polarity.value},
            created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens, requests=len(batches))


def _unanswered(item: _Passage, error: str) -> ClassifiedPassage:
    return ClassifiedPassage(item.window.window_id, item.label, item.marked, None, None, error)


_RUN_ON = re.compile(r"^\s*(\d+)\s*(?:[\t:|,)\].]|\s)", re.MULTILINE)


def _before_run_on(text: str, count: int) -> str:
    """The answer up to the first line numbered past the last passage, once every passage has a line: small
    models often keep counting after answering (until the token limit), and what they invent after the last
    passage says nothing about the passages asked about."""
    seen: set[int] = set()
    for match in _RUN_ON.finditer(text):
        index = int(match.group(1))
        if index > count and seen >= set(range(1, count + 1)):
            return text[:match.start()]
        seen.add(index)
    return text


def _read_verdicts(result: GenerateResult, batch: Sequence[_Passage]) -> list[ClassifiedPassage]:
    """The 0/1 verdicts of one answer aligned to its passages (all unanswered when the answer does not align)."""
    if not result.generations:
        return [_unanswered(item, "backend returned no answer") for item in batch]
    generation = result.generations[0]
    parsed = parse_answer(_before_run_on(generation.text, len(batch)), len(batch))
    if parsed.values is None or any(value not in (0, 1) for value in parsed.values):
        error = parsed.error or "a verdict other than 0 or 1"
        if generation.finish_reason == "length":
            error += " (answer cut off at the token limit)"
        return [_unanswered(item, error) for item in batch]
    aligned = bool(generation.logprobs) and "".join(entry.token for entry in generation.logprobs or ()) \
        == generation.text
    verdicts = []
    for item, value, offset in zip(batch, parsed.values, parsed.offsets):
        probability = None
        if aligned:
            expected = logprob_expected_value(generation.logprobs or (), generation.text, offset)
            probability = None if expected is None else min(max(expected, 0.0), 1.0)
        verdicts.append(ClassifiedPassage(item.window.window_id, item.label, item.marked, int(value), probability))
    return verdicts
