"""When and what a loop evaluates: the central test set and each client's held-out split."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .. import evaluation
from ..client import EvalResult, FitConfig
from ..profiling import Profile
from ..options import Evaluation
from ..personal import STATE_KEY


@dataclass
class OwnModels:
    """What judging each client's own model takes under a personalised algorithm: its client half, what
    clients receive of the global params (`Strategy.broadcast`), and client i's state (`state(i, params)`)."""

    personal: Any  # fedstack.personal.Personalization
    received: Callable[[np.ndarray], np.ndarray]
    state: Callable[[int, np.ndarray], Any]
    one_model: bool = True  # the strategy's params are one model every client could use (Strategy.one_model)
    span_of: Callable[[int], tuple[int, int] | None] | None = None  # client i's slice of them (Strategy.model_of)


def own_params(own: OwnModels, params: np.ndarray, dataset, trainer) -> dict[int, np.ndarray]:
    """Each client's own model's parameters, by client id: what `Evaluator.own_models` judges (`trainer`
    evaluates where a client half picks among models, IFCA's)."""
    received = own.received(params)
    models = {}
    for i in range(dataset.num_clients):
        got = received if own.span_of is None else received[slice(*own.span_of(i))]
        state = own.state(i, params) if own.personal is not None else None
        models[i] = np.array(got if own.personal is None
                             else own.personal.own_model(trainer, got, dataset.client(i), (state or {}).get(STATE_KEY)),
                             np.float32)
    return models


class Evaluator:
    """Central test-set figures every `every` rounds and after the last, federated ones every
    `federated_every` rounds and after the last (see `Evaluation`), on the loop's engine.

    Without a central test set (a deployed server may hold none), the clients' held-out data is the test
    set: federated evaluation runs on the central schedule too, and the test figures are the sums of the
    clients' results — loss, accuracy and the task's own metrics weighted by each client's examples.
    Under clustered training there is no one global model (`OwnModels.one_model` False): each client's own
    model alone is judged, and its results make the test figures the same way."""

    def __init__(self, engine, dataset, seed: int, plan: Evaluation, rounds: int, profile: Profile | None = None):
        self.engine, self.dataset, self.seed, self.plan = engine, dataset, seed, plan
        self.rounds, self.profile = rounds, profile
        self.central = len(dataset.y_test) > 0
        self.own: OwnModels | None = None  # a personalised algorithm's clients' own models (the loop sets it)

    def _scheduled(self, rnd: int, every: int | None) -> bool:
        return every is not None and (rnd == self.rounds or bool(every and rnd % every == 0))

    @property
    def one_model(self) -> bool:
        return self.own is None or self.own.one_model

    def central_due(self, rnd: int) -> bool:
        return self.central and self.one_model and self._scheduled(rnd, self.plan.every)

    def federated_due(self, rnd: int) -> bool:
        return self._scheduled(rnd, self.plan.federated_interval) or (
            not (self.central and self.one_model) and self._scheduled(rnd, self.plan.every))

    def figures(self, rnd: int, params: np.ndarray, central: bool = True, stacked: np.ndarray | None = None) -> dict:
        """The round's evaluation figures (test_* None when not due; `central=False`: left for later).
        `stacked`: every client holds its own model, row i client i's (gossip); federated evaluation judges
        each on its own held-out split."""
        started = time.perf_counter()
        figures: dict = {"test_accuracy": None, "test_loss": None, "test_top3_accuracy": None}
        if central and self.central_due(rnd):
            total = evaluation.test_set(self.engine, params, self.dataset, self.plan.test_shard)
            figures.update(test_figures(total, self.plan.finish_metrics))
        if self.federated_due(rnd) and self.one_model:
            own, span_of = params, None
            if stacked is not None:
                P = stacked.shape[1]
                own, span_of = stacked.reshape(-1), (lambda i: (i * P, (i + 1) * P))
            results = self.clients(own, span_of=span_of)
            figures["federated"] = evaluation.spread(results)
            if not self.central and self._scheduled(rnd, self.plan.every) and results:
                figures.update(test_figures(sum(results.values(), EvalResult()), self.plan.finish_metrics))
            if self.plan.finetune is not None:
                figures["personalized"] = evaluation.spread(self.clients(own, self.plan.finetune, span_of))
        if rnd == self.rounds and self.plan.local_only is not None:  # the baseline: each client alone
            figures["local_only"] = evaluation.spread(self.clients(self.plan.local_start, self.plan.local_only))
        if self.own is not None and (self.federated_due(rnd) or self._scheduled(rnd, self.plan.every)):
            results = self.own_models(params)
            figures["personal"] = evaluation.spread(results)
            if not self.one_model and self._scheduled(rnd, self.plan.every) and results:
                figures.update(test_figures(sum(results.values(), EvalResult()), self.plan.finish_metrics))
        if self.profile is not None:
            self.profile.evaluate_wall_s += time.perf_counter() - started
        return figures

    def clients(self, params: np.ndarray, finetune: FitConfig | None = None, span_of=None) -> dict[int, EvalResult]:
        """Each asked client's result on its held-out split (after fine-tuning with `finetune`)."""
        return evaluation.clients(self.engine, params, self.dataset, self.seed, finetune, span_of)

    def own_models(self, params: np.ndarray) -> dict[int, EvalResult]:
        """Each asked client's own model (a personalised algorithm's) on its held-out split."""
        own = self.own
        return evaluation.clients(self.engine, own.received(params), self.dataset, self.seed, span_of=own.span_of,
                                  personal=own.personal, state_of=lambda i: own.state(i, params))

    def shards(self) -> list:
        """The central evaluation's tasks (to run in another batch of the engine: `test_figures(total(...))`)."""
        return evaluation.shards(self.dataset, self.plan.test_shard)


def test_figures(result, finish=None) -> dict:
    """A central evaluation's figures for the round's record; the task's own metrics as `test_metrics`,
    each sum's mean per example unless `finish(sums, examples) -> metrics` says otherwise (Flower's
    evaluate_metrics_aggregation_fn: an F1 score from summed true and false positives, say)."""
    figures = {"test_accuracy": result.accuracy, "test_loss": result.loss, "test_top3_accuracy": result.top3_accuracy}
    if result.sums:
        figures["test_metrics"] = finish(dict(result.sums), result.examples) if finish else result.metrics()
    return figures
