"""Time to accuracy on a heterogeneous, unreliable fleet: waiting for all, deadlines, FedBuff, Oort.

The default workload (FedAvg, CNN, Fashion-MNIST, Dirichlet 0.5, 100 clients, 10 per round, E = 1,
B = 32, lr 0.05) on a simulated fleet: log-normal speeds with σ = 1 (median 100 samples/s), the
wifi / 4g / 3g bandwidth tiers mixed 50 / 30 / 20 %, and a 20 % chance that a client drops out of
its task. Simulated hours to reach 75 % test accuracy for

    (a) sync       FedAvg, each round waits for every sampled client that did not drop out;
    (b) deadline   FedAvg with server.deadline_s = 30 and 30 % over-selection (13 asked, the first 10 kept);
    (c) fedbuff    FedBuff, 20 clients training at once, a server step per 10 updates;
    (d) oort       FedAvg waiting for all, clients chosen by the Oort sampler.

Goal (issue 6): (b) and (c) each reach 75 % in at most half the simulated time of (a). It also
prints each mode's final and best accuracy after the same number of server steps — the price of a
bias toward fast clients, if any — and writes heterogeneity.png (accuracy against simulated hours).

    python benchmarks/heterogeneity.py [--rounds 30] [--modes sync,deadline,fedbuff,oort] [--seed 0]
                                       [--out runs/bench-heterogeneity]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from common import save_figure
from fedstack.plan import load_config
from fedstack.experiment import run_config

FLEET = ["systems.profile=heterogeneous", "systems.speed_sigma=1.0", "systems.tier_mix=[0.5, 0.3, 0.2]",
         "systems.dropout=0.2", "eval.federated=false"]
MODES = {
    "sync": [],
    "deadline": ["server.deadline_s=30", "server.overselect=0.3"],
    "fedbuff": ["server.strategy=fedbuff", "server.concurrency=20", "server.buffer_size=10"],
    "oort": ["server.sampler=oort"],
}
TARGET = 0.75


def run(mode: str, rounds: int, out: Path, seed: int = 0) -> dict:
    """Run one mode; its records and the wall time it took."""
    config = load_config(None, [*FLEET, *MODES[mode], f"server.rounds={rounds}", f"seed={seed}"])
    shutil.rmtree(out, ignore_errors=True)  # a fresh run, not the resumption of an old one
    started = time.perf_counter()
    history = run_config(config, out)
    return {"rounds": history.rounds, "wall_s": time.perf_counter() - started}


def hours_to(rounds: list[dict], target: float) -> float | None:
    """Simulated hours until the test accuracy first reaches `target`, or None if it never does."""
    for r in rounds:
        if r["test_accuracy"] is not None and r["test_accuracy"] >= target:
            return r["sim_time_s"] / 3600
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=30, help="server steps per mode (rounds, or FedBuff steps)")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--out", type=Path, default=Path("runs/bench-heterogeneity"))
    parser.add_argument("--seed", type=int, default=0, help="run seed: data split, fleet, sampling, dropouts")
    args = parser.parse_args()
    modes = args.modes.split(",")
    results = {mode: run(mode, args.rounds, args.out / mode, args.seed) for mode in modes}

    print(f"\nsimulated time to {TARGET:.0%} test accuracy ({args.rounds} server steps per mode, seed {args.seed})")
    print(f"{'mode':<10} {'hours to 75%':>13} {'vs sync':>8} {'final acc':>10} {'best acc':>9} {'sim hours':>10} "
          f"{'clients':>8} {'failures (dropout/deadline/unavailable)':>40} {'wall s':>7}")
    base = hours_to(results["sync"]["rounds"], TARGET) if "sync" in results else None
    for mode, result in results.items():
        rounds = result["rounds"]
        reached = hours_to(rounds, TARGET)
        ratio = f"{reached / base:.2f}" if reached is not None and base else "-"
        accuracies = [r["test_accuracy"] for r in rounds if r["test_accuracy"] is not None]
        kinds = {k: sum(r["failures_by_kind"][k] for r in rounds) for k in ("dropout", "deadline", "unavailable")}
        print(f"{mode:<10} {'not reached' if reached is None else f'{reached:.3f}':>13} {ratio:>8} "
              f"{accuracies[-1]:>10.4f} {max(accuracies):>9.4f} {rounds[-1]['sim_time_s'] / 3600:>10.3f} "
              f"{sum(r['clients'] for r in rounds):>8} {'/'.join(map(str, kinds.values())):>40} "
              f"{result['wall_s']:>7.0f}")
    if base:
        for mode in ("deadline", "fedbuff"):
            if mode in results:
                reached = hours_to(results[mode]["rounds"], TARGET)
                met = reached is not None and reached <= base / 2
                verdict = "met" if met else "NOT met"
                print(f"goal: {mode} reaches {TARGET:.0%} in at most half of sync's time: {verdict}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mode, result in results.items():
        points = [(r["sim_time_s"] / 3600, r["test_accuracy"]) for r in result["rounds"] if r["test_accuracy"]]
        ax.plot(*zip(*points), marker=".", label=mode)
    ax.axhline(TARGET, color="grey", linestyle=":", label=f"{TARGET:.0%}")
    ax.set_xlabel("simulated hours")
    ax.set_ylabel("test accuracy")
    ax.set_title("Heterogeneous fleet (σ = 1, 3 tiers, 20 % dropout)")
    save_figure(fig, [ax], args.out / "heterogeneity.png")


if __name__ == "__main__":
    main()
