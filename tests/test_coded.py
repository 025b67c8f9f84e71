"""Coded federated learning (issue 22): the combined gradient is unbiased, the load allocation by hand, parity
is encoded before it leaves a client, and whole runs on the simulated fleet."""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from crashes import straight_and_resumed
from fedstack.client import FitConfig
from fedstack.coded import (FourierFeatures, ParityRequest, RffTrainer, allocate, choose_rows, combined_gradient,
                            encode_parity, gradient, one_hot)
from fedstack.data import ClientData
from fedstack.errors import ConfigError
from fedstack.experiment import run_config
from fedstack.plan import load_config


@pytest.mark.parametrize("noise", [0.0, 0.3])
def test_the_combined_gradient_is_the_full_gradient_in_expectation(noise):
    """Two clients (6 and 4 points, processing 4 and 2 of them, arriving with probability 0.7 and 0.5), 5
    parity rows: over 20 000 draws of the encodings and the arrivals, the mean of the server's gradient
    is the full gradient, within 4 standard errors in every coordinate — and one draw is not. With noise
    on each parity set, the server's correction keeps it so."""
    draw = np.random.default_rng(0)
    xs = [draw.normal(size=(6, 3)), draw.normal(size=(4, 3))]
    ys = [one_hot(draw.integers(0, 2, 6), 2), one_hot(draw.integers(0, 2, 4), 2)]
    theta = draw.normal(size=(3, 2))
    requests = [ParityRequest(rows=5, width=5, load=4, arrival=0.7, noise=noise),
                ParityRequest(rows=5, width=5, load=2, arrival=0.5, noise=noise)]
    full = sum(gradient(theta, x, y) for x, y in zip(xs, ys))
    samples = []
    for _ in range(20_000):
        parity = sum(encode_parity(x, y, r, draw).reshape(5, 5).astype(np.float64)
                     for x, y, r in zip(xs, ys, requests))
        arrived = [gradient(theta, x[:r.load], y[:r.load]) for x, y, r in zip(xs, ys, requests)
                   if draw.random() < r.arrival]
        samples.append(combined_gradient(theta, arrived, parity[:, :3], parity[:, 3:], 2 * noise ** 2))
    samples = np.array(samples)
    error = np.abs(samples.mean(axis=0) - full)
    standard_error = samples.std(axis=0) / math.sqrt(len(samples))
    assert np.all(error < 4 * standard_error), (error, standard_error)
    assert np.abs(samples[0] - full).max() > 10 * standard_error.max()  # one draw alone is far from it


def test_the_load_allocation_by_hand():
    """Two clients of 100 points: 0.01 s and 0.04 s a point, 1 s and 2 s to download and upload; 50 parity
    rows leave 150 points to the clients. By t = 2 client 0 has done all 100 and client 1 none; client 1's
    50 more take 2 s: t* = 4, loads (100, 50)."""
    allocation = allocate([100, 100], [0.01, 0.04], [1.0, 2.0], [1.0, 1.0], rows=50)
    assert allocation.deadline == pytest.approx(4.0, abs=1e-6) and allocation.loads == (100, 50)
    assert allocation.expected_return == 150 and allocation.arrival == (1.0, 1.0)
    # with dropouts of 20 %, 150 expected points need 187.5 processed: client 1 does 88 by t* = 5.52
    dropping = allocate([100, 100], [0.01, 0.04], [1.0, 2.0], [0.8, 0.8], rows=50)
    assert dropping.loads == (100, 88) and dropping.deadline == pytest.approx(2 + 88 * 0.04, abs=1e-6)
    # without parity rows there is no deadline: everyone does everything
    assert allocate([100, 100], [0.01, 0.04], [1.0, 2.0], [1.0, 1.0], rows=0).loads == (100, 100)
    # more dropping than parity can cover: wait until every point could be done
    assert allocate([100, 100], [0.01, 0.04], [1.0, 2.0], [0.5, 0.5], rows=10).deadline == pytest.approx(6.0)


