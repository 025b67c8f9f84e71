"""Building a named data set: load its source and partition it (the registry of data sets).

Apart from `dataset.py`, so that the federated dataset type does not import the sources that build
instances of it (Shakespeare's, Synthetic's).
"""

from __future__ import annotations

from fedstack.data import partition as partitioners
from fedstack.data import sources
from fedstack.data.dataset import (DATASETS, DIGITS_SPLIT_SEED, MAX_SYNTHETIC_CLIENTS, FederatedDataset,
                                   _check_options)
from fedstack.errors import ConfigError
from fedstack.seeding import rng as stream_rng


def build_dataset(
    name: str,
    *,
    num_clients: int,
    partition: str,
    alpha: float,
    seed: int,
    path: str = "",
    holdout: float = 0.1,
    beta: float = 0.0,
    level: str = "char",
    vocab_size: int = 5000,
    clusters: int = 4,
    cluster_transform: str = "rotate",
) -> FederatedDataset:
    """Load a built-in dataset and partition it; name in DATASETS, partition in PARTITIONS.

    The partition draws from SeedSequence([seed, 1]) and the holdout split from
    SeedSequence([seed, 2]), so the same seed always gives the same federation.
    shakespeare (partition "natural") takes `level` ("char" | "word") and `vocab_size`, and keeps
    each role's own 80/20 train/test split instead of `holdout` (see fedstack.data.shakespeare).
    partition "clusters" takes `clusters` (k groups) and `cluster_transform` (see fedstack.data.clusters).
    """
    if name not in DATASETS:
        raise ConfigError("data.name", f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    _check_options(num_clients, partition, alpha, holdout, clusters, cluster_transform)
    if name == "synthetic":
        if path:
            raise ConfigError("data.path", f"synthetic data is generated and reads no files; remove {path!r}")
        return _synthetic(num_clients=num_clients, partition=partition, alpha=alpha, beta=beta, seed=seed,
                          holdout=holdout)
    if name == "shakespeare":
        from fedstack.data.shakespeare import build_shakespeare

        return build_shakespeare(num_clients=num_clients, seed=seed, level=level, vocab_size=vocab_size,
                                 path=path, partition=partition)
    if partition == "natural":
        raise ConfigError("data.partition",
                          f"{name} has no natural partition; 'natural' is for synthetic and shakespeare")
    if name == "fashion_mnist":
        arrays = sources.load_fashion_mnist(path)
    else:
        if path:  # an explicit path that cannot be read is an error, never silently ignored
            raise ConfigError("data.path", f"digits ships with scikit-learn and reads no files; remove {path!r}")
        arrays = sources.load_digits(DIGITS_SPLIT_SEED)
    x, y, x_test, y_test = arrays
    # Standardise pixels with the training set's mean and std (one scalar each), as is usual
    # for these image sets: SGD at the configured learning rate converges faster.
    mean, std = float(x.mean()), float(x.std())
    x -= mean
    x /= std
    x_test -= mean
    x_test /= std
    return FederatedDataset.from_arrays(
        x, y, x_test, y_test,
        num_clients=num_clients,
        partition=partition,
        alpha=alpha,
        holdout=holdout,
        seed=seed,
        name=name,
        num_classes=10,
        clusters=clusters,
        cluster_transform=cluster_transform,
    )


def _synthetic(*, num_clients, partition, alpha, beta, seed, holdout) -> FederatedDataset:
    """Synthetic(α, β): one device per client ("natural"), or the IID variant ("iid")."""
    from fedstack.data.synthetic import synthetic

    if partition not in ("natural", "iid"):
        raise ConfigError("data.partition", f"synthetic is partitioned 'natural' (one device per client) "
                                            f"or 'iid' (the IID variant), not {partition!r}")
    if beta < 0 or alpha < 0:
        raise ConfigError("data.beta" if beta < 0 else "data.alpha", "Synthetic(α, β) needs α, β ≥ 0")
    if num_clients > MAX_SYNTHETIC_CLIENTS:
        raise ConfigError("data.num_clients", f"synthetic generates every device's data in memory (~110 kB a "
                                              f"device): at most {MAX_SYNTHETIC_CLIENTS} clients; for a larger "
                                              f"population use partition = \"powerlaw\" over an image set")
    x, y, x_test, y_test, parts = synthetic(alpha, beta, num_clients, stream_rng(seed, "partition"),
                                            iid=partition == "iid")
    train, held = partitioners.split_holdout(parts, holdout, stream_rng(seed, "holdout"))
    return FederatedDataset("synthetic", x, y, x_test, y_test, train, held, 10)
