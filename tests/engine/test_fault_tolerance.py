"""A pool worker killed with SIGKILL in the middle of a whole run loses only its task."""

import functools
import os
import signal

import numpy as np
import pytest

from fedstack.plan import load_config
from fedstack.engine import make_engine
from fedstack.experiment import rules_of, simulate
from fedstack.loop import Evaluation, Parts
from fedstack.plan import client_side, dataset_of
from fedstack.strategy import build_strategy
from fedstack.systems import build_system


class KillOnce:
    """A trainer whose worker process kills itself (kill -9) on its third fit, once in the whole run."""

    def __init__(self, marker: str, factory):
        self.marker, self.inner, self.fits = marker, factory(), 0

    def fit(self, params, data, config, state=None):
        self.fits += 1
        if self.fits == 3:
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))  # only the first worker to get here
            except FileExistsError:
                pass
            else:
                os.kill(os.getpid(), signal.SIGKILL)
        return self.inner.fit(params, data, config, state)

    def evaluate(self, params, x, y):
        return self.inner.evaluate(params, x, y)


@pytest.mark.parametrize("loop", [["server.deadline_s=3", "server.overselect=0.5"],
                                  ["server.strategy=fedbuff", "server.concurrency=6", "server.buffer_size=3"]],
                         ids=["sync", "fedbuff"])
def test_a_killed_pool_worker_loses_only_its_task_and_the_run_ends_with_the_same_bits(loop, tmp_path):
    config = load_config(None, ["data.name=digits", "model.name=logreg", "data.num_clients=20",
                                "server.clients_per_round=4", "server.rounds=3", "systems.profile=heterogeneous",
                                "systems.dropout=0.2", *loop])
    dataset = dataset_of(config)
    factory, params, fit, _ = client_side(config, dataset)

    def run(trainer_factory):
        s = config.server
        return simulate(trainer_factory, dataset, params, strategy=build_strategy(s, fit, dataset.num_clients),
                        rounds=s.rounds, clients_per_round=s.clients_per_round, engine=make_engine("pool", 2),
                        seed=config.seed, rules=rules_of(config), evaluation=Evaluation(federated=False),
                        parts=Parts(system=build_system(config.systems, dataset.num_clients, config.seed)))

    calm = run(factory)
    marker = tmp_path / "killed"
    killed = run(functools.partial(KillOnce, str(marker), factory))
    assert marker.exists()  # a worker really died mid-task
    np.testing.assert_array_equal(killed.params, calm.params)
    same = [{k: v for k, v in r.items() if k != "wall_time_s"} for r in killed.rounds]
    assert same == [{k: v for k, v in r.items() if k != "wall_time_s"} for r in calm.rounds]
    assert sum(r["failures_by_kind"]["error"] for r in killed.rounds) == 0
