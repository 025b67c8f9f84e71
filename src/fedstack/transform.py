"""Transforms: a change to clients' updates with a client half and a server half (pfl's `Postprocessor`).

Per-update changes are codec stages (`fedstack.codec.Codec`: `encode` on the client, `decode` per update
on the server): compression, clipping, client-side noise. A `Transform` adds what acts on the round as a
whole: `configure` tells each sampled client what it needs (differential privacy's clip norm of the
round), and `server_step` acts on the round's updates after the aggregator and before the strategy's
step (central DP's noise on the sum, adaptive clipping's count). Its state is checkpointed with the
strategy's. Built-in: `fedstack.dp.central.CentralDP` (DP-FedAvg's server half, with the accountant).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from .strategy.base import ClientUpdate, Task


class Transform:
    """Hooks with no-op defaults, and traits: `stateful` — it keeps state a checkpoint saves (`state`,
    `load_state`); `synchronous_only` — its server step needs a round of updates (the asynchronous and
    gossip schedules refuse it); `clip_norm` — differential privacy: the clip norm of the coming round."""

    stateful = False
    synchronous_only = True
    clip_norm: float | None = None

    def configure(self, task: Task) -> Task:
        """A sampled client's task, told what this transform needs of it."""
        return task

    def server_step(self, round: int, params: np.ndarray, updates: Iterable[ClientUpdate]) -> Iterable[ClientUpdate]:
        """The round's updates as the strategy will aggregate them."""
        return updates

    def state(self) -> dict[str, np.ndarray]:
        return {}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Take back a state it had (on resume, or after an attempt of a round that did not count)."""

    def epsilon(self) -> float | None:
        """Differential privacy: the ε spent so far (None: it spends none)."""
        return None

    def epsilon_after(self, rounds: int = 1) -> float | None:
        """Differential privacy: the ε after `rounds` more rounds (None: it spends none)."""
        return None
