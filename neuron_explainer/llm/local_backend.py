"""`local:MODEL`: an in-process transformers causal LM behind LLMBackend (batched generation, exact slot reads).

Models load through subject.loading (HF ids, directories, .gguf files, `default` = the bundled SmolLM2), so the
recorder and this backend share one loader and one converted-GGUF cache. Model calls run in a worker thread,
one at a time, so the event loop stays free for other backends.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

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
from neuron_explainer.llm.ledger import UsageLedger
from neuron_explainer.llm.local_slots import SlotScorer

logger = logging.getLogger(__name__)

T = TypeVar("T")
MAX_LOCAL_TOP_LOGPROBS = 20
SLOT_BATCHES_PER_CALL = 4


class LocalBackend(LLMBackend):
    """A transformers causal LM run in this process."""

    def __init__(self, model_spec: str, *, device: str = "auto", dtype: str = "auto", batch_size: int = 8,
                 cache: ResponseCache | None = None, ledger: UsageLedger | None = None,
                 loaded: Any | None = None) -> None:
        """Load `model_spec` (or use an already `loaded` subject.loading.LoadedModel)."""
        from neuron_explainer.subject.loading import load_model

        self.loaded = loaded or load_model(model_spec, device=device, dtype=dtype, causal_lm=True)
        """The model, tokenizer and identity."""
        if self.loaded.is_encoder:
            raise UserError(f"local:{model_spec} is an encoder model; an LLM backend needs a causal language model")
        self.name = f"local:{model_spec}"
        self.model = self.loaded.model_id
        self.batch_size = batch_size
        """Prompts per forward pass."""
        self.cache = cache
        """Response cache (None = none)."""
        self.ledger = ledger
        """Usage ledger (None = not recorded)."""
        config = self.loaded.model.config.get_text_config()
        self.capabilities = Capabilities(
            chat=True, completion=True, generated_logprobs=True, slot_distributions=True,
            max_top_logprobs=MAX_LOCAL_TOP_LOGPROBS, batching=True,
            context_window=int(getattr(config, "max_position_embeddings", None) or 2048), slot_multitoken_exact=True)
        self.scorer = SlotScorer(self.loaded.model, self.loaded.tokenizer, batch_size=batch_size)
        """The batched, prefix-cached slot scorer."""
        self._lock = threading.Lock()
        self._last_slot_tokens = 0
        dtype_name = str(next(self.loaded.model.parameters()).dtype).removeprefix("torch.")
        self._identity = {"backend": "local", "model": self.model, "fingerprint": self.loaded.fingerprint,
                          "dtype": dtype_name}

    async def _in_thread(self, function: Callable[..., T], *args: Any) -> T:
        def locked() -> T:
            with self._lock:
                return function(*args)

        return await asyncio.to_thread(locked)

    async def _generate_in_thread(self, *args: Any) -> list[GenerateResult]:
        """`_generate_batch` in the worker thread, stopped within a token when the awaiting task is cancelled
        (Ctrl-C): otherwise the process would wait for the whole batch before it could exit."""
        cancelled = threading.Event()
        try:
            return await self._in_thread(self._generate_batch, *args, cancelled)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    # -- generation --------------------------------------------------------------------------------------------
    async def generate(self, prompt: Prompt, *, n: int = 1, temperature: float = 0.0, max_tokens: int = 256,
                       stop: Sequence[str] | None = None, seed: int | None = None,
                       top_logprobs: int = 0) -> GenerateResult:
        """Generate `n` answers (greedy at temperature 0); chat prompts use the model's chat template."""
        results = await self.generate_many([prompt], n=n, temperature=temperature, max_tokens=max_tokens, stop=stop,
                                           seed=seed, top_logprobs=top_logprobs)
        return results[0]

    async def generate_many(self, prompts: Sequence[Prompt], *, n: int = 1, temperature: float = 0.0,
                            max_tokens: int = 256, stop: Sequence[str] | None = None, seed: int | None = None,
                            top_logprobs: int = 0) -> list[GenerateResult]:
        """Generate for many prompts in left-padded batches of `batch_size`.

        With a seed, sampled answers are reproducible for the same prompts in the same batches.
        """
        top_logprobs = min(max(top_logprobs, 0), MAX_LOCAL_TOP_LOGPROBS)
        settings = {"n": n, "temperature": temperature, "max_tokens": max_tokens, "stop": list(stop or []),
                    "seed": seed, "top_logprobs": top_logprobs}
        deterministic = temperature == 0 or seed is not None
        results: list[GenerateResult | None] = [None] * len(prompts)
        keys: list[str | None] = [None] * len(prompts)
        pending = []
        for index, prompt in enumerate(prompts):
            if self.cache is not None and deterministic:
                keys[index] = cache_key({**self._identity, "operation": "generate", "prompt": _prompt_json(prompt),
                                         **settings})
                cached = self.cache.get(keys[index])
                if cached is not None:
                    results[index] = GenerateResult(generations=tuple(_generation_from_json(item) for item in cached),
                                                    usage=Usage(), from_cache=True)
                    self._record("generate", 0, 0, 0.0, from_cache=True)
                    continue
            pending.append(index)
        for start in range(0, len(pending), self.batch_size):
            chunk = pending[start: start + self.batch_size]
            started = time.monotonic()
            batch_results = await self._generate_in_thread([prompts[index] for index in chunk], n, temperature,
                                                           max_tokens, list(stop or []), seed, top_logprobs)
            latency = (time.monotonic() - started) / len(chunk)
            for index, result in zip(chunk, batch_results):
                results[index] = result
                if keys[index] is not None and self.cache is not None:
                    self.cache.put(keys[index], [_generation_json(item) for item in result.generations],
                                   backend=self.name, model=self.model)
                self._record("generate", result.usage.prompt_tokens, result.usage.completion_tokens, latency,
                             from_cache=False)
        return [result for result in results if result is not None]

    def _prompt_ids(self, prompt: Prompt) -> list[int]:
        tokenizer = self.loaded.tokenizer
        if isinstance(prompt, str):
            return list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
        messages = [{"role": message.role, "content": message.content} if isinstance(message, Message)
                    else {"role": message["role"], "content": message["content"]} for message in prompt]
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return list(tokenizer(text, add_special_tokens=False)["input_ids"])
        text = "".join(f"{message['role']}: {message['content']}\n" for message in messages) + "assistant:"
        return list(tokenizer(text, add_special_tokens=True)["input_ids"])

    def _generate_batch(self, prompts: Sequence[Prompt], n: int, temperature: float, max_tokens: int,
                        stop: list[str], seed: int | None, top_logprobs: int,
                        cancelled: threading.Event | None = None) -> list[GenerateResult]:
        import torch
        from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

        class _Cancelled(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                stop_now = cancelled is not None and cancelled.is_set()
                return torch.full((input_ids.shape[0],), stop_now, dtype=torch.bool, device=input_ids.device)

        model, tokenizer = self.loaded.model, self.loaded.tokenizer
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos_ids), 0)
        prompt_ids = [self._prompt_ids(prompt) for prompt in prompts]
        width = max(len(ids) for ids in prompt_ids)
        input_ids = torch.full((len(prompt_ids), width), pad, dtype=torch.long)
        attention = torch.zeros((len(prompt_ids), width), dtype=torch.long)
        for row, ids in enumerate(prompt_ids):
            # Left padding: every row's next token is generated at the same column.
            input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            attention[row, width - len(ids):] = 1
        sampling = temperature > 0
        # Greedy answers are all the same: generate one and repeat it.
        sequences_per_prompt = n if sampling else 1
        config = GenerationConfig(
            max_new_tokens=max_tokens, do_sample=sampling, temperature=temperature if sampling else None,
            top_p=1.0 if sampling else None, top_k=0 if sampling else None, num_return_sequences=sequences_per_prompt,
            pad_token_id=pad, eos_token_id=list(eos_ids) or None, return_dict_in_generate=True,
            output_logits=top_logprobs > 0, stop_strings=stop or None)
        if sampling:
            torch.manual_seed(seed if seed is not None else torch.seed())
        device = self.loaded.device
        with torch.inference_mode():
            output = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                                    generation_config=config, tokenizer=tokenizer if stop else None,
                                    stopping_criteria=StoppingCriteriaList([_Cancelled()]))
        new_tokens = output.sequences[:, width:].cpu()
        step_logprobs = [torch.log_softmax(step.float(), dim=-1).cpu() for step in output.logits] \
            if top_logprobs > 0 else None
        results = []
        for row, ids in enumerate(prompt_ids):
            generations, completion_tokens = [], 0
            for choice in range(n):
                sequence = row * sequences_per_prompt + (choice if sampling else 0)
                tokens = new_tokens[sequence].tolist()
                length = next((position for position, token in enumerate(tokens) if token in eos_ids), len(tokens))
                finish_reason = "stop" if length < len(tokens) else "length"
                text = tokenizer.decode(tokens[:length], skip_special_tokens=True)
                for marker in stop:
                    if marker in text:
                        text, finish_reason = text[: text.index(marker)], "stop"
                if sampling or choice == 0:
                    completion_tokens += min(length + 1, len(tokens))
                logprobs = None
                if step_logprobs is not None:
                    logprobs = tuple(_token_logprob(tokenizer, step_logprobs[step][sequence], tokens[step],
                                                    top_logprobs) for step in range(length))
                generations.append(Generation(text=text, logprobs=logprobs, finish_reason=finish_reason))
            results.append(GenerateResult(generations=tuple(generations),
                                          usage=Usage(prompt_tokens=len(ids), completion_tokens=completion_tokens)))
        return results

    # -- slots -------------------------------------------------------------------------------------------------
    async def slot_distributions(self, prompts: Sequence[SlotPrompt],
                                 candidates: Sequence[str]) -> list[list[dict[str, float]]]:
        """Exact candidate probabilities at every slot, batched with the prefix KV cache reused."""
        results: list[list[dict[str, float]] | None] = [None] * len(prompts)
        keys: list[str | None] = [None] * len(prompts)
        pending = []
        for index, prompt in enumerate(prompts):
            if self.cache is not None:
                keys[index] = cache_key({**self._identity, "operation": "slots", "prefix": prompt.prefix,
                                         "pieces": list(prompt.pieces), "candidates": list(candidates)})
                cached = self.cache.get(keys[index])
                if cached is not None:
                    results[index] = cached
                    self._record("slots", 0, 0, 0.0, from_cache=True)
                    continue
            pending.append(index)
        # A few batches per worker-thread call: cancelling the caller takes effect between chunks.
        chunk_size = self.batch_size * SLOT_BATCHES_PER_CALL
        for start in range(0, len(pending), chunk_size):
            chunk = pending[start: start + chunk_size]
            started = time.monotonic()
            scored = await self._in_thread(self._score_chunk, [prompts[index] for index in chunk], list(candidates))
            for index, distributions in zip(chunk, scored):
                results[index] = distributions
                if keys[index] is not None and self.cache is not None:
                    self.cache.put(keys[index], distributions, backend=self.name, model=self.model)
            self._record("slots", self._last_slot_tokens, 0, time.monotonic() - started, from_cache=False)
        return [result if result is not None else [] for result in results]

    def _score_chunk(self, prompts: list[SlotPrompt], candidates: list[str]) -> list[list[dict[str, float]]]:
        scored = self.scorer.score(prompts, candidates)
        self._last_slot_tokens = self.scorer.last_prompt_tokens
        return scored

    def _record(self, operation: str, prompt_tokens: int, completion_tokens: int, latency: float, *,
                from_cache: bool) -> None:
        if self.ledger is not None:
            self.ledger.record(backend=self.name, model=self.model, operation=operation, prompt_tokens=prompt_tokens,
                               completion_tokens=completion_tokens, latency_s=latency, from_cache=from_cache,
                               free=True)

    async def aclose(self) -> None:
        """Drop cached prefixes (the model is freed with the backend)."""
        self.scorer.clear_prefixes()


