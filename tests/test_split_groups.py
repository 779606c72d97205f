"""Group-aware splits: a document's windows never straddle explain / calibrate / score, for any seed."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from neuron_explainer.activations import RecordStore, record_activations
from neuron_explainer.activations.groups import near_duplicate_labels, neuron_groups, span_overlap
from neuron_explainer.corpus import iter_document_windows
from neuron_explainer.core.errors import UserError
from neuron_explainer.explain import SplitConfig, SplitGroups, check_split_groups, split_neuron
from neuron_explainer.explain.splits import NeuronSplit, check_no_leakage

DOCUMENTS, WINDOWS_PER_DOCUMENT, LENGTH = 40, 5, 12
CONCEPT_DOCUMENT = 7
CONCEPT_TOKEN = 1


def _store(path, *, with_documents: bool = True) -> RecordStore:
    """40 documents of 5 windows each; the planted neuron fires on a token found only in document 7."""
    rng = np.random.default_rng(0)
    windows = DOCUMENTS * WINDOWS_PER_DOCUMENT
    # Distinct random text per window (vocab 2..499), so no two windows are near-duplicates by accident.
    tokens = rng.integers(2, 500, size=(windows, LENGTH))
    documents = np.stack([np.repeat(np.arange(DOCUMENTS), WINDOWS_PER_DOCUMENT),
                          np.tile(np.arange(WINDOWS_PER_DOCUMENT), DOCUMENTS)], axis=1)
    concept_rows = np.flatnonzero(documents[:, 0] == CONCEPT_DOCUMENT)
    tokens[concept_rows, 3] = CONCEPT_TOKEN
    activations = rng.normal(0.0, 0.1, size=(windows, LENGTH, 2)).astype(np.float32)
    activations[:, :, 0] += 5.0 * (tokens == CONCEPT_TOKEN)
    path = record_activations(path, token_ids=tokens, vocab=[f"t{index}" for index in range(500)],
                              activations={0: activations}, top_k=30, random_k=60, seed=0,
                              documents=documents if with_documents else None)
    return RecordStore.open(path)


def _document_sides(split: NeuronSplit, documents: np.ndarray) -> dict[int, set[str]]:
    sides: dict[int, set[str]] = {}
    for name, part in (("explain", split.explain), ("calibrate", split.calibrate), ("score", split.scored)):
        for window in part:
            sides.setdefault(int(documents[window.window_id, 0]), set()).add(name)
    return sides


def test_no_document_on_two_sides_for_100_seeds(tmp_path):
    store = _store(tmp_path / "store")
    documents = np.asarray(store.document_ids)
    record = store.load_neuron(0, 0)
    concept_windows = {window.window_id for window in record.top_windows
                       if documents[window.window_id, 0] == CONCEPT_DOCUMENT}
    assert len(concept_windows) == WINDOWS_PER_DOCUMENT  # the concept's whole document is among the top windows
    placements = set()
    for seed in range(100):
        split = split_neuron(record, SplitConfig(seed=seed, explain_top=4, score_top=4, score_random=8,
                                                 calibrate_top=3, calibrate_random=3))
        sides = _document_sides(split, documents)
        assert all(len(parts) == 1 for parts in sides.values()), (seed, sides)
        placements.add(frozenset(sides.get(CONCEPT_DOCUMENT, set())))
        assert split.explain and split.score_top and split.score_random
    # Over 100 seeds the concept document lands on each side at some point (the test is not vacuous).
    assert {frozenset({"explain"}), frozenset({"score"})} <= placements


def test_store_without_document_ids_groups_adjacent_windows_and_says_so_once(tmp_path, caplog):
    store = _store(tmp_path / "old", with_documents=False)
    assert not store.has_document_ids and store.document_ids is None
    with caplog.at_level(logging.WARNING):
        record = store.load_neuron(0, 0)
        store.load_neuron(0, 1)
    assert sum("no document ids" in message for message in caplog.messages) == 1
    ids = sorted(window.window_id for window in record.top_windows)
    # Consecutive window ids share a group.
    for first, second in zip(ids, ids[1:]):
        if second == first + 1:
            assert record.window_groups[first] == record.window_groups[second]
    with pytest.raises(UserError, match="no document ids"):
        check_split_groups(SplitConfig(groups=SplitGroups.DOCUMENTS), has_document_ids=False, store=store.path)
    check_split_groups(SplitConfig(groups=SplitGroups.AUTO), has_document_ids=False, store=store.path)


def test_store_without_documents_groups_runs_of_ids_and_near_duplicates():
    labels = np.arange(40)
    labels[20] = 3  # window 20 is a near-duplicate of window 3
    groups = neuron_groups([3, 4, 7, 9, 20, 21], near_labels=labels, documents=None, document_windows=None)
    # Ids 0-7 form one run, 16-23 another; the near-duplicate joins them.
    assert groups[3] == groups[4] == groups[7] == groups[20] == groups[21] == 3
    assert groups[9] == 9


def test_near_duplicate_windows_from_different_documents_share_a_label():
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 1000, size=(6, 40))
    tokens[4] = tokens[1]
    tokens[4, 30:] = rng.integers(0, 1000, size=10)  # most 8-token spans shared with window 1
    labels = near_duplicate_labels(tokens)
    assert labels[4] == labels[1] == 1
    assert len(set(labels.tolist())) == 5
    overlap = span_overlap(tokens)
    assert list(zip(overlap.first.tolist(), overlap.second.tolist())) == [(1, 4)]


def test_short_documents_are_one_group_and_long_ones_are_cut_in_runs():
    # Document 0 has 5 windows (one group); document 1 has 40 (runs of 8 positions).
    documents = np.array([(0, position) for position in range(5)] + [(1, position) for position in range(40)])
    document_windows = np.bincount(documents[:, 0])
    near = np.arange(len(documents))
    groups = neuron_groups([0, 4, 5, 12, 13, 40], near_labels=near, documents=documents,
                           document_windows=document_windows)
    assert groups[0] == groups[4] == 0
    assert groups[5] == groups[12] == 5  # positions 0 and 7 of document 1
    assert groups[13] == 13 and groups[40] == 40  # positions 8 and 35: other runs


def test_a_concept_filling_a_long_stretch_still_gets_every_part(tmp_path):
    """One long document whose first 30 windows all carry the concept: runs keep the split usable."""
    rng = np.random.default_rng(3)
    tokens = rng.integers(2, 500, size=(120, LENGTH))
    tokens[:30, 3] = CONCEPT_TOKEN
    documents = np.stack([np.zeros(120, dtype=np.int64), np.arange(120)], axis=1)
    activations = rng.normal(0.0, 0.1, size=(120, LENGTH, 1)).astype(np.float32)
    activations[:, :, 0] += 5.0 * (tokens == CONCEPT_TOKEN)
    store = RecordStore.open(record_activations(tmp_path / "long", token_ids=tokens,
                                                vocab=[f"t{index}" for index in range(500)],
                                                activations={0: activations}, top_k=30, random_k=40,
                                                documents=documents))
    split = split_neuron(store.load_neuron(0, 0), SplitConfig())
    assert split.explain and split.score_top and split.calibrate_top and split.score_random


def test_check_no_leakage_refuses_a_group_on_two_sides(tmp_path):
    record = _store(tmp_path / "store").load_neuron(0, 0)
    split = split_neuron(record, SplitConfig())
    broken = NeuronSplit(explain=split.explain, calibrate_top=split.calibrate_top,
                         calibrate_random=split.calibrate_random, score_top=split.score_top + split.explain[:1],
                         score_random=split.score_random, window_groups=split.window_groups)
    with pytest.raises(UserError, match="group"):
        check_no_leakage(broken)


class _Tokenizer:
    eos_token_id = 0

    def __call__(self, texts, add_special_tokens=False, verbose=False):
        class Encoded:
            input_ids = [[int(word) for word in text.split()] for text in texts]
        return Encoded()


def test_document_ids_and_positions_of_windows():
    documents = ["1 2 3 4 5 6 7", "8 9", "10 11 12 13 14 15 16 17"]
    plain = list(iter_document_windows(documents, _Tokenizer(), length=3))
    assert [(window.document, window.position) for window in plain] == [(0, 0), (0, 1), (2, 0), (2, 1)]
    packed = list(iter_document_windows(documents, _Tokenizer(), length=3, pack=True))
    # Stream: 1..7 0 | 8 9 0 | 10..17 0 -> every window touches the chain that starts at document 0, except none
    # restarts because no document ends exactly on a window boundary.
    assert [window.tokens for window in packed][:3] == [[1, 2, 3], [4, 5, 6], [7, 0, 8]]
    assert {window.document for window in packed} == {0}
    assert [window.position for window in packed] == list(range(len(packed)))
