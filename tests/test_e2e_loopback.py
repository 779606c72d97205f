"""End to end over HTTP: a loopback OpenAI-compatible server scripted like a competent model explains and
simulates planted neurons through the real OpenAI backend."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest

from neuron_explainer.core.neurons import NeuronId
from neuron_explainer.explain import ExplainConfig, Explanation, explain_neuron
from neuron_explainer.llm import make_backend
from neuron_explainer.scoring import ScoreConfig, calibrate_ranker, score_explanations
from neuron_explainer.simulate import Score, SimulatorKind, make_simulator

sys.path.insert(0, str(Path(__file__).parent))
from fake_openai_server import FakeOpenAIServer  # noqa: E402
from neuron_records import digit_activation, planted_record, planted_store, word_activation  # noqa: E402
from scripted_llm import competent_model  # noqa: E402

DIGITS = NeuronId(3, 17)
THE = NeuronId(3, 18)


@pytest.fixture(scope="module")
def records():
    return {DIGITS: planted_record(digit_activation, neuron=DIGITS),
            THE: planted_record(word_activation("the"), neuron=THE)}


def test_planted_digits_neuron_is_explained_and_scored_above_its_shuffled_baseline(records):
    async def flow():
        with FakeOpenAIServer(responder=competent_model) as server:
            backend = make_backend(server.backend_spec("competent"))
            try:
                explanations = [await explain_neuron(records[neuron], backend) for neuron in (DIGITS, THE)]
                simulator = make_simulator("generated", backend)
                scores: list = []
                await score_explanations(records.__getitem__, explanations, simulator, baselines=True,
                                         on_result=scores.append, progress=False)
                return explanations, scores, server.counts
            finally:
                await backend.aclose()

    explanations, scores, counts = asyncio.run(flow())
    digits_explanation = explanations[0]
    assert isinstance(digits_explanation, Explanation)
    assert re.search(r"digit|number", digits_explanation.text)
    assert digits_explanation.explainer_backend.startswith("openai:competent@http://127.0.0.1")
    assert digits_explanation.prompt_tokens > 0
    by_neuron = {score.neuron: score for score in scores}
    digits_score = by_neuron[DIGITS]
    assert isinstance(digits_score, Score) and digits_score.simulator == SimulatorKind.GENERATED
    assert digits_score.metrics.pearson > 0.8
    assert digits_score.baselines["shuffled"] < 0.2
    assert all(window.error is None for window in digits_score.windows)
    assert digits_score.prompt_tokens > 0 and digits_score.metrics.ci_low <= digits_score.metrics.pearson
    # Each neuron: one explain request; per score 30 windows, plus 30 each for the empty and shuffled baselines.
    assert counts["/v1/chat/completions"] == 2 + 2 * 3 * 30


def test_misaligned_answers_are_reported_per_window_over_http(records):
    def sloppy(body: dict) -> str:
        answer = competent_model(body)
        request = body["messages"][-1]["content"]
        # Drops the last line for windows that contain a colon token: a classic alignment slip.
        if "Tokens:\n" in request and re.search(r"^\d+\t:$", request.split("Tokens:\n", 1)[1], re.MULTILINE):
            return "\n".join(answer.splitlines()[:-1])
        return answer

    async def flow():
        with FakeOpenAIServer(responder=sloppy) as server:
            backend = make_backend(server.backend_spec("sloppy"))
            try:
                simulator = make_simulator("generated", backend)
                scores: list = []
                explanation = await explain_neuron(records[DIGITS], backend)
                await score_explanations(records.__getitem__, [explanation], simulator, on_result=scores.append,
                                         progress=False)
                return scores[0]
            finally:
                await backend.aclose()

    score = asyncio.run(flow())
    failed = [window for window in score.windows if window.error]
    assert failed and all("missing index" in window.error for window in failed)
    assert all(":" in window.tokens for window in failed)
    assert score.parameters["failed_windows"] == sum(1 for w in failed if w.split.value.startswith("score"))
    assert score.metrics.pearson > 0.8


def test_best_of_n_over_http_keeps_the_candidate_that_simulates_best(records):
    def two_minds(body: dict) -> object:
        from fake_openai_server import Reply

        if body["messages"][0]["content"].startswith("You are studying a single neuron"):
            return Reply(texts=['the word "the"', "digits and numbers"])
        return competent_model(body)

    async def flow():
        with FakeOpenAIServer(responder=two_minds) as server:
            backend = make_backend(server.backend_spec("two-minds"))
            try:
                simulator = make_simulator("generated", backend)
                ranker = calibrate_ranker(records[DIGITS], simulator, config=ScoreConfig())
                return await explain_neuron(records[DIGITS], backend, config=ExplainConfig(candidates=2),
                                            ranker=ranker)
            finally:
                await backend.aclose()

    explanation = asyncio.run(flow())
    assert explanation.text == "digits and numbers"
    assert [candidate["text"] for candidate in explanation.extra["candidates"]] == ['the word "the"',
                                                                                   "digits and numbers"]
    assert explanation.extra["candidates"][1]["calibrate_pearson"] > explanation.extra["candidates"][0][
        "calibrate_pearson"]


def test_explain_and_score_commands_write_jsonl(tmp_path):
    import json

    from neuron_explainer.cli import main

    store = planted_store(tmp_path)
    explanations_file, scores_file = tmp_path / "explanations.jsonl", tmp_path / "scores.jsonl"
    with FakeOpenAIServer(responder=competent_model) as server:
        spec = server.backend_spec("competent")
        assert main(["explain", "--records", str(store), "--neurons", "3:*", "--llm", spec,
                     "--out", str(explanations_file), "--json"]) == 0
        assert main(["score", "--records", str(store), "--neurons", "3:0", "--simulator", "generated", "--llm", spec,
                     "--explanations", str(explanations_file), "--out", str(scores_file), "--baselines"]) == 0
    # Lines arrive in completion order (neurons run concurrently).
    explained = sorted((json.loads(line) for line in explanations_file.read_text().splitlines()),
                       key=lambda item: item["neuron"])
    assert [(item["type"], item["neuron"]) for item in explained] == [("explanation", "3:0"), ("explanation", "3:1")]
    assert "digits" in explained[0]["text"] and explained[1]["text"] == 'the word "the"'
    (score,) = [json.loads(line) for line in scores_file.read_text().splitlines()]
    assert score["type"] == "score" and score["neuron"] == "3:0" and score["metrics"]["pearson"] > 0.8
    assert score["baselines"]["shuffled"] < 0.2
    assert not set(explained[0]["source_window_ids"]) & {window["window_id"] for window in score["windows"]}


def test_commands_report_user_errors_in_one_line(tmp_path, capsys):
    from neuron_explainer.cli import main

    store = planted_store(tmp_path)
    assert main(["explain", "--records", str(store), "--neurons", "1:0", "--llm", "openai:x@http://127.0.0.1:9/v1",
                 "--out", str(tmp_path / "e.jsonl")]) == 2
    assert "layer(s) 1 were not recorded" in capsys.readouterr().err
    assert main(["score", "--records", str(store), "--explanations", str(tmp_path / "missing.jsonl"),
                 "--out", str(tmp_path / "s.jsonl")]) == 2
    assert "no explanations file" in capsys.readouterr().err


def test_lost_requests_cost_their_window_and_a_dead_key_stops_the_run(records):
    from fake_openai_server import Fault

    from neuron_explainer.llm.errors import LLMFatalError
    from neuron_explainer.llm.retry import RetryPolicy
    from neuron_explainer.scoring import score_explanation

    def has_colon_token(request) -> bool:
        content = request.body["messages"][-1]["content"]
        return "Tokens:\n" in content and re.search(r"^\d+\t:$", content.split("Tokens:\n", 1)[1], re.MULTILINE)

    async def flow(fault: Fault):
        with FakeOpenAIServer(responder=competent_model) as server:
            backend = make_backend(server.backend_spec("flaky"), retry=RetryPolicy(max_attempts=1))
            server.fault_policy = lambda request: fault if has_colon_token(request) else None
            try:
                return await score_explanation(records[DIGITS], "digits and numbers",
                                               make_simulator("generated", backend))
            finally:
                await backend.aclose()

    score = asyncio.run(flow(Fault.server_error(503)))
    failed = [window for window in score.windows if window.error]
    assert failed and all(window.error.startswith("backend error: LLMTransientError") for window in failed)
    assert all(":" in window.tokens for window in failed) and score.metrics.pearson > 0.8
    with pytest.raises(LLMFatalError):
        asyncio.run(flow(Fault.unauthorized()))


def test_explainer_turns_a_lost_request_into_a_failure(records):
    from fake_openai_server import Fault

    from neuron_explainer.core.failures import Failure
    from neuron_explainer.llm.retry import RetryPolicy

    async def flow():
        with FakeOpenAIServer(responder=competent_model) as server:
            server.push_faults(Fault.server_error(502))
            backend = make_backend(server.backend_spec("flaky"), retry=RetryPolicy(max_attempts=1))
            try:
                return await explain_neuron(records[DIGITS], backend)
            finally:
                await backend.aclose()

    outcome = asyncio.run(flow())
    assert isinstance(outcome, Failure) and outcome.reason.startswith("backend error: LLMTransientError")