def test_the_allocation_chooses_the_redundancy_by_hand():
    """The two clients above, choosing among no parity, 50 rows (t* = 4) and 100 rows (t* = 2: client 0's
    100 points alone). Without parity a round lasts 6 s (client 1's 2 + 4). Uploading a row takes 0.01 s
    and 0.05 s: one round favours no parity (6 s against 2.5 + 4 and 5 + 2), ten rounds the most parity
    (60, 42.5, 25 s); a server that computes 10 rows a second makes 100 rows cost 10 s a round (50.1 s
    for 50 rows, 100.2 s for 100)."""
    fleet = ([100, 100], [0.01, 0.04], [1.0, 2.0], [1.0, 1.0])
    fractions = (0.0, 0.25, 0.5)
    rows, allocation, seconds = choose_rows(*fleet, [0.01, 0.05], 1000.0, 1, fractions)
    assert rows == 0 and seconds == pytest.approx(6.0) and allocation.deadline == 0
    rows, allocation, seconds = choose_rows(*fleet, [0.01, 0.05], 1000.0, 10, fractions)
    assert rows == 100 and seconds == pytest.approx(25.0) and allocation.deadline == pytest.approx(2.0)
    rows, allocation, seconds = choose_rows(*fleet, [0.001, 0.002], 10.0, 10, fractions)
    assert rows == 50 and seconds == pytest.approx(50.1) and allocation.loads == (100, 50)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 50), st.floats(0.01, 1), st.floats(0, 5), st.floats(0.5, 1)),
                min_size=1, max_size=6), st.floats(0.05, 0.9))
def test_the_allocation_is_the_earliest_deadline_that_covers_the_points(clients, fraction):
    sizes, per_point, fixed, stays = map(list, zip(*clients))
    rows = max(1, int(fraction * sum(sizes)))
    a = allocate(sizes, per_point, fixed, stays, rows)
    assert all(0 <= n <= s for n, s in zip(a.loads, sizes))
    assert all(n == 0 or fixed[i] + n * per_point[i] <= a.deadline + 1e-6 for i, n in enumerate(a.loads))
    if sum(st * s for st, s in zip(stays, sizes)) >= sum(sizes) - rows:
        assert a.expected_return >= sum(sizes) - rows - 1e-9
        earlier = a.deadline * (1 - 1e-3) - 1e-3  # a moment sooner, the clients' expected points fall short
        assert sum(sizes) - rows <= 0 or sum(st * min(s, max(0, math.floor((earlier - f) / p))) for st, s, f, p
                   in zip(stays, sizes, fixed, per_point)) < sum(sizes) - rows


def test_a_parity_set_leaves_the_client_encoded_never_as_its_data():
    """The bytes a client sends in round 0: u × (q + c) float32 values, in which no embedded example and
    no target row of its own appears (each is mixed with every other by G before anything is sent)."""
    features = FourierFeatures.drawn(4, 6, gamma=0.5, map_seed=1)
    trainer = RffTrainer(features, classes=3)
    draw = np.random.default_rng(2)
    data = ClientData(draw.normal(size=(12, 4)).astype(np.float32), draw.integers(0, 3, 12), np.arange(10),
                      np.arange(10, 12))
    result = trainer.fit(np.zeros(18, np.float32), data,
                         FitConfig(seed=5, parity=ParityRequest(rows=20, width=9, load=6, arrival=0.9)))
    payload = np.ascontiguousarray(result.update, np.float32).tobytes()
    assert len(payload) == 20 * (6 + 3) * 4
    embedded = features(data.x[:10])
    for row in range(10):
        for value in (embedded[row], embedded[row] * math.sqrt(0.1), embedded[row, :2]):
            assert np.ascontiguousarray(value, np.float32).tobytes() not in payload
    # the same draw from the same seed: every engine sends the same bits; another seed, other bits
    again = trainer.fit(np.zeros(18, np.float32), data, FitConfig(seed=5, parity=ParityRequest(20, 9, 6, 0.9)))
    other = trainer.fit(np.zeros(18, np.float32), data, FitConfig(seed=6, parity=ParityRequest(20, 9, 6, 0.9)))
    assert np.array_equal(again.update, result.update) and not np.array_equal(other.update, result.update)
    # a deployed device draws its encoding from the operating system: the seed no longer decides it
    trainer.on_device()
    drawn = trainer.fit(np.zeros(18, np.float32), data, FitConfig(seed=5, parity=ParityRequest(20, 9, 6, 0.9)))
    assert drawn.update.size == result.update.size and not np.array_equal(drawn.update, result.update)


