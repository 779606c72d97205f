"""NeuronRecords built in tests from real text (CPython's pydoc topics) with planted activation rules."""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from neuron_explainer.activations.records import NeuronRecord, NeuronStats, Window
from neuron_explainer.core.neurons import NeuronId

_TOKEN = re.compile(r" ?[A-Za-z]+| ?\d{1,3}| ?[^\sA-Za-z\d]| *\n+|\s+")


def tokenize(text: str) -> list[str]:
    """A GPT-like split: words and up-to-3-digit groups with their leading space, punctuation, line breaks."""
    return _TOKEN.findall(text)


def corpus_windows(*, count: int = 400, length: int = 32) -> list[tuple[str, ...]]:
    """Consecutive token windows of the pydoc topics text (English prose with numbers and code)."""
    from pydoc_data.topics import topics

    tokens: list[str] = []
    for key in sorted(topics):
        tokens.extend(tokenize(topics[key]))
        if len(tokens) >= count * length:
            break
    return [tuple(tokens[start:start + length]) for start in range(0, count * length, length)]


def digit_activation(token: str) -> float:
    """The planted digits neuron, graded by length: "7" 0.5, "42" 0.75, "123" 1.0, anything else 0."""
    visible = token.strip()
    return 0.25 + 0.25 * min(len(visible), 3) if visible.isdigit() else 0.0


def word_activation(word: str) -> Callable[[str], float]:
    """A neuron that fires (1.0) on one word, case-insensitively."""
    return lambda token: 1.0 if token.strip().lower() == word else 0.0


def planted_record(rule: Callable[[str], float], *, neuron: NeuronId = NeuronId(0, 0), top: int = 40,
                   random_count: int = 40, windows: Sequence[tuple[str, ...]] | None = None, seed: int = 0,
                   negative_rule: Callable[[str], float] | None = None) -> NeuronRecord:
    """The record a recorder would keep for a neuron whose activation at each token is `rule(token)`
    (minus `negative_rule(token)` when given, which also fills the bottom windows)."""
    texts = list(windows) if windows is not None else corpus_windows()

    def activation(token: str) -> float:
        return rule(token) - (negative_rule(token) if negative_rule else 0.0)

    all_windows = [Window(window_id=index, tokens=tokens, activations=tuple(activation(token) for token in tokens))
                   for index, tokens in enumerate(texts)]
    ranked = sorted(all_windows, key=lambda window: (-window.max_activation, window.window_id))
    sampled = random.Random(seed).sample(all_windows, min(random_count, len(all_windows)))
    bottom = ()
    if negative_rule is not None:
        bottom = tuple(sorted(all_windows, key=lambda window: (min(window.activations), window.window_id))[:top])
    values = sorted(value for window in all_windows for value in window.activations)
    count = len(values)
    mean = sum(values) / count
    std = (sum((value - mean) ** 2 for value in values) / count) ** 0.5
    quantiles = tuple((probability, values[min(count - 1, int(probability * count))])
                      for probability in (0.5, 0.9, 0.99, 0.999))
    stats = NeuronStats(count=count, mean=mean, std=std, min=values[0], max=values[-1],
                        fraction_positive=sum(value > 0 for value in values) / count, quantiles=quantiles)
    return NeuronRecord(neuron=neuron, top_windows=tuple(ranked[:top]), random_windows=tuple(sampled),
                        stats=stats, bottom_windows=bottom)


def planted_store(directory: Path, *, count: int = 300, length: int = 32) -> Path:
    """A real record store (written by the recorder's own writer) with two planted neurons in layer 3:
    3:0 fires on digits (graded), 3:1 on the word "the"."""
    import numpy as np

    from neuron_explainer.activations import record_activations

    windows = corpus_windows(count=count, length=length)
    vocab = sorted({token for window in windows for token in window})
    index = {token: position for position, token in enumerate(vocab)}
    token_ids = np.array([[index[token] for token in window] for window in windows], dtype=np.int32)
    rules = [digit_activation, word_activation("the")]
    activations = np.array([[[rule(token) for rule in rules] for token in window] for window in windows],
                           dtype=np.float32)
    return record_activations(directory / "records", token_ids=token_ids, vocab=vocab, activations={3: activations})
