"""DP-FedAvg on Fashion-MNIST: final accuracy against ε at δ = 1e-5 (the privacy–utility curve).

Goal (issue: benchmarks/privacy.py): client-level DP-FedAvg (McMahan et al. 2018, "Learning
Differentially Private Recurrent Language Models") over 1,000 clients, about 100 per round, for noise
multipliers z ∈ {0.5, 1.0, 2.0}: final test accuracy against ε at δ = 1e-5, as a table and a plot.

    cd benchmarks && PYTHONPATH=../src python privacy.py [--rounds 60] [--model mlp] [--noise 0.5,1.0,2.0]
                                                          [--clip 0.5] [--lr 0.05] [--server-lr 0.25]
                                                          [--momentum 0.9] [--runs baseline,clip,dp]

Workload: Fashion-MNIST split among data.num_clients = 1000 clients with the default Dirichlet(0.5)
label skew (60 examples a client on average, 10 % held out), server.sampler = "poisson": each client takes
part in a round independently with probability 0.1 (about 100 a round; the sampling under which the
accountant may amplify privacy by subsampling: with the default fixed-size sampling, fedstack
accounts replace-one adjacency and ε is far larger). Clients train one local epoch of SGD with
batch 10 (McMahan's B = 10: ~5 steps on 54 examples on average) at client.lr; the server runs FedAvgM (server
momentum, as McMahan et al. 2018) at server.server_lr. Runs:

- "non-private": codec.pipeline = [] and no noise (FedAvgM's example-weighted mean);
- "clip only": codec.pipeline = ["clip"], privacy.noise_multiplier = 0: every update clipped to
  L2 norm privacy.clip_norm, summed and divided by the fixed denominator 100 (the cost of clipping
  and of the fixed denominator, without noise; ε is infinite);
- "DP z=…": the same plus Gaussian noise N(0, (z·C)²) on the sum (privacy.mode = "central"); ε at
  privacy.delta = 1e-5 from the RDP accountant, as the last round's record says.

Model and length (measured on this 2-core machine, shared with other benchmarks, so per-round costs
moved with their load): one round of 100 clients cost ~40–50 s with the CNN (1.66 M parameters; load
average ~10) and, with the 2NN (`model.name = "mlp"`, 199,210 parameters), 0.7–1.1 s without privacy
and 2.2–5.3 s with clipping (6–9 s at load ~10). The private runs' extra seconds are not the clipping
itself: a profile of 4 rounds spent 15.4 s of the server's time in 390 `np.linalg.norm` calls on
199,210 float64 values in `Private.aggregate` (40 ms each, ~0.05 ms when OpenBLAS runs one thread;
its threads contend with the pool's workers for the two cores). The default is the 2NN for 60 rounds
(DEFAULT_ROUNDS; 5 runs: 17 min here, 12–25 min depending on the load); `--model cnn --rounds N` runs the CNN.
Test accuracy every 2 rounds (EVAL_EVERY) and after the last.

Tuning, all that was done (seed 0, B = 10, client lr 0.05, FedAvgM momentum 0.9; final test accuracy,
best in brackets where it differs by more than a point). First 15 rounds, clip-only run / DP z = 1:

    C = 0.5, server lr 1.0: 75.3 % / 72.8 %
    C = 1.0, server lr 1.0: 75.1 % / 68.7 %      (median update norm at the start: ~0.5)
    C = 0.5, server lr 0.5: 72.2 % / 74.1 %

C = 0.5 is as good as 1.0 without noise and better with it: most updates are shorter than 1.0, so
with C = 1.0 the noise z·C is large against the updates it hides. Then 40 rounds with C = 0.5:

    server lr | non-private | clip only | z = 0.5 | z = 1         | z = 2
    1.0       | 83.1 %      | 83.0 %    | 80.9 %  | 69.9 % (74.9) | 54.8 % (65.3)
    0.5       |             | 82.1 %    |         | 78.6 %        | 66.0 % (71.0)
    0.25      |             | 79.5 %    |         | 79.9 %        | 75.5 %

With server lr 1.0 (effective step 1.0 / (1 − 0.9) = 10 × the averaged update) the noise accumulates
through the momentum: z = 1 and z = 2 peak around round 10–15 and then lose 5–11 points. Server lr
0.25 keeps every DP run rising or flat, at the price of slower noiseless runs (79.5 % at 40 rounds, still
rising), hence the defaults: server lr 0.25 for every run (one optimizer, so the curve shows the cost
of clipping and of noise alone) and 60 rounds. Tuned on the noised runs, not only on the clip-only
one: without that the curve would show the server step's instability rather than the cost of privacy.
The default run (60 rounds, seed 0) gave 81.6 % non-private, 81.7 % clip only, 82.0 % at ε = 28.1
(z = 0.5), 80.6 % at ε = 6.34 (z = 1) and 73.0 % at ε = 2.01 (z = 2; best 75.5 % at round 40, then
slowly falling: even server lr 0.25 is too large a step for z = 2 over many rounds).

Prints a table (run, z, ε at δ = 1e-5, final and best test accuracy, wall time) and whether accuracy
degrades gracefully as ε falls: final accuracy never rises by more than 1 point as ε falls (the
DP runs ordered by ε, the clip-only run as ε = ∞) and no DP run collapses to near chance (≤ 20 %);
and flags DP runs that end more than 3 points below their best (noise accumulating, not converging).
Writes runs/privacy.png: accuracy against ε (log scale; the baselines as horizontal lines) and
accuracy per round of every run.
"""

