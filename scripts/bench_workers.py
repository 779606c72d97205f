"""Benchmark several `run` workers on one PostgreSQL database against the loopback OpenAI server.

1, 2 and 4 workers (forked processes, each with the same --concurrency) share one night of planted word neurons
(token-pairs explainer, generated simulator) over a throwaway PostgreSQL server (tests/pg_server.py); the loopback
server (tests/fake_openai_server.py) answers every request after a fixed latency (default 200 ms), as a remote
endpoint would. Throughput is neurons per second of wall time; scaling is throughput / (N x one worker's), target
>= 0.8. Every N must store exactly the single worker's results. Also prints the per-neuron figures (requests,
prompt and completion tokens) that docs/scale.md projects a whole model from.

With `--ray`, the workers are Ray worker actors of one `run --ray` night on a local Ray cluster (as many CPUs as the
machine has) instead of forked processes, and the night is first run in one process without Ray as the reference
(its results must be equal). `--store bundled` records the bundled model (layer 0, 64 windows of 32 tokens of the
bundled corpus) instead of the planted word neurons; `--sqlite` keeps the results in a SQLite file (with Ray: the
driver is the only writer). Besides wall time (Ray: including the workers' start-up), the Ray rows give the units
phase: first LLM request sent to last answer, from the stored calls, and the fixed seconds (wall minus units phase:
start-up of the driver and the worker actors, and the tail after the last answer) that a longer night does not
multiply. Ray's workers run at this process's niceness (RAY_worker_niceness=0 unless set), like the reference.

Usage: .venv/bin/python scripts/bench_workers.py [--neurons 48] [--latency 0.2] [--concurrency 2] [--workers 1,2,4]
       [--ray] [--store words|bundled] [--sqlite]
Prints a table and a final JSON line {"bench": "workers", ...}.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from db_targets import rows  # noqa: E402
from fake_openai_server import FakeOpenAIServer  # noqa: E402
from fault_harness import results_snapshot, word_store  # noqa: E402
from pg_server import start_server  # noqa: E402
from scripted_llm import competent_model  # noqa: E402

from neuron_explainer.pipeline import RunConfig, run_pipeline  # noqa: E402


def _work(config: RunConfig) -> None:
    code = 0
    try:
        import torch

        torch.set_num_threads(1)
        run_pipeline(config, progress=False)
    except BaseException:  # noqa: BLE001 - reported through the exit code
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)


def night(url: str, store: Path, spec: str, *, workers: int, concurrency: int, cache: Path, ray: bool = False,
          neurons: str = "all") -> float:
    """Run one night with `workers` forked workers (or Ray worker actors; 0: one process without Ray); returns wall
    seconds."""
    os.environ["NEURON_EXPLAINER_CACHE"] = str(cache)  # a fresh response cache: every request reaches the server
    config = RunConfig(db=url, records=str(store), explainers=("token-pairs",), simulator="generated", llm=spec,
                       concurrency=concurrency, score_top_windows=2, score_random_windows=2, explain_windows=6,
                       neurons=neurons, ray="auto" if ray and workers else None, ray_workers=workers or None)
    start = time.perf_counter()
    if ray or not workers:
        summary = run_pipeline(config, progress=False)
        if summary.status != "completed":
            raise SystemExit(f"the night ended {summary.status}")
        return time.perf_counter() - start
    processes = [multiprocessing.get_context("fork").Process(target=_work, args=(config,)) for _ in range(workers)]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    elapsed = time.perf_counter() - start
    if any(process.exitcode != 0 for process in processes):
        raise SystemExit(f"a worker failed: exit codes {[process.exitcode for process in processes]}")
    return elapsed


def units_phase(url: str) -> float:
    """Seconds from the first LLM request sent to the last answer received, from the stored calls."""
    import datetime as dt

    calls = [(dt.datetime.fromisoformat(created).timestamp(), float(latency))
             for created, latency in rows(url, "select created_at, latency_s from llm_calls")]
    return max(end for end, _ in calls) - min(end - latency for end, latency in calls)


def bundled_store(directory: Path, neurons: int) -> tuple[Path, str]:
    """A recording of the bundled model (layer 0, 64 windows x 32 tokens) and the spec of its first neurons."""
    from neuron_explainer.activations import RecordConfig, record

    summary = record(RecordConfig(model="default", corpus="python-docs", layers="0", window_length=32, windows=64),
                     directory / "records", progress=False)
    return Path(summary.path), f"0:0-{neurons - 1}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neurons", type=int, default=48)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds the loopback server waits per answer")
    parser.add_argument("--concurrency", type=int, default=2, help="neurons in flight per worker")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--ray", action="store_true", help="Ray worker actors of one `run --ray` night")
    parser.add_argument("--store", choices=("words", "bundled"), default="words")
    parser.add_argument("--sqlite", action="store_true", help="a SQLite file instead of a PostgreSQL database")
    args = parser.parse_args()
    counts = [int(part) for part in args.workers.split(",")]
    scratch = Path(tempfile.mkdtemp(prefix="bench_workers_"))
    if args.store == "bundled":
        store, neurons = bundled_store(scratch, args.neurons)
    else:
        store, neurons = word_store(scratch, neurons=args.neurons, words=min(args.neurons, 40)), "all"
    if args.ray:
        import ray

        # Ray starts its workers at niceness 15 by default; the one-process reference runs at this process's.
        os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        counts = [0, *counts]  # the one-process night first: the reference every Ray night must equal
    load_before = os.getloadavg()
    server = None if args.sqlite else start_server()
    databases = iter(range(1000))

    def new_database() -> str:
        return str(scratch / f"bench-{next(databases)}.db") if server is None else \
            server.new_database("bench")

    results: dict[int, dict] = {}
    try:
        with FakeOpenAIServer(responder=competent_model, latency=args.latency) as llm:
            spec = llm.backend_spec("competent", "timeout=30&attempts=3&backoff=0.05")
            reference = None
            for workers in counts:
                url = new_database()
                llm.reset()
                seconds = night(url, store, spec, workers=workers, concurrency=args.concurrency,
                                cache=scratch / f"cache-{workers}", ray=args.ray, neurons=neurons)
                snapshot = results_snapshot(url)
                reference = reference or snapshot
                [(prompt_tokens, completion_tokens, calls)] = rows(
                    url, "select sum(prompt_tokens), sum(completion_tokens), count(*) from llm_calls")
                done = [json.loads(totals).get("done", 0) for (totals,) in rows(url, "select totals_json from runs")]
                results[workers] = {
                    "seconds": round(seconds, 2), "neurons_per_s": round(args.neurons / seconds, 3),
                    "identical_to_first": snapshot == reference, "neurons_done_per_worker": sorted(done),
                    "requests": llm.count(), "requests_per_neuron": round(llm.count() / args.neurons, 2),
                    "prompt_tokens_per_neuron": round(int(prompt_tokens) / args.neurons, 1),
                    "completion_tokens_per_neuron": round(int(completion_tokens) / args.neurons, 1),
                    "ledger_calls": int(calls), "units_phase_s": round(units_phase(url), 2)}
                row = results[workers]
                row["units_phase_neurons_per_s"] = round(args.neurons / row["units_phase_s"], 3)
                # What a longer night would not multiply: start-up (driver and workers) and the last units' tail.
                row["fixed_s"] = round(row["seconds"] - row["units_phase_s"], 2)
                first = counts[1] if args.ray else counts[0]
                if workers == 0:
                    print(f"one process, no Ray: {row['seconds']:7.2f} s  {row['neurons_per_s']:6.3f} neurons/s  "
                          f"(units phase {row['units_phase_s']:.2f} s)")
                    continue
                for key, label in (("neurons_per_s", "scaling"), ("units_phase_neurons_per_s", "units_phase_scaling")):
                    row[label] = round(row[key] / (workers * results[first][key] / first), 3)
                print(f"{workers} worker(s): {row['seconds']:7.2f} s  {row['neurons_per_s']:6.3f} neurons/s  "
                      f"scaling {row['scaling']:.2f} x N  units phase {row['units_phase_s']:.2f} s (scaling "
                      f"{row['units_phase_scaling']:.2f})  fixed {row['fixed_s']:.1f} s  "
                      f"identical {row['identical_to_first']}  "
                      f"done per run {row['neurons_done_per_worker']}")
    finally:
        if server is not None:
            server.stop()
    load_after = os.getloadavg()
    first = results[counts[0]]
    measured = {workers: row for workers, row in results.items() if workers}
    print(f"per neuron: {first['requests_per_neuron']} requests, {first['prompt_tokens_per_neuron']} prompt and "
          f"{first['completion_tokens_per_neuron']} completion tokens; load average {load_before[0]:.1f} -> "
          f"{load_after[0]:.1f} on {os.cpu_count()} CPUs")
    print(json.dumps({"bench": "workers", "mode": "ray" if args.ray else "processes", "store": args.store,
                      "database": "sqlite" if server is None else "postgresql", "neurons": args.neurons, "latency_s": args.latency,
                      "concurrency_per_worker": args.concurrency, "results": results,
                      "load_average_before": round(load_before[0], 2), "load_average_after": round(load_after[0], 2),
                      "cpus": os.cpu_count(),
                      "meets_target": all(row["scaling"] >= 0.8 and row["identical_to_first"]
                                          for row in measured.values())}))


if __name__ == "__main__":
    main()
