"""Who takes part in a round (`server.sampler`), and how many are asked (`server.overselect`).

A sampler subclasses `Sampler`: `sample(round, k, attempt=0, now=0.0, exclude=()) -> sorted client
ids` (at most `k`, distinct, none of those in `exclude`: an asynchronous server passes the clients still
training; `now`: the simulated time at which the attempt starts, for samplers that look at the fleet's
clock), and the hooks it declares with no-op defaults: `observe` (a sampler that learns from outcomes),
`state` / `load_state` with the trait `stateful` (what a checkpoint keeps). Draws come from the "sampling" stream
of the run seed keyed by (round, attempt), so a resumed run or another engine draws the same clients.

- `uniform` (`UniformSampler`, default): `k` clients uniformly among all. Unbiased: every client's
  data is equally likely to be seen; but it asks devices that are offline (they fail as
  "unavailable") and waits for slow ones.
- `available` (`AvailableSampler`): `k` clients uniformly among those online at the attempt's start
  (all of them when fewer are). No round is wasted on offline devices, at the price of a bias
  toward the clients that are online when the server happens to run rounds (in a diurnal fleet,
  toward time zones); if what a device is online for correlates with its data, so does the model.
- `poisson` (`PoissonSampler`): each client independently with probability k / N, the sampling
  under which differential privacy's accountant amplifies privacy (`privacy.py`); the number of
  clients per round varies.
- `oort` (`OortSampler`; Lai et al. 2021, "Oort: Efficient Federated Learning via Guided
  Participant Selection", OSDI'21): among the online clients, mostly those with much to teach
  (statistical utility: examples × training loss) that finish soon (clients slower than a
  preferred duration are penalised); a decaying fraction of the slots explores clients never
  heard from. Rounds get shorter and the loss falls faster, at the price of a bias toward fast,
  high-loss clients, softened by the exploration and by a bonus for clients not seen for a while.
  It learns from `observe(...)`, which the server calls for every result that reaches it, and
  keeps what it learnt in `state()` for resuming. Simpler than the paper: the statistical utility
  uses the mean loss a client reports (the paper: the root mean square of its per-example losses);
  the preferred duration is a fixed quantile of the durations seen (the paper's pacer relaxes it
  when utility stalls); unexplored clients are drawn uniformly (the paper prefers the faster ones);
  no clipping of outlier utilities and no blacklist of clients picked too often.

Cost of a draw with many registered clients (N): `uniform`, and `available` while every client is
online, draw k clients in O(k + excluded) time and memory (Floyd's algorithm over positions; no
array of N ids); `available` over a fleet with offline devices, `oort` and `poisson` look at every
client once per draw (vectorised NumPy, O(N): about milliseconds at N = 10⁶).
"""

from __future__ import annotations

import logging
import math

import numpy as np

from .config import overselected  # noqa: F401  (defined with the config keys it reads)
from .seeding import rng

log = logging.getLogger("fedstack.sampling")


def _stream(seed: int, round: int, attempt: int) -> np.random.Generator:
    """The generator of one sampling call; attempt 0 is keyed by the round alone, as it always was."""
    return rng(seed, "sampling", *((round, attempt) if attempt else (round,)))


class _Ids:
    """The ascending ids 0..n-1 but those in `exclude`, without an array of n ids (a draw costs O(k))."""

    def __init__(self, n: int, exclude=()):
        excluded = np.unique(np.fromiter(exclude, dtype=np.int64))
        self.n = n
        self.excluded = excluded[(excluded >= 0) & (excluded < n)]
        # Before the j-th excluded id come excluded[j] - j kept ids: where to skip ahead when indexing.
        self._kept_before = self.excluded - np.arange(len(self.excluded))

    def __len__(self) -> int:
        return self.n - len(self.excluded)

    def take(self, positions: np.ndarray) -> np.ndarray:
        """The ids at these positions of the ascending sequence."""
        positions = np.asarray(positions, dtype=np.int64)
        return positions + np.searchsorted(self._kept_before, positions, side="right")

    def array(self) -> np.ndarray:
        return np.setdiff1d(np.arange(self.n, dtype=np.int64), self.excluded)

    def tolist(self) -> list[int]:
        return self.array().tolist()


