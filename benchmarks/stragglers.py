"""FedAvg dropping stragglers vs FedProx with partial work on Synthetic(1,1), 50% and 90% stragglers.

Li et al. 2020, "Federated Optimization in Heterogeneous Networks", Figures 1-2 (systems heterogeneity):
30 devices, multinomial logistic regression, 10 clients per round, E = 20 local epochs, batch 10,
lr 0.01; x% of the devices are stragglers that can do only a random amount of work between 1 and E
epochs. FedAvg drops them; "FedProx μ=0" aggregates their partial work; "FedProx μ=1" adds the
proximal term too. The result to hold: with stragglers FedProx converges where FedAvg degrades.

    cd benchmarks && PYTHONPATH=../src python stragglers.py [--rounds 50] [--out runs/bench-stragglers]

Stragglers are modelled with fedstack's own fleet (no special code path): a trace CSV per fraction
(`systems.profile="trace"`), a deadline of DEADLINE_S simulated seconds and 1e6 Mbit/s links (transfers
take ~0 s). numpy seed TRACE_SEED orders the 30 devices (the first x% are stragglers, so the 50% set is
inside the 90% set) and draws each device's epochs e ~ U[1, 20). A straggler with n examples trains at
e·n / DEADLINE_S samples/s: its full E epochs miss the deadline, and with `client.partial_work` the
server asks it for the ⌊e·n / 10⌋ steps that fit (≈ e epochs). The others train at 2·E·n / DEADLINE_S,
finishing at half the deadline. Unlike the paper, which re-draws stragglers every round, the fleet is
fixed: the same devices are always slow (arguably more realistic). Stragglers are x% of the fleet, so
x% of the selected devices in expectation. `server.round_retries=0` as in the paper: a FedAvg round
whose clients are all late keeps the global model. fedstack refuses fedprox with μ=0 ("it is fedavg"),
so "μ=0 + partial work" is fedavg with `client.partial_work=true`.

Prints, per fraction and method: the final and min training loss (of the global model on every
device's training data, after each round), the final test accuracy, the mean per round of clients
that did partial work and of those dropped at the deadline; then whether FedProx μ=1 ends at lower
training loss than FedAvg. Writes runs/stragglers.png (training loss per round, one panel a fraction).
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

FRACTIONS = (0.5, 0.9)
EPOCHS, DEADLINE_S, TRACE_SEED, MBPS = 20, 100.0, 0, 1e6
BASE = ["data.name=synthetic", "data.partition=natural", "data.num_clients=30", "data.alpha=1.0", "data.beta=1.0",
        "data.holdout=0", "model.name=logreg", "server.clients_per_round=10", f"client.epochs={EPOCHS}",
        "client.batch_size=10", "client.lr=0.01", "eval.federated=false", "engine.name=pool",
        f"server.deadline_s={DEADLINE_S}", "server.round_retries=0", "systems.profile=trace"]
METHODS = {"FedAvg (drop stragglers)": ["server.strategy=fedavg"],
           "μ=0 + partial work": ["server.strategy=fedavg", "client.partial_work=true"],
           "FedProx μ=1 (partial work)": ["server.strategy=fedprox", "client.mu=1.0", "client.partial_work=true"]}


def write_trace(sizes: list[int], fraction: float, path: Path) -> None:
    """The fleet: the first `fraction` of a seeded permutation are stragglers doing e ~ U[1, E) epochs."""
    rng = np.random.default_rng(TRACE_SEED)
    order, epochs = rng.permutation(len(sizes)), rng.uniform(1, EPOCHS, len(sizes))
    slow = set(order[:round(fraction * len(sizes))].tolist())
    lines = ["client_id,samples_per_s,down_mbps,up_mbps"]
    for cid, n in enumerate(sizes):
        speed = epochs[cid] * n / DEADLINE_S if cid in slow else 2 * EPOCHS * n / DEADLINE_S
        lines.append(f"{cid},{float(speed)!r},{MBPS},{MBPS}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def run(trace: Path, method: list[str], rounds: int, out: Path) -> dict:
    config = load_config(None, [*BASE, f"systems.trace={trace}", f"server.rounds={rounds}", *method])
    shutil.rmtree(out, ignore_errors=True)  # a fresh run, not the resumption of an old one
    dataset = dataset_of(config)
    trainer = make_trainer("logreg", tuple(dataset.x.shape[1:]), dataset.num_classes, "sgd")
    train_idx = np.concatenate(dataset.train_idx)
    losses: list[float] = []

    def training_loss(record, params):
        losses.append(trainer.evaluate(params, dataset.x[train_idx], dataset.y[train_idx]).loss)

    history = run_config(config, out, on_round=[training_loss], dataset=dataset)
    rs = history.rounds
    return {"loss": losses, "accuracy": rs[-1]["test_accuracy"],
            "partial": float(np.mean([r["partial"] for r in rs])),
            "late": float(np.mean([r["failures_by_kind"]["deadline"] for r in rs]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50, help="the paper runs 200; 50 take ~40 min here (6 runs)")
    parser.add_argument("--out", default="runs/bench-stragglers")
    parser.add_argument("--plot", default="runs/stragglers.png")
    args = parser.parse_args()
    out = Path(args.out)
    base = load_config(None, BASE[:-1])  # the data only; the fleet is written next
    sizes = [len(idx) for idx in dataset_of(base).train_idx]
    results = {}
    for fraction in FRACTIONS:
        pct = round(100 * fraction)
        trace = (out / f"trace-{pct}.csv").resolve()
        write_trace(sizes, fraction, trace)
        print(f"\n{pct}% stragglers (trace {trace})\n{'method':28s} {'final loss':>10s} {'min loss':>9s} "
              f"{'test acc':>8s} {'partial/rd':>10s} {'late/rd':>8s}", flush=True)
        for method, overrides in METHODS.items():
            slug = f"{pct}-" + method.split(" (")[0].replace(" ", "_").replace("=", "").replace("+", "")
            r = results[fraction, method] = run(trace, overrides, args.rounds, out / slug)
            print(f"{method:28s} {r['loss'][-1]:10.4f} {min(r['loss']):9.4f} {r['accuracy']:8.2%} "
                  f"{r['partial']:10.2f} {r['late']:8.2f}", flush=True)
        a, b = results[fraction, "FedAvg (drop stragglers)"], results[fraction, "FedProx μ=1 (partial work)"]
        held = b["loss"][-1] < a["loss"][-1]
        print(f"{pct}% stragglers: FedProx μ=1 ends at lower training loss than FedAvg: {held} "
              f"({b['loss'][-1]:.4f} vs {a['loss'][-1]:.4f})", flush=True)
    plot(results, args.rounds, Path(args.plot))


def plot(results: dict, rounds: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(FRACTIONS), figsize=(11, 4))
    x = np.arange(1, rounds + 1)
    for ax, fraction in zip(axes, FRACTIONS):
        for method in METHODS:
            ax.plot(x, results[fraction, method]["loss"], label=method)
        ax.set(title=f"Synthetic(1,1), {fraction:.0%} stragglers", xlabel="round", ylabel="training loss",
               yscale="log")
    save_figure(fig, axes, path)


if __name__ == "__main__":
    main()
