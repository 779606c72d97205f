"""Retrying transient LLM failures with jittered exponential backoff that honours Retry-After."""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from neuron_explainer.llm.errors import LLMTransientError

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry a transient failure."""

    max_attempts: int = 6
    """Attempts in total, the first included (1 = never retry)."""
    initial_wait_s: float = 1.0
    """Backoff before the second attempt; doubles each time."""
    max_wait_s: float = 60.0
    """Upper bound of one exponential backoff wait."""
    jitter_s: float = 1.0
    """Uniform random extra of up to this many seconds, so many clients do not retry in lock-step."""
    max_retry_after_s: float = 300.0
    """Longest server-requested wait (Retry-After) that is honoured; longer requests are capped."""

    def backoff(self, failed_attempts: int) -> float:
        """The wait after `failed_attempts` failures when the server named no Retry-After."""
        exponential = self.initial_wait_s * (2 ** (failed_attempts - 1))
        return min(self.max_wait_s, exponential + random.uniform(0.0, self.jitter_s))


class RetryableFailure(Exception):
    """One failed attempt that may succeed later (429 rate limit, 5xx, timeout, broken connection or body)."""

    def __init__(self, description: str, *, retry_after: float | None = None, status_code: int | None = None,
                 code: str | None = None) -> None:
        super().__init__(description)
        self.description = description
        """One line saying what went wrong (no key)."""
        self.retry_after = retry_after
        """Seconds the server asked us to wait, if it did."""
        self.status_code = status_code
        """HTTP status, if there was an answer."""
        self.code = code
        """Provider error code, if any."""


async def call_with_retries(attempt: Callable[[], Awaitable[T]], *, policy: RetryPolicy, what: str,
                            on_retry: Callable[[int, float, RetryableFailure], None] | None = None) -> T:
    """Run `attempt` until it succeeds, retrying RetryableFailure per `policy`; other exceptions pass through.

    Raises LLMTransientError naming `what` and the last failure once the attempts are used up.
    """
    from tenacity import AsyncRetrying, RetryError, retry_if_exception_type, stop_after_attempt

    def wait(retry_state) -> float:  # tenacity passes a RetryCallState
        failure = retry_state.outcome.exception()
        if isinstance(failure, RetryableFailure) and failure.retry_after is not None:
            return max(0.0, min(failure.retry_after, policy.max_retry_after_s))
        return policy.backoff(retry_state.attempt_number)

    def before_sleep(retry_state) -> None:
        failure = retry_state.outcome.exception()
        seconds = retry_state.next_action.sleep if retry_state.next_action else 0.0
        logger.info("%s: %s; retrying in %.2f s (attempt %d of %d)", what, failure, seconds,
                    retry_state.attempt_number + 1, policy.max_attempts)
        if on_retry is not None:
            on_retry(retry_state.attempt_number, seconds, failure)

    retrying = AsyncRetrying(stop=stop_after_attempt(max(1, policy.max_attempts)), wait=wait,
                             retry=retry_if_exception_type(RetryableFailure), before_sleep=before_sleep,
                             reraise=False)
    try:
        return await retrying(attempt)
    except RetryError as exhausted:
        failure = exhausted.last_attempt.exception()
        assert isinstance(failure, RetryableFailure)
        raise LLMTransientError(f"{what}: gave up after {policy.max_attempts} attempts: {failure.description}",
                                status_code=failure.status_code, code=failure.code) from None
