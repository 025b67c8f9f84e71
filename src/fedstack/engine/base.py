"""The Engine protocol and the one function every engine calls to run a task on a client."""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Union

import numpy as np

from ..client import EVALUATED_ONCE, EvalResult, FitConfig, Task, Trainer, flipped
from ..codec import CodecContext, Pipeline
from ..data.csr import Partition
from ..personal import STATE_KEY


@dataclass(frozen=True)
class EvalTask:
    """Evaluate on the server's test examples [start, stop), or on one client's held-out split.

    With `finetune`, the client first trains the model on its training split with that
    config (personalised evaluation) and is evaluated on the result.
    """

    start: int = 0
    stop: int = 0
    client_id: int | None = None
    finetune: FitConfig | None = None
    span: tuple[int, int] | None = None  # evaluate this slice of the engine's vector (see Task.span)
    # the server's validation examples: these rows of the training pool instead of the test examples (contribution
    # scores judge coalition models on a validation set drawn from the pool)
    examples: np.ndarray | None = field(default=None, repr=False, compare=False)
    # a personalised algorithm's client half: the client's own model is judged (its state holds the personal part)
    personal: Any = None
    state: Any = field(default=None, repr=False, compare=False)
    once: bool = False  # these params are evaluated in this one task (client.EVALUATED_ONCE while it runs)


@dataclass
class FitReply:
    """What a client sends back after training: the encoded update and its weight."""

    payload: bytes
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    state: dict | None = field(default=None, repr=False)  # the client's new state, where the server keeps it
    train_s: float = 0.0  # seconds in the trainer, then in the codecs (simulation engines measure them)
    encode_s: float = 0.0
    # The payload decoded and checked by a transport on arrival (gRPC: shape, dtype, finite values, a bounded
    # weight): the round loop neither decodes nor checks it again.
    update: np.ndarray | None = field(default=None, repr=False)


@dataclass
class Outcome:
    """The result of one task, or the error that ended it, and the seconds it took."""

    task: Union[Task, EvalTask]
    value: Union[FitReply, EvalResult, None] = None
    error: str | None = None
    seconds: float = 0.0


@dataclass
class Workload:
    """What every worker needs, built once per run: a Trainer factory, the data, client codecs."""

    trainer_factory: Callable[[], Trainer]
    dataset: Any  # FederatedDataset
    pipeline: Pipeline
    seed: int


class Engine:
    """Runs tasks somewhere (in-process, worker processes, Ray, remote devices).

    `run` yields one Outcome per task, in task order, so results never depend on timing.
    Every engine declares what it can do (the defaults below, overridden as class attributes):
    `client_state` — where clients' state lives: "task" (the server keeps it and sends it with each
    Task; FitReply.state brings it back), "device" (each client keeps its own) or "none" (it cannot
    carry any: strategies with client state are refused); `parallel` — it runs several tasks at once
    (a round's evaluation may then share a batch with the next round's training); `workers` — how many;
    `exchanges` — it reaches real devices that can answer protocol steps (`exchange`, `session`:
    deployed secure and homomorphic aggregation).
    """

    client_state: str = "none"
    parallel: bool = False
    workers: int = 1
    exchanges: bool = False

    def start(self, workload: Workload) -> None:
        """Get ready to run the workload's tasks (start workers, share the data set)."""

    def run(self, params: np.ndarray, tasks: list) -> Iterator[Outcome]:
        raise NotImplementedError(f"{type(self).__name__} runs no tasks")

    def close(self) -> None:
        """Release what `start` took."""

    def exchange(self, round: int, stage: str, requests: dict[int, bytes]) -> dict[int, bytes]:
        """One protocol step with devices: {client id: request} → {client id: reply} (engines that `exchanges`)."""
        raise NotImplementedError(f"{type(self).__name__} reaches no devices that answer protocol steps")

    def session(self, client_id: int) -> int:
        """How many times a device has joined (a new value: it lost what earlier protocol steps gave it)."""
        return 0

    def evaluators(self, dataset) -> list[int]:
        """The clients a federated evaluation asks: here those whose held-out split is not empty (a deployed
        engine asks the devices connected now, which alone know their data)."""
        return np.flatnonzero(Partition.from_lists(dataset.holdout_idx).sizes()).tolist()


