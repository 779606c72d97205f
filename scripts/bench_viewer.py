"""Benchmark of the html export: seconds to generate the site for N neurons, with and without record-store windows,
and the bulk page reads against reading each neuron with `Database.neuron_details`, side by side in one run.

The database is filled through the db API with synthetic explanations and scores (5 top + 5 random scored windows
of 64 tokens per neuron, as in the paper's setup); the record store through the activations store writer (40 top
and 40 random windows per neuron).

    python scripts/bench_viewer.py            # 50,000 neurons (building the database takes a few minutes)
    python scripts/bench_viewer.py --quick    # 2,000 neurons, under a minute
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from neuron_explainer.activations import LayerSummary, Manifest, RecordStore, write_store
from neuron_explainer.activations.accumulate import QUANTILE_PROBABILITIES
from neuron_explainer.core.neurons import NeuronId
from neuron_explainer.db import ExplanationQuery, explanation_config_key, open_database, score_config_key
from neuron_explainer.explain.types import ExplainerKind, Explanation, Polarity
from neuron_explainer.export.html import SiteOptions, build_site
from neuron_explainer.simulate.types import Metrics, Score, ScoredWindow, SimulatorKind, WindowSplit

NEURONS_PER_LAYER = 1536
WINDOW_LENGTH = 64
STORE_WINDOWS = 2000
TOP_K = 40
RANDOM_K = 40
MODEL_ID = "bench-model"
FINGERPRINT = "bench-fp"


def _neurons(count: int) -> list[NeuronId]:
    return [NeuronId(index // NEURONS_PER_LAYER, index % NEURONS_PER_LAYER) for index in range(count)]


def build_store(path: Path, layers: int, rng: np.random.Generator) -> RecordStore:
    """A record store with random windows and activations, written by the store writer."""
    vocab = [f" w{index}" for index in range(5000)]
    token_ids = rng.integers(0, len(vocab), size=(STORE_WINDOWS, WINDOW_LENGTH), dtype=np.int32)
    summaries = {}
    for layer in range(layers):
        top = np.sort(rng.choice(STORE_WINDOWS, size=(NEURONS_PER_LAYER, TOP_K)), axis=1)
        summaries[layer] = LayerSummary(
            top_window_ids=top.astype(np.int64),
            top_activations=rng.gamma(1.0, 0.5, size=(NEURONS_PER_LAYER, TOP_K, WINDOW_LENGTH)).astype(np.float32),
            random_activations=rng.normal(0, 0.3, size=(NEURONS_PER_LAYER, RANDOM_K, WINDOW_LENGTH)).astype(np.float32),
            stats=np.tile(np.array([128000, 0.01, 0.3, -1.0, 4.0, 0.45]), (NEURONS_PER_LAYER, 1)),
            quantiles=np.tile(np.linspace(-1, 4, len(QUANTILE_PROBABILITIES)),
                              (NEURONS_PER_LAYER, 1)).astype(np.float32))
    manifest = Manifest(model_id=MODEL_ID, model_fingerprint=FINGERPRINT, hook_point="bench", corpus_spec="bench",
                        corpus_hash="bench", window_length=WINDOW_LENGTH, num_windows=0, seed=0,
                        layers=tuple(range(layers)), neurons_per_layer=NEURONS_PER_LAYER, top_k=TOP_K,
                        random_k=RANDOM_K, polarity="positive")
    write_store(path, manifest, token_ids=token_ids, vocab=vocab,
                random_window_ids=np.sort(rng.choice(STORE_WINDOWS, size=RANDOM_K, replace=False)), layers=summaries)
    return RecordStore.open(path)


def build_database(url: str, store: RecordStore, neurons: list[NeuronId], rng: np.random.Generator) -> None:
    """One explanation and one score with 10 scored windows per neuron, written through the db API."""
    manifest_hash = store.manifest.recording_id
    explain_key = explanation_config_key(subject_model=MODEL_ID, model_fingerprint=FINGERPRINT,
                                         manifest_hash=manifest_hash, method="token-pairs", polarity="positive",
                                         backend="openai:bench", model="bench-explainer", prompt_hash="p",
                                         split_seed=0, parameters={})
    score_key = score_config_key(manifest_hash=manifest_hash, simulator="all-at-once", backend="openai:bench",
                                 model="bench-simulator", prompt_hash="p", split_seed=0, parameters={})
    with open_database(url, batch_size=2000) as database:
        recording = database.register_recording(model_id=MODEL_ID, fingerprint=FINGERPRINT, path=str(store.path),
                                                manifest={"model_id": MODEL_ID}, manifest_hash=manifest_hash)
        for neuron in neurons:
            record = store.load_neuron(neuron.layer, neuron.neuron)
            scored = [(window, WindowSplit.SCORE_TOP) for window in record.top_windows[5:10]] + \
                     [(window, WindowSplit.SCORE_RANDOM) for window in record.random_windows[:5]]
            windows = tuple(ScoredWindow(window_id=window.window_id, split=split, tokens=window.tokens,
                                         true_activations=window.activations,
                                         simulated_activations=tuple(np.minimum(
                                             10, np.floor(np.maximum(window.activations, 0) * 4)).tolist()))
                            for window, split in scored)
            pearson = float(np.clip(rng.normal(0.3, 0.25), -1, 1))
            text = f"explanation {neuron.layer}:{neuron.neuron} about token w{neuron.neuron % 5000}"
            database.record_explanation(recording, Explanation(
                neuron=neuron, text=text, method=ExplainerKind.TOKEN_PAIRS, polarity=Polarity.POSITIVE,
                explainer_backend="openai:bench", explainer_model="bench-explainer", prompt_hash="p", parameters={},
                source_window_ids=tuple(window.window_id for window in record.top_windows[:5]), split_seed=0,
                created_at="2024-05-01T12:00:00Z"), config_key=explain_key)
            database.record_score(recording, Score(
                neuron=neuron, explanation_text=text, simulator=SimulatorKind.ALL_AT_ONCE,
                simulator_backend="openai:bench", simulator_model="bench-simulator", prompt_hash="p", split_seed=0,
                metrics=Metrics(pearson=pearson, pearson_top=pearson, pearson_random=0.0, rsquared=0.1,
                                absolute_dev_explained=0.1, ci_low=pearson - 0.1, ci_high=pearson + 0.1,
                                scored_tokens=640),
                windows=windows, parameters={}, created_at="2024-05-01T12:30:00Z"),
                explanation_key=explain_key, config_key=score_key)
            database.record_neuron_stats(recording, neuron, record.stats)
        database.flush()


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (page-writing workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _size_mb(path: Path) -> float:
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 neurons")
    parser.add_argument("--neurons", type=int, default=None, help="neurons in the database (default 50,000)")
    parser.add_argument("--workdir", default=None, help="keep the database, store and sites here")
    parser.add_argument("--sample", type=int, default=300, help="neurons read one by one for the comparison")
    parser.add_argument("--jobs", type=int, default=0, help="page-writing processes (0: automatic)")
    args = parser.parse_args()
    count = args.neurons or (2000 if args.quick else 50_000)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_viewer_"))
    workdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    neurons = _neurons(count)
    layers = math.ceil(count / NEURONS_PER_LAYER)
    db_path = workdir / f"viewer-{count}.db"
    url = f"sqlite:///{db_path}"
    started = time.perf_counter()
    if db_path.exists():
        store = RecordStore.open(workdir / "records")
        build_seconds = 0.0
    else:
        store = build_store(workdir / "records", layers, rng)
        build_database(url, store, neurons, rng)
        build_seconds = time.perf_counter() - started
    print(f"database of {count} neurons ready ({build_seconds:.1f} s)", flush=True)

    for name in ("site-plain", "site-records"):
        # Replacing an old site deletes its files; that is not what is measured here.
        shutil.rmtree(workdir / name, ignore_errors=True)
    with open_database(url, create=False) as database:
        moved = workdir / "records"
        hidden = workdir / "records-hidden"
        # Without records: hide the store so its registered path does not exist.
        moved.rename(hidden)
        try:
            started, cpu = time.perf_counter(), _cpu_seconds()
            plain = build_site(database, workdir / "site-plain", options=SiteOptions(progress=False, jobs=args.jobs))
            plain_seconds, plain_cpu = time.perf_counter() - started, _cpu_seconds() - cpu
        finally:
            hidden.rename(moved)
        print(f"site without records: {plain_seconds:.1f} s ({plain.jobs} processes)", flush=True)
        started, cpu = time.perf_counter(), _cpu_seconds()
        with_records = build_site(database, workdir / "site-records",
                                  options=SiteOptions(progress=False, jobs=args.jobs))
        records_seconds, records_cpu = time.perf_counter() - started, _cpu_seconds() - cpu
        print(f"site with records: {records_seconds:.1f} s ({with_records.neurons_with_records} pages with windows)",
              flush=True)

        sample = [row.neuron for row in database.iter_query(ExplanationQuery(limit=args.sample))]
        started = time.perf_counter()
        for neuron in sample:
            database.neuron_details(neuron)
        per_neuron_details_ms = (time.perf_counter() - started) / max(len(sample), 1) * 1000

    plain_ms = plain_seconds / count * 1000
    result = {
        "bench": "viewer", "neurons": count, "jobs": plain.jobs, "database_build_s": round(build_seconds, 1),
        "site_without_records_s": round(plain_seconds, 2), "site_with_records_s": round(records_seconds, 2),
        "site_without_records_cpu_s": round(plain_cpu, 2), "site_with_records_cpu_s": round(records_cpu, 2),
        "ms_per_neuron_without_records": round(plain_ms, 3),
        "ms_per_neuron_with_records": round(records_seconds / count * 1000, 3),
        "projected_50k_without_records_s": round(plain_ms * 50, 1),
        "projected_50k_with_records_s": round(records_seconds / count * 50_000, 1),
        "neuron_details_ms_per_neuron": round(per_neuron_details_ms, 3),
        "whole_page_vs_neuron_details_read_only_ratio": round(per_neuron_details_ms / plain_ms, 2),
        "records_overhead_ratio": round(records_seconds / plain_seconds, 2),
        "site_without_records_mb": round(_size_mb(workdir / "site-plain"), 1),
        "site_with_records_mb": round(_size_mb(workdir / "site-records"), 1),
    }
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