def _draw(seed: int, round: int, attempt: int, population, k: int) -> list[int]:
    """Sorted ids of `k` distinct members of `population` (an ascending array of ids, or _Ids).

    Drawing positions from len(population) is the draw numpy's choice over the array itself makes
    (the same positions, the same stream), and for k small against the population it is Floyd's
    O(k) algorithm: no array of the population is needed.
    """
    positions = _stream(seed, round, attempt).choice(len(population), size=k, replace=False)
    chosen = population.take(positions) if isinstance(population, _Ids) else population[positions]
    return sorted(int(c) for c in chosen)


def _without(population: np.ndarray, exclude) -> np.ndarray:
    """The ascending ids of `population` (ascending) that are not in `exclude`."""
    excluded = np.fromiter(exclude, dtype=np.int64)
    return np.setdiff1d(population, excluded) if excluded.size else population


def _online(system, num_clients: int, round: int, k: int, now: float, exclude):
    """Ascending ids of the clients online at `now` and not in `exclude` (an array, or _Ids when every client
    is online); logs when fewer than `k`."""
    if k <= 0:
        raise ValueError(f"cannot sample {k} clients")
    if system.everyone_online(now):
        online_count = num_clients
        candidates = _Ids(num_clients, exclude)
    else:
        online = np.asarray(system.online_ids(now, num_clients), dtype=np.int64)
        online_count = len(online)
        candidates = _without(online, exclude)
    if len(candidates) < k:
        n = len(candidates)
        log.info("round %d: %d client%s online%s at t=%.0f s, fewer than the %d wanted: taking %s",
                 round, n, "" if n == 1 else "s", " and not excluded" if n < online_count else "", now, k,
                 "all of them" if n else "none")
    return candidates


