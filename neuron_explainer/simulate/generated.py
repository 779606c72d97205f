"""Generated-output simulator for chat-only APIs: the model writes `index<TAB>value` for every token.

The echoed index makes alignment checkable: every index 1..N must appear exactly once with a value in 0-10, or the
window is reported as an alignment failure (never filled with zeros). When the backend returns top logprobs of
generated tokens, each value becomes the expected value of the distribution at the position it was written.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from neuron_explainer.core.errors import UserError
from neuron_explainer.core.prompts import PromptFiles, load_prompt_files
from neuron_explainer.explain.formatting import MAX_SCALED, printable_token
from neuron_explainer.explain.token_pairs import render_as_text
from neuron_explainer.llm.base import GenerateResult, LLMBackend, Message, Prompt, TokenLogprob
from neuron_explainer.llm.errors import LLMError, is_transient
from neuron_explainer.simulate.base import SimulationResult, Simulator, WindowSimulation
from neuron_explainer.simulate.examples import EXAMPLES_FILE, load_simulator_examples
from neuron_explainer.simulate.types import SimulatorKind

logger = logging.getLogger(__name__)

PROMPT_FILES = ("simulator/generated/system.md", "simulator/generated/request.md", EXAMPLES_FILE)
ANSWER_TOKENS_PER_LINE = 6
"""Generous token allowance per answer line (`123<TAB>10<NL>` is 3-5 tokens in common tokenizers)."""
MAX_TOP_LOGPROBS = 20
"""The OpenAI API's ceiling on alternatives per generated token."""

# index, a separator, optionally echoed token text ending in a tab or bar, then the value at the end of the line.
_ANSWER_LINE = re.compile(r"^\s*(\d+)\s*(?:[\t:|,)\].]|\s)\s*(?:.*[\t|]\s*)?(-?\d+(?:\.\d+)?)\s*$")


@dataclass(frozen=True)
class ParsedAnswer:
    """Values read from a generated answer, with where each was written, or why alignment failed."""

    values: tuple[float, ...] | None
    """One value per token, or None when the answer does not align."""
    offsets: tuple[int, ...] = ()
    """Character offset of each value in the answer text."""
    error: str | None = None
    """What was wrong (missing / duplicate / unexpected indices, values outside 0-10)."""


def format_numbered_tokens(tokens: Sequence[str]) -> str:
    """`index<TAB>token` lines, 1-based."""
    return "\n".join(f"{index}\t{printable_token(token)}" for index, token in enumerate(tokens, start=1))


def parse_answer(text: str, token_count: int) -> ParsedAnswer:
    """Read `index<TAB>value` lines; lines that are not answer lines (chatter, code fences) are ignored."""
    found: dict[int, tuple[float, int]] = {}
    duplicates: set[int] = set()
    unexpected: set[int] = set()
    out_of_range: list[int] = []
    offset = 0
    for line in text.splitlines(keepends=True):
        match = _ANSWER_LINE.match(line.rstrip("\r\n"))
        if match:
            index, value = int(match.group(1)), float(match.group(2))
            if not 1 <= index <= token_count:
                unexpected.add(index)
            elif index in found:
                duplicates.add(index)
            else:
                if not 0 <= value <= MAX_SCALED:
                    out_of_range.append(index)
                found[index] = (value, offset + match.start(2))
        offset += len(line)
    missing = [index for index in range(1, token_count + 1) if index not in found]
    problems = []
    if missing:
        problems.append(f"missing index(es) {_ranges(missing)}")
    if duplicates:
        problems.append(f"duplicate index(es) {_ranges(sorted(duplicates))}")
    if unexpected:
        problems.append(f"index(es) beyond {token_count}: {_ranges(sorted(unexpected))}")
    if out_of_range:
        problems.append(f"value outside 0-10 at index(es) {_ranges(out_of_range)}")
    if problems:
        return ParsedAnswer(None, error="misaligned answer: " + "; ".join(problems))
    ordered = [found[index] for index in range(1, token_count + 1)]
    return ParsedAnswer(tuple(value for value, _ in ordered), tuple(position for _, position in ordered))


