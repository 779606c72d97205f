"""A night as cron sees it: progress as plain log lines (no carriage returns from our bars or the libraries'
while recording and loading the model), recordings registered by absolute path, and the `explain` command's
LLM-free n-gram explainer."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from neuron_explainer.progress import LineProgress, Snapshot

sys.path.insert(0, str(Path(__file__).parent))
from fault_harness import rows, run_cli, word_store  # noqa: E402


def test_a_night_logged_to_a_file_has_progress_lines_and_no_carriage_returns(tiny_llama: Path,
                                                                             tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The quick brown fox jumps over the lazy dog. Numbers 1, 2 and 10 appear. " * 60,
                      encoding="utf-8")
    log = tmp_path / "night.log"
    with log.open("w") as handle:
        finished = subprocess.run(
            [sys.executable, "-m", "neuron_explainer.cli", "run", "--model", str(tiny_llama), "--corpus",
             str(corpus), "--records-root", "records", "--db", f"sqlite:///{tmp_path / 'n.db'}",
             "--windows", "24", "--ctx", "16", "--top-k", "8", "--random", "8", "--neurons", "0:0-19",
             "--explainer", "ngram", "--simulator", "lexical", "--explain-windows", "4", "--score-top-windows", "2",
             "--score-random-windows", "2"], stdout=handle, stderr=subprocess.STDOUT, timeout=600, cwd=tmp_path)
    text = log.read_text(encoding="utf-8")
    assert finished.returncode == 0, text
    assert "\r" not in text and "\x1b[" not in text
    progress = [line for line in text.splitlines() if " neurons: " in line]
    assert progress and progress[-1].split(" neurons: ")[1].startswith("20/20 (100%)")
    assert all(", ETA " in line or "rate -" in line or "20/20" in line for line in progress)
    assert all("failed" in line and "$" in line and "elapsed" in line for line in progress)
    assert "run 1: completed" in text
    # The recording is registered by its absolute path: an export started from another folder finds it.
    [(path,)] = rows(tmp_path / "n.db", "select path from recordings")
    assert Path(path).is_absolute() and (Path(path) / "manifest.json").is_file()
    assert Path(path).parent == tmp_path / "records"


def test_line_progress_reports_every_tenth_and_beats_while_nothing_finishes() -> None:
    stream = io.StringIO()
    with LineProgress(stream, heartbeat_s=0.2) as progress:
        time.sleep(0.6)  # no unit finished yet: recording or loading a model
        for done in range(1, 21):
            progress.update(Snapshot(done=done, total=20, failed=done // 10, cost_usd=0.001 * done))
    lines = stream.getvalue().splitlines()
    assert "neurons: preparing (recording or loading models)" in lines[0]
    counted = [line.split(" neurons: ")[1] for line in lines if "/20 (" in line]
    assert [entry.split(" ")[0] for entry in counted] == [f"{done}/20" for done in range(2, 21, 2)]
    assert counted[-1].startswith("20/20 (100%)") and "2 failed" in counted[-1] and "$0.0200" in counted[-1]


def test_a_heartbeat_before_the_first_finished_unit_counts_the_units_begun() -> None:
    """Once the units start (the first can take minutes on a local model), the log stops saying "preparing"."""
    stream = io.StringIO()
    with LineProgress(stream, heartbeat_s=0.2) as progress:
        progress.update(Snapshot(done=0, total=6, failed=0, cost_usd=0.0))
        time.sleep(0.6)
    lines = stream.getvalue().splitlines()
    assert lines and all("neurons: 0/6 (0%), rate -" in line for line in lines)


def test_explain_with_the_ngram_explainer_needs_no_llm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = word_store(tmp_path, neurons=4, words=4)
    out = tmp_path / "ngram.jsonl"
    assert run_cli(["explain", "--records", str(store), "--explainer", "ngram", "--neurons", "0:*", "--out",
                    str(out), "--llm", "no-such-backend"]) == 0
    assert "wrote 4 results and 0 failures for 4 neurons" in capsys.readouterr().out
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert {record["method"] for record in records} == {"ngram"}
    assert all(record["text"].startswith('"') for record in records)
    assert run_cli(["score", "--records", str(store), "--explanations", str(out), "--out",
                    str(tmp_path / "scores.jsonl")]) == 0


def test_a_night_with_nothing_to_do_reports_what_the_database_holds(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    store = word_store(tmp_path, neurons=4, words=8)
    argv = ["run", "--records", str(store), "--db", f"sqlite:///{tmp_path / 'n.db'}", "--explainer", "ngram",
            "--simulator", "lexical"]
    assert run_cli(argv) == 0
    first = capsys.readouterr().out
    assert "nothing left to do" not in first
    score_line = next(line for line in first.splitlines() if line.strip().startswith("score"))
    assert run_cli(argv) == 0
    again = capsys.readouterr().out
    assert "0 processed, 4 already done" in again and "nothing left to do" in again
    stored_line = next(line for line in again.splitlines() if line.strip().startswith("stored"))
    # The first night scored every neuron once, so the stored summary is that night's summary.
    assert stored_line.split(None, 1)[1] == score_line.split(None, 1)[1]
    assert run_cli([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stored"]["positive"]["defined"] == 4
