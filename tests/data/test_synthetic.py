import numpy as np
import pytest

from fedstack.data import build_dataset
from fedstack.data.synthetic import synthetic
from fedstack.errors import ConfigError


def test_shapes_counts_and_determinism():
    x, y, xt, yt, parts = synthetic(1.0, 1.0, 30, np.random.default_rng(0))
    assert x.shape[1] == 60 and x.dtype == np.float32 and set(np.unique(y)) <= set(range(10))
    assert sum(len(p) for p in parts) == len(x) and np.array_equal(np.concatenate(parts), np.arange(len(x)))
    sizes = np.array([len(p) for p in parts]) + np.array([1] * 30)  # at least 50 samples, 10% held for test
    assert sizes.min() >= 45 and len(xt) == len(yt) > 0
    again = synthetic(1.0, 1.0, 30, np.random.default_rng(0))
    assert np.array_equal(again[0], x) and np.array_equal(again[1], y)


def label_mixes_differ(alpha, beta, iid=False):
    """Spread of the devices' label distributions (0 = every device sees the same mix)."""
    x, y, _, _, parts = synthetic(alpha, beta, 30, np.random.default_rng(3), iid=iid)
    mixes = np.array([np.bincount(y[p], minlength=10) / len(p) for p in parts])
    return float(np.abs(mixes - mixes.mean(axis=0)).sum(axis=1).mean())


def test_heterogeneity_grows_with_alpha_and_beta_and_vanishes_when_iid():
    assert label_mixes_differ(1.0, 1.0) > label_mixes_differ(0.0, 0.0, iid=True)
    assert label_mixes_differ(0.0, 0.0, iid=True) < 0.35


def test_feature_variance_decays_as_in_the_paper():
    x, *_ = synthetic(0.0, 0.0, 30, np.random.default_rng(1), iid=True)
    var = x.var(axis=0)
    assert var[0] == pytest.approx(1.0, rel=0.15) and var[59] == pytest.approx(60 ** -1.2, rel=0.3)


def test_build_dataset_natural_partition_is_one_device_per_client():
    ds = build_dataset("synthetic", num_clients=30, partition="natural", alpha=0.5, beta=0.5, seed=0)
    assert ds.num_clients == 30 and ds.x.shape[1:] == (60,)
    with pytest.raises(ConfigError, match="data.partition"):
        build_dataset("synthetic", num_clients=30, partition="dirichlet", alpha=0.5, seed=0)
    with pytest.raises(ConfigError, match="data.partition"):
        build_dataset("digits", num_clients=3, partition="natural", alpha=0.5, seed=0)


def test_a_synthetic_run_learns(tmp_path):
    from fedstack.plan import load_config
    from fedstack.experiment import run_config

    config = load_config(None, ["data.name=synthetic", "data.partition=natural", "data.alpha=0.5",
                                "data.beta=0.5", "data.num_clients=30", "model.name=logreg", "server.rounds=5",
                                "server.clients_per_round=10", "engine.name=local", "client.lr=0.01",
                                "client.batch_size=10", "client.epochs=5"])
    accuracy = [r["test_accuracy"] for r in run_config(config, tmp_path / "run").rounds]
    assert accuracy[-1] > accuracy[0], accuracy