def _ranges(indices: Sequence[int]) -> str:
    """Compact `1-3,7` rendering for error messages."""
    parts: list[str] = []
    start = previous = None
    for index in indices:
        if start is None:
            start = previous = index
        elif index == previous + 1:
            previous = index
        else:
            parts.append(f"{start}" if start == previous else f"{start}-{previous}")
            start = previous = index
    if start is not None:
        parts.append(f"{start}" if start == previous else f"{start}-{previous}")
    return ",".join(parts)


def _candidate_value(text: str) -> int | None:
    stripped = text.strip()
    if stripped.isdigit() and int(stripped) <= MAX_SCALED and str(int(stripped)) == stripped:
        return int(stripped)
    return None


def logprob_expected_value(logprobs: Sequence[TokenLogprob], answer: str, offset: int) -> float | None:
    """Expected value at the token that starts the value written at `offset`, from its top alternatives.

    Alternatives that read "0".."10" (after the part of the token before the value) count, renormalised. A "1"
    may be the start of "10" in tokenizers that split it; the next position's probability of "0" splits its mass
    between 1 and 10 when the model actually wrote a value starting with "1" (only then is that position known).
    None when the logprobs do not line up with the text or carry no candidate.
    """
    position = 0
    for token_index, entry in enumerate(logprobs):
        end = position + len(entry.token)
        if position <= offset < end:
            break
        position = end
    else:
        return None
    head = entry.token[:offset - position]
    written = answer[offset:].split(None, 1)[0] if answer[offset:].strip() else ""
    next_entry = logprobs[token_index + 1] if token_index + 1 < len(logprobs) else None
    probability_next_zero = None
    if written.startswith("1") and _candidate_value(entry.token[len(head):]) == 1 and next_entry is not None:
        probability_next_zero = sum(math.exp(logprob) for alternative, logprob in next_entry.top
                                    if alternative.startswith("0"))
    mass: dict[int, float] = {}
    alternatives = entry.top or ((entry.token, entry.logprob),)
    for alternative, logprob in alternatives:
        if not alternative.startswith(head):
            continue
        value = _candidate_value(alternative[len(head):])
        if value is None:
            continue
        probability = math.exp(logprob)
        if value == 1 and probability_next_zero is not None:
            share_ten = min(max(probability_next_zero, 0.0), 1.0)
            mass[10] = mass.get(10, 0.0) + probability * share_ten
            mass[1] = mass.get(1, 0.0) + probability * (1.0 - share_ten)
        else:
            mass[value] = mass.get(value, 0.0) + probability
    total = sum(mass.values())
    if not total > 0:
        return None
    return sum(value * probability for value, probability in mass.items()) / total


def build_generated_messages(files: PromptFiles, explanation: str, tokens: Sequence[str]) -> tuple[Message, ...]:
    """The generated simulator's chat for one window: instructions and worked examples (the same for every
    window, a stable prefix), then the window."""
    def request(text: str, window: Sequence[str]) -> str:
        return files.render("simulator/generated/request.md", explanation=" ".join(text.split()),
                            tokens=format_numbered_tokens(window)).rstrip("\n")

    messages = [Message("system", files.text("simulator/generated/system.md").strip())]
    for example in load_simulator_examples(files):
        messages.append(Message("user", request(example.explanation, example.tokens)))
        messages.append(Message("assistant", "\n".join(f"{index}\t{value}" for index, value
                                                       in enumerate(example.values, start=1))))
    messages.append(Message("user", request(explanation, tokens)))
    return tuple(messages)


