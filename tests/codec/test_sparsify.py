import math
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedstack.codec import CodecContext
from fedstack.codec.sparsify import (
    INDEX_BITMAP,
    INDEX_VARINT,
    RandK,
    Sign,
    TopK,
    decode_indices,
    encode_indices,
    index_bytes,
    k_for,
    randk_indices,
    varint_decode,
    varint_encode,
    varint_sizes,
)
from fedstack.errors import ConfigError

from payloads import assert_truncated_and_padded_payloads_rejected

CTX = CodecContext(round=1, client_id=0, seed=0)
N_FULL = 1_663_370


def f32(*xs):
    return np.array(xs, np.float32)


def normal(n, seed=0):
    return np.random.default_rng(seed).normal(size=n).astype(np.float32)


def test_k_for():
    assert [k_for(n, 0.01) for n in (0, 1, 99, 100, 101, N_FULL)] == [0, 1, 1, 1, 2, 16634]
    assert k_for(100, 0.07) == 7  # not 8 from 0.07·100 = 7.000000000000001
    assert k_for(10, 1.0) == 10


# --------------------------------------------------------------------------------------------- varints


def test_varint_known_bytes():
    values = [0, 1, 127, 128, 300, 16383, 16384, 2**32 - 1]
    expected = "00" "01" "7f" "8001" "ac02" "ff7f" "808001" "ffffffff0f"
    assert varint_encode(values).tobytes().hex() == expected
    assert list(varint_sizes(values)) == [1, 1, 1, 2, 2, 2, 3, 5]
    assert list(varint_decode(np.frombuffer(bytes.fromhex(expected), np.uint8), len(values))) == values


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 2**35 - 1), max_size=200))
def test_varint_round_trip(values):
    data = varint_encode(values)
    assert data.size == sum(max(1, math.ceil(v.bit_length() / 7)) for v in values)
    assert list(varint_decode(data, len(values))) == values


@pytest.mark.parametrize(
    "data, count, message",
    [
        ("80", 1, "complete"),  # unterminated
        ("0101", 1, "complete"),  # one too many
        ("01", 2, "complete"),  # one too few
        ("808080808001", 1, "longer than 5"),
        ("8000", 1, "non-canonical"),
        ("80", 0, "complete"),
    ],
)
def test_varint_decode_rejects_malformed(data, count, message):
    with pytest.raises(ValueError, match=message):
        varint_decode(np.frombuffer(bytes.fromhex(data), np.uint8), count)


# ---------------------------------------------------------------------------------------- index coding


@st.composite
def index_sets(draw):
    n = draw(st.integers(1, 3000))
    if draw(st.booleans()):
        idx = sorted(draw(st.sets(st.integers(0, n - 1), max_size=min(n, 60))))
        return n, np.array(idx, np.int64)
    density = draw(st.floats(0.0, 1.0))
    rng = np.random.default_rng(draw(st.integers(0, 2**32)))
    return n, np.flatnonzero(rng.random(n) < density)


@settings(max_examples=150, deadline=None)
@given(index_sets())
def test_index_coding_picks_the_smaller_and_round_trips(case):
    n, idx = case
    flag, data = encode_indices(idx, n)
    gaps = np.diff(idx, prepend=-1) - 1
    varint_len = sum(max(1, math.ceil(int(g).bit_length() / 7)) for g in gaps)
    bitmap_len = (n + 7) // 8
    assert flag == (INDEX_VARINT if varint_len <= bitmap_len else INDEX_BITMAP)
    assert len(data) == min(varint_len, bitmap_len) == index_bytes(idx, n)
    np.testing.assert_array_equal(decode_indices(flag, data, n, idx.size), idx)


def test_index_coding_exact_bytes():
    assert encode_indices(np.array([3, 300]), 1000) == (INDEX_VARINT, bytes.fromhex("03a802"))  # gaps 3, 296
    assert encode_indices(np.array([0, 1, 9]), 10) == (INDEX_BITMAP, bytes([0b11000000, 0b01000000]))


@pytest.mark.parametrize(
    "flag, data, n, k, message",
    [
        (INDEX_VARINT, "0a", 10, 1, "out of range"),  # index 10 of n = 10
        (INDEX_VARINT, "0505", 10, 2, "out of range"),  # 5, then 11
        (INDEX_VARINT, "00", 10, 2, "complete"),
        (INDEX_BITMAP, "c0", 10, 2, "bitmap of 1 bytes"),
        (INDEX_BITMAP, "c000", 10, 3, "marks 2"),
        (INDEX_BITMAP, "c020", 10, 3, "padding"),
        (7, "00", 10, 1, "unknown index coding"),
    ],
)
def test_index_decoding_rejects_malformed(flag, data, n, k, message):
    with pytest.raises(ValueError, match=message):
        decode_indices(flag, bytes.fromhex(data), n, k)