class Sampler:
    """Who takes part in a round. Subclasses implement `sample`; the hooks below are no-ops by default."""

    stateful: bool = False  # whether `state()` holds something a checkpoint must keep

    def sample(self, round: int, k: int, attempt: int = 0, now: float = 0.0, exclude=()) -> list[int]:
        raise NotImplementedError(f"{type(self).__name__} draws no clients")

    def observe(self, round: int, client_id: int, *, num_examples: int = 0, loss: float | None = None,
                duration_s: float | None = None) -> None:
        """A client's outcome: its examples and training loss, and how long its task took (None: it failed)."""

    def state(self) -> dict[str, np.ndarray]:
        return {}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Take back what `state` gave (a resumed run)."""


class UniformSampler(Sampler):
    """Each round, `k` distinct clients drawn uniformly at random from the run seed."""

    def __init__(self, num_clients: int, seed: int = 0):
        self.num_clients = num_clients
        self.seed = seed

    def sample(self, round: int, k: int, attempt: int = 0, now: float = 0.0, exclude=()) -> list[int]:
        """Sorted ids of the `k` clients of `round` (a retried round draws again, from `attempt`), none in `exclude`."""
        population = _Ids(self.num_clients, exclude)
        if not 0 < k <= len(population):
            others = " (the others are excluded)" if len(population) < self.num_clients else ""
            raise ValueError(f"cannot sample {k} of {len(population)} clients{others}")
        return _draw(self.seed, round, attempt, population, k)


class AvailableSampler(Sampler):
    """`k` clients drawn uniformly among those of `system` online at time `now` and not in `exclude`; all if fewer.

    With every client online it draws exactly what UniformSampler draws.
    """

    def __init__(self, num_clients: int, system, seed: int = 0):
        self.num_clients = num_clients
        self.system = system
        self.seed = seed

    def sample(self, round: int, k: int, attempt: int = 0, now: float = 0.0, exclude=()) -> list[int]:
        candidates = _online(self.system, self.num_clients, round, k, now, exclude)
        if len(candidates) <= k:
            return candidates.tolist()
        return _draw(self.seed, round, attempt, candidates, k)


class OortSampler(Sampler):
    """Oort's guided selection: exploit the clients of high utility, explore those never observed.

    Per client (one array each, indexed by client id) it remembers its statistical utility
    (examples × mean training loss of its latest result), its latest task duration (NaN until one
    is seen), the last round it was observed (0: never) and whether it ever was ("explored").
    Before any observation it draws exactly what AvailableSampler draws.
    """

    stateful = True
    STATE = {"utility": np.float64, "duration": np.float64, "last_round": np.int64, "explored": np.bool_}

    def __init__(self, num_clients: int, system, seed: int = 0, *, explore: float = 0.9,
                 explore_decay: float = 0.98, explore_min: float = 0.3, penalty: float = 2.0,
                 cutoff: float = 0.95, preferred_quantile: float = 0.5):
        if not (0 <= explore <= 1 and 0 < explore_decay <= 1 and 0 <= explore_min <= 1 and penalty >= 0
                and 0 < cutoff <= 1 and 0 <= preferred_quantile <= 1):
            raise ValueError("Oort needs explore, explore_min, preferred_quantile in [0, 1], explore_decay and "
                             "cutoff in (0, 1], penalty >= 0")
        self.num_clients, self.system, self.seed = num_clients, system, seed
        self.explore, self.explore_decay, self.explore_min = explore, explore_decay, explore_min
        self.penalty, self.cutoff, self.preferred_quantile = penalty, cutoff, preferred_quantile
        self.utility = np.zeros(num_clients)
        self.duration = np.full(num_clients, np.nan)
        self.last_round = np.zeros(num_clients, dtype=np.int64)
        self.explored = np.zeros(num_clients, dtype=bool)

    def exploration(self, round: int) -> float:
        """ε, the fraction of the slots of `round` kept for unexplored clients: `explore` decaying to `explore_min`."""
        # Never above `explore`, so that explore=0 turns exploration off whatever explore_min is.
        return min(self.explore, max(self.explore_min, self.explore * self.explore_decay ** max(round - 1, 0)))

    def scores(self, ids: np.ndarray, round: int) -> np.ndarray:
        """Oort's exploitation score of the explored clients `ids` in `round` (higher: more wanted)."""
        u = self.utility[ids]
        score = (u - u.min()) / (u.max() - u.min() + 1e-12)
        # Staleness bonus: a client not observed for long may have more to teach than its old loss says.
        score += np.sqrt(0.1 * math.log(max(round, 1)) / np.maximum(self.last_round[ids], 1))
        known = self.duration[~np.isnan(self.duration)]
        if known.size:
            preferred = np.quantile(known, self.preferred_quantile)  # T, the round duration Oort aims at
            t = self.duration[ids]
            slow = t > preferred  # False for NaN: a client of unknown duration is not penalised
            score[slow] *= (preferred / t[slow]) ** self.penalty
        return score

    def sample(self, round: int, k: int, attempt: int = 0, now: float = 0.0, exclude=()) -> list[int]:
        """Sorted ids of at most `k` clients online at `now`, not in `exclude`: ε·k unexplored, the rest by score."""
        candidates = _online(self.system, self.num_clients, round, k, now, exclude)
        if len(candidates) <= k:
            return candidates.tolist()
        if isinstance(candidates, _Ids):
            candidates = candidates.array()  # Oort scores every candidate: O(num_clients) per round anyway
        seen, unseen = candidates[self.explored[candidates]], candidates[~self.explored[candidates]]
        # Whichever side has too few candidates, the other fills the rest of the k slots.
        n_explore = min(len(unseen), max(k - len(seen), math.floor(self.exploration(round) * k + 0.5)))
        n_exploit = k - n_explore
        gen = _stream(self.seed, round, attempt)
        chosen = [gen.choice(unseen, size=n_explore, replace=False)]
        if n_exploit:
            score = self.scores(seen, round)
            # Oort's cut-off: only clients within `cutoff` of the n-th best score stay, and among them
            # the draw is ∝ score, so that near-equals share the rounds instead of the same few winning.
            pool = score >= self.cutoff * np.sort(score)[-n_exploit]
            p = score[pool]
            p = p / p.sum() if np.count_nonzero(p) >= n_exploit else None  # too few positive scores: uniform
            chosen.append(gen.choice(seen[pool], size=n_exploit, replace=False, p=p))
        return sorted(int(c) for c in np.concatenate(chosen))

    def observe(self, round: int, client_id: int, *, num_examples: int = 0, loss: float | None = None,
                duration_s: float | None = None) -> None:
        """Learn from a result of `round` that reached the server: `loss` None (the client failed) keeps the utility.

        `loss` is the client's mean training loss, `duration_s` the simulated seconds its task took
        (for a client past the deadline, at least took).
        """
        if not 0 <= client_id < self.num_clients:
            raise ValueError(f"client {client_id} is not one of the {self.num_clients} clients")
        self.explored[client_id] = True
        self.last_round[client_id] = round
        if loss is not None and math.isfinite(loss):
            # The paper's |B_i|·sqrt(mean of squared per-example losses), with the mean loss we are given.
            self.utility[client_id] = num_examples * loss
        if duration_s is not None:
            self.duration[client_id] = duration_s

    def state(self) -> dict[str, np.ndarray]:
        """A copy of what the sampler has learnt, for a checkpoint (`load_state` resumes from it)."""
        return {name: vars(self)[name].copy() for name in self.STATE}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore what `state()` returned; a ValueError, changing nothing, if it does not fit these clients."""
        arrays = {}
        for name, dtype in self.STATE.items():
            if name not in state:
                raise ValueError(f"Oort state lacks {name!r}")
            arrays[name] = np.array(state[name], dtype=dtype)
            if arrays[name].shape != (self.num_clients,):
                raise ValueError(f"Oort state {name!r} has shape {arrays[name].shape}, not ({self.num_clients},)")
        for name, values in arrays.items():
            setattr(self, name, values)


class PoissonSampler(Sampler):
    """Each client takes part independently with probability k / num_clients (so about k per round).

    The sampling that differential privacy's accounting assumes when it amplifies privacy by
    subsampling (McMahan et al. 2018): how many clients take part is itself random, and a round
    may have none. Excluded clients (still training, in the asynchronous loop) are never drawn.
    """

    def __init__(self, num_clients: int, seed: int = 0):
        self.num_clients = num_clients
        self.seed = seed

    def sample(self, round: int, k: int, attempt: int = 0, now: float = 0.0, exclude=()) -> list[int]:
        if not 0 < k <= self.num_clients:
            raise ValueError(f"cannot sample {k} of {self.num_clients} clients")
        chosen = np.flatnonzero(_stream(self.seed, round, attempt).random(self.num_clients) < k / self.num_clients)
        return _without(chosen, exclude).tolist()


# server.sampler names → how to build one from (num_clients, system, seed).
SAMPLERS = {
    "uniform": lambda num_clients, system, seed: UniformSampler(num_clients, seed),
    "available": lambda num_clients, system, seed: AvailableSampler(num_clients, system, seed),
    "oort": lambda num_clients, system, seed: OortSampler(num_clients, system, seed),
    "poisson": lambda num_clients, system, seed: PoissonSampler(num_clients, seed),
}


def build_sampler(name: str, num_clients: int, system, seed: int = 0):
    """The sampler `server.sampler` names, over `num_clients` clients of the fleet `system`."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r} ({' | '.join(SAMPLERS)})")
    return SAMPLERS[name](num_clients, system, seed)
