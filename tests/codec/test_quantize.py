import math
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedstack.codec import CodecContext
from fedstack.codec.quantize import BF16, FP16, QSGD, codec_rng, float32_to_bf16_bits, qsgd_levels
from fedstack.errors import ConfigError

from payloads import assert_truncated_and_padded_payloads_rejected

CTX = CodecContext(round=1, client_id=0, seed=0)
N_FULL = 1_663_370  # parameters of the default CNN


def f32(*xs):
    return np.array(xs, np.float32)


def header(codec_id, n):
    return struct.pack("<BBI", codec_id, 1, n)


def vectors(max_size=300, magnitude=1e3):
    return st.lists(
        st.floats(-magnitude, magnitude, allow_nan=False, width=32), min_size=0, max_size=max_size
    ).map(lambda xs: np.array(xs, np.float32))


# --------------------------------------------------------------------------------------------------- fp16


def test_fp16_exact_bytes():
    v = f32(1.0, -2.5, 65504.0, 1 / 3, 0.0)
    payload = FP16().encode(v, CTX)
    assert payload == header(1, 5) + bytes.fromhex("003c" "00c1" "ff7b" "5535" "0000")
    np.testing.assert_array_equal(FP16().decode(payload, CTX), f32(1.0, -2.5, 65504.0, 0.333251953125, 0.0))


@settings(max_examples=60, deadline=None)
@given(vectors(magnitude=6e4))
def test_fp16_round_trip_matches_numpy_half(v):
    payload = FP16().encode(v, CTX)
    assert len(payload) == 6 + 2 * v.size
    out = FP16().decode(payload, CTX)
    assert out.dtype == np.float32 and out.shape == v.shape
    np.testing.assert_array_equal(out, v.astype(np.float16).astype(np.float32))


@pytest.mark.parametrize("bad", [70000.0, np.inf, np.nan])
def test_fp16_refuses_values_it_cannot_represent(bad):
    with pytest.raises(ValueError, match="fp16"):
        FP16().encode(f32(1.0, bad), CTX)


def test_fp16_decode_rejects_non_finite_values():
    with pytest.raises(ValueError, match="non-finite"):
        FP16().decode(header(1, 2) + bytes.fromhex("003c007c"), CTX)  # 1.0, +inf


# --------------------------------------------------------------------------------------------------- bf16


def test_bf16_exact_rounding_to_nearest_even():
    v = f32(1.0, 1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-20, -2.0, 1e-40)
    payload = BF16().encode(v, CTX)
    # 1 + 2**-8 is a tie: to even (0x3f80); 1 + 3·2**-8 is a tie: to even (0x3f82); just above a tie: up.
    expected = [0x3F80, 0x3F80, 0x3F82, 0x3F81, 0xC000, 0x0001]
    assert payload == header(2, 6) + struct.pack("<6H", *expected)
    np.testing.assert_array_equal(
        BF16().decode(payload, CTX), f32(1.0, 1.0, 1 + 2**-6, 1 + 2**-7, -2.0, 2.0**-133)
    )


def _bf16_reference(x: float) -> int:
    """Nearest bfloat16 by comparing the two candidates in exact float64 arithmetic, ties to even."""
    (u,) = struct.unpack("<I", struct.pack("<f", x))
    lo = u >> 16
    hi = lo + 1

    def val(b):  # the exponent all ones stands for 2**128 (round to nearest with unbounded exponent)
        if b & 0x7F80 == 0x7F80:
            return math.copysign(2.0**128, x)
        return struct.unpack("<f", struct.pack("<I", b << 16))[0]

    d_lo, d_hi = abs(x - val(lo)), abs(val(hi) - x)
    if d_lo < d_hi or (d_lo == d_hi and lo % 2 == 0):
        return lo
    return hi


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32), max_size=50))
def test_bf16_matches_a_reference(xs):
    v = np.array(xs, np.float32)
    assert list(float32_to_bf16_bits(v)) == [_bf16_reference(float(x)) for x in v]
    v = np.clip(v, -3e38, 3e38)  # above about 3.39e38 bfloat16 rounds to inf: encode refuses
    out = BF16().decode(BF16().encode(v, CTX), CTX)
    assert out.dtype == np.float32 and out.shape == v.shape
    np.testing.assert_allclose(out, v, rtol=2**-8, atol=2.0**-134)  # subnormals: absolute half-step


