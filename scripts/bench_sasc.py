"""Benchmark: SASC's isolated n-gram pass for a full layer of the subject model, in one batched sweep.

One forward pass over a batch of n-grams yields every neuron of the layer, so a whole layer (1,536 neurons on the
default SmolLM2) costs one sweep over the n-grams, not one per neuron. Measured side by side in one run:

- the cached sweep itself (`isolated_ngram_responses`, default n-gram settings): n-grams/s and tokens/s;
- the same n-grams one per forward pass (no batching), on a subset: the batching speed-up;
- every layer up to the benchmarked one captured in the same sweep, on a subset: its cost relative to one layer;
- reading the layer back from the cache.

    .venv/bin/python scripts/bench_sasc.py [--quick] [--model default] [--layer 29] [--max-ngrams 30000]

The last line printed is a JSON summary: {"bench": "sasc", ...}.
"""

from __future__ import annotations

import argparse
import json
import time

from neuron_explainer.core.paths import cache_dir
from neuron_explainer.corpus import PYTHON_DOCS, open_corpus
from neuron_explainer.explain.ngrams import (NgramConfig, extract_ngrams, isolated_ngram_responses,
                                             ngram_word_prefix, text_responses)
from neuron_explainer.subject import Subject


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (under a minute on 2 CPU cores)")
    parser.add_argument("--model", default="default")
    parser.add_argument("--corpus", default=PYTHON_DOCS)
    parser.add_argument("--layer", type=int, default=None, help="layer to sweep (default: the last one)")
    parser.add_argument("--max-ngrams", type=int, default=None, help="n-grams kept (default 30000; quick 1500)")
    parser.add_argument("--subset", type=int, default=None, help="n-grams in the side-by-side runs")
    parser.add_argument("--batch-tokens", type=int, default=4096)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args()

    max_ngrams = args.max_ngrams or (1_500 if args.quick else NgramConfig().max_ngrams)
    subset_size = args.subset or (40 if args.quick else 200)
    started = time.perf_counter()
    subject = Subject.load(args.model, device=args.device, dtype=args.dtype)
    load_s = time.perf_counter() - started
    layer = subject.num_layers - 1 if args.layer is None else args.layer
    documents = list(open_corpus(args.corpus).documents())
    config = NgramConfig(max_ngrams=max_ngrams)
    ngrams = extract_ngrams(documents, config)
    prefix = ngram_word_prefix(subject.tokenizer)
    tokens = sum(len(subject.encode(prefix + ngram)) for ngram in ngrams)
    print(f"model {args.model} on {subject.loaded.device} ({str(subject.dtype).removeprefix('torch.')}), "
          f"loaded in {load_s:.1f} s; layer {layer} of {subject.num_layers}, "
          f"{subject.neurons_per_layer} neurons; {len(ngrams)} n-grams, {tokens / len(ngrams):.2f} tokens each")

    started = time.perf_counter()
    swept = isolated_ngram_responses(subject, [layer], documents, config, batch_tokens=args.batch_tokens,
                                     progress=True, use_cache=False)[layer]
    sweep_s = time.perf_counter() - started
    print(f"batched sweep: {len(ngrams)} n-grams x {swept.neuron_count} neurons in {sweep_s:.1f} s = "
          f"{len(ngrams) / sweep_s:.0f} n-grams/s ({tokens / sweep_s:.0f} text tokens/s)")

    started = time.perf_counter()
    reloaded = isolated_ngram_responses(subject, [layer], documents, config)[layer]
    _ = reloaded.stds
    cache_s = time.perf_counter() - started
    cache_bytes = sum(path.stat().st_size for path in (cache_dir() / "sasc-ngrams" / reloaded.key).iterdir())
    print(f"from the cache (incl. extracting n-grams and per-neuron stds): {cache_s:.2f} s, "
          f"{cache_bytes / 1e6:.0f} MB on disk")

    # Side by side on the same subset (spread over the frequency ranking, so lengths are representative).
    step = max(1, len(ngrams) // subset_size)
    subset = [prefix + ngram for ngram in ngrams[::step][:subset_size]]
    timings = {}
    for name, layers, batch_tokens in (("batched, one layer", [layer], args.batch_tokens),
                                       ("one n-gram per pass", [layer], 1),
                                       (f"batched, layers 0-{layer}", list(range(layer + 1)), args.batch_tokens)):
        started = time.perf_counter()
        text_responses(subject, subset, layers, batch_tokens=batch_tokens)
        timings[name] = time.perf_counter() - started
        print(f"{name:>24}: {len(subset)} n-grams in {timings[name]:.2f} s = "
              f"{len(subset) / timings[name]:.0f} n-grams/s")
    batching_speedup = timings["one n-gram per pass"] / timings["batched, one layer"]
    all_layers_ratio = timings[f"batched, layers 0-{layer}"] / timings["batched, one layer"]
    print(f"batching speed-up {batching_speedup:.1f}x; all {layer + 1} layers in the same sweep cost "
          f"{all_layers_ratio:.2f}x one layer; a per-neuron pass would cost {subject.neurons_per_layer}x the sweep")

    print(json.dumps({
        "bench": "sasc", "quick": args.quick, "model": args.model, "device": str(subject.loaded.device),
        "dtype": str(subject.dtype).removeprefix("torch."), "layer": layer, "neurons": swept.neuron_count,
        "ngrams": len(ngrams), "tokens_per_ngram": round(tokens / len(ngrams), 3), "sweep_s": round(sweep_s, 3),
        "ngrams_per_s": round(len(ngrams) / sweep_s, 1), "tokens_per_s": round(tokens / sweep_s, 1),
        "neuron_ngram_responses_per_s": round(len(ngrams) * swept.neuron_count / sweep_s),
        "subset": len(subset), "batching_speedup": round(batching_speedup, 2),
        "all_layers_vs_one_layer": round(all_layers_ratio, 3), "cache_load_s": round(cache_s, 3),
        "cache_mb": round(cache_bytes / 1e6, 1), "model_load_s": round(load_s, 2),
    }))


if __name__ == "__main__":
    main()
