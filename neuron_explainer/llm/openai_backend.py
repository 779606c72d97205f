"""The OpenAI API and any OpenAI-compatible server (vLLM, SGLang, llama.cpp, Ollama) behind LLMBackend.

Requests go through the async `openai` SDK with its own retries off; this module retries transient failures
itself (see retry.py), limits concurrency and request / token rates per backend, caches deterministic answers
and writes one ledger entry per call. The API key is read from the environment at request time.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from neuron_explainer.core.errors import UserError
from neuron_explainer.llm.base import (
    Capabilities,
    Generation,
    GenerateResult,
    LLMBackend,
    Message,
    Prompt,
    SlotPrompt,
    TokenLogprob,
    Usage,
)
from neuron_explainer.llm.cache import ResponseCache, cache_key
from neuron_explainer.llm.errors import LLMFatalError, redact
from neuron_explainer.llm.ledger import UsageLedger
from neuron_explainer.llm.limits import RateLimits, TokenBucket, make_bucket
from neuron_explainer.llm.retry import RetryableFailure, RetryPolicy, call_with_retries
from neuron_explainer.llm.tasks import run_all

logger = logging.getLogger(__name__)

CHAT_PATH = "/chat/completions"
COMPLETIONS_PATH = "/completions"
OFFICIAL_HOST_SUFFIX = "openai.com"
OFFICIAL_URL = "https://api.openai.com/v1"
DEFAULT_KEY_ENV = "OPENAI_API_KEY"
# OpenAI-compatible servers that need no key still expect a bearer token; vLLM's docs use this one.
PLACEHOLDER_KEY = "EMPTY"
MAX_TOP_LOGPROBS = 20


class SlotMode(str, Enum):
    """How a server is asked for the probabilities of prompt tokens."""

    NONE = "none"
    """It is not; the backend has no slot distributions."""
    PROMPT_LOGPROBS = "prompt_logprobs"
    """vLLM's `prompt_logprobs` extra parameter on /completions."""
    ECHO = "echo"
    """Legacy /completions `echo` + `logprobs` (vLLM and older OpenAI completion models)."""


@dataclass(frozen=True)
class OpenAISettings:
    """Everything that configures one OpenAI-style backend."""

    model: str
    """Model name sent in requests."""
    base_url: str | None = None
    """Server URL ending in /v1; None for api.openai.com."""
    slot_mode: SlotMode = SlotMode.NONE
    """How slot distributions are read, if at all."""
    slot_top_logprobs: int = MAX_TOP_LOGPROBS
    """Alternatives requested per prompt position when reading slots."""
    completion: bool | None = None
    """Whether raw-text /completions is used; None = yes for custom servers, no for api.openai.com."""
    context_window: int | None = None
    """Prompt + completion tokens the model accepts; None = 128k for api.openai.com, 8k elsewhere."""
    key_env: str = DEFAULT_KEY_ENV
    """Environment variable holding the API key."""
    limits: RateLimits = field(default_factory=RateLimits)
    """Concurrency and rate limits."""
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    """Retry policy for transient failures."""
    timeout_s: float = 120.0
    """Seconds one HTTP attempt may take."""

    @property
    def is_official(self) -> bool:
        """True when requests go to OpenAI itself (a key is required)."""
        if self.base_url is None:
            return True
        host = urlsplit(self.base_url).hostname or ""
        return host == OFFICIAL_HOST_SUFFIX or host.endswith("." + OFFICIAL_HOST_SUFFIX)


def missing_key_error(key_env: str) -> UserError:
    """What an api.openai.com backend without its key says (at the first call, or before any work)."""
    return UserError(f"{key_env} is not set: export your OpenAI API key, or use an OpenAI-compatible server with "
                     "--llm openai:MODEL@http://HOST:PORT/v1")


