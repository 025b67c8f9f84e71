"""Local updating: rounds to 75 % test accuracy on the default workload with 1, 2 and 5 local epochs.

More local work per round trades computation for communication (McMahan et al. 2017, Table 2).
Each run stops at the round that first reaches the target, or after --rounds (default 20).

    python benchmarks/local_steps.py [--epochs 1,2,5] [--rounds 20] [--out runs/bench-local-steps]

Prints, per setting: rounds to 75 %, local SGD steps per client per round, the accuracy curve and the
wall time; writes local_steps.png (accuracy per round, and per cumulative upload).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from common import save_figure
from fedstack.plan import load_config
from fedstack.experiment import run_config

TARGET = 0.75


class Reached(Exception):
    """Raised by the round callback once the target accuracy is reached: the run has answered."""


def stop_at(target: float):
    def callback(record, params):
        if record["test_accuracy"] is not None and record["test_accuracy"] >= target:
            raise Reached()
    return callback


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", default="1,2,5")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--out", default="runs/bench-local-steps")
    args = parser.parse_args()
    curves = {}
    for epochs in [int(e) for e in args.epochs.split(",")]:
        out = Path(args.out) / f"epochs{epochs}"
        shutil.rmtree(out, ignore_errors=True)  # a fresh run, not the resumption of an old one
        config = load_config(None, [f"client.epochs={epochs}", f"server.rounds={args.rounds}", "eval.federated=false"])
        records = []
        try:
            run_config(config, out, on_round=[lambda record, params: records.append(record), stop_at(TARGET)])
        except Reached:
            pass
        curves[epochs] = records
        reached = records[-1]["test_accuracy"] >= TARGET
        curve = " ".join(f"{r['test_accuracy']:.3f}" for r in records)
        print(f"epochs {epochs}: rounds to {TARGET:.0%}: {len(records) if reached else '>' + str(args.rounds)}  "
              f"accuracy {curve}  wall {records[-1]['wall_time_s']:.0f} s", flush=True)
    plot(curves, Path(args.out) / "local_steps.png")


def plot(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_round, by_bytes) = plt.subplots(1, 2, figsize=(11, 4))
    for epochs, records in curves.items():
        accuracy = [r["test_accuracy"] for r in records]
        uploaded, total = [], 0
        for r in records:
            total += r["bytes_up"] / 2**20
            uploaded.append(total)
        by_round.plot(range(1, len(records) + 1), accuracy, marker="o", label=f"{epochs} local epoch(s)")
        by_bytes.plot(uploaded, accuracy, marker="o", label=f"{epochs} local epoch(s)")
    for ax, xlabel in ((by_round, "round"), (by_bytes, "cumulative MiB uploaded")):
        ax.axhline(TARGET, color="grey", linestyle="--")
        ax.set(xlabel=xlabel, ylabel="test accuracy", title="Default workload: local epochs")
    save_figure(fig, (by_round, by_bytes), path)


if __name__ == "__main__":
    main()
