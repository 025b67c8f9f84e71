"""Clustered federated learning: k models for k groups of clients whose data differ, the groups found
by training, not given.

IFCA (Ghosh et al. 2020, "An Efficient Framework for Clustered Federated Learning"): the server keeps k
models, stacked in one vector, and sends all k to each sampled client (k× FedAvg's download, counted as
such); the client estimates its cluster as the model with the lowest loss on its training data, trains
that one and sends its update with the cluster's index; the server averages each model over the
clients that chose it. Each client's own model is its cluster's; there is no one global model
(`Strategy.one_model` False), so evaluation judges each client's own model only.

The k models must start apart — from one initial model, every client would pick the first —, so each
starts from its own seeded initialisation (`plan.client_side`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Iterable

import numpy as np

from .client import FitConfig, FitResult
from .clustering import adjusted_rand_index
from .errors import FedstackError
from .personal import Personalization, Split
from .strategy.base import ClientUpdate, Strategy, Task, WeightedSum

log = logging.getLogger(__name__)


def cluster_losses(trainer, models: np.ndarray, data) -> np.ndarray:
    """Each model's mean loss on the client's training split (IFCA's cluster-identity estimate)."""
    idx = data.train_idx
    x, y = data.x[idx], data.y[idx]
    losses = []
    for model in models:
        result = trainer.evaluate(model, x, y)
        losses.append(result.loss if result.examples else 0.0)
    return np.array(losses)


@dataclass(frozen=True)
class IFCA(Personalization):
    """IFCA's client (Ghosh et al. 2020, Algorithm 2, model averaging): pick the cluster whose model has
    the lowest loss on the training split (ties: the lowest index), train it with the task's local work,
    send its update; the cluster's index goes with the fit metrics ("cluster"). `split`: the k stacked
    models, all shared."""

    clusters: int = 2

    def models(self, received: np.ndarray) -> np.ndarray:
        return received.reshape(self.clusters, -1)

    def choose(self, trainer, received: np.ndarray, data) -> int:
        return int(np.argmin(cluster_losses(trainer, self.models(received), data)))

    def own_model(self, trainer, received: np.ndarray, data, personal) -> np.ndarray:
        return self.models(received)[self.choose(trainer, received, data)]

    def fit(self, trainer, received: np.ndarray, data, config: FitConfig, personal) -> FitResult:
        j = self.choose(trainer, received, data)
        result = trainer.fit(self.models(received)[j], data, config)
        return FitResult(result.update, result.num_examples, {**result.metrics, "cluster": j},
                         state=np.array([j], np.float32))


@dataclass
class IfcaServer(Strategy):
    """IFCA's server (Ghosh et al. 2020): the k models stacked in `params`; each model moves by the
    example-weighted mean update of the clients that chose it. It records each client's last cluster
    (`clusters`, −1: not seen yet) and, where the data has planted groups (`truth`), their agreement with
    them (`cluster_ari`: the adjusted Rand index over the clients seen)."""

    personal: IFCA
    num_clients: int
    fit: FitConfig = FitConfig()
    server_lr: float = 1.0
    truth: np.ndarray | None = None
    assignments: np.ndarray = field(default=None, repr=False)

    broadcasts = True  # the k models
    stateful = True  # each client's last cluster
    one_model = False

    def __post_init__(self):
        if not isinstance(self.personal, IFCA):
            raise FedstackError(f"IfcaServer needs an IFCA client half, got {self.personal!r}")
        if self.assignments is None:
            self.assignments = np.full(self.num_clients, -1, np.int64)
        self._refused = 0

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
        return received // self.personal.clusters

    def aggregate(self, round: int, params: np.ndarray, updates: Iterable[ClientUpdate]) -> np.ndarray:
        k = self.personal.clusters
        models = params.reshape(k, -1)
        sums = [WeightedSum(models.shape[1]) for _ in range(k)]
        self._refused = 0
        for u in updates:
            j = u.metrics.get("cluster")
            if not isinstance(j, (int, np.integer, float)) or j != int(j) or not 0 <= int(j) < k:
                # a deployed client's word is checked: an update for no cluster touches none
                log.warning("round %d: client %d names cluster %r of %d; its update is refused", round,
                            u.client_id, j, k)
                self._refused += 1
                continue
            sums[int(j)].add(u.update, u.num_examples)
            self.assignments[u.client_id] = int(j)
        new = models.copy()
        for j, acc in enumerate(sums):
            if acc.weight > 0:
                new[j] += np.float32(self.server_lr) * acc.mean()
        return new.reshape(-1)

    def round_figures(self) -> dict:
        figures = {"clusters": self.assignments.tolist(), "cluster_refused": self._refused}
        seen = self.assignments >= 0
        if self.truth is not None and seen.any():
            figures["cluster_ari"] = adjusted_rand_index(self.truth[seen], self.assignments[seen])
        return figures

    def state(self) -> dict[str, np.ndarray]:
        return {"assignments": self.assignments.copy()}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        if "assignments" in state:
            self.assignments = state["assignments"].astype(np.int64).copy()


def ifca(clusters: int, model_size: int) -> IFCA:
    """IFCA's client half for k = `clusters` models of `model_size` parameters each."""
    return IFCA(Split(clusters * model_size), clusters=clusters)
