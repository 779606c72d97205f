"""`run --batch`: the OpenAI Batch API on the loopback server, with delays, expiry, failed and malformed lines, and
kills after upload and while polling (journal in the results database, SQLite and PostgreSQL); nothing lost, nothing
paid twice (ledger = what the server answered)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from neuron_explainer.llm import ResponseCache, UsageLedger, make_backend
from neuron_explainer.llm.base import Message
from neuron_explainer.db import DatabaseBatchJournal, open_database
from neuron_explainer.db.engine import parse_url
from neuron_explainer.llm.batch_api import FileBatchJournal
from neuron_explainer.llm.cache import default_cache_path
from neuron_explainer.pipeline import RunConfig, run_pipeline

sys.path.insert(0, str(Path(__file__).parent))
from db_targets import DbTarget, db_url, rows  # noqa: E402
from fake_openai_server import BatchOutcome, Fault, FakeOpenAIServer, RecordedRequest  # noqa: E402
from scripted_llm import competent_model  # noqa: E402
from test_scoring_llm import _planted_store  # noqa: E402

FAST = "batch_poll=0.05&batch_flush=0.1&backoff=0.01"
NEURONS = 4


def _flags(server: FakeOpenAIServer, records: Path, db: DbTarget) -> dict:
    return dict(records=str(records), db=db_url(db), explainers=("token-pairs",), simulator="generated",
                scorers=("simulation", "detection"), llm=server.backend_spec("gpt-4o-mini", FAST), batch=True,
                neurons=f"0:0-{NEURONS - 1}", concurrency=4)


def _cli(server: FakeOpenAIServer, records: Path, db: DbTarget) -> list[str]:
    return [sys.executable, "-c", "import sys; from neuron_explainer.cli import main; sys.exit(main())", "run",
            "--records", str(records), "--db", db_url(db), "--explainer", "token-pairs", "--simulator",
            "generated", "--scorer", "simulation,detection", "--llm", server.backend_spec("gpt-4o-mini", FAST),
            "--batch", "--neurons", f"0:0-{NEURONS - 1}", "--concurrency", "4"]


def _paid(db: DbTarget) -> tuple[int, int, int]:
    [(count, prompt, completion)] = rows(db, "SELECT COUNT(*), COALESCE(SUM(prompt_tokens), 0), "
                                             "COALESCE(SUM(completion_tokens), 0) FROM llm_calls WHERE NOT from_cache")
    return int(count), int(prompt), int(completion)


def _complete(db: DbTarget) -> None:
    assert rows(db, "SELECT COUNT(*) FROM scores") == [(NEURONS,)]
    assert rows(db, "SELECT COUNT(*) FROM classifier_scores") == [(NEURONS,)]
    assert rows(db, "SELECT COUNT(*) FROM failures") == [(0,)]


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
        [(standard, batch)] = rows(db, "SELECT SUM(prompt_tokens * 0.15 + completion_tokens * 0.60) / 1e6, "
                                       "SUM(cost_usd) FROM llm_calls WHERE operation = 'batch-chat'")
        assert batch == pytest.approx(standard / 2)


def test_identical_requests_come_from_the_cache_at_no_cost(tmp_path: Path) -> None:
    with FakeOpenAIServer(responder=lambda body: "digits") as server:
        ledger = UsageLedger()
        cache = ResponseCache(tmp_path / "cache.sqlite")

        async def ask() -> list:
            backend = make_backend(server.backend_spec("gpt-4o-mini", FAST), cache=cache, ledger=ledger,
                                   batch_journal=FileBatchJournal(tmp_path / "cache.sqlite"))
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
def test_a_night_killed_after_submitting_picks_up_its_batches(tmp_path: Path, moment: str, new_db) -> None:
    records = _planted_store(tmp_path)
    db = new_db()
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
        # While polling, a later upload may still be waiting for its batch when the kill lands.
        assert uploads >= 1 and (created == 0 if moment == "after upload" else 1 <= created <= uploads)

        server.fault_policy = None
        server.batch_delay = 0.1
        # The journal is in the results database: the resume needs nothing from this machine (as if it ran on
        # another one), so the response-cache file goes (nothing had been answered before the kill).
        cache = default_cache_path(db_url(db))
        for leftover in cache.parent.glob(cache.name + "*"):
            leftover.unlink()
        run_pipeline(RunConfig(**_flags(server, records, db)), progress=False)
        # The killed run's upload (and batch) is picked up: every uploaded file has exactly one batch.
        assert server.count("/v1/files") == len(server.batches)
        [(files, batch_ids)] = rows(db, "SELECT COUNT(*), COUNT(DISTINCT batch_id) FROM llm_batch_files")
        repeated = rows(db, "SELECT custom_id FROM llm_batch_requests GROUP BY custom_id HAVING COUNT(*) > 1")
        assert files == batch_ids == len(server.batches) and repeated == []  # no request was submitted twice
        assert server.batches["batch_1"]["status"] == "completed"  # the first batch was finished and read
        _complete(db)
        assert _paid(db) == _answered(server)


def test_the_journal_offers_only_uploads_no_live_process_may_still_submit(new_db, tmp_path: Path) -> None:
    db = new_db()
    open_database(db_url(db)).close()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        journal = DatabaseBatchJournal(parse_url(db_url(db)))
        journal.uploaded("file-mine", "/chat/completions", ["a" * 64, "b" * 64])
        journal.uploaded("file-live", "/chat/completions", ["c" * 64])
        journal.uploaded("file-dead", "/chat/completions", ["d" * 64])
        journal.uploaded("file-done", "/chat/completions", ["e" * 64])
        journal.submitted("file-done", "batch_9")
        journal.harvested("file-done")
        journal.close()
        # Another live process uploaded file-live and may create its batch any moment; file-dead's process is gone.
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout.strip()
        engine = create_engine(db_url(db))
        with engine.begin() as connection:
            for file_id, pid in (("file-live", sleeper.pid), ("file-dead", int(dead))):
                connection.execute(text("UPDATE llm_batch_files SET pid = :pid WHERE input_file_id = :file"),
                                   {"pid": pid, "file": file_id})
        engine.dispose()
        journal = DatabaseBatchJournal(parse_url(db_url(db)))
        assert journal.open_files() == {"file-mine": (None, {"a" * 64, "b" * 64}), "file-dead": (None, {"d" * 64})}
        journal.submitted("file-live", "batch_2")  # once its batch exists, anyone may watch it
        assert journal.open_files()["file-live"] == ("batch_2", {"c" * 64})
        journal.close()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_open_entries_of_the_old_response_cache_journal_are_adopted(tmp_path: Path) -> None:
    legacy = tmp_path / "n.db.llm-cache.sqlite"
    old = FileBatchJournal(legacy)
    old.uploaded("file-1", "/chat/completions", ["a" * 64])
    old.submitted("file-1", "batch_1")
    old.uploaded("file-2", "/chat/completions", ["b" * 64])
    old.submitted("file-2", "batch_2")
    old.harvested("file-2")
    old.close()
    url = f"sqlite:///{tmp_path / 'n.db'}"
    open_database(url).close()
    for _ in range(2):  # adopting twice changes nothing
        journal = DatabaseBatchJournal(parse_url(url), legacy_file=legacy)
        assert journal.open_files() == {"file-1": ("batch_1", {"a" * 64})}
        journal.close()
    assert rows(tmp_path / "n.db", "SELECT COUNT(*) FROM llm_batch_requests") == [(1,)]
