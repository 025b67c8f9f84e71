"""Server optimizers on the averaged update: FedAvgM, FedAdagrad, FedAdam, FedYogi."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from ..client import FitConfig
from .base import ClientUpdate, Strategy, Task, example_weighted, same_work

ADAPTIVE = ("fedadagrad", "fedadam", "fedyogi")


def fedavgm_step(params, delta, velocity, lr: float, momentum: float):
    """FedAvgM (Hsu, Qi & Brown 2019): v ← β·v + Δ; x ← x + η·v. Returns (params, velocity)."""
    velocity = momentum * velocity + delta
    return params + lr * velocity, velocity


def adaptive_step(kind: str, params, delta, m, v, lr: float, beta1: float, beta2: float, tau: float):
    """One step of Reddi et al. 2021, "Adaptive Federated Optimization" (Algorithm 2).

    Δ is the weighted mean of client updates, used as a pseudo-gradient pointing downhill:
    m ← β1·m + (1−β1)·Δ; v by Adagrad (v + Δ²), Adam (β2·v + (1−β2)·Δ²) or Yogi
    (v − (1−β2)·Δ²·sign(v − Δ²)); x ← x + η·m / (√v + τ). Returns (params, m, v).
    """
    m = beta1 * m + (1 - beta1) * delta
    d2 = delta * delta
    if kind == "fedadagrad":
        v = v + d2
    elif kind == "fedadam":
        v = beta2 * v + (1 - beta2) * d2
    elif kind == "fedyogi":
        v = v - (1 - beta2) * d2 * np.sign(v - d2)
    else:
        raise ValueError(f"unknown adaptive optimizer {kind!r} ({' | '.join(ADAPTIVE)})")
    return params + lr * m / (np.sqrt(v) + tau), m, v


@dataclass
class FedOpt(Strategy):
    """FedAvg's client work with a server optimizer on the averaged update (fedavgm or an adaptive one).

    The optimizer's moments are strategy state: checkpointed every round, restored on resume.
    """

    stateful = True  # server momentum and moments: a checkpoint keeps them

    kind: str = "fedadam"
    fit: FitConfig = FitConfig()
    server_lr: float = 0.1
    momentum: float = 0.9  # fedavgm
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    moments: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in ("fedavgm", *ADAPTIVE):
            raise ValueError(f"unknown server optimizer {self.kind!r}")

    def client_needs(self) -> frozenset[str]:
        return self.fit.needs()

    def configure(self, round: int, params: np.ndarray, sampled_ids: list[int]) -> list[Task]:
        return same_work(round, sampled_ids, self.fit)

    def aggregate(self, round: int, params: np.ndarray, updates: Iterable[ClientUpdate]) -> np.ndarray:
        acc = example_weighted(updates, params.size)
        if acc.weight == 0:
            return params
        delta = acc.total / acc.weight  # float64 throughout the optimizer, float32 out
        x = params.astype(np.float64)
        if self.kind == "fedavgm":
            x, self.moments["velocity"] = fedavgm_step(
                x, delta, self.moments.get("velocity", np.zeros_like(x)), self.server_lr, self.momentum)
        else:
            x, self.moments["m"], self.moments["v"] = adaptive_step(
                self.kind, x, delta, self.moments.get("m", np.zeros_like(x)),
                self.moments.get("v", np.full_like(x, self.tau ** 2)),
                self.server_lr, self.beta1, self.beta2, self.tau)
        return x.astype(np.float32)

    def state(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.moments.items()}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self.moments = {k: np.array(v, dtype=np.float64) for k, v in state.items()}
