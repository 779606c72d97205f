"""Benchmark the LLM backends; every figure is a ratio measured side by side in this run.

(a) local slot distributions on the bundled SmolLM2 (`local:default`) shaped like the all-at-once simulator
    (a ~500-token shared prefix, 64-token windows as `token<TAB>unknown` lines, candidates "0".."10"):
    the batched, prefix-cached, slot-only SlotScorer against the naive path (one prompt at a time, full forward,
    logits for every token). The naive path reads only the first token of "10" (cheaper than exact), so the
    ratio understates the speedup over an exact naive computation. Target >= 5x on CPU.
(b) the OpenAI backend against the loopback fake server with 200 ms fixed latency: achieved requests/s divided
    by concurrency limit / latency. Target >= 0.9.

Usage: .venv/bin/python scripts/bench_llm.py [--quick] [--windows N] [--skip-local] [--skip-remote] [--bf16]
Prints a table and a final JSON line {"bench": "llm", ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

PREFIX_TEXT = (
    "We study neurons in a language model. Each neuron looks for some particular thing in a short document. "
    "Look at an explanation of what the neuron does, and try to predict its activations on each token.\n\n"
    "The activation format is token<tab>activation. Activations go from 0 to 10, \"unknown\" indicates an "
    "unknown activation. Most activations will be 0.\n\n"
)


def corpus_text() -> str:
    """English text shipped with CPython (the project's offline corpus source)."""
    import pydoc_data.topics

    return "\n".join(pydoc_data.topics.topics[name] for name in sorted(pydoc_data.topics.topics))


def shown(token: str) -> str:
    return token.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")


def build_prompts(tokenizer, windows: int, *, window_tokens: int = 64, prefix_tokens: int = 500):
    """SlotPrompts shaped like the all-at-once simulator's: shared prefix, one slot per window token."""
    from neuron_explainer.llm import SlotPrompt

    ids = tokenizer(corpus_text(), add_special_tokens=False)["input_ids"]
    # Few-shot part of the prefix: windows with made-up activations, until the prefix is ~prefix_tokens long.
    prefix = PREFIX_TEXT
    cursor = 0
    while len(tokenizer(prefix)["input_ids"]) < prefix_tokens:
        chunk = ids[cursor: cursor + 16]
        cursor += 16
        lines = "".join(f"{shown(tokenizer.decode([token]))}\t{(token * 7) % 11 if token % 5 == 0 else 0}\n"
                        for token in chunk)
        prefix += f"Neuron example\nActivations:\n<start>\n{lines}<end>\n\n"
    prefix += "Neuron to simulate\nExplanation of neuron behaviour: the main thing this neuron does is find words " \
              "related to programming.\nActivations:\n<start>\n"
    prompts = []
    cursor += 1000
    for _ in range(windows):
        window = [shown(tokenizer.decode([token])) for token in ids[cursor: cursor + window_tokens]]
        cursor += window_tokens * 3
        pieces = [f"{window[0]}\t"] + [f"unknown\n{token}\t" for token in window[1:]] + ["unknown\n<end>\n"]
        prompts.append(SlotPrompt(prefix=prefix, pieces=tuple(pieces)))
    return prompts, len(tokenizer(prefix)["input_ids"])


def bench_local(windows: int, *, bf16: bool) -> dict:
    import torch

    from neuron_explainer.llm.local_slots import SlotScorer, reference_slot_distributions
    from neuron_explainer.subject.loading import load_model

    loaded = load_model("default", device="cpu", dtype="float32")
    model, tokenizer = loaded.model, loaded.tokenizer
    candidates = [str(value) for value in range(11)]
    prompts, prefix_length = build_prompts(tokenizer, windows)
    suffix_tokens = sum(len(tokenizer("".join(prompt.pieces), add_special_tokens=False)["input_ids"])
                        for prompt in prompts) / len(prompts)

    # Warm-up so neither side pays first-call costs.
    reference_slot_distributions(model, tokenizer, prompts[:1], candidates, exact_multitoken=False)
    started, cpu_started = time.perf_counter(), time.process_time()
    naive = reference_slot_distributions(model, tokenizer, prompts, candidates, exact_multitoken=False)
    naive_s, naive_cpu_s = time.perf_counter() - started, time.process_time() - cpu_started

    scorer = SlotScorer(model, tokenizer, batch_size=8)
    started, cpu_started = time.perf_counter(), time.process_time()
    fast = scorer.score(prompts, candidates)
    fast_s, fast_cpu_s = time.perf_counter() - started, time.process_time() - cpu_started

    # Again with the prefix cached (as for a neuron's later windows, or a preamble shared across neurons).
    started, cpu_started = time.perf_counter(), time.process_time()
    scorer.score(prompts, candidates)
    cached_s, cached_cpu_s = time.perf_counter() - started, time.process_time() - cpu_started

    single = [candidate for candidate in candidates if candidate != "10"]
    max_error = max(abs(fast[p][s][c] - naive[p][s][c]) for p in range(len(prompts))
                    for s in range(len(naive[p])) for c in single)
    digit_mass = sum(sum(slot.values()) for prompt in fast for slot in prompt) / sum(len(prompt) for prompt in fast)
    result = {"windows": windows, "prefix_tokens": prefix_length, "suffix_tokens_per_window": round(suffix_tokens, 1),
              "naive_s": round(naive_s, 2), "fast_s": round(fast_s, 2),
              "local_speedup": round(naive_s / fast_s, 2), "local_max_abs_error": max_error,
              "naive_cpu_s": round(naive_cpu_s, 2), "fast_cpu_s": round(fast_cpu_s, 2),
              "local_speedup_cpu_time": round(naive_cpu_s / fast_cpu_s, 2),
              "fast_prefix_cached_s": round(cached_s, 2), "local_speedup_prefix_cached": round(naive_s / cached_s, 2),
              "local_speedup_prefix_cached_cpu_time": round(naive_cpu_s / cached_cpu_s, 2),
              "digit_mass_at_slots": round(digit_mass, 4), "torch_threads": torch.get_num_threads()}
    if bf16:
        bf16_model = load_model("default", device="cpu", dtype="bfloat16")
        bf16_scorer = SlotScorer(bf16_model.model, bf16_model.tokenizer, batch_size=8)
        started, cpu_started = time.perf_counter(), time.process_time()
        fast_bf16 = bf16_scorer.score(prompts, candidates)
        bf16_s, bf16_cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
        result.update({"fast_bf16_s": round(bf16_s, 2), "local_speedup_bf16": round(naive_s / bf16_s, 2),
                       "local_speedup_bf16_cpu_time": round(naive_cpu_s / bf16_cpu_s, 2),
                       "bf16_max_abs_error": max(abs(fast_bf16[p][s][c] - naive[p][s][c])
                                                 for p in range(len(prompts)) for s in range(len(naive[p]))
                                                 for c in single)})
    return result


def bench_remote(requests: int, *, concurrency: int, latency: float = 0.2) -> dict:
    """Requests/s through the OpenAI backend against the fake server, run in its own process so the two do not
    share one interpreter lock."""
    from neuron_explainer.llm import Message, make_backend

    server = subprocess.Popen([sys.executable, str(REPO / "tests" / "fake_openai_server.py"), "--latency",
                               str(latency)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        base_url = server.stdout.readline().strip()

        async def run() -> float:
            backend = make_backend(f"openai:fake-model@{base_url}", concurrency=concurrency)
            # One round first so connection set-up is not measured.
            await backend.generate_many([[Message("user", f"warm {index}")] for index in range(concurrency)])
            started = time.perf_counter()
            await backend.generate_many([[Message("user", f"question {index}")] for index in range(requests)])
            elapsed = time.perf_counter() - started
            await backend.aclose()
            return elapsed

        elapsed = asyncio.run(run())
    finally:
        server.stdin.close()
        server.wait(timeout=30)
    achieved = requests / elapsed
    ideal = concurrency / latency
    return {"remote_requests": requests, "remote_concurrency": concurrency, "remote_latency_s": latency,
            "remote_requests_per_s": round(achieved, 1), "remote_ideal_per_s": ideal,
            "remote_efficiency": round(achieved / ideal, 3)}


def main() -> None:
    from neuron_explainer.llm import RateLimits

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (< 1 minute)")
    parser.add_argument("--windows", type=int, default=None, help="windows for the local benchmark (default 20)")
    parser.add_argument("--bf16", action="store_true", help="also time the scorer in bfloat16")
    parser.add_argument("--concurrency", type=int, default=RateLimits().concurrency,
                        help="remote concurrency limit (default: the backend default)")
    parser.add_argument("--skip-local", action="store_true")
    parser.add_argument("--skip-remote", action="store_true")
    args = parser.parse_args()
    figures: dict = {"bench": "llm", "quick": args.quick}
    if not args.skip_remote:
        figures.update(bench_remote((6 if args.quick else 40) * args.concurrency, concurrency=args.concurrency))
        print(f"remote: {figures['remote_requests_per_s']} req/s of an ideal {figures['remote_ideal_per_s']} "
              f"(efficiency {figures['remote_efficiency']}, target >= 0.9)")
    if not args.skip_local:
        figures.update(bench_local(args.windows or (2 if args.quick else 20), bf16=args.bf16))
        print(f"local slots: naive {figures['naive_s']} s, batched+prefix-cached {figures['fast_s']} s "
              f"-> {figures['local_speedup']}x wall, {figures['local_speedup_cpu_time']}x CPU time (target >= 5x), "
              f"max |error| {figures['local_max_abs_error']:.2e}; with the prefix already cached "
              f"{figures['local_speedup_prefix_cached']}x wall, {figures['local_speedup_prefix_cached_cpu_time']}x CPU")
        if args.bf16:
            print(f"local slots bf16: {figures['fast_bf16_s']} s -> {figures['local_speedup_bf16']}x vs naive float32")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
