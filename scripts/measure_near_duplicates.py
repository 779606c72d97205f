"""Measure how much 8-token-span overlap windows of different documents have, to choose the near-duplicate share.

Prints, for window pairs from different documents that share any span, how many reach each share of the smaller
window's distinct spans, and how many windows a threshold would join; docs/method.md quotes a run of this.

    .venv/bin/python scripts/measure_near_duplicates.py --windows 2000
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from neuron_explainer.activations.groups import NEAR_DUPLICATE_SHARE, SPAN_TOKENS, near_duplicate_labels, span_overlap
from neuron_explainer.corpus import document_batches, open_corpus
from neuron_explainer.eval.store import load_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="python-docs")
    parser.add_argument("--windows", type=int, default=2000)
    parser.add_argument("--ctx", type=int, default=64)
    parser.add_argument("--tokenizer", default="default")
    args = parser.parse_args()
    tokenizer = load_tokenizer(args.tokenizer)
    batches = list(document_batches(open_corpus(args.corpus).documents(), tokenizer, length=args.ctx,
                                    max_windows=args.windows, batch_size=1024))
    tokens = np.concatenate([batch for batch, _ in batches])
    documents = np.concatenate([docs for _, docs in batches])
    overlap = span_overlap(tokens)
    other = documents[overlap.first, 0] != documents[overlap.second, 0]
    share = overlap.share[other]
    print(f"load average {os.getloadavg()[0]:.2f}; {len(tokens)} windows of {args.ctx} tokens, "
          f"{len(np.unique(documents[:, 0]))} documents, {SPAN_TOKENS}-token spans")
    print(f"cross-document pairs sharing any span: {int(other.sum())}")
    edges = [0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0001]
    counts, _ = np.histogram(share, bins=edges)
    for low, high, count in zip(edges[:-1], edges[1:], counts):
        print(f"  share [{low:.2f}, {min(high, 1.0):.2f}{']' if high > 1 else ')'}: {count} pairs")
    for threshold in (0.1, 0.2, 0.25, 0.3, 0.5, 0.7):
        joined = np.unique(np.r_[overlap.first[other][share >= threshold], overlap.second[other][share >= threshold]])
        print(f"  threshold {threshold}: {len(joined)} windows ({100 * len(joined) / len(tokens):.1f}%) joined "
              "across documents")
    same = ~other & (np.abs(overlap.first - overlap.second) > 1)
    print(f"same-document, non-adjacent pairs at share >= 0.25: {int((overlap.share[same] >= 0.25).sum())} "
          f"of {int(same.sum())} sharing any span")
    labels = near_duplicate_labels(tokens)
    sizes = np.bincount(np.unique(labels, return_inverse=True)[1])
    print(f"near-duplicate components at share {NEAR_DUPLICATE_SHARE}: {int((sizes > 1).sum())} of more than one "
          f"window (largest {sizes.max()} windows); documents: median {int(np.median(np.bincount(documents[:, 0])))} "
          f"windows, largest {np.bincount(documents[:, 0]).max()}")


if __name__ == "__main__":
    main()
