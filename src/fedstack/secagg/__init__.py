"""Secure aggregation (SecAgg, Bonawitz et al. 2017; SecAgg+, Bell et al. 2020) as a pure message-passing library.

Modules: `shamir` (secret sharing), `crypto` (key agreement, AES-GCM, the PRG), `fixedpoint` (floats as
integers mod 2**bits), `graph` (the SecAgg+ neighbour graph), `messages` (the wire format) and `protocol`
(parameters, client, server and an in-process `simulate_round`). Start with the docstring of `protocol`.
"""

from .fixedpoint import FixedPoint
from .graph import neighbours, secagg_plus_degree
from .messages import (
    AdvertiseKeys,
    MaskedInput,
    MaskedInputRequest,
    ShareKeys,
    ShareKeysRequest,
    Unmask,
    UnmaskRequest,
    decode,
)
from .protocol import STAGES, SecAggAbort, SecAggClient, SecAggParams, SecAggServer, simulate_round

__all__ = [
    "SecAggParams", "SecAggClient", "SecAggServer", "SecAggAbort", "simulate_round", "STAGES",
    "AdvertiseKeys", "ShareKeysRequest", "ShareKeys", "MaskedInputRequest", "MaskedInput", "UnmaskRequest",
    "Unmask", "decode", "FixedPoint", "neighbours", "secagg_plus_degree",
]
