"""Planted clusters: k groups of clients that see differently transformed data.

The benchmark of clustered federated learning: a federation whose clients fall into groups that no
single model serves well, so that an algorithm which finds the groups (IFCA, Ghosh et al. 2020,
"An Efficient Framework for Clustered Federated Learning"; CFL, Sattler et al. 2020) can be scored
against the truth. Examples are dealt IID; group g then sees its inputs rotated by 90°·g (IFCA's
rotated MNIST) or its labels mapped through a permutation of the classes of its own (group 0 keeps
the identity). Pure functions on arrays; every random choice comes from the generator passed in.
"""

from __future__ import annotations

import numpy as np

from fedstack.data.csr import Partition
from fedstack.errors import ConfigError

CLUSTER_TRANSFORMS = ("rotate", "permute_labels")
# rotate: quarter turns 0, 1, 2, 3 are the only distinct rotations that keep a square image on its grid.
MAX_ROTATIONS = 4


def contiguous_groups(n: int, k: int) -> np.ndarray:
    """The group of each of n items cut into k runs of near-equal length: item i is in group i·k // n."""
    return np.arange(n, dtype=np.int64) * k // max(n, 1)


def label_permutations(k: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """(k, num_classes) int64: row g maps a class to group g's label; row 0 is the identity."""
    rows = [np.arange(num_classes, dtype=np.int64)]
    rows += [rng.permutation(num_classes).astype(np.int64) for _ in range(1, k)]
    return np.stack(rows)


def rotate(x: np.ndarray, quarter_turns: int) -> np.ndarray:
    """Images (…, H, W) turned by 90°·quarter_turns counter-clockwise (a view, as np.rot90 gives)."""
    return np.rot90(x, quarter_turns, axes=(-2, -1))


def transform_groups(x: np.ndarray, y: np.ndarray, sample_group: np.ndarray, transform: str,
                     permutations: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) with each sample transformed as its group says (`sample_group`, one per sample).

    One new array for what changes (x for "rotate", y for "permute_labels"); the other is returned
    as given, not copied. Group g's samples are rotated g quarter turns, or their labels mapped
    through ``permutations[g]``.
    """
    if transform == "permute_labels":
        return x, permutations[sample_group, y]
    if transform != "rotate":
        raise ValueError(f"unknown cluster transform {transform!r}; expected one of {CLUSTER_TRANSFORMS}")
    out = x.copy()
    for g in range(1, int(sample_group.max(initial=0)) + 1):
        idx = np.flatnonzero(sample_group == g)
        out[idx] = rotate(x[idx], g)
    return out, y


def check_clusters(k: int, transform: str, num_clients: int, sample_shape: tuple[int, ...] | None = None) -> None:
    """ConfigError naming the key unless `k` groups of `transform` fit `num_clients` clients (and the
    samples, when their shape is given: rotate needs square images, the last two axes)."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= num_clients:
        raise ConfigError("data.clusters", f"must be an integer from 1 to data.num_clients = {num_clients} "
                                           f"(each group needs a client), got {k!r}")
    if transform not in CLUSTER_TRANSFORMS:
        raise ConfigError("data.cluster_transform", f"unknown transform {transform!r}; choose one of "
                                                    f"{', '.join(CLUSTER_TRANSFORMS)}")
    if transform == "rotate" and k > MAX_ROTATIONS:
        raise ConfigError("data.clusters", f"rotate makes at most {MAX_ROTATIONS} groups (0°, 90°, 180°, 270°), "
                                           f"got {k}; use permute_labels for more")
    if transform == "rotate" and sample_shape is not None and (len(sample_shape) < 2
                                                               or sample_shape[-1] != sample_shape[-2]):
        raise ConfigError("data.cluster_transform", f"rotate turns square images (…, H, W with H = W); these "
                                                    f"samples have shape {tuple(sample_shape)}: use permute_labels")


def plant_clusters(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, parts: Partition, k: int,
                   transform: str, num_classes: int, rng: np.random.Generator):
    """The federation of `parts` with k planted groups: (x, y, x_test, y_test, groups).

    Client i is in group i·k // num_clients (`groups`, int64, one per client); each training sample
    takes its client's group, so its transformed copy sits at its own index and the partitions stay
    as they are (every sample has one client: `parts` must not share samples). The test set is cut
    into k runs, run g transformed as group g, so one global model is judged on the mixture.
    Group permutations (permute_labels) are drawn from `rng`.
    """
    num_clients = len(parts)
    check_clusters(k, transform, num_clients, x.shape[1:])
    groups = contiguous_groups(num_clients, k)
    sample_group = np.zeros(len(y), dtype=np.int64)
    sample_group[parts.indices] = groups[parts.segments()]
    permutations = label_permutations(k, num_classes, rng) if transform == "permute_labels" else None
    x, y = transform_groups(x, y, sample_group, transform, permutations)
    x_test, y_test = transform_groups(x_test, y_test, contiguous_groups(len(y_test), k), transform, permutations)
    return x, y, x_test, y_test, groups
