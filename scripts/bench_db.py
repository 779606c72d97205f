"""Benchmark the results database; figures are measured side by side in this run.

(a) Writer throughput: 64 asyncio producers each write N neurons (explanation + score with 10 scored 64-token
    windows + one ledger entry) through the single batching writer; the same load with batching switched off
    (batch_size=1: one transaction per record) gives the batching speedup. No "database is locked" is allowed.
(b) Query latency on a database of synthetic rows shaped like a GPT-2 XL night (48 layers x 6,250 = 300,000
    neurons, one token-pairs explanation each plus a SASC one for 20%, every explanation scored), generated with
    bulk inserts. Median of 5 warm runs per query; target < 200 ms for a filtered, sorted top-50 query.
    (b) runs on a SQLite file and, side by side, on a throwaway PostgreSQL server that this script starts from
    Debian's binaries (tests/pg_server.py; a free loopback port, removed afterwards); `--no-postgres` skips that.

Usage: .venv/bin/python scripts/bench_db.py [--quick] [--neurons N] [--producers 64] [--per-producer N]
       [--db URL] [--keep] [--no-postgres]
Prints a table and a final JSON line {"bench": "db", ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from neuron_explainer.core.neurons import NeuronId  # noqa: E402
from neuron_explainer.db import (LLMCall, ExplanationQuery, explanation_config_key, open_database,  # noqa: E402
                                 score_config_key)
from neuron_explainer.db.codec import dump_json  # noqa: E402
from neuron_explainer.db.models import ExplanationRow, NeuronRow, ScoreRow, ScoreWindowsRow  # noqa: E402
from neuron_explainer.explain.types import ExplainerKind, Explanation, Polarity  # noqa: E402
from neuron_explainer.simulate.types import Metrics, Score, ScoredWindow, SimulatorKind, WindowSplit  # noqa: E402

TARGET_MS = 200.0
WORDS = ("python keyword def class function return import module string number list dict tuple token bracket "
         "parenthesis comma colon indentation comment docstring variable argument attribute method exception "
         "error loop while for if else operator plus minus equals quote newline space capital letter digit "
         "year date name file path url version english french verb noun adjective plural past tense").split()


def _keys(manifest_hash: str) -> dict[str, str]:
    common = dict(subject_model="gpt2-xl", model_fingerprint="fp", manifest_hash=manifest_hash, polarity="positive",
                  backend="openai:gpt-4o-mini", model="gpt-4o-mini", prompt_hash="p", split_seed=0, parameters={})
    return {
        "token-pairs": explanation_config_key(method="token-pairs", **common),
        "sasc": explanation_config_key(method="sasc", **common),
        "score": score_config_key(manifest_hash=manifest_hash, simulator="all-at-once", backend="openai:gpt-4o-mini",
                                  model="gpt-4o-mini", prompt_hash="s", split_seed=0, parameters={}),
    }


# --- (a) writer throughput ------------------------------------------------------------------------------------


def _scored_windows(rng: np.random.Generator) -> tuple[ScoredWindow, ...]:
    return tuple(ScoredWindow(window_id=int(rng.integers(0, 100_000)),
                              split=WindowSplit.SCORE_TOP if index < 5 else WindowSplit.SCORE_RANDOM,
                              tokens=tuple(str(rng.choice(WORDS)) for _ in range(64)),
                              true_activations=tuple(rng.random(64).astype(np.float32).tolist()),
                              simulated_activations=tuple((rng.random(64) * 10).tolist()))
                 for index in range(10))


def writer_throughput(path: Path, *, producers: int, per_producer: int, batch_size: int) -> dict[str, float]:
    """Rows committed per second with `producers` concurrent asyncio tasks."""
    rng = np.random.default_rng(0)
    windows = [_scored_windows(rng) for _ in range(8)]
    keys = _keys("w" * 64)
    with open_database(str(path), batch_size=batch_size) as database:
        recording = database.register_recording(model_id="gpt2-xl", fingerprint="fp", path="/records",
                                                manifest={}, manifest_hash="w" * 64)

        async def producer(layer: int) -> None:
            for neuron in range(per_producer):
                neuron_id = NeuronId(layer, neuron)
                await asyncio.sleep(0)
                database.record_explanation(recording, Explanation(
                    neuron=neuron_id, text=f"{WORDS[neuron % len(WORDS)]} tokens", method=ExplainerKind.TOKEN_PAIRS,
                    polarity=Polarity.POSITIVE, explainer_backend="openai:gpt-4o-mini", explainer_model="gpt-4o-mini",
                    prompt_hash="p", parameters={}, source_window_ids=(1, 2, 3), split_seed=0,
                    created_at="2024-05-01T00:00:00Z"), config_key=keys["token-pairs"])
                database.record_score(recording, Score(
                    neuron=neuron_id, explanation_text="", simulator=SimulatorKind.ALL_AT_ONCE,
                    simulator_backend="openai:gpt-4o-mini", simulator_model="gpt-4o-mini", prompt_hash="s",
                    split_seed=0, metrics=Metrics(0.5, 0.4, 0.1, 0.2, 0.3, 0.4, 0.6, 640),
                    windows=windows[neuron % len(windows)], parameters={}, created_at="2024-05-01T00:00:01Z"),
                    explanation_key=keys["token-pairs"], config_key=keys["score"])
                database.record_llm_call(LLMCall(backend="openai:gpt-4o-mini", model="gpt-4o-mini",
                                                 prompt_tokens=900, completion_tokens=20))

        async def run_all() -> None:
            await asyncio.gather(*(producer(layer) for layer in range(producers)))

        start = time.perf_counter()
        asyncio.run(run_all())
        database.flush()
        elapsed = time.perf_counter() - start
        rows = database.records_written
    return {"rows": rows, "seconds": elapsed, "rows_per_s": rows / elapsed}


# --- (b) query latency on a large synthetic database ---------------------------------------------------------


def generate(url: str, *, neurons: int, layers: int = 48, seed: int = 0) -> dict[str, float]:
    """Bulk-insert a synthetic night: `neurons` neurons over `layers` layers, 20% with a second method."""
    from sqlalchemy import create_engine, insert

    rng = np.random.default_rng(seed)
    manifest_hash = "b" * 64
    keys = _keys(manifest_hash)
    start = time.perf_counter()
    with open_database(url) as database:
        recording = database.register_recording(model_id="gpt2-xl", fingerprint="fp", path="/records/gpt2-xl",
                                                manifest={"layers": layers}, manifest_hash=manifest_hash)
    engine = create_engine(url)
    per_layer = neurons // layers
    window_json = dump_json([{"window_id": 1, "split": "score-top", "tokens": list(WORDS[:64]),
                              "true": [round(float(v), 4) for v in rng.random(64)],
                              "simulated": [round(float(v), 2) for v in rng.random(64) * 10], "error": None}])
    layer_means = np.linspace(0.55, 0.2, layers)
    with engine.begin() as connection:
        if connection.dialect.name == "sqlite":
            connection.exec_driver_sql("PRAGMA synchronous = OFF")
        neuron_rows = [{"id": index + 1, "subject_model_id": recording.subject_model_id, "layer": index // per_layer,
                        "neuron": index % per_layer} for index in range(per_layer * layers)]
        connection.execute(insert(NeuronRow.__table__), neuron_rows)
        explanation_rows, score_rows, window_rows = [], [], []
        explanation_id = 0
        for row in neuron_rows:
            methods = ["token-pairs"] + (["sasc"] if rng.random() < 0.2 else [])
            for method in methods:
                explanation_id += 1
                text = " ".join(rng.choice(WORDS, size=int(rng.integers(3, 8))))
                pearson = float(np.clip(rng.normal(layer_means[row["layer"]], 0.22), -0.5, 1.0))
                undefined = rng.random() < 0.01
                stamp = f"2024-05-01T{(explanation_id // 3600) % 24:02d}:{(explanation_id // 60) % 60:02d}:" \
                        f"{explanation_id % 60:02d}.{explanation_id % 1_000_000:06d}Z"
                explanation_rows.append({
                    "id": explanation_id, "neuron_id": row["id"], "recording_id": recording.id,
                    "config_key": keys[method], "method": method, "polarity": "positive",
                    "explainer_backend": "openai:gpt-4o-mini", "explainer_model": "gpt-4o-mini", "prompt_hash": "p",
                    "parameters_json": "{}", "text": text, "source_window_ids_json": "[1,2,3]", "split_seed": 0,
                    "prompt_tokens": 900, "completion_tokens": 12, "extra_json": "{}", "created_at": stamp,
                    "run_id": None})
                window_rows.append({"score_id": explanation_id, "windows_json": window_json})
                score_rows.append({
                    "id": explanation_id, "explanation_id": explanation_id, "neuron_id": row["id"], "config_key": keys["score"],
                    "simulator": "all-at-once", "simulator_backend": "openai:gpt-4o-mini",
                    "simulator_model": "gpt-4o-mini", "prompt_hash": "s", "split_seed": 0, "parameters_json": "{}",
                    "pearson": None if undefined else pearson, "pearson_top": None, "pearson_random": None,
                    "rsquared": None, "absolute_dev_explained": None,
                    "ci_low": None if undefined else pearson - 0.1, "ci_high": None if undefined else pearson + 0.1,
                    "scored_tokens": 640, "undefined_reason": "constant" if undefined else None,
                    "sort_score": -2.0 if undefined else pearson, "prompt_tokens": 2000, "completion_tokens": 0,
                    "created_at": stamp, "run_id": None, "baselines_json": "{}"})
            if len(explanation_rows) >= 20_000 or row is neuron_rows[-1]:
                connection.execute(insert(ExplanationRow.__table__), explanation_rows)
                connection.execute(insert(ScoreRow.__table__), score_rows)
                connection.execute(insert(ScoreWindowsRow.__table__), window_rows)
                explanation_rows, score_rows, window_rows = [], [], []
    with engine.begin() as connection:
        connection.exec_driver_sql("ANALYZE")  # fresh planner statistics, as after any large import
    engine.dispose()
    return {"neurons": per_layer * layers, "explanations": explanation_id,
            "generate_s": time.perf_counter() - start}


def queries(neurons_per_layer: int) -> dict[str, ExplanationQuery]:
    """The timed queries; the first is the target (filtered by layer and score, sorted by score, top 50)."""
    return {
        "top50_layer_minscore": ExplanationQuery(layers=(20,), min_score=0.3, limit=50),
        "top50_unfiltered": ExplanationQuery(limit=50),
        "top50_layers_range_method": ExplanationQuery(layers=tuple(range(10, 20)), method="sasc", min_score=0.5,
                                                      limit=50),
        "top50_search": ExplanationQuery(search="docstring", limit=50),
        "top50_search_layer": ExplanationQuery(search="python", layers=(3,), limit=50),
        "top50_poorly_explained": ExplanationQuery(max_score=0.1, limit=50),
        "top50_by_layer_good": ExplanationQuery(min_score=0.8, sort="layer", limit=50),
        "top50_newest": ExplanationQuery(sort="created", limit=50),
        "top50_all_pairs": ExplanationQuery(best_per_neuron=False, min_score=0.5, limit=50),
        "neuron_lookup": ExplanationQuery(layers=(47,), neurons=(neurons_per_layer - 1,), limit=50),
    }


def time_queries(url: str, *, neurons_per_layer: int, repeats: int = 5) -> dict[str, float]:
    """Median milliseconds per query (after one warm-up run)."""
    timings: dict[str, float] = {}
    with open_database(url, create=False) as database:
        for name, query in queries(neurons_per_layer).items():
            database.query(query)
            samples = []
            for _ in range(repeats):
                start = time.perf_counter()
                rows = database.query(query)
                samples.append((time.perf_counter() - start) * 1000)
            timings[name] = statistics.median(samples)
            print(f"  {name:<28} {timings[name]:8.1f} ms  ({len(rows)} rows)")
        start = time.perf_counter()
        best = sum(1 for _ in database.iter_query(ExplanationQuery(limit=None)))
        timings["stream_all_best_s"] = time.perf_counter() - start
        print(f"  {'stream every best row':<28} {timings['stream_all_best_s']:8.2f} s   ({best} rows)")
        start = time.perf_counter()
        done = database.explained_neurons(_keys("b" * 64)["token-pairs"])
        timings["has_work_check_s"] = time.perf_counter() - start
        print(f"  {'explained_neurons (skip set)':<28} {timings['has_work_check_s']:8.2f} s   ({len(done)} neurons)")
    return timings


def postgres_queries(neurons: int) -> dict | None:
    """(b) on a throwaway PostgreSQL server; None (with one line saying why) where no server can be started."""
    sys.path.insert(0, str(REPO / "tests"))
    from pg_server import start_server

    try:
        server = start_server()
    except (RuntimeError, ImportError, OSError) as exc:
        print(f"(b) on PostgreSQL skipped: {exc}")
        return None
    try:
        url = server.new_database("bench")
        print(f"(b) on PostgreSQL {server.bin_dir.parent.name}: generating {neurons} synthetic neurons ...")
        generated = generate(url, neurons=neurons)
        print(f"  {generated['neurons']} neurons, {generated['explanations']} explanations in "
              f"{generated['generate_s']:.1f} s")
        timings = time_queries(url, neurons_per_layer=generated["neurons"] // 48)
    finally:
        server.stop()
    target_query = timings["top50_layer_minscore"]
    print(f"PostgreSQL filtered, sorted top-50: {target_query:.1f} ms (target < {TARGET_MS:.0f} ms)")
    return {"generate_s": round(generated["generate_s"], 1),
            "query_ms": {name: round(value, 1) for name, value in timings.items() if not name.endswith("_s")},
            "stream_all_best_s": round(timings["stream_all_best_s"], 2),
            "has_work_check_s": round(timings["has_work_check_s"], 2),
            "filtered_top50_ms": round(target_query, 1), "meets_target": target_query < TARGET_MS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (< 1 minute)")
    parser.add_argument("--neurons", type=int, default=None, help="synthetic neurons (default 300000; quick 24000)")
    parser.add_argument("--producers", type=int, default=64)
    parser.add_argument("--per-producer", type=int, default=None, help="neurons per producer (default 40; quick 8)")
    parser.add_argument("--db", default=None, help="database URL for (b) (default: a temporary SQLite file)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary files")
    parser.add_argument("--no-postgres", action="store_true",
                        help="skip the side-by-side run of (b) on a throwaway PostgreSQL server")
    parser.add_argument("--reuse", action="store_true",
                        help="--db already holds rows from an earlier run of this script: only time the queries")
    args = parser.parse_args()
    neurons = args.neurons or (24_000 if args.quick else 300_000)
    per_producer = args.per_producer or (8 if args.quick else 40)

    if args.reuse:
        if not args.db:
            parser.error("--reuse needs --db")
        with open_database(args.db, create=False) as database:
            neurons = database.counts()["neurons"]
        print(f"(b) timing queries on {neurons} neurons already in {args.db}")
        timings = time_queries(args.db, neurons_per_layer=neurons // 48)
        print(json.dumps({"bench": "db", "reuse": True, "neurons": neurons,
                          "query_ms": {name: round(value, 1) for name, value in timings.items()
                                       if not name.endswith("_s")},
                          "filtered_top50_ms": round(timings["top50_layer_minscore"], 1),
                          "meets_target": timings["top50_layer_minscore"] < TARGET_MS}))
        return
    scratch_path = Path(tempfile.mkdtemp(prefix="bench_db_"))
    try:
        print(f"(a) writer: {args.producers} producers x {per_producer} neurons (explanation + score + ledger)")
        batched = writer_throughput(scratch_path / "batched.db", producers=args.producers,
                                    per_producer=per_producer, batch_size=500)
        print(f"  batched writer           {batched['rows_per_s']:10.0f} rows/s  ({batched['rows']} rows)")
        unbatched = writer_throughput(scratch_path / "unbatched.db", producers=args.producers,
                                      per_producer=per_producer, batch_size=1)
        print(f"  one transaction / record {unbatched['rows_per_s']:10.0f} rows/s")
        speedup = batched["rows_per_s"] / unbatched["rows_per_s"]
        print(f"  batching speedup         {speedup:10.1f}x")

        url = args.db or f"sqlite:///{scratch_path / 'synthetic.db'}"
        print(f"(b) generating {neurons} synthetic neurons ...")
        generated = generate(url, neurons=neurons)
        size_mb = (scratch_path / "synthetic.db").stat().st_size / 2**20 if args.db is None else float("nan")
        print(f"  {generated['neurons']} neurons, {generated['explanations']} explanations in "
              f"{generated['generate_s']:.1f} s ({size_mb:.0f} MiB)")
        timings = time_queries(url, neurons_per_layer=generated["neurons"] // 48)
        postgres = None if args.no_postgres or args.db else postgres_queries(neurons)
    finally:
        if args.keep:
            print(f"kept {scratch_path}")
        else:
            shutil.rmtree(scratch_path, ignore_errors=True)
    target_query = timings["top50_layer_minscore"]
    slowest_top50 = max(value for name, value in timings.items() if name.startswith("top50"))
    print(f"filtered, sorted top-50: {target_query:.1f} ms (target < {TARGET_MS:.0f} ms); "
          f"slowest top-50 variant {slowest_top50:.1f} ms")
    print(json.dumps({
        "bench": "db", "quick": args.quick, "producers": args.producers,
        "writer_rows_per_s": round(batched["rows_per_s"]), "writer_unbatched_rows_per_s": round(unbatched["rows_per_s"]),
        "batching_speedup": round(speedup, 2), "neurons": generated["neurons"],
        "explanations": generated["explanations"], "generate_s": round(generated["generate_s"], 1),
        "query_ms": {name: round(value, 1) for name, value in timings.items() if not name.endswith("_s")},
        "stream_all_best_s": round(timings["stream_all_best_s"], 2),
        "has_work_check_s": round(timings["has_work_check_s"], 2),
        "target_ms": TARGET_MS, "filtered_top50_ms": round(target_query, 1),
        "meets_target": target_query < TARGET_MS, "slowest_top50_ms": round(slowest_top50, 1),
        "postgresql": postgres,
    }))


if __name__ == "__main__":
    main()
