import math

import numpy as np
import pytest

from both_engines import run_on_both_engines
from crashes import Crash, crash_after
from fedstack.client import EvalResult, FitConfig, FitResult, batch_order
from fedstack.codec import Pipeline
from fedstack.plan import load_config
from fedstack.data import FederatedDataset
from fedstack.engine import LocalEngine, Workload
from fedstack.errors import ConfigError, FedstackError
from fedstack.experiment import run_config
from fedstack.loop import Asynchronous, Evaluation, Parts, Rules, Synchronous
from fedstack.strategy import FedAsync, FedAvg, FedBuff
from fedstack.systems import DeviceProfile, Fleet


class EchoTrainer:
    """Sends [client id, local steps taken, 1]; every example of client i has x = i."""

    def fit(self, params, data, config, state=None):
        cid = int(data.x[data.train_idx[0], 0])
        steps = len(batch_order(data.train_idx, config))
        return FitResult(np.array([cid, steps, 1], np.float32), len(data.train_idx), {"train_loss": 1.0})

    def evaluate(self, params, x, y):
        return EvalResult(0.0, 0, len(y))


def _async_server(speeds, strategy, records, *, rounds, concurrency, buffer_size=1, examples=1, **rules):
    """An asynchronous server over one client per speed (samples/s), transfers taking no time."""
    n = len(speeds)
    x = np.repeat(np.arange(n, dtype=np.float32), examples)[:, None]
    y = np.zeros(len(x), np.int64)
    ds = FederatedDataset.from_arrays(x, y, x[:1], y[:1], num_clients=n, partition="iid", holdout=0)
    ds.train_idx = [np.arange(i * examples, (i + 1) * examples) for i in range(n)]
    fleet = Fleet([DeviceProfile(samples_per_s=s, down_bytes_per_s=math.inf, up_bytes_per_s=math.inf)
                   for s in speeds])
    return Asynchronous(strategy, LocalEngine(), Workload(EchoTrainer, ds, Pipeline(), seed=0), rounds=rounds,
                        clients_per_round=1, rules=Rules(concurrency=concurrency, buffer_size=buffer_size, **rules),
                        evaluation=Evaluation(every=0, federated=False),
                        parts=Parts(system=fleet, callbacks=[lambda r, p: records.append(r)]))


def test_events_come_in_time_order_ties_in_start_order_with_their_staleness():
    # client 0 takes 1 s, client 1 takes 3 s; both always training (concurrency = population)
    records = []
    fit = FitConfig(batch_size=1)
    params = _async_server([1.0, 1 / 3], FedBuff(fit, staleness_exponent=1.0), records, rounds=4,
                           concurrency=2).run(np.zeros(3, np.float32))
    # by hand: t=1 client 0 (τ=0), t=2 client 0 (τ=0), t=3 client 1 (started first, from version 0: τ=2),
    # then t=3 client 0 (from version 2: τ=1). FedBuff with a buffer of 1: x += Δ/(1+τ)
    assert [r["sim_time_s"] for r in records] == [1.0, 2.0, 3.0, 3.0]
    assert [r["staleness_max"] for r in records] == [0, 0, 2, 1]
    np.testing.assert_allclose(params, [1 / 3, 2 + 1 / 3 + 1 / 2, 2 + 1 / 3 + 1 / 2])
    # clients started in each update's period: both at t=0; then the one whose result made the update
    assert [r["sampled"] for r in records] == [2, 1, 1, 1]
    assert all(r["clients"] == 1 and r["failures"] == 0 for r in records)


def test_fedasync_mixes_stale_client_models_from_their_own_base():
    records = []
    strategy = FedAsync(FitConfig(batch_size=1), alpha=0.5, staleness_exponent=0.0)
    params = _async_server([1.0, 1 / 3], strategy, records, rounds=4, concurrency=2).run(np.zeros(3, np.float32))
    # x ← ½x + ½(base + Δ): [0,.5,.5] → [0,1,1] → ½[0,1,1] + ½([0,0,0] + [1,1,1]) = [.5,1,1]
    # → ½[.5,1,1] + ½([0,1,1] + [0,1,1]) = [.25, 1.5, 1.5]
    np.testing.assert_allclose(params, [0.25, 1.5, 1.5])


def test_a_deadline_is_a_per_task_timeout_and_frees_the_slot():
    records = []
    server = _async_server([1.0, 0.1], FedBuff(FitConfig(batch_size=1)), records, rounds=6, concurrency=2,
                           deadline_s=5.0)
    server.run(np.zeros(3, np.float32))
    # client 1 (10 s) is given up at t=5, in the period of update 5; client 0 arrives every second
    assert [r["sim_time_s"] for r in records] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert [r["failures_by_kind"]["deadline"] for r in records] == [0, 0, 0, 0, 1, 0]


