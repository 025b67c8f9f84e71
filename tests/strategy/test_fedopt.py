import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from fedstack.strategy import ClientUpdate, FedAvg
from fedstack.strategy.fedopt import FedOpt, adaptive_step, fedavgm_step


def updates(*pairs):
    return [ClientUpdate(i, np.array(u, np.float32), n) for i, (u, n) in enumerate(pairs)]


def test_fedavgm_hand_computed():
    x, v = fedavgm_step(np.array([1.0]), np.array([0.5]), np.array([2.0]), lr=0.1, momentum=0.9)
    assert v == pytest.approx([0.9 * 2.0 + 0.5]) and x == pytest.approx([1.0 + 0.1 * 2.3])


@pytest.mark.parametrize("kind, v_expected", [
    ("fedadagrad", 0.01 + 0.25),
    ("fedadam", 0.99 * 0.01 + 0.01 * 0.25),
    ("fedyogi", 0.01 - 0.01 * 0.25 * np.sign(0.01 - 0.25)),
])
def test_adaptive_steps_hand_computed(kind, v_expected):
    x, m, v = adaptive_step(kind, np.array([1.0]), np.array([0.5]), np.array([0.0]), np.array([0.01]),
                            lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    assert m == pytest.approx([0.05]) and v == pytest.approx([v_expected])
    assert x == pytest.approx([1.0 + 0.1 * 0.05 / (np.sqrt(v_expected) + 1e-3)])


def test_fedavgm_without_momentum_and_unit_lr_is_fedavg():
    params = np.array([1.0, -1.0], np.float32)
    ups = updates(([1.0, 0.0], 1), ([0.0, 4.0], 3))
    ours = FedOpt("fedavgm", server_lr=1.0, momentum=0.0).aggregate(1, params, iter(ups))
    np.testing.assert_allclose(ours, FedAvg().aggregate(1, params, iter(ups)), rtol=1e-6)


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(["fedadagrad", "fedadam", "fedyogi"]), st.floats(-3, 3).filter(lambda d: abs(d) > 1e-3))
def test_adaptive_first_step_moves_along_the_update(kind, d):
    out = FedOpt(kind, server_lr=0.1).aggregate(1, np.zeros(1, np.float32), iter(updates(([d], 1))))
    assert np.sign(out[0]) == np.sign(d)


def test_state_round_trips_and_continues_identically():
    ups = [updates(([0.5, -1.0], 2)), updates(([0.1, 0.3], 1)), updates(([-0.2, 0.2], 5))]
    a = FedOpt("fedyogi")
    p = np.zeros(2, np.float32)
    for u in ups[:2]:
        p = a.aggregate(1, p, iter(u))
    b = FedOpt("fedyogi")
    b.load_state(a.state())
    np.testing.assert_array_equal(a.aggregate(3, p, iter(ups[2])), b.aggregate(3, p, iter(ups[2])))
