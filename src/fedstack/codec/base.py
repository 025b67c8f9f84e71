"""The Codec protocol, the identity codec, and the pipeline that chains codecs into bytes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..errors import ConfigError


@dataclass(frozen=True)
class CodecContext:
    """Who is encoding what: lets a codec derive seeds or keep per-client state."""

    round: int
    client_id: int
    seed: int


class Codec(Protocol):
    """One transform of an update with paired hooks: `encode` on the client, `decode` on the server.

    A value is a float32 vector or bytes; the pipeline serialises a final vector as raw
    float32. `linear` says whether the sum of encodings decodes to the sum of values
    (needed by secure aggregation); `unbiased` whether decode(encode(v)) equals v in expectation.
    A toy that halves an update and doubles it back::

        class Halve:
            name, linear, unbiased = "halve", True, True
            def encode(self, value, ctx): return value / 2
            def decode(self, value, ctx): return value * 2
    """

    name: str
    linear: bool
    unbiased: bool

    def encode(self, value: Any, ctx: CodecContext) -> Any: ...

    def decode(self, value: Any, ctx: CodecContext) -> Any: ...


class Identity:
    """Sends the update unchanged."""

    name, linear, unbiased = "identity", True, True

    def encode(self, value, ctx):
        return value

    def decode(self, value, ctx):
        return value


CODECS = {"identity": Identity}


class Pipeline:
    """Codecs applied in order on the client and in reverse order on the server.

    The wire form is always bytes, so what is counted is what would be sent.
    """

    def __init__(self, stages: list[Codec] | None = None):
        self.stages = list(stages or [])

    @property
    def linear(self) -> bool:
        return all(s.linear for s in self.stages)

    def encode(self, update: np.ndarray, ctx: CodecContext) -> bytes:
        """Client side: update vector → payload bytes."""
        value: Any = update
        for stage in self.stages:
            value = stage.encode(value, ctx)
        if isinstance(value, np.ndarray):
            value = np.ascontiguousarray(value, dtype=np.float32).tobytes()
        return value

    def decode(self, payload: bytes, ctx: CodecContext) -> np.ndarray:
        """Server side: payload bytes → update vector."""
        value: Any = payload
        if not self.stages or not self._emits_bytes():
            value = np.frombuffer(payload, dtype=np.float32)
        for stage in reversed(self.stages):
            value = stage.decode(value, ctx)
        return value

    def _emits_bytes(self) -> bool:
        return bool(getattr(self.stages[-1], "emits_bytes", False))


def build_pipeline(names: list[str]) -> Pipeline:
    """A pipeline from codec names (the `codec.pipeline` config key)."""
    stages = []
    for name in names:
        if name not in CODECS:
            raise ConfigError("codec.pipeline", f"unknown codec {name!r} (valid: {', '.join(CODECS)})")
        stages.append(CODECS[name]())
    return Pipeline(stages)
