"""`run --batch`: the OpenAI Batch API on the loopback server, with delays, expiry, failed and malformed lines, and
kills after upload and while polling; nothing lost, nothing paid twice (ledger = what the server answered)."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from neuron_explainer.llm import ResponseCache, UsageLedger, make_backend
from neuron_explainer.llm.base import Message
from neuron_explainer.llm.batch_api import BatchJournal
from neuron_explainer.pipeline import RunConfig, run_pipeline

sys.path.insert(0, str(Path(__file__).parent))
from fake_openai_server import BatchOutcome, Fault, FakeOpenAIServer, RecordedRequest  # noqa: E402
from scripted_llm import competent_model  # noqa: E402
from test_scoring_llm import _planted_store  # noqa: E402

FAST = "batch_poll=0.05&batch_flush=0.1&backoff=0.01"
NEURONS = 4


def _flags(server: FakeOpenAIServer, records: Path, db: Path) -> dict:
    return dict(records=str(records), db=f"sqlite:///{db}", explainers=("token-pairs",), simulator="generated",
                scorers=("simulation", "detection"), llm=server.backend_spec("gpt-4o-mini", FAST), batch=True,
                neurons=f"0:0-{NEURONS - 1}", concurrency=4)


def _cli(server: FakeOpenAIServer, records: Path, db: Path) -> list[str]:
    return [sys.executable, "-c", "import sys; from neuron_explainer.cli import main; sys.exit(main())", "run",
            "--records", str(records), "--db", f"sqlite:///{db}", "--explainer", "token-pairs", "--simulator",
            "generated", "--scorer", "simulation,detection", "--llm", server.backend_spec("gpt-4o-mini", FAST),
            "--batch", "--neurons", f"0:0-{NEURONS - 1}", "--concurrency", "4"]


def _paid(db: Path) -> tuple[int, int, int]:
    with sqlite3.connect(db) as connection:
        return connection.execute("SELECT COUNT(*), COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0)"
                                  " FROM llm_calls WHERE NOT from_cache").fetchone()


def _complete(db: Path) -> None:
    with sqlite3.connect(db) as connection:
        assert connection.execute("SELECT COUNT(*) FROM scores").fetchone()[0] == NEURONS
        assert connection.execute("SELECT COUNT(*) FROM classifier_scores").fetchone()[0] == NEURONS
        assert connection.execute("SELECT COUNT(*) FROM failures").fetchone()[0] == 0


def _answered(server: FakeOpenAIServer) -> tuple[int, int, int]:
    return server.answered, server.answered_prompt_tokens, server.answered_completion_tokens


def test_a_batch_night_with_expiry_failed_and_malformed_lines_loses_and_repays_nothing(tmp_path: Path) -> None:
    records = _planted_store(tmp_path)
    db = tmp_path / "n.db"
    with FakeOpenAIServer(responder=competent_model) as server:
        server.batch_delay = 0.2
        server.batch_script = [BatchOutcome(failed_fraction=0.3), BatchOutcome(expire=True),
                               BatchOutcome(malformed_lines=3)]
        summary = run_pipeline(RunConfig(**_flags(server, records, db)), progress=False)
        assert summary.status == "completed" and summary.scored == 2 * NEURONS
        assert server.count("/v1/chat/completions") == 0  # everything went through batches
        assert server.count("/v1/batches") > 3 and len(server.batches) >= 4  # the scripted ones were resubmitted
        _complete(db)
        assert _paid(db) == _answered(server)
        with sqlite3.connect(db) as connection:
            standard, batch = connection.execute(
                "SELECT SUM(prompt_tokens * 0.15 + completion_tokens * 0.60) / 1e6, SUM(cost_usd) FROM llm_calls "
                "WHERE operation = 'batch-chat'").fetchone()
        assert batch == pytest.approx(standard / 2)


def test_identical_requests_come_from_the_cache_at_no_cost(tmp_path: Path) -> None:
    with FakeOpenAIServer(responder=lambda body: "digits") as server:
        ledger = UsageLedger()
        cache = ResponseCache(tmp_path / "cache.sqlite")

        async def ask() -> list:
            backend = make_backend(server.backend_spec("gpt-4o-mini", FAST), cache=cache, ledger=ledger,
                                   batch_journal=BatchJournal(tmp_path / "cache.sqlite"))
            try:
                return [await backend.generate([Message("user", "same question")]) for _ in range(2)]
            finally:
                await backend.aclose()

        first, second = asyncio.run(ask())
        assert first.generations[0].text == second.generations[0].text == "digits"
        assert not first.from_cache and second.from_cache
        assert len(server.batches) == 1 and server.answered == 1
        assert [entry.cost_usd == 0 for entry in ledger.entries] == [False, True]


@pytest.mark.parametrize("moment", ["after upload", "while polling"])
def test_a_night_killed_after_submitting_picks_up_its_batches(tmp_path: Path, moment: str) -> None:
    records = _planted_store(tmp_path)
    db = tmp_path / "n.db"
    with FakeOpenAIServer(responder=competent_model) as server:
        server.batch_delay = 3600.0  # nothing finishes before the kill

        def hang_batch_creation(request: RecordedRequest) -> Fault | None:
            return Fault.hang(120) if request.path == "/v1/batches" and isinstance(request.body, dict) else None

        if moment == "after upload":
            server.fault_policy = hang_batch_creation
        process = subprocess.Popen(_cli(server, records, db), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if moment == "after upload" and server.count("/v1/batches") >= 1:
                break
            if moment == "while polling" and any(request.path.startswith("/v1/batches/") for request in server.requests):
                break
            time.sleep(0.05)
        else:
            process.kill()
            pytest.fail(f"the run never got {moment}")
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        uploads, created = server.count("/v1/files"), len(server.batches)
        assert uploads >= 1 and created == (0 if moment == "after upload" else uploads)

        server.fault_policy = None
        server.batch_delay = 0.1
        run_pipeline(RunConfig(**_flags(server, records, db)), progress=False)
        # The killed run's upload (and batch) is picked up: every uploaded file has exactly one batch.
        assert server.count("/v1/files") == len(server.batches)
        with sqlite3.connect(db.with_name(db.name + ".llm-cache.sqlite")) as connection:
            files = connection.execute("SELECT COUNT(*), COUNT(DISTINCT batch_id) FROM llm_batch_files").fetchone()
            repeated = connection.execute("SELECT COUNT(*) FROM (SELECT custom_id FROM llm_batch_requests "
                                          "GROUP BY custom_id HAVING COUNT(*) > 1)").fetchone()[0]
        assert files[0] == files[1] == len(server.batches) and repeated == 0  # no request was submitted twice
        assert server.batches["batch_1"]["status"] == "completed"  # the first batch was finished and read
        _complete(db)
        assert _paid(db) == _answered(server)