def task_cost(task, dataset) -> float:
    """A task's rough cost in example-passes, to start the longest first (forward and backward ≈ 3 forward)."""
    if isinstance(task, EvalTask):
        if task.examples is not None:
            return float(len(task.examples))
        if task.client_id is None:
            return float(task.stop - task.start)
        tuning = 3 * task.finetune.samples(len(dataset.train_idx[task.client_id])) if task.finetune else 0
        return float(len(dataset.holdout_idx[task.client_id]) + tuning)
    return 3.0 * task.config.samples(len(dataset.train_idx[task.client_id]))


def longest_first(tasks: list, dataset) -> list[int]:
    """Task indices in the order to start them: longest first, so no worker is left with a long
    task while the others idle at the end of a batch (LPT scheduling); ties keep task order."""
    costs = [task_cost(t, dataset) for t in tasks]
    return sorted(range(len(tasks)), key=lambda i: -costs[i])


def fit_and_encode(trainer: Trainer, pipeline: Pipeline, seed: int, task, data, params: np.ndarray) -> FitReply:
    """Train one client and encode its update; the one client-side path of every engine and device.

    Client state is a dict of arrays: the trainer's own under "trainer" (SCAFFOLD's control
    variate), each error-feedback codec's residual under its stage key.
    """
    state = task.state or {}
    if task.config.flip_labels:  # a simulated malicious client poisons its own data (fedstack.attack)
        data = flipped(data, task.config.flip_labels)
    started = time.perf_counter()
    personal = task.config.personal
    if personal is not None:  # a personalised algorithm's client half runs the fit and keeps the personal part
        result = personal.fit(trainer, params, data, replace(task.config, personal=None), state.get(STATE_KEY))
    else:
        result = trainer.fit(params, data, task.config, state.get("trainer"))
    trained = time.perf_counter()
    ctx = CodecContext(task.round, task.client_id, seed, task.config.clip_norm)
    payload, new_state = pipeline.encode_with_state(result.update, ctx, state)
    if result.state is not None:
        new_state[STATE_KEY if personal is not None else "trainer"] = result.state
    return FitReply(payload, result.num_examples, result.metrics, new_state or None,
                    trained - started, time.perf_counter() - trained)


def evaluate_held_out(trainer: Trainer, data, params: np.ndarray, finetune=None, personal=None, state=None):
    """One client's EvalResult on its held-out split, after fine-tuning on its training split with `finetune`
    (personalised evaluation) — or of its own model under a personalised algorithm (`personal`, with the
    client's `state`); the one client-side evaluation of every engine and device."""
    idx = data.holdout_idx
    if not len(idx):  # nothing held out (a device may hold none): no figures, and no fine-tuning for them
        return EvalResult()
    if personal is not None:
        params = personal.own_model(trainer, params, data, (state or {}).get(STATE_KEY))
    if finetune is not None:
        params = params + trainer.fit(params, data, finetune).update
    return trainer.evaluate(params, data.x[idx], data.y[idx])


def execute(trainer: Trainer, workload: Workload, task, params: np.ndarray) -> Outcome:
    """Run one fit or evaluation task with `trainer`; errors become a failed Outcome."""
    started = time.perf_counter()
    try:
        if task.span is not None:
            params = params[task.span[0]:task.span[1]]
        data = workload.dataset
        if isinstance(task, EvalTask):
            token = EVALUATED_ONCE.set(task.once)
            try:
                if task.examples is not None:
                    value = trainer.evaluate(params, data.x[task.examples], data.y[task.examples])
                elif task.client_id is None:
                    value = trainer.evaluate(params, data.x_test[task.start:task.stop],
                                             data.y_test[task.start:task.stop])
                else:
                    value = evaluate_held_out(trainer, data.client(task.client_id), params, task.finetune,
                                              task.personal, task.state)
            finally:
                EVALUATED_ONCE.reset(token)
        else:
            value = fit_and_encode(trainer, workload.pipeline, workload.seed, task, data.client(task.client_id), params)
            task = replace(task, state=None)  # the old state need not travel back
        return Outcome(task, value, None, time.perf_counter() - started)
    except Exception as exc:  # a failing client must not end the run; the server counts it
        detail = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return Outcome(task, None, detail, time.perf_counter() - started)
