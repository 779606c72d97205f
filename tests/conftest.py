"""Shared fixtures: tiny real models built once per session, isolated cache directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fake_openai_server import fake_openai  # noqa: F401 - registers the loopback OpenAI server fixture

# Set before any test imports transformers: huggingface_hub reads it once, at import, and session fixtures (the
# tiny models) run before the per-test fixture below; without it an unknown model id is looked up on the hub.
os.environ["HF_HUB_OFFLINE"] = "1"
from tiny_models import make_tiny_model


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # The converted bundled model is expensive to make; share it across tests but never with the user's cache.
    shared = os.environ.get("NEURON_EXPLAINER_TEST_CACHE") or str(tmp_path_factory.getbasetemp() / "cache")
    monkeypatch.setenv("NEURON_EXPLAINER_CACHE", shared)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory: pytest.TempPathFactory):
    """Returns a function family -> directory of a saved tiny random-init model (built once per family)."""
    built: dict[str, Path] = {}

    def build(family: str = "llama") -> Path:
        if family not in built:
            built[family] = make_tiny_model(tmp_path_factory.mktemp(f"tiny-{family}"), family)
        return built[family]

    return build


@pytest.fixture(scope="session")
def tiny_llama(tiny_model_factory) -> Path:
    """Directory of a tiny random-init Llama (2 layers x 48 MLP neurons)."""
    return tiny_model_factory("llama")
