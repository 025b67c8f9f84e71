"""Gossip steps on stacked models (pure NumPy): D-PSGD averaging, node failures, CHOCO-SGD.

`X` is float32 [n, P]: row i is node i's flat model. `W` is a symmetric, doubly stochastic
mixing matrix [n, n] (`topology.metropolis_hastings`). Sums run in float64 over each row's
non-zero weights in a fixed order (ascending node id), so the result does not depend on BLAS
threads, and memory stays one float64 row whatever the number of nodes.
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def _rows(W: np.ndarray):
    """(i, its neighbours j ≠ i with W_ij ≠ 0, their weights) for every row."""
    for i in range(len(W)):
        nz = np.flatnonzero(W[i])
        nz = nz[nz != i]
        yield i, nz, W[i, nz]


def mix(X: np.ndarray, W: np.ndarray) -> np.ndarray:
    """One D-PSGD averaging step: a new X ← W X (row i = Σ_j W_ij x_j), float32.

    For a row whose only weight is its own (an isolated or silent node), the model is kept bit for bit.
    """
    X = np.asarray(X, dtype=np.float32)
    out = np.empty_like(X)
    for i, nz, w in _rows(W):
        if not len(nz) and W[i, i] == 1.0:
            out[i] = X[i]
            continue
        acc = np.float64(W[i, i]) * X[i]
        for j, wij in zip(nz, w):
            acc += np.float64(wij) * X[j]
        out[i] = acc
    return out


def live_weights(W: np.ndarray, alive: np.ndarray) -> np.ndarray:
    """W for a round in which only the nodes with `alive[i]` take part.

    A silent node neither sends nor mixes: every weight between it and another node is moved onto
    the diagonal of both rows. Dead rows become identity rows (the node keeps its model); live rows
    still sum to 1 over live nodes; W stays symmetric and doubly stochastic, so mixing still
    preserves the average, over the live nodes as over all.
    """
    alive = np.asarray(alive, dtype=bool)
    out = np.where(alive[:, None] & alive[None, :], W, 0.0)
    np.fill_diagonal(out, 0.0)
    np.fill_diagonal(out, 1.0 - out.sum(axis=1))
    return out


def consensus_distance(X: np.ndarray) -> float:
    """mean_i ‖x_i − x̄‖² (float64): 0 when every node holds the same model."""
    X = np.asarray(X)
    if not len(X):
        return 0.0
    mean = X.mean(axis=0, dtype=np.float64)
    return float(sum(np.square(X[i] - mean).sum() for i in range(len(X))) / len(X))


def average(X: np.ndarray) -> np.ndarray:
    """x̄, the plain average of the nodes' models (float64 sum, float32 result)."""
    return np.asarray(X).mean(axis=0, dtype=np.float64).astype(np.float32)


def choco_gossip(X: np.ndarray, X_hat: np.ndarray, W: np.ndarray, gamma: float,
                 Q: Callable[[np.ndarray, int], np.ndarray], alive: np.ndarray | None = None) -> None:
    """CHOCO-SGD's gossip step (Algorithm 1 of Koloskova et al. 2019), in place on X and X_hat.

    Each live node i sends q_i = Q(x_i − x̂_i, i) (`Q(v, i)`: node i's message compressed and
    decompressed); everyone updates its copy of i's public model x̂_i += q_i; then each live node
    moves x_i += γ Σ_j W_ij (x̂_j − x̂_i) over its live neighbours (`live_weights`). Silent nodes send
    nothing (their x̂ stays) and keep their x. With W symmetric and doubly stochastic, Σ_i x_i is
    unchanged, whatever Q does; with Q = identity and γ = 1 the step is D-PSGD's X ← W X.
    """
    n = len(X)
    alive = np.ones(n, dtype=bool) if alive is None else np.asarray(alive, dtype=bool)
    for i in np.flatnonzero(alive):
        q = np.asarray(Q(X[i] - X_hat[i], int(i)), dtype=np.float32)
        if q.shape != X[i].shape:
            raise ValueError(f"compressor returned shape {q.shape} for node {i}, expected {X[i].shape}")
        X_hat[i] += q
    weights = live_weights(W, alive) if not alive.all() else W
    for i, nz, w in _rows(weights):
        if not len(nz):
            continue
        acc = np.zeros(X.shape[1], dtype=np.float64)
        for j, wij in zip(nz, w):
            acc += np.float64(wij) * (X_hat[j] - X_hat[i])
        X[i] += np.float32(gamma) * acc.astype(np.float32)
