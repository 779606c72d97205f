"""Slot distributions from an in-process causal LM, exact and fast.

What makes it fast (scripts/bench_llm.py measures it against `reference_slot_distributions`):
- the KV cache of a shared prefix is computed once per prefix text and reused across prompts and calls;
- prompts run in right-padded batches, one forward pass per batch;
- logits are computed only at slot positions (hidden states are gathered first, then the LM head applied);
- multi-token candidates ("10" = "1","0" on SmolLM2) are scored exactly in the same pass: after each slot the
  candidates' leading tokens are appended to the row as extra positions that see only the text before their
  slot (a custom 4D attention mask and explicit position ids), so P("10") = P("1" | ctx) * P("0" | ctx, "1").

Prompts are tokenised piece by piece (prefix with the tokenizer's special tokens, every piece without) and the
ids joined, so slot positions are exact and no token spans a slot boundary.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from neuron_explainer.llm.base import SlotPrompt

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CandidateTrie:
    """Candidate token sequences as a trie; inner nodes are the tokens appended after every slot."""

    extension_tokens: tuple[int, ...]
    """Token of each appended position (trie nodes that have children), in order."""
    extension_parent: tuple[int, ...]
    """Index of each appended position's parent appended position, -1 when its parent is the slot itself."""
    extension_depth: tuple[int, ...]
    """1 for a candidate's first token, 2 for its second, ..."""
    paths: tuple[tuple[tuple[int, int], ...], ...]
    """Per candidate: (source, token) pairs; source -1 = the slot's logits, k = appended position k's logits."""

    @classmethod
    def build(cls, candidate_ids: Sequence[Sequence[int]]) -> CandidateTrie:
        """The trie of candidate token sequences."""
        node_of: dict[tuple[int, ...], int] = {}
        tokens: list[int] = []
        parents: list[int] = []
        depths: list[int] = []
        paths = []
        for ids in candidate_ids:
            path = []
            for depth, token in enumerate(ids):
                source = -1 if depth == 0 else node_of[tuple(ids[:depth])]
                path.append((source, token))
                # Every token but the last of a candidate must be appended so its successor can be read.
                if depth < len(ids) - 1 and tuple(ids[: depth + 1]) not in node_of:
                    node_of[tuple(ids[: depth + 1])] = len(tokens)
                    tokens.append(token)
                    parents.append(source)
                    depths.append(depth + 1)
            paths.append(tuple(path))
        return cls(tuple(tokens), tuple(parents), tuple(depths), tuple(paths))

    def ancestors_or_self(self) -> list[list[bool]]:
        """[k][j]: appended position k may attend to appended position j (same chain)."""
        size = len(self.extension_tokens)
        matrix = [[False] * size for _ in range(size)]
        for node in range(size):
            current = node
            while current != -1:
                matrix[node][current] = True
                current = self.extension_parent[current]
        return matrix


@dataclass
class _Prefix:
    """Cached state after a prefix: per-layer keys/values for batch size 1 and the last hidden state."""

    ids: list[int]
    key_values: list[tuple[Any, Any]]
    last_hidden: Any


@dataclass
class _Row:
    """One prompt laid out for the batched pass."""

    index: int
    suffix: list[int]
    slot_ends: list[int]
    """Per slot: number of suffix tokens before the slot."""


def tokenize_slot_prompt(tokenizer: Any, prompt: SlotPrompt) -> tuple[list[int], list[int], list[int]]:
    """(prefix ids, suffix ids, per slot the count of suffix ids before it); pieces tokenised separately."""
    prefix_ids = list(tokenizer(prompt.prefix, add_special_tokens=True)["input_ids"])
    suffix: list[int] = []
    slot_ends = []
    for number, piece in enumerate(prompt.pieces):
        if piece:
            suffix.extend(tokenizer(piece, add_special_tokens=False)["input_ids"])
        if number < len(prompt.pieces) - 1:
            slot_ends.append(len(suffix))
    return prefix_ids, suffix, slot_ends


def tokenize_candidates(tokenizer: Any, candidates: Sequence[str]) -> list[list[int]]:
    """Each candidate's ids, tokenised like a prompt piece; raises ValueError for one that yields no token."""
    ids = [list(tokenizer(candidate, add_special_tokens=False)["input_ids"]) for candidate in candidates]
    empty = [candidate for candidate, tokens in zip(candidates, ids) if not tokens]
    if empty:
        raise ValueError(f"candidates {empty!r} tokenise to nothing")
    return ids


def _head(model: Any, hidden: Any) -> Any:
    """Logits from final hidden states, with the head post-processing some configs declare."""
    import torch

    logits = model.get_output_embeddings()(hidden)
    config = model.config.get_text_config()
    scaling = getattr(config, "logits_scaling", None)
    if scaling:
        logits = logits / scaling
    softcap = getattr(config, "final_logit_softcapping", None)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


