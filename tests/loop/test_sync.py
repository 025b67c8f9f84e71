import logging

import numpy as np

from both_engines import run_on_both_engines
from fedstack.client import EvalResult, FitResult
from fedstack.codec import Pipeline
from fedstack.data import FederatedDataset
from fedstack.engine import LocalEngine, Workload
from fedstack.loop import Evaluation, Parts, Rules, Synchronous
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
    return Synchronous(FedAvg(), LocalEngine(), workload, rounds=rounds, clients_per_round=clients_per_round,
                       rules=Rules(min_clients=min_clients), evaluation=Evaluation(federated=False),
                       parts=Parts(callbacks=[lambda r, p: records.append(r)]))


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


# ---- rounds on the simulated clock of a device fleet (issue 6) ----

import math  # noqa: E402

import pytest  # noqa: E402

from fedstack.client import FitConfig, batch_order  # noqa: E402
from fedstack.errors import ConfigError  # noqa: E402
from fedstack.sampling import AvailableSampler, UniformSampler  # noqa: E402
from fedstack.systems import Availability, DeviceProfile, Fleet, UniformSystem, from_trace, heterogeneous  # noqa: E402


class EchoTrainer:
    """Sends [client id, local steps taken, 1]; every example of client i has x = i."""

    def fit(self, params, data, config, state=None):
        cid = int(data.x[data.train_idx[0], 0])
        steps = len(batch_order(data.train_idx, config))
        return FitResult(np.array([cid, steps, 1], np.float32), len(data.train_idx), {"steps": steps})

    def evaluate(self, params, x, y):
        return EvalResult(0.0, 0, len(y))


def _fleet_server(system, records, *, num_clients, clients_per_round, examples=1, rounds=1, sampler=None,
                  fit=FitConfig(batch_size=1), **rules):
    """A server over `num_clients` clients of `examples` examples each, on the fleet `system`."""
    x = np.repeat(np.arange(num_clients, dtype=np.float32), examples)[:, None]
    y = np.zeros(len(x), np.int64)
    ds = FederatedDataset.from_arrays(x, y, x[:1], y[:1], num_clients=num_clients, partition="iid", holdout=0)
    ds.train_idx = [np.arange(i * examples, (i + 1) * examples) for i in range(num_clients)]
    workload = Workload(EchoTrainer, ds, Pipeline(), seed=0)
    return Synchronous(FedAvg(fit), LocalEngine(), workload, rounds=rounds, clients_per_round=clients_per_round,
                       rules=Rules(**rules), evaluation=Evaluation(every=0, federated=False),
                       parts=Parts(system=system, sampler=sampler, callbacks=[lambda r, p: records.append(r)]))


def _write_trace(tmp_path, rows):
    path = tmp_path / "fleet.csv"
    path.write_text("client_id,samples_per_s,down_mbps,up_mbps,availability\n" + "".join(
        f"{cid},{speed},{down},{up},{avail}\n" for cid, speed, down, up, avail in rows))
    return path


KBYTE = 0.008  # Mbit/s: 1000 bytes/s


def test_a_deadline_drops_the_slow_device_and_the_round_waits_for_it_until_the_deadline(tmp_path):
    # model down and update up are 12 bytes each, at 1000 B/s: 0.012 s each way; one sample to train on
    trace = _write_trace(tmp_path, [(0, 4, KBYTE, KBYTE, ""), (1, 2, KBYTE, KBYTE, ""), (2, 0.1, KBYTE, KBYTE, "")])
    fleet = from_trace(trace, 3)
    records = []
    params = _fleet_server(fleet, records, num_clients=3, clients_per_round=3, deadline_s=5.0).run(
        np.zeros(3, np.float32))
    np.testing.assert_array_equal(params, [0.5, 1.0, 1.0])  # clients 0 and 1; client 2 needs 10.024 s
    r = records[0]
    assert r["clients"] == 2 and r["failures"] == 1
    assert r["failures_by_kind"] == {"dropout": 0, "deadline": 1, "unavailable": 0, "error": 0, "rejected": 0}
    assert r["sim_time_s"] == 5.0  # a straggler cannot be told from a slow device: the server waits it out
    assert r["bytes_up"] == 2 * 12 and r["bytes_down"] == 3 * 12  # the late update never counted
    # nobody late: the round lasts until its slowest accepted result, by hand
    records = []
    _fleet_server(fleet, records, num_clients=3, clients_per_round=3, deadline_s=11.0).run(np.zeros(3, np.float32))
    assert records[0]["clients"] == 3 and records[0]["sim_time_s"] == 12 / 1000 + 1 / 0.1 + 12 / 1000
    # with over-selection the round closes at its K-th accepted result, before the deadline
    records = []
    _fleet_server(fleet, records, num_clients=3, clients_per_round=2, deadline_s=5.0, overselect=0.5).run(
        np.zeros(3, np.float32))
    assert records[0]["sim_time_s"] == 12 / 1000 + 1 / 2 + 12 / 1000
    assert records[0]["overselected"] == 1 and records[0]["failures"] == 0


