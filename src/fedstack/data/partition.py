"""Partitioners: pure functions that split sample indices among clients.

Each takes sizes or labels plus a ``np.random.Generator`` and returns a `Partition` (one sorted
int64 index array per client, stored as CSR offsets into one index array). Except for
`powerlaw_shared`, every index in ``range(n)`` lands in exactly one client and no client is
empty. The same generator state always gives the same partition.
"""

from __future__ import annotations

import numpy as np

from fedstack.data.csr import Partition
from fedstack.errors import DataError

# How many times `dirichlet` redraws before giving up on the minimum client size.
DIRICHLET_MAX_TRIES = 1000
# Up to this many clients `split_holdout` draws each client's split in turn, as fedstack always has
# (so existing federations keep their bits); above, one vectorised draw for all clients.
HOLDOUT_LOOP_MAX = 2**16
# `powerlaw_shared`: a client holding more than this fraction of the pool draws its samples on its own
# (rejecting repeats among many samples would take many passes).
SHARED_BIG_FRACTION = 1 / 8


def _check_clients(n: int, num_clients: int) -> None:
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if n < num_clients:
        raise DataError(f"cannot give {num_clients} clients at least one sample each from {n} samples")


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The concatenation of arange(s, s + l) for each (s, l)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if not total:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(lengths)
    return np.arange(total, dtype=np.int64) + np.repeat(np.asarray(starts, dtype=np.int64) - (ends - lengths),
                                                        lengths)


def _sorted_runs(sizes: np.ndarray, values: np.ndarray, n: int) -> Partition:
    """Client i holds the next sizes[i] of `values` (indices below n), sorted within each client."""
    sizes = np.asarray(sizes, dtype=np.int64)
    values = np.asarray(values, dtype=np.int64)
    seg = np.repeat(np.arange(len(sizes), dtype=np.int64), sizes)
    if len(sizes) * max(n, 1) < 2**62:
        key = seg * n + values  # one sort of a single int64 key orders by client, then by index
        key.sort()
        values = key - seg * n
    else:
        values = values[np.lexsort((values, seg))]
    return Partition.from_sizes(sizes, values)


def _sorted_parts(parts) -> Partition:
    return Partition.from_lists([np.sort(np.asarray(p, dtype=np.int64)) for p in parts])


