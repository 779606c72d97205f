"""Bad input to every command: one line on stderr naming the problem, exit code 2, no traceback, and nothing
half-written left behind. Most cases call the CLI's `main` in this process (the same code path, without paying an
interpreter start-up per case); a few run `python -m neuron_explainer.cli` to prove nothing else reaches stderr.
Inputs that are not errors (dead neurons) must be handled: stored failures with reasons, never exceptions."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from neuron_explainer.activations import record_activations
from neuron_explainer.core.errors import UserError

sys.path.insert(0, str(Path(__file__).parent))
from fault_harness import is_log_line, read_only, rows, run_cli, word_store  # noqa: E402
from neuron_records import corpus_windows  # noqa: E402

ERROR_PREFIX = "neuron-explainer: error: "


@dataclass(frozen=True)
class Workspace:
    """Inputs good and bad, made once for the module."""

    root: Path
    tiny: Path
    store: Path
    db: Path
    newer_db: Path

    def __getattr__(self, name: str) -> Path:
        return self.root / name.replace("_dot_", ".")

    def db_url(self, name: str) -> str:
        return f"sqlite:///{self.root / name}"


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Workspace:
    root = tmp_path_factory.mktemp("bad-inputs")
    store = word_store(root, neurons=8, words=8)
    db = root / "good.db"
    assert run_cli(["run", "--records", str(store), "--db", f"sqlite:///{db}", "--explainer", "ngram",
                    "--simulator", "lexical"]) == 0
    newer = root / "newer.db"
    shutil.copy(db, newer)
    with sqlite3.connect(newer) as connection:
        connection.execute("update ne_meta set value = '999' where key = 'schema_version'")
    connection.close()
    (root / "corpus.txt").write_text("The quick brown fox jumps over the lazy dog. " * 200, encoding="utf-8")
    (root / "empty.txt").write_text("", encoding="utf-8")
    (root / "binary.txt").write_bytes(b"abc\x00\x01\x02" * 100)
    (root / "latin1.txt").write_bytes("café crème brûlée ".encode("latin-1") * 50)
    (root / "short.txt").write_text("Just four words.", encoding="utf-8")
    (root / "fake.gguf").write_bytes(b"this is not a GGUF file" * 10)
    (root / "broken.toml").write_text("model = [unclosed\n", encoding="utf-8")
    (root / "typo.toml").write_text('modle = "default"\n', encoding="utf-8")
    (root / "notdb.db").write_text("hello, I am not a database\n", encoding="utf-8")
    (root / "garbage.jsonl").write_text("{this is not json\n", encoding="utf-8")
    (root / "layers3.toml").write_text("layers = 3\n", encoding="utf-8")
    (root / "many.toml").write_text('windows = "many"\n', encoding="utf-8")
    (root / "huge.toml").write_text("windows = 1e20\n", encoding="utf-8")
    (root / "config-dir").mkdir()
    truncated = root / "truncated-store"
    shutil.copytree(store, truncated)
    top = truncated / "layer_000" / "top_activations.npy"
    top.write_bytes(top.read_bytes()[:top.stat().st_size // 2])
    return Workspace(root=root, tiny=tiny_llama, store=store, db=db, newer_db=newer)


@dataclass(frozen=True)
class Case:
    """One bad input: the arguments, words the message must contain, and outputs that must not appear."""

    argv: Callable[[Workspace], list[str]]
    expected: tuple[str, ...]
    not_created: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()


def _record(ws: Workspace, *extra: str, corpus: str = "corpus.txt", model: str | None = None) -> list[str]:
    return ["record", "--model", model or str(ws.tiny), "--corpus", str(ws.root / corpus), "--out",
            str(ws.root / "new-records"), *extra]


def _run(ws: Workspace, *extra: str, db: str = "new.db") -> list[str]:
    return ["run", "--records", str(ws.store), "--db", ws.db_url(db), *extra]


CASES: dict[str, Case] = {
    # record
    "record: unknown model": Case(lambda ws: _record(ws, model="no-such-org/no-such-model"),
                                  ("cannot load model", "no-such-org/no-such-model"), ("new-records",)),
    "record: GGUF that is not a GGUF": Case(lambda ws: _record(ws, model=str(ws.root / "fake.gguf")),
                                            ("fake.gguf", "not a GGUF file"), ("new-records",)),
    "record: layer out of range": Case(lambda ws: _record(ws, "--layers", "5"),
                                       ("layer 5 out of range", "0-1"), ("new-records",)),
    "record: malformed layer spec": Case(lambda ws: _record(ws, "--layers", "1-x"),
                                         ("malformed layer range '1-x'",), ("new-records",)),
    "record: empty corpus": Case(lambda ws: _record(ws, corpus="empty.txt"), ("empty.txt", "is empty"),
                                 ("new-records",)),
    "record: binary file": Case(lambda ws: _record(ws, corpus="binary.txt"), ("binary.txt", "looks binary"),
                                ("new-records",)),
    "record: non-UTF-8 text": Case(lambda ws: _record(ws, corpus="latin1.txt"), ("latin1.txt", "not UTF-8"),
                                   ("new-records",)),
    "record: window shorter than requested": Case(lambda ws: _record(ws, "--ctx", "64", corpus="short.txt"),
                                                  ("no window of 64 tokens", "--ctx"), ("new-records",)),
    "record: missing corpus": Case(lambda ws: _record(ws, corpus="missing.txt"), ("corpus not found",),
                                   ("new-records",)),
    "record: unknown dtype": Case(lambda ws: _record(ws, "--dtype", "float7"), ("--dtype 'float7'",),
                                  ("new-records",)),
    "record: zero-length windows": Case(lambda ws: _record(ws, "--ctx", "0"), ("must be at least 1",),
                                        ("new-records",)),
    "record: output is a file": Case(lambda ws: ["record", "--model", str(ws.tiny), "--corpus",
                                                 str(ws.root / "corpus.txt"), "--out", str(ws.root / "short.txt")],
                                     ("short.txt", "not a directory"), unchanged=("short.txt",)),
    "record: window longer than the model's positions": Case(lambda ws: _record(ws, "--ctx", "300"),
                                                              ("--ctx 300", "256 positions"), ("new-records",)),
    "record: window far longer than the corpus": Case(lambda ws: _record(ws, "--ctx", "100000"),
                                                      ("--ctx 100000",), ("new-records",)),
    "record: window count beyond any corpus": Case(lambda ws: _record(ws, "--windows", "1" + "0" * 20),
                                                   ("--windows must be at most",), ("new-records",)),
    "record: window count in float notation": Case(lambda ws: _record(ws, "--windows", "1e20"),
                                                   ("--windows", "invalid int value: '1e20'"), ("new-records",)),
    "record: top-k in float notation": Case(lambda ws: _record(ws, "--top-k", "1e11"),
                                            ("--top-k", "invalid int value: '1e11'"), ("new-records",)),
    "record: top-k buffers beyond memory": Case(lambda ws: _record(ws, "--top-k", "100000000000"),
                                                ("--top-k 100000000000", "GiB"), ("new-records",)),
    # info
    "info: unknown model": Case(lambda ws: ["info", "--model", str(ws.root / "no-such-model")],
                                ("cannot load model", "no-such-model")),
    "info: GGUF that is not a GGUF": Case(lambda ws: ["info", "--model", str(ws.root / "fake.gguf")],
                                          ("not a GGUF file",)),
    # run
    "run: malformed TOML": Case(lambda ws: ["run", "--config", str(ws.root / "broken.toml"), "--db",
                                            ws.db_url("new.db")], ("malformed TOML", "broken.toml"), ("new.db",)),
    "run: unknown config key": Case(lambda ws: ["run", "--config", str(ws.root / "typo.toml"), "--db",
                                                ws.db_url("new.db")], ("unknown config key 'modle'",), ("new.db",)),
    "run: negative budget": Case(lambda ws: _run(ws, "--max-cost", "-1"), ("--max-cost must not be negative",),
                                 ("new.db",)),
    "run: bad backend string": Case(lambda ws: _run(ws, "--explainer", "token-pairs", "--llm", "foo:bar"),
                                    ("unknown LLM backend 'foo:bar'",), ("new.db",)),
    "run: missing API key": Case(lambda ws: _run(ws, "--explainer", "token-pairs", "--simulator", "lexical",
                                                 "--llm", "openai:gpt-4o-mini"),
                                 ("OPENAI_API_KEY is not set",), ("new.db", "new.db.llm-cache.sqlite")),
    "run: neuron out of range": Case(lambda ws: _run(ws, "--neurons", "0:999", "--explainer", "ngram",
                                                     "--simulator", "lexical"), ("neuron 999 out of range",),
                                     ("new.db",)),
    "run: malformed neuron spec": Case(lambda ws: _run(ws, "--neurons", "0:a", "--explainer", "ngram",
                                                       "--simulator", "lexical"), ("malformed neuron range 'a'",),
                                       ("new.db",)),
    "run: database of a newer schema": Case(lambda ws: _run(ws, "--explainer", "ngram", "--simulator", "lexical",
                                                            db="newer.db"), ("schema version 999", "upgrade"),
                                            unchanged=("newer.db",)),
    "run: database that is not a database": Case(lambda ws: _run(ws, "--explainer", "ngram", "--simulator",
                                                                 "lexical", db="notdb.db"),
                                                 ("notdb.db", "not a SQLite database"), unchanged=("notdb.db",)),
    "run: malformed deadline": Case(lambda ws: _run(ws, "--deadline", "25:99"), ("malformed --deadline",),
                                    ("new.db",)),
    "run: unknown explainer": Case(lambda ws: _run(ws, "--explainer", "magic"), ("unknown explainer 'magic'",),
                                   ("new.db",)),
    "run: unknown simulator": Case(lambda ws: _run(ws, "--explainer", "ngram", "--simulator", "psychic"),
                                   ("unknown simulator 'psychic'",), ("new.db",)),
    "run: missing record store": Case(lambda ws: ["run", "--records", str(ws.root / "nostore"), "--explainer",
                                                  "ngram", "--simulator", "lexical", "--db", ws.db_url("new.db")],
                                      ("no record store", "nostore"), ("new.db",)),
    "run: a polarity the recording lacks": Case(lambda ws: _run(ws, "--explainer", "ngram", "--simulator", "lexical",
                                                         "--polarity", "both"),
                                                ("--polarity both", "no negative windows"), ("new.db",)),
    "run: polarity any": Case(lambda ws: _run(ws, "--explainer", "ngram", "--polarity", "any"),
                              ("--polarity any only picks results",), ("new.db",)),
    "run: document groups on a store without document ids": Case(
        lambda ws: _run(ws, "--explainer", "ngram", "--simulator", "lexical", "--split-groups", "documents"),
        ("--split-groups documents", "no document ids"), ("new.db",)),
    "run: window longer than the model's positions": Case(
        lambda ws: ["run", "--model", str(ws.tiny), "--corpus", str(ws.root / "corpus.txt"), "--records-root",
                    str(ws.root / "new-records"), "--db", ws.db_url("new.db"), "--explainer", "ngram", "--simulator",
                    "lexical", "--ctx", "300"], ("--ctx 300", "256 positions"), ("new.db", "new-records")),
    "run: window as long as the model's positions, its BOS token making it one too many": Case(
        lambda ws: ["run", "--model", str(ws.tiny), "--corpus", str(ws.root / "corpus.txt"), "--records-root",
                    str(ws.root / "new-records"), "--db", ws.db_url("new.db"), "--explainer", "ngram", "--simulator",
                    "lexical", "--ctx", "256"], ("--ctx 256", "use --ctx 255 or less"), ("new.db", "new-records")),
    "run: a simulator the backend cannot serve": Case(
        lambda ws: _run(ws, "--explainer", "token-pairs", "--simulator", "all-at-once", "--llm",
                        "openai:gpt-4o-mini@http://127.0.0.1:9/v1"),
        ("cannot give slot distributions", "--simulator generated"), ("new.db", "new.db.llm-cache.sqlite")),
    "run: window count beyond any corpus": Case(
        lambda ws: ["run", "--model", str(ws.tiny), "--corpus", str(ws.root / "corpus.txt"), "--records-root",
                    str(ws.root / "new-records"), "--db", ws.db_url("new.db"), "--explainer", "ngram", "--simulator",
                    "lexical", "--windows", "1" + "0" * 20], ("--windows must be at most",), ("new.db", "new-records")),
    "run: top-k in float notation": Case(lambda ws: _run(ws, "--top-k", "1e11"),
                                         ("--top-k", "invalid int value: '1e11'"), ("new.db",)),
    "run: TOML layers as a number": Case(lambda ws: ["run", "--config", str(ws.root / "layers3.toml"), "--db",
                                                     ws.db_url("new.db")], ("config key 'layers'", "got 3"),
                                         ("new.db",)),
    "run: TOML windows as a word": Case(lambda ws: ["run", "--config", str(ws.root / "many.toml"), "--db",
                                                    ws.db_url("new.db")], ("config key 'windows'", "'many'"),
                                        ("new.db",)),
    "run: TOML windows in float notation": Case(lambda ws: ["run", "--config", str(ws.root / "huge.toml"), "--db",
                                                            ws.db_url("new.db")], ("config key 'windows'", "1e+20"),
                                                ("new.db",)),
    "run: config that is a directory": Case(lambda ws: ["run", "--config", str(ws.root / "config-dir"), "--db",
                                                        ws.db_url("new.db")], ("--config", "is a directory"),
                                            ("new.db",)),
    "run: truncated array in the store": Case(lambda ws: ["run", "--records", str(ws.root / "truncated-store"),
                                                          "--db", ws.db_url("new.db"), "--explainer", "ngram",
                                                          "--simulator", "lexical"],
                                              ("top_activations.npy", "damaged"), ("new.db",)),
    # explain / score
    "explain: a polarity the recording lacks": Case(
        lambda ws: ["explain", "--records", str(ws.store), "--neurons", "0:1", "--llm",
                    "openai:x@http://127.0.0.1:9/v1", "--out", str(ws.root / "e.jsonl"), "--polarity", "negative"],
        ("--polarity negative", "no negative windows"), ("e.jsonl",)),
    "explain: polarity any": Case(
        lambda ws: ["explain", "--records", str(ws.store), "--neurons", "0:1", "--llm",
                    "openai:x@http://127.0.0.1:9/v1", "--out", str(ws.root / "e.jsonl"), "--polarity", "any"],
        ("--polarity", "invalid choice: 'any'"), ("e.jsonl",)),
    "score: document groups on a store without document ids": Case(
        lambda ws: ["score", "--records", str(ws.store), "--explanations", str(ws.root / "none.jsonl"), "--out",
                    str(ws.root / "s.jsonl"), "--split-groups", "documents"],
        ("--split-groups documents", "no document ids"), ("s.jsonl",)),
    "eval real: polarity any": Case(lambda ws: ["eval", "real", "--records", str(ws.store), "--db",
                                                ws.db_url("good.db"), "--polarity", "any"],
                                    ("--polarity", "invalid choice: 'any'")),
    "explain: layer not recorded": Case(lambda ws: ["explain", "--records", str(ws.store), "--neurons", "7:0",
                                                    "--llm", "openai:x@http://127.0.0.1:9/v1", "--out",
                                                    str(ws.root / "e.jsonl")], ("layer 7",), ("e.jsonl",)),
    "explain: bad backend string": Case(lambda ws: ["explain", "--records", str(ws.store), "--neurons", "0:1",
                                                    "--llm", "gpt4", "--out", str(ws.root / "e.jsonl")],
                                        ("unknown LLM backend 'gpt4'",), ("e.jsonl",)),
    "explain: missing API key": Case(lambda ws: ["explain", "--records", str(ws.store), "--neurons", "0:1",
                                                 "--llm", "openai:gpt-4o-mini", "--out", str(ws.root / "e.jsonl")],
                                     ("OPENAI_API_KEY is not set",), ("e.jsonl",)),
    "explain: unwritable output": Case(lambda ws: ["explain", "--records", str(ws.store), "--neurons", "0:1",
                                                   "--llm", "openai:x@http://127.0.0.1:9/v1", "--out",
                                                   str(ws.root / "short.txt" / "e.jsonl")],
                                       ("cannot write", "Not a directory")),
    "score: missing explanations file": Case(lambda ws: ["score", "--records", str(ws.store), "--explanations",
                                                         str(ws.root / "none.jsonl"), "--out",
                                                         str(ws.root / "s.jsonl")],
                                             ("no explanations file",), ("s.jsonl",)),
    "score: explanations that are not JSONL": Case(lambda ws: ["score", "--records", str(ws.store),
                                                               "--explanations", str(ws.root / "garbage.jsonl"),
                                                               "--out", str(ws.root / "s.jsonl")],
                                                   ("garbage.jsonl:1", "not an explanation record"), ("s.jsonl",)),
    # query / show / export
    "query: database that is not a database": Case(lambda ws: ["query", "--db", ws.db_url("notdb.db")],
                                                   ("not a SQLite database",), unchanged=("notdb.db",)),
    "query: database of a newer schema": Case(lambda ws: ["query", "--db", ws.db_url("newer.db")],
                                              ("schema version 999",), unchanged=("newer.db",)),
    "query: missing database": Case(lambda ws: ["query", "--db", ws.db_url("missing.db")],
                                    ("no database at",), ("missing.db",)),
    "query: malformed layer filter": Case(lambda ws: ["query", "--db", ws.db_url("good.db"), "--layer", "x"],
                                          ("malformed layer filter 'x'",)),
    "query: non-numeric score": Case(lambda ws: ["query", "--db", ws.db_url("good.db"), "--min-score", "high"],
                                     ("--min-score", "'high'")),
    "query: negative limit": Case(lambda ws: ["query", "--db", ws.db_url("good.db"), "--limit", "-3"],
                                  ("limit must be at least 1",)),
    "show: malformed neuron": Case(lambda ws: ["show", "3-17", "--db", ws.db_url("good.db")],
                                   ("malformed neuron '3-17'", "LAYER:NEURON")),
    "show: neuron not in the database": Case(lambda ws: ["show", "0:77", "--db", ws.db_url("good.db")],
                                             ("neuron 0:77 is not in",)),
    "export: output under a file": Case(lambda ws: ["export", "--db", ws.db_url("good.db"), "--format", "csv",
                                                    "--out", str(ws.root / "short.txt" / "x.csv")],
                                        ("cannot write", "Not a directory")),
    "export: html into a missing directory": Case(lambda ws: ["export", "--db", ws.db_url("good.db"), "--format",
                                                              "html", "--out", str(ws.root / "no" / "site")],
                                                  ("does not exist",), ("no",)),
    "export: unknown format": Case(lambda ws: ["export", "--db", ws.db_url("good.db"), "--format", "docx",
                                               "--out", str(ws.root / "x.docx")], ("invalid choice: 'docx'",),
                                   ("x.docx",)),
    # eval / serve / show-record
    "eval planted: malformed TOML": Case(lambda ws: ["eval", "planted", "--planted", str(ws.root / "broken.toml")],
                                         ("broken.toml", "not valid TOML")),
    "eval real: missing record store": Case(lambda ws: ["eval", "real", "--records", str(ws.root / "nostore"),
                                                        "--db", ws.db_url("good.db")], ("no record store",)),
    "serve: not a generated site": Case(lambda ws: ["serve", str(ws.root / "nosite"), "--port", "0"],
                                        ("not a generated site",)),
    "show-record: truncated array in the store": Case(lambda ws: ["show-record", "0:1", "--records",
                                                                  str(ws.root / "truncated-store")],
                                                      ("top_activations.npy", "damaged")),
    "run: unreachable Ray address": Case(lambda ws: _run(ws, "--explainer", "ngram", "--simulator", "lexical",
                                                         "--ray", "127.0.0.1:1"),
                                         ("cannot reach the Ray cluster at 127.0.0.1:1",), ("new.db",)),
    "run: --ray with --batch": Case(lambda ws: _run(ws, "--explainer", "ngram", "--ray", "--batch"),
                                    ("--batch and --ray cannot be combined",), ("new.db",)),
    "run: malformed Ray address": Case(lambda ws: _run(ws, "--explainer", "ngram", "--ray", "nowhere"),
                                       ("'nowhere' is not a Ray address",), ("new.db",)),
    "runs: missing database": Case(lambda ws: ["runs", "--db", ws.db_url("missing.db")], ("no database at",),
                                   ("missing.db",)),
    "failures: database that is not a database": Case(lambda ws: ["failures", "--db", ws.db_url("notdb.db")],
                                                      ("not a SQLite database",), unchanged=("notdb.db",)),
    "show-record: missing record store": Case(lambda ws: ["show-record", "0:1", "--records",
                                                          str(ws.root / "nostore")], ("no record store",)),
}


def _error_line(err: str) -> str:
    """The one error line; anything else on stderr may only be a log line (never a traceback)."""
    lines = err.strip().splitlines()
    assert lines, "nothing on stderr"
    assert "Traceback" not in err
    errors = [line for line in lines if line.startswith(ERROR_PREFIX)]
    assert len(errors) == 1 and lines[-1] == errors[0], lines
    assert all(is_log_line(line, ("WARNING ", "INFO ")) for line in lines[:-1]), lines
    return errors[0]


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_gives_one_line_exit_2_and_leaves_nothing(name: str, ws: Workspace,
                                                            capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    case = CASES[name]
    before = {path: (ws.root / path).read_bytes() for path in case.unchanged}
    assert not any((ws.root / path).exists() for path in case.not_created)
    code = run_cli(case.argv(ws))
    message = _error_line(capsys.readouterr().err)
    assert code == 2
    for expected in case.expected:
        assert expected in message, (expected, message)
    left = [path for path in case.not_created if (ws.root / path).exists()]
    assert not left, f"left behind: {left}"
    assert {path: (ws.root / path).read_bytes() for path in case.unchanged} == before
    assert not list(ws.root.glob(".new-records.partial-*")) and not list(ws.root.glob("*.tmp"))


def test_ray_without_ray_installed_says_how_to_install_it(ws: Workspace, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets where Ray is not installed
    assert run_cli(_run(ws, "--explainer", "ngram", "--simulator", "lexical", "--ray")) == 2
    assert "pip install 'neuron-explainer[ray]'" in _error_line(capsys.readouterr().err)
    assert not (ws.root / "new.db").exists()


def test_there_are_at_least_thirty_cases_over_every_command() -> None:
    commands = {name.split(":")[0].split(" ")[0] for name in CASES}
    assert len(CASES) >= 30
    assert commands >= {"record", "run", "explain", "score", "query", "show", "export", "eval", "info", "serve"}


def test_an_unwritable_output_directory_is_refused_in_one_line(ws: Workspace,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    target = ws.root / "locked"
    target.mkdir()
    with read_only(target):
        for format_name, out in (("csv", "x.csv"), ("latex", "x.tex"), ("html", "site"), ("plots", "figures")):
            assert run_cli(["export", "--db", ws.db_url("good.db"), "--format", format_name, "--out",
                            str(target / out)]) == 2
            assert str(target / out) in _error_line(capsys.readouterr().err)
        assert run_cli(["record", "--model", str(ws.tiny), "--corpus", str(ws.root / "corpus.txt"), "--out",
                        str(target / "records"), "--windows", "8", "--ctx", "8"]) == 2
        assert "locked" in _error_line(capsys.readouterr().err)
    assert list(target.iterdir()) == []


def test_the_installed_command_prints_no_traceback(ws: Workspace) -> None:
    """Three bad inputs through a real `python -m neuron_explainer.cli` (started together to share the wait)."""
    argvs = [["run", "--config", str(ws.root / "broken.toml"), "--db", ws.db_url("new.db")],
             ["query", "--db", ws.db_url("notdb.db")],
             ["export", "--db", ws.db_url("good.db"), "--format", "csv", "--out",
              str(ws.root / "short.txt" / "x.csv")]]
    processes = [subprocess.Popen([sys.executable, "-m", "neuron_explainer.cli", *argv], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for argv in argvs]
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 2 and out == ""
        assert err.count("\n") == 1 and err.startswith(ERROR_PREFIX) and "Traceback" not in err


def test_dead_neurons_are_stored_failures_with_their_reason(tmp_path: Path) -> None:
    windows = corpus_windows(count=120, length=16)
    vocab = sorted({token for window in windows for token in window})
    index = {token: position for position, token in enumerate(vocab)}
    token_ids = np.array([[index[token] for token in window] for window in windows], dtype=np.int32)
    activations = np.zeros((120, 16, 3), dtype=np.float32)
    activations[..., 0] = [[1.0 if token.strip().lower() == "the" else 0.0 for token in window] for window in windows]
    activations[..., 2] = -1.0  # fires only negatively: dead for a positive-polarity run
    store = record_activations(tmp_path / "records", token_ids=token_ids, vocab=vocab, activations={0: activations})
    for explainer in ("ngram",):
        db = tmp_path / f"{explainer}.db"
        assert run_cli(["run", "--records", str(store), "--db", f"sqlite:///{db}", "--explainer", explainer,
                        "--simulator", "lexical"]) == 0
        dead = ("no word n-gram of the explain windows has a positive response (a dead neuron, or one that fires "
                "only on punctuation, line breaks or word pieces, which word n-grams cannot quote)")
        assert rows(db, "select layer, neuron, stage, reason from failures") == [(0, 1, "explain", dead),
                                                                                (0, 2, "explain", dead)]
        assert rows(db, "select n.neuron from scores s join neurons n on n.id = s.neuron_id") == [(0,)]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_activations_are_refused_and_leave_no_store(tmp_path: Path, bad: float) -> None:
    token_ids = np.arange(64, dtype=np.int32).reshape(8, 8) % 10
    activations = np.random.default_rng(0).random((8, 8, 4), dtype=np.float32)
    activations[3, 4, 1] = bad
    with pytest.raises(UserError, match="NaN or infinite activations"):
        record_activations(tmp_path / "records", token_ids=token_ids, vocab=[str(n) for n in range(10)],
                           activations={0: activations})
    assert list(tmp_path.iterdir()) == []


def test_a_database_another_program_keeps_locked_is_named_in_one_line(ws: Workspace,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """An open write transaction of another program (a sqlite3 shell) is reported after a short wait, not 30 s."""
    target = ws.root / "held.db"
    shutil.copy(ws.db, target)
    before = target.read_bytes()
    holder = sqlite3.connect(target, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        assert run_cli(_run(ws, "--explainer", "ngram", "--simulator", "lexical", db="held.db")) == 2
        message = _error_line(capsys.readouterr().err)
        assert "locked by another program" in message and str(target) in message
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert target.read_bytes() == before
