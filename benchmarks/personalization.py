"""Personalised and clustered training against the baselines: each client's own model on its held-out data.

Three workloads on Fashion-MNIST with 100 clients, and Synthetic(1, 1) (issue 21):

- `shards`: two classes per client, 10 clients per round. Ditto, APFL, FedRep and FedPer against global FedAvg,
  FedAvg + fine-tuning (each client fine-tunes the final global model) and local-only training.
  Goal: Ditto and FedRep reach a mean personal held-out accuracy >= 95 % with a 10th percentile >= 90 %.
- `dirichlet`: Dir(0.1) labels, the same methods. Goal: every personalised method >= FedAvg + fine-tuning
  − 1 point on the mean and better on the 10th percentile.
- `synthetic`: Synthetic(1, 1) (one device per client, 30 clients, logistic regression). Goal: Ditto's
  personal accuracy >= FedAvg's global accuracy + 10 points.
- `clusters`: 4 planted groups of 25 clients, the images rotated by 0/90/180/270° (IFCA's rotated
  construction); IFCA (k = 4, 10 clients per round) and CFL (every client every round) against global
  FedAvg. Goal: adjusted Rand index >= 0.95 within 20 rounds and a mean accuracy >= FedAvg's + 10 points.

For each method: the mean, 10th, 50th and 90th percentile of the clients' held-out accuracy (the global
model's for FedAvg, the fine-tuned global model's for FedAvg + fine-tuning, each client's own model for
the others), the bytes sent per round, the wall time, a round's median wall time against FedAvg's (goal:
Ditto and FedRep <= 1.6x) and a client's upload against the model's size (goal: FedPer and FedRep send the
body alone); a plot of the mean accuracy by round (personalization.png).

    python benchmarks/personalization.py [--workloads shards,dirichlet,clusters] [--rounds 50]
                                         [--model cnn] [--out runs/bench-personalization]

The CNN is the issue's model; on two cores a full run of every workload takes hours (FedRep trains the
head for `personal.head_epochs` extra epochs a round): `--model mlp --rounds 20` is a quick look.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np

from common import name_list, save_figure
from fedstack.experiment import run_config
from fedstack.plan import load_config

# method -> (overrides, the distribution that judges it)
METHODS = {
    "fedavg": (["server.strategy=fedavg"], "federated"),
    "fedavg+ft": (["server.strategy=fedavg", "eval.finetune_steps=20"], "personalized"),
    "local_only": (["server.strategy=local_only"], "personal"),
    "ditto": (["server.strategy=ditto", "personal.lam=0.1"], "personal"),
    "apfl": (["server.strategy=apfl", "personal.alpha=0.25"], "personal"),
    "fedrep": (["server.strategy=fedrep", "personal.head_epochs=5"], "personal"),
    "fedper": (["server.strategy=fedper"], "personal"),
    "ifca": (["server.strategy=ifca", "personal.clusters=4", "personal.ifca_revive=3"], "personal"),
    "cfl": (["server.strategy=cfl", "server.clients_per_round=100", "personal.cfl_warmup=5", "personal.cfl_eps1=0.3",
             "personal.cfl_eps2=0.5"], "personal"),
}
FASHION = ["data.name=fashion_mnist", "data.num_clients=100"]  # the model: --model
WORKLOADS = {
    "shards": ([*FASHION, "data.partition=shards"],
               ["fedavg", "fedavg+ft", "local_only", "ditto", "apfl", "fedrep", "fedper"]),
    "dirichlet": ([*FASHION, "data.partition=dirichlet", "data.alpha=0.1"],
                  ["fedavg", "fedavg+ft", "local_only", "ditto", "apfl", "fedrep", "fedper"]),
    "clusters": ([*FASHION, "data.partition=clusters", "data.clusters=4", "data.cluster_transform=rotate"],
                 ["fedavg", "ifca", "cfl"]),
    # Synthetic(1, 1) of Li et al. (FedProx): 30 devices, each its own distribution; their logistic regression
    "synthetic": (["data.name=synthetic", "data.partition=natural", "data.alpha=1", "data.beta=1",
                   "data.num_clients=30", "model.name=logreg"], ["fedavg", "fedavg+ft", "local_only", "ditto"]),
}


def run(workload: str, method: str, args) -> dict:
    """One run's figures: the judging distribution after the last round, bytes per round, wall time, and
    for clustered methods the first round whose adjusted Rand index reaches 0.95."""
    data, _ = WORKLOADS[workload]
    overrides, judged_by = METHODS[method]
    out = Path(args.out) / workload / method
    shutil.rmtree(out, ignore_errors=True)  # a fresh run, not the resumption of an old one
    config = load_config(None, [f"model.name={args.model}", "server.clients_per_round=10",
                                f"server.rounds={args.rounds}", "engine.name=pool", f"eval.every={args.eval_every}",
                                "eval.federated_every=0", *data, *overrides])
    started = time.perf_counter()
    history = run_config(config, out)
    seconds = time.perf_counter() - started
    last = history.rounds[-1]
    spread = last.get(judged_by) or {}
    aris = [(r["round"], r["cluster_ari"]) for r in history.rounds if r.get("cluster_ari") is not None]
    traffic = sum(r["bytes_up"] + r["bytes_down"] for r in history.rounds) / len(history.rounds)
    # a round's wall time: the median over rounds (rounds that also evaluate take longer), and each client's
    # upload against the shared part's size (the model's, but for FedPer's and FedRep's head)
    ends = [0.0, *(r["wall_time_s"] for r in history.rounds)]
    uploads = [r["bytes_up"] / r["clients"] for r in history.rounds if r["clients"]]
    return {"spread": spread, "bytes": traffic, "round_s": float(np.median(np.diff(ends))),
            "upload": max(uploads, default=0), "model_bytes": 4 * one_model_size(history),
            "seconds": seconds, "ari": aris[-1][1] if aris else None,
            "ari_round": next((rnd for rnd, ari in aris if ari >= 0.95), None),
            "curve": [(r["round"], r[judged_by]["mean"]) for r in history.rounds if r.get(judged_by)]}


def one_model_size(history) -> int:
    """How many parameters one model has (clustered training stacks several in `params`)."""
    return next(iter(history.personal.values())).size if history.personal else history.params.size


def percent(value) -> str:
    return "   -  " if value is None else f"{100 * value:5.1f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--methods", default="", help="only these methods (default: each workload's)")
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--out", default="runs/bench-personalization")
    args = parser.parse_args()
    workloads = name_list(parser, "--workloads", args.workloads, WORKLOADS)
    only = name_list(parser, "--methods", args.methods, METHODS)
    results: dict = {}
    for workload in workloads:
        print(f"\n{workload} ({args.model}, {args.rounds} rounds): clients' held-out accuracy")
        print(f"{'method':11s} {'mean':>6s} {'p10':>6s} {'p50':>6s} {'p90':>6s} {'MB/round':>9s} {'ARI':>5s} "
              f"{'ARI>=.95':>8s} {'wall s':>7s} {'round s':>7s} {'x FedAvg':>8s} {'up/model':>8s}")
        for method in WORKLOADS[workload][1]:
            if only and method not in only:
                continue
            r = results[workload, method] = run(workload, method, args)
            s = r["spread"]
            print(f"{method:11s} {percent(s.get('mean'))} {percent(s.get('p10'))} {percent(s.get('p50'))} "
                  f"{percent(s.get('p90'))} {r['bytes'] / 1e6:9.2f} "
                  f"{'' if r['ari'] is None else format(r['ari'], '5.2f'):>5s} {str(r['ari_round'] or '-'):>8s} "
                  f"{r['seconds']:7.0f} {r['round_s']:7.2f} {ratio(r, results.get((workload, 'fedavg'))):>8s} "
                  f"{r['upload'] / r['model_bytes']:8.2f}", flush=True)
        check_goals(workload, {m: r for (w, m), r in results.items() if w == workload})
    plot(results, Path(args.out) / "personalization.png")


def ratio(run: dict, fedavg: dict | None) -> str:
    """A round's wall time against FedAvg's in the same workload (same engine, same data)."""
    return "-" if fedavg is None else f"{run['round_s'] / fedavg['round_s']:.2f}"


def check_goals(workload: str, runs: dict) -> None:
    """Print each goal of the workload with what was measured: met or not."""
    def spread(method, stat):
        return runs[method]["spread"].get(stat) if method in runs else None

    if workload in ("shards", "dirichlet") and "fedavg" in runs:
        for method in ("ditto", "fedrep"):  # cost: a round <= 1.6x FedAvg's
            if method in runs:
                times = runs[method]["round_s"] / runs["fedavg"]["round_s"]
                print(f"goal {method}: a round <= 1.6x FedAvg's wall time: {times:.2f}x -> "
                      f"{'met' if times <= 1.6 else 'NOT met'}")
    for method in ("fedper", "fedrep"):  # cost: the upload is the body alone
        if method in runs:
            r, head = runs[method], runs[method]["model_bytes"] - runs[method]["upload"]
            print(f"goal {method}: upload <= the body's size: {r['upload'] / 1e3:.1f} kB of a "
                  f"{r['model_bytes'] / 1e3:.1f} kB model (the head's {head / 1e3:.1f} kB stay) -> "
                  f"{'met' if head > 0 else 'NOT met'}")
    if workload == "synthetic" and "ditto" in runs and "fedavg" in runs:
        own, global_ = spread("ditto", "mean"), spread("fedavg", "mean")
        print(f"goal ditto: personal mean >= FedAvg's global + 10 pts: {percent(own)} vs {percent(global_)} -> "
              f"{'met' if own >= global_ + 0.10 else 'NOT met'}")

    if workload == "shards":
        for method in ("ditto", "fedrep"):
            mean, p10 = spread(method, "mean"), spread(method, "p10")
            if mean is not None:
                ok = mean >= 0.95 and p10 >= 0.90
                print(f"goal {method}: mean >= 95% and p10 >= 90%: {percent(mean)}, {percent(p10)} -> "
                      f"{'met' if ok else 'NOT met'}")
    elif workload == "dirichlet":
        base_mean, base_p10 = spread("fedavg+ft", "mean"), spread("fedavg+ft", "p10")
        for method in ("local_only", "ditto", "apfl", "fedrep", "fedper"):
            mean, p10 = spread(method, "mean"), spread(method, "p10")
            if None not in (mean, p10, base_mean, base_p10):
                ok = mean >= base_mean - 0.01 and p10 > base_p10
                print(f"goal {method}: mean >= FedAvg+FT - 1 pt and p10 > FedAvg+FT's: {percent(mean)} vs "
                      f"{percent(base_mean)}, {percent(p10)} vs {percent(base_p10)} -> {'met' if ok else 'NOT met'}")
    elif workload == "clusters":
        base = spread("fedavg", "mean")
        for method in ("ifca", "cfl"):
            if method in runs and base is not None:
                r = runs[method]
                ok = (r["ari_round"] or 10 ** 9) <= 20 and r["spread"].get("mean", 0) >= base + 0.10
                print(f"goal {method}: ARI >= 0.95 by round 20 (round {r['ari_round']}) and mean >= FedAvg + 10 pts "
                      f"({percent(r['spread'].get('mean'))} vs {percent(base)}) -> {'met' if ok else 'NOT met'}")


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = sorted({w for w, _ in results})
    fig, axes = plt.subplots(1, len(workloads), figsize=(6 * len(workloads), 4), squeeze=False)
    for ax, workload in zip(axes[0], workloads):
        for (w, method), r in results.items():
            if w == workload and r["curve"]:
                ax.plot(*zip(*r["curve"]), marker="o", label=method)
        ax.set(title=f"{workload}: mean held-out accuracy", xlabel="round", ylabel="accuracy")
    save_figure(fig, axes[0], path)


if __name__ == "__main__":
    main()
