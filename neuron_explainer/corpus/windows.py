"""Cutting documents into fixed-length windows of text tokens, each tagged with the document it came from.

Each document is tokenised without special tokens and cut into consecutive, non-overlapping windows of `length`
tokens; the tail shorter than a window is dropped, so a document shorter than one window contributes nothing
and a window never spans two documents. With `pack=True` documents are concatenated, separated by the
tokenizer's EOS token when it has one, and windows may straddle documents. Special tokens (BOS, CLS/SEP) are not
part of a window: the subject adds them when it runs the model (see subject/subject.py).

Every window carries a document id and its position in that document (0, 1, ...), so splits can keep a whole
document on one side. Document ids count the corpus's non-blank documents from 0. With `pack=True` a window that
straddles a boundary ties the documents together: the next window keeps the id of the chain's first document
(and counts on its position), so text of one document never carries two ids.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any, NamedTuple

import numpy as np

# Documents tokenised per call: batching lets fast tokenizers work in parallel.
_DOCUMENTS_PER_CALL = 64


class DocumentWindow(NamedTuple):
    """One window of token ids and where it came from."""

    tokens: list[int]
    """Exactly `length` token ids."""
    document: int
    """Id of the document (for packed windows: of the first document of the chain of straddled documents)."""
    position: int
    """Index of the window within its document (or chain), from 0."""


def iter_document_windows(documents: Iterable[str], tokenizer: Any, *, length: int = 64,
                          pack: bool = False) -> Iterator[DocumentWindow]:
    """Yield windows of exactly `length` token ids with their document id and position, in corpus order."""
    if length < 1:
        raise ValueError(f"window length must be positive, got {length}")
    separator = [int(tokenizer.eos_token_id)] if pack and tokenizer.eos_token_id is not None else []
    carry: list[int] = []
    chain_document, chain_position = 0, 0
    document = -1
    iterator = iter(documents)
    while chunk := list(islice(iterator, _DOCUMENTS_PER_CALL)):
        encoded = tokenizer(chunk, add_special_tokens=False, verbose=False).input_ids
        for ids in encoded:
            document += 1
            if not pack:
                whole = len(ids) - len(ids) % length
                for position, start in enumerate(range(0, whole, length)):
                    yield DocumentWindow(list(ids[start:start + length]), document, position)
                continue
            if not carry:
                chain_document, chain_position = document, 0
            tokens = carry + list(ids) + separator
            whole = len(tokens) - len(tokens) % length
            for start in range(0, whole, length):
                yield DocumentWindow(tokens[start:start + length], chain_document, chain_position)
                chain_position += 1
            carry = tokens[whole:]


def iter_windows(documents: Iterable[str], tokenizer: Any, *, length: int = 64,
                 pack: bool = False) -> Iterator[list[int]]:
    """Yield windows of exactly `length` token ids, in corpus order."""
    for window in iter_document_windows(documents, tokenizer, length=length, pack=pack):
        yield window.tokens


def document_batches(documents: Iterable[str], tokenizer: Any, *, length: int = 64, max_windows: int,
                     batch_size: int, pack: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (int32 token ids [batch, length], int64 [batch, 2] of document id and position) pairs holding at
    most `max_windows` windows in total."""
    windows = islice(iter_document_windows(documents, tokenizer, length=length, pack=pack), max_windows)
    while batch := list(islice(windows, batch_size)):
        yield (np.asarray([window.tokens for window in batch], dtype=np.int32),
               np.asarray([(window.document, window.position) for window in batch], dtype=np.int64))


def window_batches(documents: Iterable[str], tokenizer: Any, *, length: int = 64, max_windows: int,
                   batch_size: int, pack: bool = False) -> Iterator[np.ndarray]:
    """Yield int32 arrays [batch, length] holding at most `max_windows` windows in total."""
    for token_ids, _ in document_batches(documents, tokenizer, length=length, max_windows=max_windows,
                                         batch_size=batch_size, pack=pack):
        yield token_ids
