"""Shared machinery of the fault, bad-input and security tests and of scripts/soak.py: planted word-neuron
stores, a seeded fault mix for the loopback OpenAI server, snapshots of what a results database holds, the CLI in
this process or a forked one, and ways to make a file read-only or a disk small (as root too)."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import shutil
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import db_targets  # noqa: E402
from db_targets import DbTarget  # noqa: E402
from fake_openai_server import Fault, RecordedRequest  # noqa: E402
from neuron_records import corpus_windows  # noqa: E402

from neuron_explainer.pipeline import RunConfig  # noqa: E402

FAST_OPTIONS = "timeout=2&attempts=6&backoff=0.01"


def word_night_config(store: Path, db: object, spec: str, **overrides: object) -> RunConfig:
    """A small token-pairs night over a word store with the generated simulator: what the worker tests share."""
    values: dict[str, object] = dict(db=db_targets.db_url(db), records=str(store), explainers=("token-pairs",),
                                     simulator="generated", llm=spec, concurrency=2, score_top_windows=2,
                                     score_random_windows=2, explain_windows=6)
    values.update(overrides)
    return RunConfig(**values)
"""Backend spec options for fault tests: a hang costs two seconds, retries wait about 10-40 ms."""


def frequent_words(windows: Sequence[Sequence[str]], count: int) -> list[str]:
    """The `count` most frequent alphabetic words (lower-cased) of the windows, most frequent first."""
    counts = Counter(token.strip().lower() for window in windows for token in window if token.strip().isalpha())
    return [word for word, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:count]]


def word_store(directory: Path, *, neurons: int, words: int = 40, windows: int = 400, length: int = 24) -> Path:
    """A real record store (the recorder's own writer) of `neurons` planted neurons in layer 0.

    Neuron i fires 1.0 on the (i mod `words`)-th most frequent word of the corpus windows, except in windows whose
    index is i // `words` modulo 5: neurons sharing a word see different windows, so every neuron's prompts differ.
    """
    from neuron_explainer.activations import record_activations

    texts = corpus_windows(count=windows, length=length)
    vocabulary = frequent_words(texts, words)
    vocab = sorted({token for window in texts for token in window})
    index = {token: position for position, token in enumerate(vocab)}
    token_ids = np.array([[index[token] for token in window] for window in texts], dtype=np.int32)
    by_word: dict[str, list[int]] = {}
    for neuron in range(neurons):
        by_word.setdefault(vocabulary[neuron % words], []).append(neuron)
    activations = np.zeros((len(texts), length, neurons), dtype=np.float32)
    for window_index, window in enumerate(texts):
        for position, token in enumerate(window):
            for neuron in by_word.get(token.strip().lower(), ()):
                if window_index % 5 != (neuron // words) % 5:
                    activations[window_index, position, neuron] = 1.0
    return record_activations(directory / "records", token_ids=token_ids, vocab=vocab, activations={0: activations},
                              top_k=20, random_k=20)


def _drop_last_line(text: str) -> str:
    return "\n".join(text.splitlines()[:-1])


def _words_for_numbers(text: str) -> str:
    return re.sub(r"\d+", "high", text)


TRANSIENT_FAULTS: dict[str, Callable[[], Fault]] = {
    "429 Retry-After": lambda: Fault.rate_limit(retry_after=0.01),
    "429 retry-after-ms": lambda: Fault.rate_limit(retry_after_ms=10),
    "429 bare": lambda: Fault.rate_limit(),
    "500": lambda: Fault.server_error(500),
    "502": lambda: Fault.server_error(502),
    "503": lambda: Fault.server_error(503),
    "reset mid-body": Fault.reset,
    "hang past timeout": lambda: Fault.hang(2.5),
    "malformed JSON": Fault.malformed_json,
    "truncated body": Fault.truncated,
}
"""Faults a retry can get past."""

ANSWER_FAULTS: dict[str, Callable[[], Fault]] = {
    "empty answer": lambda: Fault.garbled(lambda text: ""),
    "wrong count": lambda: Fault.garbled(_drop_last_line),
    "non-numeric": lambda: Fault.garbled(_words_for_numbers),
    "10,000 characters": lambda: Fault.garbled(lambda text: ("activation " * 1000)[:10_000]),
}
"""Valid, billed answers whose content is unusable: no retry, a per-window error or a stored failure."""

FATAL_FAULTS: dict[str, Callable[[], Fault]] = {
    "insufficient_quota": Fault.insufficient_quota,
    "401": Fault.unauthorized,
}
"""Faults after which every later call fails the same way: the run stops."""


@dataclass
class FaultMix:
    """A seeded per-request fault policy: with probability `rate`, one of `kinds` chosen uniformly."""

    kinds: dict[str, Callable[[], Fault]]
    """Named fault factories to draw from."""
    rate: float = 0.3
    """Probability that a request gets a fault."""
    seed: int = 0
    """Seed of the draws."""
    enabled: bool = True
    """False: every request is answered normally."""
    injected: Counter[str] = field(default_factory=Counter)
    """Faults injected so far, by name."""

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)
        self._names = sorted(self.kinds)
        self._lock = threading.Lock()

    def __call__(self, request: RecordedRequest) -> Fault | None:
        with self._lock:
            if not self.enabled or self._random.random() >= self.rate:
                return None
            name = self._random.choice(self._names)
            self.injected[name] += 1
        return self.kinds[name]()


PROGRESS_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d neurons: ")
"""A progress line of `run` when stderr is not a terminal (see neuron_explainer/progress.py)."""


def is_log_line(line: str, levels: tuple[str, ...] = ("WARNING ", "ERROR ")) -> bool:
    """A logging line of one of `levels`, or a progress line: what may precede the CLI's one error line."""
    return line.startswith(levels) or PROGRESS_LINE.match(line) is not None


def rows(db: DbTarget, query: str, parameters: Sequence[object] = ()) -> list[tuple]:
    """Sorted result rows of a read-only query on a SQLite file or a PostgreSQL database."""
    return db_targets.rows(db, query, parameters)


def results_snapshot(db: DbTarget) -> dict[str, list[tuple]]:
    """Explanations and scores by neuron (texts and Pearson to 9 places): what an uninterrupted run must equal."""
    return {
        "explanations": rows(db, "select n.layer, n.neuron, e.method, e.config_key, e.text from explanations e "
                                 "join neurons n on n.id = e.neuron_id"),
        "scores": rows(db, "select n.layer, n.neuron, s.simulator, s.config_key, round(cast(s.pearson as numeric), 9), "
                           "s.scored_tokens from scores s join neurons n on n.id = s.neuron_id"),
    }


def integrity(db: DbTarget) -> list[tuple]:
    """`[("ok",)]` for a sound database (SQLite's integrity_check, PostgreSQL's amcheck)."""
    return db_targets.integrity(db)


class TimeoutCounter(logging.Handler):
    """Counts client-side timeouts the LLM backend logs (retried ones and those that used up the retries)."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.timeouts = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.timeouts += record.getMessage().count("no answer within")


def run_cli(argv: Sequence[str]) -> int:
    """`neuron_explainer.cli.main(argv)` in this process, returning the exit code, without leaving the logging
    handler it installs behind (it would write to a captured stream that a later test has closed)."""
    from neuron_explainer.cli import main

    root = logging.getLogger()
    before = list(root.handlers)
    try:
        return main(list(argv))
    except SystemExit as exc:  # argparse usage errors exit from inside main, as they do for the installed command
        return exc.code if isinstance(exc.code, int) else 1
    finally:
        for handler in root.handlers[:]:
            if handler not in before:
                root.removeHandler(handler)


def _cli_and_exit(argv: Sequence[str]) -> None:
    code = 1
    try:
        code = run_cli(argv)
    finally:
        os._exit(code)


def run_cli_in_new_process(argv: Sequence[str]) -> int:
    """`run_cli(argv)` in a forked process (a new pid, as a command run later is); returns its exit code."""
    import multiprocessing

    process = multiprocessing.get_context("fork").Process(target=_cli_and_exit, args=(list(argv),))
    process.start()
    process.join()
    return process.exitcode


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Make `path` (a file or a directory) unwritable for this process, whatever its privileges."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(mode & ~0o222)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    if shutil.which("chattr") is None:
        pytest.skip("running as root, where chmod does not stop writes, and chattr is not installed")
    made = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"running as root, where chmod does not stop writes, and chattr +i is refused here: "
                    f"{made.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@contextlib.contextmanager
def small_disk(mount_point: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `mount_point` (skips where mounting is not permitted)."""
    mount_point.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root and CAP_SYS_ADMIN): {made.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)
