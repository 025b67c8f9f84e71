"""LocalEngine: every task in this process, one after another (simple to debug)."""

from __future__ import annotations

from typing import Iterator

import numpy as np

from .base import Engine, Outcome, Workload, execute


class LocalEngine(Engine):
    """Runs tasks sequentially in-process with one Trainer, on one torch thread.

    One thread makes results bit-identical to the process-pool engine's workers.
    """

    client_state = "task"

    def start(self, workload: Workload) -> None:
        _single_thread()
        self.workload = workload
        self.trainer = workload.trainer_factory()

    def run(self, params: np.ndarray, tasks: list) -> Iterator[Outcome]:
        for task in tasks:
            yield execute(self.trainer, self.workload, task, params)

    def close(self) -> None:
        self.trainer = None


def _single_thread() -> None:
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)
