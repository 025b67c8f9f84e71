"""The codec registry: every stage by its config name, built from `CodecOptions` (the `codec.*` and
`[privacy]` keys); `build_pipeline` turns the names of `codec.pipeline` into a checked Pipeline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..errors import ConfigError
from .base import Codec, Identity, Pipeline


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
    from ..dp.stages import Clip, Gaussian
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
