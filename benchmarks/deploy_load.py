"""Load: N concurrent clients (real gRPC connections over TLS) against one server process, 3 rounds.

A few load-generator processes each run many clients in threads; every client trains a small
NumPy logistic regression on its digits partition (N processes importing PyTorch would not fit
in memory). Prints each round's latency and the server's CPU time and peak memory.

    python benchmarks/deploy_load.py [--clients 200] [--processes 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from fedstack.client import FitResult, batch_order
from fedstack.transport.client import Client, TlsSettings
from fedstack.transport.security import make_credentials, read_pem, read_token


class NumpyLogReg:
    """Logistic regression on flat params laid out like torch's nn.Linear(64, 10): weight rows, then bias."""

    def fit(self, params, data, config, state=None):
        local = params.copy()
        w, b = local[:640].reshape(10, 64), local[640:]
        for idx in batch_order(data.train_idx, config):
            x, y = data.x[idx].reshape(len(idx), -1), data.y[idx]
            logits = x @ w.T + b
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            p[np.arange(len(y)), y] -= 1
            p /= len(y)
            w -= config.lr * (p.T @ x)
            b -= config.lr * p.sum(axis=0)
        return FitResult(local - params, data.num_examples)


def generator(port: int, creds: str, ids: list[int]) -> None:
    """One load-generator process: a thread per client."""
    ca = read_pem(Path(creds) / "ca.pem")

    def one(i):
        client = Client(f"localhost:{port}", read_token(Path(creds) / f"client-{i + 1}.token"), partition=i,
                        tls=TlsSettings(ca=ca), trainer=NumpyLogReg())
        client.run()

    threads = [threading.Thread(target=one, args=(i,)) for i in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def proc_stats(pid: int) -> tuple[float, float]:
    """(CPU seconds, peak resident MB) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    peak = next((int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                 if line.startswith("VmHWM:")), None)
    if peak is None:  # it has exited and only its zombie is left: its figures are gone
        raise ProcessLookupError(pid)
    return ticks / 100, peak / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        creds = make_credentials(Path(tmp) / "certs", args.clients)
        sets = ["data.name=digits", f"data.num_clients={args.clients}", "data.partition=iid", "data.holdout=0",
                "model.name=logreg", f"server.rounds={args.rounds}", f"server.clients_per_round={args.clients}",
                f"server.min_clients={args.clients}", "client.lr=0.5", "client.batch_size=8"]
        server = subprocess.Popen([sys.executable, "-m", "fedstack.cli", "server",
                                   *[a for s in sets for a in ("--set", s)], "--listen", "127.0.0.1:0",
                                   "--clients", str(creds / "clients.toml"), "--tls-cert", str(creds / "server.pem"),
                                   "--tls-key", str(creds / "server.key"), "--out", f"{tmp}/run", "--quiet"],
                                  stdout=subprocess.PIPE, text=True)
        port = int(server.stdout.readline().rsplit(":", 1)[1])
        started = time.perf_counter()
        ctx = mp.get_context("spawn")
        shares = np.array_split(np.arange(args.clients), args.processes)
        gens = [ctx.Process(target=generator, args=(port, str(creds), [int(i) for i in share])) for share in shares]
        for g in gens:
            g.start()
        peak_cpu = (0.0, 0.0)
        while server.poll() is None:
            try:
                peak_cpu = proc_stats(server.pid)
            except (FileNotFoundError, ProcessLookupError):
                break
            time.sleep(0.2)
        server.wait(timeout=60)
        for g in gens:
            g.join(timeout=60)
        total = time.perf_counter() - started
        rounds = [json.loads(line) for line in Path(f"{tmp}/run/metrics.jsonl").read_text().splitlines()]
    wall = [r["wall_time_s"] for r in rounds]
    latencies = [b - a for a, b in zip([0.0] + wall[:-1], wall)]
    print(f"{args.clients} clients in {args.processes} generator processes, TLS, loopback; "
          f"server exit code {server.returncode}")
    for r, lat in zip(rounds, latencies):
        print(f"round {r['round']}: {lat:.2f} s, {r['clients']} updates, {r['failures']} failures, "
              f"test accuracy {r['test_accuracy']:.3f}")
    print(f"whole run incl. start-up and joining: {total:.1f} s; server CPU {peak_cpu[0]:.1f} s, "
          f"peak RSS {peak_cpu[1]:.0f} MB")


if __name__ == "__main__":
    main()
