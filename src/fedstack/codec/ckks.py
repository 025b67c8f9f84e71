"""The `ckks` stage of a codec pipeline: homomorphic aggregation, so the server adds what it cannot read.

Like `secagg` it is not a transform a worker applies but a protocol the round loop runs
(`server.py`): each client encrypts its update under the key holder's public CKKS key
(fedstack.he), the server adds the ciphertexts, and only the key holder — never the server —
decrypts, and only the aggregate. The key holder's keys come from `fedstack keys DIR`
(`codec.ckks_keys = "DIR"`: ckks_public.bin for clients and server, ckks_secret.bin for the key
holder alone); without it a simulation makes a fresh key holder for the run. In simulation the key
holder is its own object beside the server, which is only ever given the public context.
It must be the last stage of the pipeline, after "clip" (CKKS keeps ~1e-8 absolute precision on
values of moderate size; clipping bounds them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import he


class CKKS:
    """Marks homomorphic aggregation at the end of a pipeline and opens each round's encrypted sum."""

    name, linear, unbiased = "ckks", True, True
    needs_linear_input = True
    sums = True

    def __init__(self, keys: str = ""):
        self.keys = keys
        self._holder = None  # made or read when the first round opens: key generation takes a moment

    def key_holder(self) -> he.KeyHolder:
        """The party that can decrypt the aggregate: read from `keys`, or made fresh for this run."""
        if self._holder is None:
            if self.keys:
                self._holder = he.read_secret(Path(self.keys) / "ckks_secret.bin")
            else:
                self._holder = he.KeyHolder()
        return self._holder

    def open_round(self, cohort, seed: int) -> "EncryptedRound":
        """One round's encrypted sum (the cohort needs no setup: clients encrypt under a fixed public key)."""
        holder = self.key_holder()
        return EncryptedRound(holder.public_context(), holder)

    def encode(self, value, ctx):
        raise NotImplementedError("ckks runs as a protocol in the round loop, not inside a worker")

    def decode(self, value, ctx):
        raise NotImplementedError("ckks runs as a protocol in the round loop, not inside a worker")


class EncryptedRound:
    """Clients encrypt (`submit`), the server adds ciphertexts as they come, the key holder decrypts the sum."""

    def __init__(self, public_context: bytes, key_holder: he.KeyHolder):
        self.public_context = public_context
        self._key_holder = key_holder  # the server side below never touches it until `finish`
        self._sum: bytes | None = None
        self.members: list[int] = []
        self.bytes_up = self.bytes_down = 0

    def submit(self, client_id: int, vector: np.ndarray) -> bool:
        """The client's device encrypts its vector; the server adds it to the running encrypted sum."""
        payload = he.encrypt(self.public_context, vector)
        self.bytes_up += len(payload)
        self._sum = payload if self._sum is None else he.add(self.public_context, [self._sum, payload])
        self.members.append(client_id)
        return True

    def finish(self) -> tuple[np.ndarray, tuple[int, ...]]:
        """The key holder decrypts the aggregate: (float64 sum, the clients it sums)."""
        if self._sum is None:
            raise ValueError("nothing was submitted")
        self.bytes_down += len(self._sum)  # the aggregate travels to the key holder
        return self._key_holder.decrypt(self._sum, dtype=np.float64), tuple(self.members)
