"""LLM backends by name (a registry) and their specs: `openai:MODEL`, `openai:MODEL@URL`,
`openai:MODEL@URL1,URL2,...` (an endpoint pool), `local:MODEL`, each with optional `?key=value` options."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import ClassVar
from urllib.parse import parse_qsl

from neuron_explainer.core.errors import UserError
from neuron_explainer.core.registry import Name, Registry
from neuron_explainer.llm.base import LLMBackend
from neuron_explainer.llm.batch_api import BatchJournal
from neuron_explainer.llm.cache import ResponseCache
from neuron_explainer.llm.ledger import UsageLedger
from neuron_explainer.llm.limits import RateLimits
from neuron_explainer.llm.openai_backend import (OpenAIBackend, OpenAISettings, SlotMode, display_url,
                                                 missing_key_error)
from neuron_explainer.llm.retry import RetryPolicy

SPEC_HELP = ("use openai:MODEL, openai:MODEL@http://HOST:PORT/v1 (or several: @URL1,URL2), local:HF_ID_OR_DIR, local:FILE.gguf or "
             "local:default, optionally followed by ?option=value&...")
OPENAI_OPTIONS = ("slots", "prompt_logprobs", "echo", "logprobs", "completion", "context", "key_env", "concurrency",
                  "rpm", "tpm", "timeout", "attempts", "backoff", "batch_poll", "batch_flush")
LOCAL_OPTIONS = ("device", "dtype", "batch")
_URL_SPLIT = re.compile(r"^(?P<model>[^@]+)@(?P<url>https?://.+)$")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class BackendKind(Name):
    """Which implementation serves a spec: the name of a registered backend."""

    __slots__ = ()
    OPENAI: ClassVar[BackendKind]
    LOCAL: ClassVar[BackendKind]


BackendKind.OPENAI = BackendKind("openai")
BackendKind.LOCAL = BackendKind("local")


@dataclass(frozen=True)
class BackendSpec:
    """A parsed backend string."""

    kind: BackendKind
    """The registered backend serving it (openai, local)."""
    model: str
    """Model name (openai) or model spec for subject.loading (local)."""
    url: str | None = None
    """Server URL from `@URL` (openai only)."""
    options: dict[str, str] = field(default_factory=dict)
    """`?key=value` options."""


def parse_backend_spec(spec: str) -> BackendSpec:
    """Split a backend string into kind, model, URL and options; raises UserError when malformed."""
    text = spec.strip()
    kind_text, colon, rest = text.partition(":")
    if not colon or kind_text not in BACKENDS:
        raise UserError(f"unknown LLM backend {spec!r}: {SPEC_HELP}")
    kind = BackendKind(kind_text)
    entry = BACKENDS.get(kind)
    rest, _, query = rest.partition("?")
    try:
        options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    except ValueError:
        raise UserError(f"malformed options {query!r} in LLM backend {spec!r}: {SPEC_HELP}") from None
    allowed = entry.options
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise UserError(f"unknown option(s) {', '.join(unknown)} for {kind.value} backends; "
                        f"known: {', '.join(allowed)}")
    url = None
    if entry.takes_url:
        match = _URL_SPLIT.match(rest)
        if match:
            rest, url = match["model"], match["url"]
            if any(not re.match(r"https?://.", part.strip()) for part in url.split(",")):
                raise UserError(f"bad server URL list in LLM backend {spec!r}: give URL1,URL2,... each starting "
                                "with http:// or https://")
        elif "@" in rest:
            raise UserError(f"bad server URL in LLM backend {spec!r}: the part after @ must start with http:// or "
                            "https://")
    if not rest:
        raise UserError(f"LLM backend {spec!r} names no model: {SPEC_HELP}")
    return BackendSpec(kind=kind, model=rest, url=url, options=options)


def check_backend(spec: str) -> None:
    """Fail now where the first call would: a malformed spec, or an api.openai.com backend without its API key.
    Loads no model and sends nothing, so a run can check its flags before it does any work."""
    parsed = parse_backend_spec(spec)
    BACKENDS.get(parsed.kind).check(parsed)


def _check_openai(parsed: BackendSpec) -> None:
    settings = OpenAISettings(model=parsed.model, base_url=parsed.url or os.environ.get("OPENAI_BASE_URL") or None,
                              key_env=parsed.options.get("key_env", "OPENAI_API_KEY"))
    if settings.is_official and not os.environ.get(settings.key_env, "").strip():
        raise missing_key_error(settings.key_env)


def make_backend(spec: str, *, concurrency: int | None = None, rpm: float | None = None, tpm: float | None = None,
                 timeout: float | None = None, retry: RetryPolicy | None = None, cache: ResponseCache | None = None,
                 ledger: UsageLedger | None = None, device: str = "auto", dtype: str = "auto",
                 batch_size: int | None = None, batch_journal: BatchJournal | None = None) -> LLMBackend:
    """Build the backend a spec names; options written in the spec win over these keyword arguments.

    Remote backends (`openai:`) use concurrency (default 8), rpm / tpm (default unlimited), timeout (seconds per
    attempt, default 120) and retry. In-process backends (`local:`) load their model now, on `device` / `dtype`
    (auto: float32 on CPU, bfloat16 on a GPU) and run `batch_size` prompts per forward pass (default 8).
    Both use `cache` (deterministic answers) and `ledger` (usage) when given. With `batch_journal`, remote
    backends send their requests through the OpenAI Batch API (`batch_poll` / `batch_flush` options: seconds between
    status checks, default 30, and of quiet before a batch is submitted, default 2).
    """
    parsed = parse_backend_spec(spec)
    return BACKENDS.get(parsed.kind).build(parsed, BuildSettings(
        concurrency=concurrency, rpm=rpm, tpm=tpm, timeout=timeout, retry=retry, cache=cache, ledger=ledger,
        device=device, dtype=dtype, batch_size=batch_size, batch_journal=batch_journal))


def _build_local(parsed: BackendSpec, settings: BuildSettings) -> LLMBackend:
    from neuron_explainer.llm.local_backend import LocalBackend

    options = parsed.options
    return LocalBackend(parsed.model, device=options.get("device", settings.device),
                        dtype=options.get("dtype", settings.dtype),
                        batch_size=_positive_int(options, "batch", settings.batch_size or 8), cache=settings.cache,
                        ledger=settings.ledger)


def _build_openai(parsed: BackendSpec, settings: BuildSettings) -> LLMBackend:
    options = parsed.options
    url = parsed.url or os.environ.get("OPENAI_BASE_URL") or None
    limits = RateLimits(concurrency=_positive_int(options, "concurrency", settings.concurrency or 8),
                        requests_per_minute=_positive_float(options, "rpm", settings.rpm),
                        tokens_per_minute=_positive_float(options, "tpm", settings.tpm))
    openai_settings = OpenAISettings(
        model=parsed.model, base_url=url, slot_mode=_slot_mode(options),
        slot_top_logprobs=_positive_int(options, "logprobs", 20), completion=_flag(options, "completion"),
        context_window=_positive_int(options, "context", None), key_env=options.get("key_env", "OPENAI_API_KEY"),
        limits=limits, retry=_retry_policy(options, settings.retry or RetryPolicy()),
        timeout_s=_positive_float(options, "timeout", settings.timeout) or 120.0)
    urls = [part.strip() for part in url.split(",")] if url else []
    if len(urls) > 1:
        from neuron_explainer.llm.endpoints import EndpointPool

        # One backend per endpoint, each with the spec's concurrency, limits and retries.
        members = [OpenAIBackend(replace(openai_settings, base_url=endpoint), cache=settings.cache,
                                 ledger=settings.ledger) for endpoint in urls]
        return EndpointPool(members, name=f"openai:{parsed.model}@" + ",".join(display_url(item) for item in urls))
    backend = OpenAIBackend(openai_settings, cache=settings.cache, ledger=settings.ledger)
    if settings.batch_journal is None:
        return backend
    from neuron_explainer.llm.batch_api import BatchSettings, OpenAIBatchBackend

    return OpenAIBatchBackend(backend, settings.batch_journal, settings=BatchSettings(
        poll_interval_s=_positive_float(options, "batch_poll", 30.0) or 30.0,
        flush_after_s=_positive_float(options, "batch_flush", 2.0) or 2.0))


def _no_check(parsed: BackendSpec) -> None:
    """In-process backends have nothing to check before their model loads."""


@dataclass(frozen=True)
class BuildSettings:
    """The keyword arguments of `make_backend`, handed to a backend's builder (options in the spec win)."""

    concurrency: int | None = None
    """Requests in flight (remote backends)."""
    rpm: float | None = None
    """Requests per minute (remote backends)."""
    tpm: float | None = None
    """Tokens per minute (remote backends)."""
    timeout: float | None = None
    """Seconds per attempt (remote backends)."""
    retry: RetryPolicy | None = None
    """Retry policy (remote backends)."""
    cache: ResponseCache | None = None
    """Cache of deterministic answers."""
    ledger: UsageLedger | None = None
    """Usage ledger."""
    device: str = "auto"
    """Device (in-process backends)."""
    dtype: str = "auto"
    """Dtype (in-process backends)."""
    batch_size: int | None = None
    """Prompts per forward pass (in-process backends)."""
    batch_journal: BatchJournal | None = None
    """Send requests through the OpenAI Batch API, journaled here (remote backends)."""


