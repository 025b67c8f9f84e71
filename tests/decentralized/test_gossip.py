import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedstack.decentralized.gossip import average, choco_gossip, consensus_distance, live_weights, mix
from fedstack.decentralized.topology import erdos_renyi, metropolis_hastings, ring, torus


def test_one_mix_step_by_hand():
    # path 0 – 1 – 2: degrees 1, 2, 1, so W_01 = W_12 = 1/3, W_00 = W_22 = 2/3, W_11 = 1/3
    a = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], bool)
    w = metropolis_hastings(a)
    assert np.allclose(w, [[2 / 3, 1 / 3, 0], [1 / 3, 1 / 3, 1 / 3], [0, 1 / 3, 2 / 3]])
    X = np.array([[3.0, 0.0], [6.0, 3.0], [0.0, 9.0]], np.float32)
    out = mix(X, w)
    assert out.dtype == np.float32
    assert np.allclose(out, [[4.0, 1.0], [3.0, 4.0], [2.0, 7.0]], atol=1e-6)
    assert np.allclose(out.mean(axis=0), X.mean(axis=0))


def test_consensus_distance():
    X = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 3.0], [0.0, -3.0]], np.float32)
    assert consensus_distance(X) == pytest.approx((1 + 1 + 9 + 9) / 4)
    assert consensus_distance(np.tile(X[:1], (5, 1))) == 0.0


@st.composite
def graph_and_models(draw):
    n = draw(st.integers(2, 12))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    a = erdos_renyi(n, draw(st.floats(0.0, 1.0)), rng) | ring(n)
    X = rng.normal(0, draw(st.sampled_from([0.01, 1.0, 100.0])), size=(n, draw(st.integers(1, 30))))
    alive = rng.random(n) < draw(st.floats(0.0, 1.0))
    return a, X.astype(np.float32), alive


@settings(max_examples=60, deadline=None)
@given(graph_and_models())
def test_mixing_preserves_the_average(case):
    a, X, _ = case
    out = mix(X, metropolis_hastings(a))
    scale = np.abs(X).max() + 1e-30
    assert np.allclose(out.mean(axis=0), X.mean(axis=0), atol=1e-5 * scale, rtol=0)


@pytest.mark.parametrize("graph", [ring(12), torus(16)])
def test_repeated_mixing_on_a_connected_graph_reaches_consensus(graph):
    X = np.random.default_rng(0).normal(size=(len(graph), 50)).astype(np.float32)
    w = metropolis_hastings(graph)
    before = consensus_distance(X)
    for _ in range(400):
        X = mix(X, w)
    assert consensus_distance(X) < 1e-8 * before


@settings(max_examples=60, deadline=None)
@given(graph_and_models())
def test_live_weights_renormalise_over_live_nodes(case):
    a, X, alive = case
    w = live_weights(metropolis_hastings(a), alive)
    assert np.allclose(w, w.T, atol=0)
    assert (w >= 0).all()
    assert np.allclose(w.sum(axis=1), 1.0)
    dead = ~alive
    assert (w[dead] == np.eye(len(a))[dead]).all()  # a silent node keeps its model
    assert (w[np.ix_(alive, dead)] == 0).all()  # and no live node hears from it
    out = mix(X, w)
    assert (out[dead] == X[dead]).all()
    if alive.any():
        scale = np.abs(X).max() + 1e-30
        assert np.allclose(out[alive].mean(axis=0), X[alive].mean(axis=0), atol=1e-5 * scale, rtol=0)


def test_choco_with_identity_and_unit_step_is_dpsgd_mixing():
    a = torus(12)
    w = metropolis_hastings(a)
    rng = np.random.default_rng(3)
    X = rng.normal(size=(12, 40)).astype(np.float32)
    X_hat = rng.normal(size=(12, 40)).astype(np.float32)  # whatever the public copies were
    expected = mix(X, w)
    choco_gossip(X, X_hat, w, 1.0, lambda v, i: v)
    assert np.allclose(X, expected, atol=1e-5)


def test_choco_with_identity_catches_the_public_copies_up():
    w = metropolis_hastings(ring(5))
    X = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    X_hat = np.zeros_like(X)
    before = X.copy()
    choco_gossip(X, X_hat, w, 0.5, lambda v, i: v)
    assert np.allclose(X_hat, before)


def top1(v: np.ndarray, i: int) -> np.ndarray:
    """A biased, heavily compressing Q: keep the largest coordinate only."""
    out = np.zeros_like(v)
    k = int(np.argmax(np.abs(v)))
    out[k] = v[k]
    return out


def sign_scaled(v: np.ndarray, i: int) -> np.ndarray:
    return (np.sign(v) * np.abs(v).mean()).astype(np.float32)


@settings(max_examples=60, deadline=None)
@given(graph_and_models(), st.sampled_from([top1, sign_scaled]), st.floats(0.05, 1.0))
def test_choco_with_a_compressing_q_preserves_the_average(case, Q, gamma):
    a, X, alive = case
    w = metropolis_hastings(a)
    X_hat = np.zeros_like(X)
    mean = X.mean(axis=0, dtype=np.float64)
    scale = np.abs(X).max() + 1e-30
    for rnd in range(3):
        choco_gossip(X, X_hat, w, gamma, Q, alive if rnd == 1 else None)
        assert np.allclose(X.mean(axis=0, dtype=np.float64), mean, atol=1e-4 * scale, rtol=0)


def test_choco_leaves_silent_nodes_alone():
    w = metropolis_hastings(ring(6))
    X = np.random.default_rng(1).normal(size=(6, 4)).astype(np.float32)
    X_hat = np.zeros_like(X)
    alive = np.array([True, False, True, True, False, True])
    before = X.copy()
    calls = []
    choco_gossip(X, X_hat, w, 0.5, lambda v, i: calls.append(i) or v, alive)
    assert calls == [0, 2, 3, 5]  # silent nodes send nothing
    assert (X[~alive] == before[~alive]).all() and (X_hat[~alive] == 0).all()


def test_choco_converges_to_consensus_with_compression():
    w = metropolis_hastings(ring(8))
    X = np.random.default_rng(2).normal(size=(8, 20)).astype(np.float32)
    X_hat = np.zeros_like(X)
    before = consensus_distance(X)
    for _ in range(600):
        choco_gossip(X, X_hat, w, 0.3, sign_scaled)
    assert consensus_distance(X) < 1e-3 * before


def test_average_is_the_plain_mean():
    X = np.arange(12, dtype=np.float32).reshape(4, 3)
    assert np.array_equal(average(X), np.array([4.5, 5.5, 6.5], np.float32))
