"""The `secagg` stage of a codec pipeline: secure aggregation, so the server only ever learns a sum.

It is not a transform a worker applies: it runs as the SecAgg protocol (fedstack.secagg) between
the server and the clients of a round (`server.py` drives it; in simulation through
`secagg.simulation.SecureRound`, deployed through `secagg.remote.RemoteSecureRound`). In the
pipeline it marks where the protocol takes over: it must be the last stage, every stage before it
must decode linearly (sums pass through), and "clip" must come first, because the protocol sums
fixed-point numbers in a bounded range.

Parameters (`[codec]`): `secagg_threshold` — t as a fraction of each client's k + 1 share holders,
in (1/2, 1]: a round survives dropouts while at least that fraction of holders answers;
`secagg_plus` — each client talks to k = O(log n) neighbours (Bell et al. 2020) instead of all n − 1;
`secagg_bits` and `secagg_frac_bits` — sums are taken mod 2**bits on values scaled by 2**frac_bits.
The values' range is clip_norm (an L2 bound bounds every coordinate) plus 8 standard deviations of
any client-side DP noise; the protocol refuses a cohort whose sum could overflow that range.
"""

from __future__ import annotations

import math

from ..secagg import SecAggParams, secagg_plus_degree
from .base import Codec


class SecAgg(Codec):
    """Marks secure aggregation at the end of a pipeline and makes each round's protocol parameters."""

    name, linear, unbiased = "secagg", True, True
    needs_linear_input = True
    sums = True  # the server decodes only the sum of a round's payloads

    def __init__(self, threshold: float = 0.6, plus: bool = False, bits: int = 32, frac_bits: int = 16,
                 value_range: float = 1.0):
        if not 0.5 < threshold <= 1:
            raise ValueError(f"secagg_threshold must be in (0.5, 1], got {threshold}")
        self.threshold, self.plus, self.bits, self.frac_bits = threshold, plus, bits, frac_bits
        self.value_range = value_range

    def params(self, cohort_size: int, graph_seed: int) -> SecAggParams:
        """The protocol parameters for a cohort of `cohort_size` clients (t from the threshold fraction)."""
        k = min(secagg_plus_degree(cohort_size), cohort_size - 1) if self.plus else cohort_size - 1
        holders = k + 1
        t = min(holders, max(holders // 2 + 1, math.ceil(self.threshold * holders)))
        return SecAggParams(threshold=t, bits=self.bits, clip=self.value_range, frac_bits=self.frac_bits,
                            k=k if self.plus else None, graph_seed=graph_seed)

    def open_round(self, cohort, seed: int, engine=None, round: int = 0):
        """Round `round`'s protocol with `cohort`, keys and shares exchanged: with simulated devices
        (secagg.simulation.SecureRound), or with the deployed clients of an `engine` that offers
        `exchange` (secagg.remote.RemoteSecureRound)."""
        if engine is not None and engine.exchanges:
            from ..secagg.remote import RemoteSecureRound

            return RemoteSecureRound(self.params(len(cohort), seed), cohort, engine, round)
        from ..secagg.simulation import SecureRound

        return SecureRound(self.params(len(cohort), seed), cohort)

    def encode(self, value, ctx):
        raise NotImplementedError("secagg runs as a protocol in the round loop, not inside a worker")

    def decode(self, value, ctx):
        raise NotImplementedError("secagg runs as a protocol in the round loop, not inside a worker")
