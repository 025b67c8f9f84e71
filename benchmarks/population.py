"""A million registered clients on one machine: start-up, per-round time and peak memory against N.

For N = 10³, 10⁴, 10⁵, 10⁶ registered clients, each in a fresh process (so that peak memory is
per N), a short simulation: Fashion-MNIST partitioned "powerlaw" (up to 60 000 clients every sample
belongs to one client; beyond, clients share the pool's samples: `fedstack.data.powerlaw_shared`,
at least 5 samples each), logistic regression, FedAvg, 100 clients per round drawn uniformly, each
doing the same local work (5 steps of batch 8) so that a round costs the same whatever N, on the
pool engine (one worker per core), with federated evaluation off (it visits every client) and the
central test set evaluated after the last round only.

Figures per N:
- start-up: from loading the config to the end of round 1, less one median round: config, data
  loading and partition, fleet, sampler, model, engine start (workers started and ready);
- round: the median wall time of rounds 2..R-1 (the last one also evaluates), store writes included;
- peak RSS: of the whole process tree (the run and its pool workers), sampled every 20 ms from
  /proc by this driver, and never below the run's own getrusage peak. It counts pages shared
  between processes (libraries, the dataset's pages) once per process, so it is an upper
  bound; peak PSS, which divides shared pages among their processes, is shown beside it.

Goals (issue): peak RSS at N = 10⁶ below 2 GB; round time at 10⁶ within 1.2× of 10³.

    python benchmarks/population.py [--sizes 1000,10000,100000,1000000] [--rounds 7] [--engine pool]
                                    [--workers 0] [--out runs/bench-population]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

GOAL_RSS_BYTES = 2 * 1024**3
GOAL_ROUND_RATIO = 1.2
SAMPLE_S = 0.02


def overrides(num_clients: int, rounds: int, engine: str, workers: int) -> list[str]:
    return [f"data.num_clients={num_clients}", 'data.partition="powerlaw"', 'model.name="logreg"',
            f"server.rounds={rounds}", "server.clients_per_round=100", "client.local_steps=5", "client.batch_size=8",
            "eval.federated=false", "eval.every=0", f'engine.name="{engine}"', f"engine.workers={workers}"]


def run_one(args) -> None:
    """In the measured process: one simulation, its figures as one JSON line on stdout."""
    import resource

    import torch  # noqa: F401  (imported before the clock starts: its import time does not grow with N)

    from fedstack.plan import load_config
    from fedstack.experiment import run_config
    from fedstack.plan import dataset_of

    marks: list[float] = []
    start = time.perf_counter()
    config = load_config(None, overrides(args.one, args.rounds, args.engine, args.workers))
    dataset = dataset_of(config)
    data_s = time.perf_counter() - start
    out = Path(args.out) / f"n{args.one}"
    shutil.rmtree(out, ignore_errors=True)
    history = run_config(config, out=out, dataset=dataset, on_round=[lambda record, params: marks.append(
        time.perf_counter())])
    rounds = [b - a for a, b in zip(marks[:-1], marks[1:])][:-1]  # rounds 2..R-1: the last one also evaluates
    median = statistics.median(rounds)
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print(json.dumps({"n": args.one, "data_s": data_s, "startup_s": marks[0] - start - median, "round_s": median,
                      "rounds_s": rounds, "own_maxrss": own, "child_maxrss": workers,
                      "index_bytes": dataset.train_idx.nbytes + dataset.holdout_idx.nbytes,
                      "accuracy": history.rounds[-1]["test_accuracy"]}), flush=True)


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants, from /proc/<pid>/task/*/children."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            continue  # gone between the listing and the read
    return found


def _memory(pids: list[int]) -> tuple[int, int]:
    """(sum of RSS, sum of PSS) in bytes over `pids` (those that vanished count 0)."""
    rss = pss = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
        except OSError:
            continue
    return rss, pss


def measure(n: int, args) -> dict:
    """Run N in a fresh process, sampling its process tree's memory until it ends."""
    command = [sys.executable, __file__, "--one", str(n), "--rounds", str(args.rounds), "--engine", args.engine,
               "--workers", str(args.workers), "--out", args.out]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    peak_rss = peak_pss = 0
    while child.poll() is None:
        rss, pss = _memory(_tree(child.pid))
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        time.sleep(SAMPLE_S)
    output = child.stdout.read()
    if child.returncode:
        raise SystemExit(f"N = {n}: the run failed (exit code {child.returncode})")
    figures = json.loads(output.strip().splitlines()[-1])
    figures["peak_rss"] = max(peak_rss, figures["own_maxrss"])
    figures["peak_pss"] = peak_pss
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000,1000000", help="registered clients, comma-separated")
    parser.add_argument("--rounds", type=int, default=7, help="rounds per run (at least 4)")
    parser.add_argument("--engine", default="pool", choices=["pool", "local"])
    parser.add_argument("--workers", type=int, default=0, help="pool workers (0 = one per core)")
    parser.add_argument("--out", default="runs/bench-population")
    parser.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)  # internal: the measured process
    args = parser.parse_args()
    if args.rounds < 4:
        parser.error("--rounds must be at least 4 (round 1 starts up, the last one evaluates)")
    if args.one:
        run_one(args)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    results = []
    print(f"{'N':>9} {'start-up s':>10} {'data s':>7} {'round s':>8} {'peak RSS':>9} {'peak PSS':>9} "
          f"{'index':>8} {'round ×':>8} {'RSS ×':>6}", flush=True)
    for n in sizes:
        r = measure(n, args)
        results.append(r)
        base = results[0]
        print(f"{n:>9} {r['startup_s']:>10.2f} {r['data_s']:>7.2f} {r['round_s']:>8.3f} "
              f"{r['peak_rss'] / 2**20:>6.0f} MB {r['peak_pss'] / 2**20:>6.0f} MB {r['index_bytes'] / 2**20:>5.1f} MB "
              f"{r['round_s'] / base['round_s']:>8.2f} {r['peak_rss'] / base['peak_rss']:>6.2f}", flush=True)
    small, big = results[0], results[-1]
    ratio = big["round_s"] / small["round_s"]
    print(f"cores {os.cpu_count()}, engine {args.engine}; rounds of N = {big['n']}: "
          f"{', '.join(f'{s:.3f}' for s in big['rounds_s'])} s")
    print(f"goal peak RSS at N = {big['n']} < 2 GB: {big['peak_rss'] / 2**30:.2f} GB — "
          f"{'goal met' if big['peak_rss'] < GOAL_RSS_BYTES else 'goal missed'}")
    print(f"goal round time at N = {big['n']} within {GOAL_ROUND_RATIO}× of N = {small['n']}: {ratio:.2f}× — "
          f"{'goal met' if ratio <= GOAL_ROUND_RATIO else 'goal missed'}")


if __name__ == "__main__":
    main()