# ------------------------------------------------------------------------------------------------ TopK


def test_topk_exact_case_with_ties():
    # k = 2 of 5; |v| = 2, 3, 1, 2, 2: 3 wins, then the tie at 2 goes to the lowest index (0).
    codec = TopK(fraction=0.4)
    payload, residual = codec.encode(f32(2.0, -3.0, 1.0, -2.0, 2.0), CTX, None)
    assert payload == struct.pack("<BBIIB", 4, 1, 5, 2, INDEX_BITMAP) + struct.pack("<2f", 2.0, -3.0) + b"\xc0"
    np.testing.assert_array_equal(residual, f32(0.0, 0.0, 1.0, -2.0, 2.0))
    np.testing.assert_array_equal(codec.decode(payload, CTX), f32(2.0, -3.0, 0.0, 0.0, 0.0))


def test_topk_exact_varint_case():
    v = np.zeros(1000, np.float32)
    v[3], v[300], v[7] = 5.0, -7.0, 0.5
    payload, residual = TopK(fraction=0.002).encode(v, CTX, None)  # k = 2
    assert payload == (
        struct.pack("<BBIIB", 4, 1, 1000, 2, INDEX_VARINT) + struct.pack("<2f", 5.0, -7.0) + bytes.fromhex("03a802")
    )
    assert residual[7] == 0.5 and np.count_nonzero(residual) == 1


def test_topk_uses_and_updates_the_residual():
    codec = TopK(fraction=0.5)
    _, e = codec.encode(f32(1.0, 0.1, -0.2, 0.0), CTX, f32(0.0, 0.0, 0.0, -3.0))  # p = 1, .1, -.2, -3
    np.testing.assert_array_equal(e, f32(0.0, 0.1, -0.2, 0.0))
    with pytest.raises(ValueError, match="state"):
        codec.encode(f32(1.0, 2.0), CTX, np.zeros(3, np.float32))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 2000), fraction=st.floats(1e-4, 1.0), seed=st.integers(0, 1000))
def test_topk_round_trip_size_and_selection(n, fraction, seed):
    codec = TopK(fraction=fraction)
    v = normal(n, seed)
    v[: n // 3] = np.round(v[: n // 3])  # many ties (and zeros)
    payload, residual = codec.encode(v, CTX, None)
    out = codec.decode(payload, CTX)
    k = k_for(n, fraction)
    assert out.dtype == np.float32 and out.shape == (n,)
    idx = _sent_indices(payload)
    assert idx.size == k and len(payload) == 11 + 4 * k + index_bytes(idx, n)
    np.testing.assert_array_equal(out[idx], v[idx])
    np.testing.assert_array_equal(np.delete(out, idx), 0)
    np.testing.assert_array_equal(out + residual, v)  # disjoint supports: exact
    if 0 < k < n:
        a, rest = np.abs(v), np.delete(np.arange(n), idx)
        t = a[idx].min()
        assert t >= a[rest].max()
        tied_sent, tied_left = idx[a[idx] == t], rest[a[rest] == t]
        assert tied_left.size == 0 or tied_left.min() > tied_sent.max()  # ties: lowest indices first


def _sent_indices(payload):
    n, k, flag = struct.unpack_from("<IIB", payload, 2)
    return decode_indices(flag, payload[11 + 4 * k:], n, k)


def test_topk_full_size_ratio():
    v = normal(N_FULL)
    payload, _ = TopK(fraction=0.01).encode(v, CTX, None)
    assert 4 * N_FULL / len(payload) >= 30


@pytest.mark.parametrize("codec", [TopK(fraction=0.05), Sign()], ids=["topk", "sign"])
def test_error_feedback_loses_nothing(codec):
    rng = np.random.default_rng(3)
    n, state = 300, None
    sent, given_ = np.zeros(n), np.zeros(n)
    for t in range(30):
        v = (rng.normal(size=n) * rng.uniform(0.1, 10)).astype(np.float32)
        ctx = CodecContext(round=t, client_id=5, seed=0)
        p = v + (state if state is not None else 0)
        payload, state = codec.encode(v, ctx, state)
        decoded = codec.decode(payload, ctx)
        np.testing.assert_allclose(decoded + state, p, rtol=1e-6, atol=1e-5)  # e = p − decode(encode(p))
        sent += decoded
        given_ += v
    np.testing.assert_allclose(sent + state, given_, rtol=1e-5, atol=1e-3)


# ----------------------------------------------------------------------------------------------- RandK


def test_randk_mask_is_pinned():
    # A change here means client and server of different versions would disagree on the mask.
    assert list(randk_indices(12345, 100, 5)) == [22, 31, 39, 67, 79]
    assert list(randk_indices(12345, 10, 8)) == [0, 1, 4, 5, 6, 7, 8, 9]  # complement of a 2-subset
    assert list(randk_indices(2**64 - 1, 1000, 3)) == [7, 680, 845]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**64 - 1), n=st.integers(1, 3000), fraction=st.floats(1e-3, 1.0))
