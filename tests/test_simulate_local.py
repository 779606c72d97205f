"""The in-process local backend end to end: all-at-once slot simulation on a tiny random model (plumbing), the
generated simulator's alignment reporting on a model that writes garbage, and, under -m slow, the whole explain +
score flow through the CLI with the bundled local:default model, offline."""

from __future__ import annotations

import asyncio
import json
import math
import sys
from pathlib import Path

import pytest

from neuron_explainer.core.failures import Failure
from neuron_explainer.explain import ExplainConfig, SplitConfig, explain_neuron
from neuron_explainer.scoring import ScoreConfig, score_explanation
from neuron_explainer.simulate import Score, SimulatorKind, WindowSplit, make_simulator

sys.path.insert(0, str(Path(__file__).parent))
from neuron_records import corpus_windows, digit_activation, planted_record, planted_store  # noqa: E402

SMALL_SPLIT = SplitConfig(explain_top=3, score_top=2, score_random=2, calibrate_top=1, calibrate_random=1)


@pytest.fixture(scope="module")
def tiny_backend(tiny_model_factory):
    from neuron_explainer.llm import make_backend

    backend = make_backend(f"local:{tiny_model_factory('llama')}")
    yield backend
    asyncio.run(backend.aclose())


@pytest.fixture(scope="module")
def short_record():
    return planted_record(digit_activation, windows=corpus_windows(count=400, length=8))


def test_all_at_once_on_a_local_model_simulates_every_token(tiny_backend, short_record):
    simulator = make_simulator(None, tiny_backend)
    assert simulator.kind == SimulatorKind.ALL_AT_ONCE
    score = asyncio.run(score_explanation(short_record, "digits and numbers", simulator,
                                          config=ScoreConfig(split=SMALL_SPLIT, bootstrap_samples=100)))
    assert isinstance(score, Score)
    assert [window.split for window in score.windows].count(WindowSplit.SCORE_TOP) == 2
    assert all(window.error is None for window in score.windows)
    assert all(len(window.simulated_activations) == 8 for window in score.windows)
    assert all(0.0 <= value <= 10.0 for window in score.windows for value in window.simulated_activations)
    assert score.metrics.scored_tokens == 4 * 8
    assert math.isfinite(score.metrics.pearson) or score.metrics.undefined_reason
    assert score.simulator_backend.startswith("local:") and len(score.prompt_hash) == 16


def test_generated_simulator_reports_a_garbage_writer_instead_of_inventing_zeros(tiny_backend, short_record):
    simulator = make_simulator("generated", tiny_backend)
    outcome = asyncio.run(score_explanation(short_record, "digits", simulator,
                                            config=ScoreConfig(split=SMALL_SPLIT, bootstrap_samples=0)))
    # A random-init model cannot write aligned `index<TAB>value` lines: every window must say so.
    assert isinstance(outcome, Failure) and outcome.stage == "simulate"
    assert "misaligned answer" in outcome.reason


def test_explainer_respects_the_local_context_window(tiny_backend, short_record):
    # The tiny model has 256 positions: too few for instructions plus one window, so no call is made.
    outcome = asyncio.run(explain_neuron(short_record, tiny_backend, config=ExplainConfig(split=SMALL_SPLIT)))
    assert isinstance(outcome, Failure) and "does not fit the 256-token context" in outcome.reason


@pytest.mark.slow
def test_default_local_model_explains_and_scores_offline(tmp_path):
    from neuron_explainer.cli import main

    store = planted_store(tmp_path, count=200, length=16)
    explanations_file, scores_file = tmp_path / "explanations.jsonl", tmp_path / "scores.jsonl"
    split_flags = ["--explain-windows", "4", "--score-top-windows", "3", "--score-random-windows", "3",
                   "--calibrate-windows", "1"]
    assert main(["explain", "--records", str(store), "--neurons", "3:0", "--llm", "local:default",
                 "--out", str(explanations_file), *split_flags]) == 0
    (explained,) = [json.loads(line) for line in explanations_file.read_text().splitlines()]
    if explained["type"] == "failure":
        pytest.fail(f"SmolLM2 gave no usable explanation: {explained['reason']}: {explained['raw_output']!r}")
    assert explained["explainer_model"] and explained["text"] and len(explained["source_window_ids"]) == 4
    assert main(["score", "--records", str(store), "--neurons", "3:0", "--llm", "local:default",
                 "--explanations", str(explanations_file), "--out", str(scores_file), *split_flags]) == 0
    (score,) = [json.loads(line) for line in scores_file.read_text().splitlines()]
    assert score["type"] == "score" and score["simulator"] == "all-at-once"
    assert score["explanation_text"] == explained["text"]
    assert all(window["error"] is None and len(window["simulated_activations"]) == 16 for window in score["windows"])
    assert score["metrics"]["scored_tokens"] == 6 * 16