@pytest.mark.parametrize("bad", [np.finfo(np.float32).max, np.inf, np.nan])
def test_bf16_refuses_overflow_and_non_finite(bad):
    with pytest.raises(ValueError, match="bf16"):
        BF16().encode(f32(bad), CTX)


def test_bf16_decode_rejects_non_finite_values():
    with pytest.raises(ValueError, match="non-finite"):
        BF16().decode(header(2, 1) + struct.pack("<H", 0x7FC0), CTX)


# --------------------------------------------------------------------------------------------------- QSGD


def qsgd_header(n, bits, bucket, *scales):
    return struct.pack("<BBIBI", 3, 1, n, bits, bucket) + struct.pack(f"<{len(scales)}f", *scales)


def test_qsgd_exact_case_on_integer_levels():
    # ‖v‖₂ = 7 and s = 7 at 4 bits: r = |v| exactly, no randomness.
    v = f32(2.0, -3.0, 6.0)
    payload = QSGD(bits=4).encode(v, CTX)
    # codes (sign | level): 0b0010, 0b1011, 0b0110 packed two per byte, zero padding.
    assert payload == qsgd_header(3, 4, 512, 7.0) + bytes([0x2B, 0x60])
    np.testing.assert_array_equal(QSGD(bits=4).decode(payload, CTX), v)


def test_qsgd_exact_case_with_two_buckets():
    # buckets [3, 4] (‖·‖₂ = 5) and [0] (scale 0); at 2 bits s = 1 and r = 0.6, 0.8, 0: random levels.
    codec = QSGD(bits=2, bucket=2)
    v = f32(3.0, -4.0, 0.0)
    payload = codec.encode(v, CTX)
    assert payload[:19] == qsgd_header(3, 2, 2, 5.0, 0.0)
    assert len(payload) == 19 + 1 and payload[19] & 0b11 == 0  # 3 codes of 2 bits, zero padding
    assert set(np.unique(codec.decode(payload, CTX))) <= {-5.0, 0.0, 5.0}
    # hand decode: codes +1, −1, 0 → 5, −5, 0
    np.testing.assert_array_equal(codec.decode(qsgd_header(3, 2, 2, 5.0, 0.0) + bytes([0b01110000]), CTX),
                                  f32(5.0, -5.0, 0.0))


def test_qsgd_one_bit_exact_case():
    payload = QSGD(bits=1).encode(f32(2.0, -2.0), CTX)  # ±‖v‖_∞: probabilities 1 and 0
    assert payload == qsgd_header(2, 1, 512, 2.0) + bytes([0b10000000])
    np.testing.assert_array_equal(QSGD(bits=1).decode(payload, CTX), f32(2.0, -2.0))


def test_qsgd_eight_bit_hand_decode():
    # scale 127: code 0x05 = +5 levels = +5.0, code 0x83 = −3 levels = −3.0
    payload = qsgd_header(2, 8, 512, 127.0) + bytes([0x05, 0x83])
    np.testing.assert_array_equal(QSGD(bits=8).decode(payload, CTX), f32(5.0, -3.0))


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@settings(max_examples=30, deadline=None)
@given(v=vectors(), bucket=st.sampled_from([1, 3, 64, 512]))
def test_qsgd_round_trip_and_payload_size(bits, v, bucket):
    codec = QSGD(bits=bits, bucket=bucket)
    payload = codec.encode(v, CTX)
    n_scales = math.ceil(v.size / bucket)
    assert len(payload) == 11 + 4 * n_scales + math.ceil(v.size * bits / 8)
    out = codec.decode(payload, CTX)
    assert out.dtype == np.float32 and out.shape == v.shape and np.isfinite(out).all()
    scales = np.frombuffer(payload, "<f4", n_scales, 11)
    per_coord = np.repeat(scales, bucket)[: v.size]
    v64 = np.pad(v.astype(np.float64), (0, n_scales * bucket - v.size)).reshape(-1, bucket)
    if bits == 1:
        np.testing.assert_array_equal(scales, np.abs(v64).max(axis=1, initial=0))
        np.testing.assert_array_equal(np.abs(out), per_coord)
    else:
        np.testing.assert_allclose(scales, np.linalg.norm(v64, axis=1), rtol=1e-6, atol=1e-44)
        assert np.all(np.abs(out - v) <= per_coord / qsgd_levels(bits) * (1 + 1e-5) + 1e-30)
        assert np.all((out == 0) | (np.sign(out) == np.sign(v)))


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("bucket", [4, 512])
def test_qsgd_is_unbiased(bits, bucket):
    v = f32(0.3, -1.7, 0.0, 2.2, -0.01, 0.9)
    codec, trials = QSGD(bits=bits, bucket=bucket), 2000
    total = np.zeros(v.size)
    for seed in range(trials):
        ctx = CodecContext(round=0, client_id=0, seed=seed)
        total += codec.decode(codec.encode(v, ctx), ctx)
    mean = total / trials
    v64 = v.astype(np.float64)
    buckets = [v64[i:i + bucket] for i in range(0, v.size, bucket)]
    if bits == 1:
        c = np.concatenate([np.full(b.size, np.abs(b).max()) for b in buckets])
        var = c**2 - v64**2
    else:
        s = qsgd_levels(bits)
        scale = np.concatenate([np.full(b.size, np.float32(np.linalg.norm(b))) for b in buckets])
        frac = np.modf(np.abs(v64) * s / scale)[0]
        var = (scale / s) ** 2 * frac * (1 - frac)
    tolerance = 5 * np.sqrt(var / trials) + 1e-5
    assert np.all(np.abs(mean - v64) <= tolerance), (mean - v64, tolerance)


