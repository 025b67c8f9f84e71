"""FedAvg vs FedProx (μ = 1) on Synthetic(1,1) and Synthetic(0,0), as in Figure 1 of the FedProx paper.

Li et al. 2020, "Federated Optimization in Heterogeneous Networks": 30 devices, multinomial logistic
regression, 10 clients per round, 20 local epochs, batch 10, lr 0.01, 200 rounds. The result to hold:
on Synthetic(1,1) FedProx with μ > 0 is more stable and ends at lower training loss than FedAvg.

    python benchmarks/fedprox_synthetic.py [--rounds 200] [--out runs/bench-fedprox]

Training loss is the loss of the global model over every device's training data after each round;
"instability" is the mean absolute round-to-round change of it over the second half of the run.
Writes fedprox_synthetic.png (training loss and test accuracy per round, both data sets).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np

from common import save_figure
from fedstack.plan import load_config
from fedstack.experiment import run_config
from fedstack.plan import dataset_of, make_trainer

SETUPS = {"Synthetic(1,1)": (1.0, 1.0), "Synthetic(0,0)": (0.0, 0.0)}
METHODS = {"FedAvg": ["server.strategy=fedavg"], "FedProx μ=1": ["server.strategy=fedprox", "client.mu=1.0"]}


def run(alpha: float, beta: float, method: list[str], rounds: int, out: Path) -> dict:
    config = load_config(None, [
        "data.name=synthetic", "data.partition=natural", "data.num_clients=30", f"data.alpha={alpha}",
        f"data.beta={beta}", "data.holdout=0", "model.name=logreg", "server.clients_per_round=10",
        f"server.rounds={rounds}", "client.epochs=20", "client.batch_size=10", "client.lr=0.01",
        "eval.federated=false", "engine.name=pool", *method])
    shutil.rmtree(out, ignore_errors=True)  # a fresh run, not the resumption of an old one
    dataset = dataset_of(config)
    trainer = make_trainer("logreg", tuple(dataset.x.shape[1:]), dataset.num_classes, "sgd")
    train_idx = np.concatenate(dataset.train_idx)
    losses: list[float] = []

    def training_loss(record, params):
        losses.append(trainer.evaluate(params, dataset.x[train_idx], dataset.y[train_idx]).loss)

    history = run_config(config, out, on_round=[training_loss], dataset=dataset)
    return {"loss": losses, "accuracy": [r["test_accuracy"] for r in history.rounds]}


def instability(losses: list[float]) -> float:
    half = np.asarray(losses[len(losses) // 2:])
    return float(np.abs(np.diff(half)).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--out", default="runs/bench-fedprox")
    args = parser.parse_args()
    out = Path(args.out)
    results = {}
    for setup, (alpha, beta) in SETUPS.items():
        for method, overrides in METHODS.items():
            slug = f"{setup}-{method}".replace(" ", "_").replace("(", "").replace(")", "").replace(",", "_")
            results[setup, method] = run(alpha, beta, overrides, args.rounds, out / slug)
            r = results[setup, method]
            print(f"{setup:15s} {method:12s} final train loss {r['loss'][-1]:.4f}  min {min(r['loss']):.4f}  "
                  f"instability {instability(r['loss']):.4f}  final test acc {r['accuracy'][-1]:.2%}", flush=True)
    a, b = results["Synthetic(1,1)", "FedAvg"], results["Synthetic(1,1)", "FedProx μ=1"]
    lower = b["loss"][-1] < a["loss"][-1]
    stabler = instability(b["loss"]) < instability(a["loss"])
    print(f"Synthetic(1,1): FedProx ends at lower training loss: {lower}; is more stable: {stabler}")
    plot(results, args.rounds, out / "fedprox_synthetic.png")


def plot(results: dict, rounds: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    x = np.arange(1, rounds + 1)
    for row, setup in enumerate(SETUPS):
        for method in METHODS:
            r = results[setup, method]
            axes[row, 0].plot(x, r["loss"], label=method)
            axes[row, 1].plot(x, r["accuracy"], label=method)
        axes[row, 0].set(title=f"{setup}: training loss", xlabel="round", ylabel="loss", yscale="log")
        axes[row, 1].set(title=f"{setup}: test accuracy", xlabel="round", ylabel="accuracy")
    save_figure(fig, axes.flat, path)


if __name__ == "__main__":
    main()