from __future__ import annotations

import argparse
import logging
import math
import shutil
import time
from pathlib import Path

from common import save_figure
from fedstack.plan import load_config
from fedstack.experiment import run_config
from fedstack.plan import dataset_of

HERE = Path(__file__).resolve().parent
DEFAULT_ROUNDS = 60
EVAL_EVERY = 2
DELTA = 1e-5
CHANCE_FLOOR = 0.20  # a DP run at or below this accuracy has collapsed (chance is 10 %)
FADING = 0.03  # a DP run ending this far below its best accuracy is flagged as unstable
TOLERANCE = 0.01  # accuracy may rise this much as ε falls (run-to-run noise) and still count as monotone


def base_overrides(args) -> list[str]:
    return ["data.num_clients=1000", "server.clients_per_round=100", "server.sampler=poisson",
            f"model.name={args.model}", "client.epochs=1", f"client.batch_size={args.batch_size}",
            f"client.lr={args.lr}", f"server.strategy={args.strategy}", f"server.server_lr={args.server_lr}",
            f"server.momentum={args.momentum}", f"server.rounds={args.rounds}", f"seed={args.seed}",
            f"eval.every={EVAL_EVERY}", "eval.federated=false", "engine.name=pool", f"privacy.delta={DELTA}",
            f"privacy.clip_norm={args.clip}"]


def settings(args) -> dict[str, tuple[float | None, list[str]]]:
    """Run name → (noise multiplier, or None when not private; its overrides)."""
    runs: dict[str, tuple[float | None, list[str]]] = {}
    wanted = args.runs.split(",")
    if "baseline" in wanted:
        runs["non-private"] = (None, ["codec.pipeline=[]", "privacy.noise_multiplier=0"])
    if "clip" in wanted:
        runs["clip only"] = (0.0, ['codec.pipeline=["clip"]', "privacy.noise_multiplier=0"])
    if "dp" in wanted:
        for z in (float(v) for v in args.noise.split(",")):
            runs[f"DP z={z:g}"] = (z, ['codec.pipeline=["clip"]', f"privacy.noise_multiplier={z}"])
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--model", default="mlp", choices=("logreg", "mlp", "cnn"))
    parser.add_argument("--noise", default="0.5,1.0,2.0", help="noise multipliers z of the DP runs")
    parser.add_argument("--runs", default="baseline,clip,dp", help="which of baseline, clip, dp to run")
    parser.add_argument("--clip", type=float, default=0.5, help="privacy.clip_norm C")
    parser.add_argument("--lr", type=float, default=0.05, help="client.lr")
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--strategy", default="fedavgm", choices=("fedavg", "fedavgm"))
    parser.add_argument("--server-lr", type=float, default=0.25)
    parser.add_argument("--momentum", type=float, default=0.9, help="fedavgm's server momentum")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(HERE / "runs" / "bench-privacy"))
    parser.add_argument("--plot", default=str(HERE / "runs" / "privacy.png"))
    args = parser.parse_args()
    logging.getLogger("absl").setLevel(logging.ERROR)  # dp_accounting's RDP orders that fail to converge
    base = base_overrides(args)
    runs = settings(args)
    dataset = dataset_of(load_config(None, base))  # the same partition for every run
    print(f"{args.model}, {args.rounds} rounds, C = {args.clip}, client lr {args.lr} (B = {args.batch_size}), "
          f"{args.strategy} server lr {args.server_lr}" + (f" momentum {args.momentum}" if args.strategy == "fedavgm"
                                                           else "") + f", seed {args.seed}", flush=True)
    results = {}
    for name, (z, overrides) in runs.items():
        out = Path(args.out) / name.replace(" ", "_").replace("=", "")
        shutil.rmtree(out, ignore_errors=True)  # a fresh run, not the resumption of an old one
        started = time.perf_counter()
        history = run_config(load_config(None, [*base, *overrides]), out, dataset=dataset)
        wall = time.perf_counter() - started
        rs = history.rounds
        evaluated = [(r["round"], r["test_accuracy"]) for r in rs if r["test_accuracy"] is not None]
        epsilon = None if z is None else (math.inf if z == 0 else rs[-1]["epsilon"])
        results[name] = {"z": z, "epsilon": epsilon, "final": rs[-1]["test_accuracy"],
                         "best": max(a for _, a in evaluated), "curve": evaluated, "wall": wall,
                         "clients": sum(r["clients"] for r in rs) / len(rs)}
        print(f"{name}: ε {fmt_eps(epsilon)}, final {rs[-1]['test_accuracy']:.2%}, "
              f"{wall:.0f} s ({wall / len(rs):.1f} s/round, {results[name]['clients']:.1f} clients/round)", flush=True)
    table(results)
    plot(results, args, Path(args.plot))