def display_url(url: str) -> str:
    """`url` without any user:password part, safe for names, logs and cache keys."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url.rstrip("/")
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)).rstrip("/")


@dataclass
class _LoopState:
    """Objects bound to one event loop (the SDK's connection pool and the asyncio primitives)."""

    loop: asyncio.AbstractEventLoop
    client: Any
    semaphore: asyncio.Semaphore
    request_bucket: TokenBucket | None
    token_bucket: TokenBucket | None


class OpenAIBackend(LLMBackend):
    """`openai:MODEL` or `openai:MODEL@URL`: chat and completions over HTTP with retries, limits, cache and ledger."""

    def __init__(self, settings: OpenAISettings, *, cache: ResponseCache | None = None,
                 ledger: UsageLedger | None = None) -> None:
        self.settings = settings
        """The configuration."""
        self.model = settings.model
        self.name = f"openai:{settings.model}" + (f"@{display_url(settings.base_url)}" if settings.base_url else "")
        self.cache = cache
        """Response cache (None = no caching)."""
        self.ledger = ledger
        """Usage ledger (None = not recorded)."""
        self.capabilities = self._capabilities(settings)
        self._endpoint = display_url(settings.base_url) if settings.base_url else OFFICIAL_URL
        self._state: _LoopState | None = None

    @staticmethod
    def _capabilities(settings: OpenAISettings) -> Capabilities:
        completion = settings.completion if settings.completion is not None else not settings.is_official
        context = settings.context_window or (128_000 if settings.is_official else 8_192)
        return Capabilities(chat=True, completion=completion or settings.slot_mode is not SlotMode.NONE,
                            generated_logprobs=True, slot_distributions=settings.slot_mode is not SlotMode.NONE,
                            max_top_logprobs=MAX_TOP_LOGPROBS, batching=False, context_window=context,
                            slot_multitoken_exact=False)

    # -- connection state --------------------------------------------------------------------------------------
    async def _api_key(self) -> str:
        key = os.environ.get(self.settings.key_env, "").strip()
        if key:
            return key
        if self.settings.is_official:
            raise missing_key_error(self.settings.key_env)
        return PLACEHOLDER_KEY

    def _loop_state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        if self._state is None or self._state.loop is not loop:
            import openai

            limits = self.settings.limits
            client = openai.AsyncOpenAI(api_key=PLACEHOLDER_KEY, base_url=self.settings.base_url or OFFICIAL_URL,
                                        max_retries=0, timeout=self.settings.timeout_s)
            self._state = _LoopState(
                loop=loop, client=client, semaphore=asyncio.Semaphore(limits.concurrency),
                request_bucket=make_bucket(f"{self.name} requests", limits.requests_per_minute)
                if limits.requests_per_minute else None,
                token_bucket=make_bucket(f"{self.name} tokens", limits.tokens_per_minute)
                if limits.tokens_per_minute else None)
        return self._state

    async def aclose(self) -> None:
        """Close the HTTP connection pool of the current event loop."""
        state, self._state = self._state, None
        if state is not None and state.loop is asyncio.get_running_loop():
            await state.client.close()

    # -- one request -------------------------------------------------------------------------------------------
    async def _request(self, path: str, body: dict[str, Any], *, operation: str,
                       deterministic: bool) -> tuple[dict[str, Any], bool]:
        """POST `body` to `path` (cache, limits, retries, ledger); returns (answer JSON, from_cache)."""
        started = time.monotonic()
        key = None
        if self.cache is not None and deterministic:
            key = self.request_key(path, body)
            cached = self.cache.get(key)
            if cached is not None:
                self._record(operation, {}, latency=time.monotonic() - started, from_cache=True, attempts=0)
                return cached, True
        estimate = _estimate_tokens(body) if self.settings.limits.tokens_per_minute else 0
        attempts = 0

        async def attempt() -> dict[str, Any]:
            nonlocal attempts
            state = self._loop_state()
            async with state.semaphore:
                if state.request_bucket is not None:
                    await state.request_bucket.take(1)
                if state.token_bucket is not None:
                    await state.token_bucket.take(estimate)
                attempts += 1
                return await self._send(state.client, path, body)

        answer = await call_with_retries(attempt, policy=self.settings.retry, what=f"{self.name} {path}")
        usage = answer.get("usage") or {}
        state = self._loop_state()
        if state.token_bucket is not None:
            actual = int(usage.get("prompt_tokens") or 0) + int(usage.get("completion_tokens") or 0)
            if actual:
                state.token_bucket.give_back(estimate - actual)
        if key is not None and self.cache is not None:
            self.cache.put(key, answer, backend=self.name, model=self.model)
        self._record(operation, usage, latency=time.monotonic() - started, from_cache=False, attempts=attempts)
        return answer, False

    async def _send(self, client: Any, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """One HTTP attempt; transient trouble raises RetryableFailure, fatal trouble LLMFatalError."""
        import openai

        # The key goes into this request's header only; the client itself holds a placeholder.
        headers = {"Authorization": f"Bearer {await self._api_key()}"}
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                response = await client.post(path, cast_to=_http_response_class(), body=body,
                                             options={"headers": headers})
        except openai.APIStatusError as exc:
            raise self._status_failure(exc) from None
        except (openai.APITimeoutError, TimeoutError):
            raise RetryableFailure(f"no answer within {self.settings.timeout_s:g} s") from None
        except openai.APIConnectionError as exc:
            cause = exc.__cause__ or exc
            raise RetryableFailure(f"connection failed ({type(cause).__name__})") from None
        try:
            answer = json.loads(response.text)
        except ValueError:
            raise RetryableFailure("the answer was not valid JSON") from None
        if not isinstance(answer, dict) or not isinstance(answer.get("choices"), list) or not answer["choices"]:
            raise RetryableFailure("the answer had no choices")
        return answer

    def _status_failure(self, exc: Any) -> Exception:
        status = int(exc.status_code)
        error = exc.body.get("error", exc.body) if isinstance(exc.body, dict) else {}
        error = error if isinstance(error, dict) else {}
        code = error.get("code") or error.get("type") or exc.code
        code = str(code) if code else None
        message = redact(str(error.get("message") or exc.message or ""), os.environ.get(self.settings.key_env))
        detail = f"HTTP {status}" + (f" {code}" if code else "") + (f": {message}" if message else "")
        if code == "insufficient_quota":
            return LLMFatalError(f"{self.name}: out of credit ({detail}); add credit or use another backend",
                                 status_code=status, code=code)
        if status == 429 or status in (408, 409) or status >= 500:
            return RetryableFailure(detail, retry_after=_retry_after(exc.response.headers), status_code=status,
                                    code=code)
        hint = {401: f"; check {self.settings.key_env}", 403: "; the key has no access to this model",
                404: "; check the model name and the server URL"}.get(status, "")
        return LLMFatalError(f"{self.name}: {detail}{hint}", status_code=status, code=code)

    def _record(self, operation: str, usage: dict[str, Any], *, latency: float, from_cache: bool,
                attempts: int) -> None:
        if self.ledger is None:
            return
        details = usage.get("prompt_tokens_details") or {}
        self.ledger.record(backend=self.name, model=self.model, operation=operation,
                           prompt_tokens=int(usage.get("prompt_tokens") or 0),
                           completion_tokens=int(usage.get("completion_tokens") or 0),
                           cached_tokens=int(details.get("cached_tokens") or 0), latency_s=latency,
                           from_cache=from_cache, attempts=attempts)

    def request_key(self, path: str, body: dict[str, Any]) -> str:
        """The response-cache key of one request (the same whether it is sent directly or in a batch)."""
        return cache_key({"backend": "openai", "endpoint": self._endpoint, "path": path, "body": body})

    # -- LLMBackend --------------------------------------------------------------------------------------------
    async def generate(self, prompt: Prompt, *, n: int = 1, temperature: float = 0.0, max_tokens: int = 256,
                       stop: Sequence[str] | None = None, seed: int | None = None,
                       top_logprobs: int = 0) -> GenerateResult:
        """Chat for message lists, /completions for raw text (when the backend accepts raw text)."""
        top_logprobs = min(max(top_logprobs, 0), MAX_TOP_LOGPROBS)
        path, operation, body = self.generate_request(prompt, n=n, temperature=temperature, max_tokens=max_tokens,
                                                      stop=stop, seed=seed, top_logprobs=top_logprobs)
        answer, from_cache = await self._request(path, body, operation=operation,
                                                 deterministic=temperature == 0 or seed is not None)
        return read_generate_answer(answer, path, top_logprobs=top_logprobs, from_cache=from_cache)

    def generate_request(self, prompt: Prompt, *, n: int, temperature: float, max_tokens: int,
                         stop: Sequence[str] | None, seed: int | None,
                         top_logprobs: int) -> tuple[str, str, dict[str, Any]]:
        """(path, operation, JSON body) of a `generate` call."""
        body: dict[str, Any] = {"model": self.model}
        if isinstance(prompt, str):
            if not self.capabilities.completion:
                raise UserError(f"{self.name} takes chat messages, not raw text prompts; add ?completion=1 to the "
                                "backend if the model serves /completions")
            path, operation = COMPLETIONS_PATH, "completion"
            body["prompt"] = prompt
            body["max_tokens"] = max_tokens
            if top_logprobs:
                body["logprobs"] = top_logprobs
        else:
            path, operation = CHAT_PATH, "chat"
            body["messages"] = [_message_json(message) for message in prompt]
            # OpenAI's newer models reject max_tokens; compatible servers do not all know max_completion_tokens.
            body["max_completion_tokens" if self.settings.is_official else "max_tokens"] = max_tokens
            if top_logprobs:
                body["logprobs"] = True
                body["top_logprobs"] = top_logprobs
        body["n"] = n
        body["temperature"] = temperature
        if stop:
            body["stop"] = list(stop)
        if seed is not None:
            body["seed"] = seed
        return path, operation, body

    async def slot_distributions(self, prompts: Sequence[SlotPrompt],
                                 candidates: Sequence[str]) -> list[list[dict[str, float]]]:
        """One /completions request per prompt reading prompt logprobs; see docs/llm-backends.md for the limits.

        A candidate's probability is that of the alternative token whose text equals it (0.0 when it is not
        among the returned top alternatives, and always for candidates the server splits into several tokens).
        """
        if self.settings.slot_mode is SlotMode.NONE:
            return await super().slot_distributions(prompts, candidates)
        return await run_all(self._slots_of(prompt, candidates) for prompt in prompts)

    async def _slots_of(self, prompt: SlotPrompt, candidates: Sequence[str]) -> list[dict[str, float]]:
        text = prompt.prefix + "".join(prompt.pieces)
        offsets, position = [], len(prompt.prefix)
        for piece in prompt.pieces[:-1]:
            position += len(piece)
            offsets.append(position)
        if not offsets:
            return []
        top = self.settings.slot_top_logprobs
        body: dict[str, Any] = {"model": self.model, "prompt": text, "max_tokens": 1, "temperature": 0}
        if self.settings.slot_mode is SlotMode.ECHO:
            body["echo"] = True
            body["logprobs"] = top
        else:
            body["prompt_logprobs"] = top
        answer, _ = await self._request(COMPLETIONS_PATH, body, operation="slots", deterministic=True)
        choice = answer["choices"][0]
        if self.settings.slot_mode is SlotMode.ECHO:
            by_offset = _echo_alternatives(choice, len(text))
        else:
            by_offset = _prompt_logprob_alternatives(choice, text)
        if by_offset is None:
            raise LLMFatalError(f"{self.name}: the server returned no prompt logprobs for "
                                f"{self.settings.slot_mode.value}; it cannot give slot distributions")
        distributions = []
        for slot, offset in enumerate(offsets):
            alternatives = by_offset.get(offset)
            if alternatives is None:
                raise LLMFatalError(f"{self.name}: no server token starts at slot {slot} (character {offset}); "
                                    "make the text after each slot start a new token, e.g. after a tab or newline")
            distributions.append({candidate: math.exp(alternatives[candidate]) if candidate in alternatives else 0.0
                                  for candidate in candidates})
        return distributions

    async def probe_slots(self) -> SlotMode:
        """Ask the server whether it returns prompt logprobs (vLLM style, then echo); enable the first that works.

        Makes up to two small /completions requests; returns the mode now in use (NONE if neither works).
        """
        probe = SlotPrompt(prefix="Count: one,", pieces=(" two", ", three"))
        original = self.settings
        for mode in (SlotMode.PROMPT_LOGPROBS, SlotMode.ECHO):
            self.settings = replace(original, slot_mode=mode)
            try:
                await self._slots_of(probe, ["two"])
            except (LLMFatalError, UserError) as exc:
                logger.info("%s: %s slot mode unavailable: %s", self.name, mode.value, exc)
                continue
            except BaseException:
                self.settings = original
                raise
            self.capabilities = self._capabilities(self.settings)
            return mode
        self.settings = original
        self.capabilities = self._capabilities(original)
        return SlotMode.NONE


def read_generate_answer(answer: dict[str, Any], path: str, *, top_logprobs: int, from_cache: bool) -> GenerateResult:
    """A chat or completions answer as a GenerateResult (no usage when it came from the response cache)."""
    choices = sorted(answer["choices"], key=lambda choice: choice.get("index", 0))
    parse = _parse_chat_choice if path == CHAT_PATH else _parse_completion_choice
    generations = tuple(parse(choice, want_logprobs=top_logprobs > 0) for choice in choices)
    usage = Usage() if from_cache else _usage(answer)
    return GenerateResult(generations=generations, usage=usage, from_cache=from_cache)


def _http_response_class() -> type:
    """The HTTP response class of the installed SDK's transport (httpx2 in openai 3.x, httpx before)."""
    try:
        import httpx2

        return httpx2.Response
    except ImportError:
        import httpx

        return httpx.Response


def _message_json(message: Message | dict[str, Any]) -> dict[str, Any]:
    if isinstance(message, Message):
        return {"role": message.role, "content": message.content}
    return {"role": message["role"], "content": message["content"]}


def _estimate_tokens(body: dict[str, Any]) -> int:
    """Rough prompt + completion tokens of a request for the tokens-per-minute limiter (4 characters a token)."""
    if "messages" in body:
        characters = sum(len(str(message.get("content", ""))) for message in body["messages"])
    else:
        characters = len(str(body.get("prompt", "")))
    completion = int(body.get("max_completion_tokens") or body.get("max_tokens") or 0) * int(body.get("n") or 1)
    return characters // 4 + completion + 1


def _retry_after(headers: Any) -> float | None:
    """Seconds from `retry-after-ms` or `Retry-After` (seconds or an HTTP date)."""
    milliseconds = headers.get("retry-after-ms")
    if milliseconds:
        try:
            return float(milliseconds) / 1000.0
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


def _usage(answer: dict[str, Any]) -> Usage:
    usage = answer.get("usage") or {}
    details = usage.get("prompt_tokens_details") or {}
    return Usage(prompt_tokens=int(usage.get("prompt_tokens") or 0),
                 completion_tokens=int(usage.get("completion_tokens") or 0),
                 cached_tokens=int(details.get("cached_tokens") or 0))


def _parse_chat_choice(choice: dict[str, Any], *, want_logprobs: bool) -> Generation:
    message = choice.get("message") or {}
    logprobs = None
    content = (choice.get("logprobs") or {}).get("content") if want_logprobs else None
    if content:
        logprobs = tuple(
            TokenLogprob(token=item["token"], logprob=float(item["logprob"]),
                         top=tuple((alt["token"], float(alt["logprob"])) for alt in item.get("top_logprobs") or []))
            for item in content)
    return Generation(text=message.get("content") or "", logprobs=logprobs, finish_reason=choice.get("finish_reason"))


def _parse_completion_choice(choice: dict[str, Any], *, want_logprobs: bool) -> Generation:
    logprobs = None
    legacy = choice.get("logprobs") if want_logprobs else None
    if legacy and legacy.get("tokens"):
        logprobs = tuple(
            TokenLogprob(token=token, logprob=float(logprob if logprob is not None else 0.0),
                         top=tuple(sorted(((alt, float(value)) for alt, value in (top or {}).items()),
                                          key=lambda item: -item[1])))
            for token, logprob, top in zip(legacy["tokens"], legacy["token_logprobs"],
                                           legacy.get("top_logprobs") or [None] * len(legacy["tokens"])))
    return Generation(text=choice.get("text") or "", logprobs=logprobs, finish_reason=choice.get("finish_reason"))


def _echo_alternatives(choice: dict[str, Any], prompt_length: int) -> dict[int, dict[str, float]] | None:
    """Character offset of each prompt token -> {alternative text: logprob} from an echo+logprobs answer."""
    legacy = choice.get("logprobs") or {}
    if not legacy.get("text_offset") or not legacy.get("top_logprobs"):
        return None
    out: dict[int, dict[str, float]] = {}
    for offset, top in zip(legacy["text_offset"], legacy["top_logprobs"]):
        if offset >= prompt_length:
            break
        if top is not None:
            out[int(offset)] = {token: float(logprob) for token, logprob in top.items()}
    return out


def _prompt_logprob_alternatives(choice: dict[str, Any], prompt: str) -> dict[int, dict[str, float]] | None:
    """Character offset of each prompt token -> {alternative text: logprob} from vLLM `prompt_logprobs`.

    vLLM reports, for every prompt token after the first, a dict of alternatives that includes the actual token,
    but not which one is actual; the token texts are recovered by matching alternatives against the prompt
    from its end backwards (the first token, whose text is the unmatched rest, has no distribution).
    """
    entries = choice.get("prompt_logprobs")
    if not entries:
        return None
    positions: list[dict[str, float]] = []
    for entry in entries[1:]:
        alternatives: dict[str, float] = {}
        for item in (entry or {}).values():
            text, logprob = str(item.get("decoded_token") or ""), float(item["logprob"])
            # Distinct ids can decode to the same text; their probabilities add up.
            alternatives[text] = float(_logaddexp(alternatives[text], logprob)) if text in alternatives else logprob
        positions.append(alternatives)
    starts = _align_from_end(prompt, positions)
    if starts is None:
        raise LLMFatalError("cannot match the server's prompt tokens to the prompt text")
    return {start: alternatives for start, alternatives in zip(starts, positions)}


def _align_from_end(prompt: str, positions: list[dict[str, float]]) -> list[int] | None:
    """Start offsets of tokens 1..N-1 such that each is one of its position's alternatives and they tile the end."""
    # reachable[i]: start offsets of token i+1 from which tokens i+1.. tile prompt[start:] (with a choice each).
    choice_at: list[dict[int, int]] = [dict() for _ in positions]
    ends = {len(prompt)}
    for index in range(len(positions) - 1, -1, -1):
        starts: set[int] = set()
        for end in ends:
            for text in positions[index]:
                start = end - len(text)
                if start >= 0 and prompt.startswith(text, start) and start not in choice_at[index]:
                    choice_at[index][start] = end
                    starts.add(start)
        if not starts:
            return None
        ends = starts
    start = min(ends) if 0 in ends else max(ends)
    result = []
    for index in range(len(positions)):
        result.append(start)
        start = choice_at[index][start]
    return result


def _logaddexp(first: float, second: float) -> float:
    high, low = max(first, second), min(first, second)
    return high + math.log1p(math.exp(low - high))
