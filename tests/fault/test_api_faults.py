"""A night over a few hundred planted neurons against a loopback API that fails 30% of the time in every way an
API fails: every neuron ends with a result or a recorded failure, nothing twice, every paid call in the ledger
once, and a retry run with the faults gone fills in exactly the failures. A bad key or an empty account stops
the run at once with one clear line instead of recording a failure per neuron."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from neuron_explainer.core.errors import UserError
from neuron_explainer.pipeline import RunConfig, run_pipeline

sys.path.insert(0, str(Path(__file__).parent.parent))
from fake_openai_server import FakeOpenAIServer, Fault, RecordedRequest  # noqa: E402
from fault_harness import (ANSWER_FAULTS, FAST_OPTIONS, FATAL_FAULTS, TRANSIENT_FAULTS, FaultMix,  # noqa: E402
                            frequent_words, is_log_line, results_snapshot, rows, run_cli)
from neuron_records import corpus_windows  # noqa: E402
from scripted_llm import competent_model  # noqa: E402

NEURONS = 200


def _config(store: Path, db: Path, spec: str, **overrides) -> RunConfig:
    values = dict(db=f"sqlite:///{db}", records=str(store), explainers=("token-pairs",), simulator="generated",
                  llm=spec, concurrency=16, score_top_windows=2, score_random_windows=2, explain_windows=6)
    values.update(overrides)
    return RunConfig(**values)


def _scored(db: Path) -> set[tuple[int, int]]:
    return set(rows(db, "select n.layer, n.neuron from scores s join neurons n on n.id = s.neuron_id"))


def _failed(db: Path, *, run_id: int | None = None) -> dict[tuple[int, int], list[str]]:
    found: dict[tuple[int, int], list[str]] = {}
    where, parameters = ("where run_id = ?", (run_id,)) if run_id is not None else ("", ())
    for layer, neuron, stage, reason in rows(db, f"select layer, neuron, stage, reason from failures {where}",
                                             parameters):
        found.setdefault((layer, neuron), []).append(f"{stage}: {reason}")
    return found


def _paid_ledger(db: Path, run_id: int) -> tuple[int, int, int]:
    return rows(db, "select count(*), coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0) "
                    "from llm_calls where not from_cache and run_id = ?", (run_id,))[0]


def test_thirty_percent_faults_lose_nothing_and_duplicate_nothing(word_store_200: Path, tmp_path: Path,
                                                                  timeout_counter) -> None:
    db = tmp_path / "night.db"
    mix = FaultMix({**TRANSIENT_FAULTS, **ANSWER_FAULTS}, rate=0.3, seed=11)
    # Every simulation of one word's explanation fails with 503s until the retries are used up.
    poisoned = f'Description: the word "{frequent_words(corpus_windows(count=400, length=24), 40)[7]}"'

    def policy(request: RecordedRequest) -> Fault | None:
        if mix.enabled and isinstance(request.body, dict) and poisoned in request.body["messages"][-1]["content"]:
            return Fault.server_error(503)
        return mix(request)

    with FakeOpenAIServer(responder=competent_model) as server:
        server.fault_policy = policy
        spec = server.backend_spec("competent", FAST_OPTIONS)
        first = run_pipeline(_config(word_store_200, db, spec), progress=False)
        assert set(mix.injected) == set(TRANSIENT_FAULTS) | set(ANSWER_FAULTS)
        assert sum(mix.injected.values()) > 0.2 * server.count()

        # Every neuron ends with a score or a stored failure with its reason, never both, nothing twice.
        assert first.status == "completed" and first.done == NEURONS
        scored, failed = _scored(db), _failed(db)
        assert scored | set(failed) == {(0, neuron) for neuron in range(NEURONS)}
        assert not scored & set(failed)
        assert all(len(reasons) == 1 and reasons[0].split(": ", 1)[1] for reasons in failed.values())
        reasons = " | ".join(reason for found in failed.values() for reason in found)
        assert "explain: no usable explanation" in reasons  # empty / absurd answers
        assert "simulate: simulation failed on every scored window: backend error" in reasons
        assert "gave up after 6 attempts: HTTP 503" in reasons
        assert (first.scored, first.failed) == (len(scored), len(failed))
        for table, key in (("explanations", "neuron_id, config_key"), ("scores", "explanation_id, config_key")):
            assert rows(db, f"select count(*) from (select {key} from {table} group by {key} having count(*) > 1)"
                        ) == [(0,)]
        # Windows with unusable answers are reported in the score, never filled in.
        assert rows(db, "select count(*) from scores where json_extract(parameters_json, '$.failed_windows') > 0"
                    )[0][0] > 0

        # The ledger holds each answered (billable) request once, with the server's token counts. A normal answer
        # the client gave up waiting for on a starved machine is the only way they may differ.
        ledger = _paid_ledger(db, first.run_id)
        late = timeout_counter.timeouts - mix.injected["hang past timeout"]
        answered = (server.answered, server.answered_prompt_tokens, server.answered_completion_tokens)
        if late == 0:
            assert ledger == answered
        else:
            assert ledger[0] <= answered[0] <= ledger[0] + late
        assert (first.prompt_tokens, first.completion_tokens) == ledger[1:]

        # Faults off, --retry-failed: exactly the failed neurons are redone, the stored results are untouched.
        before = results_snapshot(db)
        mix.enabled = False
        server.reset()
        timeouts_before_second = timeout_counter.timeouts
        second = run_pipeline(_config(word_store_200, db, spec, retry_failed=True), progress=False)
        assert (second.status, second.done, second.skipped) == ("completed", len(failed), NEURONS - len(failed))
        assert (second.failed, _scored(db)) == (0, {(0, neuron) for neuron in range(NEURONS)})
        explain_failures = sum(1 for found in failed.values() if found[0].startswith("explain"))
        assert second.explained == explain_failures
        after = results_snapshot(db)
        for table in ("explanations", "scores"):
            assert set(before[table]) <= set(after[table])
            assert len(after[table]) == NEURONS
        # No faults now, but a starved machine can still make the client give up on an answer the server sent.
        second_ledger = _paid_ledger(db, second.run_id)
        second_answered = (server.answered, server.answered_prompt_tokens, server.answered_completion_tokens)
        second_late = timeout_counter.timeouts - timeouts_before_second
        if second_late == 0:
            assert second_ledger == second_answered
        else:
            assert second_ledger[0] <= second_answered[0] <= second_ledger[0] + second_late
        requests = server.count()
        third = run_pipeline(_config(word_store_200, db, spec), progress=False)
        assert (third.done, third.skipped, server.count()) == (0, NEURONS, requests)
    assert rows(db, "pragma integrity_check") == [("ok",)]


@pytest.mark.parametrize("fatal", sorted(FATAL_FAULTS))
def test_a_bad_key_or_empty_account_stops_the_run_with_one_line(word_store_200: Path, tmp_path: Path, fatal: str,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "night.db"
    with FakeOpenAIServer(responder=competent_model) as server:
        # Healthy for the first 20 requests, then every request fails the fatal way (as a revoked key would).
        server.fault_policy = lambda request: FATAL_FAULTS[fatal]() if request.index >= 20 else None
        spec = server.backend_spec("competent", FAST_OPTIONS)
        flags = ["run", "--records", str(word_store_200), "--db", f"sqlite:///{db}", "--explainer", "token-pairs",
                 "--simulator", "generated", "--llm", spec, "--neurons", "0:0-11", "--concurrency", "4",
                 "--score-top-windows", "2", "--score-random-windows", "2", "--explain-windows", "6"]
        assert run_cli(flags) == 2
        err = capsys.readouterr().err
        requests_when_stopped = server.count()
        expected = "out of credit" if fatal == "insufficient_quota" else "HTTP 401"
        *logged, message = err.splitlines()
        assert message.startswith("neuron-explainer: error: ") and expected in message
        assert all(is_log_line(line, ("WARNING ",)) for line in logged)  # a missing price, progress; no traceback
        # Stopped at once: no failure rows were written for the neurons it never got to, and few requests followed.
        assert rows(db, "select count(*) from failures") == [(0,)]
        assert requests_when_stopped < 20 + 4 * 6 * 2
        [(status, error)] = rows(db, "select status, error from runs")
        assert status == "failed" and expected in error

        # Fixed key / credit added: the same command finishes the night without redoing what was stored.
        stored_before = results_snapshot(db)
        server.fault_policy = None
        assert run_cli(flags) == 0
    after = results_snapshot(db)
    assert set(stored_before["scores"]) <= set(after["scores"]) and len(after["scores"]) == 12
    assert [status for (status,) in rows(db, "select status from runs order by id")] == ["completed", "failed"]


def test_a_fatal_error_outside_a_run_is_a_user_error(word_store_200: Path, tmp_path: Path) -> None:
    with FakeOpenAIServer(responder=competent_model) as server:
        server.fault_policy = lambda request: Fault.unauthorized()
        with pytest.raises(UserError, match="HTTP 401 invalid_api_key"):
            run_pipeline(_config(word_store_200, tmp_path / "n.db", server.backend_spec("competent", FAST_OPTIONS),
                                 neurons="0:0-3"), progress=False)
        assert server.count() <= 4
