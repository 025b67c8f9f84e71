"""Byzantine-robust aggregation: the rules as functions on a matrix of updates, and `Robust` around a server step."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from typing import Callable, Iterable

import numpy as np

from ..client import FitConfig
from ..seeding import int_seed
from .base import ClientUpdate, Strategy, Task, restore_strategy_state, strategy_state
from ..config import HONEST_MAJORITY, RULES  # noqa: F401  (the rules' names: the config's vocabulary)

log = logging.getLogger("fedstack.strategy.robust")



def _sq_norms(U: np.ndarray) -> np.ndarray:
    """‖Uᵢ‖² of every row, accumulated in float64 (einsum: no BLAS threads to fight the workers)."""
    return np.einsum("ij,ij->i", U, U, dtype=np.float64)


def sq_norm(v: np.ndarray) -> float:
    """‖v‖² of one vector, accumulated in float64 without BLAS."""
    return float(np.einsum("i,i->", v, v, dtype=np.float64))


def _weighted_rows(U: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
    """Σ cᵢ·Uᵢ in float64, one row at a time (memory: one vector beside U)."""
    total = np.zeros(U.shape[1], dtype=np.float64)
    for row, c in zip(U, coefficients):
        if c:
            total += np.float64(c) * row
    return total


def _clip_factors(norms: np.ndarray, bound: float) -> np.ndarray:
    """min(1, bound / norm) for each norm (1 where the norm is within the bound, zero norms included)."""
    factors = np.ones_like(norms, dtype=np.float64)
    over = norms > bound
    factors[over] = bound / norms[over]
    return factors


def coordinate_median(U: np.ndarray) -> np.ndarray:
    """The coordinate-wise median of the rows of U (Yin et al. 2018, "Byzantine-Robust Distributed
    Learning: Towards Optimal Statistical Rates", ICML): robust while fewer than half are Byzantine."""
    if len(U) == 0:
        raise ValueError("median of no updates")
    return np.median(U, axis=0).astype(np.float32)


def trimmed_mean(U: np.ndarray, beta: float) -> np.ndarray:
    """The coordinate-wise β-trimmed mean (Yin et al. 2018): in each coordinate the ⌊β·n⌋ largest and
    the ⌊β·n⌋ smallest values are dropped and the rest averaged. Needs 0 ≤ β < 0.5."""
    n = len(U)
    if not 0 <= beta < 0.5:
        raise ValueError(f"trimmed mean needs 0 <= beta < 0.5, got {beta}")
    if n == 0:
        raise ValueError("trimmed mean of no updates")
    k = math.floor(beta * n)
    if k == 0:
        return U.mean(axis=0, dtype=np.float64).astype(np.float32)
    # Rows k … n−k−1 of a partition around both cut points hold exactly the kept values (in any order).
    middle = np.partition(U, (k, n - k - 1), axis=0)[k:n - k]
    return middle.mean(axis=0, dtype=np.float64).astype(np.float32)


def pairwise_sq_distances(U: np.ndarray) -> np.ndarray:
    """The n × n matrix of ‖Uᵢ − Uⱼ‖² in float64, a row of differences at a time (memory O(n·d))."""
    n = len(U)
    D = np.zeros((n, n), dtype=np.float64)
    for i in range(n - 1):
        D[i, i + 1:] = _sq_norms(U[i + 1:] - U[i])
        D[i + 1:, i] = D[i, i + 1:]
    return D


def krum_scores(U: np.ndarray, f: int) -> np.ndarray:
    """Krum's score of each row: the sum of its squared distances to its n − f − 2 nearest other rows."""
    n = len(U)
    if n <= 2 * f + 2:
        raise ValueError(f"krum needs n > 2f + 2, got n = {n}, f = {f}")
    D = pairwise_sq_distances(U)
    np.fill_diagonal(D, np.inf)
    nearest = np.sort(D, axis=1)[:, :n - f - 2]
    return nearest.sum(axis=1)


def krum(U: np.ndarray, f: int, m: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(aggregate, indices chosen): Krum and, with m > 1, Multi-Krum (Blanchard et al. 2017, "Machine
    Learning with Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS). The m rows of lowest
    score are averaged (ties go to the earlier row). Tolerates f Byzantine rows among n > 2f + 2."""
    scores = krum_scores(U, f)
    if not 1 <= m <= len(U):
        raise ValueError(f"multi-krum selects 1 <= m <= n = {len(U)} updates, got m = {m}")
    chosen = np.argsort(scores, kind="stable")[:m]
    return U[chosen].mean(axis=0, dtype=np.float64).astype(np.float32), chosen


def norm_bound(U: np.ndarray, weights: np.ndarray, bound: float = 0.0) -> tuple[np.ndarray, float]:
    """(aggregate, bound): every row clipped to L2 norm `bound` (0: the median norm of the rows), then
    the weights' weighted mean (norm bounding, Sun et al. 2019, "Can You Really Backdoor Federated
    Learning?"). No honest-majority guarantee: it only limits how far any one update can pull."""
    norms = np.sqrt(_sq_norms(U))
    if bound <= 0:
        bound = float(np.median(norms))
    scale = _clip_factors(norms, bound)
    weights = np.asarray(weights, dtype=np.float64)
    if weights.sum() <= 0:
        raise ValueError("norm bounding: the weights sum to 0")
    return (_weighted_rows(U, weights * scale) / weights.sum()).astype(np.float32), bound


def centered_clip(U: np.ndarray, center: np.ndarray, tau: float = 0.0, iters: int = 1) -> tuple[np.ndarray, float]:
    """(aggregate, τ of the last iteration): Centered Clipping (Karimireddy, He & Jaggi 2021, "Learning
    from History for Byzantine Robust Optimization", ICML): starting from `center` (the paper: the
    previous round's aggregate), `iters` times v ← v + (1/n)·Σᵢ (Uᵢ − v)·min(1, τ/‖Uᵢ − v‖).
    τ = 0 takes, at each iteration, the median of the distances ‖Uᵢ − v‖ (the paper's τ is in the units
    of its gradients; the median adapts it to any model's update size)."""
    n = len(U)
    if n == 0:
        raise ValueError("centered clipping of no updates")
    v = np.asarray(center, dtype=np.float64).copy()
    used = tau
    for _ in range(iters):
        distances = np.sqrt([sq_norm(row - v) for row in U])
        used = tau if tau > 0 else float(np.median(distances))
        scale = _clip_factors(distances, used)
        step = np.zeros_like(v)
        for row, s in zip(U, scale):
            step += s * (row - v)
        v += step / n
    return v.astype(np.float32), used


def fltrust(U: np.ndarray, root: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(aggregate, trust scores): FLTrust (Cao, Fang, Liu & Gong 2021, "FLTrust: Byzantine-robust
    Federated Learning via Trust Bootstrapping", NDSS). Each update's trust is ReLU(cos(Uᵢ, root)), with
    `root` the server's own update on its small clean root dataset; each update is rescaled to root's
    norm and the trust-weighted mean taken. Zero trust everywhere (or a zero root update): no step."""
    root = np.asarray(root, dtype=np.float32)
    root_norm = math.sqrt(sq_norm(root))
    norms = np.sqrt(_sq_norms(U))
    dots = np.einsum("ij,j->i", U, root, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        cosine = np.where((norms > 0) & (root_norm > 0), dots / (norms * root_norm), 0.0)
    trust = np.maximum(cosine, 0.0)
    if trust.sum() <= 0:
        return np.zeros(U.shape[1], dtype=np.float32), trust
    coefficients = trust * root_norm / np.where(norms > 0, norms, 1.0)
    return (_weighted_rows(U, coefficients) / trust.sum()).astype(np.float32), trust


class RootUpdate:
    """FLTrust's server update: the global model trained on the server's small root dataset with a
    Trainer from `trainer_factory`, in this process, on one torch thread (so every engine gives the
    same bits), for `steps` local steps (the paper: as many as a client) with the clients' other settings.
    """

    def __init__(self, trainer_factory: Callable, data, fit: FitConfig, steps: int, seed: int):
        self.trainer_factory = trainer_factory
        self.data = data
        self.fit = replace(fit, epochs=1, local_steps=max(1, steps), clip_norm=0.0, dp_sgd=False)
        self.seed = seed
        self.trainer = None

    def __call__(self, round: int, params: np.ndarray) -> np.ndarray:
        if self.trainer is None:
            try:
                import torch
            except ImportError:  # a model that is not a torch one (fedstack without the torch extra)
                pass
            else:
                torch.set_num_threads(1)
            self.trainer = self.trainer_factory()
        config = replace(self.fit, seed=int_seed(self.seed, "root", round))
        return np.asarray(self.trainer.fit(params, self.data, config).update, dtype=np.float32)


class Robust(Strategy):
    """A Byzantine-robust rule (`RULES`) in front of any synchronous server step `inner` (FedAvg,
    FedAvgM, FedAdam, ...): the round's updates are gathered into one n × d float32 matrix (allocated
    for `capacity` clients, kept across rounds, grown only if more arrive: memory O(clients × model)),
    the rule turns them into one update, and `inner` steps with it as if one client had sent it.

    The rules ignore clients' example counts (a Byzantine client could claim any), except
    norm bounding, which keeps FedAvg's example-weighted mean of the clipped updates. Parameters:
    `byzantine` (the fraction f/n of each round's clients Krum assumes Byzantine: f = ⌊byzantine·n⌋),
    `krum_m` (updates Multi-Krum averages; 0 = n − f), `trim_beta`, `norm_bound` (0 = the round's
    median norm), `clip_tau` (0 = the median distance), `clip_iters`, `root` (FLTrust's `RootUpdate`).

    Each round's cost is in `round_figures()` for the round record: `aggregate_s` (the rule's seconds),
    and per rule `robust_selected` (Krum: the client ids kept), `robust_bound` (norm bound or τ),
    `robust_trusted` (FLTrust: updates with trust > 0) and `root_s` (FLTrust: the server's training).
    """

    stateful = True  # centered clipping's previous aggregate, the inner strategy's state
    needs_each_update = True  # the rules compare updates with each other

    def __init__(self, inner: Strategy, rule: str, *, capacity: int = 10, byzantine: float = 0.2,
                 krum_m: int = 0, trim_beta: float = 0.2, norm_bound: float = 0.0, clip_tau: float = 0.0,
                 clip_iters: int = 1, root: Callable[[int, np.ndarray], np.ndarray] | None = None):
        if rule not in RULES:
            raise ValueError(f"unknown robust rule {rule!r} ({' | '.join(RULES)})")
        if rule == "fltrust" and root is None:
            raise ValueError("fltrust needs the server's root update (root=RootUpdate(...))")
        if inner.asynchronous or inner.broadcasts:
            raise ValueError(f"a robust rule cannot run in front of {type(inner).__name__}")
        self.inner, self.rule = inner, rule
        self.capacity = max(1, capacity)
        self.byzantine, self.krum_m, self.trim_beta = byzantine, krum_m, trim_beta
        self.norm_bound, self.clip_tau, self.clip_iters = norm_bound, clip_tau, clip_iters
        self.root = root
        self.center: np.ndarray | None = None  # centered clipping: the previous round's aggregate
        self._matrix: np.ndarray | None = None
        self._figures: dict = {}

    def client_needs(self) -> frozenset[str]:
        return self.inner.client_needs()

    def configure(self, round: int, params: np.ndarray, sampled_ids: list[int]) -> list[Task]:
        return self.inner.configure(round, params, sampled_ids)

    def collect(self, updates: Iterable[ClientUpdate], size: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """(U: the round's updates as rows of the kept matrix, their example counts, their client ids)."""
        if self._matrix is None or self._matrix.shape[1] != size:
            self._matrix = np.empty((self.capacity, size), dtype=np.float32)
        weights, ids = [], []
        for u in updates:
            n = len(ids)
            if n == len(self._matrix):  # more clients than planned for: grow (rare; over-selection off)
                grown = np.empty((2 * n, size), dtype=np.float32)
                grown[:n] = self._matrix
                self._matrix = grown
            self._matrix[n] = u.update
            weights.append(u.num_examples)
            ids.append(u.client_id)
        return self._matrix[:len(ids)], np.asarray(weights, dtype=np.float64), ids

    def aggregate(self, round: int, params: np.ndarray, updates: Iterable[ClientUpdate]) -> np.ndarray:
        """The inner strategy's step with the rule's one aggregate of the round's updates."""
        U, weights, ids = self.collect(updates, params.size)
        self._figures = {}
        if not ids:
            return params
        figures: dict = {}
        root = None
        if self.rule == "fltrust":  # the server trains on its root data: part of the rule's cost, booked apart
            started = time.perf_counter()
            root = self.root(round, params)
            figures["root_s"] = time.perf_counter() - started
        started = time.perf_counter()
        aggregate = self.apply(U, weights, ids, root, figures)
        figures["aggregate_s"] = time.perf_counter() - started
        self._figures = figures
        if self.rule == "centered_clip":
            self.center = aggregate.copy()
        return self.inner.aggregate(round, params, [ClientUpdate(-1, aggregate, 1)])

    def apply(self, U: np.ndarray, weights: np.ndarray, ids: list[int], root: np.ndarray | None,
              figures: dict) -> np.ndarray:
        """The rule on one round's matrix; what it decided goes into `figures`."""
        n = len(U)
        if self.rule == "median":
            return coordinate_median(U)
        if self.rule == "trimmed_mean":
            return trimmed_mean(U, self.trim_beta)
        if self.rule in ("krum", "multi_krum"):
            # f from the clients that came; a round thinned by failures keeps Krum defined (n > 2f + 2)
            f = min(math.floor(self.byzantine * n), max(0, (n - 3) // 2))
            if n < 3:
                log.info("krum needs 3 updates, got %d: taking their median", n)
                return coordinate_median(U)
            m = 1 if self.rule == "krum" else (min(self.krum_m, n) if self.krum_m else n - f)
            aggregate, chosen = krum(U, f, m)
            figures["robust_selected"] = sorted(ids[i] for i in chosen)
            return aggregate
        if self.rule == "norm_bound":
            aggregate, figures["robust_bound"] = norm_bound(U, weights, self.norm_bound)
            return aggregate
        if self.rule == "centered_clip":
            center = self.center if self.center is not None and self.center.size == U.shape[1] \
                else np.zeros(U.shape[1], np.float32)
            aggregate, figures["robust_bound"] = centered_clip(U, center, self.clip_tau, self.clip_iters)
            return aggregate
        aggregate, trust = fltrust(U, root)
        figures["robust_trusted"] = int((trust > 0).sum())
        return aggregate

    def round_figures(self) -> dict:
        """What the last aggregation cost and decided (merged into the round record)."""
        figures, self._figures = self._figures, {}
        return figures

    def state(self) -> dict[str, np.ndarray]:
        """Centered clipping's center and the inner strategy's state (checkpointed together)."""
        state = {f"inner.{k}": v for k, v in strategy_state(self.inner).items()}
        if self.center is not None:
            state["center"] = self.center.copy()
        return state

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self.center = np.array(state["center"], dtype=np.float32) if "center" in state else None
        restore_strategy_state(self.inner, {k[len("inner."):]: v for k, v in state.items() if k.startswith("inner.")})
