"""The offline default corpus `python-docs`: CPython's standard-library docstrings plus `pydoc_data.topics`.

Docstrings are read by parsing each stdlib source file with `ast` (nothing is imported, so no module code runs).
One document per module: its docstring and those of its classes and functions, each under its qualified name.
Each pydoc topic is one more document. Text is cleaned (dedented, tabs expanded, trailing space and control
characters removed, blank runs collapsed) and exact duplicate docstrings are kept once. Documents are shuffled
with a fixed seed, so any prefix of the corpus spans many modules. The result depends only on the Python
version's stdlib; it is written once to the cache as JSONL and hashed.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import random
import re
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

from neuron_explainer.core.paths import cache_dir

logger = logging.getLogger(__name__)

PYTHON_DOCS = "python-docs"
# Bump when extraction or cleaning changes, so cached copies are rebuilt.
EXTRACTION_VERSION = 1
SHUFFLE_SEED = 0
MIN_DOCSTRING_CHARS = 20
_SKIPPED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_BLANK_RUNS = re.compile(r"\n{3,}")


def python_docs_file() -> Path:
    """The cached JSONL of the corpus for this Python version, built on first use (a few seconds)."""
    version = ".".join(str(part) for part in sys.version_info[:3])
    target = cache_dir() / "corpus" / f"python-docs-py{version}-v{EXTRACTION_VERSION}.jsonl"
    if target.is_file():
        return target
    documents = build_python_docs()
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=".python-docs-", dir=target.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            for text in documents:
                out.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
        os.replace(staging, target)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    logger.info("built the python-docs corpus: %d documents at %s", len(documents), target)
    return target


def build_python_docs() -> list[str]:
    """Every cleaned, deduplicated stdlib module document and pydoc topic, in a fixed shuffled order."""
    seen: set[str] = set()
    documents: list[str] = []
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(_stdlib_sources(stdlib)):
        module = _module_name(path.relative_to(stdlib))
        sections = []
        for qualname, docstring in _docstrings(path, module):
            text = clean_text(docstring)
            if len(text) < MIN_DOCSTRING_CHARS or text in seen:
                continue
            seen.add(text)
            sections.append(f"{qualname}\n{text}")
        if sections:
            documents.append("\n\n".join(sections))
    from pydoc_data.topics import topics  # a plain dict literal shipped with CPython

    for name in sorted(topics):
        text = clean_text(topics[name])
        if len(text) >= MIN_DOCSTRING_CHARS and text not in seen:
            seen.add(text)
            documents.append(text)
    random.Random(SHUFFLE_SEED).shuffle(documents)
    return documents


def clean_text(text: str) -> str:
    """Dedented text with tabs expanded, control characters and trailing spaces removed, blank runs collapsed."""
    text = text.expandtabs(4).replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    lines = [line.rstrip() for line in text.split("\n")]
    return _BLANK_RUNS.sub("\n\n", "\n".join(lines)).strip()


def _stdlib_sources(stdlib: Path) -> Iterator[Path]:
    for directory, subdirectories, files in os.walk(stdlib):
        subdirectories[:] = [name for name in subdirectories if name not in _SKIPPED_DIRS]
        for name in files:
            if name.endswith(".py") and not name.startswith("test_"):
                path = Path(directory) / name
                if path.relative_to(stdlib).as_posix() != "pydoc_data/topics.py":
                    yield path


def _module_name(relative: Path) -> str:
    parts = list(relative.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _docstrings(path: Path, module: str) -> Iterator[tuple[str, str]]:
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, OSError) as exc:
        # A few stdlib files are deliberately broken (grammar fixtures); skipping them is harmless.
        logger.debug("skipping %s: %s", path, exc)
        return
    module_doc = ast.get_docstring(tree, clean=True)
    if module_doc:
        yield module, module_doc
    yield from _body_docstrings(tree.body, module)


def _body_docstrings(body: list[ast.stmt], prefix: str) -> Iterator[tuple[str, str]]:
    for statement in body:
        if isinstance(statement, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            qualname = f"{prefix}.{statement.name}"
            docstring = ast.get_docstring(statement, clean=True)
            if docstring:
                yield qualname, docstring
            yield from _body_docstrings(statement.body, qualname)
        else:
            for field in ("body", "orelse", "finalbody"):
                nested = getattr(statement, field, None)
                if isinstance(nested, list):
                    yield from _body_docstrings(nested, prefix)
            for handler in getattr(statement, "handlers", []) or []:
                yield from _body_docstrings(handler.body, prefix)
