"""Where a run's time goes (`fedstack run --profile`): worker time by phase, server time by phase, idle time."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from types import GeneratorType
from typing import Iterator

import numpy as np

from .engine import Engine, EvalTask, Outcome, Workload


@dataclass
class Profile:
    """Seconds spent, summed over the run.

    Worker side (worker-seconds, summed over the engine's workers): `train_s` in the trainer,
    `encode_s` in the client codecs, `evaluate_s` in evaluation tasks; `idle_s` is the rest of the
    workers' capacity (workers × wall time): start-up, transport, load imbalance at the end of a
    batch, and waiting while the server aggregates. Server side (wall seconds): `wait_s` blocked on
    the engine (the workers, or the network for deployed clients), `decode_s` in the server's
    codecs, `aggregate_s` in the strategy and the round's bookkeeping, `evaluate_wall_s` in
    evaluation, `startup_s` starting the engine.
    """

    workers: int = 1
    wall_s: float = 0.0
    startup_s: float = 0.0
    train_s: float = 0.0
    encode_s: float = 0.0
    evaluate_s: float = 0.0
    wait_s: float = 0.0
    decode_s: float = 0.0
    aggregate_s: float = 0.0
    evaluate_wall_s: float = 0.0

    @property
    def idle_s(self) -> float:
        return max(0.0, self.workers * self.wall_s - self.train_s - self.encode_s - self.evaluate_s)

    def summary(self) -> dict:
        """The figures for summary.json and metrics.jsonl, rounded to milliseconds."""
        figures = {**asdict(self), "idle_s": self.idle_s}
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in figures.items()}

    def since(self, earlier: Profile) -> Profile:
        """What was spent after the snapshot `earlier` (a copy taken with `snapshot`)."""
        before = asdict(earlier)
        values = {k: v - before[k] for k, v in asdict(self).items() if k != "workers"}
        return Profile(workers=self.workers, **values)

    def snapshot(self) -> Profile:
        return Profile(**asdict(self))


class ProfiledEngine(Engine):
    """Wraps an Engine and books each outcome's seconds and the time its consumer waits into a Profile.
    It declares what the engine it wraps declares, and passes protocol steps through."""

    def __init__(self, engine: Engine, profile: Profile):
        self.engine = engine
        self.profile = profile
        self.client_state, self.parallel, self.exchanges = engine.client_state, engine.parallel, engine.exchanges
        profile.workers = engine.workers or 1

    def exchange(self, round: int, stage: str, requests: dict[int, bytes]) -> dict[int, bytes]:
        return self.engine.exchange(round, stage, requests)

    def session(self, client_id: int) -> int:
        return self.engine.session(client_id)

    def start(self, workload: Workload) -> None:
        started = time.perf_counter()
        self.engine.start(workload)
        self.profile.startup_s += time.perf_counter() - started
        self.profile.workers = self.engine.workers or 1  # Ray knows its count once started

    def run(self, params: np.ndarray, tasks: list) -> Iterator[Outcome]:
        outcomes = iter(self.engine.run(params, tasks))
        try:
            while True:
                asked = time.perf_counter()
                outcome = next(outcomes, None)
                self.profile.wait_s += time.perf_counter() - asked
                if outcome is None:
                    return
                self._book(outcome)
                yield outcome
        finally:  # a consumer that stops early stops the engine's iterator too (the pool drains)
            if isinstance(outcomes, GeneratorType):
                outcomes.close()

    def _book(self, outcome: Outcome) -> None:
        if isinstance(outcome.task, EvalTask):
            self.profile.evaluate_s += outcome.seconds
        elif outcome.value is not None and (outcome.value.train_s or outcome.value.encode_s):
            self.profile.train_s += outcome.value.train_s
            self.profile.encode_s += outcome.value.encode_s
        else:  # a failed task, or a device that does not say: all of it counts as training
            self.profile.train_s += outcome.seconds

    def close(self) -> None:
        self.engine.close()
