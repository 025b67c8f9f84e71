import numpy as np
import pytest

from fedstack.attack import (Attack, alie, alie_z, boost, build_attack, flip_labels, flipped, ipm, malicious_ids,
                             sign_flip)
from fedstack.client import FitConfig
from fedstack.plan import load_config
from fedstack.data.dataset import ClientData
from fedstack.errors import ConfigError
from fedstack.experiment import _refuse_simulated_fleet, run_config
from fedstack.strategy import ClientUpdate, Task

F32 = np.float32


def _round(rows, ids=None):
    ids = range(len(rows)) if ids is None else ids
    return [ClientUpdate(cid, np.asarray(r, F32), 1) for cid, r in zip(ids, rows)]


def test_the_pure_transformations():
    u = np.array([1, -2], F32)
    np.testing.assert_array_equal(sign_flip(u, 4), [-4, 8])
    np.testing.assert_array_equal(boost(u, 10), [10, -20])
    seen = np.array([[1, 0], [3, 4]], F32)  # mean [2, 2], population std [1, 2]
    np.testing.assert_allclose(alie(seen, 1.5), [0.5, -1])
    np.testing.assert_allclose(ipm(seen, 0.1), [-0.2, -0.2])
    np.testing.assert_array_equal(flip_labels(np.array([0, 3, 9, -1]), 10), [9, 6, 0, -1])


def test_alie_z_follows_baruch_et_al():
    # n = 50, f = 12 (their CIFAR setting): s = ⌊26⌋ − 12 = 14, z = Φ⁻¹(36/50) ≈ 0.583
    assert alie_z(50, 12) == pytest.approx(0.5828, abs=1e-3)
    assert alie_z(10, 2) == pytest.approx(0.2533, abs=1e-3)  # s = 4, Φ⁻¹(0.6)


def test_update_attacks_replace_only_the_malicious_updates_in_place():
    updates = _round([[1, 1], [2, 0], [0, 2], [5, 5]])
    out = Attack("sign_flip", frozenset({1, 3}), 10, scale=2).tamper(1, updates)
    assert [u.client_id for u in out] == [0, 1, 2, 3]
    assert out[0] is updates[0] and out[2] is updates[2]
    np.testing.assert_array_equal(out[1].update, [-4, 0])
    np.testing.assert_array_equal(out[3].update, [-10, -10])
    scaled = Attack("scale", frozenset({0}), 10, clients_per_round=5).tamper(1, updates)  # γ = clients per round
    np.testing.assert_array_equal(scaled[0].update, [5, 5])


def test_gaussian_is_seeded_by_round_and_client():
    updates = _round([[0] * 1000, [0] * 1000])
    attack = Attack("gaussian", frozenset({0, 1}), 10, seed=3, scale=0.5)
    a, b = attack.tamper(1, updates), attack.tamper(1, updates)
    np.testing.assert_array_equal(a[0].update, b[0].update)
    assert not np.array_equal(a[0].update, a[1].update)
    assert not np.array_equal(a[0].update, attack.tamper(2, updates)[0].update)
    assert a[0].update.std() == pytest.approx(0.5, rel=0.1)


def test_what_colluding_attacks_see():
    updates = _round([[0, 0], [10, 10], [1, 0], [3, 4]])  # clients 2 and 3 are malicious
    pooled = Attack("ipm", frozenset({2, 3}), 10, epsilon=1.0).tamper(1, updates)
    for u in pooled[2:]:
        np.testing.assert_allclose(u.update, [-2, -2])  # −ε × the mean of their own honest updates
    alone = Attack("ipm", frozenset({2, 3}), 10, epsilon=1.0, collude=False).tamper(1, updates)
    np.testing.assert_allclose(alone[2].update, [-1, 0])
    np.testing.assert_allclose(alone[3].update, [-3, -4])
    everyone = Attack("ipm", frozenset({2, 3}), 10, epsilon=1.0, omniscient=True).tamper(1, updates)
    np.testing.assert_allclose(everyone[3].update, [-3.5, -3.5])
    z = alie_z(4, 2)  # s = 1: z = Φ⁻¹(3/4)
    shifted = Attack("alie", frozenset({2, 3}), 10).tamper(1, updates)
    np.testing.assert_allclose(shifted[2].update, np.array([2, 2]) - z * np.array([1, 2]), rtol=1e-6)
    assert updates[2].update.tolist() == [1, 0]  # the honest updates are not touched


