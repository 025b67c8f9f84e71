"""Evaluation over any engine: the central test set in shards, and each client's held-out split."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .client import EvalResult, FitConfig
from .engine import EvalTask
from .seeding import int_seed


def test_set(engine, params: np.ndarray, dataset, shard: int = 1000, stop: int | None = None,
             span: tuple[int, int] | None = None) -> EvalResult:
    """`params` (or its `span`) on the test examples [0, stop), in fixed shards whose sums add in order."""
    return total(engine.run(params, shards(dataset, shard, stop, span)))


def shards(dataset, shard: int = 1000, stop: int | None = None, span: tuple[int, int] | None = None) -> list:
    """The evaluation tasks of the test examples [0, stop), `shard` examples each."""
    size = len(dataset.y_test) if stop is None else min(stop, len(dataset.y_test))
    return [EvalTask(a, min(a + shard, size), span=span) for a in range(0, size, shard)]


def total(outcomes) -> EvalResult:
    """The sum of the shards' results, in order; a failed shard fails the evaluation."""
    result = EvalResult()
    for outcome in outcomes:
        if outcome.error:
            raise RuntimeError(f"evaluation failed: {outcome.error}")
        result = result + outcome.value
    return result


def clients(engine, params: np.ndarray, dataset, seed: int, finetune: FitConfig | None = None,
            span_of=None, personal=None, state_of=None) -> dict[int, EvalResult]:
    """The results of the clients the engine asks (`Engine.evaluators`) on their held-out splits, those
    with examples, by client id in client order.

    With `finetune`, each client first trains on its training split with that config (seeded per
    client from the run seed) and is judged on its own fine-tuned model. `span_of(i)` picks client
    i's slice of `params` when every client holds its own model (decentralized nodes). With `personal`
    (a personalised algorithm's client half), each client is judged on its own model, built from `params`
    (what clients receive) and its state, `state_of(i)`.
    """
    def tuning(i: int) -> FitConfig | None:
        return None if finetune is None else replace(finetune, seed=int_seed(seed, "client", 0, i))

    asked = engine.evaluators(dataset)
    tasks = [EvalTask(client_id=i, finetune=tuning(i), span=span_of(i) if span_of else None, personal=personal,
                      state=state_of(i) if state_of else None) for i in asked]
    outcomes = engine.run(params, tasks) if tasks else []
    return {o.task.client_id: o.value for o in outcomes if o.error is None and o.value.examples}


def spread(results: dict[int, EvalResult]) -> dict | None:
    """Accuracy over clients (loss, `"of": "loss"`, for a task without classes): mean and 10th/50th/90th
    percentiles, and each client's own (`by_client`, keyed by the client id as a string), or None."""
    if not results:
        return None
    losses = next(iter(results.values())).accuracy is None  # no classes (regression): the clients' losses
    values = {cid: r.loss if losses else r.accuracy for cid, r in results.items()}
    figures = distribution(list(values.values()))
    figures["by_client"] = {str(cid): value for cid, value in values.items()}
    return {**figures, "of": "loss"} if losses else figures


def distribution(accuracies) -> dict | None:
    """Mean, 10th/50th/90th percentiles and count of per-client accuracies (None when there are none)."""
    accuracies = np.asarray(accuracies, dtype=np.float64)
    if not len(accuracies):
        return None
    return {"mean": float(accuracies.mean()), "p10": float(np.percentile(accuracies, 10)),
            "p50": float(np.percentile(accuracies, 50)), "p90": float(np.percentile(accuracies, 90)),
            "clients": int(len(accuracies))}