def test_overselection_aggregates_exactly_the_first_k_to_arrive():
    speeds = [1, 6, 2, 5, 3, 4]  # finishing order: 1, 3, 5, 4, 2, 0
    fleet = Fleet([DeviceProfile(samples_per_s=s, down_bytes_per_s=1e6, up_bytes_per_s=1e6) for s in speeds])
    records = []
    params = _fleet_server(fleet, records, num_clients=6, clients_per_round=3, overselect=1.0, rounds=2).run(
        np.zeros(3, np.float32))
    for r in records:
        assert (r["sampled"], r["clients"], r["overselected"], r["failures"]) == (6, 3, 3, 0)
    assert records[0]["sim_time_s"] == 12 / 1e6 + 1 / 4 + 12 / 1e6  # the third arrival: client 5
    assert records[1]["sim_time_s"] == 2 * records[0]["sim_time_s"]
    np.testing.assert_allclose(params, [2 * (1 + 3 + 5) / 3, 2, 2], rtol=1e-6)
    # equal devices arrive together: ties go to task order (the lowest ids)
    records = []
    params = _fleet_server(UniformSystem(), records, num_clients=6, clients_per_round=2, overselect=2.0).run(
        np.zeros(3, np.float32))
    np.testing.assert_array_equal(params, [0.5, 1, 1])


def test_dropouts_are_counted_by_kind_deterministically():
    system = UniformSystem(DeviceProfile(dropout=0.3), seed=0)

    def run():
        records = []
        params = _fleet_server(system, records, num_clients=20, clients_per_round=10, rounds=5).run(
            np.zeros(3, np.float32))
        return params, records

    params, records = run()
    sampler = UniformSampler(20, 0)
    for r in records:
        dropped = sum(system.drops(r["round"], 0, c) for c in sampler.sample(r["round"], 10))
        assert r["failures_by_kind"]["dropout"] == dropped == r["failures"] == 10 - r["clients"]
        assert r["bytes_down"] == 10 * 12  # a dropout received the model before it dropped
        assert r["bytes_up"] == r["clients"] * 12
    assert sum(r["failures"] for r in records) > 0
    again = run()
    np.testing.assert_array_equal(params, again[0])
    assert [{k: v for k, v in r.items() if k != "wall_time_s"} for r in records] == \
           [{k: v for k, v in r.items() if k != "wall_time_s"} for r in again[1]]


def test_partial_work_returns_the_steps_that_fit_and_is_aggregated():
    # 10 examples, batch 1, one epoch: 10 steps. Client 2 trains 2 samples/s: the full work takes 5 s.
    fleet = Fleet([DeviceProfile(s, 1e6, 1e6) for s in (100, 100, 2)])
    records = []
    params = _fleet_server(fleet, records, num_clients=3, clients_per_round=3, examples=10, deadline_s=3.0,
                           partial_work=True).run(np.zeros(3, np.float32))
    r = records[0]
    assert (r["clients"], r["partial"], r["failures"]) == (3, 1, 0)
    # (3 s − 2 × 12 B / 1e6 B/s) × 2 samples/s = 5.99995 samples: 5 steps
    np.testing.assert_allclose(params, [1, (10 + 10 + 5) / 3, 1], rtol=1e-6)
    assert r["sim_time_s"] == 12 / 1e6 + 5 / 2 + 12 / 1e6  # it finished before the deadline
    # without partial work the same device misses the deadline
    records = []
    params = _fleet_server(fleet, records, num_clients=3, clients_per_round=3, examples=10, deadline_s=3.0).run(
        np.zeros(3, np.float32))
    assert records[0]["failures_by_kind"]["deadline"] == 1 and records[0]["sim_time_s"] == 3.0
    np.testing.assert_allclose(params, [0.5, 10, 1])
    # a device too slow for even one step is late either way
    slow = Fleet([DeviceProfile(s, 1e6, 1e6) for s in (100, 100, 0.1)])
    records = []
    _fleet_server(slow, records, num_clients=3, clients_per_round=3, examples=10, deadline_s=3.0,
                  partial_work=True).run(np.zeros(3, np.float32))
    assert records[0]["failures_by_kind"]["deadline"] == 1 and records[0]["partial"] == 0


