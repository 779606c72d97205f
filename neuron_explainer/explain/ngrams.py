"""Word n-grams of a corpus and each neuron's response to them: the first step of SASC and the `ngram` explainer.

Two ways to measure a neuron's response to an n-gram:

- `isolated`: the subject model reads the n-gram alone (after the tokenizer's BOS token, when it has one, and with
  the leading space its first word has mid-sentence when the tokenizer encodes spaces inside tokens) and the
  response is the largest activation over the n-gram's tokens. One batched sweep over all n-grams yields every
  neuron of every requested layer, so a layer's matrix [n-grams x neurons] is computed once and cached on disk.
- `in-context`: the n-gram's activation inside recorded windows, free after recording. Each occurrence counts the
  largest activation over the tokens it spans; an n-gram's response is the mean over its occurrences, so one lucky
  context does not outrank an n-gram that drives the neuron every time.

Max over tokens (not mean) is used throughout, including for SASC's synthetic texts, so n-gram and text responses
are in the same units: an n-gram that contains one strong token is as strong as that token.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import weakref
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from neuron_explainer.activations.records import NeuronRecord, Window
from neuron_explainer.core.errors import UserError
from neuron_explainer.core.failures import Failure
from neuron_explainer.core.neurons import NeuronId
from neuron_explainer.core.paths import cache_dir
from neuron_explainer.explain.splits import SplitConfig, oriented_record, split_neuron
from neuron_explainer.explain.types import Explanation, ExplainerKind, Polarity

logger = logging.getLogger(__name__)

# A word: letters, digits, underscores, with inner apostrophes or hyphens ("don't", "built-in").
_WORD = r"\w+(?:['\u2019\-]\w+)*"
# A phrase: words separated only by spaces or tabs; any punctuation or line break ends it, so n-grams never
# straddle a sentence, a clause or a line of code.
_PHRASE_RE = re.compile(rf"{_WORD}(?:[ \t]+{_WORD})*")
_WORD_RE = re.compile(_WORD)

CACHE_SUBDIR = "sasc-ngrams"
CACHE_FORMAT = 1
"""Bump when the cached matrix layout or the response definition changes."""
FLOAT16_LIMIT = 65504.0
"""Largest finite float16: cached responses are stored in half precision (ranking needs no more) and clipped."""


class NgramMode(str, Enum):
    """How a neuron's response to an n-gram is measured."""

    ISOLATED = "isolated"
    IN_CONTEXT = "in-context"


@dataclass(frozen=True)
class NgramConfig:
    """Which n-grams are extracted and how many of them are kept."""

    min_order: int = 1
    """Shortest n-gram, in words."""
    max_order: int = 3
    """Longest n-gram, in words."""
    max_ngrams: int = 30_000
    """Keep at most this many unique n-grams (most frequent first); bounds the isolated sweep's cost."""
    min_count: int = 1
    """Drop n-grams seen fewer times than this in the corpus."""
    top_k: int = 75
    """N-grams kept per neuron (highest response first)."""

    def __post_init__(self) -> None:
        if not 1 <= self.min_order <= self.max_order:
            raise UserError(f"n-gram orders must satisfy 1 <= min <= max (got {self.min_order}-{self.max_order})")
        for name in ("max_ngrams", "min_count", "top_k"):
            if getattr(self, name) <= 0:
                raise UserError(f"n-gram {name.replace('_', ' ')} must be positive (got {getattr(self, name)})")

    def identity(self) -> dict[str, Any]:
        """The settings that decide which n-grams exist (part of the cache key; `top_k` is not)."""
        return {"min_order": self.min_order, "max_order": self.max_order, "max_ngrams": self.max_ngrams,
                "min_count": self.min_count}


def corpus_hash(texts: Iterable[str]) -> str:
    """Content hash of a corpus given as texts (order matters, as it breaks frequency ties)."""
    digest = hashlib.sha256()
    for text in texts:
        encoded = text.encode("utf-8", errors="surrogatepass")
        digest.update(len(encoded).to_bytes(8, "little"))
        digest.update(encoded)
    return digest.hexdigest()


def extract_ngrams(texts: Iterable[str], config: NgramConfig = NgramConfig()) -> list[str]:
    """Unique word n-grams of the texts, most frequent first (ties: shorter first, then first seen).

    N-grams are words joined by single spaces; they never cross punctuation or line breaks.
    """
    counts: Counter[str] = Counter()
    for text in texts:
        for phrase in _PHRASE_RE.findall(text):
            words = phrase.split()
            for order in range(config.min_order, config.max_order + 1):
                for start in range(len(words) - order + 1):
                    counts[" ".join(words[start:start + order])] += 1
    # Counter keeps first-seen order, so enumerate() is the first-occurrence rank.
    ranked = sorted(((-count, ngram.count(" "), rank, ngram)
                     for rank, (ngram, count) in enumerate(counts.items()) if count >= config.min_count))
    return [ngram for *_, ngram in ranked[:config.max_ngrams]]


