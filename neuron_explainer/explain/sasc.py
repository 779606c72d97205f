"""SASC (Singh et al. 2023, "summarize and score"): explain a neuron from the n-grams that drive it most.

1. The neuron's top n-grams come from `neuron_explainer.explain.ngrams` (isolated or in-context responses).
2. Summarise: several candidate themes, each from a random sample of the top n-grams (rank order kept).
3. Synthetic score: for each candidate the LLM writes sentences that do and do not involve the theme; the subject
   model reads them; the score is the mean response on the first minus on the second, in units of the neuron's
   standard deviation over n-grams. The best candidate is the explanation; all candidates are kept in `extra`.

The pipeline then scores the chosen text with the shared simulator, like any other explanation.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from neuron_explainer.core.errors import UserError
from neuron_explainer.core.failures import Failure
from neuron_explainer.core.prompts import PromptFiles, load_prompt_files
from neuron_explainer.explain.ngrams import NeuronNgrams, text_responses
from neuron_explainer.explain.parsing import clean_explanation
from neuron_explainer.explain.types import Explanation, ExplainerKind, Polarity
from neuron_explainer.llm.base import GenerateResult, LLMBackend, Message, Prompt
from neuron_explainer.llm.errors import LLMError, backend_failure

logger = logging.getLogger(__name__)

SUMMARIZE_PROMPT = "sasc_summarize.txt"
CONCEPT_PROMPT = "sasc_concept_texts.txt"
CONTRAST_PROMPT = "sasc_contrast_texts.txt"
PROMPT_NAMES = (SUMMARIZE_PROMPT, CONCEPT_PROMPT, CONTRAST_PROMPT)

MAX_THEME_WORDS = 15
"""Longer answers are not a short theme (the model explained itself, or rambled)."""

CHOSEN_TEXTS_KEPT = 20
"""Synthetic sentences of the chosen candidate kept in `extra` (per side), for audit."""


@dataclass(frozen=True)
class SascConfig:
    """Settings of the SASC explainer; every field that changes the text is stored with the explanation."""

    candidates: int = 3
    """Candidate themes drawn per neuron (before dropping duplicates)."""
    sample_pool: int = 50
    """Each candidate samples from this many top n-grams."""
    sample_size: int = 30
    """N-grams shown per candidate (a random subset of the pool, strongest first)."""
    synthetic_texts: int = 20
    """Sentences asked for per side (concept / contrast) per candidate."""
    min_synthetic_texts: int = 3
    """A candidate with fewer usable sentences on either side gets no synthetic score."""
    temperature: float = 0.0
    """Sampling temperature for every LLM call (candidates already differ by their n-gram sample)."""
    summary_max_tokens: int = 48
    """Completion budget of a summary."""
    texts_max_tokens: int = 1200
    """Completion budget of one list of sentences."""
    seed: int = 0
    """Seed of the n-gram samples (with the neuron id)."""

    def __post_init__(self) -> None:
        for name in ("candidates", "sample_pool", "sample_size", "synthetic_texts", "min_synthetic_texts",
                     "summary_max_tokens", "texts_max_tokens"):
            if getattr(self, name) <= 0:
                raise UserError(f"SASC {name.replace('_', ' ')} must be positive (got {getattr(self, name)})")
        if self.sample_size > self.sample_pool:
            raise UserError(f"SASC sample size {self.sample_size} exceeds its pool of {self.sample_pool}")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready parameters."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SascCandidate:
    """One candidate theme and how the subject neuron responded to text written about it."""

    text: str
    """The cleaned theme."""
    synthetic_score: float
    """(mean response on concept sentences - on contrast sentences) / std over n-grams; NaN when undefined."""
    concept_mean: float
    """Mean response on the concept sentences (activation units, sign of the polarity applied)."""
    contrast_mean: float
    """Mean response on the contrast sentences."""
    concept_texts: tuple[str, ...]
    """Parsed concept sentences."""
    contrast_texts: tuple[str, ...]
    """Parsed contrast sentences."""
    error: str | None = None
    """Why there is no synthetic score, if there is none."""

    def summary(self) -> dict[str, Any]:
        """JSON-ready form without the sentences."""
        return {"text": self.text, "synthetic_score": _json_float(self.synthetic_score),
                "concept_mean": _json_float(self.concept_mean), "contrast_mean": _json_float(self.contrast_mean),
                "concept_texts": len(self.concept_texts), "contrast_texts": len(self.contrast_texts),
                "error": self.error}


# --- parsing LLM answers -------------------------------------------------------------------------------------

# A list marker at the start of a line: "1." "1)" "(1)" "#1" "1:" "1 -", bullets "-", "*", "•"; not "1999," or "3 cats".
_LINE_MARKER_RE = re.compile(r"^\s*(?:\(?#?(\d{1,3})\s*[.):\]]|#?(\d{1,3})\s+[-\u2013\u2014]|[-*\u2022\u2023\u25e6+])\s+")
# An inline item marker, for answers that put the whole numbered list on one line: "1. foo 2. bar".
_INLINE_MARKER_RE = re.compile(r"(?:^|(?<=\s))\(?(\d{1,3})[.)]\s+")
_LABEL_RE = re.compile(
    r"^(?:(?:the\s+)?(?:shared|common|main|underlying|central)\s+(?:idea|theme|concept|pattern|thread|topic)s?"
    r"(?:\s+(?:among|of|in|between|behind|for)\s+(?:these|the|all|them)(?:\s+\w+)*?)?"
    r"\s*(?:(?:is|are)\s*[:\-\u2013]?|[:\-\u2013])\s*(?:that\s+)?"
    r"|(?:theme|idea|concept|topic|pattern)\s*[:\-\u2013]\s*"
    r"|(?:these|they|all\s+(?:of\s+)?these)(?:\s+(?:words|phrases|terms|items|n-grams))?\s+"
    r"(?:(?:are|all|mostly|seem|to|relate|refer|have|do|deal|describe|involve|concern|related|about|with|be)\s+)+)",
    re.IGNORECASE)
_BARE_LABEL_RE = re.compile(r"(?:the\s+)?(?:shared|common|main|underlying|central)\s+(?:idea|theme|concept|pattern|"
                            r"thread|topic)s?", re.IGNORECASE)
_QUOTES = "\"'`\u201c\u201d\u2018\u2019*"


def parse_text_list(answer: str, *, limit: int | None = None) -> list[str]:
    """The items of a list an LLM wrote: numbered (`1.`, `2)`, `(3)`), bulleted, or one item per line.

    Only the marker is removed, so items that themselves contain digits ("1. In 1999, 3 cats ...") stay intact.
    When some lines carry markers, unmarked lines are preamble or wrapped continuations: continuations are joined
    to the item above, text before the first item is dropped. A whole numbered list on one line is split where
    the numbers run 1, 2, 3, ... in sequence. Quotes around items and exact duplicates are removed.
    """
    lines = [line.strip() for line in answer.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    lines = [line for line in lines if line]
    marked = [_LINE_MARKER_RE.match(line) for line in lines]
    items: list[str] = []
    if any(marked):
        current: list[str] | None = None
        for line, match in zip(lines, marked, strict=True):
            if match:
                if current is not None:
                    items.append(" ".join(current))
                current = [line[match.end():]]
            elif current is not None:
                current.append(line)
        if current is not None:
            items.append(" ".join(current))
        if len(items) == 1:
            # One marked line: perhaps the whole list was written on it ("1. a 2. b 3. c").
            items = _split_inline_list(items[0], first_number=None)
    else:
        for line in lines:
            items.extend(_split_inline_list(line, first_number=1))
        if len(items) > 1 and items[0].endswith(":"):
            items = items[1:]
    cleaned: list[str] = []
    seen: set[str] = set()
    for item in items:
        text = _strip_quotes(item)
        if text and text not in seen:
            seen.add(text)
            cleaned.append(text)
    return cleaned[:limit] if limit is not None else cleaned


def _split_inline_list(text: str, *, first_number: int | None) -> list[str]:
    """Split "1. a 2. b 3. c" at markers numbered consecutively; anything else is returned whole.

    `first_number=None` continues an already-marked item: it splits at "k. " markers that count up from 2.
    """
    markers = list(_INLINE_MARKER_RE.finditer(text))
    expected = first_number if first_number is not None else 2
    cuts: list[tuple[int, int]] = []
    for match in markers:
        if int(match.group(1)) == expected:
            cuts.append((match.start(), match.end()))
            expected += 1
    if first_number is not None:
        if len(cuts) < 2 or text[:cuts[0][0]].strip():
            return [text]
    elif not cuts:
        return [text]
    pieces: list[str] = []
    start = 0 if first_number is None else cuts[0][1]
    bounds = cuts if first_number is None else cuts[1:]
    for cut_start, cut_end in bounds:
        pieces.append(text[start:cut_start].strip())
        start = cut_end
    pieces.append(text[start:].strip())
    return [piece for piece in pieces if piece]


def _strip_quotes(text: str) -> str:
    """Remove quotes or emphasis wrapping the whole item (not a quote that opens and another that closes)."""
    text = text.strip()
    while len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES and text[0] not in text[1:-1]:
        text = text[1:-1].strip()
    return text.replace("**", "")


def clean_theme(answer: str) -> str | None:
    """The short theme phrase in a summary answer, or None when there is none (empty, refusal, an essay).

    The shared explanation cleaner does the work; SASC answers also open with "The shared idea is ...", which
    is stripped first.
    """
    parsed = clean_explanation(answer)
    text = parsed.text
    while text is not None:
        stripped = _LABEL_RE.sub("", text, count=1).strip()
        if stripped == text:
            break
        text = clean_explanation(stripped).text
    if text is None or len(text.split()) > MAX_THEME_WORDS or _BARE_LABEL_RE.fullmatch(text):
        return None
    return text


# --- the explainer ---------------------------------------------------------------------------------------------


def sasc_prompt_files() -> PromptFiles:
    """The SASC prompt templates and their joint content hash."""
    return load_prompt_files(PROMPT_NAMES)


async def explain_sasc(ngrams: NeuronNgrams, subject: Any, backend: LLMBackend, *,
                       config: SascConfig = SascConfig(), split_seed: int = 0) -> Explanation | Failure:
    """Explain one neuron with SASC: summarise its top n-grams into candidates, keep the best by synthetic score.

    `ngrams` comes from `LayerNgramResponses.for_neuron` (isolated) or `in_context_ngrams_for_record`;
    `subject` is the `Subject` the neuron belongs to (it reads the synthetic sentences). Returns a Failure (with
    the raw answers) when no candidate theme can be read from the LLM's answers, or a call fails with anything
    but a `UserError` (LLM errors that should stop the run, such as a bad key, propagate).
    """
    return (await explain_sasc_many([ngrams], subject, backend, config=config, split_seed=split_seed))[0]


SascStep = Callable[[str, int, int], None]
"""Progress callback: (phase, neurons in the batch, LLM prompts or sentences in the phase)."""


async def explain_sasc_many(neurons: Sequence[NeuronNgrams], subject: Any, backend: LLMBackend, *,
                            config: SascConfig = SascConfig(), split_seed: int = 0,
                            on_step: SascStep | None = None) -> list[Explanation | Failure]:
    """SASC for several neurons at once, with exactly the texts and choices `explain_sasc` gives each alone.

    Each phase runs for every neuron together: all summary prompts in one `generate_many` (an in-process model
    batches them; a remote API runs them concurrently), then all sentence prompts, then one subject-model pass per
    layer over every neuron's sentences (a pass yields all neurons of the layer). When a batched phase fails with a
    non-fatal error, the neurons are explained one at a time so the failure lands on the neuron that caused it.
    """
    if len(neurons) > 1:
        try:
            return await _explain_together(neurons, subject, backend, config, split_seed, on_step)
        except LLMError as exc:
            if exc.stops_run:
                raise
            logger.warning("batched SASC failed (%s); explaining %d neurons one at a time", exc, len(neurons))
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - isolate the neuron that failed below
            logger.warning("batched SASC failed (%s); explaining %d neurons one at a time", exc, len(neurons))
    results: list[Explanation | Failure] = []
    for ngrams in neurons:
        try:
            results.extend(await _explain_together([ngrams], subject, backend, config, split_seed, on_step))
        except LLMError as exc:
            if exc.stops_run:
                raise
            logger.warning("SASC explaining %s failed: %s", ngrams.neuron, exc)
            results.append(backend_failure(ngrams.neuron, "explain", "SASC error", exc))
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - one neuron's backend failure must not end a night's run
            logger.warning("SASC explaining %s failed: %s", ngrams.neuron, exc)
            results.append(backend_failure(ngrams.neuron, "explain", "SASC error", exc))
    return results


class SascBatcher:
    """Explains neurons requested concurrently in shared batches (`explain_sasc_many`), like a group commit.

    The first request starts a batch; requests arriving while it runs wait and go together in the next one. So a
    pipeline that explains several neurons concurrently batches their LLM calls and subject passes, with the same
    results as one `explain_sasc` each.
    """

    def __init__(self, subject: Any, backend: LLMBackend, *, config: SascConfig = SascConfig(), split_seed: int = 0,
                 on_step: SascStep | None = None) -> None:
        self.subject = subject
        self.backend = backend
        self.config = config
        self.split_seed = split_seed
        self.on_step = on_step
        self._pending: list[tuple[NeuronNgrams, asyncio.Future[Explanation | Failure]]] = []
        self._draining: asyncio.Task[None] | None = None

    async def explain(self, ngrams: NeuronNgrams) -> Explanation | Failure:
        """This neuron's SASC explanation (as `explain_sasc` would give it)."""
        future: asyncio.Future[Explanation | Failure] = asyncio.get_running_loop().create_future()
        self._pending.append((ngrams, future))
        if self._draining is None or self._draining.done():
            self._draining = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        # One turn of the loop lets requests made in the same turn (workers starting together) join the batch.
        await asyncio.sleep(0)
        while self._pending:
            batch, self._pending = self._pending, []
            waiting = [(ngrams, future) for ngrams, future in batch if not future.cancelled()]
            if not waiting:
                continue
            try:
                results = await explain_sasc_many([ngrams for ngrams, _ in waiting], self.subject, self.backend,
                                                  config=self.config, split_seed=self.split_seed,
                                                  on_step=self.on_step)
            except Exception as exc:  # noqa: BLE001 - handed to every waiting caller, which re-raises it
                for _, future in waiting:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(waiting, results, strict=True):
                if not future.done():
                    future.set_result(result)