class SlotScorer:
    """Batched, prefix-cached, slot-only scoring of candidate strings (see the module docstring)."""

    def __init__(self, model: Any, tokenizer: Any, *, batch_size: int = 8, max_cached_prefixes: int = 4) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_cached_prefixes = max_cached_prefixes
        self._prefixes: OrderedDict[str, _Prefix] = OrderedDict()
        self.prefix_computations = 0
        """How many prefix KV caches were computed (the rest were reused)."""
        self.last_prompt_tokens = 0
        """Prompt tokens (prefix + suffix, per prompt) of the last `score` call."""

    def clear_prefixes(self) -> None:
        """Forget the cached prefix KV states."""
        self._prefixes.clear()

    @property
    def _device(self) -> Any:
        return next(self.model.parameters()).device

    def _prefix(self, text: str) -> _Prefix:
        import torch
        from transformers import DynamicCache

        if text in self._prefixes:
            self._prefixes.move_to_end(text)
            return self._prefixes[text]
        ids = list(self.tokenizer(text, add_special_tokens=True)["input_ids"])
        if ids:
            cache = DynamicCache(config=self.model.config)
            output = self.model.base_model(input_ids=torch.tensor([ids], device=self._device), cache=cache,
                                           use_cache=True)
            key_values = [(layer.keys, layer.values) for layer in output.cache.layers]
            last_hidden = output.last_hidden_state[0, -1]
        else:
            key_values, last_hidden = [], None
        entry = _Prefix(ids=ids, key_values=key_values, last_hidden=last_hidden)
        self.prefix_computations += 1
        self._prefixes[text] = entry
        while len(self._prefixes) > self.max_cached_prefixes:
            self._prefixes.popitem(last=False)
        return entry

    def score(self, prompts: Sequence[SlotPrompt], candidates: Sequence[str]) -> list[list[dict[str, float]]]:
        """For each prompt and slot, {candidate: probability}; exact products for multi-token candidates."""
        import torch

        trie = CandidateTrie.build(tokenize_candidates(self.tokenizer, candidates))
        results: list[list[dict[str, float]]] = [[] for _ in prompts]
        by_prefix: dict[str, list[_Row]] = {}
        self.last_prompt_tokens = 0
        for index, prompt in enumerate(prompts):
            prefix_ids, suffix, slot_ends = tokenize_slot_prompt(self.tokenizer, prompt)
            self.last_prompt_tokens += len(prefix_ids) + len(suffix)
            if slot_ends:
                # Tokens after the last slot cannot change any slot's distribution (causal attention).
                by_prefix.setdefault(prompt.prefix, []).append(_Row(index, suffix[: slot_ends[-1]], slot_ends))
        with torch.inference_mode():
            for prefix_text, rows in by_prefix.items():
                prefix = self._prefix(prefix_text)
                if not prefix.ids and any(row.slot_ends[0] == 0 for row in rows):
                    raise ValueError("a slot has no text before it; give the prompt a prefix or a first piece")
                rows.sort(key=lambda row: len(row.suffix) + len(row.slot_ends))
                for start in range(0, len(rows), self.batch_size):
                    batch = rows[start: start + self.batch_size]
                    for row, distributions in zip(batch, self._score_batch(prefix, batch, trie, candidates)):
                        results[row.index] = distributions
        return results

    def _score_batch(self, prefix: _Prefix, rows: list[_Row], trie: CandidateTrie,
                     candidates: Sequence[str]) -> list[list[dict[str, float]]]:
        import torch
        from transformers import DynamicCache

        device, dtype = self._device, next(self.model.parameters()).dtype
        prefix_length = len(prefix.ids)
        extensions = len(trie.extension_tokens)
        ancestry = torch.tensor(trie.ancestors_or_self(), dtype=torch.bool) if extensions else None
        lengths = [len(row.suffix) + len(row.slot_ends) * extensions for row in rows]
        width = max(lengths)
        batch = len(rows)
        input_ids = torch.zeros(batch, width, dtype=torch.long)
        positions = torch.full((batch, width), prefix_length, dtype=torch.long)
        allowed = torch.zeros(batch, width, prefix_length + width, dtype=torch.bool)
        allowed[:, :, :prefix_length] = True
        extension_tokens = torch.tensor(trie.extension_tokens, dtype=torch.long)
        extension_offsets = torch.tensor(trie.extension_depth, dtype=torch.long) - 1
        for row_number, row in enumerate(rows):
            suffix_length, slots = len(row.suffix), len(row.slot_ends)
            input_ids[row_number, :suffix_length] = torch.tensor(row.suffix, dtype=torch.long)
            positions[row_number, :suffix_length] = prefix_length + torch.arange(suffix_length)
            main = slice(prefix_length, prefix_length + suffix_length)
            allowed[row_number, :suffix_length, main] = torch.ones(suffix_length, suffix_length,
                                                                   dtype=torch.bool).tril()
            if extensions:
                appended = slots * extensions
                block = slice(suffix_length, suffix_length + appended)
                slot_ends = torch.tensor(row.slot_ends, dtype=torch.long)
                input_ids[row_number, block] = extension_tokens.repeat(slots)
                positions[row_number, block] = (prefix_length + slot_ends[:, None]
                                                + extension_offsets[None, :]).reshape(-1)
                # An appended token sees the suffix up to its slot, and its own chain of appended tokens.
                visible = slot_ends.repeat_interleave(extensions)
                allowed[row_number, block, main] = torch.arange(suffix_length)[None, :] < visible[:, None]
                allowed[row_number, block, prefix_length + suffix_length: prefix_length + suffix_length + appended] = \
                    torch.kron(torch.eye(slots, dtype=torch.long), ancestry.long()).bool()
            # Padding rows attend to themselves so no softmax row is empty (which would give NaN).
            padding = torch.arange(lengths[row_number], width)
            allowed[row_number, padding, prefix_length + padding] = True
        mask = torch.zeros(allowed.shape, dtype=dtype)
        mask.masked_fill_(~allowed, torch.finfo(dtype).min)
        cache = None
        if prefix.key_values:
            cache = DynamicCache(ddp_cache_data=[(keys.expand(batch, -1, -1, -1), values.expand(batch, -1, -1, -1))
                                                 for keys, values in prefix.key_values], config=self.model.config)
        output = self.model.base_model(input_ids=input_ids.to(device), attention_mask=mask[:, None].to(device),
                                       position_ids=positions.to(device), cache=cache, use_cache=cache is not None)
        hidden = output.last_hidden_state
        results = []
        for row_number, row in enumerate(rows):
            suffix_length, slots = len(row.suffix), len(row.slot_ends)
            slot_queries = [end - 1 for end in row.slot_ends]
            gathered = [prefix.last_hidden[None] if query < 0 else hidden[row_number, query][None]
                        for query in slot_queries]
            if extensions:
                gathered.append(hidden[row_number, suffix_length: suffix_length + slots * extensions])
            logprobs = torch.log_softmax(_head(self.model, torch.cat(gathered)).float(), dim=-1).cpu()
            slot_logprobs = logprobs[:slots]
            extension_logprobs = logprobs[slots:].reshape(slots, extensions, -1) if extensions else None
            distributions = []
            for slot in range(slots):
                distribution = {}
                for candidate, path in zip(candidates, trie.paths):
                    total = 0.0
                    for source, token in path:
                        table = slot_logprobs[slot] if source < 0 else extension_logprobs[slot, source]
                        total += float(table[token])
                    distribution[candidate] = math.exp(total)
                distributions.append(distribution)
            results.append(distributions)
        return results


