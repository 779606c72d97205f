"""An endpoint that is down is not the neurons' fault: a night whose loopback API is down for its first half and up
for its second stores transient failures that the next night fills in by itself (exactly those, nothing twice),
while permanent failures (answers that cannot be used) wait for --retry-failed. A backend that fails unit after
unit stops the night with one line and exit code 3."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from neuron_explainer.pipeline import RunConfig, run_pipeline

sys.path.insert(0, str(Path(__file__).parent.parent))
from fake_openai_server import FakeOpenAIServer, Fault, RecordedRequest  # noqa: E402
from fault_harness import FAST_OPTIONS, frequent_words, results_snapshot, rows, run_cli, word_store  # noqa: E402
from neuron_records import corpus_windows  # noqa: E402
from scripted_llm import competent_model  # noqa: E402

NEURONS = 16
WORDS = 8
UNUSABLE_WORD_INDEX = 3
"""Neurons 3 and 11 fire on this word; the explainer's answers about it are empty (a permanent failure)."""


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return word_store(tmp_path_factory.mktemp("outage"), neurons=NEURONS, words=WORDS)


class Endpoint:
    """The loopback API with an outage switch and one word whose explanations come back empty."""

    def __init__(self) -> None:
        self.up = True
        self.garble = True
        self.unusable = frequent_words(corpus_windows(count=400, length=24), WORDS)[UNUSABLE_WORD_INDEX]

    def respond(self, body: dict) -> str:
        answer = competent_model(body)
        return "" if self.garble and answer == f'the word "{self.unusable}"' else answer

    def fault(self, request: RecordedRequest) -> Fault | None:
        if self.up:
            return None
        # Down: connections reset and 503s from the proxy in front of it, in turn.
        return Fault.reset() if request.index % 2 else Fault.server_error(503)


def _config(store: Path, db: Path, spec: str, **overrides) -> RunConfig:
    values = dict(db=f"sqlite:///{db}", records=str(store), explainers=("token-pairs",), simulator="generated",
                  llm=spec, concurrency=1, score_top_windows=2, score_random_windows=2, explain_windows=6)
    values.update(overrides)
    return RunConfig(**values)


def _failures(db: Path, run_id: int) -> dict[int, tuple[str, str, str]]:
    return {neuron: (stage, kind, reason) for neuron, stage, kind, reason in
            rows(db, "select neuron, stage, kind, reason from failures where run_id = ?", (run_id,))}


def _scored(db: Path) -> set[int]:
    return {neuron for (neuron,) in rows(db, "select n.neuron from scores s join neurons n on n.id = s.neuron_id")}


def _no_duplicates(db: Path) -> None:
    for table, key in (("explanations", "neuron_id, config_key"), ("scores", "explanation_id, config_key")):
        assert rows(db, f"select count(*) from (select {key} from {table} group by {key} having count(*) > 1)"
                    ) == [(0,)]


