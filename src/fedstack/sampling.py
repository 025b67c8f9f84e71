"""Who takes part in a round."""

from __future__ import annotations

from .seeding import rng


class UniformSampler:
    """Each round, `k` distinct clients drawn uniformly at random from the run seed."""

    def __init__(self, num_clients: int, seed: int = 0):
        self.num_clients = num_clients
        self.seed = seed

    def sample(self, round: int, k: int) -> list[int]:
        """Sorted ids of the `k` clients of `round`."""
        if not 0 < k <= self.num_clients:
            raise ValueError(f"cannot sample {k} of {self.num_clients} clients")
        chosen = rng(self.seed, "sampling", round).choice(self.num_clients, size=k, replace=False)
        return sorted(int(c) for c in chosen)
