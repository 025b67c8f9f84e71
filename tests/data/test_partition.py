"""Partitioners: exact small cases and hypothesis properties (coverage, non-empty, determinism, skew)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedstack.data import partition
from fedstack.errors import DataError

SETTINGS = settings(max_examples=50, deadline=None)


def rng(seed=0):
    return np.random.default_rng(seed)


def assert_exact_cover(parts, n, num_clients):
    assert len(parts) == num_clients
    for p in parts:
        assert p.dtype == np.int64
        assert len(p) > 0
    everything = np.concatenate(parts)
    assert len(everything) == n
    np.testing.assert_array_equal(np.sort(everything), np.arange(n))


def same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


@st.composite
def labelled(draw, min_per_client=1):
    num_clients = draw(st.integers(1, 12))
    num_classes = draw(st.integers(1, 10))
    n = draw(st.integers(num_clients * min_per_client, 400))
    seed = draw(st.integers(0, 2**32 - 1))
    labels = np.random.default_rng(seed).integers(0, num_classes, size=n)
    return labels, num_clients, seed


def entropy_per_client(parts, labels, num_classes):
    result = []
    for p in parts:
        counts = np.bincount(labels[p], minlength=num_classes)
        q = counts[counts > 0] / counts.sum()
        result.append(-(q * np.log(q)).sum())
    return float(np.mean(result))


# ---- exact, hand-checkable cases ----


def test_iid_ten_into_two_gives_five_and_five():
    parts = partition.iid(10, 2, rng())
    assert [len(p) for p in parts] == [5, 5]
    assert_exact_cover(parts, 10, 2)


def test_iid_sizes_differ_by_at_most_one():
    parts = partition.iid(11, 3, rng())
    assert sorted(len(p) for p in parts) == [3, 4, 4]


def test_shards_four_classes_two_clients_each_gets_two_whole_classes():
    labels = np.array([3, 0, 1, 2, 0, 3, 2, 1])
    parts = partition.shards(labels, 2, rng())
    assert_exact_cover(parts, 8, 2)
    for p in parts:
        values, counts = np.unique(labels[p], return_counts=True)
        assert len(values) == 2 and list(counts) == [2, 2]


def test_shards_leftover_samples_still_land_once():
    labels = np.arange(11) % 3
    parts = partition.shards(labels, 2, rng(), shards_per_client=2)
    assert_exact_cover(parts, 11, 2)
    assert sorted(len(p) for p in parts) == [5, 6]


def test_powerlaw_sizes_seven_into_three():
    # one each, then 4 shared by weights 1, 1/2, 1/3 -> 2.18, 1.09, 0.73 -> 2, 1, 1 by largest remainder
    parts = partition.powerlaw(7, 3, rng(), exponent=1.0)
    assert sorted(len(p) for p in parts) == [2, 2, 3]
    assert_exact_cover(parts, 7, 3)


def test_powerlaw_is_skewed():
    sizes = sorted((len(p) for p in partition.powerlaw(10_000, 20, rng())), reverse=True)
    assert sizes[0] > 10 * sizes[-1]
    assert sizes[0] / 10_000 > 0.3  # 1 / zeta-like sum of rank^-1.5 over 20 ranks ~ 0.43


def test_powerlaw_gives_the_big_share_to_a_random_client():
    biggest = {int(np.argmax([len(p) for p in partition.powerlaw(1000, 10, rng(seed))])) for seed in range(30)}
    assert len(biggest) > 3


def test_dirichlet_one_class_per_client_with_tiny_alpha():
    labels = np.repeat(np.arange(4), 50)
    parts = partition.dirichlet(labels, 4, 1e-3, rng(), min_size=1)
    assert_exact_cover(parts, 200, 4)
    # with alpha -> 0 each class goes wholly to one client; balancing keeps one class per client
    assert sorted(len(np.unique(labels[p])) for p in parts) == [1, 1, 1, 1]


def test_dirichlet_impossible_request_raises_data_error():
    labels = np.zeros(100, dtype=np.int64)  # one class, alpha tiny: all mass goes to one client
    with pytest.raises(DataError, match="alpha"):
        partition.dirichlet(labels, 20, 1e-4, rng(), min_size=5)


def test_too_few_samples_raises_data_error():
    with pytest.raises(DataError):
        partition.iid(3, 4, rng())
    with pytest.raises(DataError):
        partition.powerlaw(3, 4, rng())
    with pytest.raises(DataError):
        partition.shards(np.zeros(5), 3, rng())


def test_split_holdout_exact_sizes():
    parts = [np.arange(10), np.arange(10, 13), np.arange(13, 14)]
    train, held = partition.split_holdout(parts, 0.3, rng())
    assert [len(h) for h in held] == [3, 0, 0]
    assert [len(t) for t in train] == [7, 3, 1]
    assert [len(h) for h in partition.split_holdout([np.arange(100)], 0.29, rng())[1]] == [29]


def test_split_holdout_rejects_bad_fraction():
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError):
            partition.split_holdout([np.arange(3)], bad, rng())


# ---- properties ----


@SETTINGS
@given(n=st.integers(1, 500), num_clients=st.integers(1, 50), seed=st.integers(0, 2**32 - 1))
def test_iid_properties(n, num_clients, seed):
    if num_clients > n:
        with pytest.raises(DataError):
            partition.iid(n, num_clients, rng(seed))
        return
    parts = partition.iid(n, num_clients, rng(seed))
    assert_exact_cover(parts, n, num_clients)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert same(parts, partition.iid(n, num_clients, rng(seed)))


@SETTINGS
@given(
    n=st.integers(1, 500),
    num_clients=st.integers(1, 50),
    exponent=st.floats(0.0, 3.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_powerlaw_properties(n, num_clients, exponent, seed):
    if num_clients > n:
        with pytest.raises(DataError):
            partition.powerlaw(n, num_clients, rng(seed), exponent)
        return
    parts = partition.powerlaw(n, num_clients, rng(seed), exponent)
    assert_exact_cover(parts, n, num_clients)
    assert same(parts, partition.powerlaw(n, num_clients, rng(seed), exponent))


@SETTINGS
@given(data=labelled(min_per_client=2), shards_per_client=st.integers(1, 3))
def test_shards_properties(data, shards_per_client):
    labels, num_clients, seed = data
    if num_clients * shards_per_client > len(labels):
        with pytest.raises(DataError):
            partition.shards(labels, num_clients, rng(seed), shards_per_client)
        return
    parts = partition.shards(labels, num_clients, rng(seed), shards_per_client)
    assert_exact_cover(parts, len(labels), num_clients)
    assert same(parts, partition.shards(labels, num_clients, rng(seed), shards_per_client))


@SETTINGS
@given(
    num_classes=st.integers(1, 10),
    shard_size=st.integers(1, 20),
    shards_per_class=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
)
def test_shards_at_most_two_labels_when_classes_divide_evenly(num_classes, shard_size, shards_per_class, seed):
    num_shards = num_classes * shards_per_class
    if num_shards % 2:
        num_classes, num_shards = num_classes * 2, num_shards * 2
    labels = np.random.default_rng(seed).permutation(np.repeat(np.arange(num_classes), shard_size * shards_per_class))
    parts = partition.shards(labels, num_shards // 2, rng(seed))
    assert_exact_cover(parts, len(labels), num_shards // 2)
    for p in parts:
        assert len(p) == 2 * shard_size
        assert len(np.unique(labels[p])) <= 2


@SETTINGS
@given(data=labelled(min_per_client=10), alpha=st.floats(0.5, 100.0))
def test_dirichlet_properties(data, alpha):
    labels, num_clients, seed = data
    parts = partition.dirichlet(labels, num_clients, alpha, rng(seed), min_size=1)
    assert_exact_cover(parts, len(labels), num_clients)
    assert same(parts, partition.dirichlet(labels, num_clients, alpha, rng(seed), min_size=1))


@SETTINGS
@given(
    num_clients=st.integers(1, 12),
    per_client=st.integers(20, 60),
    alpha=st.floats(0.3, 100.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_dirichlet_min_size_with_ten_classes(num_clients, per_client, alpha, seed):
    labels = np.random.default_rng(seed).integers(0, 10, size=num_clients * per_client)
    parts = partition.dirichlet(labels, num_clients, alpha, rng(seed))
    assert_exact_cover(parts, len(labels), num_clients)
    assert min(map(len, parts)) >= 10


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_dirichlet_small_alpha_is_more_skewed_than_large(seed):
    labels = np.random.default_rng(seed).integers(0, 10, size=2000)
    skewed = partition.dirichlet(labels, 10, 0.1, rng(seed))
    uniform = partition.dirichlet(labels, 10, 100.0, rng(seed))
    h_skewed, h_uniform = entropy_per_client(skewed, labels, 10), entropy_per_client(uniform, labels, 10)
    assert h_skewed < h_uniform - 0.5
    assert h_uniform > 0.95 * np.log(10)


@SETTINGS
@given(
    sizes=st.lists(st.integers(0, 60), min_size=1, max_size=12),
    fraction=st.floats(0.0, 0.99),
    seed=st.integers(0, 2**32 - 1),
)
def test_split_holdout_properties(sizes, fraction, seed):
    bounds = np.cumsum([0, *sizes])
    order = np.random.default_rng(seed).permutation(bounds[-1])
    parts = [order[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    train, held = partition.split_holdout(parts, fraction, rng(seed))
    assert len(train) == len(held) == len(parts)
    for p, t, h in zip(parts, train, held):
        assert len(np.intersect1d(t, h)) == 0
        np.testing.assert_array_equal(np.sort(np.concatenate([t, h])), np.sort(p))
        assert len(h) == int(np.floor(fraction * len(p) + 1e-9)) or len(t) == 1
        assert len(p) == 0 or len(t) >= 1
        assert np.all(np.diff(t) > 0) and np.all(np.diff(h) > 0)
    again = partition.split_holdout(parts, fraction, rng(seed))
    assert same(train, again[0]) and same(held, again[1])


@SETTINGS
@given(data=labelled(min_per_client=2), seed=st.integers(0, 2**32 - 1))
def test_csr_partitions_are_the_lists_fedstack_always_dealt(data, seed):
    labels, num_clients, _ = data
    n = len(labels)
    # The former list-of-arrays construction, kept here as the reference: same generator, same bits.
    dealt = [np.sort(p) for p in np.array_split(rng(seed).permutation(n), num_clients)]
    assert partition.iid(n, num_clients, rng(seed)) == dealt
    pieces = np.array_split(np.argsort(labels, kind="stable"), 2 * num_clients)
    order = rng(seed).permutation(2 * num_clients).reshape(num_clients, 2)
    assert partition.shards(labels, num_clients, rng(seed)) == [np.sort(np.concatenate([pieces[s] for s in row]))
                                                                for row in order]
    weights = np.arange(1, num_clients + 1, dtype=np.float64) ** -1.5
    share = (n - num_clients) * weights / weights.sum()
    sizes = np.floor(share).astype(np.int64)
    sizes[np.argsort(-(share - sizes), kind="stable")[:(n - num_clients) - int(sizes.sum())]] += 1
    g = rng(seed)
    sizes = (sizes + 1)[g.permutation(num_clients)]
    assert partition.powerlaw(n, num_clients, rng(seed)) == [np.sort(p) for p in
                                                             np.split(g.permutation(n), np.cumsum(sizes)[:-1])]