def test_a_night_with_the_endpoint_down_half_the_time_is_finished_by_the_next(
        store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "night.db"
    endpoint = Endpoint()
    with FakeOpenAIServer(responder=endpoint.respond) as server:
        server.fault_policy = endpoint.fault
        spec = server.backend_spec("competent", FAST_OPTIONS)
        endpoint.up = False

        def back_up_halfway(progress) -> None:
            # One neuron at a time: neurons 0-7 meet the outage, 8-15 the healthy endpoint.
            if progress.done >= NEURONS // 2:
                endpoint.up = True

        first = run_pipeline(_config(store, db, spec), progress=False, on_progress=back_up_halfway)
        assert (first.status, first.done, first.failed) == ("completed", NEURONS, NEURONS // 2 + 1)
        failed = _failures(db, first.run_id)
        transient = {neuron for neuron, (_, kind, _) in failed.items() if kind == "transient"}
        assert transient == set(range(NEURONS // 2))
        assert all("gave up after 6 attempts" in failed[neuron][2] for neuron in transient)
        assert failed[11] == ("explain", "permanent", "no usable explanation: the answer is empty")
        assert _scored(db) == set(range(NEURONS // 2, NEURONS)) - {11}
        assert run_cli(["failures", "--db", f"sqlite:///{db}", "--format", "json"]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert sorted((item["neuron"], item["stage"], item["kind"], item["open"]) for item in listed) == sorted(
            [(f"0:{neuron}", "explain", "transient", True) for neuron in range(NEURONS // 2)]
            + [("0:11", "explain", "permanent", True)])

        # The next night, with no flag, redoes exactly the transient failures. Neuron 3's answers are unusable
        # too, which it could not find out while the endpoint was down: now that is a permanent failure.
        requests = server.count()
        second = run_pipeline(_config(store, db, spec), progress=False)
        assert (second.status, second.done, second.skipped) == ("completed", NEURONS // 2, NEURONS // 2)
        assert _failures(db, second.run_id) == {3: ("explain", "permanent", "no usable explanation: the answer is empty")}
        assert _scored(db) == set(range(NEURONS)) - {3, 11}
        _no_duplicates(db)
        assert server.count() > requests

        # Permanent failures stay put: a third night has nothing to do and asks nothing.
        requests = server.count()
        third = run_pipeline(_config(store, db, spec), progress=False)
        assert (third.done, third.skipped, server.count()) == (0, NEURONS, requests)

        # --retry-failed asks again (the model has since been fixed): the two permanent failures are filled in.
        endpoint.garble = False
        before = results_snapshot(db)
        fourth = run_pipeline(_config(store, db, spec, retry_failed=True), progress=False)
        assert (fourth.done, fourth.failed, fourth.scored) == (2, 0, 2)
        assert _scored(db) == set(range(NEURONS))
        after = results_snapshot(db)
        assert set(before["scores"]) <= set(after["scores"]) and len(after["scores"]) == NEURONS
        _no_duplicates(db)

    # What the nights did, without SQL: no failure is open any more; neuron 3's history is on its page.
    url = f"sqlite:///{db}"
    assert run_cli(["failures", "--db", url]) == 0
    assert capsys.readouterr().out.strip() == "no failures"
    assert run_cli(["failures", "--db", url, "--all", "--format", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == NEURONS // 2 + 2
    assert run_cli(["show", "0:3", "--db", url]) == 0
    page = capsys.readouterr().out
    assert "gave up after 6 attempts" in page and "no usable explanation: the answer is empty" in page
    assert run_cli(["runs", "--db", url, "--format", "json"]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert [(run["id"], run["status"], run["done"], run["failed"]) for run in runs] == [
        (4, "completed", 2, 0), (3, "completed", 0, 0), (2, "completed", NEURONS // 2, 1),
        (1, "completed", NEURONS, NEURONS // 2 + 1)]
    assert all(run["seconds"] is not None and run["tokens"] >= 0 for run in runs)
    assert runs[3]["selection"].startswith("neurons all, token-pairs, generated, openai:competent")
    assert run_cli(["runs", "--db", url]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["run", "status", "started"] and len(table) == 5


def test_a_dead_endpoint_stops_the_night_with_exit_code_3(store: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "night.db"
    endpoint = Endpoint()
    endpoint.garble = False
    with FakeOpenAIServer(responder=endpoint.respond) as server:
        server.fault_policy = endpoint.fault
        endpoint.up = False
        flags = ["run", "--records", str(store), "--db", f"sqlite:///{db}", "--explainer", "token-pairs",
                 "--simulator", "generated", "--llm", server.backend_spec("competent", FAST_OPTIONS),
                 "--concurrency", "2", "--score-top-windows", "2", "--score-random-windows", "2",
                 "--explain-windows", "6", "--max-consecutive-failures", "3"]
        assert run_cli(flags) == 3
        err = capsys.readouterr().err
        message = err.strip().splitlines()[-1]
        assert message.startswith("neuron-explainer: stopped: backend failing: 3 units in a row failed; last: ")
        assert "Traceback" not in err
        [(status, totals)] = rows(db, "select status, totals_json from runs")
        assert status == "stopped: backend failing" and "backend failing" in json.loads(totals)["stop_reason"]
        stored = rows(db, "select kind from failures")
        assert 3 <= len(stored) <= 3 + 1 and {kind for (kind,) in stored} == {"transient"}

        # Back up: the same command finishes the night, redoing the transient failures without a flag.
        endpoint.up = True
        assert run_cli(flags) == 0
    assert _scored(db) == set(range(NEURONS))
    _no_duplicates(db)
