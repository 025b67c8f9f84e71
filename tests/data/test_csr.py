"""Partition (CSR index partitions): an exact case and properties against the lists it replaces."""

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedstack.data import FederatedDataset, Partition

SETTINGS = settings(max_examples=50, deadline=None)

lists_of_parts = st.lists(st.lists(st.integers(0, 10**6), max_size=8), max_size=12)


def test_exact_small_case():
    p = Partition.from_lists([[3, 1], [], [7]])
    np.testing.assert_array_equal(p.offsets, [0, 2, 2, 3])
    np.testing.assert_array_equal(p.indices, [3, 1, 7])
    assert len(p) == 3
    assert p[0].tolist() == [3, 1] and p[1].tolist() == [] and p[2].tolist() == [7] and p[-1].tolist() == [7]
    assert p.sizes().tolist() == [2, 0, 1] and p.segments().tolist() == [0, 0, 2]
    assert [v.tolist() for v in p] == [[3, 1], [], [7]]
    assert p[0].dtype == np.int64 and np.shares_memory(p[0], p.indices)  # a view, not a copy
    with pytest.raises(ValueError):
        p[0][0] = 9  # one client cannot write into the shared index array
    with pytest.raises(IndexError):
        p[3]
    assert p == [[3, 1], [], [7]] and p != [[3, 1], [7], []]
    assert Partition.from_sizes([2, 0, 1], [3, 1, 7]) == p
    assert repr(p) == "Partition(clients=3, indices=3)"


def test_bad_offsets_are_refused():
    for offsets, indices in (([1, 2], [0, 0]), ([0, 3], [0, 1]), ([0, 2, 1, 3], [0, 1, 2]), ([], [])):
        with pytest.raises(ValueError):
            Partition(offsets, indices)


@SETTINGS
@given(lists_of_parts)
def test_views_equal_the_lists_it_was_built_from(parts):
    p = Partition.from_lists([np.array(x, dtype=np.int64) for x in parts])
    assert len(p) == len(parts)
    assert [p[i].tolist() for i in range(len(parts))] == parts
    assert [v.tolist() for v in p] == parts
    assert p.sizes().tolist() == [len(x) for x in parts]
    assert p.segments().tolist() == [i for i, x in enumerate(parts) for _ in x]
    assert p.indices.tolist() == [v for x in parts for v in x]
    again = pickle.loads(pickle.dumps(p))
    assert again == p and again == parts and not again.indices.flags.writeable


def test_a_dataset_converts_lists_given_or_assigned():
    x, y = np.zeros((6, 1), np.float32), np.arange(6) % 2
    fed = FederatedDataset("t", x, y, x, y, [np.array([0, 1]), np.array([2, 3, 4, 5])], [[], []], 2)
    assert isinstance(fed.train_idx, Partition) and isinstance(fed.holdout_idx, Partition)
    assert fed.num_clients == 2 and fed.client(1).train_idx.tolist() == [2, 3, 4, 5]
    fed.train_idx = [np.array([5]), np.array([0, 1])]
    assert isinstance(fed.train_idx, Partition) and fed.client(0).num_examples == 1
    light = pickle.loads(pickle.dumps(fed))
    assert light.train_idx == fed.train_idx and light.holdout_idx == fed.holdout_idx