def test_qsgd_full_size_ratio_and_error():
    v = (np.random.default_rng(0).normal(size=N_FULL) * 0.01).astype(np.float32)
    for bits in (8, 4, 2, 1):
        payload = QSGD(bits=bits).encode(v, CTX)
        assert len(payload) == 11 + 4 * math.ceil(N_FULL / 512) + math.ceil(N_FULL * bits / 8)
        if bits == 8:
            assert 4 * N_FULL / len(payload) >= 3.9
            error = np.linalg.norm(QSGD().decode(payload, CTX) - v) / np.linalg.norm(v)
            assert error < 0.1  # unbucketed (bucket = n) this is about 2.7


def test_qsgd_is_deterministic_per_context():
    v = np.random.default_rng(1).normal(size=500).astype(np.float32)
    codec = QSGD(bits=4)
    assert codec.encode(v, CTX) == codec.encode(v, CodecContext(round=1, client_id=0, seed=0))
    assert codec.encode(v, CTX) != codec.encode(v, CodecContext(round=2, client_id=0, seed=0))
    assert codec.encode(v, CTX) != codec.encode(v, CodecContext(round=1, client_id=1, seed=0))


def test_codec_stream_is_keyed_by_seed_round_and_client():
    draws = {codec_rng(CodecContext(r, c, s)).integers(2**63) for r in (0, 1) for c in (0, 1) for s in (0, 1)}
    assert len(draws) == 8


def test_qsgd_zero_and_empty_vectors():
    for bits in (1, 8):
        for v in (np.zeros(5, np.float32), np.zeros(0, np.float32), f32(0, 0, 0, 0, 1.0)):
            codec = QSGD(bits=bits, bucket=2)
            out = codec.decode(codec.encode(v, CTX), CTX)
            np.testing.assert_array_equal(out, v)


def test_qsgd_refuses_non_finite_updates():
    for bits in (1, 8):
        with pytest.raises(ValueError, match="non-finite"):
            QSGD(bits=bits).encode(f32(1.0, np.nan), CTX)


def test_qsgd_decode_takes_bits_and_bucket_from_the_header():
    v = np.random.default_rng(2).normal(size=33).astype(np.float32)
    payload = QSGD(bits=2, bucket=5).encode(v, CTX)
    np.testing.assert_array_equal(QSGD().decode(payload, CTX), QSGD(bits=2, bucket=5).decode(payload, CTX))


# ---------------------------------------------------------------------------------------- malformed input