def _token_logprob(tokenizer: Any, logprobs: Any, token: int, top: int) -> TokenLogprob:
    import torch

    values, indices = torch.topk(logprobs, top)
    return TokenLogprob(token=tokenizer.decode([token]), logprob=float(logprobs[token]),
                        top=tuple((tokenizer.decode([int(index)]), float(value))
                                  for value, index in zip(values.tolist(), indices.tolist())))


def _prompt_json(prompt: Prompt) -> Any:
    if isinstance(prompt, str):
        return prompt
    return [{"role": message.role, "content": message.content} if isinstance(message, Message) else dict(message)
            for message in prompt]


def _generation_json(generation: Generation) -> dict[str, Any]:
    return {"text": generation.text, "finish_reason": generation.finish_reason,
            "logprobs": None if generation.logprobs is None else
            [[item.token, item.logprob, [list(pair) for pair in item.top]] for item in generation.logprobs]}


def _generation_from_json(document: dict[str, Any]) -> Generation:
    logprobs = None
    if document.get("logprobs") is not None:
        logprobs = tuple(TokenLogprob(token=token, logprob=logprob, top=tuple((alt, value) for alt, value in top))
                         for token, logprob, top in document["logprobs"])
    return Generation(text=document["text"], logprobs=logprobs, finish_reason=document.get("finish_reason"))
