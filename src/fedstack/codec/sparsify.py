"""Sparsifying codecs: TopK and Sign with error feedback, RandK unbiased, and the index coding TopK uses.

Wire conventions (header prefix, checks, `codec_rng`) are those of `fedstack.codec.quantize`.

Error feedback (`stateful = True`): `encode(value, ctx, state) -> (payload, new_state)`, where
`state` is the client's residual e (float32, the update's length; None on its first round = zeros).
The codec compresses p = value + e and keeps what it did not send, new_state = p − decode(payload),
so over rounds sum(decoded) + final residual == sum(values) and nothing is lost, only delayed
(Stich, Cordonnier & Jaggi 2018, "Sparsified SGD with Memory"; Karimireddy, Rebjock, Stich &
Jaggi 2019, "Error Feedback Fixes SignSGD and other Gradient Compression Schemes").
"""

from __future__ import annotations

import math
import struct

import numpy as np

from ..errors import ConfigError
from .base import Codec
from .quantize import (
    MAX_LENGTH,
    as_update,
    check_max_length,
    check_scale,
    codec_rng,
    expect_size,
    pack_header,
    read_header,
)


def check_fraction(fraction) -> float:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float, np.floating, np.integer)):
        raise ConfigError("codec.topk_fraction", f"must be a number in (0, 1], got {fraction!r}")
    if not (0 < fraction <= 1):  # also rejects NaN
        raise ConfigError("codec.topk_fraction", f"must be in (0, 1], got {fraction!r}")
    return float(fraction)


def k_for(n: int, fraction: float) -> int:
    """Values kept out of n: max(1, ceil(fraction·n)), at most n (0 for n = 0).

    fraction·n is first rounded to 6 decimals so that binary float noise (0.07·100 = 7.000000000000001)
    does not add a value; encoder and decoder use this same function.
    """
    if n == 0:
        return 0
    return min(n, max(1, math.ceil(round(fraction * n, 6))))


def _residual(v: np.ndarray, state, name: str) -> np.ndarray:
    """p = v + e as a new float32 vector (the caller owns it)."""
    if state is None:
        return v.copy()
    e = np.asarray(state, dtype=np.float32)
    if e.shape != v.shape:
        raise ValueError(f"{name}: error-feedback state has shape {e.shape}, the update {v.shape}")
    return v + e


# ------------------------------------------------------------------------------------------- index coding

INDEX_VARINT, INDEX_BITMAP = 0, 1


def varint_sizes(values: np.ndarray) -> np.ndarray:
    """Bytes of the LEB128 varint of each value (< 2**35): 1 + one per further 7 bits."""
    values = np.asarray(values, dtype=np.uint64)
    sizes = np.ones(values.shape, np.int64)
    for j in range(1, 5):
        sizes += values >= np.uint64(1 << (7 * j))
    return sizes


def varint_encode(values: np.ndarray) -> np.ndarray:
    """LEB128 (7 bits per byte, low first, high bit = more follows) of each value < 2**35, concatenated."""
    values = np.asarray(values, dtype=np.uint64)
    sizes = varint_sizes(values)
    out = np.empty(int(sizes.sum()), np.uint8)
    starts = np.cumsum(sizes) - sizes
    for j in range(5):
        sel = sizes > j
        if not sel.any():
            break
        byte = (values[sel] >> np.uint64(7 * j)) & np.uint64(0x7F)
        byte |= (sizes[sel] > j + 1).astype(np.uint64) << np.uint64(7)
        out[starts[sel] + j] = byte
    return out


def varint_decode(data: np.ndarray, count: int, name: str = "varint") -> np.ndarray:
    """Exactly `count` canonical varints (at most 5 bytes each) filling `data`, as uint64."""
    data = np.asarray(data, dtype=np.uint8)
    ends = np.flatnonzero(data < 0x80)
    if ends.size != count or (count and ends[-1] != data.size - 1) or (not count and data.size):
        raise ValueError(f"{name}: expected {count} varints in {data.size} bytes, found {ends.size} complete ones")
    if count == 0:
        return np.zeros(0, np.uint64)
    starts = np.concatenate([[0], ends[:-1] + 1])
    sizes = ends - starts + 1
    if sizes.max() > 5:
        raise ValueError(f"{name}: a varint is longer than 5 bytes")
    if (data[ends[sizes > 1]] == 0).any():
        raise ValueError(f"{name}: non-canonical varint (trailing zero byte)")
    pos = np.arange(data.size) - np.repeat(starts, sizes)
    parts = (data & 0x7F).astype(np.uint64) << (np.uint64(7) * pos.astype(np.uint64))
    return np.add.reduceat(parts, starts)


