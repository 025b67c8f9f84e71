"""Client-level differential privacy's server half: DP-FedAvg's noise on the sum, adaptive clipping, accounting."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable

import numpy as np

from ..seeding import rng, stable_hash
from ..strategy.base import ClientUpdate, Task
from ..transform import Transform
from .accounting import Accountant, clip_update, noisy_fraction, update_noise_multiplier

# A decoded update whose norm is below C·(1 − this) was not clipped: clip lands just inside C, and
# float32 transport moves a norm by ~1e-7 relative.
_CLIPPED_TOLERANCE = 1e-6


@dataclass(frozen=True)
class AdaptiveClipping:
    """Adaptive clipping (Andrew et al. 2021): C follows the `target_quantile` of the update norms (0: a
    fixed C), moved geometrically by `lr`, from a count of unclipped updates noised with std `count_stddev`
    (0: clients_per_round / 20, the paper's suggestion)."""

    target_quantile: float = 0.0
    lr: float = 0.2
    count_stddev: float = 0.0


class CentralDP(Transform):
    """DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private Recurrent Language Models"), the
    server half of one DP transform whose client half is the codec stages `clip` (and `gaussian` for
    local and distributed noise, `fedstack.dp.stages`): every client's update is clipped to L2 norm C
    (`configure` sends the round's C in `FitConfig.clip_norm`); the server sums the clipped updates with
    weight 1, adds Gaussian noise of std z·C to the sum (`mode` "central"; "local" and "distributed":
    the clients have added it), divides by the expected number of clients — a fixed denominator, so one
    client's presence moves the result by at most C / expected — and hands that one averaged update to
    the strategy, the server optimizer (FedAvg, FedAvgM, FedAdam, ...).

    With `target_quantile` > 0, C follows that quantile of the update norms (Andrew et al. 2021,
    "Differentially Private Learning with Adaptive Clipping"): the server counts the updates that
    were not clipped, adds noise of std `clip_count_stddev` to the count, and moves C geometrically
    by `clip_lr`; the update noise shrinks to z_Δ so that both releases together cost z.

    The accountant (`fedstack.dp.accounting.Accountant`) composes one subsampled Gaussian of z per round
    that counts; `epsilon()` is what the run has spent at `delta`, `epsilon_after(1)` what one
    more round would make it. With `seeded_noise=False` (a deployed server) the server's noise, and
    adaptive clipping's count noise, come from the operating system. In "local" mode no sampling
    amplifies privacy (the server sees each noised update and knows who sent it), so ε is that of the
    most frequent participant's releases.
    """

    stateful = True  # the clip norm, the accountant's ledger

    def __init__(self, *, clip_norm: float, noise_multiplier: float, mode: str = "central",
                 clients_per_round: int, population: int, seed: int = 0, delta: float = 1e-5,
                 accountant: str = "rdp", sampling: str = "fixed", adaptive: AdaptiveClipping | None = None,
                 seeded_noise: bool = True):
        adaptive = adaptive or AdaptiveClipping()
        target_quantile, clip_lr, clip_count_stddev = adaptive.target_quantile, adaptive.lr, adaptive.count_stddev
        # Simulation draws the noise from the run seed (reproducible); a deployed server from the operating
        # system, since whoever knew the seed could subtract the noise and read a client's clipped update.
        self.seeded_noise = seeded_noise
        self.clip_norm = float(clip_norm)
        self.noise_multiplier = float(noise_multiplier)
        self.mode = mode
        self.clients_per_round = clients_per_round
        self.population = population
        self.seed = seed
        self.target_quantile = target_quantile
        self.clip_lr = clip_lr
        self.clip_count_stddev = clip_count_stddev or clients_per_round / 20  # the paper's suggestion
        self.update_noise = self.noise_multiplier
        if target_quantile:
            self.update_noise = update_noise_multiplier(self.noise_multiplier, self.clip_count_stddev)
        if mode == "local":
            self.accountant = Accountant(accountant, "poisson", delta=delta)
            self.participations = np.zeros(population, dtype=np.int64)
        else:
            self.accountant = Accountant(accountant, sampling, delta=delta, population=population)
            self.participations = None

    def configure(self, task: Task) -> Task:
        """The task, told this round's clip norm."""
        return replace(task, config=replace(task.config, clip_norm=self.clip_norm))

    def server_step(self, round: int, params: np.ndarray, updates: Iterable[ClientUpdate]) -> list[ClientUpdate]:
        """[(Σ clipped updates + noise) / expected clients] as one update of weight 1 (none if no update
        came); then account, and move the clip norm (adaptive clipping)."""
        total = None  # the updates' size: the shared part's, where personalised training keeps the rest
        ids, unclipped = [], 0
        for u in updates:
            members = u.members or (u.client_id,)  # a secure sum stands for several clients
            if total is None:
                total = np.zeros(u.update.size, dtype=np.float64)
            total += u.update.astype(np.float64) * len(members)
            ids.extend(members)
            if self.target_quantile:  # adaptive clipping counts the updates left unclipped
                # A plain sum of squares: np.linalg.norm goes through BLAS, whose threads fight the workers.
                norm = float(np.sqrt(np.square(u.update, dtype=np.float64).sum()))
                unclipped += norm < self.clip_norm * (1 - _CLIPPED_TOLERANCE)
        if not ids:
            return []
        noise = rng(self.seed, "noise", stable_hash("server"), round) if self.seeded_noise \
            else np.random.default_rng()  # fresh entropy from the operating system
        if self.mode == "central":
            total += noise.normal(0.0, self.update_noise * self.clip_norm, total.shape)
        # Local noise is on every update already: a plain mean. Central and distributed: fixed denominator.
        denominator = len(ids) if self.mode == "local" else self.clients_per_round
        mean = (total / denominator).astype(np.float32)
        self._account(ids)
        if self.target_quantile:
            below = noisy_fraction(np.r_[np.ones(unclipped), np.zeros(len(ids) - unclipped)],
                                   self.clip_count_stddev, noise, self.clients_per_round)
            self.clip_norm = clip_update(self.clip_norm, below, self.target_quantile, self.clip_lr)
        return [ClientUpdate(-1, mean, 1)]

    def _account(self, ids: list[int]) -> None:
        if self.participations is None:
            self.accountant.step(self.noise_multiplier, clients_per_round=self.clients_per_round)
            return
        before = self.participations.max()
        self.participations[ids] += 1
        for _ in range(int(self.participations.max() - before)):
            self.accountant.step(self.noise_multiplier, 1.0)  # one more unamplified release by the busiest client

    def epsilon(self) -> float:
        """ε spent so far, at the configured δ."""
        return self.accountant.epsilon()

    def epsilon_after(self, rounds: int = 1) -> float:
        """What ε would be after `rounds` more rounds (a run stops before it would exceed its budget)."""
        if self.participations is not None:  # worst case: the busiest client takes part every time
            return self.accountant.epsilon_after(rounds, self.noise_multiplier, 1.0)
        return self.accountant.epsilon_after(rounds, self.noise_multiplier, clients_per_round=self.clients_per_round)

    def state(self) -> dict[str, np.ndarray]:
        """The clip norm and the accountant's ledger (checkpointed with the strategy's state)."""
        state = {"clip_norm": np.array(self.clip_norm)}
        state.update({f"accountant.{k}": v for k, v in self.accountant.state().items()})
        if self.participations is not None:
            state["participations"] = self.participations.copy()
        return state

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        if not state:
            return
        self.clip_norm = float(state["clip_norm"])
        self.accountant.load_state({k[len("accountant."):]: v for k, v in state.items() if k.startswith("accountant.")})
        if self.participations is not None:
            self.participations = np.array(state["participations"], dtype=np.int64)