def test_a_parity_request_travels_as_json_and_a_bad_one_is_refused_by_its_field():
    from fedstack.errors import FedstackError
    from fedstack.transport.server import reply_size, wire_config
    from fedstack.client import Task

    request = ParityRequest(rows=20, width=9, load=6, arrival=0.9, noise=0.01)
    tree = json.loads(wire_config(FitConfig(seed=5, parity=request)))
    assert ParityRequest.from_wire(tree["parity"]) == request
    assert reply_size(Task(0, 1, FitConfig(parity=request)), 18) == 180  # the parity set's size, not the model's
    bad = [({**tree["parity"], "rows": -1}, "rows"), ({**tree["parity"], "width": 2.5}, "width"),
           ({**tree["parity"], "arrival": 1.5}, "arrival"), ({**tree["parity"], "noise": float("nan")}, "noise"),
           ({**tree["parity"], "rows": 1 << 20, "width": 1 << 20}, "values"), ({"rows": 3}, "fields"),
           ({**tree["parity"], "load": True}, "load")]
    for wire, field in bad:
        with pytest.raises(FedstackError, match=field):
            ParityRequest.from_wire(wire)


def test_the_rff_trainer_takes_full_batch_gradient_steps_on_its_load():
    features = FourierFeatures.drawn(4, 6, gamma=0.5, map_seed=1)
    trainer = RffTrainer(features, classes=3)
    draw = np.random.default_rng(3)
    data = ClientData(draw.normal(size=(12, 4)).astype(np.float32), draw.integers(0, 3, 12), np.arange(10),
                      np.arange(10, 12))
    theta = draw.normal(size=18).astype(np.float32)
    result = trainer.fit(theta, data, FitConfig(local_steps=1, batch_size=4, lr=0.5))
    x, y = features(data.x[:4]), one_hot(data.y[:4], 3)
    want = -0.5 * gradient(theta.reshape(6, 3).astype(np.float64), x, y) / 4
    np.testing.assert_allclose(result.update.reshape(6, 3), want, rtol=1e-5, atol=1e-6)
    assert result.num_examples == 4


RUN = ["data.name=digits", "data.num_clients=10", "data.partition=iid", "model.name=rff", "server.strategy=coded",
       "server.clients_per_round=10", "server.rounds=6", "coded.features=100", "coded.gamma=0.002", "client.lr=1.0",
       "coded.redundancy=0.2", "systems.profile=heterogeneous", "systems.speed_sigma=1.5", "eval.every=3"]


def strip(history):
    return [{k: v for k, v in r.items() if k not in ("wall_time_s", "profile")} for r in history.rounds]


def test_coded_runs_give_the_same_bits_on_local_and_pool_and_beat_waiting_for_all(tmp_path):
    runs = {engine: run_config(load_config(None, [*RUN, f"engine.name={engine}", "engine.workers=2"]),
                               tmp_path / engine) for engine in ("local", "pool")}
    local, pool = runs["local"], runs["pool"]
    assert np.array_equal(local.params, pool.params) and strip(local) == strip(pool)
    first = local.rounds[0]
    update_bytes = 4 * local.params.size
    points = first["coded_points"]
    rows = round(0.2 * points)
    # round 0's parity sets, u × (q + c) values from each client, are booked to round 1
    assert first["parity_rows"] == rows and first["parity_clients"] == 10
    assert first["parity_bytes_up"] == 10 * rows * (100 + 10) * 4
    assert first["bytes_up"] == first["parity_bytes_up"] + first["clients"] * update_bytes
    assert all(r["bytes_up"] == r["clients"] * update_bytes for r in local.rounds[1:])
    summary = json.loads((tmp_path / "local" / "summary.json").read_text())
    assert summary["final"]["parity"] == {"bytes_up": first["parity_bytes_up"], "clients": 10,
                                          "rows_per_client": rows, "refused": 0}
    waiting = run_config(load_config(None, [*RUN, "coded.redundancy=0"]), tmp_path / "wait")
    assert "parity_bytes_up" not in waiting.rounds[0]
    later = [r["sim_time_s"] - p["sim_time_s"] for p, r in zip(local.rounds, local.rounds[1:])]
    waited = [r["sim_time_s"] - p["sim_time_s"] for p, r in zip(waiting.rounds, waiting.rounds[1:])]
    assert max(later) < min(waited)  # a coded round ends at its deadline, before the slowest client
    coded, full = local.rounds[-1]["test_accuracy"], waiting.rounds[-1]["test_accuracy"]
    assert coded > 0.6 and full > 0.6 and abs(coded - full) < 0.1, (coded, full)  # 10 classes: chance is 0.1


