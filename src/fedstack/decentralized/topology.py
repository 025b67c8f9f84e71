"""Communication graphs of decentralized training and their gossip weights (pure functions).

A topology is a symmetric boolean adjacency matrix [n, n] without self-loops: `adjacency[i, j]`
says that nodes i and j exchange models. `metropolis_hastings` turns it into the mixing matrix W.

Randomness: the random graphs (`random_regular`, `erdos_renyi`) take a NumPy generator; in a
run, `build_topology` draws it from `topology_rng(seed)`, the "partition" stream of the run seed
keyed by `stable_hash("topology")`. The graph is part of how the federation is laid out, like the
data partition, yet independent of it: the same seed gives the same data split and the same graph,
and changing the topology never changes the split.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ConfigError
from ..seeding import rng, stable_hash

TOPOLOGIES = ("ring", "torus", "random_regular", "erdos_renyi", "complete")
# Attempts of the pairing algorithm before random_regular gives up (each succeeds with high probability).
REGULAR_TRIES = 100


def topology_rng(seed: int) -> np.random.Generator:
    """The generator random graphs are drawn from: stream "partition", key stable_hash("topology")."""
    return rng(seed, "partition", stable_hash("topology"))


def _empty(n: int) -> np.ndarray:
    if n < 1:
        raise ValueError(f"a topology needs at least one node, got n = {n}")
    return np.zeros((n, n), dtype=bool)


def _link(adjacency: np.ndarray, i, j) -> np.ndarray:
    """Set edges i–j (arrays of endpoints) both ways and clear the diagonal."""
    adjacency[i, j] = True
    adjacency[j, i] = True
    np.fill_diagonal(adjacency, False)
    return adjacency


def ring(n: int) -> np.ndarray:
    """Node i talks to i − 1 and i + 1 (mod n): degree 2 (n = 2: one edge; n = 1: none)."""
    a = _empty(n)
    i = np.arange(n)
    return _link(a, i, (i + 1) % n)


def torus_shape(n: int) -> tuple[int, int]:
    """(r, c) with r·c = n and r the largest divisor of n that is ≤ √n.

    A prime n has r = 1: the "torus" is a 1 × n grid, i.e. a ring.
    """
    r = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    return r, n // r


def torus(n: int) -> np.ndarray:
    """A 2-D wrap-around grid of r × c nodes (see `torus_shape`), node k at row k // c, column k % c.

    Each node talks to its left, right, upper and lower neighbours: degree 4 when r, c ≥ 3. A side
    of length 2 makes "up" and "down" (or "left" and "right") the same node, so degree 3 (2 × 2: 2);
    a side of length 1 (prime n) makes the torus a ring of degree 2.
    """
    a = _empty(n)
    r, c = torus_shape(n)
    k = np.arange(n)
    row, col = k // c, k % c
    _link(a, k, row * c + (col + 1) % c)  # right
    return _link(a, k, ((row + 1) % r) * c + col)  # down


def complete(n: int) -> np.ndarray:
    """Every node talks to every other node: degree n − 1."""
    a = ~_empty(n)
    np.fill_diagonal(a, False)
    return a


def erdos_renyi(n: int, p: float, generator: np.random.Generator) -> np.ndarray:
    """G(n, p): each of the n(n − 1)/2 possible edges is present with probability p, independently.

    May be disconnected (check with `is_connected`; `build_topology` refuses such a graph).
    """
    if not 0 <= p <= 1:
        raise ValueError(f"edge probability p must lie in [0, 1], got {p}")
    a = _empty(n)
    i, j = np.triu_indices(n, k=1)
    keep = generator.random(len(i)) < p
    return _link(a, i[keep], j[keep])


def random_regular(n: int, d: int, generator: np.random.Generator) -> np.ndarray:
    """A uniformly-ish random simple d-regular graph (needs d < n and d·n even).

    The pairing algorithm of Steger & Wormald (1999), as networkx implements it: shuffle the n·d
    "stubs" (d per node), pair them off, keep every pair that makes a new edge between different
    nodes, and repeat with the stubs left over; start again when no suitable pair remains.
    d = 2 may give several disjoint cycles: check with `is_connected`.
    """
    if d < 0 or d >= n:
        raise ValueError(f"a {d}-regular graph on {n} nodes needs 0 <= d < n")
    if (d * n) % 2:
        raise ValueError(f"a {d}-regular graph on {n} nodes needs d·n even")
    for _ in range(REGULAR_TRIES):
        edges = _try_regular(n, d, generator)
        if edges is not None:
            a = _empty(n)
            if edges:
                i, j = np.array(sorted(edges)).T
                _link(a, i, j)
            return a
    raise ValueError(f"could not draw a {d}-regular graph on {n} nodes in {REGULAR_TRIES} tries")


def _try_regular(n: int, d: int, generator: np.random.Generator) -> set[tuple[int, int]] | None:
    edges: set[tuple[int, int]] = set()
    stubs = np.repeat(np.arange(n), d)
    while len(stubs):
        stubs = stubs[generator.permutation(len(stubs))]
        left: list[int] = []
        for s1, s2 in zip(stubs[0::2].tolist(), stubs[1::2].tolist()):
            pair = (min(s1, s2), max(s1, s2))
            if s1 != s2 and pair not in edges:
                edges.add(pair)
            else:
                left += [s1, s2]
        if left and not _suitable(edges, set(left)):
            return None
        stubs = np.array(sorted(left), dtype=np.int64)  # sorted: the next shuffle alone decides the order
    return edges


def _suitable(edges: set[tuple[int, int]], nodes: set[int]) -> bool:
    """Whether two of `nodes` (which still need edges) can still be joined."""
    ordered = sorted(nodes)
    return any((u, v) not in edges for k, u in enumerate(ordered) for v in ordered[k + 1:])


def is_connected(adjacency: np.ndarray) -> bool:
    """Whether every node reaches every other (breadth-first search from node 0)."""
    n = len(adjacency)
    if n <= 1:
        return True
    seen = np.zeros(n, dtype=bool)
    seen[0] = True
    frontier = np.array([0])
    while len(frontier):
        reached = adjacency[frontier].any(axis=0) & ~seen
        seen |= reached
        frontier = np.flatnonzero(reached)
    return bool(seen.all())


def metropolis_hastings(adjacency: np.ndarray) -> np.ndarray:
    """The Metropolis–Hastings mixing matrix of a graph (float64 [n, n]).

    W_ij = 1 / (1 + max(deg_i, deg_j)) for each edge i–j, 0 for non-edges, W_ii = 1 − Σ_j W_ij.
    Symmetric, non-negative and doubly stochastic for any undirected graph; on a connected graph
    repeated mixing X ← W X converges to the average.
    """
    a = np.asarray(adjacency, dtype=bool)
    deg = a.sum(axis=1)
    w = np.where(a, 1.0 / (1.0 + np.maximum(deg[:, None], deg[None, :])), 0.0)
    np.fill_diagonal(w, 1.0 - w.sum(axis=1))
    return w


def spectral_gap(w: np.ndarray) -> float:
    """1 − |λ₂(W)|, the second-largest eigenvalue modulus of a symmetric W: how fast gossip mixes."""
    if len(w) <= 1:
        return 1.0
    moduli = np.sort(np.abs(np.linalg.eigvalsh(w)))
    return float(1.0 - moduli[-2])


def build_topology(section, n: int, seed: int) -> np.ndarray:
    """The adjacency a `[decentralized]` config section names, for `n` nodes; refuses a disconnected one.

    `section` has `topology`, `degree` (random_regular) and `p` (erdos_renyi). Random graphs come from
    `topology_rng(seed)`. A graph that is not connected (small p, degree 1, or d = 2 drawing disjoint
    cycles) would train separate models that never meet: a ConfigError before any training.
    """
    name = section.topology
    if name == "ring":
        adjacency = ring(n)
    elif name == "torus":
        adjacency = torus(n)
    elif name == "complete":
        adjacency = complete(n)
    elif name == "erdos_renyi":
        adjacency = erdos_renyi(n, section.p, topology_rng(seed))
    elif name == "random_regular":
        d = section.degree
        if d >= n or (d * n) % 2:
            raise ConfigError("decentralized.degree", f"a {d}-regular graph on {n} nodes (data.num_clients) "
                              f"needs degree < {n} and degree·nodes even")
        try:
            adjacency = random_regular(n, d, topology_rng(seed))
        except ValueError as exc:
            raise ConfigError("decentralized.degree", str(exc)) from None
    else:
        raise ConfigError("decentralized.topology", f"unknown topology {name!r} ({' | '.join(TOPOLOGIES)})")
    if not is_connected(adjacency):
        detail = {"erdos_renyi": f"; raise decentralized.p (now {section.p}) or change the seed",
                  "random_regular": f"; raise decentralized.degree (now {section.degree}) or change the seed"}
        raise ConfigError("decentralized.topology", f"the {name} graph on {n} nodes is disconnected: "
                          f"its parts would never exchange models{detail.get(name, '')}")
    return adjacency