def test_partial_work_sends_what_fits_and_a_client_that_cannot_fit_a_step_is_not_started():
    records = []
    # 4 examples, batch 1: client 0 does 4 steps in 4 s, client 1 (0.5 samples/s) only 2 steps by the 5 s deadline
    server = _async_server([1.0, 0.5, 0.1], FedBuff(FitConfig(batch_size=1), staleness_exponent=0.0), records,
                           rounds=1, concurrency=2, buffer_size=2, examples=4, deadline_s=5.0, partial_work=True)
    params = server.run(np.zeros(3, np.float32))
    # client 2 needs 10 s for one step: never started (counted if drawn); 0 and 1 send [0, 4, 1] and [1, 2, 1] at 4 s
    np.testing.assert_allclose(params, [0.5, 3.0, 1.0])
    (record,) = records
    assert record["sim_time_s"] == 4.0 and record["partial"] == 1 and record["clients"] == 2
    # with seed 0 client 2 is drawn at t=0 and again when client 0 frees its slot at t=4, and never started
    assert record["failures_by_kind"]["deadline"] == 2 and record["sampled"] == 5


def test_sync_and_async_loops_refuse_each_others_strategies():
    records = []
    with pytest.raises(ConfigError, match="server.strategy"):
        _async_server([1.0, 1.0], FedAvg(), records, rounds=1, concurrency=1)
    server = _async_server([1.0, 1.0], FedBuff(), records, rounds=1, concurrency=1)
    with pytest.raises(ConfigError, match="server.strategy"):
        Synchronous(FedBuff(), LocalEngine(), server.workload, rounds=1, clients_per_round=1)
    with pytest.raises(ConfigError, match="server.concurrency"):
        _async_server([1.0, 1.0], FedBuff(), records, rounds=1, concurrency=3)
    with pytest.raises(ConfigError, match="server.overselect"):
        _async_server([1.0, 1.0], FedBuff(), records, rounds=1, concurrency=1, overselect=0.5)


def test_a_fleet_where_nobody_can_start_is_an_error_not_a_hang():
    with pytest.raises(FedstackError, match="no client can be started"):
        _async_server([0.1, 0.1], FedBuff(FitConfig(batch_size=1)), [], rounds=1, concurrency=1,
                      deadline_s=5.0, partial_work=True).run(np.zeros(3, np.float32))


def test_config_keys_of_the_asynchronous_loop_are_checked():
    with pytest.raises(ConfigError, match="server.concurrency"):
        load_config(None, ["server.concurrency=5"])  # fedavg has no concurrency
    with pytest.raises(ConfigError, match="server.overselect"):
        load_config(None, ["server.strategy=fedbuff", "server.overselect=0.3"])
    with pytest.raises(ConfigError, match="server.concurrency"):
        load_config(None, ["server.strategy=fedbuff", "data.num_clients=10", "server.concurrency=11"])


ASYNC_RUN = ["data.name=digits", "model.name=logreg", "data.num_clients=20", "server.clients_per_round=4",
             "eval.federated=false", "systems.profile=heterogeneous", "systems.dropout=0.2", "seed=3"]


def test_fedbuff_on_a_heterogeneous_fleet_is_bit_identical_on_local_and_pool_and_learns(tmp_path):
    local, _ = run_on_both_engines([*ASYNC_RUN, "server.strategy=fedbuff", "server.rounds=12", "server.concurrency=8",
                                    "server.buffer_size=4", "server.deadline_s=2", "client.partial_work=true",
                                    "server.sampler=available"], tmp_path)
    rounds = local.rounds
    assert len(rounds) == 12
    assert sum(r["failures_by_kind"]["dropout"] for r in rounds) > 0
    assert max(r["staleness_max"] for r in rounds) > 0
    times = [r["sim_time_s"] for r in rounds]
    assert times == sorted(times) and times[0] > 0
    assert rounds[-1]["test_accuracy"] > max(0.5, rounds[0]["test_accuracy"] + 0.2)  # it learns


def test_fedasync_is_bit_identical_on_local_and_pool_with_oort(tmp_path):
    local, _ = run_on_both_engines([*ASYNC_RUN, "server.strategy=fedasync", "server.rounds=10", "server.concurrency=4",
                                    "server.sampler=oort", "eval.every=5"], tmp_path)
    assert all(r["clients"] == 1 for r in local.rounds)


def test_a_crashed_asynchronous_run_resumes_from_its_last_update(tmp_path):
    config = load_config(None, [*ASYNC_RUN, "server.strategy=fedbuff", "server.rounds=6", "engine.name=local"])
    with pytest.raises(Crash):
        run_config(config, tmp_path / "run", on_round=[crash_after(3)])
    resumed = run_config(config, tmp_path / "run")
    assert [r["round"] for r in resumed.rounds] == [1, 2, 3, 4, 5, 6]
    times = [r["sim_time_s"] for r in resumed.rounds]
    assert times == sorted(times)
