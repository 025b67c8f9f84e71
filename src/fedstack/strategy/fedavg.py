"""Federated Averaging."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from ..client import FitConfig
from .base import ClientUpdate, Strategy, Task, example_weighted, same_work


@dataclass
class FedAvg(Strategy):
    """FedAvg (McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
    Decentralized Data"): each sampled client trains locally; the server moves the global model
    by the example-weighted mean of their updates.
    """

    fit: FitConfig = FitConfig()
    server_lr: float = 1.0

    def client_needs(self) -> frozenset[str]:
        return self.fit.needs()

    def configure(self, round: int, params: np.ndarray, sampled_ids: list[int]) -> list[Task]:
        """The same local work for every sampled client."""
        return same_work(round, sampled_ids, self.fit)

    def aggregate(self, round: int, params: np.ndarray, updates: Iterable[ClientUpdate]) -> np.ndarray:
        """params + server_lr · Σ nᵢ·Δᵢ / Σ nᵢ (unchanged when no update arrived)."""
        acc = example_weighted(updates, params.size)
        if acc.weight == 0:
            return params
        step = acc.mean()
        return params + step if self.server_lr == 1.0 else params + np.float32(self.server_lr) * step
