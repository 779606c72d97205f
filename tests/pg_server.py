"""A throwaway PostgreSQL server for one test session: Debian's binaries, a fresh data directory, a free loopback
port, stopped (and its directory removed) when the session ends. Each test gets its own database on it.

initdb and postgres refuse to run as root; as root they run as the `postgres` system user (the child process drops
to it before exec), with the data directory in a folder that user owns. Parallel test sessions (other worktrees) each start their own server.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

SERVER_USER = "postgres"
START_TIMEOUT_S = 30.0


def find_bin_dir() -> Path | None:
    """The directory holding initdb and postgres: $NEURON_EXPLAINER_PG_BIN, PATH, then Debian's versioned dirs."""
    override = os.environ.get("NEURON_EXPLAINER_PG_BIN")
    candidates = [Path(override)] if override else []
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda path: int(Path(path).parent.name)
                    if Path(path).parent.name.isdigit() else 0, reverse=True)
    candidates += [Path(path) for path in debian]
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "postgres").is_file():
            return directory
    return None


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class PostgresServer:
    """A running server; `url(name)` is the SQLAlchemy URL of one of its databases."""

    bin_dir: Path
    data_dir: Path
    port: int
    process: subprocess.Popen
    user: str = "postgres"
    _counter: itertools.count = field(default_factory=lambda: itertools.count(1))

    def url(self, database: str = "postgres", *, password: str | None = None) -> str:
        """The URL of `database` on this server (psycopg 3 driver)."""
        credentials = self.user if password is None else f"{self.user}:{password}"
        return f"postgresql+psycopg://{credentials}@127.0.0.1:{self.port}/{database}"

    def new_database(self, prefix: str = "t") -> str:
        """Create an empty database with a unique name; return its URL."""
        import psycopg

        name = f"{prefix}_{os.getpid()}_{next(self._counter)}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={self.user} dbname=postgres",
                             autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        """Fast shutdown (SIGINT), then remove the data directory."""
        if self.process.poll() is None:
            self.process.send_signal(2)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.data_dir.parent, ignore_errors=True)


def _as_server_user() -> dict:
    """Popen arguments that run the child as the server user when we are root."""
    if os.geteuid() != 0:
        return {}
    entry = pwd.getpwnam(SERVER_USER)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": [],
            "env": {**os.environ, "HOME": entry.pw_dir, "USER": SERVER_USER, "LOGNAME": SERVER_USER}}


def start_server(*, password: str | None = None) -> PostgresServer:
    """Start a fresh server on a free loopback port; raises RuntimeError with one readable line if it cannot.

    With `password`, connections over TCP need it (scram-sha-256); without, local trust (test databases only).
    """
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL server binaries not found (apt-get install postgresql, or set "
                           "NEURON_EXPLAINER_PG_BIN)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            raise RuntimeError(f"running as root but there is no {SERVER_USER!r} system user to run "
                               "PostgreSQL as") from None
    # Not under pytest's basetemp: as root that is private to root, and the server user must reach its directory.
    root = Path(tempfile.mkdtemp(prefix="ne-pg-"))
    data_dir, socket_dir = root / "data", root / "socket"
    socket_dir.mkdir()
    if os.geteuid() == 0:
        entry = pwd.getpwnam(SERVER_USER)
        for path in (root, socket_dir):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    init = [str(bin_dir / "initdb"), "-D", str(data_dir), "-U", "postgres", "--no-sync", "-E", "UTF8",
            "--locale=C", "-A", "trust"]
    if password is not None:
        password_file = root / "pw"
        password_file.write_text(password)
        if os.geteuid() == 0:
            os.chown(password_file, pwd.getpwnam(SERVER_USER).pw_uid, -1)
        init += ["--auth-host=scram-sha-256", f"--pwfile={password_file}"]
    done = subprocess.run(init, capture_output=True, text=True, cwd=root, **_as_server_user())
    if done.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    port = _free_port()
    # Small and fast: the tests need durability against client kills only, not against a server crash.
    options = ["-D", str(data_dir), "-p", str(port), "-h", "127.0.0.1", "-k", str(socket_dir),
               "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
               "-c", "shared_buffers=16MB", "-c", "max_connections=60", "-c", "log_min_messages=fatal"]
    log = (root / "server.log").open("w")
    if os.geteuid() == 0:
        os.chown(root / "server.log", pwd.getpwnam(SERVER_USER).pw_uid, -1)
    process = subprocess.Popen([str(bin_dir / "postgres"), *options], stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True, cwd=root, **_as_server_user())
    server = PostgresServer(bin_dir=bin_dir, data_dir=data_dir, port=port, process=process)
    # Should this test session be killed before it can stop the server, a watchdog stops it and removes its files.
    subprocess.Popen(["sh", "-c", f"while kill -0 {os.getpid()} 2>/dev/null; do sleep 2; done; "
                                  f"kill -INT {process.pid} 2>/dev/null; sleep 5; rm -rf '{root}'"],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        with contextlib.closing(socket.socket()) as probe:
            probe.settimeout(0.2)
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                if _accepts(server, password):
                    return server
        time.sleep(0.1)
    server.stop()
    tail = (root / "server.log").read_text(errors="replace").strip().splitlines()[-1:] if root.exists() else []
    raise RuntimeError(f"PostgreSQL did not start on port {port}: {tail}")


def _accepts(server: PostgresServer, password: str | None) -> bool:
    import psycopg

    try:
        with psycopg.connect(f"host=127.0.0.1 port={server.port} user={server.user} dbname=postgres"
                             + (f" password={password}" if password else ""), connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False
