"""Fixed-point encoding of float vectors as integers mod 2**bits, where masks add and cancel exactly.

A value x is clipped to [−clip, clip], scaled by 2**frac_bits, rounded to the nearest integer and stored
mod 2**bits (two's complement). Sums then wrap mod 2**bits, and `decode_sum` reads them back as signed.

Overflow bound: a sum of n encodings decodes correctly iff it stays in [−2**(bits−1), 2**(bits−1)), which is
guaranteed iff n · M < 2**(bits−1) with M = round(clip · 2**frac_bits), the largest encoded magnitude, i.e.
n · clip · 2**frac_bits < 2**(bits−1) up to that rounding (`max_summands`).

Rounding error: each value moves by at most 2**−(frac_bits+1), so a decoded sum of n encodings is within
n · 2**−(frac_bits+1) of the sum of the clipped values, per coordinate. Clipping itself is not an error
of the encoding: values beyond ±clip are summed as ±clip.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .crypto import mask_dtype

MIN_BITS, MAX_BITS = 16, 62  # 62: every sum mod 2**bits fits an int64 with room for the sign


@dataclass(frozen=True)
class FixedPoint:
    """The encoding of floats as integers mod 2**bits: `encode` one vector, `decode_sum` a sum of encodings."""

    bits: int = 32
    frac_bits: int = 16
    clip: float = 1.0

    def __post_init__(self):
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not MIN_BITS <= self.bits <= MAX_BITS:
            raise ValueError(f"bits must be an integer in {MIN_BITS}..{MAX_BITS}, got {self.bits!r}")
        if isinstance(self.frac_bits, bool) or not isinstance(self.frac_bits, int) or self.frac_bits < 0:
            raise ValueError(f"frac_bits must be an integer >= 0, got {self.frac_bits!r}")
        if not isinstance(self.clip, (int, float)) or not np.isfinite(self.clip) or self.clip <= 0:
            raise ValueError(f"clip must be a finite number > 0, got {self.clip!r}")
        if not 1 <= self.max_magnitude <= 2**53:
            # Below 1 everything encodes to 0; above 2**53 float64 can no longer round to the nearest integer.
            raise ValueError(f"clip · 2**frac_bits = {self.clip * 2.0**self.frac_bits:g} must be in [1, 2**53]")
        if self.max_summands < 1:
            raise ValueError(f"clip · 2**frac_bits = {self.max_magnitude} does not fit in {self.bits} signed bits")

    @property
    def dtype(self) -> np.dtype:
        """uint32 for bits ≤ 32, uint64 above."""
        return mask_dtype(self.bits)

    @property
    def max_magnitude(self) -> int:
        """M = round(clip · 2**frac_bits): the largest |encoded value| before reduction mod 2**bits."""
        return int(np.rint(self.clip * 2.0**self.frac_bits))

    @property
    def max_summands(self) -> int:
        """The largest n such that a sum of n encodings cannot overflow: n · M < 2**(bits−1)."""
        return (2 ** (self.bits - 1) - 1) // self.max_magnitude

    def check_summands(self, n: int) -> None:
        """ValueError, naming the bound, if a sum of n encodings could overflow."""
        if n > self.max_summands:
            raise ValueError(
                f"a sum of n={n} values could overflow: need n · clip · 2**frac_bits < 2**(bits−1), "
                f"i.e. n <= {self.max_summands} for bits={self.bits}, frac_bits={self.frac_bits}, clip={self.clip}"
                " (raise bits, or lower frac_bits or clip)"
            )

    def encode(self, x) -> np.ndarray:
        """The flat vector x as integers mod 2**bits; ValueError if it holds a NaN or an infinity."""
        v = np.asarray(x, dtype=np.float64).ravel()
        if not np.all(np.isfinite(v)):
            raise ValueError("cannot encode a vector holding NaN or infinity")
        q = np.rint(np.clip(v, -self.clip, self.clip) * 2.0**self.frac_bits).astype(np.int64)
        # In two's complement, & (2**bits − 1) is the reduction mod 2**bits, negative values included.
        return (q & ((1 << self.bits) - 1)).astype(self.dtype)

    def decode_sum(self, y) -> np.ndarray:
        """The float64 vector a sum of encodings (mod 2**bits) stands for, reading it as signed."""
        q = (np.asarray(y).astype(np.int64)) & ((1 << self.bits) - 1)
        q[q >= 2 ** (self.bits - 1)] -= 2**self.bits
        return q.astype(np.float64) / 2.0**self.frac_bits