VALID = {
    "fp16": (FP16(), FP16().encode(f32(1.0, -2.0, 3.5), CTX)),
    "bf16": (BF16(), BF16().encode(f32(1.0, -2.0, 3.5), CTX)),
    "qsgd8": (QSGD(bits=8), QSGD(bits=8).encode(f32(1.0, -2.0, 3.5), CTX)),
    "qsgd4": (QSGD(bits=4), QSGD(bits=4).encode(f32(1.0, -2.0, 3.5), CTX)),
    "qsgd1": (QSGD(bits=1), QSGD(bits=1).encode(f32(1.0, -2.0, 3.5), CTX)),
    "qsgd8-buckets": (QSGD(bits=8, bucket=2), QSGD(bits=8, bucket=2).encode(f32(1.0, -2.0, 3.5), CTX)),
}


@pytest.mark.parametrize("name", VALID)
def test_truncated_and_extended_payloads_are_rejected(name):
    codec, payload = VALID[name]
    assert_truncated_and_padded_payloads_rejected(codec, payload, CTX)


@pytest.mark.parametrize("name", VALID)
def test_flipped_header_bytes(name):
    codec, payload = VALID[name]
    for pos in range(6):  # id, version, length: always detected
        bad = bytearray(payload)
        bad[pos] ^= 0xFF
        with pytest.raises(ValueError):
            codec.decode(bytes(bad), CTX)
    for pos in range(len(payload)):  # anywhere else: an error or a finite vector, never a crash
        for flip in (0x01, 0x80, 0xFF):
            bad = bytearray(payload)
            bad[pos] ^= flip
            try:
                out = codec.decode(bytes(bad), CTX)
            except ValueError:
                continue
            assert out.dtype == np.float32 and out.shape == (3,) and np.isfinite(out).all()


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), -1.0])
def test_qsgd_rejects_bad_scale(scale):
    with pytest.raises(ValueError, match="scale"):
        QSGD().decode(qsgd_header(3, 8, 2, 1.0, scale) + b"\x01\x01\x01", CTX)


def test_qsgd_rejects_unknown_bits_bucket_and_padding():
    with pytest.raises(ValueError, match="bits"):
        QSGD().decode(qsgd_header(2, 3, 512, 1.0) + b"\x00", CTX)
    with pytest.raises(ValueError, match="bucket"):
        QSGD().decode(qsgd_header(2, 8, 0) + b"\x00\x00", CTX)
    with pytest.raises(ValueError, match="padding"):
        QSGD().decode(qsgd_header(1, 4, 512, 1.0) + b"\x11", CTX)


def test_huge_declared_length_is_refused_before_allocating():
    for codec in (FP16(), BF16()):
        with pytest.raises(ValueError, match="exceeds the limit"):
            codec.decode(header(codec.encode(f32(1.0), CTX)[0], 0xFFFFFFFF), CTX)
    with pytest.raises(ValueError, match="exceeds the limit"):
        QSGD().decode(qsgd_header(0xFFFFFFFF, 8, 1, 1.0), CTX)
    with pytest.raises(ValueError, match="needs exactly"):  # within the limit: checked against the bytes
        QSGD(max_length=0xFFFFFFFF).decode(qsgd_header(0xFFFFFFFF, 8, 1, 1.0), CTX)


def test_wrong_codec_payload_is_rejected():
    with pytest.raises(ValueError, match="codec id"):
        QSGD().decode(FP16().encode(f32(1.0), CTX), CTX)
    with pytest.raises(ValueError, match="expected bytes"):
        FP16().decode(np.zeros(3, np.float32), CTX)


def test_encoders_refuse_bytes_input():
    with pytest.raises(TypeError, match="float32 vector"):
        QSGD().encode(b"\x00" * 8, CTX)


# ------------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize("bits", [3, 0, 16, True, 8.0, "8"])
def test_qsgd_bits_must_be_valid(bits):
    with pytest.raises(ConfigError, match="codec.bits"):
        QSGD(bits=bits)


@pytest.mark.parametrize("bucket", [0, -1, 2**32, 1.5, True])
def test_qsgd_bucket_must_be_valid(bucket):
    with pytest.raises(ConfigError, match="codec.qsgd_bucket"):
        QSGD(bucket=bucket)


def test_flags():
    for cls in (FP16, BF16, QSGD):
        assert (cls.linear, cls.takes_bytes, cls.emits_bytes, cls.stateful) == (False, False, True, False)
    assert (FP16.unbiased, BF16.unbiased, QSGD.unbiased) == (False, False, True)
    assert (FP16.name, BF16.name, QSGD.name) == ("fp16", "bf16", "qsgd")
