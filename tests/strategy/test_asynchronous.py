import numpy as np
import pytest
from hypothesis import given, strategies as st

from fedstack.strategy import ClientUpdate, FedAsync, FedBuff, staleness_weight


def test_staleness_weight_is_the_polynomial_of_xie_et_al():
    assert staleness_weight(0, 0.5) == 1.0
    assert staleness_weight(3, 0.5) == 0.5  # FedBuff's 1/√(1+τ)
    assert staleness_weight(7, 1.0) == 0.125
    assert staleness_weight(9, 0.0) == 1.0  # exponent 0: every update alike
    with pytest.raises(ValueError):
        staleness_weight(-1, 0.5)


def test_fedbuff_steps_by_the_plain_staleness_weighted_mean_of_its_buffer():
    params = np.array([1.0, 2.0], np.float32)
    updates = [ClientUpdate(0, np.array([2.0, 0.0], np.float32), 100),
               ClientUpdate(1, np.array([0.0, 4.0], np.float32), 1, staleness=3)]
    new = FedBuff(server_lr=0.5).aggregate(1, params, updates)
    # by hand: (1·[2, 0] + 0.5·[0, 4]) / 2 = [1, 1]; example counts do not weigh; times server_lr 0.5
    np.testing.assert_allclose(new, [1.5, 2.5])
    assert FedBuff().aggregate(1, params, []) is params


def test_fedasync_mixes_each_client_model_started_from_its_own_base():
    x = np.array([4.0, 0.0], np.float32)
    stale_base = np.array([0.0, 0.0], np.float32)
    fresh = ClientUpdate(0, np.array([2.0, 2.0], np.float32), 1)
    stale = ClientUpdate(1, np.array([1.0, 1.0], np.float32), 1, staleness=3, base=stale_base)
    new = FedAsync(alpha=0.5, staleness_exponent=0.5).aggregate(1, x, [fresh, stale])
    # fresh: α = 0.5 → 0.5·[4, 0] + 0.5·([4, 0] + [2, 2]) = [5, 1]
    # stale: α = 0.5·(1+3)^-0.5 = 0.25 → 0.75·[5, 1] + 0.25·([0, 0] + [1, 1]) = [4, 1]
    np.testing.assert_allclose(new, [4.0, 1.0])


@given(st.lists(st.integers(0, 50), min_size=1, max_size=8), st.floats(0.0, 2.0))
def test_identical_fresh_and_stale_updates_never_move_further_than_a_fresh_one(staleness, exponent):
    params = np.zeros(3, np.float32)
    delta = np.array([1.0, -2.0, 0.5], np.float32)
    fresh = FedBuff(staleness_exponent=exponent).aggregate(1, params, [ClientUpdate(0, delta, 1)])
    mixed = FedBuff(staleness_exponent=exponent).aggregate(
        1, params, [ClientUpdate(i, delta, 1, staleness=s) for i, s in enumerate(staleness)])
    assert np.linalg.norm(mixed) <= np.linalg.norm(fresh) * (1 + 1e-6)