def test_offline_clients_fail_and_a_retry_starts_when_the_failed_attempt_ended():
    # client 1 comes online at t = 1 s; client 0 takes 2 s per task
    fleet = Fleet([DeviceProfile(0.5, 1e6, 1e6), DeviceProfile(1, 1e6, 1e6, Availability.intervals([(1, 1e9)]))])
    records = []
    params = _fleet_server(fleet, records, num_clients=2, clients_per_round=2, min_clients=2).run(
        np.zeros(3, np.float32))
    r = records[0]
    assert r["attempts"] == 2 and r["clients"] == 2
    assert r["failures_by_kind"]["unavailable"] == 1 and r["failures"] == 1
    first = 12 / 1e6 + 1 / 0.5 + 12 / 1e6
    assert r["sim_time_s"] == first + first  # attempt 1 at t = 2.000024 s, both online, client 0 the slowest
    np.testing.assert_array_equal(params, [0.5, 1, 1])


def test_when_nobody_is_online_the_server_waits_for_the_first_device():
    later = Availability.intervals([(100, 200), (500, 600)])
    fleet = Fleet([DeviceProfile(1, 1e6, 1e6, later)] * 3)
    records = []
    _fleet_server(fleet, records, num_clients=3, clients_per_round=2, rounds=2).run(np.zeros(3, np.float32))
    task = 12 / 1e6 + 1 / 1 + 12 / 1e6
    assert records[0]["sim_time_s"] == 100 + task and records[0]["clients"] == 2
    assert records[1]["sim_time_s"] == 100 + 2 * task


def test_the_available_sampler_in_a_diurnal_fleet_never_meets_an_offline_client():
    fleet = heterogeneous(30, seed=4, diurnal=True, online_hours=4, speed_median=0.001)  # ~17 min tasks
    records = []
    _fleet_server(fleet, records, num_clients=30, clients_per_round=5, rounds=12,
                  sampler=AvailableSampler(30, fleet, 0)).run(np.zeros(3, np.float32))
    assert all(r["failures_by_kind"]["unavailable"] == 0 for r in records)
    assert all(r["clients"] == r["sampled"] for r in records)
    assert records[-1]["sim_time_s"] > 3600
    records = []  # the uniform sampler asks offline devices
    _fleet_server(fleet, records, num_clients=30, clients_per_round=5, rounds=12).run(np.zeros(3, np.float32))
    assert sum(r["failures_by_kind"]["unavailable"] for r in records) > 0


def test_errors_and_rejections_are_failures_of_their_own_kind():
    records = []
    _server(5, 5, records).run(np.zeros(3, np.float32))
    assert records[0]["failures_by_kind"] == {"dropout": 0, "deadline": 0, "unavailable": 0, "error": 1,
                                              "rejected": 2}


def test_bad_deadlines_and_overselection_are_refused_naming_the_key():
    for kwargs, key in [({"deadline_s": -1.0}, "server.deadline_s"), ({"overselect": -0.1}, "server.overselect"),
                        ({"overselect": 0.5}, "server.overselect"), ({"partial_work": True}, "client.partial_work")]:
        with pytest.raises(ConfigError) as err:
            _fleet_server(UniformSystem(), [], num_clients=4, clients_per_round=3, **kwargs)
        assert err.value.key == key


def test_local_and_pool_agree_bit_for_bit_on_a_heterogeneous_fleet_with_a_deadline(tmp_path):

    local, _ = run_on_both_engines([
        "data.name=\"digits\"", "data.num_clients=12", "model.name=\"logreg\"", "server.rounds=3",
        "server.clients_per_round=4", "server.overselect=0.5", "server.deadline_s=1.5",
        "client.partial_work=true", "systems.profile=\"heterogeneous\"", "systems.dropout=0.2",
        "systems.diurnal=true", "systems.online_hours=16", "server.sampler=\"available\"",
        "eval.federated=false", "seed=5"], tmp_path)
    assert sum(r["partial"] for r in local.rounds) > 0
    assert sum(r["failures_by_kind"]["dropout"] + r["overselected"] for r in local.rounds) > 0
    assert all(math.isfinite(r["sim_time_s"]) for r in local.rounds)


def test_oort_learns_from_rounds_and_a_resumed_run_picks_the_same_clients(tmp_path):
    from crashes import Crash, crash_after
    from fedstack.plan import load_config
    from fedstack.experiment import run_config

    overrides = ["data.name=digits", "model.name=logreg", "data.num_clients=30", "server.clients_per_round=5",
                 "server.rounds=5", "eval.federated=false", "eval.every=0", "systems.profile=heterogeneous",
                 "server.sampler=oort", "server.deadline_s=3", "seed=1"]
    local, _ = run_on_both_engines(overrides, tmp_path)
    config = load_config(None, [*overrides, "engine.name=local"])
    with pytest.raises(Crash):
        run_config(config, tmp_path / "resumed", on_round=[crash_after(3)])
    resumed = run_config(config, tmp_path / "resumed")  # the sampler's utilities come back from the checkpoint
    np.testing.assert_array_equal(resumed.params, local.params)
    assert [r["sim_time_s"] for r in resumed.rounds] == [r["sim_time_s"] for r in local.rounds]


