"""Populations larger than the data: powerlaw_shared, the vectorised holdout split, a million clients."""

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedstack import cli
from fedstack.data import FederatedDataset, build_dataset, partition
from fedstack.data.dataset import MAX_SHARED_CLIENTS
from fedstack.errors import ConfigError

SETTINGS = settings(max_examples=50, deadline=None)


def rng(seed=0):
    return np.random.default_rng(seed)


def check_distinct_sorted_in_pool(parts, n):
    for p in parts:
        assert np.all(np.diff(p) > 0)  # sorted, and no sample twice in one client
        assert len(p) == 0 or (0 <= p[0] and p[-1] < n)


def test_shared_sizes_by_hand():
    # min_size 1, then the pool's 4 samples by weights 1, 1/2, ..., 1/6 (sum 2.45): shares 1.63, 0.82,
    # 0.54, 0.41, 0.33, 0.27 -> floors 1, 0, ... and 3 more by largest remainder (ranks 2, 1, 3): 2, 1, 1
    parts = partition.powerlaw_shared(4, 6, rng(), exponent=1.0, min_size=1)
    assert sorted(parts.sizes().tolist()) == [1, 1, 1, 2, 2, 3]
    check_distinct_sorted_in_pool(parts, 4)


@SETTINGS
@given(n=st.integers(1, 300), num_clients=st.integers(1, 400), min_size=st.integers(1, 6),
       exponent=st.floats(0.0, 3.0), seed=st.integers(0, 2**32 - 1))
def test_shared_properties(n, num_clients, min_size, exponent, seed):
    if min_size > n:
        with pytest.raises(Exception, match="min_size"):
            partition.powerlaw_shared(n, num_clients, rng(seed), exponent, min_size)
        return
    parts = partition.powerlaw_shared(n, num_clients, rng(seed), exponent, min_size)
    sizes = parts.sizes()
    assert len(parts) == num_clients and sizes.min() >= min_size and sizes.max() <= n
    assert sizes.sum() <= num_clients * min_size + n  # equal unless a client was capped at the pool's size
    check_distinct_sorted_in_pool(parts, n)
    assert parts == partition.powerlaw_shared(n, num_clients, rng(seed), exponent, min_size)


def test_shared_clients_draw_from_the_whole_pool():
    parts = partition.powerlaw_shared(1000, 20_000, rng(), min_size=5)
    counts = np.bincount(parts.indices, minlength=1000)
    assert counts.min() > 0  # ~100 clients per sample: every sample is somebody's
    assert np.median(parts.sizes()) == 5 and parts.sizes().max() > 100  # a power-law head over a floor


@SETTINGS
@given(sizes=st.lists(st.integers(0, 60), min_size=1, max_size=12), fraction=st.floats(0.0, 0.99),
       seed=st.integers(0, 2**32 - 1))
def test_vectorised_holdout_split_keeps_the_properties(sizes, fraction, seed):
    bounds = np.cumsum([0, *sizes])
    order = np.random.default_rng(seed).permutation(bounds[-1])
    parts = [np.sort(order[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(partition, "HOLDOUT_LOOP_MAX", 0)  # take the path of a large population
        train, held = partition.split_holdout(parts, fraction, rng(seed))
        again = partition.split_holdout(parts, fraction, rng(seed))
    assert len(train) == len(held) == len(parts)
    for p, t, h in zip(parts, train, held):
        assert len(np.intersect1d(t, h)) == 0
        np.testing.assert_array_equal(np.sort(np.concatenate([t, h])), p)
        assert len(h) == int(np.floor(fraction * len(p) + 1e-9)) or len(t) == 1
        assert len(p) == 0 or len(t) >= 1
        assert np.all(np.diff(t) > 0) and np.all(np.diff(h) > 0)
    assert train == again[0] and held == again[1]


def test_a_million_clients_build_in_seconds():
    n = 60_000
    x, y = np.zeros((n, 1), np.float32), np.arange(n) % 10
    start = time.perf_counter()
    fed = FederatedDataset.from_arrays(x, y, x[:10], y[:10], num_clients=10**6, partition="powerlaw", seed=3)
    seconds = time.perf_counter() - start
    assert seconds < 5.0, seconds  # about 1 s alone on one core; generous for a busy machine
    assert fed.num_clients == 10**6 and len(fed.holdout_idx) == 10**6
    sizes = fed.train_idx.sizes() + fed.holdout_idx.sizes()
    assert sizes.min() == 5 and sizes.sum() == 10**6 * 5 + n
    assert fed.train_idx.nbytes + fed.holdout_idx.nbytes < 60e6  # the index itself: 8 bytes an entry
    c = fed.client(999_999)
    assert c.num_examples >= 1 and len(np.intersect1d(c.train_idx, c.holdout_idx)) == 0


def test_nonsense_populations_are_refused_naming_the_key():
    x, y = np.zeros((100, 1), np.float32), np.arange(100) % 10
    with pytest.raises(ConfigError, match="data.num_clients.*powerlaw"):
        FederatedDataset.from_arrays(x, y, x, y, num_clients=101, partition="iid")
    with pytest.raises(ConfigError, match="data.num_clients"):
        FederatedDataset.from_arrays(x, y, x, y, num_clients=MAX_SHARED_CLIENTS + 1, partition="powerlaw")
    with pytest.raises(ConfigError, match="data.num_clients"):
        build_dataset("synthetic", num_clients=10**6, partition="natural", alpha=0.5, seed=0)


def test_the_cli_refuses_an_oversized_population_in_one_line(tmp_path, capsys):
    args = ["run", "--set", "data.name=digits", "--set", "data.partition=powerlaw", "--set",
            f"data.num_clients={MAX_SHARED_CLIENTS + 1}", "--out", str(tmp_path / "o")]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "data.num_clients" in err and "\n" not in err
