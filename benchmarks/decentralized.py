"""Decentralized D-PSGD on ring, torus and complete graphs against FedAvg with every client in every round.

The default workload of `fedstack run` (Fashion-MNIST, `cnn`, Dirichlet α = 0.5, client.* defaults:
1 epoch, batch 32, lr 0.05) on 16 nodes for 20 rounds. FedAvg trains the same 16 clients, all of them
each round (server.clients_per_round = 16), so both do the same local steps. Prints, per topology,
the final test accuracy of the average model x̄, its gap to FedAvg in points, the final consensus
distance mean_i ‖x_i − x̄‖², and the bytes a node sends per round (FedAvg: what a client uploads;
the server also sends each client the model); then whether "complete within 3 points of FedAvg"
holds, and plots accuracy per round for all runs (decentralized.png).

On the complete graph Metropolis–Hastings weights are all 1/n, so one D-PSGD round is the plain
average of the locally trained models; FedAvg weights by clients' example counts instead, the only
difference between the two (Dirichlet clients differ in size).

    python benchmarks/decentralized.py [--rounds 20] [--model cnn] [--dataset fashion_mnist] [--nodes 16]
                                       [--out runs/bench-decentralized]

Every run starts fresh: its run directory is deleted first (a FedAvg run directory with the same
config would resume instead).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from common import save_figure
from fedstack.plan import load_config
from fedstack.experiment import run_config

GOAL_POINTS = 3.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--nodes", type=int, default=16)
    parser.add_argument("--topologies", default="ring,torus,complete")
    parser.add_argument("--out", default="runs/bench-decentralized")
    args = parser.parse_args()
    common = [f"data.name={args.dataset}", "data.partition=dirichlet", "data.alpha=0.5",
              f"data.num_clients={args.nodes}", f"model.name={args.model}", f"server.rounds={args.rounds}",
              f"server.clients_per_round={args.nodes}", "eval.federated=false"]
    runs = {"FedAvg": ["server.strategy=fedavg"],
            **{name: [f"decentralized.topology={name}"] for name in args.topologies.split(",")}}
    results = {}
    for name, overrides in runs.items():
        out = Path(args.out) / name.lower()
        shutil.rmtree(out, ignore_errors=True)  # a fresh run, not the resumption of an old one
        history = run_config(load_config(None, [*common, *overrides]), out)
        results[name] = history.rounds
        last = history.rounds[-1]
        print(f"{name:10s} final accuracy {last['test_accuracy']:.2%}  wall {last['wall_time_s']:.0f} s", flush=True)

    fedavg = results["FedAvg"][-1]["test_accuracy"]
    print(f"\n{args.nodes} nodes, {args.rounds} rounds, {args.model} on {args.dataset} (Dirichlet α = 0.5)\n")
    print("| topology | final accuracy of x̄ | gap to FedAvg (points) | mean node accuracy* | consensus distance "
          "| bytes sent per node per round |")
    print("|---|---|---|---|---|---|")
    for name, rounds in results.items():
        last = rounds[-1]
        gap = (last["test_accuracy"] - fedavg) * 100
        if name == "FedAvg":
            per_node = sum(r["bytes_up"] / r["clients"] for r in rounds) / len(rounds)
            consensus = node = "-"
        else:
            node = f"{last['node_accuracy_mean']:.2%}"
            per_node = sum(r["bytes_per_node"] for r in rounds) / len(rounds)
            consensus = f"{last['consensus_distance']:.3g}"
        print(f"| {name} | {last['test_accuracy']:.2%} | {gap:+.2f} | {node} | {consensus} | {human(per_node)} |")
    print("\n* each node's own model on the first 2000 test examples")
    if "complete" in results:
        gap = abs(results["complete"][-1]["test_accuracy"] - fedavg) * 100
        print(f"\ngoal (complete within {GOAL_POINTS:g} points of FedAvg): "
              f"{'holds' if gap <= GOAL_POINTS else 'does NOT hold'} ({gap:.2f} points)")
    plot(results, Path(args.out) / "decentralized.png", args)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1024
    return f"{n:.1f} GiB"


def plot(results: dict, path: Path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (acc_ax, cons_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, rounds in results.items():
        evaluated = [r for r in rounds if r.get("test_accuracy") is not None]
        acc_ax.plot([r["round"] for r in evaluated], [r["test_accuracy"] for r in evaluated], marker="o",
                    label=name if name == "FedAvg" else f"D-PSGD {name} (x̄)")
        if name != "FedAvg":
            cons_ax.plot([r["round"] for r in rounds], [max(r["consensus_distance"], 1e-12) for r in rounds],
                         marker="o", label=name)
    acc_ax.set(title=f"{args.dataset}, {args.model}, {args.nodes} nodes, Dirichlet α = 0.5", xlabel="round",
               ylabel="test accuracy")
    cons_ax.set(title="consensus distance mean ‖xᵢ − x̄‖² (0 drawn at 1e-12)", xlabel="round", yscale="log")
    for ax in (acc_ax, cons_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    save_figure(fig, (acc_ax, cons_ax), path)


if __name__ == "__main__":
    main()
