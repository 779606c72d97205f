"""Shared fixtures: tiny real models built once per session, isolated cache directory, the results database on
both backends (a SQLite file, a database on this session's own PostgreSQL server)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fake_openai_server import fake_openai  # noqa: F401 - registers the loopback OpenAI server fixture

# Set before any test imports transformers: huggingface_hub reads it once, at import, and session fixtures (the
# tiny models) run before the per-test fixture below; without it an unknown model id is looked up on the hub.
os.environ["HF_HUB_OFFLINE"] = "1"
from tiny_models import make_tiny_model


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # The converted bundled model is expensive to make; share it across tests but never with the user's cache.
    shared = os.environ.get("NEURON_EXPLAINER_TEST_CACHE") or str(tmp_path_factory.getbasetemp() / "cache")
    monkeypatch.setenv("NEURON_EXPLAINER_CACHE", shared)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory: pytest.TempPathFactory):
    """Returns a function family -> directory of a saved tiny random-init model (built once per family)."""
    built: dict[str, Path] = {}

    def build(family: str = "llama") -> Path:
        if family not in built:
            built[family] = make_tiny_model(tmp_path_factory.mktemp(f"tiny-{family}"), family)
        return built[family]

    return build


@pytest.fixture(scope="session")
def tiny_llama(tiny_model_factory) -> Path:
    """Directory of a tiny random-init Llama (2 layers x 48 MLP neurons)."""
    return tiny_model_factory("llama")


_postgres_unavailable: list[str] = []


@pytest.fixture(scope="session")
def postgres_server() -> Iterator["PostgresServer"]:
    """This test session's own PostgreSQL server (Debian's binaries, a temporary directory, a free loopback port)."""
    from pg_server import start_server

    if _postgres_unavailable:
        pytest.skip(_postgres_unavailable[0])
    try:
        import psycopg  # noqa: F401

        server = start_server()
    except (RuntimeError, ImportError, OSError) as exc:
        _postgres_unavailable.append(f"PostgreSQL tests skipped: {exc}")
        pytest.skip(_postgres_unavailable[0])
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def new_db(request: pytest.FixtureRequest, tmp_path: Path,
           monkeypatch: pytest.MonkeyPatch) -> Callable[[], Path | str]:
    """Makes a fresh, empty results database per call: a SQLite file path, or a PostgreSQL URL (the test runs once
    per backend)."""
    if request.param == "postgresql":
        server = request.getfixturevalue("postgres_server")

        def new_postgres_database() -> str:
            url = server.new_database()
            # A SQLite database keeps its LLM response cache beside its file; a PostgreSQL one uses the cache
            # directory, so each test database gets its own (as each SQLite file has), from now on in this test.
            monkeypatch.setenv("NEURON_EXPLAINER_CACHE", str(tmp_path / f"cache-{url.rsplit('/', 1)[1]}"))
            return url

        return new_postgres_database
    counter = iter(range(1_000_000))
    return lambda: tmp_path / f"db-{next(counter)}.db"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    # One line, not one per skipped test, says why PostgreSQL was not tested.
    if _postgres_unavailable:
        terminalreporter.write_line(_postgres_unavailable[0], yellow=True, bold=True)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    """A real local Ray cluster for this test session (two CPUs, no dashboard), shut down at its end."""
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'neuron-explainer[ray]'")
    for attempt in range(3):
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            break
        except Exception as exc:  # noqa: BLE001 - Ray says only this: its raylet took over 30 s to register
            # On a loaded shared machine (tests run niced) the raylet may miss Ray's fixed 30 s start-up window.
            if "timed out during startup" not in str(exc) or attempt == 2:
                raise
            ray.shutdown()
    try:
        yield
    finally:
        ray.shutdown()
