"""Partitioners: pure functions that split sample indices among clients.

Each takes sizes or labels plus a ``np.random.Generator`` and returns one sorted int64
index array per client. Every index in ``range(n)`` lands in exactly one client and no
client is empty. The same generator state always gives the same partition.
"""

from __future__ import annotations

import numpy as np

from fedstack.errors import DataError

# How many times `dirichlet` redraws before giving up on the minimum client size.
DIRICHLET_MAX_TRIES = 1000


def _check_clients(n: int, num_clients: int) -> None:
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if n < num_clients:
        raise DataError(f"cannot give {num_clients} clients at least one sample each from {n} samples")


def _sorted_parts(parts) -> list[np.ndarray]:
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def iid(n: int, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """IID split: shuffle the indices and deal them into near-equal parts (sizes differ by <= 1).

    The homogeneous baseline of McMahan et al. 2017, "Communication-Efficient Learning of
    Deep Networks from Decentralized Data".
    """
    _check_clients(n, num_clients)
    return _sorted_parts(np.array_split(rng.permutation(n), num_clients))


def dirichlet(
    labels: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator, min_size: int = 10
) -> list[np.ndarray]:
    """Label skew: for each class, split its samples among clients in proportions ~ Dir(alpha).

    Hsu, Qi & Brown 2019, "Measuring the Effects of Non-Identical Data Distribution for
    Federated Visual Classification", in the per-class form of Yurochkin et al. 2019 and
    Li et al. 2022 (NIID-Bench): small alpha gives clients few classes, large alpha tends to
    IID. As in NIID-Bench, a client already holding n / num_clients samples gets no share of
    the classes still to be dealt. The draw is repeated until every client has at least
    ``min(min_size, n // num_clients)`` samples (and at least one); after
    ``DIRICHLET_MAX_TRIES`` draws a DataError says to raise alpha or lower num_clients.
    """
    labels = np.asarray(labels)
    n = len(labels)
    _check_clients(n, num_clients)
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    need = max(1, min(min_size, n // num_clients))
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    cap = n / num_clients
    for _ in range(DIRICHLET_MAX_TRIES):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        sizes = np.zeros(num_clients, dtype=np.int64)
        for idx in by_class:
            idx = rng.permutation(idx)
            # Dir(alpha) over the clients still under the cap: the same law as drawing over all
            # clients and renormalizing the open ones, without underflow to all-zero weights.
            open_ = sizes < cap
            p = np.zeros(num_clients)
            p[open_] = rng.dirichlet(np.full(int(open_.sum()), alpha))
            cuts = (np.cumsum(p)[:-1] * len(idx)).astype(np.int64)
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].append(chunk)
                sizes[k] += len(chunk)
        if sizes.min() >= need:
            return _sorted_parts(np.concatenate(p) for p in parts)
    raise DataError(
        f"dirichlet partition with alpha={alpha} left some of {num_clients} clients with fewer than "
        f"{need} samples in {DIRICHLET_MAX_TRIES} draws; use a larger alpha or fewer clients"
    )


def shards(
    labels: np.ndarray, num_clients: int, rng: np.random.Generator, shards_per_client: int = 2
) -> list[np.ndarray]:
    """Pathological non-IID: sort by label, cut into shards, give each client a few at random.

    McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
    Decentralized Data". The ``num_clients * shards_per_client`` shards differ in size by at
    most one when n does not divide evenly, so every sample still lands exactly once.
    """
    labels = np.asarray(labels)
    n = len(labels)
    num_shards = num_clients * shards_per_client
    if shards_per_client < 1:
        raise ValueError(f"shards_per_client must be >= 1, got {shards_per_client}")
    _check_clients(n, num_clients)
    if n < num_shards:
        raise DataError(f"cannot cut {n} samples into {num_shards} non-empty shards")
    pieces = np.array_split(np.argsort(labels, kind="stable"), num_shards)
    order = rng.permutation(num_shards).reshape(num_clients, shards_per_client)
    return _sorted_parts(np.concatenate([pieces[s] for s in row]) for row in order)


def powerlaw(n: int, num_clients: int, rng: np.random.Generator, exponent: float = 1.5) -> list[np.ndarray]:
    """Quantity skew: client sizes follow a power law, size of rank r ∝ r^-exponent (r = 1, 2, ...).

    Unbalanced client sizes as in Li et al. 2020, "Federated Optimization in Heterogeneous
    Networks" (FedProx). Each client gets one sample, the other n - num_clients are shared by
    the power law (largest remainders round), ranks go to clients at random, and shuffled
    indices are dealt out in those sizes.
    """
    _check_clients(n, num_clients)
    weights = np.arange(1, num_clients + 1, dtype=np.float64) ** -float(exponent)
    share = (n - num_clients) * weights / weights.sum()
    sizes = np.floor(share).astype(np.int64)
    short = (n - num_clients) - int(sizes.sum())
    sizes[np.argsort(-(share - sizes), kind="stable")[:short]] += 1
    sizes = (sizes + 1)[rng.permutation(num_clients)]
    return _sorted_parts(np.split(rng.permutation(n), np.cumsum(sizes)[:-1]))


def split_holdout(
    parts: list[np.ndarray], fraction: float, rng: np.random.Generator
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per client, move a random floor(fraction * size) of its indices to a held-out split.

    Returns (train, holdout), each a list of sorted int64 arrays; train keeps at least one
    index per non-empty client since fraction < 1.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"holdout fraction must be in [0, 1), got {fraction}")
    train, holdout = [], []
    for part in parts:
        part = rng.permutation(np.asarray(part, dtype=np.int64))
        k = min(int(fraction * len(part) + 1e-9), max(len(part) - 1, 0))
        holdout.append(np.sort(part[:k]))
        train.append(np.sort(part[k:]))
    return train, holdout