async def _explain_together(neurons: Sequence[NeuronNgrams], subject: Any, backend: LLMBackend,
                            config: SascConfig, split_seed: int,
                            on_step: SascStep | None) -> list[Explanation | Failure]:
    prompts = sasc_prompt_files()
    ledgers = [_TokenLedger() for _ in neurons]
    step = on_step or (lambda phase, count, size: None)
    active = [index for index, ngrams in enumerate(neurons) if ngrams.top_ngrams]

    summary_prompts = [(index, prompts.render(SUMMARIZE_PROMPT, ngrams="\n".join(sample)))
                       for index in active for sample in _ngram_samples(neurons[index], config)]
    step("summaries", len(neurons), len(summary_prompts))
    answers = await _generate_many(backend, summary_prompts, config, max_tokens=config.summary_max_tokens,
                                   ledgers=ledgers, one_line=True)
    summaries: dict[int, list[str]] = {index: [] for index in active}
    for (index, _), answer in zip(summary_prompts, answers, strict=True):
        summaries[index].append(answer)
    themes: dict[int, list[str]] = {}
    for index, neuron_answers in summaries.items():
        found: list[str] = []
        for answer in neuron_answers:
            theme = clean_theme(answer)
            if theme is not None and theme.casefold() not in {known.casefold() for known in found}:
                found.append(theme)
        if found:
            themes[index] = found

    text_prompts = [(index, prompts.render(name, concept=theme, count=str(config.synthetic_texts)))
                    for index, found in themes.items() for theme in found for name in (CONCEPT_PROMPT, CONTRAST_PROMPT)]
    step("sentences", len(themes), len(text_prompts))
    text_lists = await _generate_many(backend, text_prompts, config, max_tokens=config.texts_max_tokens,
                                      ledgers=ledgers)
    parsed: dict[int, list[list[str]]] = {index: [] for index in themes}
    for (index, _), answer in zip(text_prompts, text_lists, strict=True):
        parsed[index].append(parse_text_list(answer, limit=config.synthetic_texts))
    sentences_by_layer: dict[int, list[str]] = {}
    for index, lists in parsed.items():
        sentences_by_layer.setdefault(neurons[index].neuron.layer, []).extend(
            text for texts in lists for text in texts)
    step("responses", len(themes), sum(len(texts) for texts in sentences_by_layer.values()))
    responses = await asyncio.to_thread(_layer_responses, subject, sentences_by_layer)

    results: list[Explanation | Failure] = []
    for index, ngrams in enumerate(neurons):
        if not ngrams.top_ngrams:
            results.append(Failure(neuron=ngrams.neuron, stage="explain",
                                   reason="no n-grams to summarise (empty corpus or windows)"))
        elif index not in themes:
            raw = "\n---\n".join(summaries[index])
            results.append(Failure(neuron=ngrams.neuron, stage="explain",
                                   reason=f"no usable theme in {len(summaries[index])} SASC summary answer(s)",
                                   raw_output=raw[:4000]))
        else:
            layer = responses[ngrams.neuron.layer]
            results.append(_explanation(ngrams, themes[index], parsed[index],
                                        lambda text, layer=layer, neuron=ngrams.neuron.neuron: layer[text][neuron],
                                        backend, prompts.hash, ledgers[index], config, split_seed))
    return results


