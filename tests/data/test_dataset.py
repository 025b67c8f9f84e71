"""FederatedDataset and build_dataset: partitions on digits, determinism, validation, arrays."""

import numpy as np
import pytest

from fedstack.data import ClientData, FederatedDataset, build_dataset, sources
from fedstack.data.dataset import ARRAY_PARTITIONS, DATASETS, PARTITIONS
from fedstack.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def digits():
    return sources.load_digits(0)


def build(partition="iid", num_clients=7, alpha=0.5, seed=0, holdout=0.1, name="digits", **kw):
    return build_dataset(name, num_clients=num_clients, partition=partition, alpha=alpha, seed=seed,
                         holdout=holdout, **kw)


def check_federation(fed: FederatedDataset, num_clients: int, holdout: float):
    n = len(fed.y)
    assert fed.num_clients == num_clients == len(fed.holdout_idx)
    used = []
    for i in range(num_clients):
        c = fed.client(i)
        assert isinstance(c, ClientData)
        assert c.x is fed.x and c.y is fed.y
        assert c.train_idx.dtype == np.int64 and c.holdout_idx.dtype == np.int64
        assert c.num_examples == len(c.train_idx) >= 1
        assert len(np.intersect1d(c.train_idx, c.holdout_idx)) == 0
        size = len(c.train_idx) + len(c.holdout_idx)
        assert len(c.holdout_idx) == int(holdout * size + 1e-9)
        assert np.all(np.diff(c.train_idx) > 0)
        used += [c.train_idx, c.holdout_idx]
    np.testing.assert_array_equal(np.sort(np.concatenate(used)), np.arange(n))


@pytest.mark.parametrize("partition", ARRAY_PARTITIONS)
def test_build_digits_each_partition(partition):
    fed = build(partition, num_clients=7)
    assert fed.name == "digits" and fed.num_classes == 10
    assert fed.x.dtype == np.float32 and fed.x.shape[1:] == (1, 8, 8)
    assert fed.y.dtype == np.int64 and len(fed.x_test) == len(fed.y_test) > 300
    check_federation(fed, 7, 0.1)


@pytest.mark.parametrize("partition", ARRAY_PARTITIONS)
def test_same_seed_same_federation_other_seed_differs(partition):
    a, b, c = build(partition, seed=3), build(partition, seed=3), build(partition, seed=4)
    for key in ("train_idx", "holdout_idx"):
        assert all(np.array_equal(u, v) for u, v in zip(getattr(a, key), getattr(b, key)))
    assert not all(np.array_equal(u, v) for u, v in zip(a.train_idx, c.train_idx))
    # the server test set is fixed across run seeds
    np.testing.assert_array_equal(a.y_test, c.y_test)


def test_partition_uses_the_documented_seed_streams(digits):
    x, y, x_test, y_test = digits
    fed = FederatedDataset.from_arrays(x, y, x_test, y_test, num_clients=5, holdout=0.2, seed=11)
    from fedstack.data import partition

    parts = partition.iid(len(y), 5, np.random.default_rng(np.random.SeedSequence([11, 1])))
    train, held = partition.split_holdout(parts, 0.2, np.random.default_rng(np.random.SeedSequence([11, 2])))
    assert all(np.array_equal(u, v) for u, v in zip(fed.train_idx, train))
    assert all(np.array_equal(u, v) for u, v in zip(fed.holdout_idx, held))


def test_holdout_zero_and_large():
    check_federation(build(holdout=0.0), 7, 0.0)
    fed = build(holdout=0.5)
    check_federation(fed, 7, 0.5)
    assert sum(map(len, fed.holdout_idx)) > 0.45 * len(fed.y)


def test_dirichlet_small_alpha_gives_fewer_classes_per_client():
    def classes_per_client(fed):
        return np.mean([len(np.unique(fed.y[t])) for t in fed.train_idx])

    assert classes_per_client(build("dirichlet", num_clients=10, alpha=0.1)) < classes_per_client(
        build("dirichlet", num_clients=10, alpha=100.0)
    )


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(name="mnist"), "data.name"),
        (dict(partition="sorted"), "data.partition"),
        (dict(num_clients=0), "data.num_clients"),
        (dict(num_clients=-3), "data.num_clients"),
        (dict(num_clients=2.5), "data.num_clients"),
        (dict(num_clients=100_000), "data.num_clients"),
        (dict(partition="dirichlet", alpha=0.0), "data.alpha"),
        (dict(partition="dirichlet", alpha=-1.0), "data.alpha"),
        (dict(partition="dirichlet", alpha=float("nan")), "data.alpha"),
        (dict(holdout=1.0), "data.holdout"),
        (dict(holdout=-0.1), "data.holdout"),
        (dict(partition="shards", num_clients=1000), "data.num_clients"),
    ],
)
def test_config_errors_carry_the_key(kwargs, key):
    with pytest.raises(ConfigError) as info:
        build(**kwargs)
    assert info.value.key == key


