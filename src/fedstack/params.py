"""Model parameters as one flat float32 vector plus the spec to rebuild named tensors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ParamSpec:
    """Names and shapes of the tensors that a flat parameter vector holds, in order."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(int(np.prod(s, dtype=np.int64)) for s in self.shapes)

    @property
    def size(self) -> int:
        """Length of the flat vector."""
        return sum(self.sizes)

    def offsets(self) -> list[tuple[int, int]]:
        """(start, stop) of each tensor in the flat vector."""
        bounds, start = [], 0
        for n in self.sizes:
            bounds.append((start, start + n))
            start += n
        return bounds


def flatten(arrays: list[np.ndarray]) -> np.ndarray:
    """Concatenate tensors into one contiguous float32 vector."""
    if not arrays:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate([np.asarray(a, dtype=np.float32).ravel() for a in arrays])


def unflatten(vector: np.ndarray, spec: ParamSpec) -> list[np.ndarray]:
    """Split a flat vector into views shaped as the spec says."""
    if vector.shape != (spec.size,):
        raise ValueError(f"parameter vector has shape {vector.shape}, spec expects ({spec.size},)")
    return [vector[a:b].reshape(shape) for (a, b), shape in zip(spec.offsets(), spec.shapes)]


def spec_of(named_shapes: list[tuple[str, tuple[int, ...]]]) -> ParamSpec:
    """A ParamSpec from (name, shape) pairs."""
    return ParamSpec(tuple(n for n, _ in named_shapes), tuple(tuple(s) for _, s in named_shapes))