def iid(n: int, num_clients: int, rng: np.random.Generator) -> Partition:
    """IID split: shuffle the indices and deal them into near-equal parts (sizes differ by <= 1).

    The homogeneous baseline of McMahan et al. 2017, "Communication-Efficient Learning of
    Deep Networks from Decentralized Data".
    """
    _check_clients(n, num_clients)
    sizes = np.full(num_clients, n // num_clients, dtype=np.int64)
    sizes[:n % num_clients] += 1  # as np.array_split deals them
    return _sorted_runs(sizes, rng.permutation(n), n)


def dirichlet(
    labels: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator, min_size: int = 10
) -> Partition:
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
) -> Partition:
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
    by_label = np.argsort(labels, kind="stable")
    shard_sizes = np.full(num_shards, n // num_shards, dtype=np.int64)
    shard_sizes[:n % num_shards] += 1  # as np.array_split cuts them
    shard_starts = np.cumsum(shard_sizes) - shard_sizes
    dealt = rng.permutation(num_shards)  # client c gets shards dealt[c * shards_per_client:(c + 1) * ...]
    values = by_label[_ranges(shard_starts[dealt], shard_sizes[dealt])]
    sizes = shard_sizes[dealt].reshape(num_clients, shards_per_client).sum(axis=1)
    return _sorted_runs(sizes, values, n)


def _powerlaw_sizes(total: int, num_clients: int, exponent: float) -> np.ndarray:
    """`total` dealt over ranks 1..num_clients ∝ rank^-exponent, floors plus largest remainders."""
    weights = np.arange(1, num_clients + 1, dtype=np.float64) ** -float(exponent)
    share = total * weights / weights.sum()
    sizes = np.floor(share).astype(np.int64)
    short = total - int(sizes.sum())
    sizes[np.argsort(-(share - sizes), kind="stable")[:short]] += 1
    return sizes


def powerlaw(n: int, num_clients: int, rng: np.random.Generator, exponent: float = 1.5) -> Partition:
    """Quantity skew: client sizes follow a power law, size of rank r ∝ r^-exponent (r = 1, 2, ...).

    Unbalanced client sizes as in Li et al. 2020, "Federated Optimization in Heterogeneous
    Networks" (FedProx). Each client gets one sample, the other n - num_clients are shared by
    the power law (largest remainders round), ranks go to clients at random, and shuffled
    indices are dealt out in those sizes. More clients than samples: see `powerlaw_shared`.
    """
    _check_clients(n, num_clients)
    sizes = (_powerlaw_sizes(n - num_clients, num_clients, exponent) + 1)[rng.permutation(num_clients)]
    return _sorted_runs(sizes, rng.permutation(n), n)


def powerlaw_shared(n: int, num_clients: int, rng: np.random.Generator, exponent: float = 1.5,
                    min_size: int = 5) -> Partition:
    """A population of clients that share a pool of n samples: any number of clients, power-law sizes.

    For more clients than samples (a million phones over Fashion-MNIST's 60 000 images), where
    `powerlaw` cannot give each client samples of its own. Each client gets `min_size` samples
    plus its share of n by the same rank law as `powerlaw` (size of rank r ∝ r^-exponent, largest
    remainders, ranks to clients at random), so the sizes sum to num_clients · min_size + n and
    most clients hold `min_size`. Each client then draws its samples uniformly from the whole pool,
    distinct within the client and independently of every other client: a sample belongs to
    several clients (about (num_clients · min_size + n) / n each), which is what makes a population
    larger than the data possible. Fully vectorised; memory is the index array itself.
    """
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if not 1 <= min_size <= n:
        raise DataError(f"each client needs min_size = {min_size} distinct samples of a pool of {n}")
    sizes = (_powerlaw_sizes(n, num_clients, exponent) + min_size)[rng.permutation(num_clients)]
    np.minimum(sizes, n, out=sizes)  # a client cannot hold more distinct samples than the pool
    offsets = np.zeros(num_clients + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    seg = np.repeat(np.arange(num_clients, dtype=np.int64), sizes)
    big = np.flatnonzero(sizes > SHARED_BIG_FRACTION * n)
    key = seg * n + rng.integers(0, n, len(seg))
    key.sort()
    in_big = np.zeros(len(key), dtype=bool)
    in_big[_ranges(offsets[big], sizes[big])] = True
    while True:  # redraw a client's repeated samples until its samples are distinct
        again = np.flatnonzero(key[1:] == key[:-1]) + 1
        again = again[~in_big[again]]
        if not again.size:
            break
        key[again] = seg[again] * n + rng.integers(0, n, again.size)
        touched = np.unique(seg[again])
        where = _ranges(offsets[touched], sizes[touched])
        key[where] = np.sort(key[where])  # each client's keys stay within its own range of positions
    indices = key - seg * n
    for c in big.tolist():
        indices[offsets[c]:offsets[c + 1]] = np.sort(rng.choice(n, int(sizes[c]), replace=False))
    return Partition(offsets, indices)


def split_holdout(parts, fraction: float, rng: np.random.Generator) -> tuple[Partition, Partition]:
    """Per client, move a random floor(fraction * size) of its indices to a held-out split.

    `parts` is a Partition or a list of index arrays. Returns (train, holdout) Partitions, sorted
    within each client; train keeps at least one index per non-empty client since fraction < 1.
    Up to HOLDOUT_LOOP_MAX clients each client's split is a permutation drawn in turn; above, one
    vectorised draw of random keys for all indices (the same law, other bits).
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"holdout fraction must be in [0, 1), got {fraction}")
    parts = Partition.from_lists(parts)
    if len(parts) > HOLDOUT_LOOP_MAX:
        return _split_vectorised(parts, fraction, rng)
    train, holdout = [], []
    for part in parts:
        part = part.copy()  # what rng.permutation(part) would shuffle: the same draws, on a writable copy
        rng.shuffle(part)
        k = min(int(fraction * len(part) + 1e-9), max(len(part) - 1, 0))
        holdout.append(np.sort(part[:k]))
        train.append(np.sort(part[k:]))
    return Partition.from_lists(train), Partition.from_lists(holdout)


def _split_vectorised(parts: Partition, fraction: float, rng: np.random.Generator) -> tuple[Partition, Partition]:
    """`split_holdout` for many clients at once: each client holds out its indices of lowest random key."""
    sizes = parts.sizes()
    k = np.minimum((fraction * sizes + 1e-9).astype(np.int64), np.maximum(sizes - 1, 0))
    held = np.zeros(len(parts.indices), dtype=bool)
    some = np.flatnonzero(k)  # most clients of a large population hold out nothing: leave them alone
    if some.size:
        where = _ranges(parts.offsets[some], sizes[some])
        seg = np.repeat(np.arange(len(some), dtype=np.int64), sizes[some])
        order = np.argsort(seg << 32 | rng.integers(0, 2**32, len(where), dtype=np.int64))  # by client, then key
        rank = np.arange(len(where)) - np.repeat(np.cumsum(sizes[some]) - sizes[some], sizes[some])
        held[where[order]] = rank < np.repeat(k[some], sizes[some])
    # Selecting keeps each client's indices in their (sorted) order.
    return (Partition.from_sizes(sizes - k, parts.indices[~held]),
            Partition.from_sizes(k, parts.indices[held]))
