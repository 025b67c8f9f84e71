"""The Codec protocol, the identity codec, and the pipeline that chains codecs into bytes."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Protocol

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


class Codec(Protocol):
    """One transform of an update with paired hooks: `encode` on the client, `decode` on the server.

    A value is a float32 vector or bytes; the pipeline serialises a final vector as raw
    float32. `linear` says whether the sum of encodings decodes to the sum of values
    (needed by secure aggregation); `unbiased` whether decode(encode(v)) equals v in expectation;
    `takes_bytes` / `emits_bytes` what kind of value it reads and writes. A `stateful` codec
    (error feedback) has `encode(value, ctx, state) -> (value, new_state)` instead. A stage with
    `needs_linear_input` (secure aggregation) may only follow linear stages.
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

    The wire form is always bytes, so what is counted is what would be sent. Stages that keep
    client state (error feedback: `stateful`) get their residual through `encode_with_state`.
    """

    def __init__(self, stages: list[Codec] | None = None):
        self.stages = list(stages or [])
        for before, after in zip(self.stages, self.stages[1:]):
            if getattr(before, "emits_bytes", False) and not getattr(after, "takes_bytes", False):
                raise ConfigError("codec.pipeline", f"{after.name!r} transforms a vector and cannot follow "
                                  f"{before.name!r}, which emits bytes")
        from .lossless import Zstd

        for i, stage in enumerate(self.stages):
            if isinstance(stage, Zstd):  # it accepts only the frame kind this pipeline produces
                stage.content = "bytes" if i and getattr(self.stages[i - 1], "emits_bytes", False) else "float32"
        for i, stage in enumerate(self.stages):  # e.g. secure aggregation: the server may only see a sum
            nonlinear = [s.name for s in self.stages[:i] if not s.linear]
            if getattr(stage, "needs_linear_input", False) and nonlinear:
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
        return last if getattr(last, "sums", False) else None

    def before_summing(self) -> "Pipeline":
        """The stages a client applies itself, before a summing protocol takes over (all when there is none)."""
        return Pipeline(self.stages[:-1]) if self.summing else self

    @property
    def stateful(self) -> bool:
        """Whether some stage keeps client state across rounds (the error-feedback residual)."""
        return any(getattr(s, "stateful", False) for s in self.stages)

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
            if getattr(stage, "stateful", False):
                key = f"codec{i}.{stage.name}"
                value, new_state[key] = stage.encode(value, ctx, (state or {}).get(key))
            else:
                value = stage.encode(value, ctx)
        if isinstance(value, np.ndarray):
            value = np.ascontiguousarray(value, dtype=np.float32).tobytes()
        return bytes(value), new_state

    def max_payload_bytes(self, size: int) -> int:
        """The most bytes an honest client's payload for a model of `size` values can hold: raw float32
        without codecs, else `quantize.max_encoded_bytes`. A server refuses a longer announcement unread."""
        from .quantize import max_encoded_bytes

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
        if not self.stages or not getattr(self.stages[-1], "emits_bytes", False):
            if len(payload) % 4:
                raise ValueError(f"a raw float32 payload of {len(payload)} bytes is not a whole number of values")
            value = np.frombuffer(payload, dtype=np.float32)
        for stage in reversed(self.stages):
            value = stage.decode(value, ctx)
        # Type-checked, not converted: np.asarray of bytes would build an error message holding them all.
        if not isinstance(value, np.ndarray) or value.ndim != 1:
            raise ValueError(f"the pipeline decoded to {type(value).__name__}, not a flat vector")
        return value.astype(np.float32, copy=False)


@dataclass(frozen=True)
class CodecOptions:
    """The parameters of the codecs (the `codec.*` config keys other than the pipelines)."""

    bits: int = 8
    qsgd_bucket: int = 512
    topk_fraction: float = 0.01
    zstd_level: int = 3
    clip_norm: float = 1.0  # clip, gaussian: privacy.clip_norm
    noise_multiplier: float = 0.0  # gaussian: privacy.noise_multiplier
    noise_mode: str = "local"  # gaussian: privacy.mode (local or distributed)
    noise_clients: int = 1  # gaussian, distributed: how many clients' noise adds up in the sum
    seeded_noise: bool = True  # gaussian: from the run seed (simulation) or the OS (a deployed client)
    secagg_threshold: float = 0.6  # secagg: t as a fraction of each client's share holders
    secagg_plus: bool = False
    secagg_bits: int = 32
    secagg_frac_bits: int = 16
    secagg_range: float = 1.0  # secagg: the bound of every coordinate (clip norm plus room for DP noise)
    ckks_keys: str = ""  # ckks: directory of `fedstack keys`; "" = a fresh key holder for the run


def _registry() -> dict[str, Callable[[Any], Codec]]:
    from .lossless import Zstd
    from .privacy import Clip, Gaussian
    from .ckks import CKKS
    from .secagg import SecAgg
    from .quantize import BF16, FP16, QSGD
    from .sparsify import RandK, Sign, TopK

    return {
        "identity": lambda o: Identity(),
        "fp16": lambda o: FP16(),
        "bf16": lambda o: BF16(),
        "qsgd": lambda o: QSGD(bits=o.bits, bucket=o.qsgd_bucket),
        "topk": lambda o: TopK(fraction=o.topk_fraction),
        "randk": lambda o: RandK(fraction=o.topk_fraction),
        "sign": lambda o: Sign(),
        "zstd": lambda o: Zstd(level=o.zstd_level),
        "clip": lambda o: Clip(o.clip_norm),
        "gaussian": lambda o: Gaussian(o.noise_multiplier, o.clip_norm, o.noise_mode, o.noise_clients,
                                       o.seeded_noise),
        "secagg": lambda o: SecAgg(o.secagg_threshold, o.secagg_plus, o.secagg_bits, o.secagg_frac_bits,
                                   o.secagg_range),
        "ckks": lambda o: CKKS(o.ckks_keys),
    }


CODECS = ("identity", "fp16", "bf16", "qsgd", "topk", "randk", "sign", "zstd", "clip", "gaussian", "secagg", "ckks")


def build_pipeline(names: list[str], options: Any = None, key: str = "codec.pipeline") -> Pipeline:
    """A pipeline from codec names (the `codec.pipeline` config key) and their parameters (`codec.*`)."""
    options = options if options is not None else CodecOptions()
    registry = _registry()
    stages = []
    for name in names:
        if name not in registry:
            raise ConfigError(key, f"unknown codec {name!r} (valid: {', '.join(CODECS)})")
        stages.append(registry[name](options))
    try:
        return Pipeline(stages)
    except ConfigError as exc:
        raise ConfigError(key, exc.message) from None