def _explanation(ngrams: NeuronNgrams, themes: list[str], parsed: list[list[str]], response: Callable[[str], float],
                 backend: LLMBackend, prompt_hash: str, ledger: "_TokenLedger", config: SascConfig,
                 split_seed: int) -> Explanation:
    """The chosen candidate of one neuron, given its themes, their parsed sentence lists and its responses."""
    sign = -1.0 if ngrams.polarity is Polarity.NEGATIVE else 1.0
    candidates: list[SascCandidate] = []
    for index, theme in enumerate(themes):
        concept_texts, contrast_texts = parsed[2 * index], parsed[2 * index + 1]
        concept = sign * np.array([response(text) for text in concept_texts], dtype=np.float64)
        contrast = sign * np.array([response(text) for text in contrast_texts], dtype=np.float64)
        candidates.append(_score_candidate(theme, concept_texts, contrast_texts, concept, contrast, ngrams.std,
                                           config))

    scored = [candidate for candidate in candidates if math.isfinite(candidate.synthetic_score)]
    chosen = max(scored, key=lambda candidate: candidate.synthetic_score) if scored else candidates[0]
    return Explanation(
        neuron=ngrams.neuron, text=chosen.text, method=ExplainerKind.SASC, polarity=ngrams.polarity,
        explainer_backend=backend.name, explainer_model=backend.model, prompt_hash=prompt_hash,
        parameters={**ngrams.parameters, **config.as_dict(), "ngram_source": ngrams.source},
        source_window_ids=ngrams.window_ids, split_seed=split_seed,
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        prompt_tokens=ledger.prompt_tokens, completion_tokens=ledger.completion_tokens,
        extra={
            "selection": "synthetic-score" if scored else "first-candidate (no synthetic score)",
            "synthetic_score": _json_float(chosen.synthetic_score),
            "candidates": [candidate.summary() for candidate in candidates],
            "concept_texts": list(chosen.concept_texts[:CHOSEN_TEXTS_KEPT]),
            "contrast_texts": list(chosen.contrast_texts[:CHOSEN_TEXTS_KEPT]),
            "top_ngrams": list(ngrams.top_ngrams[:config.sample_pool]),
            "top_responses": [round(value, 6) for value in ngrams.top_responses[:config.sample_pool]],
            "std_over_ngrams": _json_float(ngrams.std),
            "ngram_count": ngrams.ngram_count,
        },
    )


