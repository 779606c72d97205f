"""A real HTTP server on 127.0.0.1 that speaks enough of the OpenAI API to test every LLM code path.

Start one with the `fake_openai` pytest fixture (registered for all tests through conftest.py) or by hand:

    with FakeOpenAIServer(responder=my_responder) as server:
        backend = make_backend(server.backend_spec("my-model"))
        ...
        assert server.count("/v1/chat/completions") == 1

Scripting answers: `server.responder` is called with the parsed JSON body of every answered request (chat requests
carry `messages`, completion requests `prompt`) and returns the generated text, or a `Reply` for token logprobs,
several choices, usage overrides or prompt-logprob scoring. The default responder answers "ok".

Scripting faults: `server.push_faults(Fault.rate_limit(retry_after=1), Fault.server_error())` makes the next two
requests fail in that order (then requests are answered normally); `server.fault_policy = fn(RecordedRequest) ->
Fault | None` decides for any request once the queue is empty. `server.latency` adds a fixed delay to every answer.

Batch API: `/v1/files` (multipart upload, content download), `/v1/batches` (create, retrieve, list). A batch
completes `server.batch_delay` seconds after it was created; `server.batch_script` (a list of `BatchOutcome`, one
per created batch in order; then every batch completes normally) makes it expire half-way, fail a fraction of its
lines, or write malformed lines. Each line answered in a batch output counts in `answered` like a direct answer.

What the server saw: `server.requests` (path, JSON body, headers including Authorization, arrival time),
`server.count(path)`, `server.max_in_flight` (most requests handled at the same time), `server.answered` and
`server.answered_prompt_tokens` / `answered_completion_tokens` (complete normal answers sent: the billable calls).

Tokens: the server splits text with `fake_tokenize` (a word with its leading space, every digit, every other
character alone: "10" is "1","0", like SmolLM2), and reports usage from that split, so tests can compute the expected
counts. Prompt logprobs (completions with `echo`+`logprobs`, or vLLM's `prompt_logprobs`) come from
`server.prompt_scorer(tokens, position) -> {token: logprob}`, the distribution of token `position` given the earlier
tokens; the actual token is always reported too, as the real servers do.
"""

from __future__ import annotations

import json
import math
import re
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

_TOKEN_PATTERN = re.compile(r" ?[A-Za-z]+|\d|\s|[^A-Za-z\d\s]")


def fake_tokenize(text: str) -> list[str]:
    """The server's tokenizer: words with their leading space, single digits, any other single character."""
    return _TOKEN_PATTERN.findall(text)


PromptScorer = Callable[[Sequence[str], int], Mapping[str, float]]
"""(prompt tokens, position) -> {token: logprob} for the token at `position` given the tokens before it."""


def default_prompt_scorer(tokens: Sequence[str], position: int) -> dict[str, float]:
    """The actual token gets probability 0.6; the ten digits share the rest equally."""
    actual = tokens[position]
    digits = [str(digit) for digit in range(10) if str(digit) != actual]
    share = math.log(0.4 / len(digits))
    return {actual: math.log(0.6), **{digit: share for digit in digits}}


@dataclass(frozen=True)
class ScriptedToken:
    """One generated token with its logprob and the alternatives reported at its position."""

    text: str
    """The token text."""
    logprob: float = 0.0
    """Its log probability."""
    top: Mapping[str, float] | None = None
    """Alternatives {token: logprob}; the token itself is added when missing."""


@dataclass(frozen=True)
class Reply:
    """A scripted answer; a responder may return this instead of plain text."""

    text: str = "ok"
    """The generated text (every choice, unless `texts` is given)."""
    texts: Sequence[str] | None = None
    """One text per choice when `n` > 1 (cycled when shorter than `n`)."""
    tokens: Sequence[ScriptedToken] | None = None
    """Explicit generated tokens with logprobs; their concatenation replaces `text`."""
    finish_reason: str = "stop"
    """Reported finish reason (`length` is reported instead when `max_tokens` cuts the text)."""
    cached_tokens: int = 0
    """Prompt tokens reported as served from the provider's prompt cache."""
    usage: Mapping[str, int] | None = None
    """Overrides of the computed usage (`prompt_tokens`, `completion_tokens`)."""
    prompt_scorer: PromptScorer | None = None
    """Overrides the server's prompt scorer for this answer."""