def test_data_attacks_mark_only_the_malicious_clients_tasks():
    attack = Attack("label_flip", frozenset({4}), 10)
    assert attack.task(Task(1, 4, FitConfig())).config.flip_labels == 10
    assert attack.task(Task(1, 5, FitConfig())).config.flip_labels == 0
    assert Attack("scale", frozenset({4}), 7).task(Task(1, 4, FitConfig())).config.flip_labels == 7
    assert Attack("sign_flip", frozenset({4}), 7).task(Task(1, 4, FitConfig())).config.flip_labels == 0
    y = np.array([0, 1, 2, 3])
    data = ClientData(np.zeros((4, 1)), y, np.array([1, 2]), np.array([3]))
    assert flipped(data, 4).y.tolist() == [0, 2, 1, 3] and y.tolist() == [0, 1, 2, 3]


def test_malicious_ids_come_from_the_run_seed():
    a = malicious_ids(100, seed=7, fraction=0.2)
    assert len(a) == 20 and np.array_equal(a, malicious_ids(100, seed=7, fraction=0.2))
    assert not np.array_equal(a, malicious_ids(100, seed=8, fraction=0.2))
    assert len(malicious_ids(10, 0, fraction=0.01)) == 1  # a fraction > 0 means at least one
    assert malicious_ids(100, 0, ids=[5, 3, 5]).tolist() == [3, 5]
    section = load_config(None, ["attack.name=alie", "attack.fraction=0.3", "data.num_clients=10"]).attack
    attack = build_attack(section, 10, 10, seed=0, clients_per_round=10)
    assert len(attack.malicious) == 3 and attack.colludes


@pytest.mark.parametrize("overrides, key", [
    (["attack.name=sign_flip"], "attack.fraction"),
    (["attack.fraction=0.2"], "attack.name"),
    (["attack.name=sign_flip", "attack.fraction=0.2", "attack.ids=[1]"], "attack.ids"),
    (["attack.name=sign_flip", "attack.ids=[100]"], "attack.ids"),
    (["attack.name=alie", "attack.fraction=0.2", "server.strategy=fedbuff"], "attack.name"),
    (["attack.name=sign_flip", "attack.fraction=0.2", "codec.pipeline=[\"clip\", \"secagg\"]"], "attack.name"),
    (["attack.name=sign_flip", "attack.fraction=0.2", "decentralized.topology=ring"], "attack.name"),
])
def test_bad_attack_configs_are_refused_naming_the_key(overrides, key):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert info.value.key == key


def test_attacks_are_refused_for_a_deployed_server():
    with pytest.raises(ConfigError, match="attack.name"):
        _refuse_simulated_fleet(load_config(None, ["attack.name=label_flip", "attack.fraction=0.1"]))


SMALL = ["data.name=digits", "model.name=logreg", "data.num_clients=10", "data.partition=iid",
         "server.clients_per_round=10", "server.rounds=4", "engine.name=local", "eval.federated=false",
         "eval.every=0", "client.lr=0.1", "seed=1"]


def test_label_flip_and_fltrust_give_the_same_bits_on_local_and_pool(tmp_path):
    # FLTrust's server trains on its root data in the server process, the clients on the workers
    overrides = [*SMALL, "server.rounds=2", "data.num_clients=6", "server.clients_per_round=4",
                 "server.strategy=fltrust", "server.root_examples=50", "attack.name=label_flip", "attack.fraction=0.5"]
    local, pool = (run_config(load_config(None, [*overrides, f"engine.name={engine}", "engine.workers=2"]),
                              tmp_path / engine) for engine in ("local", "pool"))
    assert np.array_equal(local.params, pool.params)
    timings = {"wall_time_s", "aggregate_s", "root_s"}  # seconds measured, not results
    assert [{k: v for k, v in r.items() if k not in timings} for r in local.rounds] == \
           [{k: v for k, v in r.items() if k not in timings} for r in pool.rounds]
    assert all(r["root_s"] > 0 and r["robust_trusted"] <= 4 for r in local.rounds)
    honest = run_config(load_config(None, [o for o in overrides if not o.startswith("attack")]), tmp_path / "honest")
    assert not np.array_equal(local.params, honest.params)  # the flipped clients did train on other labels


def test_sign_flip_ruins_fedavg_and_the_median_survives(tmp_path):
    results = {}
    for name, extra in (("clean", []), ("fedavg", ["attack.name=sign_flip", "attack.fraction=0.3"]),
                        ("median", ["attack.name=sign_flip", "attack.fraction=0.3", "server.strategy=median"])):
        history = run_config(load_config(None, [*SMALL, *extra]), tmp_path / name)
        results[name] = history.rounds[-1]["test_accuracy"]
    assert results["clean"] > 0.7
    assert results["fedavg"] < 0.3  # three of ten clients send −4 × their update: FedAvg walks uphill
    assert results["median"] > results["clean"] - 0.1