@dataclass(frozen=True)
class NeuronNgrams:
    """One neuron's strongest n-grams, the input of the SASC and `ngram` explainers."""

    neuron: NeuronId
    """The neuron."""
    polarity: Polarity
    """POSITIVE ranks by activation; NEGATIVE by negated activation (responses are stored negated)."""
    mode: NgramMode
    """How the responses were measured."""
    top_ngrams: tuple[str, ...]
    """Up to `top_k` n-grams, strongest response first."""
    top_responses: tuple[float, ...]
    """Their responses (activation units; negated for NEGATIVE polarity)."""
    std: float
    """Standard deviation of the response over all measured n-grams (SASC's unit for synthetic scores)."""
    ngram_count: int
    """Number of n-grams the ranking covered."""
    source: str
    """Provenance: the layer cache key (isolated) or `windows` (in-context)."""
    window_ids: tuple[int, ...] = ()
    """Record-store windows the responses were read from (in-context only; these must not be scored)."""
    parameters: dict[str, Any] = field(default_factory=dict)
    """N-gram settings and corpus identity, JSON-serialisable, copied into the explanation's parameters."""


@dataclass(frozen=True, eq=False)
class LayerNgramResponses:
    """Isolated responses of every neuron of one layer to every n-gram: one row per n-gram."""

    layer: int
    """Zero-based layer."""
    ngrams: tuple[str, ...]
    """The n-grams, in row order."""
    responses: np.ndarray
    """float16 [n_ngrams x neurons] (memory-mapped from the cache): max activation over each n-gram's tokens."""
    key: str
    """Cache key (model fingerprint, dtype, layer, corpus hash, n-gram settings)."""
    parameters: dict[str, Any]
    """What the key was made from, JSON-serialisable."""

    @property
    def neuron_count(self) -> int:
        """Neurons in the layer."""
        return int(self.responses.shape[1])

    @functools.cached_property
    def stds(self) -> np.ndarray:
        """Per-neuron standard deviation over n-grams (float64)."""
        # In row chunks: the matrix is memory-mapped and a float64 copy of a whole layer would be large.
        # Shifted by the first chunk's mean so the sum of squares does not cancel catastrophically.
        shift = np.asarray(self.responses[:4096], dtype=np.float64).mean(axis=0)
        total = np.zeros(self.neuron_count)
        total_squares = np.zeros(self.neuron_count)
        for start in range(0, len(self.ngrams), 4096):
            chunk = np.asarray(self.responses[start:start + 4096], dtype=np.float64) - shift
            total += chunk.sum(axis=0)
            total_squares += np.square(chunk).sum(axis=0)
        mean = total / len(self.ngrams)
        return np.sqrt(np.maximum(total_squares / len(self.ngrams) - np.square(mean), 0.0))

    def for_neuron(self, neuron: int, *, top_k: int = 75,
                   polarity: Polarity = Polarity.POSITIVE) -> NeuronNgrams:
        """The neuron's `top_k` strongest n-grams (ties broken by n-gram order, i.e. corpus frequency)."""
        if not 0 <= neuron < self.neuron_count:
            raise UserError(f"neuron {self.layer}:{neuron} out of range: layer {self.layer} has "
                            f"{self.neuron_count} neurons")
        column = np.asarray(self.responses[:, neuron], dtype=np.float64)
        if polarity is Polarity.NEGATIVE:
            column = -column
        order = np.argsort(-column, kind="stable")[:top_k]
        return NeuronNgrams(
            neuron=NeuronId(self.layer, neuron), polarity=polarity, mode=NgramMode.ISOLATED,
            top_ngrams=tuple(self.ngrams[index] for index in order),
            top_responses=tuple(float(column[index]) for index in order),
            std=float(self.stds[neuron]), ngram_count=len(self.ngrams), source=self.key,
            parameters={**self.parameters, "mode": NgramMode.ISOLATED.value, "top_k": top_k},
        )