class CountingEngine(LocalEngine):
    """A local engine that says it runs tasks in parallel, and records what each `run` call carried."""

    parallel = True

    def __init__(self):
        self.batches = []

    def run(self, params, tasks):
        self.batches.append([type(t).__name__ for t in tasks])
        return super().run(params, tasks)


def test_a_rounds_evaluation_rides_with_the_next_rounds_training():
    """Same records as evaluating on its own, in one engine batch per round instead of two."""
    from fedstack.plan import load_config
    from fedstack.experiment import simulate
    from fedstack.plan import client_side, dataset_of
    from fedstack.strategy import FedOpt

    config = load_config(None, ["data.name=digits", "data.num_clients=8", "server.clients_per_round=3",
                                 "model.name=logreg", "seed=5"])
    dataset = dataset_of(config)
    factory, params0, fit, _ = client_side(config, dataset)

    def run(engine, strategy):
        history = simulate(factory, dataset, params0, strategy=strategy, rounds=3, clients_per_round=3,
                           engine=engine, seed=5, evaluation=Evaluation(federated=False))
        return history.params, [{k: v for k, v in r.items() if k != "wall_time_s"} for r in history.rounds]

    plain_params, plain_records = run(LocalEngine(), FedAvg(fit))
    counting = CountingEngine()
    params, records = run(counting, FedAvg(fit))
    assert np.array_equal(params, plain_params) and records == plain_records
    assert all(r["test_accuracy"] is not None for r in records)
    # digits' test set is one shard; the last round has no next round to ride with
    assert counting.batches == [["Task"] * 3, ["EvalTask"] + ["Task"] * 3, ["EvalTask"] + ["Task"] * 3,
                                ["EvalTask"]]
    counting = CountingEngine()  # a server optimizer keeps state a checkpoint saves: no riding
    run(counting, FedOpt(fit=fit))
    assert counting.batches == [["Task"] * 3, ["EvalTask"]] * 3


def test_mean_train_loss_weighs_by_examples_and_skips_what_is_not_a_loss():
    from fedstack.loop import mean_train_loss

    assert mean_train_loss([(1.0, 1), (4.0, 3)]) == 3.25
    assert mean_train_loss([(2.0, 5), (float("nan"), 100), (None, 7), (6.0, 5)]) == 4.0  # DP-SGD's NaN skipped
    assert mean_train_loss([(1.0, 0), (3.0, 0)]) == 2.0  # no weight at all: the plain mean
    assert mean_train_loss([(float("nan"), 3)]) is None and mean_train_loss([]) is None


class LossTrainer(ScriptedTrainer):
    """Client i trains on i + 1 examples with loss i; client 3 updates with NaN (rejected)."""

    def fit(self, params, data, config, state=None):
        cid = int(data.train_idx[0])
        update = np.full(params.shape, np.nan if cid == 3 else 0.1, np.float32)
        return FitResult(update, cid + 1, {"train_loss": float(cid)})


def test_a_round_records_the_mean_train_loss_of_its_accepted_updates():
    import dataclasses

    records = []
    server = _server(4, 4, records)
    server.workload = dataclasses.replace(server.workload, trainer_factory=LossTrainer)
    server.run(np.zeros(3, np.float32))
    (record,) = records
    assert record["clients"] == 3 and record["rejected_by_reason"]["non_finite"] == 1
    assert record["train_loss"] == (0 * 1 + 1 * 2 + 2 * 3) / (1 + 2 + 3)  # client 3's loss is not counted
    assert "dp_clients" not in record and "client_states" not in record


def test_a_clients_privacy_figures_are_checked_before_they_reach_the_ledger():
    from fedstack.validation import dp_release

    assert dp_release({"dp_steps": 12.0, "dp_sample_rate": 0.25}) == (12, 0.25)
    for bad in ({"dp_steps": float("nan"), "dp_sample_rate": 0.1}, {"dp_steps": 3.0},
                {"dp_steps": 2.5, "dp_sample_rate": 0.1}, {"dp_steps": 1e12, "dp_sample_rate": 0.1},
                {"dp_steps": 3.0, "dp_sample_rate": 1.5}, {"dp_steps": -1.0, "dp_sample_rate": 0.1}):
        assert dp_release(bad) is None, bad  # the NaN one used to crash the round loop (int(nan))
