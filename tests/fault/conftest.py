"""Fixtures of the fault suite (the machinery itself is in tests/fault_harness.py)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))
from fault_harness import TimeoutCounter, word_store  # noqa: E402


@pytest.fixture(scope="session")
def word_store_200(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 planted word neurons (40 words x 5 window subsets) over 400 windows of 24 tokens."""
    return word_store(tmp_path_factory.mktemp("words200"), neurons=200)


@pytest.fixture
def timeout_counter() -> Iterator[TimeoutCounter]:
    """A TimeoutCounter attached to the `neuron_explainer` logger for one test."""
    counter = TimeoutCounter()
    logger = logging.getLogger("neuron_explainer")
    previous = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(counter)
    try:
        yield counter
    finally:
        logger.removeHandler(counter)
        logger.setLevel(previous)
