"""Several OpenAI-compatible endpoints serving one model (`openai:MODEL@URL1,URL2,...`), used as one backend.

Each endpoint is a full backend of its own (its own connection pool, concurrency limit, retries); a request goes to
the healthy endpoint with the fewest requests in flight. An endpoint whose request failed after its retries
(refused connection, timeouts, 5xx) is set aside for a cool-down and the request moves to another endpoint, so one
endpoint going down slows the night instead of failing it. Errors that every endpoint would give (bad request, bad
key) are raised as they are.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from neuron_explainer.llm.base import GenerateResult, LLMBackend, Prompt, SlotPrompt
from neuron_explainer.llm.errors import LLMTransientError

logger = logging.getLogger(__name__)

COOLDOWN_S = 30.0
"""How long a failing endpoint is left out before it gets requests again."""


class _Endpoint:
    def __init__(self, backend: LLMBackend) -> None:
        self.backend = backend
        self.in_flight = 0
        self.down_until = 0.0
        self.failures = 0


class EndpointPool(LLMBackend):
    """One model behind several endpoints: spreads requests by load, routes around endpoints that fail."""

    def __init__(self, backends: Sequence[LLMBackend], *, name: str, cooldown_s: float = COOLDOWN_S) -> None:
        if not backends:
            raise ValueError("an endpoint pool needs at least one backend")
        self.name = name
        self.model = backends[0].model
        self.capabilities = backends[0].capabilities
        self.cooldown_s = cooldown_s
        """Seconds a failing endpoint is left out."""
        self._endpoints = [_Endpoint(backend) for backend in backends]

    def health(self) -> list[tuple[str, bool, int]]:
        """(endpoint name, healthy now, failures so far) per endpoint."""
        now = time.monotonic()
        return [(item.backend.name, item.down_until <= now, item.failures) for item in self._endpoints]

    def _pick(self, tried: set[int]) -> int | None:
        now = time.monotonic()
        untried = [index for index in range(len(self._endpoints)) if index not in tried]
        if not untried:
            return None
        healthy = [index for index in untried if self._endpoints[index].down_until <= now]
        if healthy:
            return min(healthy, key=lambda index: self._endpoints[index].in_flight)
        # Every endpoint left is cooling down: try the one that comes back first rather than fail at once.
        return min(untried, key=lambda index: self._endpoints[index].down_until)

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        tried: set[int] = set()
        last_error: LLMTransientError | None = None
        while (index := self._pick(tried)) is not None:
            endpoint = self._endpoints[index]
            endpoint.in_flight += 1
            try:
                result = await getattr(endpoint.backend, method)(*args, **kwargs)
            except LLMTransientError as exc:
                tried.add(index)
                last_error = exc
                endpoint.failures += 1
                if endpoint.down_until <= time.monotonic():
                    logger.warning("%s failed (%s); leaving it out for %.0f s", endpoint.backend.name, exc,
                                   self.cooldown_s)
                endpoint.down_until = time.monotonic() + self.cooldown_s
                continue
            finally:
                endpoint.in_flight -= 1
            endpoint.down_until = 0.0
            return result
        assert last_error is not None
        raise last_error

    async def generate(self, prompt: Prompt, *, n: int = 1, temperature: float = 0.0, max_tokens: int = 256,
                       stop: Sequence[str] | None = None, seed: int | None = None,
                       top_logprobs: int = 0) -> GenerateResult:
        """`generate` on the least-loaded healthy endpoint, moving to another when it fails."""
        return await self._call("generate", prompt, n=n, temperature=temperature, max_tokens=max_tokens, stop=stop,
                                seed=seed, top_logprobs=top_logprobs)

    async def slot_distributions(self, prompts: Sequence[SlotPrompt],
                                 candidates: Sequence[str]) -> list[list[dict[str, float]]]:
        """`slot_distributions` on the least-loaded healthy endpoint, moving to another when it fails."""
        return await self._call("slot_distributions", prompts, candidates)

    async def aclose(self) -> None:
        """Close every endpoint's connections."""
        for endpoint in self._endpoints:
            await endpoint.backend.aclose()
