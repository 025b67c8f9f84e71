"""The pool engine against the local engine on the default workload (goal: pool ≥ 1.6× faster on 2 cores).

All runs use the same seed, so their final parameters must also be bit-identical. `--engines`
adds others: `ray` starts a local Ray (in a sandbox with only loopback allowed, run the benchmark
under `unshare -n sh -c 'ip link set lo up; exec python benchmarks/engines.py --engines local pool ray'`).

    python benchmarks/engines.py [--rounds 20] [--repeats 1] [--workers 0] [--engines local pool]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from common import default_workload
from fedstack.client import FitConfig
from fedstack.engine import make_engine
from fedstack.experiment import simulate
from fedstack.strategy import FedAvg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workers", type=int, default=0, help="pool workers / Ray actors (0 = one per core)")
    parser.add_argument("--engines", nargs="+", default=["local", "pool"], choices=["local", "pool", "ray"])
    args = parser.parse_args()
    config, dataset, factory, params0 = default_workload(args.rounds)
    c = config.client
    engines = ["local", *(e for e in args.engines if e != "local")]
    times: dict[str, list[float]] = {engine: [] for engine in engines}
    for rep in range(args.repeats):
        finals = {}
        for engine in engines:
            start = time.perf_counter()
            history = simulate(factory, dataset, params0, strategy=FedAvg(FitConfig(epochs=c.epochs,
                               batch_size=c.batch_size, lr=c.lr)), rounds=config.server.rounds,
                               clients_per_round=config.server.clients_per_round, seed=config.seed,
                               engine=make_engine(engine, args.workers))
            times[engine].append(time.perf_counter() - start)
            finals[engine] = history.params
            print(f"[{rep + 1}] {engine:5s} {times[engine][-1]:6.1f} s  "
                  f"accuracy {history.rounds[-1]['test_accuracy']:.4f}", flush=True)
        same = all(np.array_equal(finals["local"], finals[engine]) for engine in engines)
        print(f"[{rep + 1}] bit-identical final parameters: {same}")
    median = {engine: statistics.median(times[engine]) for engine in engines}
    parts = [f"{engine} {median[engine]:.1f} s" if engine == "local" else
             f"{engine} {median[engine]:.1f} s (speed-up {median['local'] / median[engine]:.2f}x)"
             for engine in engines]
    print(f"cores {os.cpu_count()}; median wall time: {', '.join(parts)}; goal for pool ≥ 1.6x")


if __name__ == "__main__":
    main()