@dataclass(frozen=True)
class BackendEntry:
    """One registered LLM backend: the `?options` its spec takes, how it is built and checked."""

    options: tuple[str, ...]
    """Option names allowed after `?`."""
    build: Callable[[BackendSpec, BuildSettings], LLMBackend]
    """Builds the backend (an in-process one loads its model now)."""
    check: Callable[[BackendSpec], None] = _no_check
    """Fails where the first call would (e.g. a missing API key), loading and sending nothing."""
    takes_url: bool = False
    """Whether the spec may name a server with `@URL`."""


BACKENDS: Registry[BackendEntry] = Registry("LLM backend")
"""LLM backends by the name before the colon of a spec; a new one is a module with an `LLMBackend` plus one line."""

BACKENDS.register(BackendKind.OPENAI, BackendEntry(OPENAI_OPTIONS, _build_openai, _check_openai, takes_url=True))
BACKENDS.register(BackendKind.LOCAL, BackendEntry(LOCAL_OPTIONS, _build_local))


def _retry_policy(options: dict[str, str], policy: RetryPolicy) -> RetryPolicy:
    """`attempts=N` (tries in total) and `backoff=SECONDS` (first wait, doubling, plus as much jitter) over `policy`."""
    attempts = _positive_int(options, "attempts", None)
    if attempts is not None:
        policy = replace(policy, max_attempts=attempts)
    backoff = _positive_float(options, "backoff", None)
    if backoff is not None:
        policy = replace(policy, initial_wait_s=backoff, jitter_s=backoff)
    return policy