class GeneratedSimulator(Simulator):
    """Asks a chat (or completion) model to write every token's activation; one request per window."""

    kind = SimulatorKind.GENERATED
    needs_fit = False

    def __init__(self, backend: LLMBackend, *, use_logprobs: bool = True) -> None:
        if not (backend.capabilities.chat or backend.capabilities.completion):
            raise UserError(f"{backend.name} accepts neither chat nor completion prompts")
        self.backend = backend
        self.backend_name = backend.name
        self.model = backend.model
        self._files = load_prompt_files(PROMPT_FILES)
        self.prompt_hash = self._files.hash
        self._top_logprobs = (min(MAX_TOP_LOGPROBS, backend.capabilities.max_top_logprobs)
                              if use_logprobs and backend.capabilities.generated_logprobs else 0)

    @property
    def parameters(self) -> dict[str, Any]:
        return {"top_logprobs": self._top_logprobs, "answer_format": "index<TAB>value",
                "prompt_style": "chat" if self.backend.capabilities.chat else "completion"}

    def build_messages(self, explanation: str, tokens: Sequence[str]) -> tuple[Message, ...]:
        """System instructions, the worked examples as turns, then the window to simulate."""
        return build_generated_messages(self._files, explanation, tokens)

    def _prompt(self, explanation: str, tokens: Sequence[str]) -> Prompt:
        messages = self.build_messages(explanation, tokens)
        return messages if self.backend.capabilities.chat else render_as_text(messages)

    def _interpret(self, result: GenerateResult, token_count: int) -> WindowSimulation:
        """Values of one answer aligned to the window's tokens, or the alignment error."""
        if not result.generations:
            return WindowSimulation(None, "backend returned no answer")
        generation = result.generations[0]
        parsed = parse_answer(generation.text, token_count)
        if parsed.values is None:
            error = parsed.error or "unparseable answer"
            if generation.finish_reason == "length":
                error += " (answer cut off at the token limit)"
            return WindowSimulation(None, error)
        values = list(parsed.values)
        logprobs = generation.logprobs
        if logprobs and "".join(entry.token for entry in logprobs) == generation.text:
            for position, offset in enumerate(parsed.offsets):
                expected = logprob_expected_value(logprobs, generation.text, offset)
                if expected is not None:
                    values[position] = expected
        return WindowSimulation(tuple(values))

    async def simulate(self, explanation: str, windows: Sequence[Sequence[str]]) -> SimulationResult:
        indices = [index for index, tokens in enumerate(windows) if tokens]
        prompts = [self._prompt(explanation, windows[index]) for index in indices]
        answer_tokens = [ANSWER_TOKENS_PER_LINE * len(windows[index]) + 16 for index in indices]
        outcomes: list[GenerateResult | BaseException]
        if self.backend.capabilities.batching and prompts:
            # In-process backends run the windows as batched forward passes; a failure there is not per window.
            batch = await self.backend.generate_many(prompts, temperature=0.0, max_tokens=max(answer_tokens),
                                                     top_logprobs=self._top_logprobs)
            outcomes = list(batch)
        else:
            outcomes = list(await asyncio.gather(
                *(self.backend.generate(prompt, temperature=0.0, max_tokens=limit, top_logprobs=self._top_logprobs)
                  for prompt, limit in zip(prompts, answer_tokens)), return_exceptions=True))
        results = [WindowSimulation(values=()) for _ in windows]
        prompt_tokens = completion_tokens = 0
        for index, outcome in zip(indices, outcomes):
            # Retries used up or one refused request cost only this window; a bad key or no credit stops the run.
            if isinstance(outcome, UserError) and not (isinstance(outcome, LLMError) and not outcome.stops_run):
                raise outcome
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, Exception):
                    raise outcome
                logger.warning("simulating a window failed: %s", outcome)
                results[index] = WindowSimulation(None, f"backend error: {type(outcome).__name__}: {outcome}",
                                                  transient=is_transient(outcome))
                continue
            prompt_tokens += outcome.usage.prompt_tokens
            completion_tokens += outcome.usage.completion_tokens
            results[index] = self._interpret(outcome, len(windows[index]))
        return SimulationResult(windows=tuple(results), prompt_tokens=prompt_tokens,
                                completion_tokens=completion_tokens)
