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
from collections.abc import Sequence
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
from neuron_explainer.llm.errors import LLMError

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
    neuron = ngrams.neuron
    if not ngrams.top_ngrams:
        return Failure(neuron=neuron, stage="explain", reason="no n-grams to summarise (empty corpus or windows)")
    try:
        return await _explain(ngrams, subject, backend, config, split_seed)
    except LLMError as exc:
        if exc.stops_run:
            raise
        logger.warning("SASC explaining %s failed: %s", neuron, exc)
        return Failure(neuron=neuron, stage="explain", reason=f"SASC error: {type(exc).__name__}: {exc}")
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - one neuron's backend failure must not end a night's run
        logger.warning("SASC explaining %s failed: %s", neuron, exc)
        return Failure(neuron=neuron, stage="explain", reason=f"SASC error: {type(exc).__name__}: {exc}")


async def _explain(ngrams: NeuronNgrams, subject: Any, backend: LLMBackend, config: SascConfig,
                   split_seed: int) -> Explanation | Failure:
    neuron = ngrams.neuron
    prompts = sasc_prompt_files()
    ledger = _TokenLedger()

    summaries = await asyncio.gather(*(
        _generate(backend, prompts.render(SUMMARIZE_PROMPT, ngrams="\n".join(sample)), config,
                  max_tokens=config.summary_max_tokens, ledger=ledger, one_line=True)
        for sample in _ngram_samples(ngrams, config)))
    themes: list[str] = []
    for answer in summaries:
        theme = clean_theme(answer)
        if theme is not None and theme.casefold() not in {known.casefold() for known in themes}:
            themes.append(theme)
    if not themes:
        raw = "\n---\n".join(summaries)
        return Failure(neuron=neuron, stage="explain",
                       reason=f"no usable theme in {len(summaries)} SASC summary answer(s)", raw_output=raw[:4000])

    text_lists = await asyncio.gather(*(
        _generate(backend, prompts.render(name, concept=theme, count=str(config.synthetic_texts)), config,
                  max_tokens=config.texts_max_tokens, ledger=ledger)
        for theme in themes for name in (CONCEPT_PROMPT, CONTRAST_PROMPT)))
    parsed = [parse_text_list(answer, limit=config.synthetic_texts) for answer in text_lists]
    all_texts = [text for texts in parsed for text in texts]
    responses = await asyncio.to_thread(_neuron_responses, subject, all_texts, neuron.layer, neuron.neuron)
    sign = -1.0 if ngrams.polarity is Polarity.NEGATIVE else 1.0

    candidates: list[SascCandidate] = []
    offset = 0
    for index, theme in enumerate(themes):
        concept_texts, contrast_texts = parsed[2 * index], parsed[2 * index + 1]
        concept = sign * responses[offset:offset + len(concept_texts)]
        offset += len(concept_texts)
        contrast = sign * responses[offset:offset + len(contrast_texts)]
        offset += len(contrast_texts)
        candidates.append(_score_candidate(theme, concept_texts, contrast_texts, concept, contrast, ngrams.std,
                                           config))

    scored = [candidate for candidate in candidates if math.isfinite(candidate.synthetic_score)]
    chosen = max(scored, key=lambda candidate: candidate.synthetic_score) if scored else candidates[0]
    return Explanation(
        neuron=neuron, text=chosen.text, method=ExplainerKind.SASC, polarity=ngrams.polarity,
        explainer_backend=backend.name, explainer_model=backend.model, prompt_hash=prompts.hash,
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


async def _generate(backend: LLMBackend, text: str, config: SascConfig, *, max_tokens: int,
                    ledger: _TokenLedger, one_line: bool = False) -> str:
    if backend.capabilities.chat:
        prompt: Prompt = [Message(role="user", content=text)]
        stop = None
    else:
        # A completion model continues the prompt; the summary is the rest of the "Shared idea:" line.
        prompt, stop = text.rstrip(), (["\n"] if one_line else ["\n\n\n"])
    result = await backend.generate(prompt, temperature=config.temperature, max_tokens=max_tokens, seed=config.seed,
                                    stop=stop)
    ledger.add(result)
    return result.generations[0].text if result.generations else ""


def _neuron_responses(subject: Any, texts: list[str], layer: int, neuron: int) -> np.ndarray:
    if not texts:
        return np.zeros(0, dtype=np.float64)
    return np.asarray(text_responses(subject, texts, [layer])[layer][:, neuron], dtype=np.float64)


def _json_float(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None
