"""Quantizing codecs (fp16, bf16, QSGD) and the wire conventions shared by every compression codec.

Every codec here and in `sparsify` turns a flat float32 update into a self-describing payload:
a fixed little-endian header, then the data. The header always starts with

    byte 0      codec id (fp16 1, bf16 2, qsgd 3, topk 4, randk 5, sign 6, zstd 7)
    byte 1      format version (FORMAT_VERSION = 1)
    bytes 2-5   uint32 n, the length of the update vector (zstd: see `lossless`)

followed by the fields of the codec. `decode` trusts nothing in a payload: a wrong id or version,
a truncated or over-long payload, a length above `max_length`, a non-finite scale or value raise
`ValueError` with a one-line message (the server counts the update as rejected). Lengths are checked
against the bytes present before anything is allocated. `decode` never returns a non-finite value.

Randomness (QSGD's stochastic rounding, RandK's mask) comes from `codec_rng(ctx)`, a generator of its
own "codec" stream keyed by (run seed, round, client id): same context, same bytes.
"""

from __future__ import annotations

import struct

import numpy as np

from ..errors import ConfigError
from ..seeding import STREAMS
from .base import Codec

CODEC_STREAM = STREAMS["codec"]
FORMAT_VERSION = 1
MAX_LENGTH = 1 << 28  # largest update a decoder accepts: 268,435,456 params = 1 GiB as float32

CODEC_IDS = {"fp16": 1, "bf16": 2, "qsgd": 3, "topk": 4, "randk": 5, "sign": 6, "zstd": 7}


def codec_rng(ctx) -> np.random.Generator:
    """The generator of the "codec" stream for this (run seed, round, client)."""
    return np.random.default_rng(
        np.random.SeedSequence([int(ctx.seed), CODEC_STREAM, int(ctx.round), int(ctx.client_id)])
    )