def synthetic_score(concept_responses: Sequence[float], contrast_responses: Sequence[float], std: float) -> float:
    """SASC's score: mean response on concept text minus on contrast text, in units of `std`; NaN if undefined."""
    if len(concept_responses) == 0 or len(contrast_responses) == 0 or not std > 0 or not math.isfinite(std):
        return float("nan")
    return float((np.mean(concept_responses) - np.mean(contrast_responses)) / std)


def _score_candidate(theme: str, concept_texts: list[str], contrast_texts: list[str], concept: np.ndarray,
                     contrast: np.ndarray, std: float, config: SascConfig) -> SascCandidate:
    error = None
    if min(len(concept_texts), len(contrast_texts)) < config.min_synthetic_texts:
        error = (f"too few sentences parsed ({len(concept_texts)} concept, {len(contrast_texts)} contrast; "
                 f"need {config.min_synthetic_texts} each)")
    elif not (std > 0 and math.isfinite(std)):
        error = "the neuron's response does not vary over n-grams (std 0)"
    score = float("nan") if error else synthetic_score(concept, contrast, std)
    return SascCandidate(
        text=theme, synthetic_score=score,
        concept_mean=float(np.mean(concept)) if len(concept) else float("nan"),
        contrast_mean=float(np.mean(contrast)) if len(contrast) else float("nan"),
        concept_texts=tuple(concept_texts), contrast_texts=tuple(contrast_texts), error=error)


