"""The client side of DP-FedAvg as codec stages: `clip` bounds an update, `gaussian` adds noise to it.

Both are the identity on the server (their `decode`), so a sum of their outputs stands for the sum
of clipped (and noised) updates: they may come before secure aggregation, which only sums. With
`privacy.mode = "central"` the pipeline only clips and the server adds the noise to the sum
(dp/central.py); with "local" every client adds noise of std z·C to its own update; with
"distributed" each of n clients adds std z·C/√n, so that the sum, all the server ever sees under
secure aggregation, carries z·C (fedstack.dp.accounting.noise_std).
"""

from __future__ import annotations

import numpy as np

from .accounting import NOISE_MODES, clip_by_l2, noise_std
from ..seeding import rng, stable_hash
from ..codec.base import Codec


class Clip(Codec):
    """Scales an update down to L2 norm ≤ the round's clip norm (`ctx.clip_norm`, else `clip_norm`)."""

    name, linear, unbiased = "clip", True, False  # linear: decode is the identity, sums pass through

    def __init__(self, clip_norm: float = 1.0):
        if not clip_norm > 0:
            raise ValueError(f"clip_norm must be > 0, got {clip_norm}")
        self.clip_norm = clip_norm

    def encode(self, value: np.ndarray, ctx) -> np.ndarray:
        clipped, _ = clip_by_l2(value, ctx.clip_norm or self.clip_norm)
        return clipped.astype(np.float32)

    def decode(self, value, ctx):
        return value


class Gaussian(Codec):
    """Adds N(0, std²) to each coordinate, std = noise_std(noise_multiplier, clip norm, mode, clients).

    In simulation (`seeded`) the draw comes from the run seed's "noise" stream keyed by (round,
    client), so a run is reproducible. A deployed client must not do that — the server knows the
    run seed and could subtract the noise — so there (`seeded=False`) it draws from the operating
    system's entropy.
    """

    name, linear, unbiased = "gaussian", True, True

    def __init__(self, noise_multiplier: float, clip_norm: float = 1.0, mode: str = "local", clients: int = 1,
                 seeded: bool = True):
        if mode not in ("local", "distributed"):
            raise ValueError(f"client-side noise is for privacy.mode local or distributed, not {mode!r} "
                             f"({' | '.join(NOISE_MODES)})")
        self.noise_multiplier, self.clip_norm, self.mode, self.clients = noise_multiplier, clip_norm, mode, clients
        self.seeded = seeded

    def std(self, ctx) -> float:
        """The noise std this client adds in this round."""
        return noise_std(self.noise_multiplier, ctx.clip_norm or self.clip_norm, self.mode, self.clients)

    def encode(self, value: np.ndarray, ctx) -> np.ndarray:
        std = self.std(ctx)
        if std == 0:
            return value
        draws = rng(ctx.seed, "noise", stable_hash("client"), ctx.round, ctx.client_id) if self.seeded \
            else np.random.default_rng()  # fresh OS entropy
        noise = draws.normal(0.0, std, value.shape)
        return (value.astype(np.float64) + noise).astype(np.float32)

    def decode(self, value, ctx):
        return value
