"""Benchmark: SASC's isolated n-gram pass for a full layer of the subject model, in one batched sweep.

One forward pass over a batch of n-grams yields every neuron of the layer, so a whole layer (1,536 neurons on the
default SmolLM2) costs one sweep over the n-grams, not one per neuron. Measured side by side in one run:

- the cached sweep itself (`isolated_ngram_responses`, default n-gram settings): n-grams/s and tokens/s;
- the same n-grams one per forward pass (no batching), on a subset: the batching speed-up;
- every layer up to the benchmarked one captured in the same sweep, on a subset: its cost relative to one layer;
- reading the layer back from the cache;
- the SASC explainer itself on `--explain-neurons` neurons of that layer with `--llm` (default local:default):
  before, one neuron at a time with one prompt per model call (the call pattern before explain_sasc_many), and
  after, every neuron together (`explain_sasc_many`: batched LLM calls, one subject pass for all sentences), on
  the same n-grams, seed and settings; neurons per minute side by side, and whether every explanation and
  candidate came out the same.

    .venv/bin/python scripts/bench_sasc.py [--quick] [--model default] [--layer 29] [--max-ngrams 30000]
        [--llm local:default] [--explain-neurons 4] [--synthetic-texts 20] [--texts-max-tokens 1200]

The last line printed is a JSON summary: {"bench": "sasc", ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Sequence
from typing import Any

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
    parser.add_argument("--llm", default="local:default", help="backend of the explainer comparison")
    parser.add_argument("--explain-neurons", type=int, default=None,
                        help="neurons in the before/after explainer comparison (default 4; quick 2; 0 skips it)")
    parser.add_argument("--synthetic-texts", type=int, default=None, help="SASC sentences per side (default 20)")
    parser.add_argument("--texts-max-tokens", type=int, default=None, help="SASC sentence-list budget (default 1200)")
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

    explainer: dict[str, Any] = {}
    explain_neurons = args.explain_neurons if args.explain_neurons is not None else (2 if args.quick else 4)
    if explain_neurons > 0:
        explainer = compare_explainers(subject, swept, args, explain_neurons)

    print(json.dumps({
        "bench": "sasc", "load_average": _load_average(), "explainer": explainer, "quick": args.quick, "model": args.model, "device": str(subject.loaded.device),
        "dtype": str(subject.dtype).removeprefix("torch."), "layer": layer, "neurons": swept.neuron_count,
        "ngrams": len(ngrams), "tokens_per_ngram": round(tokens / len(ngrams), 3), "sweep_s": round(sweep_s, 3),
        "ngrams_per_s": round(len(ngrams) / sweep_s, 1), "tokens_per_s": round(tokens / sweep_s, 1),
        "neuron_ngram_responses_per_s": round(len(ngrams) * swept.neuron_count / sweep_s),
        "subset": len(subset), "batching_speedup": round(batching_speedup, 2),
        "all_layers_vs_one_layer": round(all_layers_ratio, 3), "cache_load_s": round(cache_s, 3),
        "cache_mb": round(cache_bytes / 1e6, 1), "model_load_s": round(load_s, 2),
    }))


def compare_explainers(subject: Any, layer: Any, args: argparse.Namespace, count: int) -> dict[str, Any]:
    """SASC neurons per minute before (one neuron and one prompt at a time) and after (explain_sasc_many)."""
    from neuron_explainer.explain import SascConfig, explain_sasc, explain_sasc_many
    from neuron_explainer.llm import make_backend

    defaults = SascConfig()
    config = SascConfig(
        synthetic_texts=args.synthetic_texts or (4 if args.quick else defaults.synthetic_texts),
        texts_max_tokens=args.texts_max_tokens or (120 if args.quick else defaults.texts_max_tokens),
        min_synthetic_texts=2 if args.quick else defaults.min_synthetic_texts)
    # Neurons spread over the layer; the same n-grams (and so the same prompts) feed both runs.
    neurons = [layer.for_neuron(index * layer.neuron_count // count) for index in range(count)]
    backend = make_backend(args.llm)
    print(f"SASC explainer on {count} neurons of layer {layer.layer} with {args.llm} "
          f"({config.candidates} candidates, {config.synthetic_texts} sentences per side, "
          f"{config.texts_max_tokens} tokens per list); load {_load_average()}", flush=True)

    async def before() -> list:
        unbatched = _OnePromptPerCall(backend)
        return [await explain_sasc(ngrams, subject, unbatched, config=config) for ngrams in neurons]

    async def after() -> list:
        def step(phase: str, neurons_in_batch: int, size: int) -> None:
            print(f"  after: {phase} for {neurons_in_batch} neuron(s), {size} item(s)", flush=True)

        return await explain_sasc_many(neurons, subject, backend, config=config, on_step=step)

    timings, results = {}, {}
    for name, run in (("before", before), ("after", after)):
        started = time.perf_counter()
        results[name] = asyncio.run(run())
        timings[name] = time.perf_counter() - started
        print(f"  {name:>6}: {count} neurons in {timings[name]:.1f} s = {60 * count / timings[name]:.3f} neurons/min "
              f"(load {_load_average()})", flush=True)
    same = [_outcome(first) == _outcome(second) for first, second in zip(results["before"], results["after"])]
    speedup = timings["before"] / timings["after"]
    print(f"SASC explainer: {speedup:.2f}x neurons per minute after vs before; identical explanations and "
          f"candidates for {sum(same)} of {count} neurons")
    return {"llm": args.llm, "neurons": count, "synthetic_texts": config.synthetic_texts,
            "texts_max_tokens": config.texts_max_tokens, "before_s": round(timings["before"], 2),
            "after_s": round(timings["after"], 2),
            "before_neurons_per_minute": round(60 * count / timings["before"], 4),
            "after_neurons_per_minute": round(60 * count / timings["after"], 4), "speedup": round(speedup, 3),
            "identical_outcomes": sum(same), "failures": sum(not hasattr(r, "text") for r in results["after"])}


def _outcome(result: Any) -> tuple:
    """What must not change: the chosen text and every candidate's text and sentence counts (or the failure)."""
    if not hasattr(result, "text"):
        return ("failure", result.reason)
    return (result.text, tuple((candidate["text"], candidate["concept_texts"], candidate["contrast_texts"])
                               for candidate in result.extra["candidates"]))


class _OnePromptPerCall:
    """A backend proxy whose generate_many sends one prompt per model call, as SASC did before batching."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend
        self.name, self.model, self.capabilities = backend.name, backend.model, backend.capabilities

    async def generate(self, prompt: Any, **settings: Any) -> Any:
        return await self._backend.generate(prompt, **settings)

    async def generate_many(self, prompts: Sequence[Any], **settings: Any) -> list:
        return list(await asyncio.gather(*(self._backend.generate(prompt, **settings) for prompt in prompts)))


def _load_average() -> str:
    return " / ".join(f"{value:.2f}" for value in os.getloadavg())


if __name__ == "__main__":
    main()
