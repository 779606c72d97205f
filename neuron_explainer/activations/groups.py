"""Window groups: which of a neuron's windows must land on the same side of a split (same text, near-duplicates).

Among the windows of one neuron (top, bottom and random), two are in one group when
- they come from the same document of at most `RUN_WINDOWS` windows (a short document is never split), or from the
  same run of `RUN_WINDOWS` consecutive positions of a longer document (position // RUN_WINDOWS);
- in a store without document ids: their window ids fall in the same run of `RUN_WINDOWS` ids;
- they are near-duplicates: one shares at least `NEAR_DUPLICATE_SHARE` of the distinct `SPAN_TOKENS`-token spans
  of the other (the smaller), wherever they come from (computed once per store, `near_duplicate_labels`).
Groups are the connected components, labelled by their smallest window id. Runs bound a group's size, so a
concept that fills a long stretch of one document still leaves windows for every part of the split; the price is
that the last window of one run and the first of the next continue the same text and may land on different sides.
docs/method.md says why these numbers (measured on python-docs with scripts/measure_near_duplicates.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SPAN_TOKENS = 8
"""Length of the token spans compared between windows."""
NEAR_DUPLICATE_SHARE = 0.25
"""Two windows are near-duplicates when they share at least this fraction of the smaller one's distinct spans."""
RUN_WINDOWS = 8
"""Windows per group run: 8 windows of 64 tokens, 512 tokens of one document."""
MAX_SPAN_WINDOWS = 256
"""Spans found in more windows than this (boilerplate such as rules of dashes) are not compared: they would cost
quadratic pairs and say nothing about a window's text on their own."""
_HASH_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class SpanOverlap:
    """Window pairs that share spans, with the share of the smaller window's distinct spans."""

    first: np.ndarray
    """int64 window ids (first < second)."""
    second: np.ndarray
    """int64 window ids."""
    share: np.ndarray
    """float64 shared distinct spans / distinct spans of the window with fewer."""


def span_overlap(token_ids: np.ndarray, *, span: int = SPAN_TOKENS,
                 max_span_windows: int = MAX_SPAN_WINDOWS) -> SpanOverlap:
    """Every pair of windows sharing at least one `span`-token span (spans in more than `max_span_windows`
    windows are skipped)."""
    tokens = np.asarray(token_ids, dtype=np.int64)
    windows, length = tokens.shape
    empty = SpanOverlap(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64))
    if windows < 2 or length < span:
        return empty
    width = length - span + 1
    hashes = np.zeros((windows, width), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for offset in range(span):
            hashes = hashes * _HASH_MULTIPLIER + (tokens[:, offset:offset + width].astype(np.uint64) + np.uint64(1))
    owner = np.repeat(np.arange(windows, dtype=np.int64), width)
    # Distinct (span, window) pairs, sorted by span.
    pairs = np.unique(np.stack([hashes.ravel(), owner.astype(np.uint64)], axis=1), axis=0)
    span_of, window_of = pairs[:, 0], pairs[:, 1].astype(np.int64)
    distinct = np.bincount(window_of, minlength=windows)
    starts = np.flatnonzero(np.r_[True, span_of[1:] != span_of[:-1]])
    counts = np.diff(np.r_[starts, len(span_of)])
    firsts: list[np.ndarray] = []
    seconds: list[np.ndarray] = []
    for size in np.unique(counts[(counts >= 2) & (counts <= max_span_windows)]).tolist():
        members = window_of[starts[counts == size][:, None] + np.arange(size)]  # [spans, size]
        left, right = np.triu_indices(size, k=1)
        firsts.append(members[:, left].ravel())
        seconds.append(members[:, right].ravel())
    if not firsts:
        return empty
    codes, shared = np.unique(np.concatenate(firsts) * windows + np.concatenate(seconds), return_counts=True)
    first, second = codes // windows, codes % windows
    smaller = np.minimum(distinct[first], distinct[second])
    return SpanOverlap(first, second, shared / np.maximum(smaller, 1))


def _components(size: int, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Connected-component label (smallest member) of every node of an undirected graph."""
    parent = np.arange(size, dtype=np.int64)

    def root(node: int) -> int:
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = int(parent[node])
        return node

    for a, b in zip(first.tolist(), second.tolist()):
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.fromiter((root(node) for node in range(size)), dtype=np.int64, count=size)


def near_duplicate_labels(token_ids: np.ndarray, *, share: float = NEAR_DUPLICATE_SHARE) -> np.ndarray:
    """int64 [windows]: component label (smallest member) of every window under the near-duplicate relation."""
    overlap = span_overlap(token_ids)
    near = overlap.share >= share
    return _components(int(np.asarray(token_ids).shape[0]), overlap.first[near], overlap.second[near])


def neuron_groups(window_ids: list[int], *, near_labels: np.ndarray, documents: np.ndarray | None,
                  document_windows: np.ndarray | None) -> dict[int, int]:
    """Window id -> group label (smallest member) for one neuron's windows (see the module docstring).

    `documents`: int64 [store windows, 2] document id and position, None for a store without document ids;
    `document_windows`: windows per document id (with `documents`)."""
    ordered = sorted(set(window_ids))
    first: list[int] = []
    second: list[int] = []
    seen: dict[tuple[str, int, int], int] = {}

    def link(key: tuple[str, int, int], index: int) -> None:
        if key in seen:
            first.append(seen[key])
            second.append(index)
        else:
            seen[key] = index

    rows = None if documents is None else np.asarray(documents[ordered], dtype=np.int64).reshape(len(ordered), 2)
    for index, window_id in enumerate(ordered):
        link(("near", int(near_labels[window_id]), 0), index)
        if rows is None:
            link(("run", window_id // RUN_WINDOWS, 0), index)
        else:
            document, position = int(rows[index, 0]), int(rows[index, 1])
            short = document_windows is not None and int(document_windows[document]) <= RUN_WINDOWS
            link(("document", document, 0 if short else position // RUN_WINDOWS), index)
    roots = _components(len(ordered), np.asarray(first, np.int64), np.asarray(second, np.int64))
    return {window_id: ordered[int(roots[index])] for index, window_id in enumerate(ordered)}
