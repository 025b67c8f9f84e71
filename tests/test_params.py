import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from fedstack.params import flatten, spec_of, unflatten

shapes = st.lists(st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple), min_size=1, max_size=5)


@settings(max_examples=50, deadline=None)
@given(shapes)
def test_flatten_unflatten_round_trip(shape_list):
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=s).astype(np.float32) for s in shape_list]
    spec = spec_of([(f"t{i}", a.shape) for i, a in enumerate(arrays)])
    flat = flatten(arrays)
    assert flat.dtype == np.float32 and flat.shape == (spec.size,)
    for original, back in zip(arrays, unflatten(flat, spec)):
        assert back.shape == original.shape
        np.testing.assert_array_equal(back, original)


def test_offsets_are_contiguous():
    spec = spec_of([("w", (2, 3)), ("b", (3,))])
    assert spec.offsets() == [(0, 6), (6, 9)]
    assert spec.size == 9


def test_unflatten_rejects_wrong_length():
    spec = spec_of([("w", (2, 2))])
    with pytest.raises(ValueError, match="spec expects"):
        unflatten(np.zeros(5, np.float32), spec)
