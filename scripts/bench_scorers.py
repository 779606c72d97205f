"""What each explain/score method costs per neuron, and whether the cheap scorers rank explanations like simulation.

On the planted suite (real corpus windows, known concepts) every neuron gets three explanations of different
quality: its true concept, the LLM-free n-gram explanation, and another neuron's concept (shuffled). Each one is
scored by simulation and by detection and fuzzing with the same backend; the script prints requests and tokens per
neuron of every method side by side (token-pairs explaining, generated and all-at-once simulation, detection,
fuzzing, n-gram) and the Spearman correlation of each cheap scorer with the simulation score over all
(neuron, explanation) pairs.

    python scripts/bench_scorers.py --backend loopback --neurons 16        # scripted model on 127.0.0.1
    python scripts/bench_scorers.py --backend local:default --neurons 6    # the bundled SmolLM2 in-process

Tokens on the loopback server are counted by its word-level tokenizer (tests/fake_openai_server.py), so the ratios
between methods carry over to an API, the absolute numbers only roughly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from neuron_explainer.activations import RecordStore  # noqa: E402
from neuron_explainer.eval.store import build_planted_store  # noqa: E402
from neuron_explainer.eval.suite import load_suite  # noqa: E402
from neuron_explainer.explain import ExplainConfig, SplitConfig, explain_neuron, explain_ngram  # noqa: E402
from neuron_explainer.explain.ngrams import in_context_ngrams_for_record  # noqa: E402
from neuron_explainer.explain.types import Explanation  # noqa: E402
from neuron_explainer.llm import UsageLedger, make_backend  # noqa: E402
from neuron_explainer.scoring import ScoreConfig, score_explanation  # noqa: E402
from neuron_explainer.scoring_llm import ClassifierScore, ClassifierScorer  # noqa: E402
from neuron_explainer.simulate import Score, make_simulator  # noqa: E402

LABELS = ("concept", "shuffled", "ngram", "token-pairs")


def spearman(first: list[float], second: list[float]) -> float:
    """Spearman's rank correlation over pairs where both are finite (average ranks for ties)."""
    pairs = [(a, b) for a, b in zip(first, second) if math.isfinite(a) and math.isfinite(b)]
    if len(pairs) < 3:
        return math.nan

    def ranks(values: list[float]) -> np.ndarray:
        order = np.argsort(values, kind="mergesort")
        result = np.empty(len(values))
        sorted_values = np.asarray(values)[order]
        start = 0
        while start < len(values):
            end = start
            while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
                end += 1
            result[order[start:end + 1]] = (start + end) / 2
            start = end + 1
        return result

    a, b = ranks([p[0] for p in pairs]), ranks([p[1] for p in pairs])
    if a.std() == 0 or b.std() == 0:
        return math.nan
    return float(np.corrcoef(a, b)[0, 1])