def isolated_ngram_responses(subject: Any, layers: Sequence[int], texts: Sequence[str],
                             config: NgramConfig = NgramConfig(), *, batch_tokens: int = 4096,
                             progress: bool = False, use_cache: bool = True) -> dict[int, LayerNgramResponses]:
    """Isolated n-gram responses of every neuron of each layer, computed in one sweep and cached on disk.

    `subject` is a `Subject`; `texts` the corpus the n-grams come from. Layers found in the cache (same model
    fingerprint and dtype, layer, corpus content and n-gram settings) are loaded (memory-mapped); the others are
    computed together in one batched sweep that stops after the deepest of them.
    """
    texts = list(texts)
    ngrams = extract_ngrams(texts, config)
    if not ngrams:
        raise UserError("the corpus has no words to make n-grams from")
    word_prefix = ngram_word_prefix(subject.tokenizer)
    base = {"format": CACHE_FORMAT, "model_id": subject.loaded.model_id, "fingerprint": subject.loaded.fingerprint,
            "dtype": str(subject.dtype).removeprefix("torch."),
            "corpus_hash": corpus_hash(texts), "ngram_count": len(ngrams), "response": "max-over-tokens",
            "word_prefix": word_prefix, **config.identity()}
    found: dict[int, LayerNgramResponses] = {}
    missing: dict[int, dict[str, Any]] = {}
    for layer in sorted(set(layers)):
        parameters = {**base, "layer": layer}
        key = _cache_key(parameters)
        cached = _load_cached(key, parameters) if use_cache else None
        if cached is not None:
            found[layer] = cached
        else:
            missing[layer] = parameters
    if not missing:
        return found

    logger.info("measuring %d n-grams in isolation for layer(s) %s", len(ngrams), sorted(missing))
    root = cache_dir() / CACHE_SUBDIR
    root.mkdir(parents=True, exist_ok=True)
    staging = {layer: Path(tempfile.mkdtemp(prefix=".computing-", dir=root)) for layer in missing}
    try:
        matrices: dict[int, np.ndarray] = {}

        def allocate(layer: int, neurons: int) -> np.ndarray:
            # Written straight to disk: a full model's layers need not fit in memory at once.
            return np.lib.format.open_memmap(staging[layer] / "responses.npy", mode="w+", dtype=np.float16,
                                             shape=(len(ngrams), neurons))

        _sweep(subject, ngrams, list(missing), allocate, matrices, batch_tokens=batch_tokens, progress=progress,
               word_prefix=word_prefix)
        for layer, parameters in missing.items():
            matrices[layer].flush()
            del matrices[layer]
            (staging[layer] / "ngrams.json").write_text(json.dumps(ngrams, ensure_ascii=False), encoding="utf-8")
            (staging[layer] / "meta.json").write_text(json.dumps(parameters, sort_keys=True), encoding="utf-8")
            target = root / _cache_key(parameters)
            if not use_cache:
                shutil.rmtree(target, ignore_errors=True)
            try:
                os.replace(staging[layer], target)
            except OSError:
                # Another process finished the same layer first; its result is identical.
                shutil.rmtree(staging[layer], ignore_errors=True)
            loaded = _load_cached(_cache_key(parameters), parameters)
            if loaded is None:
                raise OSError(f"n-gram response cache {target} could not be read back")
            found[layer] = loaded
    finally:
        for directory in staging.values():
            if directory.exists():
                shutil.rmtree(directory, ignore_errors=True)
    return found


def _cache_key(parameters: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parameters, sort_keys=True).encode()).hexdigest()[:32]


def _load_cached(key: str, parameters: dict[str, Any]) -> LayerNgramResponses | None:
    directory = cache_dir() / CACHE_SUBDIR / key
    try:
        meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
        ngrams = json.loads((directory / "ngrams.json").read_text(encoding="utf-8"))
        responses = np.load(directory / "responses.npy", mmap_mode="r")
    except (OSError, ValueError):
        return None
    if meta != parameters or responses.shape[0] != len(ngrams):
        logger.warning("ignoring inconsistent n-gram response cache %s", directory)
        return None
    return LayerNgramResponses(layer=parameters["layer"], ngrams=tuple(ngrams), responses=responses, key=key,
                               parameters=parameters)


