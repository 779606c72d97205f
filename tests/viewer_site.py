"""A small real world for viewer tests: a record store written through the activations API and a SQLite database
filled through the db API with explanations and scores of its neurons (optionally with hostile text)."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from neuron_explainer.activations import RecordStore, record_activations
from neuron_explainer.core.neurons import NeuronId
from neuron_explainer.db import explanation_config_key, open_database, score_config_key
from neuron_explainer.explain.types import ExplainerKind, Explanation, Polarity
from neuron_explainer.simulate.types import Metrics, Score, ScoredWindow, SimulatorKind, WindowSplit

LAYERS = (0, 1)
NEURONS_PER_LAYER = 6
WINDOWS = 24
WINDOW_LENGTH = 12
TOP_K = 6
RANDOM_K = 4
WORDS = ("the", " cat", " sat", " on", " a", " mat", ",", " and", " then", " it", " slept", ".", "\n", " dog",
         " ran", " 42", " def", "(", ")", ":")
HOSTILE_TOKENS = ("<script>window.__pwned=1</script>", '<img src=x onerror="window.__pwned=2">',
                  "</script><script>window.__pwned=3</script>", "\u2028", "&amp;&lt;", "'\"><svg onload=alert(4)>")
HOSTILE_EXPLANATION = '<img src=x onerror="window.__pwned=5"> and </script><script>window.__pwned=6</script>'
HOSTILE_MODEL = "</title><script>window.__pwned=7</script>"
EXPLANATION_WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot")


@dataclass(frozen=True)
class ViewerWorld:
    """What a test needs to know about the generated database and record store."""

    db_path: Path
    """SQLite file."""
    records: Path
    """Record store directory."""
    model_id: str
    """Subject model id (hostile in the hostile world)."""
    explainer_model: str
    """Explainer model name."""
    neurons: tuple[NeuronId, ...]
    """Every neuron with an explanation."""
    undefined: NeuronId
    """The neuron whose only score is undefined (NaN)."""

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.db_path}"


def pearson_of(neuron: NeuronId) -> float:
    """The planted token-pairs score of a neuron (-0.15 for 0:0 up to 0.85 for 1:5)."""
    return round(-0.15 + 0.1 * neuron.neuron + 0.5 * neuron.layer, 4)


def sasc_pearson_of(neuron: NeuronId) -> float | None:
    """Even neurons also have a SASC explanation: worse than token-pairs, except on neuron 4 where it wins."""
    if neuron.neuron % 2:
        return None
    return round(pearson_of(neuron) + (0.05 if neuron.neuron == 4 else -0.3), 4)


def explanation_text(neuron: NeuronId, *, hostile: bool) -> str:
    text = f"{EXPLANATION_WORDS[neuron.neuron]} tokens in layer {neuron.layer}"
    return f"{text} {HOSTILE_EXPLANATION}" if hostile and neuron.neuron == 0 else text


def build_world(directory: Path, *, hostile: bool = False, register_path: bool = True) -> ViewerWorld:
    """Write the record store and the database under `directory`."""
    model_id = HOSTILE_MODEL if hostile else "tiny-viewer-model"
    explainer_model = "gpt-<b>bold</b>" if hostile else "scripted-explainer"
    vocab = list(WORDS) + (list(HOSTILE_TOKENS) if hostile else [])
    rng = np.random.default_rng(7)
    token_ids = rng.integers(0, len(vocab), size=(WINDOWS, WINDOW_LENGTH)).astype(np.int32)
    if hostile:
        # Every hostile token lands in the windows each neuron fires on most.
        token_ids[:, : len(HOSTILE_TOKENS)] = np.arange(len(WORDS), len(vocab))
    activations = {}
    for layer in LAYERS:
        values = rng.normal(0.0, 0.3, size=(WINDOWS, WINDOW_LENGTH, NEURONS_PER_LAYER))
        for neuron in range(NEURONS_PER_LAYER):
            # A planted trigger word per neuron makes its top windows meaningful.
            values[:, :, neuron] += 2.0 * (token_ids == (neuron + layer) % len(WORDS))
        activations[layer] = values.astype(np.float32)
    records = directory / "records"
    record_activations(records, token_ids=token_ids, vocab=vocab, activations=activations, top_k=TOP_K,
                       random_k=RANDOM_K, model_id=model_id, model_fingerprint="fp-viewer", corpus_spec="synthetic")
    store = RecordStore.open(records)
    manifest_hash = hashlib.sha256(store.manifest.to_json().encode()).hexdigest()

    db_path = directory / "neurons.db"
    neurons = tuple(NeuronId(layer, neuron) for layer in LAYERS for neuron in range(NEURONS_PER_LAYER))
    undefined = NeuronId(0, 1)
    with open_database(f"sqlite:///{db_path}") as database:
        recording = database.register_recording(
            model_id=model_id, fingerprint="fp-viewer",
            path=str(records) if register_path else str(directory / "moved-away"),
            manifest={"model_id": model_id}, manifest_hash=manifest_hash)
        for neuron in neurons:
            record = store.load_neuron(neuron.layer, neuron.neuron)
            database.record_neuron_stats(recording, neuron, record.stats)
            methods = [("token-pairs", pearson_of(neuron))]
            sasc = sasc_pearson_of(neuron)
            if sasc is not None:
                methods.append(("sasc", sasc))
            for method, pearson in methods:
                if neuron == undefined:
                    pearson = float("nan")
                text = explanation_text(neuron, hostile=hostile) if method == "token-pairs" else \
                    f"{method} guess for {neuron}"
                key = explanation_config_key(
                    subject_model=model_id, model_fingerprint="fp-viewer", manifest_hash=manifest_hash, method=method,
                    polarity="positive", backend="openai:scripted", model=explainer_model, prompt_hash="p-explain",
                    split_seed=0, parameters={"examples": 2})
                database.record_explanation(recording, Explanation(
                    neuron=neuron, text=text, method=ExplainerKind(method), polarity=Polarity.POSITIVE,
                    explainer_backend="openai:scripted", explainer_model=explainer_model, prompt_hash="p-explain",
                    parameters={"examples": 2}, source_window_ids=tuple(w.window_id for w in record.top_windows[:2]),
                    split_seed=0, created_at="2024-05-01T12:00:00Z"), config_key=key, run_id=None)
                scored = [(window, WindowSplit.SCORE_TOP) for window in record.top_windows[2:4]] + \
                         [(window, WindowSplit.SCORE_RANDOM) for window in record.random_windows[:2]]
                peak = max(max(window.activations) for window, _ in scored)
                windows = tuple(ScoredWindow(
                    window_id=window.window_id, split=split, tokens=window.tokens,
                    true_activations=window.activations,
                    simulated_activations=tuple(float(min(10, max(0, math.floor(10 * value / peak))))
                                                for value in window.activations))
                    for window, split in scored)
                defined = pearson == pearson
                metrics = Metrics(pearson=pearson, pearson_top=pearson, pearson_random=0.0, rsquared=0.1,
                                  absolute_dev_explained=0.2, ci_low=pearson - 0.1 if defined else float("nan"),
                                  ci_high=pearson + 0.1 if defined else float("nan"),
                                  scored_tokens=len(windows) * WINDOW_LENGTH,
                                  undefined_reason=None if defined else "constant simulation")
                database.record_score(recording, Score(
                    neuron=neuron, explanation_text=text, simulator=SimulatorKind.ALL_AT_ONCE,
                    simulator_backend="openai:scripted", simulator_model="scripted-simulator",
                    prompt_hash="p-simulate", split_seed=0, metrics=metrics, windows=windows, parameters={},
                    created_at="2024-05-01T12:30:00Z"),
                    explanation_key=key,
                    config_key=score_config_key(manifest_hash=manifest_hash, simulator="all-at-once",
                                                backend="openai:scripted", model="scripted-simulator",
                                                prompt_hash="p-simulate", split_seed=0, parameters={}))
        database.flush()
    return ViewerWorld(db_path=db_path, records=records, model_id=model_id, explainer_model=explainer_model,
                       neurons=neurons, undefined=undefined)
