import os
import signal
import time

import numpy as np
import pytest

from both_engines import run_on_both_engines
from ray_runs import batchnorm_run, batchnorm_trainer
from fedstack.client import EvalResult, FitConfig, FitResult
from fedstack.codec import Pipeline
from fedstack.data import FederatedDataset
from fedstack.engine import EvalTask, LocalEngine, PoolEngine, Workload
from fedstack.strategy import Task


def test_same_seed_gives_identical_bits_on_local_and_pool(tmp_path):
    """The whole run — sampling, local SGD, aggregation, evaluation — is engine-independent."""
    local, _ = run_on_both_engines(["data.name=digits", "data.num_clients=12", "model.name=cnn",
                                    "server.rounds=3", "server.clients_per_round=5", "seed=7"], tmp_path)
    assert local.rounds[-1]["federated"]["clients"] == 12


class SlowTrainer:
    """Sleeps, then returns an update that encodes the client id; fails for client 13."""

    def fit(self, params, data, config, state=None):
        time.sleep(0.3)
        if data.num_examples == 0:
            raise ValueError("no data")
        return FitResult(np.full(params.shape, float(data.train_idx[0]), np.float32), data.num_examples)

    def evaluate(self, params, x, y):
        return EvalResult(float(params.sum()), 0, len(y))


def _workload(num_clients=8):
    x = np.zeros((num_clients, 1), np.float32)
    y = np.zeros(num_clients, np.int64)
    ds = FederatedDataset.from_arrays(x, y, x[:2], y[:2], num_clients=num_clients, partition="iid", holdout=0)
    return Workload(SlowTrainer, ds, Pipeline(), seed=0)


def _tasks(n):
    return [Task(1, i, FitConfig()) for i in range(n)]


def test_pool_reruns_the_task_of_a_killed_worker():
    workload = _workload()
    expected = [o.value.payload for o in _run(LocalEngine(), workload, _tasks(8))]
    engine = PoolEngine(workers=2)
    engine.start(workload)
    try:
        outcomes = []
        for outcome in engine.run(np.zeros(4, np.float32), _tasks(8)):
            outcomes.append(outcome)
            if len(outcomes) == 1:  # kill -9 a worker in the middle of a task
                victim = next(w for w in engine._pool if w.task is not None)
                os.kill(victim.process.pid, signal.SIGKILL)
        assert [o.error for o in outcomes] == [None] * 8
        assert [o.value.payload for o in outcomes] == expected
        assert [o.task.client_id for o in outcomes] == list(range(8))
    finally:
        engine.close()


def test_a_failing_client_is_an_outcome_not_a_crash():
    workload = _workload()
    parts = list(workload.dataset.train_idx)
    parts[3] = np.array([], dtype=np.int64)
    workload.dataset.train_idx = parts
    for engine in (LocalEngine(), PoolEngine(workers=2)):
        outcomes = _run(engine, workload, _tasks(5))
        assert [o.error is not None for o in outcomes] == [False, False, False, True, False]
        assert "no data" in outcomes[3].error


def test_pool_runs_evaluation_shards_in_order():
    outcomes = _run(PoolEngine(workers=2), _workload(), [EvalTask(0, 1), EvalTask(1, 2), EvalTask(0, 2)])
    assert [o.value.examples for o in outcomes] == [1, 1, 2]


def _run(engine, workload, tasks):
    engine.start(workload)
    try:
        return list(engine.run(np.zeros(4, np.float32), tasks))
    finally:
        engine.close()


def _broken_factory():
    raise ImportError("no such model library")


def test_a_worker_that_cannot_start_stops_the_run_with_the_reason():
    workload = _workload()
    workload = Workload(_broken_factory, workload.dataset, workload.pipeline, 0)
    engine = PoolEngine(workers=2)
    engine.start(workload)
    try:
        with pytest.raises(RuntimeError, match="no such model library"):
            list(engine.run(np.zeros(4, np.float32), _tasks(2)))
    finally:
        engine.close()


def test_batchnorm_statistics_are_federated_and_give_the_same_bits_on_local_and_pool():
    """Issue: BatchNorm's running statistics were never aggregated, so the server evaluated with whatever
    its own copy held and engines disagreed (local [0.400, 0.566, 0.538] vs pool [0.380, 0.418, 0.454])."""
    (local, local_acc), (pool, pool_acc) = batchnorm_run("local"), batchnorm_run("pool")
    np.testing.assert_array_equal(local, pool)
    assert local_acc == pool_acc
    trainer = batchnorm_trainer()
    buffers = trainer.model[2].running_mean.numel() + trainer.model[2].running_var.numel()
    weights = sum(p.numel() for p in trainer.model.parameters())
    assert local.size == weights + buffers  # the statistics travel; num_batches_tracked does not
    start = trainer.get_params()
    assert not np.array_equal(local[weights:], start[weights:])  # and they were trained and averaged
