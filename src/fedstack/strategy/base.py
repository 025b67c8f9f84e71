"""The Strategy protocol, the per-client Task, and the streaming weighted sum aggregators share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

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


class Strategy:
    """The server algorithm: what each sampled client does, and how updates become new params.

    A toy that ignores clients' sizes and takes a plain mean::

        class PlainMean(Strategy):
            def configure(self, round, params, sampled_ids):
                return [Task(round, cid, FitConfig()) for cid in sampled_ids]
            def aggregate(self, round, params, updates):
                acc = WeightedSum(params.size)
                for u in updates:
                    acc.add(u.update, 1.0)
                return params + acc.mean() if acc.weight else params
    """

    # What the loops need to know of a strategy, declared (defaults: a plain synchronous algorithm).
    asynchronous: bool = False  # the asynchronous schedule runs it: the server steps as updates arrive
    buffered: bool = False  # asynchronous: it steps once server.buffer_size updates are in (FedBuff)
    needs_client_state: bool = False  # its clients keep state across rounds (SCAFFOLD's control variates)
    broadcasts: bool = False  # clients receive more than the params (`broadcast`)
    stateful: bool = False  # it keeps state across rounds that a checkpoint saves (`state`, `load_state`)
    one_model: bool = True  # its params are one model every client could use (clustered training: k models)
    models: int = 1  # how many models its params stack (clustered training: k)
    sends_own_model: bool = False  # each client receives only its own of the stacked models (`model_of`)
    # its server step reads each client's update and who sent it: a sum will not do (secure aggregation and
    # differential privacy's noised mean are refused)
    needs_each_update: bool = False
    prepares: bool = False  # it gathers something from the clients once, before round 1 (`prepare_tasks`)

    def configure(self, round: int, params: np.ndarray, sampled_ids: list[int]) -> list[Task]:
        raise NotImplementedError(f"{type(self).__name__} configures no clients")

    def prepare_tasks(self, params: np.ndarray, ids: list[int], seed: int) -> list[Task]:
        """`prepares`: the tasks of round 0 for clients `ids`, run once before round 1 (coded training's
        parity uploads); `seed`: the run's, whose streams seed the tasks."""
        return []

    def prepared_size(self, params: np.ndarray) -> int:
        """How many values each reply to a round-0 task holds (checked like an update's size)."""
        return 0

    def prepared(self, replies) -> None:
        """Round 0's checked replies (flat float32 vectors), in client order."""

    def prepared_figures(self) -> dict:
        """What round 0 gathered, for round 1's record."""
        return {}

    def server_seconds(self, round: int) -> float:
        """Simulated seconds the server's own work takes in a round, while it waits for the clients."""
        return 0.0

    def aggregate(self, round: int, params: np.ndarray, updates: Iterable[ClientUpdate]) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} aggregates nothing")

    def client_needs(self) -> frozenset[str]:
        """What its clients' trainers must be able to do (`Trainer.capabilities`): the local terms its tasks
        ask for (`FitConfig.needs`). Checked before training, so a trainer that would ignore them is refused."""
        return frozenset()

    def broadcast(self, params: np.ndarray) -> np.ndarray:
        """What the sampled clients receive (`broadcasts`: the params and more; clients' updates then have
        the length of what they received)."""
        return params

    def state(self) -> dict[str, np.ndarray]:
        """What it must keep across rounds (server momentum, moments), saved with each checkpoint."""
        return {}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Take back a state it had (on resume, or after a round that did not count)."""

    def personalization(self):
        """A personalised algorithm's client half (fedstack.personal.Personalization): each client keeps a
        model of its own, which evaluation judges too (None: the global model is every client's)."""
        return None

    def model_of(self, client_id: int) -> tuple[int, int] | None:
        """The slice [start, stop) of the params that is this client's model (clustered training), or None:
        all of them."""
        return None

    def update_size(self, received: int) -> int:
        """How many values a client's update holds, given how many it received (clustered training: one of
        the k models it received)."""
        return received

    def first_state(self, params: np.ndarray) -> dict | None:
        """The state a client starts from before its first task, where the server keeps clients' state (a
        personalised algorithm's first personal part); None: it starts without."""
        return None

    def round_figures(self) -> dict:
        """Figures of the round just aggregated, for its record (a robust rule's cost and choices)."""
        return {}


def broadcast(strategy: Strategy, params: np.ndarray) -> np.ndarray:
    """What the sampled clients receive: the params, plus whatever else the strategy sends them."""
    return strategy.broadcast(params)


def needs_client_state(strategy: Strategy) -> bool:
    """Whether the strategy's clients keep state across rounds."""
    return strategy.needs_client_state


def strategy_state(strategy: Strategy) -> dict[str, np.ndarray]:
    """What a strategy must keep across rounds: saved with each checkpoint."""
    return strategy.state()


def restore_strategy_state(strategy: Strategy, state: dict[str, np.ndarray]) -> None:
    """Give a strategy back a state it had (on resume, or after a round that did not count)."""
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
