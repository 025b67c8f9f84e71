"""Per-client index arrays stored as one CSR pair (offsets into a single index array)."""

from __future__ import annotations

import numbers

import numpy as np


class Partition:
    """Client i's indices are ``indices[offsets[i]:offsets[i + 1]]``: a list of index arrays in two arrays.

    It reads like the ``list[np.ndarray]`` it replaces: ``len(p)`` clients, ``p[i]`` (a read-only
    view, no copy), iteration, equality with a Partition or a list of arrays, pickling (two arrays,
    whatever the number of clients). A million clients cost their indices plus 8 bytes each.
    """

    __slots__ = ("offsets", "indices")

    def __init__(self, offsets, indices):
        offsets = np.asarray(offsets, dtype=np.int64).view()
        indices = np.asarray(indices, dtype=np.int64).view()
        if offsets.ndim != 1 or indices.ndim != 1 or len(offsets) < 1:
            raise ValueError("a partition needs 1-D offsets (at least [0]) and 1-D indices")
        if offsets[0] != 0 or offsets[-1] != len(indices) or (np.diff(offsets) < 0).any():
            raise ValueError(f"offsets must rise from 0 to len(indices) = {len(indices)}, "
                             f"got {offsets[0]}..{offsets[-1]}")
        # Views handed to clients share one array: none may write into another client's indices.
        offsets.flags.writeable = False
        indices.flags.writeable = False
        self.offsets = offsets
        self.indices = indices

    @classmethod
    def from_lists(cls, parts) -> Partition:
        """The partition of a sequence of index arrays (client i holds ``parts[i]``)."""
        if isinstance(parts, Partition):
            return parts
        parts = [np.asarray(p, dtype=np.int64).ravel() for p in parts]
        offsets = np.zeros(len(parts) + 1, dtype=np.int64)
        np.cumsum([len(p) for p in parts], out=offsets[1:])
        return cls(offsets, np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64))

    @classmethod
    def from_sizes(cls, sizes, indices) -> Partition:
        """Client i holds the next ``sizes[i]`` entries of ``indices``."""
        sizes = np.asarray(sizes, dtype=np.int64)
        offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        return cls(offsets, indices)

    def sizes(self) -> np.ndarray:
        """How many indices each client holds (int64, one per client)."""
        return np.diff(self.offsets)

    def segments(self) -> np.ndarray:
        """The client of each entry of ``indices`` (int64, as long as ``indices``)."""
        return np.repeat(np.arange(len(self), dtype=np.int64), self.sizes())

    @property
    def nbytes(self) -> int:
        return self.offsets.nbytes + self.indices.nbytes

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not isinstance(i, numbers.Integral):
            raise TypeError(f"client ids are integers, not {type(i).__name__}")
        n = len(self)
        j = int(i) + n if i < 0 else int(i)
        if not 0 <= j < n:
            raise IndexError(f"client {i} out of range for {n} clients")
        return self.indices[self.offsets[j]:self.offsets[j + 1]]

    def __iter__(self):
        bounds = self.offsets.tolist()
        for a, b in zip(bounds[:-1], bounds[1:]):
            yield self.indices[a:b]

    def __eq__(self, other) -> bool:
        if not isinstance(other, Partition):
            try:
                other = Partition.from_lists(other)
            except (TypeError, ValueError):
                return NotImplemented
        return np.array_equal(self.offsets, other.offsets) and np.array_equal(self.indices, other.indices)

    __hash__ = None  # equal partitions need not be the same object; no hashing of arrays

    def __reduce__(self):
        return Partition, (np.asarray(self.offsets), np.asarray(self.indices))

    def __repr__(self) -> str:
        return f"Partition(clients={len(self)}, indices={len(self.indices)})"
