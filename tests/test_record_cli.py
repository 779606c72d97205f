"""The `record` and `show-record` commands: summaries, highlighting, one-line errors, and a killed recording."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from neuron_explainer.activations import RecordStore
from neuron_explainer.cli import main
from neuron_explainer.core.errors import UserError


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    from tiny_models import SAMPLE_TEXT

    directory = tmp_path_factory.mktemp("cli-corpus")
    for index in range(6):
        (directory / f"doc{index}.txt").write_text(SAMPLE_TEXT * (index + 2))
    return directory


def _record_args(model: Path, corpus: Path, out: Path, *extra: str) -> list[str]:
    return ["record", "--model", str(model), "--corpus", str(corpus), "--out", str(out), "--ctx", "16",
            "--windows", "40", "--top-k", "5", "--random", "4", "--batch-size", "8", *extra]


def test_record_json_summary_then_show_record(tmp_path, capsys, tiny_llama, corpus_dir):
    out = tmp_path / "records"
    assert main(_record_args(tiny_llama, corpus_dir, out, "--layers", "0-1", "--polarity", "both", "--json")) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["windows"] == 40 and summary["layers"] == [0, 1] and summary["neurons"] == 96
    assert summary["polarity"] == "both" and not summary["reused"] and summary["path"] == str(out)
    assert main(_record_args(tiny_llama, corpus_dir, out, "--layers", "0,1", "--polarity", "both")) == 0
    assert capsys.readouterr().out.startswith(f"reused the complete recording at {out}")

    assert main(["show-record", "1:3", "--records", str(out), "--windows", "2"]) == 0
    shown = capsys.readouterr().out
    record = RecordStore.open(out).load_neuron(1, 3)
    lines = shown.splitlines()
    assert lines[0].startswith("neuron 1:3: max ") and lines[1] == "top windows (2 of 5):"
    assert lines[2].startswith(f"#1  window {record.top_windows[0].window_id}  max ")
    assert "[" in lines[3] and "\x1b[" not in shown  # stdout is not a terminal: brackets, no colour
    assert main(["show-record", "1:3", "--records", str(out), "--kind", "bottom", "--color", "always"]) == 0
    assert "\x1b[48;5;" in capsys.readouterr().out
    assert main(["show-record", "0:0", "--records", str(out), "--kind", "random", "--json"]) == 0
    shown_json = json.loads(capsys.readouterr().out)
    assert [window["window_id"] for window in shown_json["windows"]] == \
        RecordStore.open(out).random_window_ids.tolist()


def test_human_summary_and_bottom_windows_missing(tmp_path, capsys, tiny_llama, corpus_dir):
    out = tmp_path / "records"
    # The tiny model is a gated MLP, so the default (auto) would record both sides: ask for positive only.
    assert main(_record_args(tiny_llama, corpus_dir, out, "--layers", "1", "--polarity", "positive")) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("recorded 40 windows x 16 tokens") and "layers 1 x 48 = 48 neurons" in printed[0]
    assert printed[1].startswith(f"store: {out} (recording ")
    assert main(["show-record", "1:0", "--records", str(out), "--kind", "bottom"]) == 0
    assert "no bottom windows recorded (record with --polarity both)" in capsys.readouterr().out


def _assert_one_line_error(capsys, argv: list[str], message: str) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("neuron-explainer: error: ") and message in lines[0], lines
    assert "Traceback" not in captured.err


def _leftovers(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


@pytest.mark.parametrize("case", ["bad model", "layer out of range", "empty corpus", "unreadable corpus",
                                  "non-UTF-8 file", "binary file", "missing corpus"])
def test_user_errors_are_one_line_exit_2_and_leave_no_store(tmp_path, capsys, tiny_llama, corpus_dir, case):
    work = tmp_path / "work"
    work.mkdir()
    out = work / "records"
    model, corpus, layers = tiny_llama, corpus_dir, "0"
    if case == "bad model":
        model, message = tmp_path / "no-such-model", "cannot load model"
    elif case == "layer out of range":
        layers, message = "0-7", "layer 0-7 out of range: the model has layers 0-1"
    elif case == "empty corpus":
        corpus, message = work / "empty.txt", "is empty"
        corpus.write_text("\n")
    elif case == "unreadable corpus":
        if not Path("/proc/self/mem").exists():
            pytest.skip("needs Linux procfs")
        corpus, message = Path("/proc/self/mem"), "cannot read corpus file"
    elif case == "non-UTF-8 file":
        corpus, message = work / "latin1.txt", "is not UTF-8"
        corpus.write_bytes("déjà vu".encode("latin-1"))
    elif case == "binary file":
        corpus, message = work / "image.txt", "looks binary"
        corpus.write_bytes(b"\x89PNG\r\n\x1a\n\0\0")
    else:
        corpus, message = work / "nothing.txt", "corpus not found"
    before = _leftovers(work)
    _assert_one_line_error(capsys, _record_args(model, corpus, out, "--layers", layers), message)
    assert _leftovers(work) == before


def test_bad_flag_values_are_user_errors(tmp_path, capsys, tiny_llama, corpus_dir):
    _assert_one_line_error(capsys, _record_args(tiny_llama, corpus_dir, tmp_path / "r", "--top-k", "0"),
                           "--top-k must be at least 1")
    _assert_one_line_error(capsys, ["show-record", "1:x", "--records", str(tmp_path)], "malformed neuron")
    _assert_one_line_error(capsys, ["show-record", "0:0", "--records", str(tmp_path / "none")], "no record store")


def test_killed_recording_is_never_loadable_and_rerun_starts_clean(tmp_path, tiny_llama):
    from tiny_models import SAMPLE_TEXT

    corpus = tmp_path / "big.txt"
    corpus.write_text(SAMPLE_TEXT * 200)
    out = tmp_path / "records"
    # One window per forward pass keeps the recording running for seconds after its first batch lands.
    arguments = ["record", "--model", str(tiny_llama), "--corpus", str(corpus), "--out", str(out), "--layers", "0-1",
                 "--ctx", "16", "--batch-size", "1"]
    command = [sys.executable, "-m", "neuron_explainer.cli", *arguments, "--windows", "1000000"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    staging: list[Path] = []
    try:
        while time.monotonic() < deadline:
            staging = [path for path in tmp_path.glob(".records.partial-*")
                       if (path / "tokens.partial.bin").is_file() and (path / "tokens.partial.bin").stat().st_size]
            if staging or process.poll() is not None:
                break
            time.sleep(0.02)
        assert staging and process.poll() is None, "the recording never got under way"
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not out.exists()
    with pytest.raises(UserError, match="incomplete"):
        RecordStore.open(staging[0])
    assert main([*arguments, "--windows", "30"]) == 0
    assert RecordStore.open(out).num_windows == 30
    assert sorted(path.name for path in tmp_path.iterdir()) == ["big.txt", "records"]