def fmt_eps(epsilon) -> str:
    return "-" if epsilon is None else "∞" if math.isinf(epsilon) else f"{epsilon:.3g}"


def table(results: dict) -> None:
    print(f"\nε at δ = {DELTA:g} (RDP accountant, Poisson sampling q = 0.1)\n"
          "| run | noise multiplier z | ε | final accuracy | best accuracy | wall time |\n|---|---|---|---|---|---|")
    for name, r in results.items():
        z = "-" if r["z"] is None else f"{r['z']:g}"
        print(f"| {name} | {z} | {fmt_eps(r['epsilon'])} | {r['final']:.2%} | {r['best']:.2%} | "
              f"{r['wall']:.0f} s |")
    # From the largest ε (clip only: ∞) to the smallest: accuracy should fall, not collapse.
    ladder = sorted((r for r in results.values() if r["z"] is not None), key=lambda r: -r["epsilon"])
    dp = [r for r in ladder if r["z"] > 0]
    if len(ladder) < 2 or not dp:
        return
    steps = [f"ε {fmt_eps(a['epsilon'])} → {fmt_eps(b['epsilon'])}: {100 * (b['final'] - a['final']):+.1f} pt"
             for a, b in zip(ladder, ladder[1:])]
    monotone = all(b["final"] <= a["final"] + TOLERANCE for a, b in zip(ladder, ladder[1:]))
    collapsed = [fmt_eps(r["epsilon"]) for r in dp if r["final"] <= CHANCE_FLOOR]
    graceful = monotone and not collapsed
    print(f"graceful degradation as ε falls: {'yes' if graceful else 'NO'} (accuracy "
          f"{'falls monotonically' if monotone else 'is not monotone in ε'}; "
          + (f"collapsed to ≤ {CHANCE_FLOOR:.0%} at ε = {', '.join(collapsed)}" if collapsed else
             f"no run at or below {CHANCE_FLOOR:.0%}") + "): " + "; ".join(steps))
    fading = [f"ε {fmt_eps(r['epsilon'])} ({100 * (r['final'] - r['best']):+.1f} pt)" for r in dp
              if r["best"] - r["final"] > FADING]
    if fading:
        print(f"unstable: DP runs ending more than {100 * FADING:.0f} points below their best accuracy: "
              + ", ".join(fading) + " (the noise accumulates: try a smaller --server-lr)")


def plot(results: dict, args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curve, by_round) = plt.subplots(1, 2, figsize=(12, 4.5))
    dp = sorted((r for r in results.values() if r["z"]), key=lambda r: r["epsilon"])
    if dp:
        eps = [r["epsilon"] for r in dp]
        curve.plot(eps, [r["final"] for r in dp], marker="o", label="DP-FedAvg, final")
        curve.plot(eps, [r["best"] for r in dp], marker="x", linestyle=":", label="DP-FedAvg, best")
        for r in dp:
            curve.annotate(f"z={r['z']:g}", (r["epsilon"], r["final"]), textcoords="offset points", xytext=(4, -12))
    for (name, r), style in zip(((n, r) for n, r in results.items() if not r["z"]), ("--", "-.")):
        curve.axhline(r["final"], linestyle=style, color="grey" if r["z"] is None else "black",
                      label=f"{name}, final" + ("" if r["z"] is None else " (ε ∞)"))
    curve.set(xscale="log", xlabel=f"ε at δ = {DELTA:g}", ylabel="test accuracy",
              title=f"Privacy–utility, {args.model}, {args.rounds} rounds, 1,000 clients, q = 0.1")
    for name, r in results.items():
        label = name + ("" if r["z"] is None else f" (ε {fmt_eps(r['epsilon'])})")
        by_round.plot(*zip(*r["curve"]), marker=".", label=label)
    by_round.set(xlabel="round", ylabel="test accuracy", title="Accuracy per round")
    save_figure(fig, (curve, by_round), path)


if __name__ == "__main__":
    main()