def reference_slot_distributions(model: Any, tokenizer: Any, prompts: Sequence[SlotPrompt],
                                 candidates: Sequence[str], *,
                                 exact_multitoken: bool = True) -> list[list[dict[str, float]]]:
    """The slow, obvious computation: one prompt at a time, full forward pass, logits for every token.

    Multi-token candidates take one more full forward pass per slot and candidate prefix; with
    `exact_multitoken=False` they get only their first token's probability (cheaper, not exact).
    For tests and benchmarks of SlotScorer.
    """
    import torch

    candidate_ids = tokenize_candidates(tokenizer, candidates)
    device = next(model.parameters()).device

    def logprobs_of(ids: list[int]) -> Any:
        logits = model(input_ids=torch.tensor([ids], device=device)).logits[0]
        return torch.log_softmax(logits.float(), dim=-1).cpu()

    results = []
    with torch.inference_mode():
        for prompt in prompts:
            prefix_ids, suffix, slot_ends = tokenize_slot_prompt(tokenizer, prompt)
            full = prefix_ids + suffix
            table = logprobs_of(full)
            distributions = []
            for end in slot_ends:
                context = full[: len(prefix_ids) + end]
                distribution = {}
                for candidate, ids in zip(candidates, candidate_ids):
                    total = float(table[len(context) - 1, ids[0]])
                    if exact_multitoken and len(ids) > 1:
                        continued = logprobs_of(context + ids[:-1])
                        for depth in range(1, len(ids)):
                            total += float(continued[len(context) + depth - 1, ids[depth]])
                    distribution[candidate] = math.exp(total)
                distributions.append(distribution)
            results.append(distributions)
    return results
