"""Corpus sources, the offline python-docs corpus, validation errors, and the windowing policy."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

from neuron_explainer.core.errors import UserError
from neuron_explainer.corpus import PYTHON_DOCS, iter_windows, open_corpus, window_batches
from neuron_explainer.corpus.python_docs import clean_text, python_docs_file


@pytest.fixture(scope="module")
def tokenizer(tiny_model_factory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_factory("llama"))


def test_python_docs_is_built_once_from_source_without_importing_modules():
    before = set(sys.modules)
    corpus = open_corpus(PYTHON_DOCS)
    # `this` prints the Zen of Python when imported; walking the stdlib with ast must never run module code.
    assert not ({"this", "antigravity", "tkinter"} & (set(sys.modules) - before))
    path = python_docs_file()
    stamp = path.stat().st_mtime_ns
    again = open_corpus(PYTHON_DOCS)
    assert again.content_hash == corpus.content_hash and path.stat().st_mtime_ns == stamp
    documents = list(corpus.documents())
    assert len(documents) > 400 and sum(map(len, documents)) > 1_000_000
    sections = [section for document in documents for section in document.split("\n\n")]
    text = "\n".join(documents)
    assert "json.dumps\nSerialize ``obj`` to a JSON formatted ``str``." in text
    assert "conditional execution" in text  # the pydoc topic of `if`
    assert "\t" not in text and "\x0c" not in text and "\n\n\n" not in text
    assert len(documents) == len(set(documents)) and len(sections) > len(documents)


def test_clean_text():
    assert clean_text("  a\tb  \r\n\x0c\n\n\n\nc\x00  \n") == "a b\n\nc"
    assert clean_text("x\ty") == "x   y"


def test_text_files_directories_and_globs(tmp_path):
    (tmp_path / "b.txt").write_text("second file\n\nwith two paragraphs")
    (tmp_path / "a.md").write_text("first file")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.jsonl").write_text(json.dumps({"text": "from json"}) + "\n\n"
                                              + json.dumps({"text": "  "}) + "\n")
    (tmp_path / "skip.bin").write_bytes(b"\0\1\2")
    (tmp_path / ".hidden.txt").write_text("hidden")
    directory = open_corpus(str(tmp_path))
    assert [source.path.name for source in directory.files] == ["a.md", "b.txt", "c.jsonl"]
    # One whole text file is one document; blank JSONL records are dropped.
    assert list(directory.documents()) == ["first file", "second file\n\nwith two paragraphs", "from json"]
    assert list(open_corpus(str(tmp_path / "*.txt")).documents()) == ["second file\n\nwith two paragraphs"]
    assert list(open_corpus(str(tmp_path / "**" / "*.jsonl")).documents()) == ["from json"]
    assert list(open_corpus(str(tmp_path / "b.txt")).documents()) == ["second file\n\nwith two paragraphs"]


def test_content_hash_follows_content(tmp_path):
    (tmp_path / "a.txt").write_text("one")
    first = open_corpus(str(tmp_path)).content_hash
    assert open_corpus(str(tmp_path)).content_hash == first
    (tmp_path / "a.txt").write_text("two")
    assert open_corpus(str(tmp_path)).content_hash != first


def test_jsonl_text_field_and_errors(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"body": "hello"}) + "\n" + json.dumps({"body": "world"}) + "\n")
    assert list(open_corpus(str(path), text_field="body").documents()) == ["hello", "world"]
    with pytest.raises(UserError, match=r"data.jsonl:1: no string field 'text'"):
        open_corpus(str(path))
    path.write_text(json.dumps({"text": "fine"}) + "\n{not json\n")
    with pytest.raises(UserError, match=r"data.jsonl:2: not valid JSON"):
        open_corpus(str(path))


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"   \n\n  ", "is empty"),
    (b"caf\xe9 au lait", r"not UTF-8 \(invalid byte at offset 3\)"),
    (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "looks binary"),
])
def test_unusable_files_are_user_errors(tmp_path, content, message):
    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        open_corpus(str(path))


def test_non_utf8_jsonl_reports_the_file_offset(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(json.dumps({"text": "ok"}).encode() + b"\n" + b'{"text": "caf\xe9"}\n')
    with pytest.raises(UserError, match=r"offset 28"):
        open_corpus(str(path))


def test_missing_and_empty_sources_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        open_corpus(str(tmp_path / "missing.txt"))
    with pytest.raises(UserError, match="matches no file"):
        open_corpus(str(tmp_path / "*.txt"))
    with pytest.raises(UserError, match="holds no .txt"):
        open_corpus(str(tmp_path))
    with pytest.raises(UserError, match="empty corpus spec"):
        open_corpus("  ")


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="needs Linux procfs")
def test_unreadable_file_is_a_user_error():
    # /proc/self/mem exists and is a regular file, but reading it from offset 0 fails, even for root.
    with pytest.raises(UserError, match="cannot read corpus file"):
        open_corpus("/proc/self/mem")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files regardless of permissions")
def test_permission_denied_is_a_user_error(tmp_path):
    path = tmp_path / "secret.txt"
    path.write_text("text")
    path.chmod(0)
    with pytest.raises(UserError, match="cannot read corpus file"):
        open_corpus(str(path))


def test_parquet_needs_pyarrow_or_reads_the_column(tmp_path):
    path = tmp_path / "data.parquet"
    if importlib.util.find_spec("pyarrow") is None:
        path.write_bytes(b"PAR1 not really")
        with pytest.raises(UserError, match="needs pyarrow"):
            open_corpus(str(path))
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"content": ["alpha", None, "beta"]}), path)
    assert list(open_corpus(str(path), text_field="content").documents()) == ["alpha", "beta"]
    with pytest.raises(UserError, match="no column 'text'"):
        open_corpus(str(path))


def test_hf_spec_is_parsed_without_network():
    corpus = open_corpus("hf:someone/dataset:validation", text_field="content")
    assert (corpus.hf_dataset, corpus.hf_split, corpus.files) == ("someone/dataset", "validation", ())
    assert open_corpus("hf:name").hf_split == "train"
    assert corpus.content_hash != open_corpus("hf:someone/dataset:train", text_field="content").content_hash
    with pytest.raises(UserError, match="hf:NAME"):
        open_corpus("hf:")
    if importlib.util.find_spec("datasets") is None:
        with pytest.raises(UserError, match="datasets package"):
            next(corpus.documents())


def test_windows_never_straddle_documents(tokenizer):
    documents = ["one two three four five six seven", "dog.", "eight nine ten eleven twelve thirteen"]
    encoded = [tokenizer(text, add_special_tokens=False).input_ids for text in documents]
    assert len(encoded[1]) < 4
    windows = list(iter_windows(documents, tokenizer, length=4))
    expected = [ids[start:start + 4] for ids in encoded for start in range(0, len(ids) - len(ids) % 4, 4)]
    assert windows == expected and all(len(window) == 4 for window in windows)
    # Document 2 is shorter than a window and contributes nothing; no window mixes documents 1 and 3.
    assert len(windows) == len(encoded[0]) // 4 + len(encoded[2]) // 4


def test_packed_windows_straddle_documents_with_eos(tokenizer):
    documents = ["one two three", "alpha beta", "gamma delta epsilon"]
    stream = []
    for text in documents:
        stream += tokenizer(text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    windows = list(iter_windows(documents, tokenizer, length=5, pack=True))
    assert windows == [stream[start:start + 5] for start in range(0, len(stream) - len(stream) % 5, 5)]
    assert tokenizer.eos_token_id in [token for window in windows for token in window]


def test_window_batches_cap_and_shape(tokenizer):
    documents = ["The quick brown fox jumps over the lazy dog. " * 20] * 3
    batches = list(window_batches(documents, tokenizer, length=8, max_windows=23, batch_size=10))
    assert [batch.shape for batch in batches] == [(10, 8), (10, 8), (3, 8)]
    assert all(batch.dtype.name == "int32" for batch in batches)
