"""Text sources: the offline `python-docs` corpus, local files, directories and globs, Hugging Face datasets.

Corpus SPEC grammar:
- `python-docs` — CPython's stdlib docstrings and pydoc topics (see python_docs.py).
- a file: `.jsonl` (one document per line, the string in field `text_field`), `.parquet` (column
  `text_field`; needs pyarrow), anything else is UTF-8 plain text and one whole file is one document.
- a directory: every `.txt`, `.md`, `.rst`, `.jsonl` and `.parquet` file under it (recursively, sorted, hidden
  files skipped).
- a glob (`data/*.txt`, `docs/**/*.md`): the matching files, sorted.
- `hf:NAME[:SPLIT]` — a Hugging Face dataset streamed with the `datasets` package (split defaults to train).

Local files are read and validated when the corpus is opened (UTF-8, not binary, JSON lines well formed), so a
bad file fails before any model work; the content hash covers every byte of every file, in order.
"""

from __future__ import annotations

import glob as globbing
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from neuron_explainer.core.errors import UserError
from neuron_explainer.corpus.python_docs import PYTHON_DOCS, python_docs_file

TEXT_SUFFIXES = frozenset({".txt", ".md", ".rst"})
DIRECTORY_SUFFIXES = TEXT_SUFFIXES | {".jsonl", ".parquet"}
HF_PREFIX = "hf:"
_BINARY_PROBE_BYTES = 8192


class SourceFormat(str, Enum):
    """How a file's bytes become documents."""

    TEXT = "text"
    JSONL = "jsonl"
    PARQUET = "parquet"


@dataclass(frozen=True)
class SourceFile:
    """One local file of a corpus."""

    path: Path
    """Where it is."""
    format: SourceFormat
    """How it is read."""


@dataclass(frozen=True)
class Corpus:
    """An opened, validated corpus: where its documents come from and a hash of their content."""

    spec: str
    """The spec as given (`python-docs`, a path, a glob, `hf:NAME[:SPLIT]`)."""
    content_hash: str
    """SHA-256 over every file's bytes in order; for `hf:` datasets, a hash of the spec (content is remote)."""
    files: tuple[SourceFile, ...]
    """Local files in reading order (empty for `hf:`)."""
    text_field: str = "text"
    """JSONL field / parquet column / dataset column holding the text."""
    hf_dataset: str | None = None
    """Dataset name for `hf:` specs."""
    hf_split: str = "train"
    """Dataset split for `hf:` specs."""

    def documents(self) -> Iterator[str]:
        """Every non-blank document, in a fixed order."""
        if self.hf_dataset is not None:
            yield from _hf_documents(self.hf_dataset, self.hf_split, self.text_field)
            return
        for source in self.files:
            for text in _file_documents(source, self.text_field):
                if text.strip():
                    yield text

    def describe(self) -> dict[str, object]:
        """What a manifest records about the corpus."""
        return {"spec": self.spec, "content_hash": self.content_hash, "text_field": self.text_field,
                "files": len(self.files)}


def open_corpus(spec: str, *, text_field: str = "text") -> Corpus:
    """Resolve and validate a corpus spec (see the module docstring); UserError for anything unusable."""
    spec = spec.strip()
    if not spec:
        raise UserError("empty corpus spec: use python-docs, a file, a directory, a glob or hf:NAME[:SPLIT]")
    if spec.startswith(HF_PREFIX):
        name, _, split = spec[len(HF_PREFIX):].partition(":")
        if not name:
            raise UserError(f"malformed corpus {spec!r}: expected hf:NAME[:SPLIT]")
        digest = hashlib.sha256(f"{spec}\0{text_field}".encode()).hexdigest()
        return Corpus(spec=spec, content_hash=digest, files=(), text_field=text_field, hf_dataset=name,
                      hf_split=split or "train")
    if spec == PYTHON_DOCS:
        files: list[SourceFile] = [SourceFile(python_docs_file(), SourceFormat.JSONL)]
        text_field = "text"
    else:
        files = _resolve_files(spec)
    digest = hashlib.sha256()
    has_text = False
    for source in files:
        digest.update(f"{source.path.name}\0".encode())
        has_text |= _validate(source, text_field, digest)
    if not has_text:
        raise UserError(f"corpus {spec!r} is empty: no file holds any text")
    return Corpus(spec=spec, content_hash=digest.hexdigest(), files=tuple(files), text_field=text_field)


