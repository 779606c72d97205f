"""Does showing the weight views help the token-pairs explainer? The same neurons explained with and without
`--with-weights` by one backend, both scored by one simulator; prints the paired comparison.

    python scripts/measure_weight_prompt.py --records STORE --layers 0,14 --per-layer 10 --llm local:default \
        --simulator lexical --out /tmp/weights_prompt

The store needs weight views (`neuron-explainer weights --records STORE`). Neurons are drawn at random (seeded)
from each layer; a neuron counts only when both of its explanations were made and scored with a defined Pearson.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import time
from pathlib import Path

from neuron_explainer.activations import RecordStore
from neuron_explainer.explain import ExplainConfig
from neuron_explainer.explain_and_score import run_explain, run_score


def _pearsons(path: Path) -> dict[str, float]:
    scores = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row.get("type") == "score" and row["metrics"].get("pearson") is not None:
            scores[row["neuron"]] = float(row["metrics"]["pearson"])
    return scores


def _texts(path: Path) -> dict[str, str]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return {row["neuron"]: row["text"] for row in rows if row.get("type") == "explanation"}


def bootstrap_interval(values: list[float], *, samples: int = 10000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean."""
    generator = random.Random(seed)
    means = sorted(statistics.fmean(generator.choices(values, k=len(values))) for _ in range(samples))
    return means[int(0.025 * samples)], means[int(0.975 * samples) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", required=True)
    parser.add_argument("--layers", default="0,14")
    parser.add_argument("--per-layer", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--llm", default="local:default")
    parser.add_argument("--simulator", default="lexical", help="scores both conditions (default: lexical, no LLM)")
    parser.add_argument("--simulator-llm", default=None)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--out", required=True, help="directory for the JSONL files")
    args = parser.parse_args()

    store = RecordStore.open(args.records)
    generator = random.Random(args.seed)
    neurons = [f"{layer}:{neuron}" for layer in (int(part) for part in args.layers.split(","))
               for neuron in sorted(generator.sample(range(store.neurons_per_layer), args.per_layer))]
    spec = ",".join(neurons)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timings, scores, texts = {}, {}, {}
    for name, with_weights in (("plain", False), ("weights", True)):
        started = time.monotonic()
        run_explain(args.records, spec, llm=args.llm, out=out / f"{name}.explanations.jsonl",
                    config=ExplainConfig(with_weights=with_weights), concurrency=args.concurrency, progress=False)
        timings[f"explain {name}"] = time.monotonic() - started
        started = time.monotonic()
        run_score(args.records, spec, explanations=out / f"{name}.explanations.jsonl",
                  out=out / f"{name}.scores.jsonl", simulator=args.simulator, llm=args.simulator_llm,
                  concurrency=args.concurrency, progress=False)
        timings[f"score {name}"] = time.monotonic() - started
        scores[name] = _pearsons(out / f"{name}.scores.jsonl")
        texts[name] = _texts(out / f"{name}.explanations.jsonl")
    paired = [neuron for neuron in neurons if neuron in scores["plain"] and neuron in scores["weights"]]
    differences = [scores["weights"][neuron] - scores["plain"][neuron] for neuron in paired]
    report = {
        "neurons": neurons, "paired": len(paired), "llm": args.llm, "simulator": args.simulator,
        "mean_plain": statistics.fmean(scores["plain"][neuron] for neuron in paired) if paired else math.nan,
        "mean_weights": statistics.fmean(scores["weights"][neuron] for neuron in paired) if paired else math.nan,
        "mean_difference": statistics.fmean(differences) if differences else math.nan,
        "difference_ci95": bootstrap_interval(differences) if len(differences) > 1 else None,
        "better_with_weights": sum(difference > 0 for difference in differences),
        "worse_with_weights": sum(difference < 0 for difference in differences),
        "seconds": {key: round(value, 1) for key, value in timings.items()},
        "load_average_end": os.getloadavg(),
        "per_neuron": {neuron: {"plain": [texts["plain"].get(neuron), scores["plain"].get(neuron)],
                                "weights": [texts["weights"].get(neuron), scores["weights"].get(neuron)]}
                       for neuron in neurons},
    }
    for layer in sorted({neuron.split(":")[0] for neuron in paired}):
        layer_differences = [d for neuron, d in zip(paired, differences) if neuron.split(":")[0] == layer]
        report[f"layer {layer}"] = {"paired": len(layer_differences),
                                    "mean_difference": statistics.fmean(layer_differences),
                                    "difference_ci95": bootstrap_interval(layer_differences)
                                    if len(layer_differences) > 1 else None}
    (out / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(json.dumps({key: value for key, value in report.items() if key != "per_neuron"}, indent=2))


if __name__ == "__main__":
    main()