def in_context_ngram_responses(neuron: NeuronId, windows: Sequence[Window], config: NgramConfig = NgramConfig(),
                               *, polarity: Polarity = Polarity.POSITIVE) -> NeuronNgrams:
    """A neuron's n-gram responses read from recorded windows (true activations), no model run needed.

    Pass only windows that will not be scored (the explain split; `in_context_ngrams_for_record` picks them):
    their ids are kept as the explanation's source windows. NEGATIVE negates the activations.
    """
    sums: dict[str, float] = {}
    counts: Counter[str] = Counter()
    sign = -1.0 if polarity is Polarity.NEGATIVE else 1.0
    for window in windows:
        activations = np.asarray(window.activations, dtype=np.float64) * sign
        for ngram, first_token, last_token in _window_ngram_spans(window.tokens, config):
            value = float(activations[first_token:last_token + 1].max())
            sums[ngram] = sums.get(ngram, 0.0) + value
            counts[ngram] += 1
    ngrams = [ngram for ngram in sums if counts[ngram] >= config.min_count]
    means = np.array([sums[ngram] / counts[ngram] for ngram in ngrams], dtype=np.float64)
    order = np.argsort(-means, kind="stable")[:config.top_k] if len(ngrams) else np.array([], dtype=int)
    return NeuronNgrams(
        neuron=neuron, polarity=polarity, mode=NgramMode.IN_CONTEXT,
        top_ngrams=tuple(ngrams[index] for index in order),
        top_responses=tuple(float(means[index]) for index in order),
        std=float(means.std()) if len(ngrams) else float("nan"), ngram_count=len(ngrams), source="windows",
        window_ids=tuple(window.window_id for window in windows),
        parameters={**config.identity(), "mode": NgramMode.IN_CONTEXT.value, "top_k": config.top_k},
    )


def in_context_ngrams_for_record(record: NeuronRecord, *, split: SplitConfig = SplitConfig(),
                                 polarity: Polarity = Polarity.POSITIVE,
                                 config: NgramConfig = NgramConfig()) -> NeuronNgrams:
    """In-context n-gram responses from the explain split of a neuron's record (the windows the token-pair
    explainer would see), so nothing SASC reads is ever scored. NEGATIVE reads the negated bottom windows."""
    explain_windows = split_neuron(oriented_record(record, polarity), split).explain
    oriented = in_context_ngram_responses(record.neuron, explain_windows, config)
    return dataclasses.replace(oriented, polarity=polarity,
                               parameters={**oriented.parameters, "split_seed": split.seed})


def _window_ngram_spans(tokens: Sequence[str], config: NgramConfig) -> Iterable[tuple[str, int, int]]:
    """(n-gram, first token index, last token index) for every n-gram occurrence in a window's text."""
    text = "".join(tokens)
    # token_at[c] = index of the token that produced character c of the joined text.
    token_at = np.repeat(np.arange(len(tokens)), [len(token) for token in tokens])
    for phrase in _PHRASE_RE.finditer(text):
        words = [(match.group(), phrase.start() + match.start(), phrase.start() + match.end())
                 for match in _WORD_RE.finditer(phrase.group())]
        for order in range(config.min_order, config.max_order + 1):
            for start in range(len(words) - order + 1):
                span = words[start:start + order]
                ngram = " ".join(word for word, _, _ in span)
                yield ngram, int(token_at[span[0][1]]), int(token_at[span[-1][2] - 1])


NGRAM_EXPLANATION_DEFAULTS = {"top": 10, "relative_floor": 0.5, "subsumption": 0.9}
"""How the LLM-free explanation picks n-grams (recorded in its parameters)."""


def explain_ngram(ngrams: NeuronNgrams, *, top: int = 10, relative_floor: float = 0.5, subsumption: float = 0.9,
                  split_seed: int = 0) -> Explanation | Failure:
    """The LLM-free baseline explanation: the neuron's strongest n-grams quoted, e.g. `"foo", "bar baz"`.

    Only n-grams within `relative_floor` of the strongest response are shown (at most `top`), and an n-gram is
    skipped when a shorter n-gram inside it already reaches `subsumption` of its response: a response is the max
    over an n-gram's tokens, so every phrase containing the firing word ties with the word itself, and quoting
    five phrases around one word would say less than the word. A Failure when no n-gram makes the neuron fire
    (a dead neuron): its "strongest" n-grams would be arbitrary.
    """
    if not any(value > 0 for value in ngrams.top_responses):
        return Failure(ngrams.neuron, "explain",
                       f"no word n-gram of the explain windows has a {ngrams.polarity.value} response (a dead "
                       "neuron, or one that fires only on punctuation, line breaks or word pieces, which word "
                       "n-grams cannot quote)")
    strongest = max(ngrams.top_responses)
    response_of = dict(zip(ngrams.top_ngrams, ngrams.top_responses))
    shown: list[tuple[str, float]] = []
    for ngram, value in zip(ngrams.top_ngrams, ngrams.top_responses):
        if value < relative_floor * strongest or len(shown) == top:
            break
        words = ngram.split()
        inner = (" ".join(words[start:start + length]) for length in range(1, len(words))
                 for start in range(len(words) - length + 1))
        if any(response_of.get(part, float("-inf")) >= subsumption * value for part in inner):
            continue
        shown.append((ngram, value))
    return Explanation(
        neuron=ngrams.neuron, text=", ".join(f'"{ngram}"' for ngram, _ in shown), method=ExplainerKind.NGRAM,
        polarity=ngrams.polarity, explainer_backend="none", explainer_model="none", prompt_hash="none",
        parameters={**ngrams.parameters, "top": top, "relative_floor": relative_floor, "subsumption": subsumption},
        source_window_ids=ngrams.window_ids, split_seed=split_seed,
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        extra={"ngrams": [ngram for ngram, _ in shown], "responses": [round(value, 6) for _, value in shown],
               "std_over_ngrams": _json_float(ngrams.std), "ngram_source": ngrams.source},
    )


