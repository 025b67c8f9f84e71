"""The synchronous round loop: sample, configure, run, aggregate, evaluate, record."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Callable, Iterator

import numpy as np

from . import evaluation
from .client import FitConfig
from .codec import CodecContext, Pipeline
from .engine import Engine, Outcome, Workload
from .errors import FedstackError
from .sampling import UniformSampler
from .seeding import int_seed
from .store import MemoryClientStates
from .strategy import (ClientUpdate, Strategy, broadcast, needs_client_state, restore_strategy_state,
                       strategy_state)
from .systems import UniformSystem

log = logging.getLogger("fedstack.server")

# The client id in the codec context of the server's own messages (the global model on the way down).
SERVER_ID = 2**32 - 1


class Server:
    """Runs `rounds` synchronous rounds of `strategy` over `engine`; owns only the loop.

    After each round it calls every `on_round(record)` with the round's figures (the keys of
    metrics.jsonl); a store, a progress bar and the metrics file are such callbacks.
    Evaluation intervals: N = every N rounds and after the last; 0 = only after the last;
    None (federated only) = never. With `finetune`, federated evaluation also reports each
    client's accuracy after fine-tuning the global model with that config (personalisation).

    A strategy whose clients keep state (SCAFFOLD) needs an engine that can carry it; where
    the server keeps it ("task" engines), it lives in `client_states` (a RunStore, or memory).
    """

    def __init__(self, strategy: Strategy, engine: Engine, workload: Workload, *, rounds: int,
                 clients_per_round: int, min_clients: int = 1, eval_every: int = 1,
                 federated_eval_every: int | None = 0, test_shard: int = 1000, sampler=None,
                 system=None, round_retries: int = 2, client_states=None, finetune: FitConfig | None = None,
                 download: Pipeline | None = None,
                 on_round: list[Callable[[dict, np.ndarray], None]] | None = None):
        self.strategy = strategy
        self.engine = engine
        self.workload = workload
        self.rounds = rounds
        self.clients_per_round = clients_per_round
        self.min_clients = min_clients
        self.round_retries = round_retries
        self.eval_every = eval_every
        self.federated_eval_every = federated_eval_every
        self.test_shard = test_shard
        self.dataset = workload.dataset
        self.sampler = sampler or UniformSampler(self.dataset.num_clients, workload.seed)
        self.system = system or UniformSystem()
        self.on_round = list(on_round or [])
        self.rejected = 0
        self.finetune = finetune
        self.download = download or Pipeline()
        self.keeps_state = False  # whether this server keeps client state and sends it with tasks
        who = ("server.strategy", type(strategy).__name__) if needs_client_state(strategy) else \
            ("codec.pipeline", "error feedback") if workload.pipeline.stateful else None
        if who is not None:
            where = getattr(engine, "client_state", None)
            if where not in ("task", "device"):
                raise FedstackError(f"{who[0]}: {who[1]} keeps state on each client across rounds, which "
                                    f"engine {type(engine).__name__} cannot carry")
            self.keeps_state = where == "task"
        self.client_states = client_states if client_states is not None else MemoryClientStates()

    def run(self, params: np.ndarray, start_round: int = 1, sim_time: float = 0.0) -> np.ndarray:
        """Train from `params` (a resumed run starts later, its clock at `sim_time`); returns the final params."""
        params = np.ascontiguousarray(params, dtype=np.float32)
        started = time.perf_counter()
        try:
            self.engine.start(self.workload)
            for rnd in range(start_round, self.rounds + 1):
                params, record = self.round_with_retries(rnd, params)
                sim_time += record.pop("round_sim_s")
                record["sim_time_s"] = sim_time
                record.update(self.evaluate(rnd, params))
                record["wall_time_s"] = time.perf_counter() - started
                for callback in self.on_round:
                    callback(record, params)
        finally:
            self.engine.close()
        return params

    def round_with_retries(self, rnd: int, params: np.ndarray) -> tuple[np.ndarray, dict]:
        """A round, tried again (with other clients) while fewer than `min_clients` succeed."""
        totals = {"failures": 0, "bytes_up": 0, "bytes_down": 0, "bytes_up_raw": 0, "bytes_down_raw": 0,
                  "round_sim_s": 0.0}
        for attempt in range(self.round_retries + 1):
            before = strategy_state(self.strategy)
            new_params, record = self.round(rnd, params, attempt)
            states = record.pop("client_states")
            for key in totals:
                totals[key] += record[key]
            if record["clients"] >= self.min_clients:
                if states:
                    self.client_states.put(rnd, states)
                break
            restore_strategy_state(self.strategy, before)  # an attempt that did not count leaves no trace
            log.warning("round %d: %d successful clients < server.min_clients=%d; %s", rnd, record["clients"],
                        self.min_clients, "retrying" if attempt < self.round_retries else "global model kept")
        return new_params, {**record, **totals, "attempts": attempt + 1}

    def round(self, rnd: int, params: np.ndarray, attempt: int = 0) -> tuple[np.ndarray, dict]:
        """One training round; returns the new params (unchanged below `min_clients`) and the round's figures."""
        seed = self.workload.seed
        ids = self.sampler.sample(rnd, self.clients_per_round, attempt)
        tasks = [replace(t, config=replace(t.config, seed=int_seed(seed, "client", rnd, t.client_id)))
                 for t in self.strategy.configure(rnd, params, ids)]
        if self.keeps_state:
            tasks = [replace(t, state=self.client_states.get(t.client_id)) for t in tasks]
        sent = np.ascontiguousarray(broadcast(self.strategy, params), dtype=np.float32)
        download = sent.nbytes  # the global vector travels as raw float32, or as the download codecs make it
        if self.download.stages:
            ctx = CodecContext(rnd, SERVER_ID, seed)
            payload = self.download.encode(sent, ctx)
            sent, download = np.ascontiguousarray(self.download.decode(payload, ctx)), len(payload)
        tally = {"clients": 0, "failures": 0, "bytes_up": 0, "bytes_up_raw": 0, "round_sim_s": 0.0}
        states: dict[int, np.ndarray] = {}

        def updates() -> Iterator[ClientUpdate]:
            for outcome in self.engine.run(sent, tasks):
                update = self._accept(outcome, sent.size, tally)
                if update is not None:
                    if self.keeps_state and outcome.value.state is not None:
                        states[update.client_id] = outcome.value.state
                    device = self.system.device(update.client_id)
                    work = outcome.task.config.samples(update.num_examples)
                    tally["round_sim_s"] = max(tally["round_sim_s"], device.task_seconds(
                        work, download, len(outcome.value.payload)))
                    yield update

        new_params = self.strategy.aggregate(rnd, params, updates())
        if tally["clients"] < self.min_clients:
            new_params = params
        record = {"round": rnd, **tally, "bytes_down": download * len(tasks),
                  "bytes_down_raw": sent.nbytes * len(tasks), "client_states": states}
        return np.ascontiguousarray(new_params, dtype=np.float32), record

    def _accept(self, outcome: Outcome, size: int, tally: dict) -> ClientUpdate | None:
        """Decode and check one client's result; a failure or a malformed update is counted, not fatal."""
        task = outcome.task
        if outcome.error is not None:
            tally["failures"] += 1
            log.warning("round %d: client %d failed: %s", task.round, task.client_id, outcome.error)
            return None
        reply = outcome.value
        tally["bytes_up"] += len(reply.payload)
        tally["bytes_up_raw"] += 4 * size  # what the update would weigh as raw float32
        try:
            ctx = CodecContext(task.round, task.client_id, self.workload.seed)
            update = self.workload.pipeline.decode(reply.payload, ctx)
            problem = check_update(update, size, reply.num_examples)
        except Exception as exc:  # an undecodable payload is the client's fault, not the round's
            problem = f"undecodable payload ({exc})"
        if problem:
            tally["failures"] += 1
            self.rejected += 1
            log.warning("round %d: rejected update from client %d: %s", task.round, task.client_id, problem)
            return None
        tally["clients"] += 1
        return ClientUpdate(task.client_id, update, reply.num_examples, reply.metrics)

    def evaluate(self, rnd: int, params: np.ndarray) -> dict:
        """Central test-set figures (every `eval_every` rounds and the last), and federated ones."""
        figures: dict = {"test_accuracy": None, "test_loss": None, "test_top3_accuracy": None}
        last = rnd == self.rounds
        if last or (self.eval_every and rnd % self.eval_every == 0):
            total = evaluation.test_set(self.engine, params, self.dataset, self.test_shard)
            figures.update(test_accuracy=total.accuracy, test_loss=total.loss,
                           test_top3_accuracy=total.top3_accuracy)
        every = self.federated_eval_every
        if every is not None and (last or (every and rnd % every == 0)):
            figures["federated"] = self.federated_evaluate(params)
            if self.finetune is not None:
                figures["personalized"] = self.federated_evaluate(params, self.finetune)
        return figures

    def federated_evaluate(self, params: np.ndarray, finetune: FitConfig | None = None) -> dict | None:
        """Accuracy of `params` on each client's held-out split (after fine-tuning with `finetune`)."""
        return evaluation.per_client(self.engine, params, self.dataset, self.workload.seed, finetune)


def check_update(update: np.ndarray, size: int, num_examples: int) -> str | None:
    """Why a decoded update may not touch the aggregate (wrong length, NaN/inf, bad weight), or None."""
    if not isinstance(update, np.ndarray) or update.shape != (size,):
        return f"expected {size} values, got shape {getattr(update, 'shape', None)}"
    if not np.isfinite(update).all():
        return "non-finite values"
    if num_examples < 0:
        return f"negative num_examples {num_examples}"
    return None
