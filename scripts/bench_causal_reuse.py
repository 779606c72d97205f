"""How much the causal runner saves by starting replaced rows at the neuron's block: the same requests scored with
the whole model per row and with the reused hidden states, side by side on the bundled model.

    python scripts/bench_causal_reuse.py --records STORE --layers 2,14 --windows 4

Each layer: one neuron, `--windows` recorded windows with random replacement values (the cost does not depend on
them), so 1 unchanged + 2 replaced rows per window. Runs the modes A B B A and prints wall and CPU seconds of each run, the CPU ratio, whether the numbers agree,
and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from neuron_explainer.activations import RecordStore
from neuron_explainer.activations.weight_views import load_loadable_model
from neuron_explainer.causal import CausalRequest, CausalRunner
from neuron_explainer.core.neurons import NeuronId
from neuron_explainer.subject.hooks import resolve_hook_point


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", required=True)
    parser.add_argument("--layers", default="2,14")
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    store = RecordStore.open(args.records)
    loaded = load_loadable_model(store.manifest.model_id, dtype="float32")
    hook_point = resolve_hook_point(loaded.model.base_model, hook_template=store.manifest.hook_point)
    tokens = store.token_ids
    prefix = store.manifest.tokenizer.get("prefix_token_ids", [])
    rng = np.random.default_rng(0)
    window_ids = list(range(args.windows))
    report: dict[str, object] = {"load_average_start": os.getloadavg(), "windows": args.windows,
                                 "rows_per_layer": args.windows * 3}
    for layer in (int(part) for part in args.layers.split(",")):
        request = CausalRequest("n", NeuronId(layer, 0), tuple((w, rng.normal(size=tokens.shape[1]))
                                                              for w in window_ids), ablation_value=0.0)
        timings: dict[str, list[float]] = {"whole model": [], "reused prefix": []}
        cpu: dict[str, list[float]] = {"whole model": [], "reused prefix": []}
        scores = {}
        # A B B A, so a load spike from the machine's other users weighs on both modes alike.
        for mode in ("whole model", "reused prefix", "reused prefix", "whole model"):
            runner = CausalRunner(loaded.model, hook_point, prefix_ids=prefix, batch_size=args.batch_size,
                                  reuse_prefix=mode == "reused prefix")
            started, started_cpu = time.monotonic(), time.process_time()
            scores[mode] = runner.score_layer(layer, [request], lambda w: tokens[w], bootstrap_samples=0)["n"]
            timings[mode].append(time.monotonic() - started)
            cpu[mode].append(time.process_time() - started_cpu)
        whole, reused = scores["whole model"], scores["reused prefix"]
        report[f"layer {layer}"] = {
            "wall seconds": {mode: [round(value, 2) for value in values] for mode, values in timings.items()},
            "cpu seconds": {mode: [round(value, 2) for value in values] for mode, values in cpu.items()},
            "speed-up (cpu, sum of both runs)": round(sum(cpu["whole model"]) / sum(cpu["reused prefix"]), 2),
            "kl_ablated": [whole.kl_ablated, reused.kl_ablated], "kl_simulated": [whole.kl_simulated,
                                                                              reused.kl_simulated]}
    report["load_average_end"] = os.getloadavg()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
