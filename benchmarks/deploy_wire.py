"""Overhead of the wire: task sent → update received for a client that trains 0 steps.

The default CNN (1,663,370 parameters, 6.7 MB each way), loopback, TLS, a real client process.
Goal: below 100 ms. Also prints the server's resident memory after every block of rounds,
which must not grow with the number of rounds.

    python benchmarks/deploy_wire.py [--rounds 200]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import default_workload
from fedstack.client import FitConfig
from fedstack.codec import Pipeline
from fedstack.config import to_toml
from fedstack.engine import Workload
from fedstack.strategy import Task
from fedstack.transport.security import ClientRegistry, make_credentials, read_pem
from fedstack.transport.server import FederationService, GrpcEngine, serve


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    config, dataset, factory, params = default_workload(overrides=["data.num_clients=1",
                                                                   "server.clients_per_round=1"])
    with tempfile.TemporaryDirectory() as tmp:
        creds = make_credentials(Path(tmp) / "certs", 1)
        registry = ClientRegistry.load(creds / "clients.toml")
        engine = GrpcEngine(registry.names, deadline_s=60)
        service = FederationService(engine, registry, to_toml(config), tuple(dataset.x.shape[1:]),
                                    dataset.num_classes)
        server, port = serve(service, "127.0.0.1:0", tls_cert=read_pem(creds / "server.pem"),
                             tls_key=read_pem(creds / "server.key"))
        client = subprocess.Popen([sys.executable, "-m", "fedstack.cli", "client", "--server", f"localhost:{port}",
                                   "--ca", str(creds / "ca.pem"), "--token-file", str(creds / "client-1.token"),
                                   "--partition", "0"])
        engine.start(Workload(factory, dataset, Pipeline(), config.seed))
        while not engine.connected():
            time.sleep(0.05)
        latencies, memory = [], []
        for rnd in range(1, args.rounds + 1):
            start = time.perf_counter()
            outcome = next(engine.run(params, [Task(rnd, 0, FitConfig(epochs=0))]))
            latencies.append(time.perf_counter() - start)
            assert outcome.error is None and len(outcome.value.payload) == params.nbytes, outcome.error
            if rnd % 20 == 0:
                memory.append(rss_mb())
        engine.stop_clients()
        client.wait(timeout=30)
        server.stop(grace=1)
    ms = sorted(1000 * t for t in latencies[1:])  # the first task also pays the client's lazy imports
    print(f"{len(ms)} tasks of {params.size:,} parameters ({params.nbytes / 1e6:.1f} MB each way), TLS, loopback")
    print(f"task sent → update received: median {statistics.median(ms):.1f} ms, "
          f"p90 {ms[int(0.9 * (len(ms) - 1))]:.1f} ms, max {ms[-1]:.1f} ms (goal < 100 ms)")
    print("server RSS every 20 rounds (MB): " + ", ".join(f"{m:.0f}" for m in memory))


if __name__ == "__main__":
    main()
