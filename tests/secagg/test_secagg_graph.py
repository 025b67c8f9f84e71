import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedstack.secagg.graph import neighbours, secagg_plus_degree


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=40, unique=True), st.data(), st.integers(0, 2**64 - 1))
def test_k_regular_symmetric_and_the_same_for_every_party(ids, data, seed):
    n = len(ids)
    k = data.draw(st.integers(0, n - 1).filter(lambda k: k % 2 == 0 or n % 2 == 0))
    g = neighbours(ids, k, seed)
    assert sorted(g) == sorted(ids)
    for u, vs in g.items():
        assert len(vs) == k and vs == sorted(vs) and u not in vs
        assert all(u in g[v] for v in vs)
    assert neighbours(list(reversed(ids)), k, seed) == g  # the order the ids come in does not matter


def test_complete_graph_and_seeds():
    ids = list(range(10, 30))
    assert neighbours(ids, 19, 5) == {u: [v for v in ids if v != u] for u in ids}
    assert neighbours(list(range(7)), 6, 5)[3] == [0, 1, 2, 4, 5, 6]
    assert neighbours(ids, 4, 1) != neighbours(ids, 4, 2)  # the public seed picks the graph
    assert neighbours(ids, 4, 1) == neighbours(ids, 4, 1)


def test_invalid_graphs():
    with pytest.raises(ValueError, match="k=20"):
        neighbours(range(20), 20, 0)
    with pytest.raises(ValueError, match="both be odd"):
        neighbours(range(7), 3, 0)
    with pytest.raises(ValueError, match="repeat"):
        neighbours([1, 1, 2], 1, 0)
    with pytest.raises(ValueError, match="client id"):
        neighbours([-1, 2], 1, 0)
    with pytest.raises(ValueError, match="seed"):
        neighbours([1, 2], 1, -1)


def test_secagg_plus_degree():
    assert [secagg_plus_degree(n) for n in (1, 2, 3, 10, 100, 10**4, 10**6)] == [0, 1, 2, 9, 20, 40, 60]
    for n in range(1, 300):
        k = secagg_plus_degree(n)
        neighbours(range(n), k, 0)  # always a valid degree
        assert k == n - 1 or k % 2 == 0
