"""Config keys: stable hashes over everything that determines a result, so identical work is done once.

The pipeline computes one key per explanation configuration and one per scoring configuration; the database's
unique constraints (neuron, explanation key) and (explanation, score key) turn a repeated or resumed run into
no-ops. Change any input (model, record manifest, method, backend, prompt hash, parameters) and the key changes,
so only the affected stage runs again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from enum import Enum
from pathlib import PurePath
from typing import Any

KEY_FORMAT = 1
"""Bumped if the canonical form below ever changes (it is hashed into every key)."""


def _canonical(value: Any) -> Any:
    if isinstance(value, Enum):
        return _canonical(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _canonical(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(key): _canonical(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(item) for item in value]
    if isinstance(value, (set, frozenset)):
        return sorted(_canonical(item) for item in value)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"cannot put a {type(value).__name__} into a config key: use JSON-like values")


def canonical_json(value: Any) -> str:
    """Deterministic JSON of `value`: sorted keys, no whitespace, enums by value, tuples as lists."""
    return json.dumps(_canonical(value), sort_keys=True, separators=(",", ":"), allow_nan=False)


def config_key(kind: str, **parts: Any) -> str:
    """Hex SHA-256 over `kind` and the canonical JSON of `parts`."""
    payload = canonical_json({"format": KEY_FORMAT, "kind": kind, "parts": parts})
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def explanation_config_key(*, subject_model: str, model_fingerprint: str, manifest_hash: str, method: str,
                           polarity: str, backend: str, model: str, prompt_hash: str, split_seed: int,
                           parameters: Mapping[str, Any]) -> str:
    """The key under which a neuron's explanation is stored; equal keys mean the same explanation work."""
    return config_key("explanation", subject_model=subject_model, model_fingerprint=model_fingerprint,
                      manifest_hash=manifest_hash, method=method, polarity=polarity, backend=backend,
                      model=model, prompt_hash=prompt_hash, split_seed=split_seed, parameters=parameters)


def score_config_key(*, manifest_hash: str, simulator: str, backend: str, model: str, prompt_hash: str,
                     split_seed: int, parameters: Mapping[str, Any]) -> str:
    """The key under which an explanation's score is stored (the explanation itself is the other half)."""
    return config_key("score", manifest_hash=manifest_hash, simulator=simulator, backend=backend, model=model,
                      prompt_hash=prompt_hash, split_seed=split_seed, parameters=parameters)
