"""Clustered federated learning: k models for k groups of clients whose data differ, the groups found
by training, not given.

IFCA (Ghosh et al. 2020, "An Efficient Framework for Clustered Federated Learning"): the server keeps k
models, stacked in one vector, and sends all k to each sampled client (k× FedAvg's download, counted as
such); the client estimates its cluster as the model with the lowest loss on its training data, trains
that one and sends its update with the cluster's index; the server averages each model over the
clients that chose it. Each client's own model is its cluster's; there is no one global model
(`Strategy.one_model` False), so evaluation judges each client's own model only. IFCA's client half is
`fedstack.personal.IFCA` (with the other client halves, so devices can rebuild it by its kind).

The k models must start apart — from one initial model, every client would pick the first —, so each
starts from its own seeded initialisation (`plan.client_side`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Iterable

import numpy as np

from .client import FitConfig
from .clustering import adjusted_rand_index
from .errors import FedstackError
from .personal import IFCA, Split
from .strategy.base import ClientUpdate, Strategy, Task, WeightedSum

log = logging.getLogger(__name__)


@dataclass
class IfcaServer(Strategy):
    """IFCA's server (Ghosh et al. 2020): the k models stacked in `params`; each model moves by the
    example-weighted mean update of the clients that chose it. It records each client's last cluster
    (`clusters`, −1: not seen yet) and, where the data has planted groups (`truth`), their agreement with
    them (`cluster_ari`: the adjusted Rand index over the clients seen).

    Random models can leave one unchosen for good: on rotated images, say, two random models may each
    be nearest for two of the four groups from round 1 on, the other two never trained. With `revive` = r
    > 0 (not in the paper: k-means' fix for a dead centroid), a model no client chose for r rounds in a row
    is replaced, at most one a round, by the trained model of the client whose update lies farthest (lowest
    cosine similarity) from its cluster's mean update, in the round's most chosen cluster (of two clients
    or more); that client's group then finds it nearer than the model it shared (`cluster_revived`)."""

    personal: IFCA
    num_clients: int
    fit: FitConfig = FitConfig()
    server_lr: float = 1.0
    truth: np.ndarray | None = None
    revive: int = 0
    assignments: np.ndarray = field(default=None, repr=False)
    idle: np.ndarray = field(default=None, repr=False)  # rounds in a row each model went unchosen

    broadcasts = True  # the k models
    stateful = True  # each client's last cluster
    one_model = False
    needs_each_update = True  # each update moves the model its client chose

    def __post_init__(self):
        if not isinstance(self.personal, IFCA):
            raise FedstackError(f"IfcaServer needs an IFCA client half, got {self.personal!r}")
        if self.assignments is None:
            self.assignments = np.full(self.num_clients, -1, np.int64)
        if self.idle is None:
            self.idle = np.zeros(self.personal.clusters, np.int64)
        self._refused, self._revived = 0, None

    @property
    def models(self) -> int:
        return self.personal.clusters

    def personalization(self) -> IFCA:
        return self.personal

    def configure(self, round: int, params: np.ndarray, sampled_ids: list[int]) -> list[Task]:
        fit = replace(self.fit, personal=self.personal)
        return [Task(round, cid, fit) for cid in sampled_ids]

    def client_needs(self) -> frozenset[str]:
        return frozenset()

    def update_size(self, received: int) -> int:
        return self.personal.sent_size(received)

    def aggregate(self, round: int, params: np.ndarray, updates: Iterable[ClientUpdate]) -> np.ndarray:
        k = self.personal.clusters
        models = params.reshape(k, -1)
        sums = [WeightedSum(models.shape[1]) for _ in range(k)]
        chose: dict[int, list[ClientUpdate]] = {j: [] for j in range(k)}
        self._refused, self._revived = 0, None
        for u in updates:
            j = u.metrics.get("cluster")
            if not isinstance(j, (int, np.integer, float)) or j != int(j) or not 0 <= int(j) < k:
                # a deployed client's word is checked: an update for no cluster touches none
                log.warning("round %d: client %d names cluster %r of %d; its update is refused", round,
                            u.client_id, j, k)
                self._refused += 1
                continue
            sums[int(j)].add(u.update, u.num_examples)
            chose[int(j)].append(u)
            self.assignments[u.client_id] = int(j)
        new = models.copy()
        for j, acc in enumerate(sums):
            if acc.weight > 0:
                new[j] += np.float32(self.server_lr) * acc.mean()
        self.idle = np.where([bool(chose[j]) for j in range(k)], 0, self.idle + 1)
        dead = [j for j in range(k) if self.revive and self.idle[j] >= self.revive]
        busiest = max(range(k), key=lambda j: len(chose[j]))
        if dead and len(chose[busiest]) >= 2:
            outlier = farthest_from_mean([u.update for u in chose[busiest]])
            new[dead[0]] = models[busiest] + chose[busiest][outlier].update  # that client's trained model
            self.idle[dead[0]] = 0
            self._revived = [dead[0], chose[busiest][outlier].client_id]
        return new.reshape(-1)

    def round_figures(self) -> dict:
        figures = {"clusters": self.assignments.tolist(), "cluster_refused": self._refused}
        if self._revived is not None:
            figures["cluster_revived"] = self._revived  # [the model revived, the client whose model it became]
        seen = self.assignments >= 0
        if self.truth is not None and seen.any():
            figures["cluster_ari"] = adjusted_rand_index(self.truth[seen], self.assignments[seen])
        return figures

    def state(self) -> dict[str, np.ndarray]:
        return {"assignments": self.assignments.copy(), "idle": self.idle.copy()}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        if "assignments" in state:
            self.assignments = state["assignments"].astype(np.int64).copy()
        if "idle" in state:
            self.idle = state["idle"].astype(np.int64).copy()


def ifca(clusters: int, model_size: int) -> IFCA:
    """IFCA's client half for k = `clusters` models of `model_size` parameters each."""
    return IFCA(Split(clusters * model_size), clusters=clusters)


def farthest_from_mean(updates: list[np.ndarray]) -> int:
    """The index of the update least similar (cosine) to the mean of `updates` (ties: the first)."""
    stacked = np.stack(updates).astype(np.float64)
    mean = stacked.mean(axis=0)
    norms = np.linalg.norm(stacked, axis=1) * (np.linalg.norm(mean) or 1.0)
    return int(np.argmin(stacked @ mean / np.where(norms > 0, norms, 1.0)))


def complete_linkage_bipartition(similarity: np.ndarray) -> np.ndarray:
    """Two groups of the items whose pairwise `similarity` is given, by agglomerative clustering with
    complete linkage on the distance −similarity, stopped at two clusters (as Sattler et al.'s CFL code
    does): the largest cross-group similarity is kept low. Returns a 0/1 label per item (item 0 in group 0)."""
    n = len(similarity)
    groups = [[i] for i in range(n)]
    distance = -np.asarray(similarity, np.float64)
    while len(groups) > 2:
        best, pair = np.inf, (0, 1)
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                d = distance[np.ix_(groups[a], groups[b])].max()  # complete linkage: the farthest pair
                if d < best:
                    best, pair = d, (a, b)
        a, b = pair
        groups[a] = groups[a] + groups[b]
        del groups[b]
    labels = np.zeros(n, np.int64)
    labels[groups[1]] = 1
    return labels if labels[0] == 0 else 1 - labels


def cosine_similarities(updates: np.ndarray) -> np.ndarray:
    """The pairwise cosine similarity of the rows of `updates` (a zero row is similar to nothing)."""
    norms = np.linalg.norm(updates, axis=1)
    unit = updates / np.where(norms > 0, norms, 1.0)[:, None]
    return unit @ unit.T


@dataclass
class CflServer(Strategy):
    """Clustered Federated Learning (Sattler et al. 2021, "Clustered Federated Learning: Model-Agnostic
    Distributed Multitask Optimization Under Privacy Constraints", Algorithm 1). Clients start in one
    cluster; each cluster runs FedAvg on its own model (stacked in `params`, each client receiving only its
    cluster's: `sends_own_model`). When a cluster's FedAvg stalls — the norm of its weighted mean update
    falls below `eps1` while some member's update is still longer than `eps2` — its members are split in
    two by the cosine similarity of their updates (complete-linkage bipartition, which keeps the largest
    similarity across the two parts small), and each part continues from the cluster's model. The number
    of clusters is not given.

    A split compares the updates of all the cluster's members, so each round must hear from every client
    (`server.clients_per_round` = every client; a round that misses some member of a cluster does not
    split it). No split before round `warmup`, and none of a cluster of `min_size` clients or fewer."""

    num_clients: int
    model_size: int
    fit: FitConfig = FitConfig()
    eps1: float = 0.4
    eps2: float = 1.6
    warmup: int = 20
    min_size: int = 2
    server_lr: float = 1.0
    truth: np.ndarray | None = None
    cluster_of: np.ndarray = field(default=None, repr=False)

    broadcasts = True  # the stacked cluster models
    stateful = True  # which cluster each client is in
    one_model = False
    needs_each_update = True  # a split compares each member's update
    sends_own_model = True

    def __post_init__(self):
        if self.cluster_of is None:
            self.cluster_of = np.zeros(self.num_clients, np.int64)
        self._figures: dict = {}

    @property
    def models(self) -> int:
        return int(self.cluster_of.max()) + 1

    def model_of(self, client_id: int) -> tuple[int, int]:
        j = int(self.cluster_of[client_id])
        return j * self.model_size, (j + 1) * self.model_size

    def configure(self, round: int, params: np.ndarray, sampled_ids: list[int]) -> list[Task]:
        return [Task(round, cid, self.fit, span=self.model_of(cid)) for cid in sampled_ids]

    def update_size(self, received: int) -> int:
        return self.model_size

    def aggregate(self, round: int, params: np.ndarray, updates: Iterable[ClientUpdate]) -> np.ndarray:
        models = params.reshape(-1, self.model_size).copy()
        by_cluster: dict[int, list[ClientUpdate]] = {}
        for u in updates:  # a split needs every member's update: they are held for the round
            by_cluster.setdefault(int(self.cluster_of[u.client_id]), []).append(u)
        splits, norms = [], []
        for j, members in sorted(by_cluster.items()):
            acc = WeightedSum(self.model_size)
            for u in members:
                acc.add(u.update, u.num_examples)
            mean = acc.mean()
            models[j] += np.float32(self.server_lr) * mean
            everyone = np.flatnonzero(self.cluster_of == j)
            mean_norm = float(np.linalg.norm(mean))
            max_norm = max(float(np.linalg.norm(u.update)) for u in members)
            norms.append([j, mean_norm, max_norm])
            if (round >= self.warmup and len(everyone) > self.min_size and len(members) == len(everyone)
                    and mean_norm < self.eps1 and max_norm > self.eps2):
                rows = np.stack([u.update for u in members])
                halves = complete_linkage_bipartition(cosine_similarities(rows))
                splits.append((j, [u.client_id for u, half in zip(members, halves) if half == 1]))
        for j, leaving in splits:  # the leaving part starts from the cluster's model, as a new cluster
            self.cluster_of[leaving] = len(models)
            models = np.concatenate([models, models[j:j + 1]])
            log.info("round %d: cluster %d split; %d clients form cluster %d", round, j, len(leaving), len(models) - 1)
        # [cluster, ‖mean update‖, max ‖update‖] of each cluster heard from: what cfl_eps1 and cfl_eps2 compare
        self._figures = {"clusters": self.cluster_of.tolist(), "cluster_splits": len(splits), "cluster_norms": norms}
        if self.truth is not None:
            self._figures["cluster_ari"] = adjusted_rand_index(self.truth, self.cluster_of)
        return models.reshape(-1)

    def round_figures(self) -> dict:
        return dict(self._figures)

    def state(self) -> dict[str, np.ndarray]:
        return {"cluster_of": self.cluster_of.copy()}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        if "cluster_of" in state:
            self.cluster_of = state["cluster_of"].astype(np.int64).copy()
