import logging

import numpy as np

from fedstack.client import EvalResult, FitResult
from fedstack.codec import Pipeline
from fedstack.data import FederatedDataset
from fedstack.engine import LocalEngine, Workload
from fedstack.server import Server
from fedstack.strategy import FedAvg


class ScriptedTrainer:
    """Client i sends an update of all i's; client 1 sends NaN, client 2 the wrong size, client 3 raises."""

    def fit(self, params, data, config, state=None):
        cid = int(data.train_idx[0])  # one sample per client, sample i belongs to client i (iid of n=n)
        if cid == 1:
            return FitResult(np.full(params.shape, np.nan, np.float32), 1)
        if cid == 2:
            return FitResult(np.zeros(params.size + 1, np.float32), 1)
        if cid == 3:
            raise RuntimeError("device on fire")
        return FitResult(np.full(params.shape, float(cid), np.float32), 1)

    def evaluate(self, params, x, y):
        return EvalResult(float(np.abs(params).sum()) * len(y), 0, len(y))


def _server(num_clients, clients_per_round, records, rounds=1, min_clients=1):
    x = np.zeros((num_clients, 1), np.float32)
    y = np.zeros(num_clients, np.int64)
    ds = FederatedDataset.from_arrays(x, y, x, y, num_clients=num_clients, partition="iid", holdout=0)
    # from_arrays shuffles; give client i sample i so the scripted behaviour is predictable
    ds.train_idx = [np.array([i]) for i in range(num_clients)]
    workload = Workload(ScriptedTrainer, ds, Pipeline(), seed=0)
    return Server(FedAvg(), LocalEngine(), workload, rounds=rounds, clients_per_round=clients_per_round,
                  min_clients=min_clients, federated_eval_every=None, on_round=[lambda r, p: records.append(r)])


def test_bad_updates_are_rejected_counted_and_the_round_goes_on(caplog):
    records = []
    server = _server(5, 5, records)
    with caplog.at_level(logging.WARNING, logger="fedstack.server"):
        params = server.run(np.zeros(3, np.float32))
    # clients 0 and 4 succeed: mean of 0 and 4 is 2
    np.testing.assert_array_equal(params, [2.0, 2.0, 2.0])
    assert records[0]["clients"] == 2 and records[0]["failures"] == 3
    assert server.rejected == 2
    text = caplog.text
    assert "non-finite" in text and "expected 3 values" in text and "device on fire" in text


def test_too_few_clients_keeps_the_global_model():
    records = []
    server = _server(5, 5, records, min_clients=3)
    params = server.run(np.ones(3, np.float32))
    np.testing.assert_array_equal(params, [1.0, 1.0, 1.0])
    assert records[0]["clients"] == 2
    assert records[0]["attempts"] == 3 and records[0]["failures"] == 9  # tried twice more, in vain


def test_a_retried_round_draws_other_clients_and_can_succeed():
    records = []
    server = _server(12, 3, records, rounds=4, min_clients=3)  # clients 1, 2, 3 always fail
    server.run(np.zeros(3, np.float32))
    retried = [r for r in records if r["attempts"] > 1]
    assert retried, "with 3 of 12 clients failing, some round must have needed another draw"
    assert all(r["clients"] >= 3 for r in retried if r["attempts"] < 3)


def test_round_records_carry_the_metrics_contract():
    records = []
    _server(6, 2, records, rounds=3).run(np.zeros(3, np.float32))
    assert [r["round"] for r in records] == [1, 2, 3]
    for r in records:
        assert {"round", "test_accuracy", "test_loss", "clients", "failures", "bytes_up", "bytes_down",
                "wall_time_s", "sim_time_s"} <= set(r)
        assert r["bytes_down"] == 2 * 3 * 4  # two clients, three float32 each
    assert records[-1]["sim_time_s"] > records[0]["sim_time_s"] > 0


def test_a_round_that_does_not_count_leaves_the_strategy_state_alone():
    from fedstack.strategy import FedOpt

    records = []
    server = _server(5, 5, records, min_clients=3)  # only 2 clients ever succeed
    server.strategy = FedOpt("fedavgm", server_lr=1.0)
    params = server.run(np.ones(3, np.float32))
    np.testing.assert_array_equal(params, [1.0, 1.0, 1.0])
    assert server.strategy.state() == {}  # no momentum from the three discarded attempts
