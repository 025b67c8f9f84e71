import numpy as np
from hypothesis import given, settings, strategies as st

from fedstack.client import FitConfig
from fedstack.strategy import ClientUpdate, FedAvg, WeightedSum


def test_fedavg_hand_computed():
    params = np.array([1.0, 1.0], dtype=np.float32)
    updates = [ClientUpdate(0, np.array([1.0, 0.0], np.float32), 1),
               ClientUpdate(1, np.array([0.0, 4.0], np.float32), 3)]
    # (1*[1,0] + 3*[0,4]) / 4 = [0.25, 3]
    np.testing.assert_allclose(FedAvg().aggregate(1, params, iter(updates)), [1.25, 4.0])


def test_fedavg_without_updates_keeps_params():
    params = np.ones(3, np.float32)
    assert FedAvg().aggregate(1, params, iter([])) is params


def test_configure_gives_each_sampled_client_the_local_work():
    tasks = FedAvg(FitConfig(epochs=2, lr=0.1)).configure(4, np.zeros(1), [3, 7])
    assert [(t.round, t.client_id, t.config.epochs, t.config.lr) for t in tasks] == [(4, 3, 2, 0.1), (4, 7, 2, 0.1)]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 1000), min_size=1, max_size=20), st.integers(0, 2**31))
def test_weighted_sum_matches_numpy_average(weights, seed):
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(len(weights), 7)).astype(np.float32)
    acc = WeightedSum(7)
    for v, w in zip(vectors, weights):
        acc.add(v, w)
    np.testing.assert_allclose(acc.mean(), np.average(vectors, axis=0, weights=weights), rtol=1e-5, atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 100), min_size=1, max_size=10))
def test_identical_updates_average_to_themselves(weights):
    u = np.array([0.5, -2.0, 3.25], np.float32)
    out = FedAvg().aggregate(1, np.zeros(3, np.float32), (ClientUpdate(i, u, w) for i, w in enumerate(weights)))
    np.testing.assert_allclose(out, u, rtol=1e-6)


def test_weighted_sum_memory_is_one_vector():
    acc = WeightedSum(1000)
    for _ in range(50):
        acc.add(np.ones(1000, np.float32), 2)
    assert acc.total.nbytes == 8000 and acc.count == 50
