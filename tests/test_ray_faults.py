"""Faults of a night on a real local Ray cluster (`run --ray`): a worker actor SIGKILLed while it holds neurons, and
the driver SIGKILLed mid-night then run again. Each time the night finishes with exactly the rows of a one-process
night (nothing lost, nothing duplicated, integrity checked), on SQLite (the driver the only writer: the dead worker's
neurons go back to the queue) and on PostgreSQL (leases: the dead worker's are taken over). A `run --ray` driver
started outside the checkout shows that its workers import this package from what Ray's runtime environment shipped;
`run --ray` twice on the finished night does no work and exits 0.

Only events are waited for (rows in the database, what a worker actor says it holds); no timing is asserted.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from neuron_explainer.pipeline import run_pipeline
from neuron_explainer.pipeline.ray_night import NAMESPACE

sys.path.insert(0, str(Path(__file__).parent))
from db_targets import db_url, integrity, is_postgres, rows  # noqa: E402
from fake_openai_server import FakeOpenAIServer  # noqa: E402
from fault_harness import results_snapshot, word_night_config, word_store  # noqa: E402
from scripted_llm import competent_model  # noqa: E402

NEURONS = 12
REPO = Path(__file__).resolve().parents[1]
LLM_OPTIONS = "timeout=10&attempts=3&backoff=0.01"
pytestmark = pytest.mark.usefixtures("ray_cluster")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return word_store(tmp_path_factory.mktemp("ray-fault-words"), neurons=NEURONS, words=NEURONS)


@pytest.fixture()
def server():
    with FakeOpenAIServer(responder=competent_model, latency=0.02) as running:
        yield running


def _wait_for(condition, what: str, limit_s: float = 120.0):
    deadline = time.monotonic() + limit_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _count(db, table: str) -> int:
    try:
        return int(rows(db, f"select count(*) from {table}")[0][0])
    except Exception:  # noqa: BLE001 - not created yet
        return 0


def _night_actors(kind: str) -> list[str]:
    import ray

    return sorted(actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True)
                  if actor["namespace"] == NAMESPACE and f"-{kind}" in actor["name"])


def _holding(name: str) -> tuple[int, list]:
    import ray

    try:
        return ray.get(ray.get_actor(name, namespace=NAMESPACE).holding.remote(), timeout=30)
    except (ValueError, ray.exceptions.RayError):
        return 0, []  # gone or restarting


def _a_worker_holding_neurons() -> tuple[str, int, list] | None:
    for name in _night_actors("worker"):
        pid, held = _holding(name)
        if held:
            return name, pid, held
    return None


def _reference(store: Path, new_db, spec: str) -> dict:
    reference = new_db()
    assert run_pipeline(word_night_config(store, reference, spec), progress=False).status == "completed"
    expected = results_snapshot(reference)
    assert len(expected["scores"]) == NEURONS
    return expected


def _assert_one_night(db, expected: dict) -> None:
    """The rows of a one-process night: the same results, each once, nothing left claimed, integrity ok."""
    assert results_snapshot(db) == expected
    for table, key in (("explanations", "neuron_id, config_key"), ("scores", "explanation_id, config_key"),
                       ("neuron_stats", "neuron_id, recording_id")):
        assert rows(db, f"select count(*) from (select {key} from {table} group by {key} having count(*) > 1) d"
                    ) == [(0,)], table
    assert _count(db, "explanations") == _count(db, "scores") == NEURONS
    if is_postgres(db):
        assert rows(db, "select count(*) from unit_claims where done_at is null") == [(0,)]
    assert integrity(db) == [("ok",)]


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie (killed, not yet reaped by its parent) is gone too: it runs nothing.
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "\nState:\tZ" in status.read_text()


def test_a_worker_actor_killed_mid_unit_does_not_fail_the_night(store: Path, server, new_db,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    spec = server.backend_spec("competent", LLM_OPTIONS)
    expected = _reference(store, new_db, spec)
    db = new_db()
    server.latency = 0.1  # a unit takes a while: the victim surely holds neurons when it is killed
    outcome: dict = {}
    victim = None

    def night() -> None:
        try:
            outcome["summary"] = run_pipeline(word_night_config(store, db, spec, ray="auto", ray_workers=2), progress=False)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the test below
            outcome["error"] = exc

    with caplog.at_level(logging.INFO, logger="neuron_explainer.pipeline.ray_night"):
        driver = threading.Thread(target=night)
        driver.start()
        try:
            # Mid-night: something is committed and a worker holds neurons (taken, not finished).
            _wait_for(lambda: _count(db, "explanations") >= 1 or "error" in outcome, "a first explanation")
            victim = _wait_for(lambda: _a_worker_holding_neurons() or "error" in outcome, "a worker holding neurons")
        finally:
            if "error" not in outcome and isinstance(victim, tuple):
                os.kill(victim[1], signal.SIGKILL)
            driver.join(timeout=300)
    assert "error" not in outcome, outcome.get("error")
    summary = outcome["summary"]
    assert summary.status == "completed"
    _name, pid, held = victim
    [died] = [record.getMessage() for record in caplog.records if "died" in record.getMessage()]
    assert f"(pid {pid}) died" in died
    if not is_postgres(db):
        # Its neurons went back to the queue (the one it held then, or the next it had taken).
        given_back = int(died.split(" holding ")[1].split(" ")[0])
        assert given_back >= 1
    _assert_one_night(db, expected)
    [(status,)] = rows(db, "select status from runs")
    assert status == "completed"
    assert _pid_gone(pid)
    # The night's actors, the restarted one too, are gone with it (Ray drops the names as it kills them).
    _wait_for(lambda: not _night_actors(""), "the night's actors to be gone")


def _cli(store: Path, db, spec: str, address: str) -> list[str]:
    return [str(Path(sys.executable).with_name("neuron-explainer")), "-v", "run", "--ray", address,
            "--ray-workers", "2", "--db", db_url(db), "--records", str(store), "--explainer", "token-pairs",
            "--simulator", "generated", "--llm", spec, "--concurrency", "2", "--score-top-windows", "2",
            "--score-random-windows", "2", "--explain-windows", "6"]


def _environment(cache: Path) -> dict[str, str]:
    return {**os.environ, "NEURON_EXPLAINER_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def test_the_driver_killed_mid_night_then_rerun_finishes_the_night(store: Path, server, backend: str,
                                                                   request: pytest.FixtureRequest,
                                                                   tmp_path: Path) -> None:
    import ray

    new_db = _database_factory(backend, request, tmp_path)
    spec = server.backend_spec("competent", LLM_OPTIONS)
    expected = _reference(store, new_db, spec)
    db = new_db()
    server.latency = 0.1
    address = ray.get_runtime_context().gcs_address
    # Outside the checkout: Ray puts the driver's directory on its workers' path, and the checkout there would
    # shadow the package the runtime environment ships.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    environment = _environment(tmp_path / "cache")
    command = _cli(store, db, spec, address)
    log = tmp_path / "driver.log"
    with log.open("w") as output:
        driver = subprocess.Popen(command, cwd=elsewhere, env=environment, stdout=output, stderr=subprocess.STDOUT)
    try:
        _wait_for(lambda: _count(db, "explanations") >= 2 or driver.poll() is not None, "two explanations")
        assert driver.poll() is None, log.read_text()[-3000:]
        workers = _wait_for(lambda: _night_actors("worker") if len(_night_actors("worker")) == 2 else None,
                            "two worker actors")
        handle = ray.get_actor(workers[0], namespace=NAMESPACE)
        pid, package = ray.get(handle.ready.remote(), timeout=60)
        pids = [_holding(name)[0] for name in workers]
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    # The workers imported neuron_explainer from what Ray's runtime environment shipped, not from the checkout.
    package = Path(package)
    assert "runtime_resources" in package.parts and package.name == "__init__.py", package
    assert not package.is_relative_to(REPO) and (package.parent / "_resources" / "prompts").is_dir()
    assert _count(db, "scores") < NEURONS  # killed mid-night
    # The same command again: it resumes (the dead driver's actors neither block it nor keep running).
    rerun = subprocess.run(command, cwd=elsewhere, env=environment, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    _assert_one_night(db, expected)
    # The killed driver's run is marked abandoned by the rerun, which completed.
    assert [status for _, status in rows(db, "select id, status from runs")] == ["failed", "completed"]
    # The killed driver's workers are gone (Ray ends a dead driver's actors) and so are the rerun's.
    _wait_for(lambda: all(_pid_gone(pid) for pid in [pid, *pids] if pid), "the first night's workers to end")
    _wait_for(lambda: not _night_actors(""), "the night's actors to be gone")


def test_two_ray_runs_on_a_finished_night_do_nothing_and_exit_0(store: Path, server, postgres_server,
                                                                tmp_path: Path,
                                                                request: pytest.FixtureRequest) -> None:
    import ray

    db = _database_factory("postgresql", request, tmp_path)()
    spec = server.backend_spec("competent", LLM_OPTIONS)
    assert run_pipeline(word_night_config(store, db, spec), progress=False).status == "completed"
    finished = results_snapshot(db)
    server.reset()
    command = _cli(store, db, spec, ray.get_runtime_context().gcs_address)
    both = [subprocess.Popen(command, cwd=tmp_path, env=_environment(tmp_path / "cache"), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errors = [process.communicate()[1] for process in both]
    assert [process.returncode for process in both] == [0, 0], errors
    assert server.count() == 0 and results_snapshot(db) == finished
    assert [status for _, status in rows(db, "select id, status from runs")] == ["completed"] * 3
    _wait_for(lambda: not _night_actors(""), "the night's actors to be gone")


def _database_factory(backend: str, request: pytest.FixtureRequest, tmp_path: Path):
    """new_db for one backend chosen by the test (a fresh SQLite file, or a database on the session's server)."""
    if backend == "sqlite":
        counter = iter(range(1000))
        return lambda: tmp_path / f"db-{next(counter)}.db"
    server = request.getfixturevalue("postgres_server")
    return server.new_database
