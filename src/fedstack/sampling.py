"""Who takes part in a round (`server.sampler`), and how many are asked (`server.overselect`).

A sampler offers `sample(round, k, attempt=0) -> sorted client ids` (at most `k`, distinct). One
that looks at the simulated clock declares `clocked = True` and also takes `now` (seconds); the
server then passes the time at which the attempt starts. Draws come from the "sampling" stream of
the run seed keyed by (round, attempt), so a resumed run or another engine draws the same clients.

- `uniform` (`UniformSampler`, default): `k` clients uniformly among all. Unbiased: every client's
  data is equally likely to be seen; but it asks devices that are offline (they fail as
  "unavailable") and waits for slow ones.
- `available` (`AvailableSampler`): `k` clients uniformly among those online at the attempt's start
  (all of them when fewer are). No round is wasted on offline devices, at the price of a bias
  toward the clients that are online when the server happens to run rounds (in a diurnal fleet,
  toward time zones); if what a device is online for correlates with its data, so does the model.
- `oort` (later, Lai et al. 2021): utility-based selection — statistical utility (recent loss)
  × system utility (speed), with exploration and a staleness bonus — trading more bias toward fast,
  high-loss clients for shorter rounds. It goes in `SAMPLERS`; it will also need the round's
  outcomes (an `observe` hook) to learn utilities.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from .seeding import rng

log = logging.getLogger("fedstack.sampling")


def overselected(k: int, overselect: float) -> int:
    """⌈(1 + overselect) · k⌉: how many clients to ask so that `k` can be aggregated.

    A hair of tolerance keeps products like 1.3 · 10 = 13.000000000000002 at 13.
    """
    return max(k, math.ceil((1.0 + overselect) * k - 1e-9))


def _draw(seed: int, round: int, attempt: int, population, k: int) -> list[int]:
    keys = (round, attempt) if attempt else (round,)
    chosen = rng(seed, "sampling", *keys).choice(population, size=k, replace=False)
    return sorted(int(c) for c in chosen)


class UniformSampler:
    """Each round, `k` distinct clients drawn uniformly at random from the run seed."""

    def __init__(self, num_clients: int, seed: int = 0):
        self.num_clients = num_clients
        self.seed = seed

    def sample(self, round: int, k: int, attempt: int = 0) -> list[int]:
        """Sorted ids of the `k` clients of `round` (a retried round draws again, from `attempt`)."""
        if not 0 < k <= self.num_clients:
            raise ValueError(f"cannot sample {k} of {self.num_clients} clients")
        return _draw(self.seed, round, attempt, self.num_clients, k)


class AvailableSampler:
    """`k` clients drawn uniformly among those of `system` online at time `now`; all of them if fewer.

    With every client online it draws exactly what UniformSampler draws.
    """

    clocked = True

    def __init__(self, num_clients: int, system, seed: int = 0):
        self.num_clients = num_clients
        self.system = system
        self.seed = seed

    def sample(self, round: int, k: int, attempt: int = 0, now: float = 0.0) -> list[int]:
        if k <= 0:
            raise ValueError(f"cannot sample {k} clients")
        online = self.system.online_ids(now, self.num_clients)
        if len(online) <= k:
            if len(online) < k:
                log.info("round %d: %d client%s online at t=%.0f s, fewer than the %d wanted: taking %s",
                         round, len(online), "" if len(online) == 1 else "s", now, k,
                         "all of them" if online else "none")
            return list(online)
        return _draw(self.seed, round, attempt, np.asarray(online, dtype=np.int64), k)


# server.sampler names → how to build one from (num_clients, system, seed). "oort" goes here.
SAMPLERS = {
    "uniform": lambda num_clients, system, seed: UniformSampler(num_clients, seed),
    "available": lambda num_clients, system, seed: AvailableSampler(num_clients, system, seed),
}


def build_sampler(name: str, num_clients: int, system, seed: int = 0):
    """The sampler `server.sampler` names, over `num_clients` clients of the fleet `system`."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r} ({' | '.join(SAMPLERS)})")
    return SAMPLERS[name](num_clients, system, seed)