def encode_indices(idx: np.ndarray, n: int) -> tuple[int, bytes]:
    """Sorted distinct indices < n as (flag, bytes), whichever coding is smaller (varint on a tie).

    INDEX_VARINT: gaps g_0 = i_0, g_j = i_j − i_{j−1} − 1 as LEB128 varints.
    INDEX_BITMAP: n bits, bit i set iff i is kept, first index in the high bit (np.packbits), zero padding.
    """
    idx = np.asarray(idx, dtype=np.int64)
    gaps = np.diff(idx, prepend=-1) - 1
    varint_len = int(varint_sizes(gaps).sum())
    if varint_len <= (n + 7) // 8:
        return INDEX_VARINT, varint_encode(gaps).tobytes()
    mask = np.zeros(n, bool)
    mask[idx] = True
    return INDEX_BITMAP, np.packbits(mask).tobytes()


def index_bytes(idx: np.ndarray, n: int) -> int:
    """Size of `encode_indices(idx, n)`: min(sum of varint sizes of the gaps, ceil(n/8))."""
    gaps = np.diff(np.asarray(idx, dtype=np.int64), prepend=-1) - 1
    return min(int(varint_sizes(gaps).sum()), (n + 7) // 8)


def decode_indices(flag: int, data, n: int, k: int, name: str = "indices") -> np.ndarray:
    """Inverse of `encode_indices`: k sorted distinct indices < n (int64); ValueError on anything else."""
    data = np.frombuffer(bytes(data), dtype=np.uint8)
    if flag == INDEX_BITMAP:
        if data.size != (n + 7) // 8:
            raise ValueError(f"{name}: bitmap of {data.size} bytes, n = {n} needs {(n + 7) // 8}")
        bits = np.unpackbits(data)
        if bits[n:].any():
            raise ValueError(f"{name}: non-zero padding bits after the bitmap")
        idx = np.flatnonzero(bits)
        if idx.size != k:
            raise ValueError(f"{name}: bitmap marks {idx.size} indices, the header says k = {k}")
        return idx
    if flag != INDEX_VARINT:
        raise ValueError(f"{name}: unknown index coding {flag}")
    gaps = varint_decode(data, k, name)
    if k and gaps.max() >= n:
        raise ValueError(f"{name}: index out of range (n = {n})")
    idx = np.cumsum(gaps + np.uint64(1)) - np.uint64(1)  # exact: k·n < 2**64 for n, k < 2**32
    if k and idx[-1] >= n:
        raise ValueError(f"{name}: index {int(idx[-1])} out of range (n = {n})")
    return idx.astype(np.int64)


def top_k_indices(a: np.ndarray, k: int) -> np.ndarray:
    """Sorted indices of the k largest entries of `a`; among equal entries the lowest indices win."""
    n = a.size
    if k >= n:
        return np.arange(n)
    if k == 0:
        return np.zeros(0, np.int64)
    t = np.partition(a, n - k)[n - k]  # the k-th largest value
    above = np.flatnonzero(a > t)
    ties = np.flatnonzero(a == t)[: k - above.size]
    return np.sort(np.concatenate([above, ties]))


# ---------------------------------------------------------------------------------------------------- TopK

_TOPK_HEADER = struct.Struct("<BBIIB")  # id, version, n, k, index coding


class TopK(Codec):
    """Top-k sparsification with error feedback (Stich et al. 2018, "Sparsified SGD with Memory").

    Keeps the k = max(1, ceil(fraction·n)) coordinates of p = update + residual with the largest
    magnitude (ties: lowest index first) and carries the rest over to the next round.

    Payload: 11-byte header (id, version, uint32 n, uint32 k, uint8 index coding) + k float32 values
    in increasing index order + the indices, as gap varints or an n-bit bitmap, whichever is smaller:
    11 + 4k + min(Σ varint_size(gap_j), ceil(n/8)) bytes (see `encode_indices`). `decode` requires
    k = k_for(n, fraction), the server's own `codec.topk_fraction`, so n is bounded by the payload size.

    unbiased = False (biased by design; error feedback makes up for it over rounds);
    linear = False (the kept coordinates differ per client).
    """

    name = "topk"
    linear, unbiased = False, False
    takes_bytes, emits_bytes, stateful = False, True, True

    def __init__(self, fraction: float = 0.01, max_length: int = MAX_LENGTH):
        self.fraction = check_fraction(fraction)
        self.max_length = check_max_length(max_length)

    def encode(self, value, ctx, state) -> tuple[bytes, np.ndarray]:
        v = as_update(value, self.name)
        p = _residual(v, state, self.name)
        a = np.abs(p)
        if not np.isfinite(a.max(initial=0)):
            raise ValueError("topk: update (plus residual) has non-finite values")
        n = p.size
        k = k_for(n, self.fraction)
        idx = top_k_indices(a, k)
        values = p[idx]
        flag, index_data = encode_indices(idx, n)
        p[idx] = 0  # what was sent leaves the residual exactly
        header = pack_header(_TOPK_HEADER, self.name, n, k, flag)
        return header + values.astype("<f4").tobytes() + index_data, p

    def decode(self, value, ctx) -> np.ndarray:
        payload, (n, k, flag) = read_header(value, _TOPK_HEADER, self.name, self.max_length, ctx)
        expected_k = k_for(n, self.fraction)
        if k != expected_k:
            raise ValueError(f"topk payload: k = {k}, but n = {n} at fraction {self.fraction} gives {expected_k}")
        body = _TOPK_HEADER.size + 4 * k
        if len(payload) < body:
            raise ValueError(f"topk payload: truncated ({len(payload)} bytes, {k} values need {body} before indices)")
        values = np.frombuffer(payload, dtype="<f4", count=k, offset=_TOPK_HEADER.size)
        if not np.isfinite(values).all():
            raise ValueError("topk payload: contains non-finite values")
        idx = decode_indices(flag, memoryview(payload)[body:], n, k, "topk payload")
        out = np.zeros(n, np.float32)
        out[idx] = values
        return out


# --------------------------------------------------------------------------------------------------- RandK

_RANDK_HEADER = struct.Struct("<BBIIQ")  # id, version, n, k, mask seed


def _first_distinct(seed: int, n: int, m: int) -> np.ndarray:
    """The first m (<= n/2) distinct indices of a stream of uniform draws in [0, n): a uniform m-subset.

    Built on PCG64's raw 64-bit output (a stream NumPy keeps stable across versions, unlike
    Generator.choice), with index = floor(top 53 bits · n / 2**53), so server and client agree on the
    mask whatever NumPy each runs. The answer depends only on the stream, not on the batch sizes.
    """
    bg = np.random.PCG64(seed)
    pool = np.zeros(0, np.int64)
    have = 0
    while True:
        # expected draws to find m − have new indices among n − have free ones: n·ln((n − have)/(n − m))
        batch = int(1.05 * n * (math.log(n - have) - math.log(n - m))) + 64
        raw = bg.random_raw(batch)
        draws = ((raw >> np.uint64(11)).astype(np.float64) * (n * 2.0**-53)).astype(np.int64)
        np.minimum(draws, n - 1, out=draws)
        pool = np.concatenate([pool, draws])
        uniq, first = np.unique(pool, return_index=True)
        have = uniq.size
        if have >= m:
            return pool[np.sort(first)[:m]]


def randk_indices(seed: int, n: int, k: int) -> np.ndarray:
    """The sorted mask of RandK: k distinct indices < n from the 64-bit `seed` (the complement for k > n/2)."""
    if k >= n:
        return np.arange(n)
    if 2 * k <= n:
        return np.sort(_first_distinct(seed, n, k))
    keep = np.ones(n, bool)
    keep[_first_distinct(seed, n, n - k)] = False
    return np.flatnonzero(keep)


def _scaled(values: np.ndarray, n: int, k: int) -> np.ndarray:
    """values · n/k as float32 (inf where that overflows float32)."""
    if k == 0:
        return values.astype(np.float32)
    with np.errstate(over="ignore"):
        return (values.astype(np.float64) * (n / k)).astype(np.float32)


class RandK(Codec):
    """Random-k sparsification (Konečný et al. 2016, "Federated Learning: Strategies for Improving
    Communication Efficiency", random mask), unbiased.

    Sends k = max(1, ceil(fraction·n)) coordinates chosen uniformly at random (without replacement)
    and, instead of their indices, the 64-bit seed that regenerates the mask (`randk_indices`); the
    seed is drawn from `codec_rng(ctx)`. The values travel unscaled; `decode` multiplies them by n/k,
    so each coordinate, kept with probability k/n, is unbiased: E[decode] = v (variance v_i²(n/k − 1)).

    Payload: 18-byte header (id, version, uint32 n, uint32 k, uint64 seed) + k float32 values in
    increasing index order = 18 + 4k bytes. `decode` requires k = k_for(n, fraction).

    unbiased = True; linear = False (every client has its own mask and the payloads are bytes).
    """

    name = "randk"
    linear, unbiased = False, True
    takes_bytes, emits_bytes, stateful = False, True, False

    def __init__(self, fraction: float = 0.01, max_length: int = MAX_LENGTH):
        self.fraction = check_fraction(fraction)
        self.max_length = check_max_length(max_length)

    def encode(self, value, ctx) -> bytes:
        v = as_update(value, self.name)
        n = v.size
        k = k_for(n, self.fraction)
        seed = int(codec_rng(ctx).integers(0, 2**64, dtype=np.uint64))
        values = v[randk_indices(seed, n, k)]
        if not np.isfinite(_scaled(values, n, k)).all():
            raise ValueError("randk: update has non-finite values (or values too large to scale by n/k)")
        return pack_header(_RANDK_HEADER, self.name, n, k, seed) + values.astype("<f4").tobytes()

    def decode(self, value, ctx) -> np.ndarray:
        payload, (n, k, seed) = read_header(value, _RANDK_HEADER, self.name, self.max_length, ctx)
        expected_k = k_for(n, self.fraction)
        if k != expected_k:
            raise ValueError(f"randk payload: k = {k}, but n = {n} at fraction {self.fraction} gives {expected_k}")
        expect_size(payload, _RANDK_HEADER.size + 4 * k, self.name, f"k = {k} values")
        values = np.frombuffer(payload, dtype="<f4", count=k, offset=_RANDK_HEADER.size)
        scaled = _scaled(values, n, k)
        if not np.isfinite(scaled).all():
            raise ValueError("randk payload: contains non-finite values (or values too large to scale by n/k)")
        out = np.zeros(n, np.float32)
        out[randk_indices(seed, n, k)] = scaled
        return out


# ---------------------------------------------------------------------------------------------------- Sign

_SIGN_HEADER = struct.Struct("<BBIf")  # id, version, n, scale


class Sign(Codec):
    """Scaled sign compression with error feedback (EF-signSGD, Karimireddy et al. 2019,
    "Error Feedback Fixes SignSGD and other Gradient Compression Schemes").

    With p = update + residual, sends one bit per coordinate (1 iff p_i >= 0, so sign(0) = +) and
    the scale ‖p‖₁/n; decode = scale · (±1). The residual keeps p − decode.

    Payload: 10-byte header (id, version, uint32 n, float32 scale) + ceil(n/8) bytes of bits
    (np.packbits order, zero padding) = 10 + ceil(n/8) bytes.

    unbiased = False; linear = False (per-client scale, bytes do not add).
    """

    name = "sign"
    linear, unbiased = False, False
    takes_bytes, emits_bytes, stateful = False, True, True

    def __init__(self, max_length: int = MAX_LENGTH):
        self.max_length = check_max_length(max_length)

    def encode(self, value, ctx, state) -> tuple[bytes, np.ndarray]:
        v = as_update(value, self.name)
        p = _residual(v, state, self.name)
        n = p.size
        l1 = float(np.abs(p).sum(dtype=np.float64))
        if not math.isfinite(l1):
            raise ValueError("sign: update (plus residual) has non-finite values")
        scale = np.float32(l1 / n) if n else np.float32(0)
        positive = p >= 0
        payload = pack_header(_SIGN_HEADER, self.name, n, scale) + np.packbits(positive).tobytes()
        p -= np.array([-scale, scale], np.float32)[positive.view(np.uint8)]
        return payload, p

    def decode(self, value, ctx) -> np.ndarray:
        payload, (n, scale) = read_header(value, _SIGN_HEADER, self.name, self.max_length, ctx)
        check_scale(scale, self.name)
        nbytes = (n + 7) // 8
        expect_size(payload, _SIGN_HEADER.size + nbytes, self.name, f"n = {n} sign bits")
        data = np.frombuffer(payload, dtype=np.uint8, count=nbytes, offset=_SIGN_HEADER.size)
        if n % 8 and data[-1] & ((1 << (8 - n % 8)) - 1):
            raise ValueError("sign payload: non-zero padding bits after the last value")
        table = np.array([-scale, scale], np.float32)
        return table[np.unpackbits(data, count=n)]


__all__ = ["TopK", "RandK", "Sign", "encode_indices", "decode_indices", "k_for"]