def _json_float(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


# --- measuring responses with the subject model --------------------------------------------------------------


def text_responses(subject: Any, texts: Sequence[str], layers: Sequence[int], *, batch_tokens: int = 4096,
                   progress: bool = False) -> dict[int, np.ndarray]:
    """Every neuron's response to each text: {layer: float32 [n_texts x neurons]}, the max over the text's tokens.

    `subject` is a `Subject`, whose special-token policy applies (decoders read `[BOS] + text`, so no text sits at
    position 0 where many models park outsized activations; encoders `[CLS] + text + [SEP]`); special positions
    never count. Batches hold about `batch_tokens` tokens; the forward pass stops after the deepest layer.
    """
    results: dict[int, np.ndarray] = {}

    def allocate(layer: int, neurons: int) -> np.ndarray:
        return np.full((len(texts), neurons), np.nan, dtype=np.float32)

    _sweep(subject, texts, layers, allocate, results, batch_tokens=batch_tokens, progress=progress)
    return results


def _sweep(subject: Any, texts: Sequence[str], layers: Sequence[int], allocate: Any, results: dict[int, np.ndarray],
           *, batch_tokens: int, progress: bool, word_prefix: str = "") -> None:
    """Fill `results[layer]` (made by `allocate(layer, neurons)` on first sight) with max-over-token responses.

    Texts are grouped by exact token count, so no batch needs padding (exact for encoders too) and the subject's
    own special-token policy applies unchanged.
    """
    import torch
    from tqdm import tqdm

    by_length: dict[int, list[int]] = {}
    for index, text in enumerate(texts):
        by_length.setdefault(len(subject.encode(word_prefix + text)), []).append(index)
    empty = by_length.pop(0, [])
    special = len(subject.special_tokens.prefix) + len(subject.special_tokens.suffix)
    with tqdm(total=len(texts), desc="n-gram responses", unit="text", disable=not progress) as bar:
        for length, indices in sorted(by_length.items()):
            per_batch = max(1, batch_tokens // (length + special))
            for start in range(0, len(indices), per_batch):
                batch = indices[start:start + per_batch]
                ids = torch.tensor([subject.encode(word_prefix + texts[index]) for index in batch], dtype=torch.long)
                with _model_lock(subject.model):
                    captured = subject.activations(ids, layers=layers)
                for layer, activations in captured.items():
                    maxima = activations.amax(dim=1).float().cpu().numpy()
                    if layer not in results:
                        results[layer] = allocate(layer, maxima.shape[1])
                    if results[layer].dtype == np.float16:
                        maxima = np.clip(maxima, -FLOAT16_LIMIT, FLOAT16_LIMIT)
                    results[layer][batch] = maxima
                bar.update(len(batch))
        bar.update(len(empty))
    for layer in layers:
        if layer not in results:
            results[layer] = allocate(layer, subject.neurons_per_layer)


# Capture hooks live on the model while a batch runs, so two threads (SASC explains neurons concurrently) must
# not run the same model at once. Locked per batch: a long sweep and short SASC passes interleave.
_MODEL_LOCKS: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
_MODEL_LOCKS_GUARD = threading.Lock()


def _model_lock(model: Any) -> threading.Lock:
    with _MODEL_LOCKS_GUARD:
        return _MODEL_LOCKS.setdefault(model, threading.Lock())


def ngram_word_prefix(tokenizer: Any) -> str:
    """" " when the tokenizer marks a word's leading space inside its tokens (byte-level BPE: "Ġthe"), else "".

    N-grams are then read the way their words look mid-sentence; tokenizers that add a dummy prefix on their
    own (SentencePiece "▁the", WordPiece) already do that.
    """
    bare = tokenizer.tokenize("the")
    spaced = tokenizer.tokenize(" the")
    if bare and bare[0].startswith("\u2581"):
        return ""
    return " " if spaced != bare and len(spaced) <= len(bare) else ""