def _ngram_samples(ngrams: NeuronNgrams, config: SascConfig) -> list[list[str]]:
    """`candidates` random samples of the top n-grams, each kept in rank order."""
    pool = list(ngrams.top_ngrams[:config.sample_pool])
    size = min(config.sample_size, len(pool))
    # A string seed is hashed with sha512 by random.Random, so samples are the same in every process.
    rng = random.Random(f"sasc:{config.seed}:{ngrams.neuron.layer}:{ngrams.neuron.neuron}:{ngrams.polarity.value}")
    return [[pool[index] for index in sorted(rng.sample(range(len(pool)), size))] for _ in range(config.candidates)]


class _TokenLedger:
    """Sums the token usage of every call made for one explanation."""

    def __init__(self) -> None:
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def add(self, result: GenerateResult) -> None:
        self.prompt_tokens += result.usage.prompt_tokens
        self.completion_tokens += result.usage.completion_tokens


async def _generate_many(backend: LLMBackend, prompts: Sequence[tuple[int, str]], config: SascConfig, *,
                         max_tokens: int, ledgers: Sequence["_TokenLedger"], one_line: bool = False) -> list[str]:
    """One answer per (neuron index, prompt text), all prompts in one `generate_many`; usage goes to each ledger."""
    if not prompts:
        return []
    if backend.capabilities.chat:
        batch: list[Prompt] = [[Message(role="user", content=text)] for _, text in prompts]
        stop = None
    else:
        # A completion model continues the prompt; the summary is the rest of the "Shared idea:" line.
        batch, stop = [text.rstrip() for _, text in prompts], (["\n"] if one_line else ["\n\n\n"])
    results = await backend.generate_many(batch, temperature=config.temperature, max_tokens=max_tokens,
                                          seed=config.seed, stop=stop)
    answers = []
    for (index, _), result in zip(prompts, results, strict=True):
        ledgers[index].add(result)
        answers.append(result.generations[0].text if result.generations else "")
    return answers


def _layer_responses(subject: Any, sentences_by_layer: dict[int, list[str]]) -> dict[int, dict[str, np.ndarray]]:
    """{layer: {sentence: every neuron's response}}: one subject pass per layer over its distinct sentences."""
    responses: dict[int, dict[str, np.ndarray]] = {}
    for layer, sentences in sentences_by_layer.items():
        distinct = list(dict.fromkeys(sentences))
        matrix = text_responses(subject, distinct, [layer])[layer] if distinct else np.zeros((0, 0))
        responses[layer] = {text: matrix[row].astype(np.float64) for row, text in enumerate(distinct)}
    return responses


def _json_float(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None
