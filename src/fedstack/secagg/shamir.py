"""Shamir t-of-n secret sharing of short byte strings over the field of p = 2**521 − 1 (Shamir 1979).

A secret of up to 64 bytes becomes one field element: the byte 0x01, then the secret, read as a big-endian
integer (the marker keeps leading zero bytes, so the length survives). `split` hides it as the constant term
of a random polynomial of degree t − 1 and hands out its values at x = id + 1 (never 0, which is the secret).
Any t shares determine the polynomial; any t − 1 are consistent with every secret, so they reveal nothing.
"""

from __future__ import annotations

import secrets
from itertools import combinations

P = 2**521 - 1  # a Mersenne prime: 64 secret bytes plus the marker byte fit in one element
MAX_SECRET_BYTES = 64
SHARE_BYTES = 66  # one field element as fixed-width big-endian bytes (521 bits)
MAX_RECOVERY_ATTEMPTS = 4096  # subsets `recover` tries before giving up


def split(secret: bytes, t: int, share_ids) -> dict[int, int]:
    """One share per id in `share_ids` (ints ≥ 0): any t of them recover `secret`, any t − 1 reveal nothing."""
    ids = list(share_ids)
    _check_ids(ids)
    if isinstance(t, bool) or not isinstance(t, int) or not 1 <= t <= len(ids):
        raise ValueError(f"threshold t={t!r} must satisfy 1 <= t <= n={len(ids)} (the number of share ids)")
    coeffs = [encode_secret(secret)] + [secrets.randbelow(P) for _ in range(t - 1)]
    return {i: evaluate(coeffs, i + 1) for i in ids}


def combine(shares: dict[int, int], t: int) -> bytes:
    """The secret behind at least t shares {id: share}; ValueError if too few, inconsistent or corrupt.

    With more than t shares, the first t (by id) fix the polynomial and every other share must lie on it,
    so a corrupted share is detected whenever it is not needed to reach t.
    """
    if isinstance(t, bool) or not isinstance(t, int) or t < 1:
        raise ValueError(f"threshold t={t!r} must be an integer >= 1")
    if len(shares) < t:
        raise ValueError(f"need at least t={t} shares to recover the secret, got {len(shares)}")
    ids = sorted(shares)
    _check_ids(ids)
    for i in ids:
        if isinstance(shares[i], bool) or not isinstance(shares[i], int) or not 0 <= shares[i] < P:
            raise ValueError(f"share of id {i} is not a field element")
    poly = lagrange({i + 1: shares[i] for i in ids[:t]})
    for i in ids[t:]:
        if poly(i + 1) != shares[i]:
            raise ValueError(f"inconsistent shares: share of id {i} is not on the polynomial of the first {t}")
    return _decode(poly(0))


def recover(shares: dict[int, int], t: int, is_valid) -> tuple[bytes, list[int]]:
    """The secret whose `is_valid(secret)` holds, and the ids of the shares that disagree with it.

    Tries all shares first, then all but one, all but two, ... (at most MAX_RECOVERY_ATTEMPTS subsets): the
    first consistent subset whose secret is valid wins, and the shares it leaves out are reported as bad — the
    fewest that explain the data, so exactly the corrupted ones unless corruptions conspire (a valid secret is
    what `is_valid` guarantees). ValueError if no subset of at least t shares gives a valid secret.
    """
    if len(shares) < t:
        raise ValueError(f"only {len(shares)} shares, need t={t}")
    ids = sorted(shares)
    attempts = 0
    for n_bad in range(len(ids) - t + 1):
        for bad in combinations(ids, n_bad):
            attempts += 1
            if attempts > MAX_RECOVERY_ATTEMPTS:
                raise ValueError(f"gave up after {MAX_RECOVERY_ATTEMPTS} subsets of {len(ids)} shares (t={t})")
            try:
                secret = combine({i: shares[i] for i in ids if i not in bad}, t)
            except ValueError:
                continue
            if is_valid(secret):
                return secret, list(bad)
    raise ValueError(f"no subset of at least t={t} of the {len(ids)} shares gives a valid secret")


def lagrange(points: dict[int, int]):
    """The polynomial of degree < len(points) through the points {x: y}, as a function x -> value mod P."""
    xs = list(points)
    # Barycentric form: value(x) = Σ_j y_j / d_j · ℓ(x) / (x − x_j) with ℓ(x) = Π_m (x − x_m) and
    # d_j = Π_{m≠j} (x_j − x_m). The x are small integers, so ℓ and d_j are exact Python ints and the
    # only inversions mod P are the t of the d_j, done once however many points are evaluated.
    weighted = []
    for xj in xs:
        d = 1
        for xm in xs:
            if xm != xj:
                d *= xj - xm
        weighted.append(points[xj] * pow(d % P, -1, P) % P)

    def value(x: int) -> int:
        full = 1
        for xm in xs:
            full *= x - xm
        if full == 0:
            return points[x]
        return sum(w * (full // (x - xj)) for w, xj in zip(weighted, xs)) % P

    return value


def evaluate(coeffs: list[int], x: int) -> int:
    """The polynomial with these coefficients (constant first) at x, mod P."""
    y = 0
    for c in reversed(coeffs):
        y = y * x + c  # x is small, so reducing once at the end is cheaper than at every step
    return y % P


def encode_secret(secret: bytes) -> int:
    """The field element that stands for `secret` (at most MAX_SECRET_BYTES bytes): the polynomial's value at 0."""
    if not isinstance(secret, (bytes, bytearray)):
        raise TypeError(f"secret must be bytes, got {type(secret).__name__}")
    if len(secret) > MAX_SECRET_BYTES:
        raise ValueError(f"secret has {len(secret)} bytes, at most {MAX_SECRET_BYTES} fit in one field element")
    return int.from_bytes(b"\x01" + bytes(secret), "big")


def _decode(value: int) -> bytes:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    if not raw or raw[0] != 1 or len(raw) > MAX_SECRET_BYTES + 1:
        raise ValueError("the shares do not encode a secret (corrupt or inconsistent shares)")
    return raw[1:]


def _check_ids(ids: list) -> None:
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < P - 1:
            raise ValueError(f"share id {i!r} must be an integer >= 0")
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate share ids in {sorted(ids)}")