def test_config_error_messages_are_helpful(digits):
    with pytest.raises(ConfigError, match="fashion_mnist, digits"):
        build(name="mnist")
    with pytest.raises(ConfigError, match="iid, dirichlet, shards, powerlaw"):
        build(partition="x")
    n = len(digits[1])
    with pytest.raises(ConfigError, match=f"100000 clients.*{n}"):
        build(num_clients=100_000)


def test_alpha_is_not_checked_for_other_partitions():
    assert build("iid", alpha=0.0).num_clients == 7


def test_shards_at_the_limit(digits):
    n = len(digits[1])
    fed = build("shards", num_clients=n // 2, holdout=0.0)
    check_federation(fed, n // 2, 0.0)


def test_fashion_mnist_missing_is_a_data_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("FEDSTACK_DATA", raising=False)
    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST", tmp_path / "none")
    with pytest.raises(DataError, match="Fashion-MNIST not found"):
        build(name="fashion_mnist", path=str(tmp_path / "given"))


def test_from_arrays_with_own_data():
    g = np.random.default_rng(0)
    x, y = g.normal(size=(200, 5)), g.integers(0, 3, size=200)
    x_test, y_test = g.normal(size=(40, 5)), g.integers(0, 3, size=40)
    fed = FederatedDataset.from_arrays(x, y, x_test, y_test, num_clients=4, partition="dirichlet", alpha=1.0)
    assert fed.name == "custom" and fed.num_classes == 3 and fed.x is x
    check_federation(fed, 4, 0.1)
    assert FederatedDataset.from_arrays(x, y, x_test, y_test, num_clients=2, num_classes=5).num_classes == 5
    assert FederatedDataset.from_arrays(x, y.astype(float), x_test, y_test, num_clients=2).y.dtype == np.int64


def test_from_arrays_rejects_bad_data():
    x, y = np.zeros((10, 2)), np.zeros(10, dtype=int)
    with pytest.raises(DataError):
        FederatedDataset.from_arrays(x, y[:-1], x, y, num_clients=2)
    with pytest.raises(DataError):
        FederatedDataset.from_arrays(x, y, np.zeros((10, 3)), y, num_clients=2)
    with pytest.raises(DataError):
        FederatedDataset.from_arrays(x, y - 1, x, y, num_clients=2)
    with pytest.raises(DataError):
        FederatedDataset.from_arrays(x, y + 0.5, x, y, num_clients=2)
    with pytest.raises(DataError):
        FederatedDataset.from_arrays(x, y + 4, x, y, num_clients=2, num_classes=3)
    with pytest.raises(ConfigError) as info:
        FederatedDataset.from_arrays(x, y, x, y, num_clients=11)
    assert info.value.key == "data.num_clients"


def test_arrays_and_with_arrays_keep_partitions():
    fed = build("dirichlet", num_clients=5)
    arrays = fed.arrays()
    assert set(arrays) == {"x", "y", "x_test", "y_test"}
    assert all(arrays[k] is getattr(fed, k) for k in arrays)
    copies = {k: v.copy() for k, v in arrays.items()}
    other = fed.with_arrays(copies)
    assert other is not fed and other.x is copies["x"] and other.y_test is copies["y_test"]
    assert other.train_idx is fed.train_idx and other.holdout_idx is fed.holdout_idx
    assert other.name == fed.name and other.num_classes == fed.num_classes
    assert other.client(2).x is copies["x"]
    np.testing.assert_array_equal(other.client(2).train_idx, fed.client(2).train_idx)
    assert fed.with_arrays({"x": copies["x"]}).y is fed.y
    with pytest.raises(DataError):
        fed.with_arrays({"x": copies["x"][:-1]})
    with pytest.raises(ValueError):
        fed.with_arrays({"z": copies["x"]})


def test_client_index_out_of_range():
    fed = build(num_clients=3)
    with pytest.raises(IndexError):
        fed.client(3)
    with pytest.raises(IndexError):
        fed.client(-1)


def test_repr_is_short():
    assert len(repr(build(num_clients=3))) < 200
    assert "train=" in repr(build(num_clients=3).client(0))


def test_known_names():
    assert DATASETS == ("fashion_mnist", "digits", "synthetic", "shakespeare")
    assert PARTITIONS == ("iid", "dirichlet", "shards", "powerlaw", "clusters", "natural")
