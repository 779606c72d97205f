"""Planted check of the weight views on a real model: do a neuron's exciting input tokens include the tokens it
fires on in its recording, and do its promoted output tokens include the tokens that follow? Against a
shuffled-neuron baseline (neuron_explainer/eval/weight_agreement.py). Records the bundled model if needed.

    .venv/bin/python scripts/check_weight_views.py --records /tmp/wv-records --layers 2,14,27 --windows 1000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", required=True, help="record store (recorded here from --model if missing)")
    parser.add_argument("--model", default="default")
    parser.add_argument("--layers", default="2,14,27")
    parser.add_argument("--windows", type=int, default=1000)
    parser.add_argument("--top", type=int, default=20, help="tokens of each weight view compared")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from neuron_explainer.activations import RecordConfig, RecordStore, record
    from neuron_explainer.activations.weight_views import WeightViews, compute_weight_views
    from neuron_explainer.eval.weight_agreement import weight_view_agreement

    load_before = os.getloadavg()
    timings = {}
    if not (Path(args.records) / "manifest.json").is_file():
        started = time.monotonic()
        record(RecordConfig(model=args.model, layers=args.layers, windows=args.windows), args.records,
               progress=sys.stderr.isatty())
        timings["record_s"] = round(time.monotonic() - started, 1)
    store = RecordStore.open(args.records)
    if WeightViews.open(store) is None:
        summary = compute_weight_views(args.records, top_k=max(args.top, 20))
        timings["weight_views_s_per_layer"] = summary.seconds_per_layer
        timings["model_load_s"] = summary.load_seconds
    report = weight_view_agreement(store, top=args.top)
    result = {"store": str(store.path), "model": store.manifest.model_id, "windows": store.num_windows,
              "top": args.top, "layers": [asdict(item) for item in report], **timings,
              "load_average_before": [round(value, 2) for value in load_before],
              "load_average_after": [round(value, 2) for value in os.getloadavg()], "cpus": os.cpu_count()}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['model']}: {result['windows']} windows, top-{args.top} weight tokens; "
          f"load average {result['load_average_before'][0]} -> {result['load_average_after'][0]} on "
          f"{result['cpus']} CPUs; {timings}")
    print("layer  neurons  input matched  input shuffled  output matched  output shuffled")
    for item in report:
        print(f"{item.layer:5d}  {item.neurons:7d}  {item.input_matched:13.1%}  {item.input_shuffled:14.1%}  "
              f"{item.output_matched:14.1%}  {item.output_shuffled:15.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
