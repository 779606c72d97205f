"""Recording in shards (activations/shards.py) writes exactly the store one streaming pass writes for the same
windows: top-k and bottom-k lists, the random sample, the quantile sample and the float64 statistics, bit for bit;
shards recorded one after the other here, and shards recorded by Ray tasks on a real local cluster."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from neuron_explainer.activations import RecordConfig, RecordPolarity, record
from neuron_explainer.activations.shards import ray_shard_runner, record_sharded
from neuron_explainer.activations.store import _RUN_ONLY_FIELDS

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import SAMPLE_TEXT  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # A Ray task with one CPU runs torch in one thread; float32 matrix products may round differently with another
    # thread count, so the single pass runs in one thread too (the merge itself is exact whatever the threads).
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("shard-corpus")
    lines = SAMPLE_TEXT.splitlines()
    for index in range(12):
        (directory / f"doc{index:02d}.txt").write_text("\n".join((lines[index:] + lines[:index]) * 3))
    return directory


@pytest.fixture(scope="module")
def config(corpus: Path, tiny_llama: Path) -> RecordConfig:
    # 50 windows in batches of 8: seven batches, the last one short; a random sample and a quantile sample small
    # enough that later shards replace earlier shards' picks.
    return RecordConfig(model=str(tiny_llama), corpus=str(corpus), layers="0-1", window_length=16, windows=50,
                        top_k=6, random_k=5, batch_size=8, polarity=RecordPolarity.BOTH, store_dtype="float32",
                        dtype="float32", device="cpu", quantile_sample_tokens=64)


@pytest.fixture(scope="module")
def single_pass(config: RecordConfig, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return record(config, tmp_path_factory.mktemp("single") / "records", progress=False).path


def _assert_same_store(merged: Path, single: Path) -> None:
    files = sorted(path.relative_to(single) for path in single.rglob("*") if path.is_file())
    assert files == sorted(path.relative_to(merged) for path in merged.rglob("*") if path.is_file())
    assert any(path.name == "top_activations.npy" for path in files)
    for relative in files:
        if relative.name == "manifest.json":
            mine, theirs = (json.loads((root / relative).read_text()) for root in (merged, single))
            for field in _RUN_ONLY_FIELDS - {"recording_id", "activation_dtypes"}:
                mine.pop(field, None), theirs.pop(field, None)
            assert mine == theirs
        elif relative.suffix == ".npy":
            np.testing.assert_array_equal(np.load(merged / relative), np.load(single / relative), err_msg=str(relative))
        else:
            assert (merged / relative).read_bytes() == (single / relative).read_bytes(), relative


@pytest.mark.parametrize("shards", [1, 3, 7])
def test_merged_shards_equal_the_single_pass(config: RecordConfig, single_pass: Path, tmp_path: Path,
                                             shards: int) -> None:
    summary = record_sharded(config, tmp_path / "records", shards=shards)
    assert not summary.reused
    _assert_same_store(summary.path, single_pass)


def test_shards_recorded_by_ray_tasks_equal_the_single_pass(config: RecordConfig, single_pass: Path, tmp_path: Path,
                                                            ray_cluster: None) -> None:
    summary = record_sharded(config, tmp_path / "records", shards=2, run=ray_shard_runner(config))
    _assert_same_store(summary.path, single_pass)


@pytest.mark.slow
def test_a_ray_night_records_its_store_in_shards(config: RecordConfig, single_pass: Path, tmp_path: Path,
                                                 ray_cluster: None) -> None:
    from neuron_explainer.pipeline import RunConfig, run_pipeline

    run = RunConfig(model=config.model, corpus=config.corpus, layers="0-1", ctx=16, windows=50, top_k=6, random=5,
                    polarity="both", dtype="float32", device="cpu", records_root=str(tmp_path / "records"),
                    db=str(tmp_path / "night.db"), explainers=("ngram",), simulator="lexical", neurons="0:0-3",
                    ray="auto", ray_workers=2)
    summary = run_pipeline(run, progress=False)
    assert summary.status == "completed" and summary.done == 4
    # The run's own recording request (its batch size and quantile sample) recorded in one pass, for comparison.
    from neuron_explainer.pipeline.run import record_config

    request = record_config(run)
    reference = record(request, tmp_path / "single", progress=False).path
    _assert_same_store(Path(summary.records), reference)