def test_an_auto_redundancy_run_records_the_rows_its_allocation_chose(tmp_path):
    """On the straggler-heavy fleet the allocation picks some parity (a fraction it searches), which every
    client uploads: the rows it chose, u × (q + c) values each."""
    from fedstack.coded import REDUNDANCIES

    summary = run_config(load_config(None, [*RUN, "server.rounds=2", "coded.redundancy=auto"]), tmp_path / "auto")
    first = summary.rounds[0]
    rows = first["parity_rows"]
    assert rows > 0 and rows in [round(f * first["coded_points"]) for f in REDUNDANCIES]
    assert first["parity_bytes_up"] == 10 * rows * (100 + 10) * 4


def test_a_resumed_coded_run_keeps_its_parity(tmp_path):
    straight, resumed = straight_and_resumed(load_config(None, [*RUN, "server.rounds=3"]), tmp_path)
    assert np.array_equal(resumed.params, straight.params)


@pytest.mark.parametrize("overrides, key", [
    (["model.name=mlp"], "model.name"),
    (["server.clients_per_round=5"], "server.clients_per_round"),
    (["privacy.trusted_server=false", "privacy.mode=local"], "privacy.trusted_server"),
    (['codec.pipeline=["qsgd"]'], "codec.pipeline"),
    (["server.deadline_s=3"], "server.deadline_s"),
    (["coded.redundancy=1"], "coded.redundancy"),
    (["coded.redundancy=most"], "coded.redundancy"),
    (["coded.features=0"], "coded.features"),
    (["coded.gamma=0"], "coded.gamma"),
])
def test_bad_coded_settings_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        run_config(load_config(None, [*RUN, *overrides]), None)


class Poisoning(RffTrainer):
    """A client whose parity set holds a NaN (the one whose encoding seed is `bad`)."""

    bad = None

    def fit(self, params, data, config, state=None):
        result = super().fit(params, data, config, state)
        if config.parity is not None and config.seed == self.bad:
            result.update[0] = np.nan
        return result


def test_a_parity_set_that_is_not_finite_is_refused_counted_and_the_run_goes_on():
    from fedstack.experiment import simulate
    from fedstack.options import Rules
    from fedstack.plan import client_side, coded_server, dataset_of
    from fedstack.seeding import int_seed
    from fedstack.systems import build_system

    config = load_config(None, [*RUN, "server.rounds=2"])
    dataset = dataset_of(config)
    factory, params, fit, _ = client_side(config, dataset)
    strategy = coded_server(config, dataset, build_system(config.systems, 10, config.seed), fit, params.size)
    Poisoning.bad = int_seed(config.seed, "coded", 2, 3)

    def poisoning():
        made = factory()
        return Poisoning(made.map, made.classes)

    history = simulate(poisoning, dataset, params, strategy=strategy, rounds=2, clients_per_round=10,
                       engine="local", seed=config.seed, rules=Rules(deadline_s=strategy.allocation.deadline))
    first = history.rounds[0]
    assert first["parity_refused"] == 1 and first["parity_clients"] == 9
    assert np.all(np.isfinite(history.params)) and np.all(np.isfinite(strategy.parity))


def test_a_device_shares_the_servers_feature_map_without_learning_the_run_seed():
    import tomllib

    from fedstack.config import validate
    from fedstack.plan import trainer_factory
    from fedstack.transport.server import client_view

    config = load_config(None, [*RUN, "seed=7"])
    view = validate(tomllib.loads(client_view(config)))
    assert view.seed != config.seed and view.coded.map_seed
    server = trainer_factory(config, (8, 8), 10)()
    device = trainer_factory(view, (8, 8), 10)()
    assert np.array_equal(server.map.omega, device.map.omega) and np.array_equal(server.map.phase, device.map.phase)
