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


def _paired(plain: list[float], weights: list[float]) -> dict[str, object]:
    differences = [after - before for before, after in zip(plain, weights)]
    return {"n": len(differences),
            "mean_plain": statistics.fmean(plain) if plain else math.nan,
            "mean_weights": statistics.fmean(weights) if weights else math.nan,
            "mean_difference": statistics.fmean(differences) if differences else math.nan,
            "difference_ci95": bootstrap_interval(differences) if len(differences) > 1 else None,
            "better_with_weights": sum(difference > 0 for difference in differences),
            "worse_with_weights": sum(difference < 0 for difference in differences)}


def compare(neurons: list[str], scores: dict[str, dict[str, float]]) -> dict[str, object]:
    """The paired comparison twice: over neurons where both scores are defined, and over every neuron with an
    undefined score or a failed explanation counted as 0 (the project's "undefined = 0" mean)."""
    both = [neuron for neuron in neurons if neuron in scores["plain"] and neuron in scores["weights"]]
    return {"defined_pairs": _paired([scores["plain"][n] for n in both], [scores["weights"][n] for n in both]),
            "undefined_as_zero": _paired([scores["plain"].get(n, 0.0) for n in neurons],
                                         [scores["weights"].get(n, 0.0) for n in neurons])}


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
    parser.add_argument("--combine", nargs="*", default=None,
                        help="only compare: pool the report.json files of earlier runs (no explaining)")
    args = parser.parse_args()
    if args.combine is not None:
        neurons, scores = [], {"plain": {}, "weights": {}}
        for path in args.combine:
            earlier = json.loads(Path(path).read_text(encoding="utf-8"))
            neurons += earlier["neurons"]
            for neuron, entry in earlier["per_neuron"].items():
                for name in ("plain", "weights"):
                    if entry[name][1] is not None:
                        scores[name][neuron] = entry[name][1]
        print(json.dumps({"runs": args.combine, **compare(neurons, scores)}, indent=2))
        return

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
    report = {"neurons": neurons, "llm": args.llm, "simulator": args.simulator,
              "seconds": {key: round(value, 1) for key, value in timings.items()},
              "load_average_end": os.getloadavg(), **compare(neurons, scores),
              "per_neuron": {neuron: {"plain": [texts["plain"].get(neuron), scores["plain"].get(neuron)],
                                      "weights": [texts["weights"].get(neuron), scores["weights"].get(neuron)]}
                             for neuron in neurons}}
    (out / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(json.dumps({key: value for key, value in report.items() if key != "per_neuron"}, indent=2))


if __name__ == "__main__":
    main()
