"""Simulated Byzantine clients: who is malicious, and how each attack poisons their data or updates.

Attacks are simulation-only and invisible to the strategy. `Server` (and `AsyncServer`) asks the
`Attack` to mark the malicious clients' tasks (data attacks: they train on flipped labels) and, once
a round's updates are decoded, to replace the malicious clients' updates before validation and
aggregation see them (update attacks). A malicious client always trains honestly first: its honest
update is what the colluding attacks build on.

- `sign_flip`: −s·Δ, the update reversed and boosted by s = `attack.scale` (default 4, the
  sign-flipping attack of Li et al. 2019, "RSA: Byzantine-Robust Stochastic Aggregation Methods for
  Distributed Learning from Heterogeneous Datasets", AAAI);
- `gaussian`: a random update N(0, σ²I), σ = `attack.scale` (default 1; Blanchard et al. 2017's
  Gaussian Byzantine workers), drawn from the run seed by (round, client);
- `scale`: model replacement (Bagdasaryan et al. 2020, "How To Backdoor Federated Learning",
  AISTATS): the client trains on flipped labels (its poisoned model X) and sends γ·(X − G), boosted by
  γ = `attack.scale` (default: clients per round, which under FedAvg replaces the global model by X);
- `label_flip`: the client trains on labels y → C − 1 − y (a fixed permutation of the C classes;
  ignored targets, −1, stay ignored) and sends that update unchanged;
- `alie`: "A Little Is Enough" (Baruch, Baruch & Goldberg 2019, NeurIPS): every malicious client sends
  μ − z·σ, the coordinate-wise mean and standard deviation of the honest updates it sees, with
  z = `attack.z` or, by default, z_max = Φ⁻¹((n − s)/n), s = ⌊n/2 + 1⌋ − f, for the round's n clients
  and f malicious ones;
- `ipm`: inner-product manipulation (Xie, Koyejo & Gupta 2020, "Fall of Empires: Breaking
  Byzantine-tolerant SGD by Inner Product Manipulation", UAI 2019 / PMLR 115): −ε·μ, ε = `attack.epsilon`.

What the colluding attacks (alie, ipm) see: with `collude` (default) the round's malicious clients
pool their own honest updates (Baruch et al.'s attackers estimate μ and σ from their own data);
without it each sees only its own (alie then sends its honest update: σ = 0); with `omniscient`, every
update of the round (honest clients' and their own; Xie et al.'s setting).

The malicious clients are `attack.ids`, or a `attack.fraction` of all clients (at least one) drawn
with the run seed (stream "attack"), fixed for the whole run; a round has as many as were sampled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from statistics import NormalDist

import numpy as np

from .client import flip_labels, flipped  # noqa: F401  (the label-flipping attack's data side)
from .seeding import rng
from .strategy.base import ClientUpdate, Task

ATTACKS = ("sign_flip", "gaussian", "scale", "label_flip", "alie", "ipm")
UPDATE_ATTACKS = ("sign_flip", "gaussian", "scale", "alie", "ipm")  # replace the decoded update
DATA_ATTACKS = ("label_flip", "scale")  # the client trains on flipped labels
COLLUDING = ("alie", "ipm")  # need the round's honest updates


def malicious_ids(num_clients: int, seed: int, fraction: float = 0.0, ids=()) -> np.ndarray:
    """The malicious clients: `ids`, or ⌊fraction·num_clients⌉ (at least one) drawn with the run seed."""
    if len(ids):
        return np.unique(np.asarray(ids, dtype=np.int64))
    if fraction <= 0:
        return np.zeros(0, dtype=np.int64)
    k = min(num_clients, max(1, round(fraction * num_clients)))
    return np.sort(rng(seed, "attack").choice(num_clients, size=k, replace=False)).astype(np.int64)


def sign_flip(update: np.ndarray, scale: float) -> np.ndarray:
    """−scale · update."""
    return (-np.float32(scale) * update).astype(np.float32)


def gaussian(size: int, sigma: float, generator: np.random.Generator) -> np.ndarray:
    """A random update N(0, σ²I)."""
    return generator.normal(0.0, sigma, size).astype(np.float32)


def boost(update: np.ndarray, gamma: float) -> np.ndarray:
    """γ · update (model replacement's boosting)."""
    return (np.float32(gamma) * update).astype(np.float32)


def alie_z(n: int, f: int) -> float:
    """Baruch et al.'s z_max for n clients of which f are malicious: Φ⁻¹((n − s)/n), s = ⌊n/2 + 1⌋ − f
    (how many honest clients the attackers need on their side for a majority)."""
    s = math.floor(n / 2 + 1) - f
    p = (n - s) / n
    if not 0 < p < 1:
        return 0.0
    return NormalDist().inv_cdf(p)


def alie(seen: np.ndarray, z: float) -> np.ndarray:
    """μ − z·σ of the rows of `seen` (coordinate-wise, population standard deviation)."""
    mean = seen.mean(axis=0, dtype=np.float64)
    std = seen.std(axis=0, dtype=np.float64)
    return (mean - z * std).astype(np.float32)


def ipm(seen: np.ndarray, epsilon: float) -> np.ndarray:
    """−ε · the mean of the rows of `seen`."""
    return (-epsilon * seen.mean(axis=0, dtype=np.float64)).astype(np.float32)


@dataclass
class Attack:
    """One run's attack: `name` (ATTACKS), the malicious client ids and the attack's parameters."""

    name: str
    malicious: frozenset[int]
    num_classes: int
    seed: int = 0
    scale: float = 0.0  # 0: the attack's default (sign_flip 4, gaussian 1, scale clients_per_round)
    clients_per_round: int = 10
    collude: bool = True
    omniscient: bool = False
    z: float = 0.0
    epsilon: float = 0.1

    def __post_init__(self):
        if self.name not in ATTACKS:
            raise ValueError(f"unknown attack {self.name!r} ({' | '.join(ATTACKS)})")
        self.malicious = frozenset(int(i) for i in self.malicious)

    @property
    def tampers(self) -> bool:
        """Whether it replaces updates (then the loop hands it each round's decoded updates)."""
        return self.name in UPDATE_ATTACKS

    @property
    def colludes(self) -> bool:
        """Whether a malicious update depends on other updates of the round."""
        return self.name in COLLUDING

    def strength(self) -> float:
        """The scale in use: `scale`, or the attack's default."""
        if self.scale > 0:
            return self.scale
        return {"sign_flip": 4.0, "gaussian": 1.0, "scale": float(self.clients_per_round)}.get(self.name, 0.0)

    def task(self, task: Task) -> Task:
        """A malicious client's task under a data attack trains on flipped labels; others are unchanged."""
        if self.name in DATA_ATTACKS and task.client_id in self.malicious:
            return replace(task, config=replace(task.config, flip_labels=self.num_classes))
        return task

    def tamper(self, round: int, updates: list[ClientUpdate]) -> list[ClientUpdate]:
        """The round's decoded updates, in order, the malicious clients' replaced by what they send."""
        bad = [i for i, u in enumerate(updates) if u.client_id in self.malicious]
        if not bad or not self.tampers:
            return updates
        out = list(updates)
        if self.colludes:
            crafted = self._colluding(updates, bad)
            for i in bad:
                out[i] = replace(updates[i], update=crafted[i])
            return out
        for i in bad:
            u = updates[i]
            if self.name == "sign_flip":
                vector = sign_flip(u.update, self.strength())
            elif self.name == "gaussian":
                vector = gaussian(u.update.size, self.strength(), rng(self.seed, "attack", round, u.client_id))
            else:
                vector = boost(u.update, self.strength())
            out[i] = replace(u, update=vector)
        return out

    def _colluding(self, updates: list[ClientUpdate], bad: list[int]) -> dict[int, np.ndarray]:
        """ALIE's or IPM's vector for each malicious position, from the honest updates it sees."""
        n, f = len(updates), len(bad)
        z = self.z if self.z > 0 else alie_z(n, f)

        def craft(seen_idx: list[int]) -> np.ndarray:
            seen = np.stack([updates[i].update for i in seen_idx])
            return alie(seen, z) if self.name == "alie" else ipm(seen, self.epsilon)

        if self.omniscient or self.collude:
            shared = craft(list(range(n)) if self.omniscient else bad)
            return {i: shared for i in bad}
        return {i: craft([i]) for i in bad}


def build_attack(section, num_clients: int, num_classes: int, seed: int, clients_per_round: int) -> Attack | None:
    """The `[attack]` config section as an Attack (None when `attack.name` is empty)."""
    if not section.name:
        return None
    ids = malicious_ids(num_clients, seed, section.fraction, section.ids)
    return Attack(section.name, frozenset(ids.tolist()), num_classes, seed, scale=section.scale,
                  clients_per_round=clients_per_round, collude=section.collude, omniscient=section.omniscient,
                  z=section.z, epsilon=section.epsilon)
