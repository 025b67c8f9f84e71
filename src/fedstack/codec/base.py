"""The Codec protocol, the identity codec, and the pipeline that chains codecs into bytes."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..errors import ConfigError


@dataclass(frozen=True)
class CodecContext:
    """Who is encoding what: lets a codec derive seeds or keep per-client state."""

    round: int
    client_id: int
    seed: int
    clip_norm: float = 0.0  # this round's DP clip norm (FitConfig.clip_norm); 0: the codec's own
    # The model's number of values when decoding (0: unknown). A decoder refuses a payload that claims
    # another length before allocating anything, so a small payload cannot make the server allocate a lot.
    size: int = 0


def max_encoded_bytes(size: int) -> int:
    """The most bytes any codec's payload for `size` values can take: QSGD's 8-bit codes with one float32
    norm per value (bucket 1) are the worst case at 5 bytes a value (top-k's bitmap and values take
    4.125), plus room for headers. A server refuses a longer payload, or decompressed content, unread."""
    return 5 * size + 4096


class Codec:
    """One transform of an update with paired hooks: `encode` on the client, `decode` on the server.

    A value is a float32 vector or bytes; the pipeline serialises a final vector as raw float32.
    Every stage declares its traits (the defaults below, overridden as class attributes), and the
    pipeline checks an order over them when it is built: `linear` — the sum of encodings decodes to
    the sum of values (what secure aggregation needs); `unbiased` — decode(encode(v)) equals v in
    expectation; `takes_bytes` / `emits_bytes` — what kind of value it reads and writes; `stateful` —
    error feedback: `encode(value, ctx, state) -> (value, new_state)` instead; `needs_linear_input` —
    it may only follow linear stages (secure aggregation); `sums` — a summing protocol the round loop
    runs (secagg, ckks) rather than a transform a worker applies.
    A toy that halves an update and doubles it back::

        class Halve(Codec):
            name, linear, unbiased = "halve", True, True
            def encode(self, value, ctx): return value / 2
            def decode(self, value, ctx): return value * 2
    """

    name: str = "codec"
    linear: bool = False
    unbiased: bool = False
    takes_bytes: bool = False
    emits_bytes: bool = False
    stateful: bool = False
    needs_linear_input: bool = False
    sums: bool = False

    def encode(self, value: Any, ctx: CodecContext) -> Any:
        return value

    def decode(self, value: Any, ctx: CodecContext) -> Any:
        return value

    def follows(self, previous: "Codec | None") -> None:
        """Told, when a pipeline is built, which stage comes before it (None: it comes first)."""


class Identity(Codec):
    """Sends the update unchanged."""

    name, linear, unbiased = "identity", True, True


class Pipeline:
    """Codecs applied in order on the client and in reverse order on the server.

    The wire form is always bytes, so what is counted is what would be sent. Stages that keep
    client state (error feedback: `stateful`) get their residual through `encode_with_state`.
    """

    def __init__(self, stages: list[Codec] | None = None):
        self.stages = list(stages or [])
        for before, after in zip(self.stages, self.stages[1:]):
            if before.emits_bytes and not after.takes_bytes:
                raise ConfigError("codec.pipeline", f"{after.name!r} transforms a vector and cannot follow "
                                  f"{before.name!r}, which emits bytes")
        for i, stage in enumerate(self.stages):
            stage.follows(self.stages[i - 1] if i else None)
        for i, stage in enumerate(self.stages):  # e.g. secure aggregation: the server may only see a sum
            nonlinear = [s.name for s in self.stages[:i] if not s.linear]
            if stage.needs_linear_input and nonlinear:
                raise ConfigError("codec.pipeline", f"{stage.name!r} sums encodings, so every stage before it must "
                                  f"be linear; {', '.join(map(repr, nonlinear))} is not")

    @property
    def linear(self) -> bool:
        """Whether sums of payloads decode to the sum of updates (what secure aggregation needs)."""
        return all(s.linear for s in self.stages)

    @property
    def summing(self):
        """The last stage if it is a secure-summing protocol (secagg), which the round loop runs; else None."""
        last = self.stages[-1] if self.stages else None
        return last if last is not None and last.sums else None

    def before_summing(self) -> "Pipeline":
        """The stages a client applies itself, before a summing protocol takes over (all when there is none)."""
        return Pipeline(self.stages[:-1]) if self.summing else self

    @property
    def stateful(self) -> bool:
        """Whether some stage keeps client state across rounds (the error-feedback residual)."""
        return any(s.stateful for s in self.stages)

    def encode(self, update: np.ndarray, ctx: CodecContext) -> bytes:
        """Client side: update vector → payload bytes (for pipelines without client state)."""
        if self.stateful:
            raise ValueError("this pipeline keeps client state (error feedback): use encode_with_state")
        return self.encode_with_state(update, ctx, None)[0]

    def encode_with_state(self, update: np.ndarray, ctx: CodecContext,
                          state: dict[str, np.ndarray] | None) -> tuple[bytes, dict[str, np.ndarray]]:
        """Client side with client state: (payload bytes, the stateful stages' new state by key)."""
        value: Any = update
        new_state: dict[str, np.ndarray] = {}
        for i, stage in enumerate(self.stages):
            if stage.stateful:
                key = f"codec{i}.{stage.name}"
                value, new_state[key] = stage.encode(value, ctx, (state or {}).get(key))
            else:
                value = stage.encode(value, ctx)
        if isinstance(value, np.ndarray):
            value = np.ascontiguousarray(value, dtype=np.float32).tobytes()
        return bytes(value), new_state

    def max_payload_bytes(self, size: int) -> int:
        """The most bytes an honest client's payload for a model of `size` values can hold: raw float32
        without codecs, else `max_encoded_bytes`. A server refuses a longer announcement unread."""
        return max_encoded_bytes(size) if self.stages else 4 * size

    def decode(self, payload: bytes, ctx: CodecContext, size: int = 0) -> np.ndarray:
        """Server side: payload bytes → update vector; ValueError for a payload that does not decode.

        With `size` (the model's number of values) every stage refuses a payload claiming another
        length before it allocates. The caller checks the result's length (a "shape" problem).
        """
        if size:
            ctx = replace(ctx, size=size)
            if self.stages and len(payload) > self.max_payload_bytes(size):
                raise ValueError(f"a payload of {len(payload)} bytes is over the "
                                 f"{self.max_payload_bytes(size)} a model of {size} values allows")
        value: Any = payload
        if not self.stages or not self.stages[-1].emits_bytes:
            if len(payload) % 4:
                raise ValueError(f"a raw float32 payload of {len(payload)} bytes is not a whole number of values")
            value = np.frombuffer(payload, dtype=np.float32)
        for stage in reversed(self.stages):
            value = stage.decode(value, ctx)
        # Type-checked, not converted: np.asarray of bytes would build an error message holding them all.
        if not isinstance(value, np.ndarray) or value.ndim != 1:
            raise ValueError(f"the pipeline decoded to {type(value).__name__}, not a flat vector")
        return value.astype(np.float32, copy=False)
