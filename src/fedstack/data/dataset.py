"""Federated datasets: shared base arrays plus per-client index partitions."""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass

import numpy as np

from fedstack.data import clusters as planted
from fedstack.data import partition as partitioners
from fedstack.data.csr import Partition
from fedstack.errors import ConfigError, DataError
from fedstack.seeding import rng as stream_rng

DATASETS = ("fashion_mnist", "digits", "synthetic", "shakespeare")
# Splits of one array among clients; clusters: iid, then k groups of clients with transformed data
ARRAY_PARTITIONS = ("iid", "dirichlet", "shards", "powerlaw", "clusters")
PARTITIONS = (*ARRAY_PARTITIONS, "natural")  # natural: the data comes per client (synthetic's devices)
ARRAY_NAMES = ("x", "y", "x_test", "y_test")
# build_dataset keeps the digits test set fixed across run seeds, like Fashion-MNIST's.
DIGITS_SPLIT_SEED = 0
# The most clients a shared-sample population (powerlaw beyond the data) may have: 10⁷ clients
# already hold about 400 MB of indices; more is a typo, not an experiment for one machine.
MAX_SHARED_CLIENTS = 10**7
# Synthetic(α, β) materialises every device's data (about 450 samples of 60 floats each on average).
MAX_SYNTHETIC_CLIENTS = 20_000


@dataclass(eq=False, repr=False)
class ClientData:
    """One client's data: index arrays into shared base arrays (no copies)."""

    x: np.ndarray
    y: np.ndarray
    train_idx: np.ndarray
    holdout_idx: np.ndarray

    @property
    def num_examples(self) -> int:
        """Number of training examples."""
        return len(self.train_idx)

    def __repr__(self) -> str:
        return f"ClientData(train={len(self.train_idx)}, holdout={len(self.holdout_idx)})"


