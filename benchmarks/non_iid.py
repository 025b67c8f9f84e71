"""FedAvg, FedProx, SCAFFOLD and FedAdam on Fashion-MNIST split by Dirichlet(α), α ∈ {0.1, 0.5}.

100 clients, 10 per round, up to 100 rounds: the number of rounds each needs to reach 70 % test
accuracy, and the accuracy after the last round, as a table and a plot (non_iid.png).
Goal (issue 4): SCAFFOLD or FedAdam reaches 70 % in fewer rounds than FedAvg at α = 0.1.

    python benchmarks/non_iid.py [--rounds 100] [--model mlp] [--out runs/bench-non-iid]

The model is McMahan's 2NN (`mlp`) by default: 8 runs of 100 rounds of the CNN take hours on two
cores. Local work: 1 epoch, batch 32, lr 0.05 (the defaults of `fedstack run`).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from common import save_figure
from fedstack.plan import load_config
from fedstack.experiment import run_config

TARGET = 0.70
METHODS = {
    "FedAvg": ["server.strategy=fedavg"],
    "FedProx μ=0.1": ["server.strategy=fedprox", "client.mu=0.1"],
    "SCAFFOLD": ["server.strategy=scaffold"],
    "FedAdam": ["server.strategy=fedadam", "server.server_lr=0.01"],
}


def rounds_to(accuracy: list[float], target: float) -> int | None:
    """The first round (1-based) whose test accuracy reaches `target`, or None."""
    return next((i + 1 for i, a in enumerate(accuracy) if a >= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--alphas", default="0.1,0.5")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--out", default="runs/bench-non-iid")
    args = parser.parse_args()
    alphas = [float(a) for a in args.alphas.split(",")]
    methods = args.methods.split(",")
    curves = {}
    for alpha in alphas:
        for method in methods:
            out = Path(args.out) / f"alpha{alpha}-{method.split()[0]}"
            shutil.rmtree(out, ignore_errors=True)  # a fresh run, not the resumption of an old one
            config = load_config(None, [
                "data.name=fashion_mnist", "data.partition=dirichlet", f"data.alpha={alpha}",
                "data.num_clients=100", f"model.name={args.model}", "server.clients_per_round=10",
                f"server.rounds={args.rounds}", "eval.federated=false", "engine.name=pool", *METHODS[method]])
            history = run_config(config, out)
            curves[alpha, method] = [r["test_accuracy"] for r in history.rounds]
            acc = curves[alpha, method]
            reached = rounds_to(acc, TARGET) or f">{args.rounds}"
            print(f"α={alpha:<4} {method:14s} rounds to {TARGET:.0%}: {reached:>5}"
                  f"  final {acc[-1]:.2%}  best {max(acc):.2%}  wall {history.rounds[-1]['wall_time_s']:.0f} s",
                  flush=True)
    print(f"\n| α | method | rounds to {TARGET:.0%} | final accuracy |\n|---|---|---|---|")
    for (alpha, method), acc in curves.items():
        print(f"| {alpha} | {method} | {rounds_to(acc, TARGET) or '> ' + str(args.rounds)} | {acc[-1]:.2%} |")
    if 0.1 in alphas and "FedAvg" in methods:
        base = rounds_to(curves[0.1, "FedAvg"], TARGET) or float("inf")
        better = [m for m in ("SCAFFOLD", "FedAdam") if m in methods
                  and (rounds_to(curves[0.1, m], TARGET) or float("inf")) < base]
        print(f"goal (SCAFFOLD or FedAdam faster than FedAvg to {TARGET:.0%} at α=0.1): "
              f"{'met by ' + ', '.join(better) if better else 'NOT met'}")
    plot(curves, Path(args.out) / "non_iid.png")


def plot(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    alphas = sorted({a for a, _ in curves})
    fig, axes = plt.subplots(1, len(alphas), figsize=(6 * len(alphas), 4), squeeze=False)
    for ax, alpha in zip(axes[0], alphas):
        for (a, method), acc in curves.items():
            if a == alpha:
                ax.plot(range(1, len(acc) + 1), acc, label=method)
        ax.axhline(TARGET, color="grey", linestyle="--")
        ax.set(title=f"Fashion-MNIST, Dirichlet α = {alpha}", xlabel="round", ylabel="test accuracy")
    save_figure(fig, axes[0], path)


if __name__ == "__main__":
    main()
