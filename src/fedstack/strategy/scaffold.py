"""SCAFFOLD: control variates that correct client drift."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable

import numpy as np

from ..client import FitConfig
from .base import ClientUpdate, Strategy, Task, WeightedSum, same_work


def scaffold_step(params: np.ndarray, control: np.ndarray, delta_y: np.ndarray, delta_c_sum: np.ndarray,
                  num_clients: int, server_lr: float) -> tuple[np.ndarray, np.ndarray]:
    """The server step of SCAFFOLD: x ← x + η_g·Δy; c ← c + Σᵢ Δcᵢ / N. Returns (params, control).

    Δy is the mean of the sampled clients' model updates and Σᵢ Δcᵢ the sum of their
    control-variate updates; N is the number of clients in the federation, so c stays the
    mean of all clients' control variates (Karimireddy et al. 2020, Algorithm 1, line 17).
    """
    new_params = params + np.float32(server_lr) * delta_y
    return new_params, (control + delta_c_sum / num_clients).astype(np.float32)


@dataclass
class Scaffold(Strategy):
    """SCAFFOLD (Karimireddy et al. 2020, "SCAFFOLD: Stochastic Controlled Averaging for Federated
    Learning"), option II: clients correct each gradient by c − cᵢ and derive their new control
    variate cᵢ from the distance they moved.

    Clients receive [x; c] and send back [Δy; Δcᵢ], so the traffic is twice FedAvg's. Each
    client's cᵢ is client state: kept per client id across rounds (in the run store during
    simulation, on the device in deployment). Model updates are averaged weighted by examples,
    as in FedAvg (equal to the paper's plain mean when clients hold equal amounts of data).
    """

    num_clients: int
    fit: FitConfig = FitConfig()
    server_lr: float = 1.0
    control: np.ndarray | None = field(default=None, repr=False)

    needs_client_state = True
    needs_each_update = True  # each client's control variate change
    broadcasts = True  # [x; c]: the global control variate travels with the model
    stateful = True  # c: a checkpoint keeps it

    def broadcast(self, params: np.ndarray) -> np.ndarray:
        """What clients receive: the global model followed by the server control variate."""
        control = self.control if self.control is not None else np.zeros_like(params)
        return np.concatenate([params, control])

    def client_needs(self) -> frozenset[str]:
        return replace(self.fit, scaffold=True).needs()

    def configure(self, round: int, params: np.ndarray, sampled_ids: list[int]) -> list[Task]:
        return same_work(round, sampled_ids, replace(self.fit, scaffold=True))

    def aggregate(self, round: int, params: np.ndarray, updates: Iterable[ClientUpdate]) -> np.ndarray:
        size = params.size
        model = WeightedSum(size)
        delta_c = np.zeros(size, dtype=np.float64)
        for u in updates:
            model.add(u.update[:size], u.num_examples)
            delta_c += u.update[size:]
        if model.weight == 0:
            return params
        control = self.control if self.control is not None else np.zeros(size, np.float32)
        new_params, self.control = scaffold_step(params, control, model.mean(), delta_c, self.num_clients,
                                                 self.server_lr)
        return new_params

    def state(self) -> dict[str, np.ndarray]:
        return {} if self.control is None else {"control": self.control}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self.control = state["control"].astype(np.float32) if "control" in state else None