@dataclass(eq=False, repr=False)
class FederatedDataset:
    """A federation: base arrays, per-client index partitions, and the server's test set.

    `train_idx` and `holdout_idx` are Partitions (CSR: offsets into one index array), so a
    million clients cost their indices, not a million Python objects; a list of index arrays
    given (or assigned) in their place is converted. `groups`: each client's planted group (int64, one
    per client) where the partition planted them (``"clusters"``), else None.
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    train_idx: Partition
    holdout_idx: Partition
    num_classes: int
    groups: np.ndarray | None = None

    def __setattr__(self, key, value):
        if key in ("train_idx", "holdout_idx"):
            value = Partition.from_lists(value)
        object.__setattr__(self, key, value)

    def __post_init__(self):
        if len(self.train_idx) != len(self.holdout_idx):
            raise DataError(f"{len(self.train_idx)} training partitions but {len(self.holdout_idx)} held-out ones")
        if self.groups is not None and np.shape(self.groups) != (len(self.train_idx),):
            raise DataError(f"groups has shape {np.shape(self.groups)}, expected one group per client "
                            f"({len(self.train_idx)})")

    @property
    def num_clients(self) -> int:
        return len(self.train_idx)

    def client(self, i: int) -> ClientData:
        """Client `i`'s view: the shared arrays and its own index arrays."""
        if not 0 <= i < self.num_clients:
            raise IndexError(f"client {i} out of range for {self.num_clients} clients")
        return ClientData(self.x, self.y, self.train_idx[i], self.holdout_idx[i])

    def arrays(self) -> dict[str, np.ndarray]:
        """The big arrays by name: x, y, x_test, y_test."""
        return {"x": self.x, "y": self.y, "x_test": self.x_test, "y_test": self.y_test}

    def with_arrays(self, arrays: dict[str, np.ndarray]) -> FederatedDataset:
        """The same partitions over replacement arrays of the same shapes (e.g. shared-memory views)."""
        unknown = set(arrays) - set(ARRAY_NAMES)
        if unknown:
            raise ValueError(f"unknown array names {sorted(unknown)}; expected a subset of {list(ARRAY_NAMES)}")
        current = self.arrays()
        for k, a in arrays.items():
            if np.shape(a) != current[k].shape:
                raise DataError(f"replacement array '{k}' has shape {np.shape(a)}, expected {current[k].shape}")
        return dataclasses.replace(self, **arrays)

    def __repr__(self) -> str:
        sizes = self.train_idx.sizes()
        return (
            f"FederatedDataset({self.name!r}, clients={self.num_clients}, train={len(self.y)}, "
            f"test={len(self.y_test)}, classes={self.num_classes}, "
            f"client sizes {f'{sizes.min()}..{sizes.max()}' if len(sizes) else '-'})"
        )

    @classmethod
    def from_arrays(
        cls,
        x,
        y,
        x_test,
        y_test,
        *,
        num_clients: int,
        partition: str = "iid",
        alpha: float = 0.5,
        holdout: float = 0.1,
        seed: int = 0,
        name: str = "custom",
        num_classes: int | None = None,
        targets: str = "classes",
        clusters: int = 4,
        cluster_transform: str = "rotate",
    ) -> FederatedDataset:
        """Partition your own arrays among `num_clients` clients (x is kept as given, not copied).

        "powerlaw" with more clients than samples makes a population that shares the samples
        (`partition.powerlaw_shared`); every other partition needs a sample per client at least.
        `targets="values"`: real-valued targets (regression; `num_classes` 0), partitioned iid or powerlaw.
        `x_test` and `y_test` None: there is no central test set, and evaluation is federated (the clients'
        held-out splits, `holdout`, judge the model).
        "clusters": an iid split whose clients fall into `clusters` groups, each seeing its data (and its
        part of the test set) transformed by `cluster_transform` (fedstack.data.clusters); the transformed
        arrays are one new copy, and `groups` says each client's group.
        """
        _check_options(num_clients, partition, alpha, holdout, clusters, cluster_transform)
        x = np.asarray(x)
        if x_test is None and y_test is None:
            x_test, y_test = x[:0], np.asarray(y)[:0]
        x_test = np.asarray(x_test)
        y, y_test = _targets(y, "y", targets), _targets(y_test, "y_test", targets)
        _check_shapes(x, y, x_test, y_test)
        shared = _shares_samples(num_clients, partition, len(y))
        if targets == "values" and partition in ("dirichlet", "shards"):
            raise ConfigError("data.partition", f"{partition} splits by class; real-valued targets have none: "
                                                "use iid or powerlaw")
        if targets == "values" and partition == "clusters" and cluster_transform == "permute_labels":
            raise ConfigError("data.cluster_transform", "permute_labels permutes classes; real-valued targets "
                                                        "have none: use rotate")
        num_classes = 0 if targets == "values" else _num_classes(y, y_test, num_classes)
        if partition == "natural":
            raise ConfigError("data.partition", "'natural' needs data that is already per client: "
                                                "use FederatedDataset.from_clients")
        rng = stream_rng(seed, "partition")  # SeedSequence([seed, 1])
        parts = _split_among_clients(y, num_clients, partition, alpha, shared, rng)
        groups = None
        if partition == "clusters":  # the permutations are drawn from the same stream, after the split
            x, y, x_test, y_test, groups = planted.plant_clusters(x, y, x_test, y_test, parts, clusters,
                                                                  cluster_transform, num_classes, rng)
        train, held = partitioners.split_holdout(parts, holdout, stream_rng(seed, "holdout"))  # [seed, 2]
        return cls(name, x, y, x_test, y_test, train, held, int(num_classes), groups)

    @classmethod
    def from_clients(
        cls,
        clients: list[tuple[np.ndarray, np.ndarray]],
        test: tuple[np.ndarray, np.ndarray],
        *,
        holdout: float = 0.1,
        seed: int = 0,
        name: str = "custom",
        num_classes: int | None = None,
        targets: str = "classes",
    ) -> FederatedDataset:
        """A federation from data that is already per client: one (x, y) pair per client
        (`targets="values"`: real-valued targets, for regression)."""
        if not clients:
            raise DataError("from_clients needs at least one client")
        _check_options(len(clients), "iid", 1.0, holdout)
        x = np.concatenate([np.asarray(cx) for cx, _ in clients])
        y = _targets(np.concatenate([np.asarray(cy) for _, cy in clients]), "y", targets)
        x_test, y_test = np.asarray(test[0]), _targets(test[1], "y_test", targets)
        bounds = np.cumsum([0] + [len(cy) for _, cy in clients])
        if any(len(cx) != len(cy) for cx, cy in clients) or len(x_test) != len(y_test):
            raise DataError("each client's x and y (and the test x and y) must have the same length")
        parts = Partition(bounds, np.arange(bounds[-1], dtype=np.int64))
        train, held = partitioners.split_holdout(parts, holdout, stream_rng(seed, "holdout"))
        if targets == "values":
            return cls(name, x, y, x_test, y_test, train, held, 0)
        seen = max(int(y.max(initial=-1)), int(y_test.max(initial=-1))) + 1
        return cls(name, x, y, x_test, y_test, train, held, int(num_classes or seen))


