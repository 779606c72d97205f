"""Prompt templates and few-shot examples live as files in `prompts/`; results store a hash of the files used."""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from neuron_explainer.core.errors import UserError
from neuron_explainer.core.paths import PROMPTS_DIR

HASH_LENGTH = 16


@dataclass(frozen=True)
class PromptFiles:
    """The contents of a set of prompt files and their joint content hash."""

    texts: Mapping[str, str]
    """File contents keyed by path relative to the prompts directory (POSIX separators)."""
    hash: str
    """Short hex sha256 over every (name, content) pair, in name order."""

    def text(self, name: str) -> str:
        """The content of one file of the set."""
        return self.texts[name]

    def render(self, name: str, **values: str) -> str:
        """Substitute `$placeholders` in a template file; every placeholder must be given."""
        try:
            return string.Template(self.texts[name]).substitute(values)
        except KeyError as exc:
            raise ValueError(f"prompt file {name} needs a value for {exc}") from None

    def json(self, name: str) -> Any:
        """Parse a JSON file of the set (few-shot examples)."""
        return json.loads(self.texts[name])


def content_hash(texts: Mapping[str, str]) -> str:
    """Short sha256 of named contents; the name is hashed too so moving text between files changes the hash."""
    digest = hashlib.sha256()
    for name in sorted(texts):
        digest.update(name.encode())
        digest.update(b"\0")
        digest.update(texts[name].encode())
        digest.update(b"\0")
    return digest.hexdigest()[:HASH_LENGTH]


def load_prompt_files(names: Sequence[str], *, root: Path | None = None) -> PromptFiles:
    """Read prompt files (paths relative to `root`, default the project's prompts/) and hash them together."""
    return _load(tuple(names), str(root or PROMPTS_DIR))


@lru_cache(maxsize=64)
def _load(names: tuple[str, ...], root: str) -> PromptFiles:
    texts: dict[str, str] = {}
    for name in names:
        path = Path(root) / name
        try:
            texts[name] = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UserError(f"prompt file {path} is missing; reinstall or restore the prompts/ directory") from None
    return PromptFiles(texts=texts, hash=content_hash(texts))