def _resolve_files(spec: str) -> list[SourceFile]:
    if any(character in spec for character in "*?["):
        paths = [Path(match) for match in sorted(globbing.glob(spec, recursive=True)) if Path(match).is_file()]
        if not paths:
            raise UserError(f"corpus glob {spec!r} matches no file")
        return [SourceFile(path, _format_of(path)) for path in paths]
    path = Path(spec)
    if path.is_dir():
        paths = sorted(candidate for candidate in path.rglob("*")
                       if candidate.is_file() and candidate.suffix.lower() in DIRECTORY_SUFFIXES
                       and not any(part.startswith(".") for part in candidate.relative_to(path).parts))
        if not paths:
            raise UserError(f"corpus directory {spec!r} holds no .txt, .md, .rst, .jsonl or .parquet file")
        return [SourceFile(candidate, _format_of(candidate)) for candidate in paths]
    if path.is_file():
        return [SourceFile(path, _format_of(path))]
    if path.exists():
        raise UserError(f"corpus {spec!r} is not a regular file or directory")
    raise UserError(f"corpus not found: {spec!r} (use python-docs, a file, a directory, a glob or hf:NAME[:SPLIT])")


def _format_of(path: Path) -> SourceFormat:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return SourceFormat.JSONL
    if suffix == ".parquet":
        return SourceFormat.PARQUET
    return SourceFormat.TEXT


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read corpus file {path}: {exc.strerror or exc}") from None


def _decode(path: Path, data: bytes, *, offset: int = 0) -> str:
    if b"\0" in data[:_BINARY_PROBE_BYTES]:
        raise UserError(f"corpus file {path} looks binary (NUL bytes); pass UTF-8 text, .jsonl or .parquet")
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise UserError(f"corpus file {path} is not UTF-8 (invalid byte at offset {offset + exc.start}); "
                        "convert it with iconv first") from None


def _validate(source: SourceFile, text_field: str, digest: "hashlib._Hash") -> bool:
    """Fold the file's SHA-256 into `digest` and check it parses; True when it holds any non-blank text."""
    file_digest = hashlib.sha256()
    if source.format is SourceFormat.TEXT:
        data = _read_bytes(source.path)
        file_digest.update(data)
        has_text = bool(_decode(source.path, data).strip())
    elif source.format is SourceFormat.JSONL:
        has_text = False
        for document in _jsonl_documents(source.path, text_field, file_digest):
            has_text |= bool(document.strip())
    else:
        try:
            with open(source.path, "rb") as handle:
                while chunk := handle.read(1 << 20):
                    file_digest.update(chunk)
        except OSError as exc:
            raise UserError(f"cannot read corpus file {source.path}: {exc.strerror or exc}") from None
        has_text = any(text.strip() for text in _parquet_documents(source.path, text_field))
    digest.update(file_digest.digest())
    return has_text


def _file_documents(source: SourceFile, text_field: str) -> Iterator[str]:
    if source.format is SourceFormat.TEXT:
        yield _decode(source.path, _read_bytes(source.path))
    elif source.format is SourceFormat.JSONL:
        yield from _jsonl_documents(source.path, text_field)
    else:
        yield from _parquet_documents(source.path, text_field)


def _jsonl_documents(path: Path, text_field: str, digest: "hashlib._Hash | None" = None) -> Iterator[str]:
    """Stream a JSONL file line by line (memory stays flat in the file size)."""
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise UserError(f"cannot read corpus file {path}: {exc.strerror or exc}") from None
    with handle:
        offset = 0
        for line_number, raw in enumerate(handle, start=1):
            if digest is not None:
                digest.update(raw)
            line = _decode(path, raw, offset=offset)
            offset += len(raw)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}:{line_number}: not valid JSON ({exc.msg})") from None
            value = record.get(text_field) if isinstance(record, dict) else None
            if not isinstance(value, str):
                raise UserError(f"{path}:{line_number}: no string field {text_field!r} (set --text-field)")
            yield value


def _parquet_documents(path: Path, text_field: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as parquet
    except ImportError:
        raise UserError(f"reading {path} needs pyarrow: pip install 'neuron-explainer[parquet]'") from None
    try:
        table_file = parquet.ParquetFile(path)
    except Exception as exc:  # pyarrow raises its own ArrowInvalid / OSError family
        raise UserError(f"cannot read parquet file {path}: {exc}") from None
    if text_field not in table_file.schema_arrow.names:
        raise UserError(f"parquet file {path} has no column {text_field!r} (set --text-field)")
    for batch in table_file.iter_batches(columns=[text_field], batch_size=1024):
        for value in batch.column(0).to_pylist():
            if isinstance(value, str):
                yield value


def _hf_documents(name: str, split: str, text_field: str) -> Iterator[str]:
    try:
        import datasets
    except ImportError:
        raise UserError("hf: corpora need the datasets package: pip install 'neuron-explainer[datasets]'") from None
    try:
        stream = datasets.load_dataset(name, split=split, streaming=True)
    except Exception as exc:  # the hub client raises many types for a missing or unreachable dataset
        raise UserError(f"cannot open dataset {name!r} split {split!r}: {str(exc).splitlines()[0]}") from None
    for row in stream:
        value = row.get(text_field)
        if value is None:
            raise UserError(f"dataset {name!r} has no column {text_field!r} (set --text-field)")
        if isinstance(value, str) and value.strip():
            yield value
