import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedstack.config import DecentralizedConfig
from fedstack.decentralized.topology import (build_topology, complete, erdos_renyi, is_connected,
                                             metropolis_hastings, random_regular, ring, spectral_gap, torus,
                                             torus_shape)
from fedstack.errors import ConfigError


def is_simple_graph(a: np.ndarray) -> bool:
    return a.dtype == bool and a.shape[0] == a.shape[1] and (a == a.T).all() and not a.diagonal().any()


@pytest.mark.parametrize("n", [3, 5, 8, 17])
def test_ring_has_degree_two_and_is_connected(n):
    a = ring(n)
    assert is_simple_graph(a)
    assert (a.sum(axis=1) == 2).all()
    assert all(a[i, (i + 1) % n] for i in range(n))
    assert is_connected(a)


def test_tiny_rings():
    assert ring(1).sum() == 0 and is_connected(ring(1))
    assert ring(2).sum(axis=1).tolist() == [1, 1]


@pytest.mark.parametrize("n, shape", [(9, (3, 3)), (12, (3, 4)), (16, (4, 4)), (15, (3, 5)), (36, (6, 6))])
def test_torus_has_degree_four_when_both_sides_are_at_least_three(n, shape):
    assert torus_shape(n) == shape
    a = torus(n)
    assert is_simple_graph(a)
    assert (a.sum(axis=1) == 4).all()
    assert is_connected(a)
    r, c = shape
    assert a[0, 1] and a[0, c - 1] and a[0, c] and a[0, (r - 1) * c]  # right, left (wrap), down, up (wrap)


@pytest.mark.parametrize("n", [2, 3, 7, 13])
def test_torus_of_a_prime_is_a_ring(n):
    assert torus_shape(n) == (1, n)
    assert (torus(n) == ring(n)).all()


def test_torus_with_a_side_of_two_has_degree_three():
    assert torus_shape(8) == (2, 4)
    assert (torus(8).sum(axis=1) == 3).all()


@pytest.mark.parametrize("n", [1, 2, 6])
def test_complete_graph(n):
    a = complete(n)
    assert is_simple_graph(a)
    assert (a.sum(axis=1) == n - 1).all()


@pytest.mark.parametrize("n, d", [(10, 3), (16, 4), (30, 5), (7, 6), (50, 8)])
def test_random_regular_graphs_are_simple_and_regular(n, d):
    a = random_regular(n, d, np.random.default_rng(1))
    assert is_simple_graph(a)
    assert (a.sum(axis=1) == d).all()


def test_random_graphs_are_determined_by_the_seed():
    section = DecentralizedConfig(topology="random_regular", degree=4)
    assert (build_topology(section, 20, 3) == build_topology(section, 20, 3)).all()
    assert (build_topology(section, 20, 3) != build_topology(section, 20, 4)).any()
    er = DecentralizedConfig(topology="erdos_renyi", p=0.5)
    assert (build_topology(er, 20, 3) == build_topology(er, 20, 3)).all()
    assert (build_topology(er, 20, 3) != build_topology(er, 20, 4)).any()


def test_random_regular_refuses_impossible_degrees():
    with pytest.raises(ValueError, match="even"):
        random_regular(5, 3, np.random.default_rng(0))
    with pytest.raises(ValueError, match="d < n"):
        random_regular(4, 4, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="decentralized.degree"):
        build_topology(DecentralizedConfig(topology="random_regular", degree=8), 8, 0)


def test_erdos_renyi_edge_density():
    a = erdos_renyi(200, 0.1, np.random.default_rng(0))
    assert is_simple_graph(a)
    assert abs(a.sum() / (200 * 199) - 0.1) < 0.01


def test_disconnected_graphs_are_a_config_error_naming_the_topology():
    with pytest.raises(ConfigError, match="decentralized.topology.*disconnected"):
        build_topology(DecentralizedConfig(topology="erdos_renyi", p=0.01), 30, 0)
    with pytest.raises(ConfigError, match="decentralized.topology.*disconnected"):
        build_topology(DecentralizedConfig(topology="random_regular", degree=1), 10, 0)
    two_triangles = np.zeros((6, 6), bool)
    for i, j in [(0, 1), (1, 2), (0, 2), (3, 4), (4, 5), (3, 5)]:
        two_triangles[i, j] = two_triangles[j, i] = True
    assert not is_connected(two_triangles)
    assert is_connected(two_triangles | ring(6))


@st.composite
def connected_graphs(draw):
    n = draw(st.integers(2, 24))
    p = draw(st.floats(0.0, 1.0))
    seed = draw(st.integers(0, 2**32 - 1))
    return erdos_renyi(n, p, np.random.default_rng(seed)) | ring(n)  # a ring through all nodes connects it


@settings(max_examples=60, deadline=None)
@given(connected_graphs())
def test_metropolis_hastings_weights_are_symmetric_nonnegative_and_stochastic(a):
    w = metropolis_hastings(a)
    assert np.allclose(w, w.T, atol=0)
    assert (w >= 0).all()
    assert np.allclose(w.sum(axis=1), 1.0)
    assert np.allclose(w.sum(axis=0), 1.0)
    assert ((w > 0) == (a | np.eye(len(a), dtype=bool))).all()  # weights exactly on edges and the diagonal
    assert spectral_gap(w) > 1e-9  # connected: gossip converges


def test_metropolis_hastings_by_hand():
    star = np.zeros((4, 4), bool)
    star[0, 1:] = star[1:, 0] = True  # centre 0 of degree 3, leaves of degree 1
    w = metropolis_hastings(star)
    assert np.allclose(w[0], [0.25, 0.25, 0.25, 0.25])
    assert np.allclose(w[1], [0.25, 0.75, 0, 0])
    assert np.allclose(metropolis_hastings(complete(5)), np.full((5, 5), 0.2))
