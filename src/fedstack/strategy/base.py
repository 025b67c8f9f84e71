"""The Strategy protocol, the per-client Task, and the streaming weighted sum aggregators share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Protocol, runtime_checkable

import numpy as np

from ..client import FitConfig, Task  # noqa: F401  (Task: re-exported; defined beside FitConfig)


@dataclass
class ClientUpdate:
    """A decoded, validated update as the strategy sees it.

    The asynchronous loop also says how stale it is: `staleness` = server updates since the
    client received its model, and `base` = that model (None: the current params). Under secure
    aggregation the strategy gets one update, the mean of its `members`' (each weighing the same).
    """

    client_id: int
    update: np.ndarray
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    staleness: int = 0
    base: np.ndarray | None = field(default=None, repr=False)
    members: tuple[int, ...] = ()  # secure aggregation: the clients whose updates this one averages


@runtime_checkable
class Strategy(Protocol):
    """The server algorithm: what each sampled client does, and how updates become new params.

    A toy that ignores clients' sizes and takes a plain mean::

        class PlainMean:
            def configure(self, round, params, sampled_ids):
                return [Task(round, cid, FitConfig()) for cid in sampled_ids]
            def aggregate(self, round, params, updates):
                acc = WeightedSum(params.size)
                for u in updates:
                    acc.add(u.update, 1.0)
                return params + acc.mean() if acc.weight else params
    """

    def configure(self, round: int, params: np.ndarray, sampled_ids: list[int]) -> list[Task]: ...

    def aggregate(self, round: int, params: np.ndarray, updates: Iterable[ClientUpdate]) -> np.ndarray: ...


def broadcast(strategy, params: np.ndarray) -> np.ndarray:
    """What the sampled clients receive: the params, plus whatever else the strategy sends them.

    A strategy offers `broadcast(params)` to send more (SCAFFOLD's control variate); clients'
    updates then have the length of what they received.
    """
    return strategy.broadcast(params) if hasattr(strategy, "broadcast") else params


def needs_client_state(strategy) -> bool:
    """Whether the strategy's clients keep state across rounds (declared `needs_client_state = True`)."""
    return bool(getattr(strategy, "needs_client_state", False))


def strategy_state(strategy) -> dict[str, np.ndarray]:
    """What a strategy must keep across rounds (server momentum, moments): saved with each checkpoint.

    A stateful strategy offers `state() -> dict of arrays` and `load_state(dict)`; others have none.
    """
    return strategy.state() if hasattr(strategy, "state") else {}


def restore_strategy_state(strategy, state: dict[str, np.ndarray]) -> None:
    """Give a strategy back a state it had (on resume, or after a round that did not count)."""
    if hasattr(strategy, "load_state"):
        strategy.load_state(state)


class WeightedSum:
    """A running Σ wᵢ·vᵢ and Σ wᵢ in float64: memory stays one vector however many clients arrive."""

    def __init__(self, size: int):
        self.total = np.zeros(size, dtype=np.float64)
        self.weight = 0.0
        self.count = 0

    def add(self, vector: np.ndarray, weight: float) -> None:
        self.total += np.float64(weight) * vector
        self.weight += float(weight)
        self.count += 1

    def mean(self) -> np.ndarray:
        """Σ wᵢ·vᵢ / Σ wᵢ as float32."""
        if self.weight <= 0:
            raise ValueError("weighted mean of nothing")
        return (self.total / self.weight).astype(np.float32)


def same_work(round: int, sampled_ids: list[int], fit: FitConfig) -> list[Task]:
    """One task per sampled client, all with the same local work."""
    return [Task(round, cid, fit) for cid in sampled_ids]


def example_weighted(updates: Iterable[ClientUpdate], size: int) -> WeightedSum:
    """The running sum of updates weighted by their example counts (streamed: one vector of memory)."""
    acc = WeightedSum(size)
    for u in updates:
        acc.add(u.update, u.num_examples)
    return acc
