"""How much each client contributed to a round: scores for incentives and for spotting free riders.

In a round, n clients sent updates u_i (rows of an n×d matrix: each client's new model minus the global model it
started from) with weights w_i (their example counts). Aggregating a coalition S of them gives the model
`coalition_model(base, updates, weights, S)` = base + Σ_{i∈S} w_i u_i / Σ_{i∈S} w_i (the base model itself when S
is empty; with coalition="share" the denominator is the whole round's Σ_{i∈N} w_i, so a client that sends nothing
is a null player), and the utility v(S) is a score of that model on a validation set the server holds (accuracy, or
−loss). Rebuilding a coalition's model from the updates already received, rather than retraining the coalition,
is what makes these scores affordable in federated learning (Song, Tong, Wei 2019, "Profit Allocation for
Federated Learning", IEEE Big Data; Wang et al. 2020, "A Principled Approach to Data Valuation for Federated
Learning"); every v(S) still costs a validation pass, so the utilities are evaluated in batches by a
caller-supplied function (`Game`), which the round loop can spread over worker processes.

The scores, from the most faithful and dearest to the cheapest:

- `exact_shapley`: the Shapley value (Shapley 1953, "A Value for n-Person Games"), the only split of
  v(N) − v(∅) that is efficient, symmetric, gives a null player nothing and adds up over games; 2^n
  utilities, so only for small rounds (n ≤ 16 here).
- `gtg_shapley`: GTG-Shapley (Liu, Lai, Zhang, Yu, Ma 2022, "GTG-Shapley: Efficient and Accurate Participant
  Contribution Evaluation in Federated Learning", ACM TIST), a Monte-Carlo estimate of the Shapley value over
  permutations, with truncation between rounds (a round that changed the utility by less than eps is worth
  nothing to anyone) and within a permutation (once a prefix's utility is within eps of the whole round's, the
  rest add nothing), and guided sampling (every client leads a permutation once per cycle).
- `leave_one_out`: v(N) − v(N \\ {i}), n + 1 utilities. Cheap and intuitive, but two clients with the same
  data each get (about) 0, since either one can replace the other.
- `cosine_scores`: the cosine between a client's update and the others' aggregate (the gradient-space part of
  FedCE: Jiang, Roth, Li, Dou 2023, "Fair Federated Medical Image Segmentation via Client Contribution
  Estimation", CVPR). No utility at all; a free rider sending noise or nothing scores about 0.

`spearman` compares two scorings by their rankings; `payout` splits a budget by accumulated contribution;
`score` dispatches by name and `Scores` is the record of one scoring. Everything here is pure (NumPy only).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Game", "Scores", "coalition_model", "cosine_scores", "exact_shapley", "gtg_shapley", "leave_one_out",
    "accumulate", "participation", "payout", "score", "spearman", "METHODS", "MAX_EXACT_PLAYERS",
]

Coalition = frozenset[int]

# 2^16 = 65 536 validation passes is already hours of server time for a real model; beyond it, use gtg_shapley.
MAX_EXACT_PLAYERS = 16


class Game:
    """A cooperative game over players 0..n-1 whose utilities come from a batched, caller-supplied function.

    `values(coalitions: list[frozenset[int]]) -> list[float]` evaluates a batch of coalitions (the round loop
    runs a batch on worker processes, so the algorithms here ask for what they need in as few calls as they
    can). Every utility is cached: a coalition is evaluated at most once per `Game`, however many scorings ask
    for it, and `evaluations` counts the coalitions actually evaluated (`calls`: the calls to `values`).
    """

    def __init__(self, n: int, values: Callable[[list[Coalition]], Sequence[float]]):
        if int(n) != n or n < 0:
            raise ValueError(f"a game needs a whole number of players >= 0, not {n!r}")
        self.n = int(n)
        self.grand: Coalition = frozenset(range(self.n))
        self._values = values
        self._cache: dict[Coalition, float] = {}
        self.evaluations = 0
        self.calls = 0

    def value(self, coalition: Iterable[int]) -> float:
        """v(S) for one coalition (from the cache when it has been evaluated)."""
        return self.values([coalition])[0]

    def values(self, coalitions: Iterable[Iterable[int]]) -> list[float]:
        """v(S) for each coalition, in order; those not cached are evaluated together in one call to `values`
        (each once, even when the batch names it twice)."""
        wanted = [c if isinstance(c, frozenset) else frozenset(c) for c in coalitions]
        missing = list(dict.fromkeys(c for c in wanted if c not in self._cache))  # first-seen order: deterministic
        if missing:
            for c in missing:
                # Checked before the (expensive) evaluation, and only once per coalition: cached ones passed.
                if any(not isinstance(i, (int, np.integer)) or not 0 <= i < self.n for i in c):
                    raise ValueError(f"coalition {sorted(c)} names players outside 0..{self.n - 1}")
            got = list(self._values(missing))
            self.calls += 1
            if len(got) != len(missing):
                raise ValueError(f"the game's values function returned {len(got)} utilities for "
                                 f"{len(missing)} coalitions")
            for c, v in zip(missing, got):
                self._cache[c] = float(v)
            self.evaluations += len(missing)
        return [self._cache[c] for c in wanted]

    def cached(self, coalition: Iterable[int]) -> bool:
        """Whether v(S) is known without evaluating anything."""
        return frozenset(coalition) in self._cache


COALITIONS = ("mean", "share")


def coalition_model(base: np.ndarray, updates: np.ndarray, weights: np.ndarray,
                    members: Iterable[int], coalition: str = "mean") -> np.ndarray:
    """The model the server would hold had only `members` (S) taken part; float32, a new array; the base itself
    for an empty coalition.

    - "mean": base + Σ_{i∈S} w_i u_i / Σ_{i∈S} w_i — FedAvg of the coalition's updates, what the server would
      have computed (GTG-Shapley's reconstruction). A zero update is not a null player here: it shrinks the
      others' mean, which is worth something where their updates hurt.
    - "share": base + Σ_{i∈S} w_i u_i / Σ_{i∈N} w_i — each member adds its share of the whole round's aggregate
      (the grand coalition is the same model). A client's marginal contribution is then its own weighted
      update's effect alone, and a zero update is exactly a null player (scores 0).

    `updates` has one row per client, each shaped like `base`; `weights` one entry per client.
    """
    if coalition not in COALITIONS:
        raise ValueError(f"coalition must be one of {', '.join(COALITIONS)}, not {coalition!r}")
    base = np.asarray(base)
    updates = np.asarray(updates)
    weights = np.asarray(weights, dtype=np.float64)
    if updates.shape[1:] != base.shape or weights.shape != updates.shape[:1]:
        raise ValueError(f"updates {updates.shape} must be one row per client shaped like the base "
                         f"{base.shape}, weights {weights.shape} one per client")
    idx = np.fromiter(sorted(set(int(i) for i in members)), dtype=np.intp)
    if idx.size == 0:
        return base.astype(np.float32, copy=True)
    if idx[0] < 0 or idx[-1] >= len(updates):
        raise ValueError(f"coalition {idx.tolist()} names clients outside 0..{len(updates) - 1}")
    w = weights[idx]
    total = w.sum() if coalition == "mean" else weights.sum()
    if total <= 0:
        raise ValueError(f"the coalition {idx.tolist()} has total weight {total}; FedAvg needs a positive one")
    # Accumulate in float64: many float32 updates summed in float32 lose the low bits of the small ones.
    mean = np.tensordot(w / total, updates[idx].astype(np.float64), axes=1)
    return (base.astype(np.float64) + mean).astype(np.float32)


def exact_shapley(game: Game) -> np.ndarray:
    """The Shapley value of every player (Shapley 1953), from all 2^n utilities, evaluated in one batch:

        φ_i = Σ_{S ⊆ N \\ {i}} |S|! (n − |S| − 1)! / n! · (v(S ∪ {i}) − v(S)).

    Efficient (Σ φ_i = v(N) − v(∅)), symmetric, zero for a null player. Refuses n > 16 (`MAX_EXACT_PLAYERS`):
    2^n validation passes; use `gtg_shapley` there.
    """
    n = game.n
    if n > MAX_EXACT_PLAYERS:
        raise ValueError(f"exact Shapley values of {n} players need 2^{n} = {2 ** n} coalition evaluations; "
                         f"at most {MAX_EXACT_PLAYERS} players (use gtg_shapley)")
    if n == 0:
        return np.zeros(0)
    masks = np.arange(1 << n)
    members = [frozenset(i for i in range(n) if m >> i & 1) for m in range(1 << n)]
    v = np.asarray(game.values(members), dtype=np.float64)  # indexed by bit mask
    size = np.array([len(s) for s in members])
    # |S|!(n−|S|−1)!/n! = 1 / (n · C(n−1, |S|)): no factorial overflows, one exact integer per size.
    coef = np.array([1.0 / (n * math.comb(n - 1, s)) for s in range(n)])
    phi = np.empty(n)
    for i in range(n):
        without = masks[(masks >> i & 1) == 0]
        phi[i] = np.sum(coef[size[without]] * (v[without | (1 << i)] - v[without]))
    return phi


def gtg_shapley(game: Game, *, eps: float = 0.001, max_permutations: int | None = None,
                convergence: float = 0.05, seed_rng: np.random.Generator) -> np.ndarray:
    """GTG-Shapley estimate of the Shapley values (Liu, Lai, Zhang, Yu, Ma 2022, ACM TIST, Algorithm 1).

    - **Between-round truncation**: if |v(N) − v(∅)| < eps the round changed nothing worth sharing out; every
      client gets 0, for 2 evaluations.
    - **Guided Monte-Carlo sampling**: permutations come in cycles of n; in each cycle, permutation j puts
      client j first and the others in a random order drawn from `seed_rng`. The early positions carry the
      largest marginal contributions (the late ones are often truncated), so every client is sampled first
      once per cycle rather than by chance.
    - **Within-round truncation**: scanning a permutation's prefixes, once |v(N) − v(prefix)| < eps the
      remaining clients' marginal contributions are taken as 0 and not evaluated (the paper's v_j = v_{j−1}).
      This makes the estimate only approximately efficient: |Σ φ_i − (v(N) − v(∅))| < eps.
    - **Stopping**: φ is the mean marginal contribution over all permutations so far. After each full cycle,
      from the second on, the mean over clients of |φ_k − φ_{k−1}| / (|φ_k| + eps) (φ_k: the estimate after
      cycle k) below `convergence` stops it; eps in the denominator keeps a client whose value is ~0 from
      requiring a relative precision finer than the utility's resolution. At most `max_permutations`
      permutations (default 10·n: ten cycles, at most 10·n² evaluations, usually far fewer with truncation and
      the cache; a final partial cycle takes its first permutations, clients 0, 1, ... first).

    Batching: a cycle's n permutations advance together, position by position; at each position the prefixes of
    the permutations not yet truncated are evaluated in one `game.values` call (cached prefixes are not
    re-evaluated), so a cycle costs at most n calls. Deterministic given the state of `seed_rng`.
    """
    n = game.n
    if eps < 0:
        raise ValueError(f"eps must be >= 0, not {eps}")
    if not convergence > 0:
        raise ValueError(f"convergence must be > 0, not {convergence}")
    if max_permutations is None:
        max_permutations = 10 * n
    if max_permutations < 1:
        raise ValueError(f"max_permutations must be >= 1, not {max_permutations}")
    if n == 0:
        return np.zeros(0)
    v_empty, v_grand = game.values([frozenset(), game.grand])
    if abs(v_grand - v_empty) < eps:
        return np.zeros(n)

    total = np.zeros(n)  # Σ of marginal contributions over the permutations so far
    done = 0  # permutations so far
    previous = None  # the estimate after the previous full cycle
    while done < max_permutations:
        size = min(n, max_permutations - done)
        perms = np.empty((size, n), dtype=np.intp)
        for j in range(size):
            others = np.array([i for i in range(n) if i != j], dtype=np.intp)
            perms[j, 0] = j
            perms[j, 1:] = seed_rng.permutation(others)
        last = np.full(size, v_empty)  # v of each permutation's prefix so far
        active = np.ones(size, dtype=bool)
        for p in range(n):
            rows = np.flatnonzero(active)
            if rows.size == 0:
                break
            prefixes = [frozenset(perms[j, :p + 1].tolist()) for j in rows]
            got = np.asarray(game.values(prefixes))  # one call for the whole position (none if all cached)
            np.add.at(total, perms[rows, p], got - last[rows])
            last[rows] = got
            active[rows] = np.abs(v_grand - got) >= eps
        done += size
        if size < n:
            break  # the budget ended mid-cycle: no convergence test on a partial cycle
        phi = total / done
        if previous is not None and _relative_change(phi, previous, eps) < convergence:
            break
        previous = phi
    return total / done


def _relative_change(new: np.ndarray, old: np.ndarray, eps: float) -> float:
    """Mean over clients of |new − old| / (|new| + eps); a client whose estimate is and stays exactly 0 (a null
    player, or one always truncated) has changed by 0, also when eps = 0."""
    change = np.abs(new - old)
    den = np.abs(new) + eps
    rel = np.divide(change, den, out=np.where(change > 0, np.inf, 0.0), where=den > 0)
    return float(np.mean(rel))


def leave_one_out(game: Game) -> np.ndarray:
    """v(N) − v(N \\ {i}) for each player: what the round loses without client i; n + 1 utilities, one batch."""
    n = game.n
    if n == 0:
        return np.zeros(0)
    got = game.values([game.grand] + [game.grand - {i} for i in range(n)])
    return got[0] - np.asarray(got[1:], dtype=np.float64)


def cosine_scores(updates: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """For each client, cos(u_i, Σ_{j≠i} w_j u_j): how well its update points where the others' aggregate does
    (the gradient-similarity part of FedCE, Jiang et al. 2023, CVPR). In [−1, 1]; 0 where either vector is 0
    (a client that sent nothing, or one with no others), including an aggregate that is 0 only up to rounding.
    """
    updates = np.asarray(updates, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    if updates.ndim != 2 or weights.shape != updates.shape[:1]:
        raise ValueError(f"updates must be n×d and weights n, not {updates.shape} and {weights.shape}")
    weighted = weights[:, None] * updates
    others = weighted.sum(axis=0)[None, :] - weighted  # n×d; O(nd), not the O(n²d) of summing each set anew
    own_norm = np.linalg.norm(updates, axis=1)
    others_norm = np.linalg.norm(others, axis=1)
    # Subtracting one's own term from the total leaves rounding residue where the others cancel exactly; a
    # residue below 1e-12 of the terms' scale is no direction, so it counts as 0.
    scale = np.sum(np.linalg.norm(weighted, axis=1))
    ok = (own_norm > 0) & (others_norm > 1e-12 * scale)
    out = np.zeros(len(updates))
    out[ok] = np.einsum("ij,ij->i", updates[ok], others[ok]) / (own_norm[ok] * others_norm[ok])
    return np.clip(out, -1.0, 1.0)


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing the mean of the ranks they span (the convention of Spearman's rho)."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])  # first index of each run of equal values
    ends = np.r_[starts[1:], len(x)]
    mean_rank = (starts + ends + 1) / 2.0  # mean of (start+1)..end
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def spearman(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Spearman's rank correlation: the Pearson correlation of the average ranks (ties share their mean rank).
    NaN when either vector is constant (or has fewer than 2 entries): no ranking to compare."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"spearman needs vectors of equal length, not {a.size} and {b.size}")
    if np.isnan(a).any() or np.isnan(b).any():
        raise ValueError("spearman of vectors with NaN: their ranks are undefined")
    if a.size < 2:
        return float("nan")
    ra = _average_ranks(a) - (a.size + 1) / 2.0
    rb = _average_ranks(b) - (b.size + 1) / 2.0
    den = math.sqrt(float(ra @ ra) * float(rb @ rb))
    if den == 0:
        return float("nan")
    return float(ra @ rb) / den


def payout(accumulated: Mapping[int, float], budget: float) -> dict[int, float]:
    """Split `budget` among clients in proportion to their positive accumulated contribution; a client at or
    below 0 gets 0 (a free rider or a harmful client is not paid, nor charged), and if nobody is positive nobody
    is paid (all 0). Every client in `accumulated` appears in the result."""
    if not budget >= 0:
        raise ValueError(f"the budget must be >= 0, not {budget}")
    positive = {c: float(v) for c, v in accumulated.items() if v > 0 and math.isfinite(v)}
    total = math.fsum(positive.values())
    if total <= 0:
        return {c: 0.0 for c in accumulated}
    return {c: budget * positive[c] / total if c in positive else 0.0 for c in accumulated}


@dataclass
class Scores:
    """One scoring of one round: `values[k]` is the score of client `clients[k]` (the game's player k);
    `evaluations` the coalition utilities it cost; `seconds` its wall time, measured by the caller."""

    method: str
    round: int
    clients: list[int]
    values: list[float]
    evaluations: int = 0
    seconds: float = 0.0


METHODS = ("shapley", "gtg", "loo", "cosine")


def score(method: str, game: Game | None, updates: np.ndarray | None = None, weights: np.ndarray | None = None,
          rng: np.random.Generator | None = None, **options) -> tuple[np.ndarray, int]:
    """Score a round's clients by `method` ("shapley" | "gtg" | "loo" | "cosine"): (scores, evaluations used).

    The game methods need `game` (evaluations used: the coalitions this call evaluated, so utilities a Game
    cached from an earlier scoring cost nothing); "gtg" also needs `rng` and takes `gtg_shapley`'s options
    (eps, max_permutations, convergence); "cosine" needs `updates` and `weights` and evaluates nothing.
    """
    if method not in METHODS:
        raise ValueError(f"unknown contribution method {method!r}; one of {', '.join(METHODS)}")
    if method == "cosine":
        if updates is None or weights is None:
            raise ValueError("the cosine method needs the updates and their weights")
        if options:
            raise TypeError(f"the cosine method takes no options, not {sorted(options)}")
        return cosine_scores(updates, weights), 0
    if game is None:
        raise ValueError(f"the {method} method needs a Game (the utilities of coalitions)")
    before = game.evaluations
    if method == "gtg":
        if rng is None:
            raise ValueError("the gtg method needs an rng (np.random.Generator) for its permutations")
        values = gtg_shapley(game, seed_rng=rng, **options)
    else:
        if options:
            raise TypeError(f"the {method} method takes no options, not {sorted(options)}")
        values = exact_shapley(game) if method == "shapley" else leave_one_out(game)
    return values, game.evaluations - before


def accumulate(records: Iterable[Mapping]) -> dict[str, dict[int, float]]:
    """Each method's scores summed over a run's round records (their `contribution` figures), by client id in
    client order: what a federation rewards, and where a free rider's near-zero rounds add up to little."""
    totals: dict[str, dict[int, float]] = {}
    for record in records:
        for method, figures in ((record.get("contribution") or {}).get("methods") or {}).items():
            into = totals.setdefault(method, {})
            for client, value in figures["scores"].items():
                into[int(client)] = into.get(int(client), 0.0) + float(value)
    return {method: dict(sorted(scores.items())) for method, scores in totals.items()}


def participation(records: Iterable[Mapping]) -> dict[int, int]:
    """How many scored rounds each client took part in."""
    counts: dict[int, int] = {}
    for record in records:
        for client in (record.get("contribution") or {}).get("clients") or []:
            counts[int(client)] = counts.get(int(client), 0) + 1
    return dict(sorted(counts.items()))
