"""Contribution scores in the round loop: each round's participants scored from the updates it aggregated.

The loop hands `ContributionScorer.watch` the updates on their way to the strategy (it keeps a copy of each:
scores need every client's update, which is why a summing aggregator — secure aggregation, CKKS — refuses
them), then `score` after the strategy's step. The utilities the methods ask for (fedstack.contribution.Game)
are validation accuracies (or −losses) of coalition models rebuilt from those updates: a batch of coalitions
is stacked into one vector and evaluated through the engine like central evaluation — each model a `span`,
each shard of the validation examples a task — so the passes spread over the engine's workers, in a fixed
order that gives the same sums, and so the same bits, on every engine.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from .. import contribution
from ..client import EvalResult
from ..engine import Engine, EvalTask
from ..errors import ConfigError
from ..seeding import rng
from ..strategy import ClientUpdate


@dataclass(frozen=True)
class ContributionOptions:
    """How clients are scored: `methods` (fedstack.contribution.METHODS), on `validation` — rows of the training
    pool (drawn with the run seed by `validation_rows`) or None for the test set's first `test_examples` — by
    `utility` ("accuracy" or "loss": −mean loss), `batch` coalition models a time, GTG-Shapley's `eps` and most
    `permutations`; `payout`
    a budget split by accumulated positive contribution (summary.json, contributions.csv)."""

    methods: tuple[str, ...] = ("gtg",)
    validation: np.ndarray | None = None
    test_examples: int = 0
    utility: str = "accuracy"
    batch: int = 32
    eps: float = 0.005
    coalition: str = "share"  # a coalition's model (contribution.coalition_model): its members' "mean" or "share"
    permutations: int = 20  # GTG-Shapley's most permutations a round (0: ten cycles of n)
    shard: int = 2000  # validation examples a task: one per coalition model, whose one pass pays no tracing
    payout: float = 0.0

    def __post_init__(self):
        for method in self.methods:
            if method not in contribution.METHODS:
                raise ConfigError("contribution.method", f"unknown method {method!r}; choose from "
                                  f"{', '.join(contribution.METHODS)}")
        if self.utility not in ("accuracy", "loss"):
            raise ConfigError("contribution.utility", f"{self.utility!r}: choose accuracy or loss")


def validation_rows(pool: int, examples: int, seed: int) -> np.ndarray:
    """`examples` rows of a training pool of `pool` drawn with the run seed, sorted (the server's validation set:
    a simulation takes it from the pool, so it may overlap clients' data, as FLTrust's root set does)."""
    if not 0 < examples <= pool:
        raise ConfigError("contribution.validation_examples", f"{examples} validation examples, but the training "
                          f"pool holds {pool}")
    return np.sort(rng(seed, "contribution", 0).choice(pool, size=examples, replace=False))


class ContributionScorer:
    """Scores each round's participants by `options.methods`; `figures` go to the round's record."""

    def __init__(self, options: ContributionOptions, seed: int):
        self.options, self.seed = options, seed
        self._held: list[tuple[int, np.ndarray, float]] = []

    def watch(self, updates: Iterable[ClientUpdate]) -> Iterator[ClientUpdate]:
        """Pass the round's updates on, keeping a copy of each (client, update, weight)."""
        self._held = []
        for update in updates:
            self._held.append((update.client_id, np.array(update.update, dtype=np.float32), update.num_examples))
            yield update

    def score(self, rnd: int, base: np.ndarray, engine: Engine, dataset) -> dict:
        """The round's `contribution` figures: for each method the clients' scores (by client id), the utilities
        it evaluated and its seconds; with the round's utility before (v(∅)) and after (v(N)) aggregation."""
        held, self._held = self._held, []
        if not held:
            return {}
        ids = [cid for cid, _, _ in held]
        updates = np.stack([u for _, u, _ in held])
        weights = np.array([w for _, _, w in held], dtype=np.float64)
        def values(coalitions):
            return self._utilities(coalitions, base, updates, weights, engine, dataset)

        methods, utilities = {}, {}
        for method in self.options.methods:
            # A game of its own per method: each one's evaluations and seconds are what it alone costs.
            game = contribution.Game(len(ids), values)
            started = time.perf_counter()
            options = {"eps": self.options.eps, "max_permutations": self.options.permutations or None} \
                if method == "gtg" else {}
            scores, used = contribution.score(method, game, updates, weights,
                                              rng(self.seed, "contribution", 1, rnd), **options)
            methods[method] = {"scores": {str(c): float(s) for c, s in zip(ids, scores)}, "evaluations": int(used),
                               "seconds": time.perf_counter() - started}
            if game.cached(frozenset()) and game.cached(game.grand):
                utilities = {"utility_before": game.value(frozenset()), "utility_after": game.value(game.grand)}
        figures = {"methods": methods, "clients": ids, **utilities}
        if self.options.payout:
            figures["payout"] = self.options.payout
        return figures

    def _utilities(self, coalitions: list, base: np.ndarray, updates: np.ndarray, weights: np.ndarray,
                   engine: Engine, dataset) -> list[float]:
        """The coalitions' utilities, `batch` models a time stacked into one vector of a fixed length (a parallel
        engine publishes vectors of one length once)."""
        size, batch = base.size, self.options.batch
        shards = self._shards(dataset)
        values = []
        for start in range(0, len(coalitions), batch):
            chunk = coalitions[start:start + batch]
            stacked = np.zeros(batch * size, dtype=np.float32)
            for k, members in enumerate(chunk):
                stacked[k * size:(k + 1) * size] = contribution.coalition_model(base, updates, weights, members,
                                                                                self.options.coalition)
            tasks = [EvalTask(start=a, stop=b, examples=rows, span=(k * size, (k + 1) * size), once=True)
                     for k in range(len(chunk)) for a, b, rows in shards]
            results = [EvalResult() for _ in chunk]
            for outcome in engine.run(stacked, tasks):
                if outcome.error:
                    raise RuntimeError(f"a contribution evaluation failed: {outcome.error}")
                k = outcome.task.span[0] // size
                results[k] = results[k] + outcome.value  # task order: each model's shards add in a fixed order
            values += [self._utility(r) for r in results]
        return values

    def _shards(self, dataset) -> list[tuple[int, int, np.ndarray | None]]:
        shard = self.options.shard
        if self.options.validation is not None:
            rows = self.options.validation
            return [(a, min(a + shard, len(rows)), rows[a:a + shard]) for a in range(0, len(rows), shard)]
        stop = min(self.options.test_examples or len(dataset.y_test), len(dataset.y_test))
        return [(a, min(a + shard, stop), None) for a in range(0, stop, shard)]

    def _utility(self, result: EvalResult) -> float:
        if not result.examples:
            return 0.0
        if self.options.utility == "loss" or result.correct is None:
            return -result.loss_sum / result.examples
        return result.correct / result.examples