def test_randk_masks_are_distinct_sorted_in_range(seed, n, fraction):
    k = k_for(n, fraction)
    idx = randk_indices(seed, n, k)
    assert idx.size == k and np.all(np.diff(idx) > 0) and idx[0] >= 0 and idx[-1] < n
    np.testing.assert_array_equal(idx, randk_indices(seed, n, k))


def test_randk_exact_case_fraction_one():
    v = f32(1.0, -2.0, 3.0)
    payload = RandK(fraction=1.0).encode(v, CTX)
    (seed,) = struct.unpack_from("<Q", payload, 10)
    assert payload == struct.pack("<BBIIQ", 5, 1, 3, 3, seed) + v.tobytes()
    np.testing.assert_array_equal(RandK(fraction=1.0).decode(payload, CTX), v)


def test_randk_hand_decode_scales_by_n_over_k():
    payload = struct.pack("<BBIIQ", 5, 1, 100, 5, 12345) + struct.pack("<5f", 1, 2, 3, 4, 5)
    out = RandK(fraction=0.05).decode(payload, CTX)
    expected = np.zeros(100, np.float32)
    expected[[22, 31, 39, 67, 79]] = f32(20, 40, 60, 80, 100)
    np.testing.assert_array_equal(out, expected)


def test_randk_is_unbiased():
    v = f32(0.5, -1.0, 2.0, 0.0, 3.0, -0.25, 1.5, 0.1, -2.0, 0.75)
    codec, trials = RandK(fraction=0.3), 4000  # k = 3 of 10
    total = np.zeros(v.size)
    for seed in range(trials):
        ctx = CodecContext(round=0, client_id=0, seed=seed)
        payload = codec.encode(v, ctx)
        assert len(payload) == 18 + 4 * 3
        total += codec.decode(payload, ctx)
    var = v.astype(np.float64) ** 2 * (10 / 3 - 1)
    assert np.all(np.abs(total / trials - v) <= 5 * np.sqrt(var / trials) + 1e-6)


def test_randk_determinism_and_per_client_masks():
    v = normal(5000)
    codec = RandK(fraction=0.01)
    assert codec.encode(v, CTX) == codec.encode(v, CodecContext(round=1, client_id=0, seed=0))
    masks = [np.flatnonzero(codec.decode(codec.encode(v, CodecContext(1, c, 0)), CTX)) for c in range(3)]
    assert not np.array_equal(masks[0], masks[1]) and not np.array_equal(masks[1], masks[2])


def test_randk_full_size():
    payload = RandK(fraction=0.01).encode(normal(N_FULL), CTX)
    assert len(payload) == 18 + 4 * 16634


# ------------------------------------------------------------------------------------------------ Sign


def test_sign_exact_case():
    payload, residual = Sign().encode(f32(1.0, -2.0, 0.0, 3.0), CTX, None)
    # scale = ‖p‖₁/n = 6/4; bits 1 0 1 1 (sign(0) = +)
    assert payload == struct.pack("<BBIf", 6, 1, 4, 1.5) + bytes([0b10110000])
    np.testing.assert_array_equal(Sign().decode(payload, CTX), f32(1.5, -1.5, 1.5, 1.5))
    np.testing.assert_array_equal(residual, f32(-0.5, -0.5, -1.5, 1.5))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 3000), seed=st.integers(0, 1000))
def test_sign_round_trip_and_size(n, seed):
    v = normal(n, seed)
    payload, _ = Sign().encode(v, CTX, None)
    assert len(payload) == 10 + (n + 7) // 8
    out = Sign().decode(payload, CTX)
    assert out.dtype == np.float32 and out.shape == (n,)
    scale = np.float32(np.abs(v).sum(dtype=np.float64) / n) if n else 0
    np.testing.assert_array_equal(out, np.where(v >= 0, scale, -scale).astype(np.float32))


def test_sign_full_size_ratio():
    payload, _ = Sign().encode(normal(N_FULL), CTX, None)
    assert len(payload) == 10 + math.ceil(N_FULL / 8) and 4 * N_FULL / len(payload) >= 25


# ---------------------------------------------------------------------------------------- malformed input

VALID = {
    "topk-bitmap": (TopK(fraction=0.5), TopK(fraction=0.5).encode(normal(20), CTX, None)[0]),
    "topk-varint": (TopK(fraction=0.01), TopK(fraction=0.01).encode(normal(1000), CTX, None)[0]),
    "randk": (RandK(fraction=0.1), RandK(fraction=0.1).encode(normal(50), CTX)),
    "sign": (Sign(), Sign().encode(normal(20), CTX, None)[0]),
}