def uniform_f32(rng: np.random.Generator, n: int) -> np.ndarray:
    """n float32 uniforms on [0, 1) with 24 random bits each, from the raw stream of `rng`.

    Two per raw 64-bit word: about 3× faster than `rng.random(n, dtype=np.float32)` on 1.66 M values.
    """
    raw = rng.bit_generator.random_raw((n + 1) // 2).view(np.uint32)[:n]
    raw >>= 8
    u = raw.astype(np.float32)
    u *= np.float32(2.0**-24)
    return u


def as_update(value, name: str) -> np.ndarray:
    """The value as a contiguous 1-D float32 vector (what every lossy codec encodes)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"{name} encodes a float32 vector, got bytes (put it before any byte-emitting codec)")
    v = np.ascontiguousarray(value, dtype=np.float32)
    if v.ndim != 1:
        raise ValueError(f"{name}: expected a flat update vector, got shape {v.shape}")
    if v.size > 0xFFFFFFFF:
        raise ValueError(f"{name}: update of {v.size} values does not fit the uint32 length field")
    return v


def check_max_length(max_length) -> int:
    if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) or not (
        0 < max_length <= 0xFFFFFFFF
    ):
        raise ConfigError("codec.max_length", f"must be an integer in [1, 2**32 - 1], got {max_length!r}")
    return int(max_length)


def pack_header(fmt: struct.Struct, name: str, *fields) -> bytes:
    return fmt.pack(CODEC_IDS[name], FORMAT_VERSION, *fields)


def check_id_and_version(payload: bytes, name: str) -> None:
    """The first two bytes: this codec's id and a format version this code reads."""
    if len(payload) < 2:
        raise ValueError(f"{name} payload: truncated header ({len(payload)} bytes)")
    codec_id, version = payload[0], payload[1]
    if codec_id != CODEC_IDS[name]:
        raise ValueError(f"{name} payload: codec id {codec_id} is not {name}'s ({CODEC_IDS[name]})")
    if version != FORMAT_VERSION:
        raise ValueError(f"{name} payload: format version {version} is not supported (expected {FORMAT_VERSION})")


def read_header(payload, fmt: struct.Struct, name: str, max_length: int, ctx=None) -> tuple[bytes, tuple]:
    """Checks the common header of a payload; returns the payload as bytes and the fields after the version.

    The first returned field is always n (checked against `max_length`, and to equal the model's size
    when the context knows it: a sparse payload of a few bytes must not make the decoder allocate n values).
    """
    if isinstance(payload, (bytearray, memoryview)):
        payload = bytes(payload)
    if not isinstance(payload, bytes):
        raise ValueError(f"{name} payload: expected bytes, got {type(payload).__name__}")
    check_id_and_version(payload, name)
    if len(payload) < fmt.size:
        raise ValueError(f"{name} payload: truncated header ({len(payload)} bytes, the header has {fmt.size})")
    _, _, *fields = fmt.unpack_from(payload)
    if fields[0] > max_length:
        raise ValueError(f"{name} payload: length {fields[0]} exceeds the limit of {max_length} values")
    if ctx is not None and ctx.size and fields[0] != ctx.size:
        raise ValueError(f"{name} payload: length {fields[0]}, the model has {ctx.size} values")
    return payload, tuple(fields)


def expect_size(payload: bytes, expected: int, name: str, what: str) -> None:
    if len(payload) != expected:
        raise ValueError(f"{name} payload: {len(payload)} bytes, but {what} needs exactly {expected}")


def check_scale(scale: float, name: str, what: str = "scale") -> None:
    """A scale read from a payload must be finite and non-negative."""
    if not np.isfinite(scale) or scale < 0:
        raise ValueError(f"{name} payload: {what} {scale!r} is not a finite non-negative number")


# ---------------------------------------------------------------------------------------------- fp16, bf16

_LEN_HEADER = struct.Struct("<BBI")  # id, version, n


class FP16(Codec):
    """IEEE half precision (round to nearest even), 2 bytes per value.

    Payload: 6-byte header (id, version, uint32 n) + n little-endian float16 = 6 + 2n bytes.
    Values beyond the float16 range (|v| >= 65520, which rounds to inf) make `encode` raise
    ValueError rather than send an infinity; magnitudes below 2**-25 round to zero.

    linear = False: the payload is a rounded, serialised form; round(a) + round(b) != round(a + b),
    sums of halves overflow at 65504, and secure aggregation needs exact ring arithmetic on the
    encoding. unbiased = False: rounding to nearest is deterministic, so it is biased per value.
    """

    name = "fp16"
    linear, unbiased = False, False
    takes_bytes, emits_bytes, stateful = False, True, False

    def __init__(self, max_length: int = MAX_LENGTH):
        self.max_length = check_max_length(max_length)

    def encode(self, value, ctx) -> bytes:
        v = as_update(value, self.name)
        with np.errstate(over="ignore", invalid="ignore"):
            h = v.astype("<f2")
        bad = (h.view("<u2") & 0x7C00) == 0x7C00  # exponent all ones: inf or NaN
        if bad.any():
            raise ValueError(
                f"fp16: {int(bad.sum())} values are non-finite or outside the float16 range (|v| < 65520)"
            )
        return pack_header(_LEN_HEADER, self.name, v.size) + h.tobytes()

    def decode(self, value, ctx) -> np.ndarray:
        payload, (n,) = read_header(value, _LEN_HEADER, self.name, self.max_length, ctx)
        expect_size(payload, _LEN_HEADER.size + 2 * n, self.name, f"n = {n} float16 values")
        raw = np.frombuffer(payload, dtype="<u2", count=n, offset=_LEN_HEADER.size)
        if ((raw & 0x7C00) == 0x7C00).any():  # exponent all ones: inf or NaN
            raise ValueError("fp16 payload: contains non-finite values")
        return raw.view("<f2").astype(np.float32)


def float32_to_bf16_bits(v: np.ndarray) -> np.ndarray:
    """The bfloat16 bit patterns (uint16) of finite float32 values, rounded to nearest, ties to even."""
    u = np.ascontiguousarray(v, dtype="<f4").view("<u4")
    lsb = (u >> 16) & 1
    return ((u + 0x7FFF + lsb) >> 16).astype("<u2")  # finite input: no uint32 overflow


class BF16(Codec):
    """bfloat16: the top 16 bits of float32, rounded to nearest even, 2 bytes per value.

    Same exponent range as float32, 8 significant bits. Payload: 6-byte header (id, version,
    uint32 n) + n little-endian bfloat16 bit patterns = 6 + 2n bytes. Non-finite input, or a value
    that rounds up past float32's maximum, makes `encode` raise ValueError.

    linear = False and unbiased = False for the reasons given in `FP16`.
    """

    name = "bf16"
    linear, unbiased = False, False
    takes_bytes, emits_bytes, stateful = False, True, False

    def __init__(self, max_length: int = MAX_LENGTH):
        self.max_length = check_max_length(max_length)

    def encode(self, value, ctx) -> bytes:
        v = as_update(value, self.name)
        if ((v.view("<u4") & 0x7F800000) == 0x7F800000).any():
            raise ValueError("bf16: update has non-finite values")
        b = float32_to_bf16_bits(v)
        if ((b & 0x7F80) == 0x7F80).any():
            raise ValueError("bf16: a value rounds past the largest bfloat16 (about 3.39e38)")
        return pack_header(_LEN_HEADER, self.name, v.size) + b.tobytes()

    def decode(self, value, ctx) -> np.ndarray:
        payload, (n,) = read_header(value, _LEN_HEADER, self.name, self.max_length, ctx)
        expect_size(payload, _LEN_HEADER.size + 2 * n, self.name, f"n = {n} bfloat16 values")
        raw = np.frombuffer(payload, dtype="<u2", count=n, offset=_LEN_HEADER.size)
        if ((raw & 0x7F80) == 0x7F80).any():
            raise ValueError("bf16 payload: contains non-finite values")
        return (raw.astype(np.uint32) << 16).view(np.float32)


# ---------------------------------------------------------------------------------------------------- QSGD

_QSGD_HEADER = struct.Struct("<BBIBI")  # id, version, n, bits, bucket size
QSGD_BITS = (1, 2, 4, 8)


def qsgd_levels(bits: int) -> int:
    """s, the number of non-zero magnitude levels: 2**(bits - 1) - 1 (127, 7, 1); 1 for bits = 1."""
    return max(1, (1 << (bits - 1)) - 1)


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Packs `bits`-wide codes (uint8, each < 2**bits) densely, first code in the high bits of a byte."""
    if bits == 8:
        return codes
    if bits == 1:
        return np.packbits(codes)
    per = 8 // bits
    pad = (-codes.size) % per
    if pad:
        codes = np.concatenate([codes, np.zeros(pad, np.uint8)])
    c = codes.reshape(-1, per)
    out = c[:, 0] << (8 - bits)
    for j in range(1, per):
        out |= c[:, j] << (8 - bits * (j + 1))
    return out


def code_table(values: np.ndarray, bits: int) -> np.ndarray:
    """For every byte 0..255, the decoded values of the 8 // bits codes it packs: a (256, 8 // bits) table.

    `values[code]` is the value of one code; decoding a packed array is then one gather, table[bytes].
    """
    per, mask = 8 // bits, (1 << bits) - 1
    byte = np.arange(256)[:, None]
    shifts = 8 - bits * (np.arange(per)[None, :] + 1)
    return values[(byte >> shifts) & mask]


def _buckets(x: np.ndarray, bucket: int) -> tuple[np.ndarray, np.ndarray]:
    """Views of x: its whole buckets as a (count, bucket) array, and the shorter last bucket (maybe empty)."""
    m = x.size - x.size % bucket
    return x[:m].reshape(-1, bucket), x[m:]


def _per_bucket(op: np.ufunc, x: np.ndarray, values: np.ndarray, bucket: int) -> None:
    """x = op(x, values[b]) on every bucket b, in place (op: np.multiply or np.divide)."""
    full, tail = _buckets(x, bucket)
    op(full, values[: full.shape[0], None], out=full)
    if tail.size:
        op(tail, values[full.shape[0]], out=tail)


class QSGD(Codec):
    """QSGD stochastic quantization (Alistarh et al. 2017, "QSGD: Communication-Efficient SGD via
    Gradient Quantization and Encoding") with bucketing, `bits` per coordinate, densely bit-packed.

    The update is cut into buckets of `bucket` consecutive coordinates (the last one shorter), each
    quantized against its own scale, as the paper proposes: the variance bound
    E‖Q(v) − v‖² <= min(d/s², √d/s)·‖v‖² then has the bucket size d, not the model size n.
    (Unbucketed, 8 bits on 1.66 M Gaussian values gives E‖Q(v) − v‖ ≈ 2.7‖v‖; with d = 512, ≈ 0.07‖v‖.)
    `bucket` >= n gives the textbook single-norm QSGD.

    bits in {2, 4, 8}: each code is 1 sign bit (high) + (bits - 1) level bits, with s = 2**(bits-1) - 1
    levels (127, 7, 1). With the bucket's scale ‖v_B‖₂ and r_i = s·|v_i|/‖v_B‖₂ ∈ [0, s], the level
    is floor(r_i) + 1 with probability r_i − floor(r_i), else floor(r_i); decode gives
    sign_i · level_i · ‖v_B‖₂ / s, so E[decode] = v. (The code "sign 1, level 0" is −0.)

    bits = 1: no room for sign and level, so it sends one bit per coordinate, +c with probability
    (1 + v_i/c)/2 and −c otherwise, where the scale c = ‖v_B‖_∞ (E = v_i; variance c² − v_i², below
    the c = ‖v_B‖₂ choice of QSGD with s = 1).

    Payload: 11-byte header (id, version, uint32 n, uint8 bits, uint32 bucket) + ceil(n/bucket)
    float32 scales + ceil(n·bits/8) bytes of codes, packed big-end first (np.packbits order) with zero
    padding: 11 + 4·ceil(n/bucket) + ceil(n·bits/8) bytes. The float32 scales sent are those used to
    quantize, so decoding is unbiased for them; stochastic rounding compares with float32 uniforms
    (bias at most 2**-24 of a step). Randomness: `codec_rng(ctx)`. `decode` takes bits and bucket
    from the header, so it decodes any valid configuration.

    unbiased = True; linear = False (nonlinear, per-client scales; bytes do not add).
    """

    name = "qsgd"
    linear, unbiased = False, True
    takes_bytes, emits_bytes, stateful = False, True, False

    def __init__(self, bits: int = 8, bucket: int = 512, max_length: int = MAX_LENGTH):
        if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or bits not in QSGD_BITS:
            raise ConfigError("codec.bits", f"must be one of 1, 2, 4, 8, got {bits!r}")
        if isinstance(bucket, bool) or not isinstance(bucket, (int, np.integer)) or not 1 <= bucket <= 0xFFFFFFFF:
            raise ConfigError("codec.qsgd_bucket", f"must be an integer in [1, 2**32 - 1], got {bucket!r}")
        self.bits, self.bucket = int(bits), int(bucket)
        self.max_length = check_max_length(max_length)

    def _scales(self, v: np.ndarray, a: np.ndarray) -> np.ndarray:
        """The float32 scale of every bucket: max |v_i| at 1 bit, else ‖v_B‖₂ summed in float64
        (>= max |v_i| after rounding, so r_i <= s)."""
        if self.bits == 1:
            full, tail = _buckets(a, self.bucket)
            parts = [full.max(axis=1)] + ([tail.max(keepdims=True)] if tail.size else [])
            return np.concatenate(parts).astype(np.float32)
        full, tail = _buckets(v, self.bucket)
        parts = [np.einsum("ij,ij->i", full, full, dtype=np.float64)]
        if tail.size:
            parts.append(np.einsum("i,i->", tail, tail, dtype=np.float64)[None])
        return np.sqrt(np.concatenate(parts)).astype(np.float32)

    def encode(self, value, ctx) -> bytes:
        v = as_update(value, self.name)
        n, bits = v.size, self.bits
        a = np.abs(v)
        with np.errstate(over="ignore", invalid="ignore"):
            scales = self._scales(v, a)
        if not np.isfinite(scales).all():
            raise ValueError("qsgd: update has non-finite values (or a bucket norm overflows float32)")
        u = uniform_f32(codec_rng(ctx), n)
        safe = np.where(scales > 0, scales, np.float32(1))  # a zero scale means a zero bucket
        # Divide by the scale, then multiply: s/scale could overflow float32 for a tiny scale.
        if bits == 1:  # P(+) = (1 + v/c)/2  <=>  u < 0.5 + 0.5·(v/c)
            p = v.copy()
            _per_bucket(np.divide, p, safe, self.bucket)
            p *= np.float32(0.5)
            p += np.float32(0.5)
            codes = np.less(u, p).view(np.uint8)
        else:
            s = qsgd_levels(bits)
            r = a  # r = s·|v|/scale, in place
            _per_bucket(np.divide, r, safe, self.bucket)
            r *= np.float32(s)
            np.minimum(r, np.float32(s), out=r)
            codes = r.astype(np.uint8)  # floor (r >= 0)
            r -= codes  # the fractional part
            np.add(codes, np.less(u, r), out=codes, casting="unsafe")  # round up with probability frac
            neg = np.less(v, 0).view(np.uint8)
            np.left_shift(neg, bits - 1, out=neg)
            codes |= neg
        header = pack_header(_QSGD_HEADER, self.name, n, bits, self.bucket)
        return header + scales.astype("<f4").tobytes() + pack_codes(codes, bits).tobytes()

    def decode(self, value, ctx) -> np.ndarray:
        payload, (n, bits, bucket) = read_header(value, _QSGD_HEADER, self.name, self.max_length, ctx)
        if bits not in QSGD_BITS:
            raise ValueError(f"qsgd payload: bits = {bits} is not one of 1, 2, 4, 8")
        if bucket < 1:
            raise ValueError("qsgd payload: bucket size 0")
        n_scales, n_bytes = -(-n // bucket), (n * bits + 7) // 8
        offset = _QSGD_HEADER.size + 4 * n_scales
        expect_size(payload, offset + n_bytes, self.name, f"n = {n} codes of {bits} bits in buckets of {bucket}")
        scales = np.frombuffer(payload, dtype="<f4", count=n_scales, offset=_QSGD_HEADER.size)
        if not (np.isfinite(scales) & (scales >= 0)).all():
            raise ValueError("qsgd payload: a scale is not a finite non-negative number")
        data = np.frombuffer(payload, dtype=np.uint8, count=n_bytes, offset=offset)
        if n % (8 // bits) and data[-1] & ((1 << (8 - (n * bits) % 8)) - 1):
            raise ValueError("qsgd payload: non-zero padding bits after the last value")
        s = qsgd_levels(bits)
        if bits == 1:
            units = np.array([-1, 1], np.float32)
        else:
            levels = np.arange(s + 1, dtype=np.float32)
            units = np.concatenate([levels, -levels])
        table = np.ascontiguousarray(code_table(units, bits)).view(f"V{4 * (8 // bits)}").ravel()
        out = np.take(table, data).view(np.float32)[:n]  # one gather of 8 // bits values per byte
        _per_bucket(np.multiply, out, (scales.astype(np.float64) / s).astype(np.float32), bucket)
        return out


__all__ = ["FP16", "BF16", "QSGD", "CODEC_STREAM", "FORMAT_VERSION", "MAX_LENGTH", "codec_rng"]
