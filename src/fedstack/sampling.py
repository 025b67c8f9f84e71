"""Who takes part in a round."""

from __future__ import annotations

from .seeding import rng


class UniformSampler:
    """Each round, `k` distinct clients drawn uniformly at random from the run seed."""

    def __init__(self, num_clients: int, seed: int = 0):
        self.num_clients = num_clients
        self.seed = seed

    def sample(self, round: int, k: int, attempt: int = 0) -> list[int]:
        """Sorted ids of the `k` clients of `round` (a retried round draws again, from `attempt`)."""
        if not 0 < k <= self.num_clients:
            raise ValueError(f"cannot sample {k} of {self.num_clients} clients")
        keys = (round, attempt) if attempt else (round,)
        chosen = rng(self.seed, "sampling", *keys).choice(self.num_clients, size=k, replace=False)
        return sorted(int(c) for c in chosen)
