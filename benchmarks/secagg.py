"""Secure aggregation rounds (SecAgg, SecAgg+) against plaintext FedAvg: client and server time, bytes per client.

Goals (from the issue): SecAgg+ server time grows sub-quadratically in n (log-log slope of server time vs n,
20% dropouts, below 2), and at n = 100 with 20% dropouts the whole secure round costs at most 3× a plaintext
round's aggregation plus transfer on this machine.

    python benchmarks/secagg.py [--clients 10,50,100,200] [--models cnn,mlp] [--graphs complete,plus]
                                [--dropouts 0,0.2] [--repeats 3] [--once-above 2e10] [--full]
                                [--up-mbps 20] [--down-mbps 20] [--threshold 0.6] [--plot runs/secagg.png]

Workload: each client's update is a random float32 vector the size of a model, uniform in [-1, 1] (inside the
clip range): `cnn`, the default CNN (1,663,370 values), and `mlp`, the 2NN of McMahan et al. 2017 (199,210),
both on Fashion-MNIST shapes. Protocol parameters as the round loop picks them (codec.secagg.SecAgg): t is
the threshold fraction (0.6) of each client's k + 1 share holders; k = n − 1 for the complete graph (classic
SecAgg), `secagg_plus_degree(n)` for SecAgg+ (at n = 10 both are the complete graph); 32-bit sums, 16
fractional bits. Dropouts happen after ShareKeys: those clients shared their keys but never send a masked
input, so the server rebuilds their mask keys and removes their pairwise masks (the expensive recovery case).
The dropout set is drawn at random; a draw under which the round would abort (a client with fewer than t
live share holders, possible with SecAgg+'s small k) is redrawn, and the count of such draws is printed.

Measured, every message crossing as bytes (to_bytes → from_bytes) as in secagg.simulation.SecureRound:
- client time: advertise_keys + share_keys + masked_input + unmask of one client, including deserialising
  its requests and serialising its replies; mean and max over the clients that finish the round. Every
  client is timed (all of them must run for the round to finish, so timing only a sample saves nothing).
- server time: share_keys_requests + masked_input_requests + unmask_requests + aggregate (and building the
  server), including deserialising the clients' messages and serialising the requests.
- bytes up / down per client: lengths of the serialised messages, mean over the clients that finish.
- plaintext reference, same process, same vectors, right after each secure round: the server's FedAvg
  aggregation of the survivors' float32 vectors (fedstack's WeightedSum: a float64 running sum, then
  divide), median of 3 timings.
Transfer (model download excluded on both sides, being the same; latency of the secure protocol's four
round trips ignored): plaintext = each client's upload of its raw float32 update (4 bytes per value) at
`--up-mbps`; secure = max over finishing clients of bytes up at `--up-mbps` + bytes down at `--down-mbps`.
Default 20 Mbit/s each way, an assumption (in systems.py 20 Mbit/s is the `4g` tier's download and the
`wifi` tier's upload; the `4g` upload is 5 Mbit/s, for which the ratio is printed too).
Whole secure round = max client time + server time + secure transfer (clients run in parallel);
plaintext round = aggregation + plaintext transfer; ratio = secure / plaintext, median over repeats of
each repeat's ratio (every other figure: median over repeats).

Server time also shows, in brackets, its part spent in `from_bytes` (a MaskedInput is copied while parsed).

Repeats: `--repeats` (3) for each setting, except one run for settings whose client-side PRG work,
n·(k + 1)·length words, exceeds `--once-above` (2e10: by default none; with `--full`, the complete graph
with the CNN at n = 200). The complete graph with the CNN above n = 100 (each client expands ~200 masks of
6.6 MB) is skipped unless `--full`. Settings of one n run interleaved, repeat by repeat, on the same vectors.
Single-threaded Python; the default run took 19.6 minutes on 2 cores shared with other benchmarks.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from common import save_figure
from fedstack.codec.secagg import SecAgg
from fedstack.plan import make_trainer
from fedstack.secagg import (
    AdvertiseKeys,
    MaskedInput,
    MaskedInputRequest,
    SecAggClient,
    SecAggServer,
    ShareKeys,
    ShareKeysRequest,
    Unmask,
    UnmaskRequest,
)
from fedstack.secagg.graph import graph
from fedstack.strategy import WeightedSum
from fedstack.systems import MBIT, TIERS

MODELS = {"cnn": "CNN", "mlp": "2NN"}
GRAPHS = {"complete": "complete", "plus": "SecAgg+"}
COMPLETE_CNN_MAX_N = 100  # above this the complete graph with the CNN runs only with --full
clock = time.perf_counter


def secure_round(params, vectors: list[np.ndarray], dropped: set[int]) -> dict:
    """One SecAgg round of len(vectors) clients, `dropped` leaving after ShareKeys; times, bytes, the sum."""
    n = len(vectors)
    cohort = list(range(n))
    client_s, up, down = np.zeros(n), np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    server_s, decode_s = {}, {}  # per step: all of it, and the part spent in from_bytes

    def serve(step: str, kind, datas: list[bytes], setup=None):
        started = clock()
        if setup is not None:
            setup()
        messages = [kind.from_bytes(d) for d in datas]
        decode_s[step] = clock() - started
        out = getattr(server, step)(messages)
        if step != "aggregate":
            out = {u: r.to_bytes() for u, r in out.items()}
        server_s[step] = clock() - started
        if step != "aggregate":
            for u, d in out.items():
                down[u] += len(d)
        return out

    def answer(u: int, kind, data: bytes, method: str, *extra) -> bytes:
        started = clock()
        reply = getattr(clients[u], method)(kind.from_bytes(data), *extra).to_bytes()
        client_s[u] += clock() - started
        up[u] += len(reply)
        return reply

    clients, adverts = {}, []
    for u in cohort:
        started = clock()
        clients[u] = SecAggClient(u, params, cohort)
        data = clients[u].advertise_keys().to_bytes()
        client_s[u] += clock() - started
        up[u] += len(data)
        adverts.append(data)
    server = None

    def build_server():
        nonlocal server
        server = SecAggServer(params, cohort)

    requests = serve("share_keys_requests", AdvertiseKeys, adverts, setup=build_server)
    shares = [answer(u, ShareKeysRequest, d, "share_keys") for u, d in requests.items()]
    requests = serve("masked_input_requests", ShareKeys, shares)
    inputs = [answer(u, MaskedInputRequest, d, "masked_input", vectors[u])
              for u, d in requests.items() if u not in dropped]
    requests = serve("unmask_requests", MaskedInput, inputs)
    del inputs
    replies = [answer(u, UnmaskRequest, d, "unmask") for u, d in requests.items()]
    total, survivors = serve("aggregate", Unmask, replies)
    alive = list(survivors)
    return {"client_s": client_s[alive], "server_s": server_s, "decode_s": sum(decode_s.values()),
            "up": up[alive], "down": down[alive],
            "total": total, "survivors": survivors}


def plaintext_aggregate(vectors: list[np.ndarray], survivors) -> tuple[float, np.ndarray]:
    """(median of 3 timings of FedAvg's aggregation of the survivors' vectors, their float64 sum)."""
    spent = []
    for _ in range(3):
        started = clock()
        acc = WeightedSum(vectors[0].size)
        for u in survivors:
            acc.add(np.frombuffer(vectors[u], dtype=np.float32), 1.0)  # as received: raw float32 bytes
        acc.mean()
        spent.append(clock() - started)
    return statistics.median(spent), acc.total


def draw_dropouts(rng, nbrs: dict, n: int, fraction: float, t: int) -> tuple[set[int], int]:
    """(a random set of round(fraction·n) clients under which the round does not abort, draws rejected)."""
    m = round(fraction * n)
    for rejected in range(1000):
        dropped = set(rng.choice(n, m, replace=False).tolist()) if m else set()
        u3 = set(range(n)) - dropped
        if len(u3) >= t and all(len(set(nbrs[u]) & u3) + (u in u3) >= t for u in range(n)):
            return dropped, rejected
    raise RuntimeError(f"no {fraction:.0%} dropout set of {n} clients lets the round finish (t={t})")


def run_model(model: str, size: int, args) -> dict:
    """Every (graph, n, dropout) of one model: {(graph, n, dropout): summary}."""
    up_bw, down_bw = args.up_mbps * MBIT, args.down_mbps * MBIT
    alt_down, alt_up = (bw * MBIT for bw in TIERS["4g"])
    settings, skipped = {}, []
    for n in args.clients:
        for g in args.graphs:
            if g == "complete" and model == "cnn" and n > COMPLETE_CNN_MAX_N and not args.full:
                skipped.append(n)
                continue
            codec = SecAgg(threshold=args.threshold, plus=g == "plus")
            params = codec.params(n, graph_seed=1)
            k = n - 1 if params.k is None else params.k
            reps = 1 if n * (k + 1) * size > args.once_above else args.repeats
            for drop in args.dropouts:
                settings[(g, n, drop)] = {"codec": codec, "params": params, "k": k, "reps": reps, "runs": [],
                                          "rejected": 0}
    if skipped:
        print(f"skipped (use --full): complete graph with the {MODELS[model]} at n = "
              f"{', '.join(map(str, skipped))}", flush=True)
    for n in args.clients:
        todo = {key: s for key, s in settings.items() if key[1] == n}
        for rep in range(max((s["reps"] for s in todo.values()), default=0)):
            rng = np.random.default_rng([args.seed, size, n, rep])
            vectors = [np.clip(rng.uniform(-1, 1, size), -1, 1).astype(np.float32) for _ in range(n)]
            for (g, _, drop), s in todo.items():
                if rep >= s["reps"]:
                    continue
                params, k = s["codec"].params(n, graph_seed=rep + 1), s["k"]  # a fresh graph each round
                nbrs = graph(tuple(range(n)), k, params.graph_seed)
                dropped, rejected = draw_dropouts(np.random.default_rng([args.seed, n, rep, int(1000 * drop)]),
                                                  nbrs, n, drop, params.threshold)
                s["rejected"] += rejected
                r = secure_round(params, vectors, dropped)
                agg_s, exact = plaintext_aggregate(vectors, r["survivors"])
                error = float(np.abs(r["total"] - exact).max())
                assert error <= len(r["survivors"]) * 2.0 ** -(params.frac_bits + 1) + 1e-9, error
                server_s = sum(r["server_s"].values())
                client_max = float(r["client_s"].max())
                transfer = float((r["up"] / up_bw + r["down"] / down_bw).max())
                transfer_alt = float((r["up"] / alt_up + r["down"] / alt_down).max())
                plain_transfer, plain_alt = 4 * size / up_bw, 4 * size / alt_up
                run = {"client_mean": float(r["client_s"].mean()), "client_max": client_max, "server": server_s,
                       "server_decode": r["decode_s"], "agg": agg_s,
                       "up": float(r["up"].mean()), "down": float(r["down"].mean()),
                       "transfer": transfer, "plain_transfer": plain_transfer,
                       "secure_round": client_max + server_s + transfer, "plain_round": agg_s + plain_transfer}
                run["ratio"] = run["secure_round"] / run["plain_round"]
                run["ratio_alt"] = (client_max + server_s + transfer_alt) / (agg_s + plain_alt)
                s["runs"].append(run)
                steps = ", ".join(f"{step.split('_requests')[0]} {sec:.2f}" for step, sec in r["server_s"].items())
                print(f"[{MODELS[model]} {GRAPHS[g]} n={n} k={k} t={params.threshold} drop {drop:.0%} "
                      f"rep {rep + 1}/{s['reps']}] client mean {run['client_mean'] * 1e3:.0f} ms max "
                      f"{client_max * 1e3:.0f} ms; server {server_s:.2f} s ({steps}; from_bytes {r['decode_s']:.2f}); "
                      f"plaintext agg {agg_s:.3f} s; "
                      f"up {run['up'] / 1e6:.2f} MB; ratio {run['ratio']:.2f}×", flush=True)
    for s in settings.values():
        s["med"] = {key: statistics.median(run[key] for run in s["runs"]) for key in s["runs"][0]}
    return settings


def print_table(model: str, size: int, settings: dict, args) -> None:
    print(f"\n{MODELS[model]} ({model}, {size:,} values = {4 * size / 1e6:.2f} MB float32); transfer at "
          f"{args.up_mbps:g} Mbit/s up, {args.down_mbps:g} down; medians over reps")
    print("| graph | n | k | t | dropped | reps | client mean / max | server (from_bytes) | plaintext agg "
          "| server / agg | up per client | down per client | transfer secure / plain | secure round "
          "| plaintext round | ratio |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (g, n, drop), s in sorted(settings.items(), key=lambda kv: (kv[0][0] != "complete", kv[0][1], kv[0][2])):
        m = s["med"]
        print(f"| {GRAPHS[g]} | {n} | {s['k']} | {s['params'].threshold} | {drop:.0%} | {s['reps']} "
              f"| {m['client_mean'] * 1e3:.0f} / {m['client_max'] * 1e3:.0f} ms "
              f"| {m['server']:.2f} s ({m['server_decode']:.2f}) "
              f"| {m['agg']:.3f} s | {m['server'] / m['agg']:.0f}× "
              f"| {m['up'] / 1e6:.2f} MB ({m['up'] / (4 * size):.2f}×) "
              f"| {m['down'] / 1e3:.1f} kB | {m['transfer']:.2f} / {m['plain_transfer']:.2f} s "
              f"| {m['secure_round']:.2f} s | {m['plain_round']:.2f} s | {m['ratio']:.2f}× |")
    rejected = {key: s["rejected"] for key, s in settings.items() if s["rejected"]}
    for (g, n, drop), count in rejected.items():
        print(f"note: {GRAPHS[g]} n={n}, {drop:.0%} dropped: {count} random dropout draw(s) would have aborted the "
              f"round (a client with < t live share holders) and were redrawn")


def slope(settings: dict, g: str, drop: float) -> tuple[float, list[int]] | None:
    points = sorted((n, s["med"]["server"]) for (gg, n, d), s in settings.items() if gg == g and d == drop)
    if len(points) < 2:
        return None
    ns = [n for n, _ in points]
    return float(np.polyfit(np.log([n for n, _ in points]), np.log([sec for _, sec in points]), 1)[0]), ns


def print_goals(results: dict, args) -> None:
    print()
    drop = max(args.dropouts)
    for model, (size, settings) in results.items():
        fits = {g: slope(settings, g, drop) for g in GRAPHS}
        plain = slope({key: {"med": {"server": s["med"]["agg"]}} for key, s in settings.items()}, "plus", drop)
        extra = "; ".join(f"{name} {fit[0]:.2f} (n = {', '.join(map(str, fit[1]))})"
                          for name, fit in (("complete graph", fits["complete"]), ("plaintext aggregation", plain))
                          if fit)
        if fits["plus"]:
            value, ns = fits["plus"]
            print(f"goal {MODELS[model]}: SecAgg+ server time sub-quadratic in n ({drop:.0%} dropped): log-log slope "
                  f"{value:.2f} over n = {', '.join(map(str, ns))} (< 2: {'met' if value < 2 else 'NOT met'}); "
                  f"for contrast: {extra or '-'}")
        else:
            print(f"goal {MODELS[model]}: SecAgg+ slope: not measured (needs two values of n)")
    for model, (size, settings) in results.items():
        for g in ("plus", "complete"):
            s = settings.get((g, 100, 0.2))
            label = "goal" if g == "plus" else "contrast (not the goal)"
            if s is None:
                print(f"{label} {MODELS[model]} {GRAPHS[g]}: n = 100 with 20% dropped not measured")
                continue
            m = s["med"]
            verdict = f": {'met' if m['ratio'] <= 3 else 'NOT met'}" if g == "plus" else ""
            print(f"{label} {MODELS[model]} {GRAPHS[g]}, n = 100, 20% dropped: secure round {m['secure_round']:.2f} s "
                  f"(client max {m['client_max']:.2f} + server {m['server']:.2f} + transfer {m['transfer']:.2f}) vs "
                  f"plaintext {m['plain_round']:.2f} s (agg {m['agg']:.3f} + transfer {m['plain_transfer']:.2f}): "
                  f"{m['ratio']:.2f}× (≤ 3×{verdict}); at systems.py's 4g tier (5 Mbit/s up, 20 down): "
                  f"{m['ratio_alt']:.2f}×")


def plot(results: dict, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    for ax, (model, (size, settings)) in zip(axes[0], results.items()):
        for g, marker in (("complete", "s"), ("plus", "o")):
            for drop in args.dropouts:
                points = sorted((n, s["med"]["server"]) for (gg, n, d), s in settings.items() if gg == g and d == drop)
                if points:
                    ax.plot(*zip(*points), marker=marker, linestyle="-" if drop else "--",
                            label=f"{GRAPHS[g]} server, {drop:.0%} dropped")
        drop = max(args.dropouts)
        points = sorted({n: s["med"]["agg"] for (g, n, d), s in settings.items() if d == drop and g == "plus"}.items())
        if points:
            ax.plot(*zip(*points), marker="^", color="black", label=f"plaintext aggregation, {drop:.0%} dropped")
        ax.set(xscale="log", yscale="log", xlabel="clients n", ylabel="server seconds per round",
               title=f"{MODELS[model]} ({size:,} values)")
        ns = sorted({n for _, n, _ in settings})
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    save_figure(fig, axes[0], args.plot)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="10,50,100,200")
    parser.add_argument("--models", default="cnn,mlp")
    parser.add_argument("--graphs", default="complete,plus")
    parser.add_argument("--dropouts", default="0,0.2")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--once-above", type=float, default=2e10,
                        help="run once a setting whose n·(k+1)·length PRG words exceed this")
    parser.add_argument("--full", action="store_true", help="include the complete graph with the CNN above n=100")
    parser.add_argument("--threshold", type=float, default=0.6, help="t as a fraction of the k+1 share holders")
    parser.add_argument("--up-mbps", type=float, default=20.0)
    parser.add_argument("--down-mbps", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default=str(Path(__file__).resolve().parent / "runs" / "secagg.png"))
    args = parser.parse_args()
    args.clients = [int(n) for n in args.clients.split(",")]
    args.models, args.graphs = args.models.split(","), args.graphs.split(",")
    args.dropouts = [float(d) for d in args.dropouts.split(",")]
    print(f"SecAgg round cost: n = {args.clients}, graphs {args.graphs}, dropped after ShareKeys {args.dropouts}, "
          f"t = ceil({args.threshold}·(k+1)), up to {args.repeats} repeats (once above {args.once_above:.0e} "
          f"PRG words); transfer at {args.up_mbps:g} Mbit/s up / {args.down_mbps:g} down", flush=True)
    started = clock()
    results = {}
    for model in args.models:
        size = make_trainer(model, (1, 28, 28), 10, "sgd").spec.size
        results[model] = (size, run_model(model, size, args))
    for model, (size, settings) in results.items():
        print_table(model, size, settings, args)
    print_goals(results, args)
    print(f"wall time {(clock() - started) / 60:.1f} min")
    plot(results, args)


if __name__ == "__main__":
    main()
