"""Cutting documents into fixed-length windows of text tokens.

Each document is tokenised without special tokens and cut into consecutive, non-overlapping windows of `length`
tokens; the tail shorter than a window is dropped, so a document shorter than one window contributes nothing
and a window never spans two documents. With `pack=True` documents are concatenated, separated by the
tokenizer's EOS token when it has one, and windows may straddle documents. Special tokens (BOS, CLS/SEP) are not
part of a window: the subject adds them when it runs the model (see subject/subject.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

import numpy as np

# Documents tokenised per call: batching lets fast tokenizers work in parallel.
_DOCUMENTS_PER_CALL = 64


def iter_windows(documents: Iterable[str], tokenizer: Any, *, length: int = 64,
                 pack: bool = False) -> Iterator[list[int]]:
    """Yield windows of exactly `length` token ids, in corpus order."""
    if length < 1:
        raise ValueError(f"window length must be positive, got {length}")
    separator = [int(tokenizer.eos_token_id)] if pack and tokenizer.eos_token_id is not None else []
    carry: list[int] = []
    iterator = iter(documents)
    while chunk := list(islice(iterator, _DOCUMENTS_PER_CALL)):
        encoded = tokenizer(chunk, add_special_tokens=False, verbose=False).input_ids
        for ids in encoded:
            tokens = carry + list(ids) + separator if pack else list(ids)
            whole = len(tokens) - len(tokens) % length
            for start in range(0, whole, length):
                yield tokens[start:start + length]
            carry = tokens[whole:] if pack else []


def window_batches(documents: Iterable[str], tokenizer: Any, *, length: int = 64, max_windows: int,
                   batch_size: int, pack: bool = False) -> Iterator[np.ndarray]:
    """Yield int32 arrays [batch, length] holding at most `max_windows` windows in total."""
    windows = islice(iter_windows(documents, tokenizer, length=length, pack=pack), max_windows)
    while batch := list(islice(windows, batch_size)):
        yield np.asarray(batch, dtype=np.int32)
