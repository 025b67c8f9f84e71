"""The SecAgg+ communication graph: which clients agree on masks and hold each other's shares.

Bell et al. 2020 ("Secure Single-Server Aggregation with (Poly)Logarithmic Overhead", CCS'20) replace the
complete graph of Bonawitz et al. 2017 by a sparse random one of degree k = O(log n), so each client does
O(log n) key agreements, shares and PRG expansions instead of O(n). Here the graph is a k-regular Harary
graph — a ring where each client is joined to its k/2 nearest clients on each side, and for odd k to the
client opposite — laid over a random order of the ids. The order comes from a PUBLIC seed: sorting ids by
SHA-256(seed ‖ id) is a portable permutation, so every party (in any language) computes the same graph.
"""

from __future__ import annotations

import hashlib
import math
from functools import lru_cache

MAX_ID = 2**32 - 1  # ids travel as uint32


def neighbours(ids, k: int, seed: int) -> dict[int, list[int]]:
    """Each id's k neighbours (sorted) in the seeded k-regular graph over `ids`; k = n − 1 is the complete graph.

    Symmetric (v is u's neighbour iff u is v's) and never includes the id itself. ValueError if ids repeat or
    fall outside 0..2**32 − 1, if k is not in 0..n − 1, or if k and n are both odd (no k-regular graph exists).
    """
    return {u: list(vs) for u, vs in graph(tuple(sorted(ids)), k, seed).items()}


def secagg_plus_degree(n: int) -> int:
    """A suggested SecAgg+ degree for n clients: the smallest even k ≥ 3·log2(n), capped at n − 1.

    Bell et al. prove k = O(log n) suffices and derive concrete k from the dropout rate, the corrupted
    fraction and the security parameters; 3·log2(n) is a simple stand-in of that order (n=100 → 20,
    n=10**4 → 40, n=10**6 → 60). Even, so any n has a k-regular graph.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    k = math.ceil(3 * math.log2(n)) if n > 1 else 0
    return min(n - 1, k + k % 2)


@lru_cache(maxsize=8)
def graph(ids: tuple[int, ...], k: int, seed: int) -> dict[int, tuple[int, ...]]:
    """`neighbours` for sorted `ids`, cached (every client of a simulated round asks for the same graph)."""
    n = len(ids)
    if len(set(ids)) != n:
        raise ValueError("client ids repeat")
    for u in ids:
        if isinstance(u, bool) or not isinstance(u, int) or not 0 <= u <= MAX_ID:
            raise ValueError(f"client id {u!r} must be an integer in 0..{MAX_ID}")
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= max(n - 1, 0):
        raise ValueError(f"degree k={k!r} must be in 0..n−1 = {n - 1}")
    if k % 2 and n % 2:
        raise ValueError(f"no {k}-regular graph on {n} clients: k and n cannot both be odd")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise ValueError(f"graph seed must be an integer in 0..2**64 − 1, got {seed!r}")
    salt = seed.to_bytes(8, "big")
    ring = sorted(ids, key=lambda u: hashlib.sha256(salt + u.to_bytes(4, "big")).digest())
    offsets = list(range(1, k // 2 + 1)) + [-j for j in range(1, k // 2 + 1)] + ([n // 2] if k % 2 else [])
    return {u: tuple(sorted(ring[(p + j) % n] for j in offsets)) for p, u in enumerate(ring)}
