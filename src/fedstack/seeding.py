"""Named random streams derived from the run seed, so every random choice is reproducible."""

from __future__ import annotations

import zlib

import numpy as np

# Each stream has its own number so adding a stream never shifts another.
STREAMS = {"split": 0, "partition": 1, "holdout": 2, "sampling": 3, "client": 4, "init": 5, "noise": 6, "systems": 7,
           "codec": 8, "attack": 9, "root": 10, "coded": 11, "contribution": 12}


def seed_sequence(seed: int, stream: str, *keys: int) -> np.random.SeedSequence:
    """The seed sequence of `stream` for the given keys (round, client id, ...)."""
    if stream not in STREAMS:
        raise KeyError(f"unknown random stream {stream!r}")
    return np.random.SeedSequence([int(seed), STREAMS[stream], *map(int, keys)])


def rng(seed: int, stream: str, *keys: int) -> np.random.Generator:
    """A NumPy generator for `stream`, independent of every other stream and key."""
    return np.random.default_rng(seed_sequence(seed, stream, *keys))


def int_seed(seed: int, stream: str, *keys: int) -> int:
    """A 63-bit integer seed for libraries that take one (torch.manual_seed)."""
    return int(seed_sequence(seed, stream, *keys).generate_state(2, np.uint32).view(np.uint64)[0] >> 1)


def stable_hash(text: str) -> int:
    """A process-independent hash of a string (Python's hash() is salted per process)."""
    return zlib.crc32(text.encode())