def _check_shapes(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> None:
    """Raise DataError unless features and labels pair up and train and test samples have one shape."""
    if len(x) != len(y) or len(x_test) != len(y_test):
        raise DataError(
            f"features and labels differ in length: x {len(x)} vs y {len(y)}, "
            f"x_test {len(x_test)} vs y_test {len(y_test)}"
        )
    if x.shape[1:] != x_test.shape[1:]:
        raise DataError(f"x samples have shape {x.shape[1:]} but x_test samples {x_test.shape[1:]}")


def _shares_samples(num_clients: int, partition: str, n: int) -> bool:
    """Whether the clients share the `n` samples (powerlaw with more clients than samples), or ConfigError
    when `partition` cannot give `num_clients` clients their samples."""
    shared = partition == "powerlaw" and num_clients > n
    if num_clients > n and not shared:
        raise ConfigError("data.num_clients", f"{num_clients} clients but only {n} training samples "
                                              f"(partition = \"powerlaw\" lets clients share samples)")
    if shared and num_clients > MAX_SHARED_CLIENTS:
        raise ConfigError("data.num_clients", f"at most {MAX_SHARED_CLIENTS} clients may share the {n} samples "
                                              f"(their index alone would outgrow one machine), got {num_clients}")
    if partition == "shards" and 2 * num_clients > n:
        raise ConfigError(
            "data.num_clients",
            f"the shards partition needs 2 samples per client: {num_clients} clients but only {n} samples",
        )
    return shared


def _num_classes(y: np.ndarray, y_test: np.ndarray, num_classes: int | None) -> int:
    """`num_classes`, or the count the labels imply when None; DataError when labels go beyond it."""
    seen = max(int(y.max(initial=-1)), int(y_test.max(initial=-1))) + 1
    if num_classes is None:
        return seen
    if num_classes < seen:
        raise DataError(f"num_classes={num_classes} but labels go up to {seen - 1}")
    return num_classes


def _split_among_clients(y: np.ndarray, num_clients: int, partition: str, alpha: float, shared: bool,
                         rng: np.random.Generator) -> Partition:
    """Each client's sample indices under `partition` (an array partition: not "natural")."""
    n = len(y)
    if partition in ("iid", "clusters"):
        return partitioners.iid(n, num_clients, rng)
    if partition == "dirichlet":
        return partitioners.dirichlet(y, num_clients, alpha, rng)
    if partition == "shards":
        return partitioners.shards(y, num_clients, rng)
    if shared:
        return partitioners.powerlaw_shared(n, num_clients, rng)
    return partitioners.powerlaw(n, num_clients, rng)


def _targets(y, which: str, kind: str) -> np.ndarray:
    """Class labels (`kind` "classes"), or real-valued targets as float32, one value or a row per sample."""
    if kind == "classes":
        return _labels(y, which)
    if kind != "values":
        raise DataError(f"targets must be 'classes' or 'values', got {kind!r}")
    y = np.asarray(y)
    if y.ndim not in (1, 2) or not np.issubdtype(y.dtype, np.number):
        raise DataError(f"{which} must hold numbers, one or a row per sample, got shape {y.shape} of {y.dtype}")
    if not np.all(np.isfinite(y)):
        raise DataError(f"{which} holds a value that is not finite")
    return y.astype(np.float32, copy=False)


def _labels(y, which: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"{which} must be a 1-D array of class labels, got shape {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.mod(y, 1) == 0):
            raise DataError(f"{which} must hold integer class labels, got dtype {y.dtype}")
    y = y.astype(np.int64, copy=False)
    if y.size and y.min() < 0:
        raise DataError(f"{which} holds a negative class label {int(y.min())}")
    return y


def _check_options(num_clients, partition: str, alpha: float, holdout: float, clusters: int = 4,
                   cluster_transform: str = "rotate") -> None:
    """Raise ConfigError for bad values that need no data to detect."""
    if partition not in PARTITIONS:
        raise ConfigError("data.partition", f"unknown partition {partition!r}; choose one of {', '.join(PARTITIONS)}")
    if isinstance(num_clients, bool) or not isinstance(num_clients, (int, np.integer)) or num_clients < 1:
        raise ConfigError("data.num_clients", f"must be an integer >= 1, got {num_clients!r}")
    if partition == "dirichlet" and not (isinstance(alpha, numbers.Real) and math.isfinite(alpha) and alpha > 0):
        raise ConfigError("data.alpha", f"the dirichlet concentration must be a finite number > 0, got {alpha!r}")
    if not (isinstance(holdout, numbers.Real) and 0 <= holdout < 1):
        raise ConfigError("data.holdout", f"the held-out fraction must be in [0, 1), got {holdout!r}")
    if partition == "clusters":
        planted.check_clusters(clusters, cluster_transform, num_clients)
