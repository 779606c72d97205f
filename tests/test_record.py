"""The streaming recorder and the record store: exactness against brute force, sampling, round trips, atomicity."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from neuron_explainer.activations import (
    Manifest,
    RecordConfig,
    RecordPolarity,
    RecordStore,
    StoreWriter,
    load_neuron,
    manifest_matches,
    record,
    record_activations,
)
from neuron_explainer.activations.accumulate import QUANTILE_PROBABILITIES, RecordingAccumulator, Reservoir
from neuron_explainer.activations.store import MANIFEST_FILE, remove_stale_staging
from neuron_explainer.core.errors import UserError

VOCAB = [f"t{index}" for index in range(50)]


def _synthetic(windows: int = 70, length: int = 6, neurons: int = 5, layers: tuple[int, ...] = (1, 3),
               seed: int = 0) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    rng = np.random.default_rng(seed)
    token_ids = rng.integers(0, len(VOCAB), size=(windows, length)).astype(np.int32)
    activations = {layer: rng.normal(size=(windows, length, neurons)).astype(np.float32) for layer in layers}
    # Plant exact ties between windows so the tie rule (earlier window first) is exercised.
    for array in activations.values() if windows > 65 else ():
        array[10, 2, 0] = array[40, 5, 0] = array[65, 0, 0] = 9.0
        array[12, 1, 1] = array[13, 3, 1] = -9.0
    return token_ids, activations


def _brute_top(values: np.ndarray, k: int, *, largest: bool) -> np.ndarray:
    """Window ids per neuron by window max (or min) with earlier windows first among ties."""
    extreme = values.max(axis=1) if largest else values.min(axis=1)
    window_ids = np.arange(values.shape[0])
    return np.array([np.lexsort((window_ids, -extreme[:, neuron] if largest else extreme[:, neuron]))[:k]
                     for neuron in range(values.shape[2])])


def _write(tmp_path: Path, name: str = "records", **kwargs) -> RecordStore:
    token_ids, activations = kwargs.pop("data", None) or _synthetic()
    path = record_activations(tmp_path / name, token_ids=token_ids, vocab=VOCAB, activations=activations, **kwargs)
    return RecordStore.open(path)


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_streaming_top_k_equals_brute_force(tmp_path, batch_size):
    token_ids, activations = _synthetic()
    store = _write(tmp_path, data=(token_ids, activations), top_k=8, random_k=5, batch_size=batch_size,
                   polarity=RecordPolarity.BOTH)
    for layer, values in activations.items():
        expected_top = _brute_top(values, 8, largest=True)
        expected_bottom = _brute_top(values, 8, largest=False)
        for neuron in range(values.shape[2]):
            record_ = store.load_neuron(layer, neuron)
            assert [window.window_id for window in record_.top_windows] == expected_top[neuron].tolist()
            assert [window.window_id for window in record_.bottom_windows] == expected_bottom[neuron].tolist()
            for window in record_.top_windows + record_.bottom_windows:
                np.testing.assert_array_equal(window.activations, values[window.window_id, :, neuron])
                assert window.tokens == tuple(VOCAB[index] for index in token_ids[window.window_id])
    # The planted ties resolve to the earliest windows.
    assert [window.window_id for window in store.load_neuron(1, 0).top_windows[:3]] == [10, 40, 65]
    assert [window.window_id for window in store.load_neuron(1, 1).bottom_windows[:2]] == [12, 13]


def test_positive_polarity_keeps_no_bottom_windows(tmp_path):
    store = _write(tmp_path, top_k=4)
    assert store.load_neuron(3, 2).bottom_windows == ()
    assert store.manifest.polarity == "positive"


def test_random_sample_is_shared_seeded_and_independent_of_batching(tmp_path):
    token_ids, activations = _synthetic()
    first = _write(tmp_path, "a", data=(token_ids, activations), random_k=9, seed=3, batch_size=4)
    same = _write(tmp_path, "b", data=(token_ids, activations), random_k=9, seed=3, batch_size=64)
    other = _write(tmp_path, "c", data=(token_ids, activations), random_k=9, seed=4, batch_size=4)
    ids = first.random_window_ids.tolist()
    assert len(ids) == 9 and len(set(ids)) == 9 and ids == sorted(ids)
    assert ids == same.random_window_ids.tolist()
    assert ids != other.random_window_ids.tolist()
    for layer, values in activations.items():
        for neuron in range(values.shape[2]):
            windows = first.load_neuron(layer, neuron).random_windows
            assert [window.window_id for window in windows] == ids
            for window in windows:
                np.testing.assert_array_equal(window.activations, values[window.window_id, :, neuron])


def test_reservoir_is_uniform():
    counts = np.zeros(60, dtype=int)
    for seed in range(300):
        reservoir = Reservoir(6, np.random.default_rng(seed))
        for batch in (5, 13, 2, 40):
            reservoir.offer(batch)
        assert len(set(reservoir.items.tolist())) == 6
        counts[reservoir.items] += 1
    # Each of 60 items is expected 30 times; a biased sampler (e.g. favouring early items) falls outside.
    assert counts.min() > 12 and counts.max() < 52
    assert abs(counts[:30].sum() - counts[30:].sum()) < 150


def test_random_sample_smaller_corpus_than_sample(tmp_path):
    store = _write(tmp_path, data=_synthetic(windows=3), random_k=10, top_k=5)
    assert store.random_window_ids.tolist() == [0, 1, 2]
    assert len(store.load_neuron(1, 0).top_windows) == 3


def test_stats_and_quantiles_match_numpy(tmp_path):
    token_ids, activations = _synthetic(windows=30, length=5)
    store = _write(tmp_path, data=(token_ids, activations), quantile_sample_tokens=10_000)
    for layer, values in activations.items():
        for neuron in range(values.shape[2]):
            flat = values[:, :, neuron].ravel().astype(np.float64)
            stats = store.neuron_stats(layer, neuron)
            assert stats.count == flat.size
            assert stats.mean == pytest.approx(flat.mean(), abs=1e-6)
            assert stats.std == pytest.approx(flat.std(), rel=1e-5)
            assert (stats.min, stats.max) == (flat.min(), flat.max())
            assert stats.fraction_positive == pytest.approx((flat > 0).mean())
            # The quantile reservoir holds every token here, so the sketch is exact.
            assert [p for p, _ in stats.quantiles] == list(QUANTILE_PROBABILITIES)
            np.testing.assert_allclose([v for _, v in stats.quantiles], np.quantile(flat, QUANTILE_PROBABILITIES),
                                       rtol=1e-5, atol=1e-6)


def test_quantile_sketch_from_a_sample_is_close(tmp_path):
    rng = np.random.default_rng(1)
    values = rng.exponential(size=(400, 16, 2)).astype(np.float32)
    token_ids = np.zeros((400, 16), dtype=np.int32)
    store = _write(tmp_path, data=(token_ids, {0: values}), quantile_sample_tokens=1024)
    quantiles = dict(store.neuron_stats(0, 1).quantiles)
    for probability in (0.1, 0.5, 0.9):
        exact = np.quantile(values[:, :, 1], probability)
        assert abs(np.mean(values[:, :, 1] <= quantiles[probability]) - probability) < 0.05, exact


def test_float16_storage_and_overflow_fallback(tmp_path):
    token_ids, activations = _synthetic()
    small = _write(tmp_path, "small", data=(token_ids, activations), store_dtype="float16")
    assert small.manifest.activation_dtypes == {"1": "float16", "3": "float16"}
    record_ = small.load_neuron(1, 2)
    for window in record_.top_windows:
        np.testing.assert_allclose(window.activations, activations[1][window.window_id, :, 2], rtol=1e-3, atol=1e-3)
    activations[3][5, 1, 4] = 1e6
    big = _write(tmp_path, "big", data=(token_ids, activations), store_dtype="float16")
    assert big.manifest.activation_dtypes == {"1": "float16", "3": "float32"}
    assert big.load_neuron(3, 4).top_windows[0].max_activation == 1e6


def test_store_round_trip_manifest_and_memory_maps(tmp_path):
    store = _write(tmp_path, extra={"planted": {"rule": "digits"}}, model_id="synthetic", corpus_spec="unit")
    manifest = store.manifest
    assert manifest.complete and manifest.format_version == 1
    assert manifest.layers == (1, 3) and manifest.neurons_per_layer == 5 and manifest.num_windows == 70
    assert manifest.window_length == 6 and manifest.extra == {"planted": {"rule": "digits"}}
    assert len(manifest.recording_id) == 16 and manifest.created_at
    assert store.neurons()[0].layer == 1 and len(store.neurons()) == 10
    assert isinstance(store.token_ids, np.memmap)
    reopened = load_neuron(store.path, 3, 4)
    assert reopened == store.load_neuron(3, 4)
    with pytest.raises(UserError, match="layer 2 was not recorded"):
        store.load_neuron(2, 0)
    with pytest.raises(UserError, match="neuron 5 out of range"):
        store.load_neuron(1, 5)


def test_load_neuron_reads_through_memory_maps(tmp_path):
    store = _write(tmp_path)
    store.load_neuron(1, 0)
    for array in store._arrays.values():
        assert isinstance(array, np.memmap)


def test_identity_ignores_run_details_but_not_content(tmp_path):
    first = _write(tmp_path, "a").manifest
    again = _write(tmp_path, "b", batch_size=5).manifest
    reseeded = _write(tmp_path, "c", seed=1).manifest
    assert first.recording_id == again.recording_id
    assert first.recording_id != reseeded.recording_id


def _pending_writer(tmp_path: Path) -> StoreWriter:
    writer = StoreWriter(tmp_path / "records")
    writer.append_windows(np.zeros((3, 4), dtype=np.int32))
    writer.write_pending_manifest(Manifest(model_id="m", model_fingerprint="f", hook_point="h", corpus_spec="c",
                                           corpus_hash="x", window_length=4, num_windows=0, seed=0, layers=(0,),
                                           neurons_per_layer=1, top_k=1, random_k=1, polarity="positive"))
    return writer


def test_unfinished_writer_leaves_nothing_loadable(tmp_path):
    writer = _pending_writer(tmp_path)
    assert not (tmp_path / "records").exists()
    with pytest.raises(UserError, match="incomplete"):
        RecordStore.open(writer.staging)
    writer.abort()
    assert not writer.staging.exists()


def test_exception_inside_writer_removes_staging(tmp_path):
    with pytest.raises(RuntimeError):
        with StoreWriter(tmp_path / "records") as writer:
            writer.append_windows(np.zeros((2, 4), dtype=np.int32))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_stale_staging_of_dead_writers_is_removed(tmp_path):
    dead = tmp_path / ".records.partial-999999999-abcd"
    dead.mkdir()
    alive = tmp_path / f".records.partial-{os.getppid()}-abcd"
    alive.mkdir()
    remove_stale_staging(tmp_path / "records")
    assert not dead.exists() and alive.exists()


def test_incomplete_foreign_and_newer_stores_are_refused(tmp_path):
    store = _write(tmp_path)
    manifest_path = store.path / MANIFEST_FILE
    values = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps(values | {"complete": False}))
    with pytest.raises(UserError, match="incomplete"):
        RecordStore.open(store.path)
    manifest_path.write_text(json.dumps(values | {"format_version": 99}))
    with pytest.raises(UserError, match="format version 99"):
        RecordStore.open(store.path)
    manifest_path.write_text(json.dumps({"something": "else"}))
    with pytest.raises(UserError, match="not a neuron-explainer record store"):
        RecordStore.open(store.path)
    with pytest.raises(UserError, match="no manifest.json"):
        RecordStore.open(tmp_path)
    with pytest.raises(UserError, match="not a directory"):
        RecordStore.open(tmp_path / "missing")


def test_rewriting_replaces_a_store_without_mixing(tmp_path):
    first = _write(tmp_path, data=_synthetic(windows=70))
    second = _write(tmp_path, data=_synthetic(windows=20, seed=5))
    assert second.path == first.path and second.num_windows == 20
    assert sorted(path.name for path in tmp_path.iterdir()) == ["records"]


def test_refuses_to_overwrite_a_directory_that_is_not_a_store(tmp_path):
    (tmp_path / "records").mkdir()
    (tmp_path / "records" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a record store"):
        _write(tmp_path)
    assert (tmp_path / "records" / "notes.txt").read_text() == "mine"


def test_accumulator_handles_a_strided_view_like_a_contiguous_tensor():
    import torch

    torch.manual_seed(0)
    padded = torch.randn(4, 9, 6)
    view, contiguous = padded[:, 1:], padded[:, 1:].contiguous()
    results = []
    for tensor in (view, contiguous):
        accumulator = RecordingAccumulator({0: 6}, positions=8, top_k=3, random_k=2, quantile_tokens=16, both=True,
                                           seed=0)
        accumulator.add({0: tensor})
        results.append(accumulator.pop_layer(0))
    for name in ("top_window_ids", "top_activations", "random_activations", "stats", "quantiles",
                 "bottom_window_ids", "bottom_activations"):
        np.testing.assert_array_equal(getattr(results[0], name), getattr(results[1], name))


@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16"])
def test_the_c_kernel_records_what_the_torch_operations_record(dtype_name):
    import torch

    from neuron_explainer.activations import native

    torch.manual_seed(1)
    batches = [torch.randn(7, 10, 37) for _ in range(6)]
    batches[2][3] = batches[2][1]  # ties within a batch, across batches and among rounded values
    batches[5][:] = batches[1][0]
    batches[4] = torch.round(batches[4])
    if native.fold_library() is None:
        pytest.skip("no C compiler on this machine: the recorder uses torch operations only")
    results = {}
    for use_kernel in (True, False):
        accumulator = RecordingAccumulator({0: 37, 2: 37}, positions=9, top_k=4, random_k=3, quantile_tokens=32,
                                           both=True, seed=3, use_kernel=use_kernel)
        for batch in batches:
            view = batch.to(getattr(torch, dtype_name))[:, 1:]  # strided, as the subject hands it over
            assert native.supports(view)
            picks = accumulator.begin_batch(len(view))
            accumulator.add_layer(0, view, picks)
            accumulator.layers[2].update(-view, picks, parts=3)  # neurons split over threads
            accumulator.end_batch(picks)
        results[use_kernel] = [accumulator.pop_layer(0), accumulator.pop_layer(2)]
    for kernel, torch_ops in zip(results[True], results[False]):
        for name in ("top_window_ids", "top_activations", "random_activations", "quantiles", "bottom_window_ids",
                     "bottom_activations"):
            np.testing.assert_array_equal(getattr(kernel, name), getattr(torch_ops, name), err_msg=name)
        # Sums in another order: equal to rounding.
        np.testing.assert_allclose(kernel.stats, torch_ops.stats, rtol=1e-6, atol=1e-7)


# --- recording a real (tiny) model -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def text_corpus(tmp_path_factory) -> Path:
    from tiny_models import SAMPLE_TEXT

    directory = tmp_path_factory.mktemp("corpus")
    lines = SAMPLE_TEXT.splitlines()
    for index in range(12):
        rotated = lines[index % len(lines):] + lines[:index % len(lines)]
        (directory / f"doc{index:02d}.txt").write_text("\n".join(rotated * 3))
    return directory


def test_recording_a_tiny_model_matches_brute_force(tmp_path, tiny_llama, text_corpus):
    from neuron_explainer.corpus import open_corpus, window_batches
    from neuron_explainer.subject import Subject

    config = RecordConfig(model=str(tiny_llama), corpus=str(text_corpus), layers="0-1", window_length=16,
                          windows=50, top_k=6, random_k=5, batch_size=8, polarity=RecordPolarity.BOTH,
                          store_dtype="float32", dtype="float32")
    summary = record(config, tmp_path / "records", progress=False)
    store = RecordStore.open(summary.path)
    assert store.num_windows == 50 and store.layers == (0, 1)
    subject = Subject.load(str(tiny_llama), dtype="float32")
    token_ids = np.concatenate(list(window_batches(open_corpus(str(text_corpus)).documents(), subject.tokenizer,
                                                   length=16, max_windows=50, batch_size=50)))
    np.testing.assert_array_equal(store.token_ids, token_ids)
    everything = {layer: values.float().numpy() for layer, values in
                  subject.activations(token_ids, layers=[0, 1]).items()}
    for layer in (0, 1):
        top = _brute_top(everything[layer], 6, largest=True)
        bottom = _brute_top(everything[layer], 6, largest=False)
        for neuron in (0, 7, 47):
            record_ = store.load_neuron(layer, neuron)
            # The model ran in other batch shapes here than while recording, so float32 rounding may reorder windows
            # whose extremes differ by less than it: compare the extremes the chosen windows reach, in order.
            window_max = everything[layer][:, :, neuron].max(axis=1)
            window_min = everything[layer][:, :, neuron].min(axis=1)
            np.testing.assert_allclose(window_max[[window.window_id for window in record_.top_windows]],
                                       window_max[top[neuron]], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(window_min[[window.window_id for window in record_.bottom_windows]],
                                       window_min[bottom[neuron]], rtol=1e-5, atol=1e-6)
            for window in record_.top_windows + record_.random_windows:
                np.testing.assert_allclose(window.activations, everything[layer][window.window_id, :, neuron],
                                           rtol=1e-5, atol=1e-6)
            stats = record_.stats
            assert stats.max == pytest.approx(everything[layer][:, :, neuron].max(), rel=1e-6)
            assert stats.mean == pytest.approx(everything[layer][:, :, neuron].mean(), abs=1e-6)
    assert store.window_tokens(0) == tuple(store.vocab[index] for index in token_ids[0])
    assert "".join(store.window_tokens(0)) == subject.tokenizer.decode(token_ids[0].tolist())


def test_recording_is_deterministic_and_reused(tmp_path, tiny_llama, text_corpus):
    config = RecordConfig(model=str(tiny_llama), corpus=str(text_corpus), layers="1", window_length=16, windows=30,
                          top_k=4, random_k=4, batch_size=8)
    first = record(config, tmp_path / "a", progress=False)
    again = record(config, tmp_path / "a", progress=False)
    twin = record(config, tmp_path / "b", progress=False)
    assert not first.reused and again.reused
    assert again.manifest.created_at == first.manifest.created_at
    assert twin.manifest.recording_id == first.manifest.recording_id
    for name in ("top_activations", "random_activations", "stats"):
        np.testing.assert_array_equal(np.load(first.path / "layer_001" / f"{name}.npy"),
                                      np.load(twin.path / "layer_001" / f"{name}.npy"))
    assert manifest_matches(first.manifest, config)
    assert not manifest_matches(first.manifest, RecordConfig(**{**config.__dict__, "seed": 1}))
    assert not manifest_matches(first.manifest, RecordConfig(**{**config.__dict__, "layers": "0-1"}))
    assert manifest_matches(first.manifest, RecordConfig(**{**config.__dict__, "batch_size": 3, "dtype": "fp32"}))
    assert not manifest_matches(first.manifest, RecordConfig(**{**config.__dict__, "dtype": "bfloat16"}))
    assert not manifest_matches(first.manifest, config, model_fingerprint="other")
    changed = record(RecordConfig(**{**config.__dict__, "seed": 1}), tmp_path / "a", progress=False)
    assert not changed.reused and changed.manifest.seed == 1


def test_a_corpus_shorter_than_a_window_is_a_user_error(tmp_path, tiny_llama):
    (tmp_path / "short.txt").write_text("just a few words")
    config = RecordConfig(model=str(tiny_llama), corpus=str(tmp_path / "short.txt"), layers="0", window_length=64)
    with pytest.raises(UserError, match="no window of 64 tokens"):
        record(config, tmp_path / "records", progress=False)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["short.txt"]


def test_out_of_range_layer_is_a_user_error(tmp_path, tiny_llama, text_corpus):
    config = RecordConfig(model=str(tiny_llama), corpus=str(text_corpus), layers="0-5", window_length=16)
    with pytest.raises(UserError, match="out of range"):
        record(config, tmp_path / "records", progress=False)
    assert not (tmp_path / "records").exists()


@pytest.mark.slow
def test_recording_the_bundled_default_model(tmp_path):
    summary = record(RecordConfig(layers="0,29", windows=24, batch_size=8), tmp_path / "records", progress=False)
    store = RecordStore.open(summary.path)
    assert store.layers == (0, 29) and store.neurons_per_layer == 1536 and store.num_windows == 24
    assert store.manifest.hook_point == "layers.{layer}.mlp.down_proj" and store.manifest.model_id == "default"
    assert store.manifest.tokenizer["prefix_token_ids"] == [1]
    record_ = store.load_neuron(29, 100)
    assert len(record_.top_windows) == 24 and len(record_.random_windows) == 24
    maxima = [window.max_activation for window in record_.top_windows]
    assert maxima == sorted(maxima, reverse=True) and record_.stats.max == pytest.approx(maxima[0], rel=1e-3)
    assert any(token.strip() for token in record_.top_windows[0].tokens)
