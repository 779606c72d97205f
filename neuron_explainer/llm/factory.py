"""Backend specs (`openai:MODEL`, `openai:MODEL@URL`, `local:MODEL`, each with optional `?key=value` options)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from enum import Enum
from urllib.parse import parse_qsl

from neuron_explainer.core.errors import UserError
from neuron_explainer.llm.base import LLMBackend
from neuron_explainer.llm.cache import ResponseCache
from neuron_explainer.llm.ledger import UsageLedger
from neuron_explainer.llm.limits import RateLimits
from neuron_explainer.llm.openai_backend import OpenAIBackend, OpenAISettings, SlotMode, missing_key_error
from neuron_explainer.llm.retry import RetryPolicy

SPEC_HELP = ("use openai:MODEL, openai:MODEL@http://HOST:PORT/v1, local:HF_ID_OR_DIR, local:FILE.gguf or "
             "local:default, optionally followed by ?option=value&...")
OPENAI_OPTIONS = ("slots", "prompt_logprobs", "echo", "logprobs", "completion", "context", "key_env", "concurrency",
                  "rpm", "tpm", "timeout", "attempts", "backoff")
LOCAL_OPTIONS = ("device", "dtype", "batch")
_URL_SPLIT = re.compile(r"^(?P<model>[^@]+)@(?P<url>https?://.+)$")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class BackendKind(str, Enum):
    """Which implementation serves a spec."""

    OPENAI = "openai"
    LOCAL = "local"


@dataclass(frozen=True)
class BackendSpec:
    """A parsed backend string."""

    kind: BackendKind
    """openai or local."""
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
    if not colon or kind_text not in {kind.value for kind in BackendKind}:
        raise UserError(f"unknown LLM backend {spec!r}: {SPEC_HELP}")
    kind = BackendKind(kind_text)
    rest, _, query = rest.partition("?")
    try:
        options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    except ValueError:
        raise UserError(f"malformed options {query!r} in LLM backend {spec!r}: {SPEC_HELP}") from None
    allowed = OPENAI_OPTIONS if kind is BackendKind.OPENAI else LOCAL_OPTIONS
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise UserError(f"unknown option(s) {', '.join(unknown)} for {kind.value} backends; "
                        f"known: {', '.join(allowed)}")
    url = None
    if kind is BackendKind.OPENAI:
        match = _URL_SPLIT.match(rest)
        if match:
            rest, url = match["model"], match["url"]
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
    if parsed.kind is not BackendKind.OPENAI:
        return
    settings = OpenAISettings(model=parsed.model, base_url=parsed.url or os.environ.get("OPENAI_BASE_URL") or None,
                              key_env=parsed.options.get("key_env", "OPENAI_API_KEY"))
    if settings.is_official and not os.environ.get(settings.key_env, "").strip():
        raise missing_key_error(settings.key_env)


def make_backend(spec: str, *, concurrency: int | None = None, rpm: float | None = None, tpm: float | None = None,
                 timeout: float | None = None, retry: RetryPolicy | None = None, cache: ResponseCache | None = None,
                 ledger: UsageLedger | None = None, device: str = "auto", dtype: str = "auto",
                 batch_size: int | None = None) -> LLMBackend:
    """Build the backend a spec names; options written in the spec win over these keyword arguments.

    Remote backends (`openai:`) use concurrency (default 8), rpm / tpm (default unlimited), timeout (seconds per
    attempt, default 120) and retry. In-process backends (`local:`) load their model now, on `device` / `dtype`
    (auto: float32 on CPU, bfloat16 on a GPU) and run `batch_size` prompts per forward pass (default 8).
    Both use `cache` (deterministic answers) and `ledger` (usage) when given.
    """
    parsed = parse_backend_spec(spec)
    options = parsed.options
    if parsed.kind is BackendKind.LOCAL:
        from neuron_explainer.llm.local_backend import LocalBackend

        return LocalBackend(parsed.model, device=options.get("device", device), dtype=options.get("dtype", dtype),
                            batch_size=_positive_int(options, "batch", batch_size or 8), cache=cache, ledger=ledger)

    url = parsed.url or os.environ.get("OPENAI_BASE_URL") or None
    limits = RateLimits(concurrency=_positive_int(options, "concurrency", concurrency or 8),
                        requests_per_minute=_positive_float(options, "rpm", rpm),
                        tokens_per_minute=_positive_float(options, "tpm", tpm))
    settings = OpenAISettings(
        model=parsed.model, base_url=url, slot_mode=_slot_mode(options),
        slot_top_logprobs=_positive_int(options, "logprobs", 20), completion=_flag(options, "completion"),
        context_window=_positive_int(options, "context", None), key_env=options.get("key_env", "OPENAI_API_KEY"),
        limits=limits, retry=_retry_policy(options, retry or RetryPolicy()),
        timeout_s=_positive_float(options, "timeout", timeout) or 120.0)
    return OpenAIBackend(settings, cache=cache, ledger=ledger)


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
