"""Who contributed what: contribution scores against planted behaviours (issue: contribution scores).

Fashion-MNIST, 20 clients on a Dirichlet(0.5) partition, 10 per round, 30 rounds, FedAvg, every method at once
(exact Shapley, GTG-Shapley, leave-one-out, cosine), with planted clients:

- two free riders: one sends a zero update, one sends the global model back with noise (an update of N(0, σ²));
- two label-flippers: 80 % of their training labels flipped (y → C − 1 − y);
- two data-rich clients: five times the data of a typical client, clean.

The server's validation set is the first `--validation` test examples (clean: the flipped labels are the
clients' own). Prints, per round, GTG's Spearman correlation with exact Shapley and its share of exact's
evaluations, leave-one-out's correlation, each method's seconds against the round's training time; then the
accumulated ranking under each method and where the planted clients land. Goals: GTG ρ ≥ 0.9 at ≤ 15 % of
exact's evaluations; free riders and flippers in the bottom 4 under every method; data-rich clients in the top 4
under Shapley.

    python benchmarks/contribution.py [--rounds 30] [--model mlp] [--validation 1000] [--out runs/bench-contribution]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import numpy as np

from common import default_workload
from fedstack.client import FitResult
from fedstack.contribution import spearman
from fedstack.data import FederatedDataset
from fedstack.experiment import simulate
from fedstack.loop import ContributionOptions, Evaluation
from fedstack.plan import client_side
from fedstack.strategy import FedAvg

ZERO_RIDER, NOISE_RIDER = 0, 1
FLIPPERS = (2, 3)
RICH = (4, 5)
PLANTED = {ZERO_RIDER: "free rider (zero update)", NOISE_RIDER: "free rider (model back + noise)",
           FLIPPERS[0]: "80 % labels flipped", FLIPPERS[1]: "80 % labels flipped",
           RICH[0]: "5× clean data", RICH[1]: "5× clean data"}
METHODS = ("shapley", "gtg", "loo", "cosine")


class Planted:
    """The run's trainer, except that the free riders do not train: one sends a zero update, the other noise.
    A client is known by its first training example (the partition's index arrays are disjoint)."""

    def __init__(self, factory, riders: dict[int, str], noise: float):
        self.inner, self.riders, self.noise = factory(), riders, noise

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def fit(self, params, data, config, state=None):
        kind = self.riders.get(int(data.train_idx[0]))
        if kind is None:
            return self.inner.fit(params, data, config, state)
        if kind == "zero":
            return FitResult(np.zeros_like(params), len(data.train_idx), {"train_loss": float("nan")})
        noise = np.random.default_rng(config.seed).normal(0.0, self.noise, params.shape).astype(np.float32)
        return FitResult(noise, len(data.train_idx), {"train_loss": float("nan")})


def planted_trainer(factory, riders, noise):  # module-level: picklable for the pool engine
    return Planted(factory, riders, noise)


def planted_dataset(dataset, clients: int, seed: int) -> tuple[FederatedDataset, dict[int, str]]:
    """20 clients on Dir(0.5) over two thirds of the pool, the data-rich ones topped up to 5× the median from the
    rest, the flippers' labels 80 % flipped (on a copy of y); and the free riders by their first example."""
    base = FederatedDataset.from_arrays(dataset.x, dataset.y, dataset.x_test, dataset.y_test, num_clients=clients,
                                        partition="dirichlet", alpha=0.5, holdout=0.0, seed=seed)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(dataset.y))
    kept, reserve = order[: 2 * len(order) // 3], order[2 * len(order) // 3:]
    keep = np.zeros(len(dataset.y), bool)
    keep[kept] = True
    train = [np.sort(idx[keep[idx]]) for idx in (base.train_idx[i] for i in range(clients))]
    median = int(np.median([len(t) for t in train]))
    for k, c in enumerate(RICH):
        extra = reserve[k * 4 * median:(k + 1) * 4 * median]
        train[c] = np.sort(np.concatenate([train[c], extra]))
    y = dataset.y.copy()
    classes = dataset.num_classes
    for c in FLIPPERS:
        chosen = rng.choice(train[c], size=int(0.8 * len(train[c])), replace=False)
        y[chosen] = classes - 1 - y[chosen]
    planted = FederatedDataset(dataset.name, dataset.x, y, dataset.x_test, dataset.y_test, train,
                               [np.zeros(0, np.int64)] * clients, classes)
    riders = {int(train[ZERO_RIDER][0]): "zero", int(train[NOISE_RIDER][0]): "noise"}
    return planted, riders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--per-round", type=int, default=10)
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--validation", type=int, default=1000)
    parser.add_argument("--noise", type=float, default=0.01, help="std of the noisy free rider's update")
    parser.add_argument("--eps", type=float, default=0.005, help="GTG-Shapley's truncation threshold (accuracy)")
    parser.add_argument("--permutations", type=int, default=20, help="GTG-Shapley's most permutations a round "
                        "(0: ten cycles of n)")
    parser.add_argument("--utility", default="accuracy", choices=("accuracy", "loss"),
                        help="a coalition model's utility on the validation set")
    parser.add_argument("--coalition", default="share", choices=("mean", "share"),
                        help="a coalition's model: its members' mean update, or their shares of the round's")
    parser.add_argument("--engine", default="pool")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/bench-contribution")
    args = parser.parse_args()

    config, dataset, _, _ = default_workload(args.rounds, [f"model.name={args.model}", f"seed={args.seed}"])
    planted, riders = planted_dataset(dataset, args.clients, args.seed)
    factory, params, fit, _ = client_side(config, planted)
    trainer = functools.partial(planted_trainer, factory, riders, args.noise)
    sizes = planted.train_idx.sizes()
    print(f"Fashion-MNIST, {args.clients} clients (Dir(0.5); sizes {sizes.min()}..{sizes.max()}, median "
          f"{int(np.median(sizes))}), {args.per_round} a round, {args.rounds} rounds, {args.model}, validation: "
          f"{args.validation} test examples")
    for c, what in PLANTED.items():
        print(f"  client {c}: {what} ({sizes[c]} examples)")
    started = time.perf_counter()
    history = simulate(trainer, planted, params, strategy=FedAvg(fit),
                       rounds=args.rounds, clients_per_round=args.per_round, engine=args.engine, seed=args.seed,
                       out=args.out, evaluation=Evaluation(every=5, federated=False),
                       parts=_parts(args))
    print(f"utility {args.utility}, coalition {args.coalition}; "
          f"GTG-Shapley eps {args.eps}, permutations {args.permutations or 'ten cycles'}; "
          f"wall time {time.perf_counter() - started:.0f} s; "
          f"final test accuracy {history.rounds[-1]['test_accuracy']:.1%}")
    report(history)


def _parts(args):
    from fedstack.loop import Parts

    return Parts(contribution=ContributionOptions(methods=METHODS, validation=None, test_examples=args.validation,
                                                  eps=args.eps, permutations=args.permutations, utility=args.utility,
                                                  coalition=args.coalition))


def report(history) -> None:
    rhos, loo_rhos, shares, seconds = [], [], [], {m: [] for m in METHODS}
    previous = 0.0
    for r in history.rounds:
        c = r["contribution"]["methods"]
        ids = list(c["shapley"]["scores"])
        exact = [c["shapley"]["scores"][i] for i in ids]
        rho = spearman(exact, [c["gtg"]["scores"][i] for i in ids])
        loo = spearman(exact, [c["loo"]["scores"][i] for i in ids])
        if not np.isnan(rho):
            rhos.append(rho)
        if not np.isnan(loo):
            loo_rhos.append(loo)
        shares.append(c["gtg"]["evaluations"] / c["shapley"]["evaluations"])
        scoring = sum(m["seconds"] for m in c.values())
        training = r["wall_time_s"] - previous - scoring  # the round's own time but its scoring
        previous = r["wall_time_s"]
        for m in METHODS:
            seconds[m].append(c[m]["seconds"] / training)
    print(f"\nper round (median over {len(history.rounds)} rounds):")
    print(f"  GTG-Shapley vs exact Shapley: Spearman ρ {statistics.median(rhos):.3f} (min {min(rhos):.3f}), "
          f"evaluations {statistics.median(shares):.1%} of exact's ({min(shares):.1%}..{max(shares):.1%}); "
          f"rounds with ρ ≥ 0.9: {sum(r >= 0.9 for r in rhos)}/{len(rhos)}")
    first, second = rhos[:len(rhos) // 2], rhos[len(rhos) // 2:]
    print(f"  GTG ρ, median of the first half of the rounds {statistics.median(first):.3f}, of the second "
          f"{statistics.median(second):.3f}")
    print(f"  leave-one-out vs exact Shapley: Spearman ρ {statistics.median(loo_rhos):.3f}")
    print("  seconds of scoring per second of the round's training: " +
          ", ".join(f"{m} {statistics.median(v):.2f}×" for m, v in seconds.items()))
    goal_rho = statistics.median(rhos) >= 0.9 and statistics.median(shares) <= 0.15
    print(f"goal GTG ρ ≥ 0.9 at ≤ 15 % of exact's evaluations: {'met' if goal_rho else 'NOT met'}")
    print("\naccumulated over the run (rank 1 = most):")
    bad = {ZERO_RIDER, NOISE_RIDER, *FLIPPERS}
    for method in METHODS:
        totals = history.contributions(method)
        ranked = sorted(totals, key=lambda c: -totals[c])
        where = {c: ranked.index(c) + 1 for c in PLANTED if c in totals}
        bottom = set(ranked[-4:])
        top = set(ranked[:4])
        print(f"  {method:8s} " + "  ".join(f"{c}:{where[c]}" for c in PLANTED if c in where) +
              f"   bad in bottom 4: {len(bad & bottom)}/4" + (f", rich in top 4: {len(set(RICH) & top)}/2"
                                                            if method == "shapley" else ""))
        print("           totals: " + ", ".join(f"{c}={totals[c]:+.3f}" for c in ranked))
    print("(clients: " + "; ".join(f"{c} {what}" for c, what in PLANTED.items()) + ")")


if __name__ == "__main__":
    main()
