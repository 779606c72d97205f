"""Errors of LLM calls: one line each, safe to show (keys and key fragments are redacted)."""

from __future__ import annotations

import re

from neuron_explainer.core.errors import UserError
from neuron_explainer.core.failures import Failure, FailureKind
from neuron_explainer.core.neurons import NeuronId

# OpenAI echoes a masked key fragment in 401 messages ("Incorrect API key provided: sk-abc***xyz").
_KEY_PATTERN = re.compile(r"\b(sk|pk|rk|key)-[A-Za-z0-9_\-*.]{3,}")
_BEARER_PATTERN = re.compile(r"(?i)bearer\s+\S+")


def redact(text: str, *secrets: str | None) -> str:
    """`text` on one line with the given secrets and anything shaped like an API key masked."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = _BEARER_PATTERN.sub("Bearer ***", text)
    text = _KEY_PATTERN.sub(lambda match: f"{match.group(1)}-***", text)
    return " ".join(text.split())


class LLMError(UserError):
    """An LLM call failed; `str()` is one line naming the backend and the cause, never a key."""

    def __init__(self, message: str, *, status_code: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        """HTTP status of the failing answer, when there was one."""
        self.code = code
        """Provider error code (e.g. `insufficient_quota`), when given."""

    @property
    def stops_run(self) -> bool:
        """True when every later call will fail the same way, so a run should stop; False when only this unit
        of work is lost (retries used up, one request the server refused)."""
        return False


class LLMFatalError(LLMError):
    """Retrying cannot help: bad request, bad or missing key, no access, unknown model, no credit left."""

    @property
    def stops_run(self) -> bool:
        """True when every later call will fail the same way (key, access, model, quota), so a run should stop."""
        return self.status_code in (401, 403, 404) or self.code == "insufficient_quota"


class LLMTransientError(LLMError):
    """Rate limits, server errors, timeouts or broken connections that outlasted every retry."""


def is_transient(error: BaseException) -> bool:
    """Whether `error` says nothing about the request itself (connection, timeout, rate limit or server error
    after every retry, cancellation), so the same request may well succeed later."""
    import asyncio

    return isinstance(error, (LLMTransientError, TimeoutError, ConnectionError, asyncio.CancelledError))


def backend_failure(neuron: NeuronId, stage: str, what: str, error: BaseException) -> Failure:
    """The failure of a unit whose backend call raised `error`: transient when the error says nothing about the
    request (see `is_transient`), otherwise permanent."""
    kind = FailureKind.TRANSIENT if is_transient(error) else FailureKind.PERMANENT
    return Failure(neuron, stage, f"{what}: {type(error).__name__}: {error}", kind=kind)
