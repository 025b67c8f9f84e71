"""The one round loop. A schedule decides when clients train and when the server steps — synchronous
rounds (`loop.sync`), asynchronous events (`loop.events`), gossip between nodes (`loop.gossip`) — and
the loop gives every schedule the same parts:

- the engine, started and closed around the run (profiled with `--profile`);
- the filters every update passes (`UpdateFilters`: decode, validate, account, attack, screen);
- the aggregator that hands updates to the strategy (`StreamingSum`, `Gather`, `SecureSum`);
- evaluation on the schedule `Evaluation` sets (`Evaluator`);
- the privacy budget (the run stops before a round that would spend more ε than `epsilon_budget`);
- the callbacks each finished round is handed to, with its record: the store, metrics.jsonl, the
  progress bar, a user's own (`Callback`).

A part a schedule cannot honour is refused by its declared trait when the loop is built (e.g. a
summing aggregator needs a round of clients: `Aggregator.synchronous_only`), never silently dropped.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from dataclasses import replace

import numpy as np

from ..codec import CodecContext, Pipeline
from ..engine import Engine, Workload
from ..errors import ConfigError, FedstackError
from ..profiling import Profile, ProfiledEngine
from ..sampling import UniformSampler
from ..store import MemoryClientStates
from ..strategy import Strategy
from ..systems import UniformSystem
from .aggregate import Aggregator, Gather, SecureSum, StreamingSum
from .contribute import ContributionScorer
from .evaluate import Evaluator, OwnModels
from .filters import UpdateFilters
from ..options import Evaluation, Parts, Rules
from .record import RoundRecord, Tally, fit_figures

log = logging.getLogger("fedstack.server")

# The client id in the codec context of the server's own messages (the global model on the way down).
SERVER_ID = 2**32 - 1


class Callback:
    """A side effect of the run (store, metrics file, progress, tracking, dashboard): override what you need.

    `on_start` is called once the engine has started (its worker processes exist: a callback may start
    threads then without stopping the pool engine from forking), `on_round` after each finished round with
    its record (the round's line of metrics.jsonl) and the global model, `on_end` once with how the run
    ended: "finished", "stopped" (the privacy budget), "failed" or "interrupted", and `on_results` once the run's
    files are written. Plain functions of
    (record, params) are callbacks too: the loop wraps them (`as_callback`).
    """

    def on_start(self, rounds: int, start_round: int) -> None:
        """Called once before the first round this run trains (`start_round` > 1 after a resume)."""

    def on_round(self, record: dict, params: np.ndarray) -> None:
        """Called once per round, in round order, after its evaluation."""

    def on_end(self, status: str) -> None:
        """Called once when the run ends, however it ends (an exception still propagates after)."""

    def on_results(self, run_dir: Path) -> None:
        """Called once after `on_end`, when the run's files (summary.json, report.png) are written in
        `run_dir` — by `simulate` for a run with an output directory (a bare loop writes none)."""

    def __call__(self, record: dict, params: np.ndarray) -> None:
        self.on_round(record, params)


class FunctionCallback(Callback):
    """A plain function of (record, params) as a Callback."""

    def __init__(self, function):
        self.function = function

    def on_round(self, record: dict, params: np.ndarray) -> None:
        self.function(record, params)


def as_callback(callback) -> Callback:
    """A Callback as it is; a plain function of (record, params) wrapped in one."""
    return callback if isinstance(callback, Callback) else FunctionCallback(callback)


def choose_aggregator(summing, filters: UpdateFilters) -> Aggregator:
    """A summing protocol ending the codec pipeline (`Pipeline.summing`: secagg, ckks) makes a SecureSum;
    screens that need the round's updates at once a Gather; otherwise updates stream."""
    if summing is not None:
        return SecureSum(summing)
    return Gather() if filters.holds else StreamingSum()


class RoundLoop:
    """Runs `rounds` rounds (server steps) of `strategy` over `engine`; a schedule subclass says how.

    `rules`, `evaluation` and `parts` are the run's typed options (fedstack.options). Client state
    (SCAFFOLD's control variates, error feedback's residuals) needs an engine that carries it; where the
    server keeps it ("task" engines) it lives in `client_states` (a RunStore, or memory).
    """

    asynchronous = False  # which kind of strategy this schedule runs (Strategy.asynchronous)
    rounds_of_updates = False  # it aggregates rounds of updates (what summing aggregators and transforms need)

    def __init__(self, strategy: Strategy, engine: Engine, workload: Workload, *, rounds: int,
                 clients_per_round: int, rules: Rules = Rules(), evaluation: Evaluation = Evaluation(),
                 parts: Parts | None = None, client_states=None, profile: Profile | None = None):
        parts = parts or Parts()
        if strategy.asynchronous != self.asynchronous:
            raise ConfigError("server.strategy", f"{type(strategy).__name__} needs the "
                              f"{'asynchronous' if not self.asynchronous else 'synchronous'} loop")
        self.strategy, self.rounds, self.clients_per_round, self.rules = strategy, rounds, clients_per_round, rules
        self.profile = profile  # where time goes (--profile): the engine books worker time, this loop its own
        self.engine = ProfiledEngine(engine, profile) if profile is not None else engine
        summing = workload.pipeline.summing
        # A summing protocol is the aggregator's; workers apply only the codec stages before it.
        self.workload = workload = replace(workload, pipeline=workload.pipeline.before_summing())
        self.filters = UpdateFilters(workload, max_norm_ratio=rules.max_norm_ratio, attack=parts.attack,
                                     record_ledger=parts.record_ledger, profile=profile)
        self.aggregator = choose_aggregator(summing, self.filters)
        self.dataset = workload.dataset
        self.sampler = parts.sampler or UniformSampler(self.dataset.num_clients, workload.seed)
        self.system = parts.system or UniformSystem(seed=workload.seed)
        self.download = parts.download or Pipeline()
        self.attack = parts.attack
        self.record_ledger = parts.record_ledger
        self.callbacks = [as_callback(c) for c in parts.callbacks]
        self.contribution = ContributionScorer(parts.contribution, workload.seed) if parts.contribution else None
        self.transforms = list(parts.transforms)
        self.evaluator = Evaluator(self.engine, self.dataset, workload.seed, evaluation, rounds, profile)
        self.stopped: str | None = None  # why the run ended before its last round (the privacy budget)
        self._check_parts(workload)
        self.keeps_state = self._keeps_state(workload, engine)  # the server keeps client state, sent with tasks
        self.client_states = client_states if client_states is not None else MemoryClientStates()
        if strategy.personalization() is not None or not strategy.one_model:  # judge each client's own model too
            self.evaluator.own = OwnModels(strategy.personalization(), strategy.broadcast, self.client_state,
                                           strategy.one_model, strategy.model_of if strategy.sends_own_model else None)

    def _check_parts(self, workload: Workload) -> None:
        """Refuse parts this loop cannot honour, by their declared traits."""
        fleet = self.system.num_clients
        if fleet is not None and fleet < self.dataset.num_clients:
            raise FedstackError(f"the device fleet has {fleet} devices for {self.dataset.num_clients} clients")
        needs_rounds = [t for t in self.transforms if t.synchronous_only]
        if needs_rounds and not self.rounds_of_updates:
            raise ConfigError("privacy.mode", f"{type(needs_rounds[0]).__name__} acts on a round of updates, which "
                              f"{type(self).__name__.lower()} training does not have")
        if self.aggregator.sums and (self.rules.max_norm_ratio or (self.attack is not None and self.attack.tampers)):
            raise ConfigError("server.max_norm_ratio" if self.rules.max_norm_ratio else "attack.name",
                              "secure aggregation never shows the server a client's update")
        if self.contribution is not None:
            self._check_contribution()

    def _check_contribution(self) -> None:
        """Contribution scores rebuild coalition models from each client's update of a round of one model."""
        why = ("secure aggregation and homomorphic encryption give the server only the sum of the updates, and "
               "scores need each client's own" if self.aggregator.sums else
               f"{type(self).__name__.lower()} training has no rounds of updates to score" if not self.rounds_of_updates
               else f"{type(self.strategy).__name__} trains no one global model whose coalitions could be rebuilt"
               if not self.strategy.one_model or self.strategy.personalization() is not None else None)
        if why:
            raise ConfigError("contribution.method", why)

    def _keeps_state(self, workload: Workload, engine: Engine) -> bool:
        """Whether this loop keeps client state and sends it with tasks; refuses an engine that cannot carry it."""
        who = ("server.strategy", type(self.strategy).__name__) if self.strategy.needs_client_state else \
            ("codec.pipeline", "error feedback") if workload.pipeline.stateful else None
        if who is None:
            return False
        if engine.client_state not in ("task", "device"):
            raise FedstackError(f"{who[0]}: {who[1]} keeps state on each client across rounds, which "
                                f"engine {type(engine).__name__} cannot carry")
        return engine.client_state == "task"

    @property
    def rejected(self) -> int:
        """Updates rejected over the run."""
        return self.filters.rejected

    def run(self, params: np.ndarray, start_round: int = 1, sim_time: float = 0.0) -> np.ndarray:
        """Train from `params` (a resumed run starts later, its clock at `sim_time`); returns the final params."""
        params = np.ascontiguousarray(params, dtype=np.float32)
        self.started = time.perf_counter()
        status = "failed"
        try:
            self.engine.start(self.workload)
            for callback in self.callbacks:
                callback.on_start(self.rounds, start_round)
            params = self.schedule(params, start_round, sim_time)
            status = "stopped" if self.stopped else "finished"
            return params
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            self.engine.close()
            for callback in self.callbacks:
                callback.on_end(status)

    def schedule(self, params: np.ndarray, start_round: int, sim_time: float) -> np.ndarray:
        """Run the rounds from `start_round`, closing each with `close_round`; returns the final params."""
        raise NotImplementedError(f"{type(self).__name__} has no schedule")

    def snapshot(self) -> Profile | None:
        return self.profile.snapshot() if self.profile is not None else None

    def stamp(self, record: RoundRecord, before: Profile | None) -> None:
        """Stamp the wall time on a round's record and, when profiling, where the round's time went."""
        record.wall_time_s = time.perf_counter() - self.started
        if self.profile is not None:
            self.profile.wall_s = record.wall_time_s
            record.profile = self.profile.since(before).summary()

    def close_round(self, record: RoundRecord, params: np.ndarray, before: Profile | None) -> None:
        """A round is over: stamp its record and hand it to the callbacks (metrics, store, progress)."""
        self.stamp(record, before)
        self.publish(record.row(), params)

    def publish(self, row: dict, params: np.ndarray) -> None:
        for callback in self.callbacks:
            callback.on_round(row, params)

    def over_budget(self, rnd: int) -> bool:
        """Whether round `rnd` would spend more than `epsilon_budget` (then the run stops, saying why)."""
        budget = self.rules.epsilon_budget
        after = max((a for a in (t.epsilon_after(1) for t in self.transforms) if a is not None), default=None) \
            if budget else None
        if after is None or after <= budget:
            return False
        self.stopped = (f"stopped before round {rnd}: it would raise ε to {after:.4g}, over "
                        f"privacy.epsilon_budget = {budget:g}")
        log.warning("%s", self.stopped)
        return True

    def privacy_figures(self, clip_norm: float | None, tally: Tally) -> dict:
        """ε spent so far and the round's clip norm (differential privacy); the largest record-level ε of
        the round's DP-SGD clients."""
        figures = {}
        epsilon = self.epsilon()
        if epsilon is not None:
            figures.update(epsilon=epsilon, clip_norm=clip_norm)
        figures.update(self.filters.client_epsilon_max(tally))
        return figures

    def epsilon(self) -> float | None:
        """ε the run has spent (the largest of its transforms'), None if it spends none."""
        spent = [e for e in (t.epsilon() for t in self.transforms) if e is not None]
        return max(spent) if spent else None

    def clip_norm(self) -> float | None:
        """Differential privacy: the clip norm of the coming round, None without one."""
        return next((t.clip_norm for t in self.transforms if t.clip_norm is not None), None)

    def configure(self, rnd: int, params: np.ndarray, ids: list[int]) -> list:
        """The strategy's tasks for the sampled clients, told what the transforms need of them."""
        tasks = self.strategy.configure(rnd, params, ids)
        for transform in self.transforms:
            tasks = [transform.configure(t) for t in tasks]
        return tasks

    def aggregate(self, rnd: int, params: np.ndarray, updates) -> np.ndarray:
        """The strategy's step on the round's updates, after the transforms' server steps."""
        for transform in self.transforms:
            updates = transform.server_step(rnd, params, updates)
        if self.contribution is not None:  # it keeps each update the strategy aggregates, to score them after
            updates = self.contribution.watch(updates)
        return self.strategy.aggregate(rnd, params, updates)

    def contribution_figures(self, rnd: int, params: np.ndarray) -> dict:
        """The round's contribution scores (with `Parts.contribution`) of the updates `aggregate` just took."""
        if self.contribution is None:
            return {}
        return {"contribution": self.contribution.score(rnd, params, self.engine, self.dataset)}

    def client_state(self, client_id: int, params: np.ndarray):
        """A client's state as the server keeps it, or the strategy's first state for a client without one."""
        state = self.client_states.get(client_id)
        return self.strategy.first_state(params) if state is None else state

    def fit_figures(self, tally: Tally) -> dict:
        """The round's aggregated fit metrics (`Evaluation.fit_metrics_aggregation`, by default example-weighted
        means of what the accepted clients report)."""
        return fit_figures(tally.fit_metrics, self.evaluator.plan.fit_metrics_aggregation)

    def save_state(self) -> tuple:
        """What an attempt of a round may change and must leave untouched if it does not count."""
        return self.strategy.state(), [t.state() for t in self.transforms]

    def restore_state(self, saved: tuple) -> None:
        self.strategy.load_state(saved[0])
        for transform, state in zip(self.transforms, saved[1]):
            transform.load_state(state)

    def downloaded(self, rnd: int, params: np.ndarray) -> tuple[np.ndarray, int]:
        """(what the sampled clients receive, its bytes on the wire): the strategy's broadcast, as raw float32
        or as the download codecs make it."""
        sent = np.ascontiguousarray(self.strategy.broadcast(params), dtype=np.float32)
        if not self.download.stages:
            return sent, sent.nbytes
        ctx = CodecContext(rnd, SERVER_ID, self.workload.seed)
        payload = self.download.encode(sent, ctx)
        return np.ascontiguousarray(self.download.decode(payload, ctx)), len(payload)

    def fit_deadline(self, task, download: int, size: int):
        """The task itself if its full work arrives by the deadline, else the same task cut to the
        local steps that do (partial work, FedProx-style), or None if not even one step does.

        Time → steps: the compute time left is deadline − download time − upload time, and a step
        takes step_samples / samples_per_s seconds (step_samples = min(batch_size, the client's
        examples), as FitConfig.samples counts them). The upload is planned at the raw float32 size
        of the update (4 bytes a value): the real payload is not known before training, and no
        compressing codec makes it larger; a codec that does can make such a client late after all.
        The steps run with the same seed, so they are the first batches of the full work.
        """
        deadline = self.rules.deadline_s
        examples = len(self.dataset.train_idx[task.client_id])
        config = task.config
        device = self.system.device(task.client_id)
        planned_up = 4 * size
        if device.task_seconds(config.samples(examples), download, planned_up) <= deadline:
            return task
        steps = device.steps_within(deadline, download, planned_up, config.step_samples(examples))
        if steps < 1:
            return None
        return replace(task, config=replace(config, local_steps=steps))