class Meter:
    """Requests and tokens of one method, from the backend's ledger, per unit of work."""

    def __init__(self, ledger: UsageLedger) -> None:
        self.ledger = ledger
        self.totals: dict[str, list[float]] = {}

    async def measure(self, method: str, work: Any) -> Any:
        before = len(self.ledger.entries)
        started = time.perf_counter()
        result = await work
        fresh = [entry for entry in self.ledger.entries[before:] if not entry.from_cache]
        total = self.totals.setdefault(method, [0, 0, 0, 0, 0.0])
        total[0] += 1
        total[1] += len(fresh)
        total[2] += sum(entry.prompt_tokens for entry in fresh)
        total[3] += sum(entry.completion_tokens for entry in fresh)
        total[4] += time.perf_counter() - started
        return result

    def per_unit(self, method: str) -> dict[str, float]:
        units, requests, prompt, completion, seconds = self.totals.get(method, [0, 0, 0, 0, 0.0])
        units = max(units, 1)
        return {"requests": requests / units, "prompt_tokens": prompt / units, "completion_tokens": completion / units,
                "tokens": (prompt + completion) / units, "seconds": round(seconds / units, 2)}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    split = SplitConfig(seed=0, score_top=args.score_top, score_random=args.score_random)
    labels = [label.strip() for label in args.explanations.split(",") if label.strip()]
    if unknown := set(labels) - set(LABELS):
        raise SystemExit(f"unknown explanations {sorted(unknown)}; choose from {', '.join(LABELS)}")
    suite = load_suite()
    store_info = build_planted_store(suite)
    store = RecordStore.open(store_info.path)
    indices = list(range(len(suite.neurons)))
    random.Random(0).shuffle(indices)
    indices = sorted(indices[:args.neurons])
    ledger = UsageLedger()
    meter = Meter(ledger)
    server = None
    if args.backend == "loopback":
        from fake_openai_server import FakeOpenAIServer
        from scripted_llm import competent_model

        # Slot reads (all-at-once via prompt logprobs) go to /completions: their answer text is never read.
        server = FakeOpenAIServer(responder=lambda body: competent_model(body) if "messages" in body else "0")
        spec = server.backend_spec("gpt-4o-mini")
        slot_spec = server.backend_spec("gpt-4o-mini", "slots=prompt_logprobs")
    else:
        spec = slot_spec = args.backend
    backend = make_backend(spec, ledger=ledger)
    slot_backend = make_backend(slot_spec, ledger=ledger) if slot_spec != spec else backend
    wanted = [name.strip() for name in args.simulators.split(",") if name.strip()]
    simulators = {name: make_simulator(name, slot_backend if name == "all-at-once" else backend) for name in wanted
                  if name != "all-at-once" or slot_backend.capabilities.slot_distributions}
    classifiers = {kind: ClassifierScorer(kind, backend) for kind in ("detection", "fuzzing")}
    concepts = {index: suite.neurons[index].concept for index in indices}
    reference = next(iter(simulators))
    rows = []
    started = time.perf_counter()
    try:
        for index in indices:
            record = store.load_neuron(0, index)
            token_pairs = await meter.measure("explain:token-pairs", explain_neuron(
                record, backend, config=ExplainConfig(split=split)))
            ngram = await meter.measure("explain:ngram", asyncio.sleep(0, explain_ngram(
                in_context_ngrams_for_record(record, split=split), split_seed=split.seed)))
            other = concepts[indices[(indices.index(index) + 1) % len(indices)]]
            candidates = {"concept": concepts[index], "shuffled": other,
                          "ngram": ngram.text if isinstance(ngram, Explanation) else ""}
            if isinstance(token_pairs, Explanation):
                candidates["token-pairs"] = token_pairs.text
            for label, text in candidates.items():
                if label not in labels:
                    continue
                row: dict[str, Any] = {"neuron": suite.neurons[index].name, "explanation": label, "text": text}
                for name, simulator in simulators.items():
                    if name != reference and label != "concept":
                        continue  # a second simulator is measured for its cost, on one explanation per neuron
                    score = await meter.measure(f"simulate:{name}", score_explanation(
                        record, text, simulator, config=ScoreConfig(split=split, bootstrap_samples=0)))
                    row[name] = score.metrics.pearson if isinstance(score, Score) else math.nan
                for kind, scorer in classifiers.items():
                    outcome = await meter.measure(f"score:{kind}", scorer.score(record, text, split=split))
                    row[kind] = outcome.metrics.balanced_accuracy if isinstance(outcome, ClassifierScore) else math.nan
                    row[f"{kind}_auroc"] = outcome.metrics.auroc if isinstance(outcome, ClassifierScore) else math.nan
                    if not isinstance(outcome, ClassifierScore):
                        row[f"{kind}_failure"] = getattr(outcome, "reason", str(outcome))[:300]
                rows.append(row)
                row["elapsed_s"] = round(time.perf_counter() - started, 1)
                print(json.dumps({key: (round(value, 3) if isinstance(value, float) else value)
                                  for key, value in row.items()}), flush=True)
    finally:
        await backend.aclose()
        if slot_backend is not backend:
            await slot_backend.aclose()
        if server is not None:
            server.close()
    agreement = {}
    for method in ("generated", "all-at-once", "detection", "fuzzing", "detection_auroc", "fuzzing_auroc"):
        if method != reference and any(method in row for row in rows):
            pairs = [row for row in rows if method in row]
            agreement[method] = spearman([row[reference] for row in pairs], [row[method] for row in pairs])
    costs = {method: meter.per_unit(method) for method in meter.totals}
    return {"backend": args.backend, "neurons": len(indices), "pairs": len(rows), "reference": reference,
            "spearman_vs_reference": agreement, "per_unit": costs, "seconds": round(time.perf_counter() - started, 1),
            "load_average": os.getloadavg(), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="loopback", help="loopback (scripted model) or a backend spec")
    parser.add_argument("--neurons", type=int, default=16, help="planted neurons (a seeded sample of the suite)")
    parser.add_argument("--simulators", default="generated,all-at-once",
                        help="simulators, the first is the reference the cheap scorers are ranked against")
    parser.add_argument("--explanations", default=",".join(LABELS),
                        help="which of each neuron's explanations are scored (fewer: a shorter run)")
    parser.add_argument("--score-top", type=int, default=10, help="held-out top windows scored per neuron")
    parser.add_argument("--score-random", type=int, default=10, help="held-out random windows scored per neuron")
    parser.add_argument("--out", default=None, help="write the full result as JSON here")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    summary = {key: value for key, value in result.items() if key != "rows"}
    print(json.dumps(summary, indent=2, default=str))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")


if __name__ == "__main__":
    main()