def _slot_mode(options: dict[str, str]) -> SlotMode:
    if "slots" in options:
        try:
            return SlotMode(options["slots"])
        except ValueError:
            choices = ", ".join(mode.value for mode in SlotMode)
            raise UserError(f"option slots={options['slots']!r}: use one of {choices}") from None
    if _flag(options, "prompt_logprobs"):
        return SlotMode.PROMPT_LOGPROBS
    if _flag(options, "echo"):
        return SlotMode.ECHO
    return SlotMode.NONE


def _flag(options: dict[str, str], name: str) -> bool | None:
    if name not in options:
        return None
    value = options[name].strip().lower()
    if value in _TRUE or value == "":
        return True
    if value in _FALSE:
        return False
    raise UserError(f"option {name}={options[name]!r}: use 1 or 0")


def _positive_int(options: dict[str, str], name: str, default: int | None) -> int | None:
    if name not in options:
        return default
    try:
        value = int(options[name])
    except ValueError:
        value = 0
    if value < 1:
        raise UserError(f"option {name}={options[name]!r}: use a positive whole number")
    return value


def _positive_float(options: dict[str, str], name: str, default: float | None) -> float | None:
    if name not in options:
        return default
    try:
        value = float(options[name])
    except ValueError:
        value = 0.0
    if not value > 0:
        raise UserError(f"option {name}={options[name]!r}: use a positive number")
    return value