@pytest.mark.parametrize("name", VALID)
def test_truncated_and_extended_payloads_are_rejected(name):
    codec, payload = VALID[name]
    assert_truncated_and_padded_payloads_rejected(codec, payload, CTX)


@pytest.mark.parametrize("name", VALID)
def test_corrupted_bytes_give_an_error_or_a_finite_vector(name):
    codec, payload = VALID[name]
    for pos in range(2):  # codec id and version: always detected
        bad = bytearray(payload)
        bad[pos] ^= 0x01
        with pytest.raises(ValueError):
            codec.decode(bytes(bad), CTX)
    for pos in range(len(payload)):
        for flip in (0x01, 0x80, 0xFF):
            bad = bytearray(payload)
            bad[pos] ^= flip
            try:
                out = codec.decode(bytes(bad), CTX)
            except ValueError:
                continue
            assert out.dtype == np.float32 and out.size <= 2**28 and np.isfinite(out).all()


def test_topk_rejects_out_of_range_indices_and_wrong_k():
    values = struct.pack("<f", 1.0)
    with pytest.raises(ValueError, match="out of range"):
        TopK(fraction=0.01).decode(struct.pack("<BBIIB", 4, 1, 50, 1, INDEX_VARINT) + values + b"\x32", CTX)
    with pytest.raises(ValueError, match="k = 2"):
        TopK(fraction=0.01).decode(struct.pack("<BBIIB", 4, 1, 50, 2, INDEX_VARINT) + values * 2 + b"\x00\x00", CTX)
    with pytest.raises(ValueError, match="non-finite"):
        TopK(fraction=0.01).decode(
            struct.pack("<BBIIB", 4, 1, 50, 1, INDEX_VARINT) + struct.pack("<f", np.inf) + b"\x00", CTX
        )


def test_huge_declared_lengths_are_refused_before_allocating():
    big = 0xFFFFFFFF
    payloads = {
        "topk": struct.pack("<BBIIB", 4, 1, big, 1, INDEX_VARINT) + b"\x00" * 5,
        "randk": struct.pack("<BBIIQ", 5, 1, big, 1, 0) + b"\x00" * 4,
        "sign": struct.pack("<BBIf", 6, 1, big, 1.0) + b"\x00",
    }
    unlimited = {"topk": TopK(max_length=big), "randk": RandK(max_length=big), "sign": Sign(max_length=big)}
    for name, payload in payloads.items():
        codec = {"topk": TopK(), "randk": RandK(), "sign": Sign()}[name]
        with pytest.raises(ValueError, match="exceeds the limit"):
            codec.decode(payload, CTX)
        with pytest.raises(ValueError):  # no limit: k must match n, and the bytes must be there
            unlimited[name].decode(payload, CTX)


@pytest.mark.parametrize("scale", [float("nan"), float("-inf"), -1.0])
def test_sign_rejects_bad_scale(scale):
    with pytest.raises(ValueError, match="scale"):
        Sign().decode(struct.pack("<BBIf", 6, 1, 3, scale) + b"\x00", CTX)


def test_sign_rejects_padding_bits():
    with pytest.raises(ValueError, match="padding"):
        Sign().decode(struct.pack("<BBIf", 6, 1, 3, 1.0) + b"\x01", CTX)


def test_non_finite_updates_are_refused():
    with pytest.raises(ValueError, match="non-finite"):
        TopK(fraction=0.5).encode(f32(1.0, np.nan), CTX, None)
    with pytest.raises(ValueError, match="non-finite"):
        Sign().encode(f32(1.0, np.inf), CTX, None)
    with pytest.raises(ValueError, match="non-finite"):
        RandK(fraction=1.0).encode(f32(1.0, np.nan), CTX)


# ------------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize("fraction", [0, 0.0, 1.5, -0.1, float("nan"), True, "0.1"])
@pytest.mark.parametrize("cls", [TopK, RandK])
def test_fraction_must_be_in_unit_interval(cls, fraction):
    with pytest.raises(ConfigError, match="codec.topk_fraction"):
        cls(fraction=fraction)


def test_flags():
    assert (TopK.name, TopK.linear, TopK.unbiased, TopK.stateful) == ("topk", False, False, True)
    assert (RandK.name, RandK.linear, RandK.unbiased, RandK.stateful) == ("randk", False, True, False)
    assert (Sign.name, Sign.linear, Sign.unbiased, Sign.stateful) == ("sign", False, False, True)
    for cls in (TopK, RandK, Sign):
        assert (cls.takes_bytes, cls.emits_bytes) == (False, True)
