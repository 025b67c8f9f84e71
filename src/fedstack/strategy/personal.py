"""The server half of personalised algorithms (their client halves: fedstack.personal)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Iterable

import numpy as np

from ..client import FitConfig
from ..errors import FedstackError
from ..personal import STATE_KEY, Personalization, first_personal
from .base import ClientUpdate, Strategy, Task, example_weighted


@dataclass
class Personalized(Strategy):
    """The server half of a personalised algorithm: FedAvg on the shared part (example-weighted), the
    personal part never touched; clients receive the shared part only.

    `personal` is the client half, sent in every task (`FitConfig.personal`)."""

    personal: Personalization
    fit: FitConfig = FitConfig()
    server_lr: float = 1.0

    needs_client_state = True  # the personal parts
    broadcasts = True  # the shared part only: not the params as they are

    def __post_init__(self):
        if not isinstance(self.personal, Personalization):
            raise FedstackError(f"Personalized needs a fedstack.personal.Personalization, got {self.personal!r}")

    def personalization(self) -> Personalization:
        return self.personal

    def broadcast(self, params: np.ndarray) -> np.ndarray:
        return params[self.personal.split.shared_index()]

    def configure(self, round: int, params: np.ndarray, sampled_ids: list[int]) -> list[Task]:
        fit = replace(self.fit, personal=self.personal)
        return [Task(round, cid, fit) for cid in sampled_ids]

    def client_needs(self) -> frozenset[str]:
        return self.personal.needs()

    def aggregate(self, round: int, params: np.ndarray, updates: Iterable[ClientUpdate]) -> np.ndarray:
        split = self.personal.split
        acc = example_weighted(updates, split.shared_size)
        if acc.weight == 0 or split.shared_size == 0:
            return params
        new = params.copy()
        new[split.shared_index()] += np.float32(self.server_lr) * acc.mean()
        return new

    def first_state(self, params: np.ndarray) -> dict[str, Any]:
        """A client's state before its first task: its first personal part."""
        return {STATE_KEY: first_personal(self.personal, self.broadcast(params), params)}
