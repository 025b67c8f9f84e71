"""Per-round client configuration — Flower's `on_fit_config_fn` — as transforms whose client half is
`configure`: the server sets each task's learning rate and local work for its round. Clients receive
them with the task (simulated or deployed alike), every engine gives the same bits, and a resumed run
goes on where it stopped: a schedule is a pure function of the round.

- `ClientSchedule`: the config's `client.lr_schedule` (constant, step, exponential, cosine — Loshchilov &
  Hutter 2017, "SGDR: Stochastic Gradient Descent with Warm Restarts", without restarts) and
  `client.epochs_by_round`.
- `FitSchedule`: any function (round, FitConfig) → FitConfig, from the Python API.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, replace
from typing import Callable

from .client import FitConfig
from .strategy.base import Task
from .transform import Transform

LR_SCHEDULES = ("constant", "step", "exponential", "cosine")


def scheduled_lr(round: int, lr: float, schedule: str = "constant", *, decay: float = 0.5, step_rounds: int = 10,
                 lr_min: float = 0.0, rounds: int = 1) -> float:
    """The learning rate of round `round` (from 1) for a base rate `lr`:
    step: lr·decay^⌊(r−1)/step_rounds⌋; exponential: lr·decay^(r−1);
    cosine: lr_min + (lr − lr_min)·(1 + cos(π·(r−1)/rounds))/2, above lr_min in every round.
    A decayed rate stops at lr_min, and never reaches 0 (a long exponential decay underflows): it stays a
    learning rate a client accepts."""
    if schedule == "constant":
        return lr
    if schedule == "step":
        return max(lr * decay ** ((round - 1) // step_rounds), lr_min, sys.float_info.min)
    if schedule == "exponential":
        return max(lr * decay ** (round - 1), lr_min, sys.float_info.min)
    if schedule == "cosine":
        return lr_min + (lr - lr_min) * (1 + math.cos(math.pi * (round - 1) / rounds)) / 2
    raise ValueError(f"unknown lr schedule {schedule!r} ({' | '.join(LR_SCHEDULES)})")


def scheduled_epochs(round: int, epochs: int, by_round: tuple[tuple[int, int], ...] = ()) -> int:
    """The local epochs of round `round`: those of the last (from_round, epochs) pair at or before it."""
    for start, value in by_round:
        if round >= start:
            epochs = value
    return epochs


@dataclass
class ClientSchedule(Transform):
    """The learning rate and local epochs of each round, from the config's `[client]` keys."""

    lr_schedule: str = "constant"
    lr_decay: float = 0.5
    lr_step_rounds: int = 10
    lr_min: float = 0.0
    rounds: int = 1
    epochs_by_round: tuple[tuple[int, int], ...] = ()

    synchronous_only = False  # a round number is all it needs: every schedule has one

    def configure(self, task: Task) -> Task:
        c = task.config
        lr = scheduled_lr(task.round, c.lr, self.lr_schedule, decay=self.lr_decay, step_rounds=self.lr_step_rounds,
                          lr_min=self.lr_min, rounds=self.rounds)
        return replace(task, config=replace(c, lr=lr, epochs=scheduled_epochs(task.round, c.epochs,
                                                                                self.epochs_by_round)))


class FitSchedule(Transform):
    """`fit_for(round, config) -> config`, applied to every task the strategy configures."""

    synchronous_only = False

    def __init__(self, fit_for: Callable[[int, FitConfig], FitConfig]):
        self.fit_for = fit_for

    def configure(self, task: Task) -> Task:
        return replace(task, config=self.fit_for(task.round, task.config))
