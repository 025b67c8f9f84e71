import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedstack.secagg.fixedpoint import FixedPoint


@settings(max_examples=100, deadline=None)
@given(
    st.integers(16, 62),
    st.integers(0, 12),
    st.sampled_from([0.5, 1.0, 3.0, 100.0]),
    st.lists(st.lists(st.floats(-200, 200), min_size=5, max_size=5), min_size=1, max_size=8),
)
def test_sum_of_encodings_decodes_to_sum_of_clipped_values(bits, frac_bits, clip, rows):
    try:
        fp = FixedPoint(bits, frac_bits, clip)
        fp.check_summands(len(rows))
    except ValueError:
        return  # these parameters could overflow (tested below)
    x = np.array(rows)
    total = np.zeros(5, dtype=fp.dtype)
    for row in x:
        enc = fp.encode(row)
        assert enc.dtype == fp.dtype and int(enc.max(initial=0)) < 2**bits
        total += enc  # wraps mod 2**32 or 2**64; decode_sum reduces mod 2**bits
    err = np.abs(fp.decode_sum(total) - np.clip(x, -clip, clip).sum(axis=0))
    assert err.max() <= len(rows) * 2.0 ** -(frac_bits + 1) * (1 + 1e-9)


def test_types_negative_values_and_rounding():
    fp = FixedPoint(32, 2, 10.0)
    enc = fp.encode([1.125, -1.125, 20.0, -20.0, 0.0])
    assert enc.dtype == np.uint32
    assert enc.tolist() == [4, 2**32 - 4, 40, 2**32 - 40, 0]  # 1.125·4 = 4.5 rounds to 4 (to even)
    np.testing.assert_array_equal(fp.decode_sum(enc), [1.0, -1.0, 10.0, -10.0, 0.0])
    assert FixedPoint(16, 8).dtype == np.uint32 and FixedPoint(40).dtype == np.uint64


def test_overflow_bound():
    fp = FixedPoint(bits=16, frac_bits=8, clip=1.0)  # M = 256: n · 256 < 2**15 iff n <= 127
    assert fp.max_magnitude == 256 and fp.max_summands == 127
    fp.check_summands(127)
    with pytest.raises(ValueError, match="n <= 127"):
        fp.check_summands(128)
    worst = np.zeros(1, dtype=fp.dtype)
    for _ in range(127):
        worst += fp.encode([-5.0])
    assert fp.decode_sum(worst)[0] == -127.0  # the bound is tight enough to be safe
    assert FixedPoint(32, 16, 1.0).max_summands == 2**15 - 1


def test_invalid_parameters_and_inputs():
    for bad in (dict(bits=15), dict(bits=63), dict(frac_bits=-1), dict(clip=0), dict(clip=float("nan")),
                dict(frac_bits=0, clip=0.1), dict(bits=16, frac_bits=15, clip=1.0)):
        with pytest.raises(ValueError):
            FixedPoint(**bad)
    with pytest.raises(ValueError, match="NaN"):
        FixedPoint().encode([0.0, np.nan])
    with pytest.raises(ValueError, match="NaN"):
        FixedPoint().encode([np.inf])
