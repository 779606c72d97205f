"""The one async interface every explainer and simulator uses to talk to an LLM."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Message:
    """One chat message."""

    role: str
    """`system`, `user` or `assistant`."""
    content: str
    """The message text."""


Prompt = str | Sequence[Message]
"""A raw completion prompt, or a chat conversation."""


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do; callers pick a method from these, never from a model name."""

    chat: bool
    """Accepts chat messages."""
    completion: bool
    """Accepts raw text prompts."""
    generated_logprobs: bool
    """Returns top logprobs of generated tokens."""
    slot_distributions: bool
    """Implements `slot_distributions` (needs prompt logprobs or in-process access to logits)."""
    max_top_logprobs: int
    """Largest number of alternatives per generated token it returns (0 if none)."""
    batching: bool
    """Benefits from many prompts in one call (in-process batched forward passes)."""
    context_window: int
    """Tokens of prompt + completion it accepts."""
    slot_multitoken_exact: bool = True
    """Slot distributions score multi-token candidates exactly; False when only single-token candidates are read
    (remote prompt logprobs: a candidate the server splits into several tokens gets probability 0)."""


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token and the top alternatives at its position."""

    token: str
    """The token that was generated."""
    logprob: float
    """Its log probability."""
    top: tuple[tuple[str, float], ...]
    """(token, logprob) alternatives at this position, best first."""


@dataclass(frozen=True)
class Usage:
    """Token counts of one call as the backend reported them."""

    prompt_tokens: int = 0
    """Prompt tokens billed."""
    completion_tokens: int = 0
    """Completion tokens billed."""
    cached_tokens: int = 0
    """Prompt tokens the provider served from its own prompt cache."""


@dataclass(frozen=True)
class Generation:
    """One generated answer."""

    text: str
    """The generated text."""
    logprobs: tuple[TokenLogprob, ...] | None = None
    """Per generated token top logprobs, when asked for and supported."""
    finish_reason: str | None = None
    """Why generation stopped (`stop`, `length`, ...)."""


@dataclass(frozen=True)
class GenerateResult:
    """All answers of one `generate` call and what it cost."""

    generations: tuple[Generation, ...]
    """`n` answers."""
    usage: Usage = field(default_factory=Usage)
    """Token counts (zero when served from the response cache)."""
    from_cache: bool = False
    """True when no backend call was made."""


@dataclass(frozen=True)
class SlotPrompt:
    """A text prompt with slots: the next-text distribution is read at the end of every piece but the last.

    The full prompt text is `prefix + "".join(pieces)`. Each slot sits between piece i and piece i+1, so
    piece i+1 usually starts with a placeholder (e.g. `unknown`) standing where the answer would be.
    `prefix` is shared verbatim by many prompts (instructions, few-shot examples); backends may cache it.
    Backends tokenize the prefix and every piece separately and join the ids, so slot positions are exact.
    """

    prefix: str
    """Shared leading text (instructions, few-shot examples)."""
    pieces: tuple[str, ...]
    """Text segments; a slot is read after each of pieces[0..-2]."""

    @property
    def slot_count(self) -> int:
        """Number of slots."""
        return max(len(self.pieces) - 1, 0)


class LLMBackend(abc.ABC):
    """An LLM reached through one async interface."""

    name: str
    """Backend spec as given (e.g. `openai:gpt-4o-mini`, `local:default`); never contains a key."""
    model: str
    """The model name results are stored under."""
    capabilities: Capabilities
    """What this backend can do."""

    @abc.abstractmethod
    async def generate(self, prompt: Prompt, *, n: int = 1, temperature: float = 0.0, max_tokens: int = 256,
                       stop: Sequence[str] | None = None, seed: int | None = None,
                       top_logprobs: int = 0) -> GenerateResult:
        """Generate `n` answers; `top_logprobs > 0` asks for per-token alternatives where supported."""

    async def generate_many(self, prompts: Sequence[Prompt], *, n: int = 1, temperature: float = 0.0,
                            max_tokens: int = 256, stop: Sequence[str] | None = None, seed: int | None = None,
                            top_logprobs: int = 0) -> list[GenerateResult]:
        """`generate` for many prompts with the same settings, results in order; in-process backends batch them.

        The first failure cancels the rest and is raised as itself.
        """
        from neuron_explainer.llm.tasks import run_all

        return await run_all(self.generate(prompt, n=n, temperature=temperature, max_tokens=max_tokens, stop=stop,
                                           seed=seed, top_logprobs=top_logprobs) for prompt in prompts)

    async def slot_distributions(self, prompts: Sequence[SlotPrompt],
                                 candidates: Sequence[str]) -> list[list[dict[str, float]]]:
        """For each prompt and each slot, the probability of each candidate string as the next text.

        Multi-token candidates are scored exactly as the product of conditional token probabilities.
        Probabilities are not renormalised; callers decide how to handle the mass on other tokens.
        """
        raise NotImplementedError(f"{self.name} has no slot distributions; use a generated-output simulator")

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections and models."""