@dataclass(frozen=True)
class BatchOutcome:
    """How one created batch ends (by default it completes with every line answered)."""

    expire: bool = False
    """Status `expired`: only the first half of its lines is answered, the rest are in the error file."""
    failed_fraction: float = 0.0
    """Share of lines (every k-th) answered with a 500 error instead of an answer."""
    malformed_lines: int = 0
    """Answered lines whose output line is replaced by text that is not JSON."""


class FaultKind(str, Enum):
    """What goes wrong with a request."""

    STATUS = "status"
    SLOW = "slow"
    HANG = "hang"
    RESET = "reset"
    MALFORMED_JSON = "malformed_json"
    TRUNCATED = "truncated"
    GARBLED = "garbled"


@dataclass(frozen=True)
class Fault:
    """One injected failure; build them with the class methods."""

    kind: FaultKind
    """What goes wrong."""
    status: int = 500
    """HTTP status for STATUS faults."""
    code: str | None = None
    """OpenAI error code in the body (e.g. `insufficient_quota`, `rate_limit_exceeded`)."""
    message: str = "injected fault"
    """Error message in the body."""
    retry_after: str | None = None
    """Value of the Retry-After header (seconds), if any."""
    retry_after_ms: str | None = None
    """Value of the retry-after-ms header, if any."""
    delay: float = 0.0
    """Seconds to wait first (SLOW: then answer normally; HANG: then drop the connection unanswered)."""
    rewrite: Callable[[str], str] | None = None
    """GARBLED: turns the responder's text into the text actually sent (in a valid, billed answer)."""

    @classmethod
    def rate_limit(cls, *, retry_after: float | None = None, retry_after_ms: float | None = None) -> Fault:
        """429 rate_limit_exceeded, with an optional Retry-After / retry-after-ms header."""
        return cls(FaultKind.STATUS, status=429, code="rate_limit_exceeded", message="Rate limit reached",
                   retry_after=None if retry_after is None else f"{retry_after:g}",
                   retry_after_ms=None if retry_after_ms is None else f"{retry_after_ms:g}")

    @classmethod
    def insufficient_quota(cls) -> Fault:
        """429 with code insufficient_quota (out of credit: retrying cannot help)."""
        return cls(FaultKind.STATUS, status=429, code="insufficient_quota",
                   message="You exceeded your current quota, please check your plan and billing details.")

    @classmethod
    def server_error(cls, status: int = 500) -> Fault:
        """A 5xx answer (500, 502, 503, ...)."""
        return cls(FaultKind.STATUS, status=status, code=None, message=f"injected {status}")

    @classmethod
    def unauthorized(cls) -> Fault:
        """401 invalid_api_key."""
        return cls(FaultKind.STATUS, status=401, code="invalid_api_key", message="Incorrect API key provided.")

    @classmethod
    def http_status(cls, status: int, *, code: str | None = None, message: str = "injected fault") -> Fault:
        """Any status with an OpenAI-style error body (400, 403, 404, ...)."""
        return cls(FaultKind.STATUS, status=status, code=code, message=message)

    @classmethod
    def slow(cls, delay: float) -> Fault:
        """Answer normally after `delay` seconds."""
        return cls(FaultKind.SLOW, delay=delay)

    @classmethod
    def hang(cls, delay: float = 30.0) -> Fault:
        """Send nothing for `delay` seconds (past the client's timeout), then drop the connection."""
        return cls(FaultKind.HANG, delay=delay)

    @classmethod
    def reset(cls) -> Fault:
        """Send the headers and half the body, then reset the connection (TCP RST)."""
        return cls(FaultKind.RESET)

    @classmethod
    def malformed_json(cls) -> Fault:
        """200 with Content-Type application/json and a body that is not JSON."""
        return cls(FaultKind.MALFORMED_JSON)

    @classmethod
    def garbled(cls, rewrite: Callable[[str], str]) -> Fault:
        """200 with a valid body whose text is `rewrite(normal text)`: empty, absurd, too long, wrong line count."""
        return cls(FaultKind.GARBLED, rewrite=rewrite)

    @classmethod
    def truncated(cls) -> Fault:
        """200 announcing a longer Content-Length than it sends, then closing the connection."""
        return cls(FaultKind.TRUNCATED)


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it."""

    index: int
    """0-based arrival order."""
    path: str
    """URL path, e.g. `/v1/chat/completions`."""
    body: Any
    """Parsed JSON body (None if it was not JSON)."""
    headers: Mapping[str, str]
    """Request headers, names lower-cased."""
    received_at: float
    """time.monotonic() at arrival."""


Responder = Callable[[dict[str, Any]], "str | Reply"]
"""request JSON -> generated text or Reply."""


class FakeOpenAIServer:
    """A threaded HTTP server on 127.0.0.1 (free port) speaking /v1/chat/completions and /v1/completions."""

    def __init__(self, *, responder: Responder | None = None, latency: float = 0.0,
                 prompt_scorer: PromptScorer = default_prompt_scorer) -> None:
        self.responder: Responder = responder or (lambda request: "ok")
        """Called with the JSON body of each answered request."""
        self.latency = latency
        """Seconds added before every normal answer."""
        self.prompt_scorer = prompt_scorer
        """Prompt-logprob distributions for echo / prompt_logprobs requests."""
        self.fault_policy: Callable[[RecordedRequest], Fault | None] | None = None
        """Consulted for each request when the fault queue is empty."""
        self.requests: list[RecordedRequest] = []
        self.max_in_flight = 0
        self.answered = 0
        self._epoch = 0
        """Complete normal answers sent (what a provider bills; faults and cut-off bodies excluded)."""
        self.answered_prompt_tokens = 0
        """Prompt tokens reported in those answers."""
        self.answered_completion_tokens = 0
        """Completion tokens reported in those answers."""
        self._faults: list[Fault] = []
        self.batch_delay = 0.0
        """Seconds from a batch's creation to its end."""
        self.batch_script: list[BatchOutcome] = []
        """How the next created batches end, in order (then normally)."""
        self.files: dict[str, bytes] = {}
        """Uploaded and generated files by id."""
        self.batches: dict[str, dict[str, Any]] = {}
        """Batch objects by id."""
        self._batch_outcomes: dict[str, BatchOutcome] = {}
        self._batch_created: dict[str, float] = {}
        self._in_flight = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._vocabulary: dict[str, int] = {}
        self._httpd = _QuietHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        # A short poll interval makes close() (which waits for the serve loop to notice) take milliseconds.
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                        name="fake-openai", daemon=True)
        self._thread.start()

    # -- addresses -----------------------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        """The port the server listens on."""
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:PORT/v1`, what OPENAI_BASE_URL or a backend's `@URL` takes."""
        return f"http://127.0.0.1:{self.port}/v1"

    def backend_spec(self, model: str = "fake-model", options: str = "") -> str:
        """`openai:MODEL@BASE_URL[?options]` for make_backend."""
        return f"openai:{model}@{self.base_url}" + (f"?{options}" if options else "")

    # -- scripting -----------------------------------------------------------------------------------------------
    def push_faults(self, *faults: Fault | None) -> None:
        """Queue faults for the next requests in arrival order (None = answer that one normally)."""
        with self._lock:
            self._faults.extend(fault if fault is not None else _NO_FAULT for fault in faults)

    def reset(self) -> None:
        """Forget recorded requests and queued faults."""
        with self._lock:
            self.requests.clear()
            self._faults.clear()
            self.max_in_flight = 0
            self.answered = self.answered_prompt_tokens = self.answered_completion_tokens = 0
            # Slow answers to requests from before the reset must not count as answers after it.
            self._epoch += 1

    # -- inspection ----------------------------------------------------------------------------------------------
    def count(self, path: str | None = None) -> int:
        """Requests received for `path` (e.g. `/v1/completions`), or in total."""
        with self._lock:
            return sum(1 for request in self.requests if path is None or request.path == path)

    @property
    def counts(self) -> Counter[str]:
        """Requests received per path."""
        with self._lock:
            return Counter(request.path for request in self.requests)

    def arrival_gaps(self) -> list[float]:
        """Seconds between consecutive request arrivals (to check retry waits)."""
        with self._lock:
            times = [request.received_at for request in self.requests]
        return [later - earlier for earlier, later in zip(times, times[1:])]

    def token_id(self, token: str) -> int:
        """The id the server reports for a token (assigned on first sight)."""
        with self._lock:
            return self._vocabulary.setdefault(token, len(self._vocabulary))

    # -- lifecycle -----------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop serving and release hanging handlers."""
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeOpenAIServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- request handling (server threads) ---------------------------------------------------------------------
    def _record(self, path: str, body: Any, headers: Mapping[str, str]) -> tuple[RecordedRequest, Fault | None]:
        with self._lock:
            request = RecordedRequest(len(self.requests), path, body, dict(headers), time.monotonic())
            self.requests.append(request)
            fault = self._faults.pop(0) if self._faults else None
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        if fault is None and self.fault_policy is not None:
            fault = self.fault_policy(request)
        return request, (None if fault is _NO_FAULT else fault)

    # -- Batch API -------------------------------------------------------------------------------------------------
    def _create_file(self, content: bytes, purpose: str) -> dict[str, Any]:
        with self._lock:
            file_id = f"file-{len(self.files) + 1}"
            self.files[file_id] = content
        return {"id": file_id, "object": "file", "bytes": len(content), "created_at": int(time.time()),
                "filename": f"{file_id}.jsonl", "purpose": purpose, "status": "processed"}

    def _create_batch(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if body.get("input_file_id") not in self.files:
            return 404, {"error": {"message": "no such file", "type": "invalid_request_error", "code": None}}
        with self._lock:
            batch_id = f"batch_{len(self.batches) + 1}"
            outcome = self.batch_script.pop(0) if self.batch_script else BatchOutcome()
            lines = [line for line in self.files[body["input_file_id"]].splitlines() if line.strip()]
            self.batches[batch_id] = {
                "id": batch_id, "object": "batch", "endpoint": body.get("endpoint"), "errors": None,
                "input_file_id": body["input_file_id"], "completion_window": body.get("completion_window"),
                "status": "validating", "output_file_id": None, "error_file_id": None,
                "created_at": int(time.time()), "metadata": body.get("metadata"),
                "request_counts": {"total": len(lines), "completed": 0, "failed": 0}}
            self._batch_outcomes[batch_id] = outcome
            self._batch_created[batch_id] = time.monotonic()
            return 200, dict(self.batches[batch_id])

    def _batch(self, batch_id: str) -> dict[str, Any] | None:
        """The batch, run to its end once its delay has passed (answers are made then, and counted once)."""
        with self._lock:
            batch = self.batches.get(batch_id)
            if batch is None:
                return None
            if batch["status"] not in ("validating", "in_progress"):
                return dict(batch)
            if time.monotonic() - self._batch_created[batch_id] < self.batch_delay:
                batch["status"] = "in_progress"
                return dict(batch)
            batch["status"] = "finalizing"  # one thread makes the answers, once
            outcome = self._batch_outcomes[batch_id]
            lines = [json.loads(line) for line in self.files[batch["input_file_id"]].splitlines() if line.strip()]
        output, errors, answered, malformed = [], [], 0, 0
        step = round(1 / outcome.failed_fraction) if outcome.failed_fraction > 0 else 0
        for index, line in enumerate(lines):
            if outcome.expire and index >= len(lines) // 2:
                errors.append({"id": f"req_{index}", "custom_id": line["custom_id"], "response": None,
                               "error": {"code": "batch_expired", "message": "not processed before expiry"}})
                continue
            if step and index % step == 0:
                output.append({"id": f"req_{index}", "custom_id": line["custom_id"], "error": None,
                               "response": {"status_code": 500, "request_id": f"r{index}",
                                            "body": {"error": {"message": "injected", "type": "server_error"}}}})
                continue
            payload = self._answer(line["url"].removeprefix("/v1"), line["body"])
            if malformed < outcome.malformed_lines:
                # Cut off like a truncated body: not a delivered (billable) answer; the client must ask again.
                malformed += 1
                output.append('{"id": "broken", "custom_id": ' + json.dumps(line["custom_id"])[:-3])
                continue
            self._delivered(payload, self._epoch)
            answered += 1
            output.append({"id": f"req_{index}", "custom_id": line["custom_id"], "error": None,
                           "response": {"status_code": 200, "request_id": f"r{index}", "body": payload}})
        encode = (lambda item: item if isinstance(item, str) else json.dumps(item))  # noqa: E731
        output_id = self._create_file("\n".join(encode(item) for item in output).encode() + b"\n",
                                      "batch_output")["id"] if output else None
        error_id = self._create_file("\n".join(json.dumps(item) for item in errors).encode() + b"\n",
                                     "batch_output")["id"] if errors else None
        with self._lock:
            batch["status"] = "expired" if outcome.expire else "completed"
            batch["output_file_id"], batch["error_file_id"] = output_id, error_id
            batch["request_counts"] = {"total": len(lines), "completed": answered,
                                       "failed": len(lines) - answered}
            return dict(batch)

    def _done(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _delivered(self, answer: dict[str, Any], epoch: int) -> None:
        usage = answer.get("usage") or {}
        with self._lock:
            if epoch != self._epoch:
                return
            self.answered += 1
            self.answered_prompt_tokens += int(usage.get("prompt_tokens") or 0)
            self.answered_completion_tokens += int(usage.get("completion_tokens") or 0)

    def _sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)

    def _answer(self, path: str, body: dict[str, Any],
                rewrite: Callable[[str], str] | None = None) -> dict[str, Any]:
        raw = self.responder(body)
        reply = raw if isinstance(raw, Reply) else Reply(text=str(raw))
        if rewrite is not None:
            reply = Reply(text=rewrite(reply.text), finish_reason=reply.finish_reason, usage=reply.usage)
        if path.endswith("/chat/completions"):
            return self._chat_answer(body, reply)
        return self._completion_answer(body, reply)

    def _choice_tokens(self, body: dict[str, Any], reply: Reply, choice: int) -> tuple[list[ScriptedToken], str]:
        if reply.tokens is not None:
            tokens = list(reply.tokens)
        else:
            text = reply.texts[choice % len(reply.texts)] if reply.texts else reply.text
            tokens = [ScriptedToken(piece) for piece in fake_tokenize(text)]
        finish_reason = reply.finish_reason
        stops = body.get("stop") or []
        for stop in [stops] if isinstance(stops, str) else stops:
            joined = "".join(token.text for token in tokens)
            if stop and stop in joined:
                cut = joined.index(stop)
                kept, length = [], 0
                for token in tokens:
                    if length + len(token.text) > cut:
                        break
                    kept.append(token)
                    length += len(token.text)
                tokens, finish_reason = kept, "stop"
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        if limit is not None and len(tokens) > int(limit):
            tokens, finish_reason = tokens[: int(limit)], "length"
        return tokens, finish_reason

    def _usage(self, prompt_tokens: int, completion_tokens: int, reply: Reply) -> dict[str, Any]:
        usage: dict[str, Any] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
        usage.update(reply.usage or {})
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        usage["prompt_tokens_details"] = {"cached_tokens": reply.cached_tokens}
        return usage

    def _chat_answer(self, body: dict[str, Any], reply: Reply) -> dict[str, Any]:
        messages = body.get("messages") or []
        # Roughly like the real chat format: a few tokens of framing per message.
        prompt_tokens = sum(len(fake_tokenize(str(message.get("content", "")))) + 4 for message in messages)
        choices, completion_tokens = [], 0
        top_k = int(body.get("top_logprobs") or 0)
        for index in range(int(body.get("n") or 1)):
            tokens, finish_reason = self._choice_tokens(body, reply, index)
            completion_tokens += len(tokens)
            choice: dict[str, Any] = {
                "index": index, "finish_reason": finish_reason, "logprobs": None,
                "message": {"role": "assistant", "content": "".join(token.text for token in tokens)},
            }
            if body.get("logprobs"):
                choice["logprobs"] = {"content": [
                    {"token": token.text, "logprob": token.logprob, "bytes": list(token.text.encode()),
                     "top_logprobs": [{"token": alt, "logprob": lp, "bytes": list(alt.encode())}
                                      for alt, lp in _top(token, top_k)]}
                    for token in tokens]}
            choices.append(choice)
        return {"id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model"), "choices": choices,
                "usage": self._usage(prompt_tokens, completion_tokens, reply)}

    def _completion_answer(self, body: dict[str, Any], reply: Reply) -> dict[str, Any]:
        prompt = body.get("prompt", "")
        if isinstance(prompt, list):
            prompt = prompt[0] if prompt else ""
        prompt_pieces = fake_tokenize(prompt)
        scorer = reply.prompt_scorer or self.prompt_scorer
        logprobs_k = body.get("logprobs")
        echo = bool(body.get("echo"))
        choices, completion_tokens = [], 0
        for index in range(int(body.get("n") or 1)):
            tokens, finish_reason = self._choice_tokens(body, reply, index)
            completion_tokens += len(tokens)
            text = "".join(token.text for token in tokens)
            choice: dict[str, Any] = {"index": index, "finish_reason": finish_reason, "logprobs": None,
                                      "text": (prompt + text) if echo else text}
            if logprobs_k is not None:
                choice["logprobs"] = self._legacy_logprobs(prompt_pieces if echo else [], tokens, int(logprobs_k),
                                                           scorer, start_offset=0 if echo else len(prompt))
            if body.get("prompt_logprobs") is not None:
                choice["prompt_logprobs"] = self._vllm_prompt_logprobs(prompt_pieces, int(body["prompt_logprobs"]),
                                                                       scorer)
            choices.append(choice)
        return {"id": f"cmpl-{len(self.requests)}", "object": "text_completion", "created": int(time.time()),
                "model": body.get("model"), "choices": choices,
                "usage": self._usage(len(prompt_pieces), completion_tokens, reply)}

    def _legacy_logprobs(self, prompt_pieces: list[str], tokens: list[ScriptedToken], top_k: int,
                         scorer: PromptScorer, *, start_offset: int) -> dict[str, Any]:
        out: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        offset = start_offset
        for position, piece in enumerate(prompt_pieces):
            if position == 0:
                logprob, top = None, None
            else:
                distribution = dict(scorer(prompt_pieces, position))
                logprob = distribution.get(piece, -30.0)
                top = dict(_best(distribution, top_k))
            out["tokens"].append(piece)
            out["token_logprobs"].append(logprob)
            out["top_logprobs"].append(top)
            out["text_offset"].append(offset)
            offset += len(piece)
        for token in tokens:
            out["tokens"].append(token.text)
            out["token_logprobs"].append(token.logprob)
            out["top_logprobs"].append(dict(_top(token, top_k)))
            out["text_offset"].append(offset)
            offset += len(token.text)
        return out

    def _vllm_prompt_logprobs(self, prompt_pieces: list[str], top_k: int,
                              scorer: PromptScorer) -> list[dict[str, Any] | None]:
        out: list[dict[str, Any] | None] = [None]
        for position in range(1, len(prompt_pieces)):
            distribution = dict(scorer(prompt_pieces, position))
            ranked = sorted(distribution.items(), key=lambda item: -item[1])
            entries = {}
            for rank, (token, logprob) in enumerate(ranked[:top_k], start=1):
                entries[str(self.token_id(token))] = {"logprob": logprob, "rank": rank, "decoded_token": token}
            actual = prompt_pieces[position]
            actual_id = str(self.token_id(actual))
            if actual_id not in entries:
                rank = 1 + sum(1 for _, logprob in ranked if logprob > distribution.get(actual, -30.0))
                entries[actual_id] = {"logprob": distribution.get(actual, -30.0), "rank": rank,
                                      "decoded_token": actual}
            out.append(entries)
        return out


_NO_FAULT = Fault(FaultKind.SLOW, delay=0.0)


class _QuietHTTPServer(ThreadingHTTPServer):
    """Clients that drop a connection (timeouts, closing keep-alive sockets) are normal, not worth a traceback on
    stderr, where tests check what the CLI prints."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _best(distribution: Mapping[str, float], top_k: int) -> list[tuple[str, float]]:
    return sorted(distribution.items(), key=lambda item: -item[1])[:top_k]


def _top(token: ScriptedToken, top_k: int) -> list[tuple[str, float]]:
    alternatives = dict(token.top or {})
    alternatives.setdefault(token.text, token.logprob)
    return _best(alternatives, top_k)


def _make_handler(server: FakeOpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in separate writes; with Nagle on, the body waits for a delayed ACK (~40 ms).
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base class signature
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server naming
            headers = {name.lower(): value for name, value in self.headers.items()}
            request, _ = server._record(self.path, None, headers)
            try:
                path = request.path.split("?", 1)[0]
                if path.startswith("/v1/files/") and path.endswith("/content"):
                    content = server.files.get(path.split("/")[3])
                    if content is None:
                        self._send_json(404, {"error": {"message": "no such file", "type": "invalid_request_error"}})
                    else:
                        self._send_raw(200, content, "application/octet-stream")
                elif path == "/v1/batches":
                    batches = [server._batch(batch_id) for batch_id in list(server.batches)]
                    self._send_json(200, {"object": "list", "data": batches[::-1], "has_more": False})
                elif path.startswith("/v1/batches/"):
                    batch = server._batch(path.split("/")[3])
                    if batch is None:
                        self._send_json(404, {"error": {"message": "no such batch", "type": "invalid_request_error"}})
                    else:
                        self._send_json(200, batch)
                else:
                    self._send_json(404, {"error": {"message": f"no route {path}", "type": "invalid_request_error"}})
            finally:
                server._done()

        def do_POST(self) -> None:  # noqa: N802 - http.server naming
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if self.path == "/v1/files":
                self._upload(raw)
                return
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            headers = {name.lower(): value for name, value in self.headers.items()}
            epoch = server._epoch
            request, fault = server._record(self.path, body, headers)
            try:
                if request.path == "/v1/batches" and isinstance(body, dict):
                    if fault is not None and fault.kind is FaultKind.HANG:
                        server._sleep(fault.delay)
                        self.close_connection = True
                        return
                    status, payload = server._create_batch(body)
                    self._send_json(status, payload)
                else:
                    self._handle(request, fault, epoch)
            finally:
                server._done()

        def _upload(self, raw: bytes) -> None:
            """`/v1/files`: a multipart form with `purpose` and `file` fields."""
            from email.parser import BytesParser
            from email.policy import HTTP

            headers = {name.lower(): value for name, value in self.headers.items()}
            request, _ = server._record(self.path, None, headers)
            try:
                message = BytesParser(policy=HTTP).parsebytes(
                    f"Content-Type: {self.headers.get('Content-Type')}\r\n\r\n".encode() + raw)
                fields = {part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
                          for part in message.iter_parts()}
                if "file" not in fields:
                    self._send_json(400, {"error": {"message": "no file", "type": "invalid_request_error"}})
                    return
                purpose = (fields.get("purpose") or b"batch").decode()
                self._send_json(200, server._create_file(fields["file"], purpose))
            finally:
                server._done()

        def _handle(self, request: RecordedRequest, fault: Fault | None, epoch: int) -> None:
            if request.path not in ("/v1/chat/completions", "/v1/completions"):
                self._send_json(404, {"error": {"message": f"no route {request.path}", "type": "invalid_request_error",
                                                "code": "not_found", "param": None}})
                return
            if not isinstance(request.body, dict):
                self._send_json(400, {"error": {"message": "body is not JSON", "type": "invalid_request_error",
                                                "code": None, "param": None}})
                return
            if fault is not None and fault.kind is FaultKind.STATUS:
                headers = {}
                if fault.retry_after is not None:
                    headers["Retry-After"] = fault.retry_after
                if fault.retry_after_ms is not None:
                    headers["retry-after-ms"] = fault.retry_after_ms
                if fault.code == "insufficient_quota":
                    error_type = "insufficient_quota"
                else:
                    error_type = "server_error" if fault.status >= 500 else "invalid_request_error"
                self._send_json(fault.status, {"error": {"message": fault.message, "type": error_type,
                                                         "code": fault.code, "param": None}}, headers)
                return
            if fault is not None and fault.kind is FaultKind.HANG:
                server._sleep(fault.delay)
                self.close_connection = True
                return
            if fault is not None and fault.kind is FaultKind.SLOW:
                server._sleep(fault.delay)
            server._sleep(server.latency)
            if fault is not None and fault.kind is FaultKind.MALFORMED_JSON:
                self._send_raw(200, b'{"id": "cmpl-broken", "choices": [{"text": "unterminated', "application/json")
                return
            rewrite = fault.rewrite if fault is not None and fault.kind is FaultKind.GARBLED else None
            payload = server._answer(request.path, request.body, rewrite)
            answer = json.dumps(payload).encode()
            if fault is not None and fault.kind in (FaultKind.RESET, FaultKind.TRUNCATED):
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer[: len(answer) // 2])
                self.wfile.flush()
                if fault.kind is FaultKind.RESET:
                    # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                return
            self._send_raw(200, answer, "application/json")
            server._delivered(payload, epoch)

        def _send_json(self, status: int, payload: dict[str, Any], headers: Mapping[str, str] | None = None) -> None:
            self._send_raw(status, json.dumps(payload).encode(), "application/json", headers)

        def _send_raw(self, status: int, payload: bytes, content_type: str,
                      headers: Mapping[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            # One write for headers and body: fewer wake-ups of the client per answer.
            self._headers_buffer.append(b"\r\n" + payload)
            self.flush_headers()

    return Handler


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAIServer]:
    """A fresh FakeOpenAIServer for one test; script it through its attributes, it is closed afterwards."""
    server = FakeOpenAIServer()
    try:
        yield server
    finally:
        server.close()


def main() -> None:
    """Serve from a separate process (benchmarks): prints the base URL, serves until stdin closes."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description="Fake OpenAI-compatible server on 127.0.0.1")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every answer")
    args = parser.parse_args()
    with FakeOpenAIServer(latency=args.latency) as server:
        print(server.base_url, flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()


__all__ = ["BatchOutcome", "Fault", "FaultKind", "FakeOpenAIServer", "PromptScorer", "RecordedRequest", "Reply", "ScriptedToken",
           "default_prompt_scorer", "fake_openai", "fake_tokenize"]
