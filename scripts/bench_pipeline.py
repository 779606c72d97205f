"""Benchmark the nightly run end to end on the offline default: neurons per minute and tokens per neuron per method.

One recording of the default subject model (SmolLM2-135M) over python-docs windows, made through the run's own
record-or-reuse step, then one `run_pipeline` per method on the same sampled neurons, each into its own fresh
database, all with the same backend:

- `lexicon` explainer + `lexical` simulator: the LLM-free path (no tokens), and the older `ngram` explainer beside
  it;
- `token-pairs` explainer + the backend's default simulator (all-at-once slots for `local:default`): the offline
  default of `neuron-explainer run`;
- `sasc` explainer + the same simulator (full mode only: it asks the backend for 20 sentences per side per
  candidate, minutes per neuron on a 2-core CPU).

Neurons per minute count explain + simulate + score + database writes (recording excluded; its windows/s is
reported apart). Tokens per neuron are the run's ledger totals (every LLM call of explaining and scoring) divided
by the neurons done. Peak RSS is this process's.

    .venv/bin/python scripts/bench_pipeline.py [--quick] [--llm-free] [--records DIR] [--llm local:default]
        [--layer 3] [--windows 300] [--neurons 12] [--llm-neurons 3]

The last line printed is a JSON summary: {"bench": "pipeline", ...}.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def run_method(base: dict, directory: Path, name: str, explainers: tuple[str, ...], simulator: str | None,
               neurons: str) -> dict:
    """One run of one method into a fresh database; its throughput and usage."""
    from neuron_explainer.pipeline import RunConfig, run_pipeline

    config = RunConfig(**base, db=f"sqlite:///{directory / f'{name}.db'}", explainers=explainers,
                       simulator=simulator, neurons=neurons)
    summary = run_pipeline(config, progress=False)
    done = max(summary.done, 1)
    return {"neurons": summary.done, "failed": summary.failed, "seconds": round(summary.seconds, 2),
            "neurons_per_minute": round(60 * summary.done / summary.seconds, 3) if summary.seconds else None,
            "prompt_tokens_per_neuron": round(summary.prompt_tokens / done, 1),
            "completion_tokens_per_neuron": round(summary.completion_tokens / done, 1),
            "tokens_per_neuron": round((summary.prompt_tokens + summary.completion_tokens) / done, 1),
            "cost_usd_per_neuron": round(summary.cost_usd / done, 6),
            "mean_score": _positive_mean(summary)}


def _positive_mean(summary: object) -> float | None:
    """The run's mean positive-polarity score over defined scores, rounded (None without one)."""
    mean = getattr(summary, "scores").get("positive", {}).get("mean")
    return None if mean is None else round(mean, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (about a minute on 2 CPU cores)")
    parser.add_argument("--model", default="default", help="subject model")
    parser.add_argument("--llm", default="local:default", help="the backend every LLM method uses")
    parser.add_argument("--layer", type=int, default=3, help="layer recorded and explained")
    parser.add_argument("--windows", type=int, default=None, help="windows recorded (default 300, quick 60)")
    parser.add_argument("--neurons", type=int, default=None, help="neurons for the LLM-free method (default 24)")
    parser.add_argument("--llm-free", action="store_true", help="only the LLM-free methods (lexicon, ngram)")
    parser.add_argument("--records", default=None,
                        help="reuse this record store (recorded with --layer) instead of recording")
    parser.add_argument("--llm-neurons", type=int, default=None, help="neurons per LLM method (default 3, quick 1)")
    args = parser.parse_args()
    windows = args.windows or (60 if args.quick else 300)
    cheap_neurons = args.neurons or (12 if args.quick else 24)
    llm_neurons = args.llm_neurons or (1 if args.quick else 3)

    from neuron_explainer.pipeline import RunConfig, ensure_records

    result: dict = {"bench": "pipeline", "quick": args.quick, "model": args.model, "llm": args.llm,
                    "layer": args.layer, "windows": windows}
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as scratch:
        directory = Path(scratch)
        # Small splits in quick mode: each simulated window costs the local model about a second on 2 cores.
        split = ({"explain_windows": 3, "score_top_windows": 2, "score_random_windows": 2} if args.quick else {})
        base = dict(model=args.model, layers=str(args.layer), windows=windows, ctx=64,
                    records_root=str(directory / "records"), llm=args.llm, concurrency=4, **split)
        if args.records:
            from neuron_explainer.activations import RecordStore

            store = RecordStore.open(args.records)
            result["records"] = args.records
            print(f"reusing {store.num_windows} recorded windows of {args.records}")
        else:
            started = time.perf_counter()
            store = ensure_records(RunConfig(**base), progress=False)
            record_s = time.perf_counter() - started
            result.update({"record_s": round(record_s, 2),
                           "record_windows_per_s": round(store.num_windows / record_s, 2)})
            print(f"recorded {store.num_windows} windows of layer {args.layer} in {record_s:.1f} s")
        base["records"] = str(store.path)
        methods = {name: run_method(base, directory, name, (name,), "lexical", f"{args.layer}:0-{cheap_neurons - 1}")
                   for name in ("lexicon", "ngram")}
        llm_spec = f"{args.layer}:0-{llm_neurons - 1}"
        if not args.llm_free:
            methods["token-pairs"] = run_method(base, directory, "token-pairs", ("token-pairs",), None, llm_spec)
        if not (args.quick or args.llm_free):
            methods["sasc"] = run_method(base, directory, "sasc", ("sasc",), None, llm_spec)
        for name, figures in methods.items():
            print(f"{name:12s} {figures['neurons']:3d} neurons in {figures['seconds']:8.1f} s -> "
                  f"{figures['neurons_per_minute']} neurons/min, {figures['tokens_per_neuron']} tokens/neuron "
                  f"({figures['prompt_tokens_per_neuron']} prompt + {figures['completion_tokens_per_neuron']} "
                  f"completion), mean score {figures['mean_score']}")
    result["methods"] = methods
    if "token-pairs" in methods:
        result["neurons_per_minute"] = methods["token-pairs"]["neurons_per_minute"]
    result["llm_free_neurons_per_minute"] = methods["lexicon"]["neurons_per_minute"]
    result["tokens_per_neuron"] = {name: figures["tokens_per_neuron"] for name, figures in methods.items()}
    result["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
