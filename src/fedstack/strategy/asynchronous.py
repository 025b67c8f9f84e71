"""Asynchronous aggregation: FedBuff and FedAsync, applied as updates arrive (see fedstack.async_loop).

Both discount stale updates — those computed from an older global model — by the polynomial
staleness function of Xie et al.: s(τ) = (1 + τ)^(−a), where τ is how many server updates happened
since the client received its model and a = `staleness_exponent` (0.5 gives FedBuff's 1/√(1+τ);
0 weighs every update alike).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from ..client import FitConfig
from .base import ClientUpdate, Strategy, Task, same_work


def staleness_weight(staleness: int, exponent: float) -> float:
    """s(τ) = (1 + τ)^(−exponent): 1 for a fresh update, smaller the staler it is."""
    if staleness < 0:
        raise ValueError(f"staleness must be >= 0, got {staleness}")
    return float((1.0 + staleness) ** -exponent)


@dataclass
class FedBuff(Strategy):
    """FedBuff (Nguyen et al. 2022, "Federated Learning with Buffered Asynchronous Aggregation"):
    the server buffers `server.buffer_size` client updates and then steps by their
    staleness-weighted mean, params + server_lr · (1/K) Σ s(τᵢ)·Δᵢ. As in the paper the mean is
    plain, not example-weighted, and not renormalised: stale updates shrink the step.
    """

    fit: FitConfig = FitConfig()
    server_lr: float = 1.0
    staleness_exponent: float = 0.5
    asynchronous = True  # run by the asynchronous loop, not in rounds
    buffered = True  # its buffer holds server.buffer_size updates (FedAsync's holds one)
    needs_each_update = True  # each update's staleness weighs it

    def client_needs(self) -> frozenset[str]:
        return self.fit.needs()

    def configure(self, round: int, params: np.ndarray, sampled_ids: list[int]) -> list[Task]:
        return same_work(round, sampled_ids, self.fit)

    def aggregate(self, round: int, params: np.ndarray, updates: Iterable[ClientUpdate]) -> np.ndarray:
        """params + server_lr · mean of s(τᵢ)·Δᵢ over the buffered updates (unchanged when none)."""
        total = np.zeros(params.size, dtype=np.float64)
        count = 0
        for u in updates:
            total += staleness_weight(u.staleness, self.staleness_exponent) * u.update.astype(np.float64)
            count += 1
        if count == 0:
            return params
        return (params + self.server_lr * total / count).astype(np.float32)


@dataclass
class FedAsync(Strategy):
    """FedAsync (Xie et al. 2019, "Asynchronous Federated Optimization"): each arriving client
    model is mixed into the global one, x ← (1 − αₜ)·x + αₜ·x_client with αₜ = α·s(τ), where
    x_client = the model the client started from + its update.
    """

    fit: FitConfig = FitConfig()
    alpha: float = 0.6
    staleness_exponent: float = 0.5
    asynchronous = True
    needs_each_update = True  # each client model is mixed in as it arrives

    def client_needs(self) -> frozenset[str]:
        return self.fit.needs()

    def configure(self, round: int, params: np.ndarray, sampled_ids: list[int]) -> list[Task]:
        return same_work(round, sampled_ids, self.fit)

    def aggregate(self, round: int, params: np.ndarray, updates: Iterable[ClientUpdate]) -> np.ndarray:
        """Mix in each update in turn (a buffer of one is the paper's algorithm)."""
        x = params.astype(np.float64)
        for u in updates:
            mix = self.alpha * staleness_weight(u.staleness, self.staleness_exponent)
            base = params if u.base is None else u.base
            x = (1.0 - mix) * x + mix * (base.astype(np.float64) + u.update)
        return x.astype(np.float32)
