"""The OpenAI Batch API behind LLMBackend (`run --batch`): half price, answers within a day, resumable.

`generate` calls are collected for a moment (`flush_after_s` without a new one, or `max_batch_requests`), written as
one JSONL file, uploaded (`/v1/files`), submitted (`/v1/batches`), polled, and the output lines are matched back to
their callers by `custom_id` (the request's response-cache key). Every step is written to a journal (a
`BatchJournal`: the pipeline passes one kept in the results database, `FileBatchJournal` is a stand-alone SQLite
file) before the next one, so a night killed at any point picks up its
uploaded files and running batches instead of paying for them again; a batch created just before a kill (id not yet
journaled) is found again by its input file among the server's batches. Lines that failed, could not be read, or
were not done when a batch expired or was cancelled are resubmitted alone, up to `max_attempts` times. Identical
requests are served by the response cache at zero cost; each answer is billed in the ledger at the price table's
batch rate.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from neuron_explainer.llm.base import GenerateResult, LLMBackend, Prompt
from neuron_explainer.llm.errors import LLMFatalError, LLMTransientError
from neuron_explainer.llm.openai_backend import CHAT_PATH, OpenAIBackend, read_generate_answer
from neuron_explainer.llm.retry import RetryableFailure, call_with_retries

logger = logging.getLogger(__name__)

FINAL_STATES = ("completed", "expired", "cancelled", "failed")
"""Batch statuses after which nothing more will be answered."""
DEFAULT_BATCH_DISCOUNT = 0.5


@dataclass(frozen=True)
class BatchSettings:
    """How requests are grouped into batches and how batches are watched."""

    flush_after_s: float = 2.0
    """Submit the collected requests once no new one arrived for this long."""
    max_batch_requests: int = 50_000
    """Most requests in one batch (the API's limit)."""
    poll_interval_s: float = 30.0
    """Seconds between status checks of a running batch."""
    max_attempts: int = 3
    """Times one request is submitted before its caller gets an error."""
    completion_window: str = "24h"
    """The Batch API's completion window."""


class BatchJournal(Protocol):
    """Where a batch backend records what it uploaded and submitted, so that a later process picks it up; each
    call must be durable when it returns."""

    def uploaded(self, input_file_id: str, endpoint: str, custom_ids: Sequence[str]) -> None:
        """An input file holding these requests is on the server (no batch yet)."""

    def submitted(self, input_file_id: str, batch_id: str) -> None:
        """A batch runs over the file."""

    def harvested(self, input_file_id: str) -> None:
        """Everything the file's batch answered has been read."""

    def open_files(self) -> dict[str, tuple[str | None, set[str]]]:
        """input file id -> (batch id or None, custom ids) of the files this process may pick up."""

    def close(self) -> None:
        """Release what the journal holds open."""


class FileBatchJournal:
    """A `BatchJournal` in a SQLite file of its own (for backends used without a results database)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._connection = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False, isolation_level=None)
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute(
            "CREATE TABLE IF NOT EXISTS llm_batch_files (input_file_id TEXT PRIMARY KEY, endpoint TEXT NOT NULL, "
            "batch_id TEXT, status TEXT NOT NULL, created_at REAL NOT NULL)")
        self._connection.execute(
            "CREATE TABLE IF NOT EXISTS llm_batch_requests (custom_id TEXT NOT NULL, input_file_id TEXT NOT NULL, "
            "PRIMARY KEY (custom_id, input_file_id))")

    def uploaded(self, input_file_id: str, endpoint: str, custom_ids: Sequence[str]) -> None:
        """An input file is on the server (no batch yet)."""
        with self._lock:
            self._connection.execute("BEGIN")
            self._connection.execute("INSERT INTO llm_batch_files VALUES (?, ?, NULL, 'uploaded', ?)",
                                     (input_file_id, endpoint, time.time()))
            self._connection.executemany("INSERT OR IGNORE INTO llm_batch_requests VALUES (?, ?)",
                                         [(custom_id, input_file_id) for custom_id in custom_ids])
            self._connection.execute("COMMIT")

    def submitted(self, input_file_id: str, batch_id: str) -> None:
        """A batch runs over the file."""
        with self._lock:
            self._connection.execute("UPDATE llm_batch_files SET batch_id = ?, status = 'submitted' "
                                     "WHERE input_file_id = ?", (batch_id, input_file_id))

    def harvested(self, input_file_id: str) -> None:
        """Everything the batch answered has been read (answers are in the response cache)."""
        with self._lock:
            self._connection.execute("UPDATE llm_batch_files SET status = 'harvested' WHERE input_file_id = ?",
                                     (input_file_id,))

    def open_files(self) -> dict[str, tuple[str | None, set[str]]]:
        """input file id -> (batch id or None, custom ids) of every file not yet harvested."""
        with self._lock:
            files = self._connection.execute(
                "SELECT input_file_id, batch_id FROM llm_batch_files WHERE status != 'harvested'").fetchall()
            found: dict[str, tuple[str | None, set[str]]] = {}
            for input_file_id, batch_id in files:
                ids = {row[0] for row in self._connection.execute(
                    "SELECT custom_id FROM llm_batch_requests WHERE input_file_id = ?", (input_file_id,))}
                found[input_file_id] = (batch_id, ids)
            return found

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._connection.close()


@dataclass
class _Pending:
    """One request waiting for its batch."""

    custom_id: str
    path: str
    operation: str
    body: dict[str, Any]
    top_logprobs: int
    futures: list[asyncio.Future[GenerateResult]] = field(default_factory=list)
    attempts: int = 0
    context: contextvars.Context = field(default_factory=contextvars.copy_context)
    """The first caller's context: its ledger entry is labelled with that caller's stage and neuron."""


class OpenAIBatchBackend(LLMBackend):
    """The requests of an `OpenAIBackend`, sent through the Batch API instead of one by one."""

    def __init__(self, inner: OpenAIBackend, journal: BatchJournal, *, settings: BatchSettings = BatchSettings(),
                 batch_discount: float | None = None) -> None:
        self.inner = inner
        """The backend whose requests, cache, ledger and connection settings are used."""
        self.name = inner.name
        self.model = inner.model
        # Batches carry chat requests only: no prompt-logprob slots, no raw-text completions.
        self.capabilities = dataclasses.replace(inner.capabilities, slot_distributions=False, completion=False)
        self.journal = journal
        """Where uploads and batches are recorded."""
        self.settings = settings
        self._discount = batch_discount
        self._queue: dict[str, _Pending] = {}
        self._waiting: dict[str, _Pending] = {}
        self._last_arrival = 0.0
        self._flusher: asyncio.Task[None] | None = None
        self._watchers: set[asyncio.Task[None]] = set()
        self._recorded: set[str] = set()

    # -- LLMBackend ---------------------------------------------------------------------------------------------
    async def generate(self, prompt: Prompt, *, n: int = 1, temperature: float = 0.0, max_tokens: int = 256,
                       stop: Sequence[str] | None = None, seed: int | None = None,
                       top_logprobs: int = 0) -> GenerateResult:
        """Queue the request for the next batch and wait for its answer (the cache answers identical ones)."""
        path, operation, body = self.inner.generate_request(
            prompt, n=n, temperature=temperature, max_tokens=max_tokens, stop=stop, seed=seed,
            top_logprobs=top_logprobs)
        key = self.inner.request_key(path, body)
        cache = self.inner.cache
        if cache is not None:
            cached = cache.get(key)
            if cached is not None:
                self._record(operation, {}, from_cache=True)
                return read_generate_answer(cached, path, top_logprobs=top_logprobs, from_cache=True)
        future: asyncio.Future[GenerateResult] = asyncio.get_running_loop().create_future()
        pending = self._waiting.get(key) or self._queue.get(key)
        if pending is None:
            pending = _Pending(key, path, operation, body, top_logprobs)
            self._queue[key] = pending
        pending.futures.append(future)
        self._last_arrival = time.monotonic()
        self._start()
        return await future

    async def aclose(self) -> None:
        """Stop watching (a later run resumes the journaled batches) and close connections."""
        for task in [self._flusher, *self._watchers]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*(task for task in [self._flusher, *self._watchers] if task is not None),
                             return_exceptions=True)
        self._flusher = None
        self._watchers.clear()
        self.journal.close()
        await self.inner.aclose()

    # -- submitting ---------------------------------------------------------------------------------------------
    def _start(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        try:
            while self._queue:
                quiet = time.monotonic() - self._last_arrival
                if quiet < self.settings.flush_after_s and len(self._queue) < self.settings.max_batch_requests:
                    await asyncio.sleep(self.settings.flush_after_s - quiet)
                    continue
                self._answer_from_cache()
                await self._resume()
                chosen = list(self._queue.values())[:self.settings.max_batch_requests]
                for pending in chosen:
                    del self._queue[pending.custom_id]
                    self._waiting[pending.custom_id] = pending
                if chosen:
                    await self._submit(chosen)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - every waiter must hear about it, not hang
            self._fail_all(exc)

    def _answer_from_cache(self) -> None:
        """Answer queued requests that a batch harvested since they were queued (an earlier run's batch that this
        process attached to carried them)."""
        cache = self.inner.cache
        if cache is None:
            return
        for custom_id in list(self._queue):
            cached = cache.get(custom_id)
            if cached is None:
                continue
            pending = self._queue.pop(custom_id)
            result = read_generate_answer(cached, pending.path, top_logprobs=pending.top_logprobs, from_cache=True)
            for future in pending.futures:
                pending.context.run(self._record, pending.operation, {}, from_cache=True)
                if not future.done():
                    future.set_result(result)

    async def _resume(self) -> None:
        """Attach queued requests to batches an earlier process journaled (and adopt unjournaled ones)."""
        for input_file_id, (batch_id, custom_ids) in self.journal.open_files().items():
            mine = [self._queue.pop(custom_id) for custom_id in custom_ids if custom_id in self._queue]
            if not mine:
                continue
            for pending in mine:
                self._waiting[pending.custom_id] = pending
            if batch_id is None:
                batch_id = await self._find_batch(input_file_id)
                if batch_id is None:
                    logger.info("resubmitting uploaded file %s (no batch was created for it)", input_file_id)
                    await self._create_batch(input_file_id, mine)
                    continue
                self.journal.submitted(input_file_id, batch_id)
            logger.info("picking up batch %s (%d requests) from an earlier run", batch_id, len(mine))
            self._watch(batch_id, input_file_id, mine)

    async def _submit(self, chosen: list[_Pending]) -> None:
        for pending in chosen:
            pending.attempts += 1
        lines = [json.dumps({"custom_id": pending.custom_id, "method": "POST", "url": "/v1" + pending.path,
                             "body": pending.body}, ensure_ascii=False) for pending in chosen]
        data = ("\n".join(lines) + "\n").encode()
        upload = await self._api("upload", lambda client, headers: client.files.create(
            file=("requests.jsonl", data), purpose="batch", extra_headers=headers))
        self.journal.uploaded(upload.id, CHAT_PATH, [pending.custom_id for pending in chosen])
        await self._create_batch(upload.id, chosen)

    async def _create_batch(self, input_file_id: str, chosen: list[_Pending]) -> None:
        batch = await self._api("create batch", lambda client, headers: client.batches.create(
            input_file_id=input_file_id, endpoint="/v1" + CHAT_PATH, completion_window=self.settings.completion_window,
            metadata={"neuron_explainer_input": input_file_id}, extra_headers=headers))
        self.journal.submitted(input_file_id, batch.id)
        self._watch(batch.id, input_file_id, chosen)

    async def _find_batch(self, input_file_id: str) -> str | None:
        async def find(client: Any, headers: dict[str, str]) -> str | None:
            async for batch in client.batches.list(limit=100, extra_headers=headers):
                if batch.input_file_id == input_file_id:
                    return str(batch.id)
            return None

        return await self._api("list batches", find)

    # -- watching and harvesting --------------------------------------------------------------------------------
    def _watch(self, batch_id: str, input_file_id: str, chosen: list[_Pending]) -> None:
        task = asyncio.get_running_loop().create_task(self._watch_batch(batch_id, input_file_id, chosen))
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def _watch_batch(self, batch_id: str, input_file_id: str, chosen: list[_Pending]) -> None:
        try:
            while True:
                batch = await self._api("poll", lambda client, headers: client.batches.retrieve(
                    batch_id, extra_headers=headers))
                if batch.status in FINAL_STATES:
                    break
                await asyncio.sleep(self.settings.poll_interval_s)
            answered: set[str] = set()
            for file_id in (batch.output_file_id, batch.error_file_id):
                if file_id:
                    content = await self._api("download", lambda client, headers, file_id=file_id:
                                              client.files.content(file_id, extra_headers=headers))
                    answered |= self._harvest(content.text, {pending.custom_id: pending for pending in chosen})
            self.journal.harvested(input_file_id)
            retry = [pending for pending in chosen if pending.custom_id not in answered]
            if retry:
                logger.warning("batch %s ended %s with %d of %d requests unanswered; resubmitting them", batch_id,
                               batch.status, len(retry), len(chosen))
            for pending in retry:
                del self._waiting[pending.custom_id]
                if pending.attempts >= self.settings.max_attempts:
                    self._settle(pending, LLMTransientError(
                        f"{self.name}: no batch answer after {pending.attempts} submissions"))
                else:
                    self._queue[pending.custom_id] = pending
            if retry:
                self._last_arrival = 0.0
                self._start()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - the callers of this batch must hear about it
            for pending in chosen:
                self._waiting.pop(pending.custom_id, None)
                self._settle(pending, exc)

    def _harvest(self, text: str, chosen: dict[str, _Pending]) -> set[str]:
        """Answer the callers of every readable 200 line; returns their custom ids (others are retried)."""
        done: set[str] = set()
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                custom_id = str(item.get("custom_id"))
                pending = chosen.get(custom_id)
                response = item.get("response") or {}
                answer = response.get("body") if response.get("status_code") == 200 else None
                if not isinstance(answer, dict) or not answer.get("choices"):
                    continue
            except (ValueError, AttributeError):
                logger.warning("skipping a batch output line that is not JSON: %.80s", line)
                continue
            # Every answer of the file was paid for, including those of requests this process had not asked for
            # yet when it attached to an earlier run's batch: cache and count each once, so a later ask is free.
            if custom_id not in self._recorded:
                self._recorded.add(custom_id)
                if self.inner.cache is not None:
                    self.inner.cache.put(custom_id, answer, backend=self.name, model=self.model)
                operation = pending.operation if pending is not None else "chat"
                context = pending.context if pending is not None else contextvars.copy_context()
                context.run(self._record, operation, answer.get("usage") or {}, from_cache=False)
            if pending is None:
                continue
            self._waiting.pop(pending.custom_id, None)
            done.add(pending.custom_id)
            result = read_generate_answer(answer, pending.path, top_logprobs=pending.top_logprobs, from_cache=False)
            for future in pending.futures:
                if not future.done():
                    future.set_result(result)
        return done

    # -- helpers ------------------------------------------------------------------------------------------------
    async def _api(self, what: str, call: Callable[[Any, dict[str, str]], Awaitable[Any]]) -> Any:
        """One Batch/Files API call with the inner backend's retries (rate limits, 5xx, broken connections)."""
        import openai

        async def attempt() -> Any:
            state = self.inner._loop_state()
            headers = {"Authorization": f"Bearer {await self.inner._api_key()}"}
            try:
                return await call(state.client, headers)
            except openai.APIStatusError as exc:
                raise self.inner._status_failure(exc) from None
            except (openai.APITimeoutError, openai.APIConnectionError) as exc:
                raise RetryableFailure(f"{what}: {type(exc).__name__}") from None

        return await call_with_retries(attempt, policy=self.inner.settings.retry, what=f"{self.name} {what}")

    def _record(self, operation: str, usage: dict[str, Any], *, from_cache: bool) -> None:
        ledger = self.inner.ledger
        if ledger is None:
            return
        details = usage.get("prompt_tokens_details") or {}
        discount = self._discount if self._discount is not None else (
            ledger.prices.batch_discount if ledger.prices.batch_discount is not None else DEFAULT_BATCH_DISCOUNT)
        ledger.record(backend=self.name, model=self.model, operation=f"batch-{operation}",
                      prompt_tokens=int(usage.get("prompt_tokens") or 0),
                      completion_tokens=int(usage.get("completion_tokens") or 0),
                      cached_tokens=int(details.get("cached_tokens") or 0), from_cache=from_cache,
                      attempts=0 if from_cache else 1, price_factor=discount)

    def _settle(self, pending: _Pending, error: BaseException) -> None:
        failure = error if isinstance(error, Exception) else LLMFatalError(f"{self.name}: batch watcher stopped")
        for future in pending.futures:
            if not future.done():
                future.set_exception(failure)

    def _fail_all(self, error: BaseException) -> None:
        for pending in [*self._queue.values(), *self._waiting.values()]:
            self._settle(pending, error)
        self._queue.clear()
        self._waiting.clear()
