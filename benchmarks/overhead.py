"""fedstack's local engine against a plain PyTorch loop doing the same SGD steps (one process each).

The plain loop is the physical limit: the same model, the same clients in the same order, the
same batches, the same weighted average written by hand, the same evaluation. Prints both wall
times, the ratio (goal: ≤ 1.10), both accuracies, and whether the final parameters are bit-identical.

    python benchmarks/overhead.py [--rounds 20] [--repeats 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch

from common import default_workload
from fedstack.client import FitConfig
from fedstack.experiment import simulate
from fedstack.loop import Evaluation
from fedstack.models import build_model
from fedstack.sampling import UniformSampler
from fedstack.seeding import int_seed
from fedstack.strategy import FedAvg


def plain_loop(config, dataset, params0: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """FedAvg by hand: per round, each sampled client runs SGD from the global model; weighted mean."""
    torch.set_num_threads(1)
    c = config.client
    model = build_model(config.model.name, tuple(dataset.x.shape[1:]), dataset.num_classes)
    params = params0.copy()
    sampler = UniformSampler(dataset.num_clients, config.seed)
    accuracies = []

    def load(vector):
        offset = 0
        for p in model.parameters():
            p.data.copy_(torch.from_numpy(vector[offset:offset + p.numel()]).view_as(p))
            offset += p.numel()

    def read():
        return torch.cat([p.data.reshape(-1) for p in model.parameters()]).numpy()

    for rnd in range(1, config.server.rounds + 1):
        total, weight = np.zeros(params.size, np.float64), 0.0
        for cid in sampler.sample(rnd, config.server.clients_per_round):
            load(params)
            model.train()
            opt = torch.optim.SGD(model.parameters(), lr=c.lr)
            idx = dataset.train_idx[cid]
            rng = np.random.default_rng(int_seed(config.seed, "client", rnd, cid))
            for _ in range(c.epochs):
                order = idx[rng.permutation(len(idx))]
                for i in range(0, len(order), c.batch_size):
                    b = order[i:i + c.batch_size]
                    opt.zero_grad()
                    torch.nn.functional.cross_entropy(model(torch.from_numpy(dataset.x[b])),
                                                      torch.from_numpy(dataset.y[b])).backward()
                    opt.step()
            total += np.float64(len(idx)) * (read() - params)
            weight += len(idx)
        params = params + (total / weight).astype(np.float32)
        accuracies.append(evaluate(model, load, params, dataset))
    return params, accuracies


def evaluate(model, load, params, dataset) -> float:
    """Test accuracy with the same frozen-TorchScript evaluation fedstack uses."""
    load(params)
    model.eval()
    correct = 0
    with torch.inference_mode():
        frozen = torch.jit.optimize_for_inference(torch.jit.freeze(
            torch.jit.trace(model, torch.from_numpy(dataset.x_test[:1]), check_trace=False)))
        for i in range(0, len(dataset.y_test), 100):
            out = frozen(torch.from_numpy(dataset.x_test[i:i + 100]))
            correct += int((out.argmax(1) == torch.from_numpy(dataset.y_test[i:i + 100])).sum())
    return correct / len(dataset.y_test)


def fedstack_local(config, dataset, factory, params0):
    c = config.client
    strategy = FedAvg(FitConfig(epochs=c.epochs, batch_size=c.batch_size, lr=c.lr))
    with tempfile.TemporaryDirectory() as out:
        history = simulate(factory, dataset, params0, strategy=strategy, rounds=config.server.rounds,
                           clients_per_round=config.server.clients_per_round, engine="local",
                           seed=config.seed, evaluation=Evaluation(federated=False), out=out)
    return history.params, [r["test_accuracy"] for r in history.rounds]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    config, dataset, factory, params0 = default_workload(args.rounds)
    times = {"fedstack": [], "plain": []}
    for rep in range(args.repeats):
        for name in ("fedstack", "plain"):
            start = time.perf_counter()
            if name == "fedstack":
                params, acc = fedstack_local(config, dataset, factory, params0)
            else:
                params, acc = plain_loop(config, dataset, params0)
            times[name].append(time.perf_counter() - start)
            print(f"[{rep + 1}] {name:8s} {times[name][-1]:7.1f} s  final accuracy {acc[-1]:.4f}", flush=True)
            if name == "fedstack":
                ours = params
        print(f"[{rep + 1}] final parameters bit-identical: {np.array_equal(ours, params)}"
              f" (max |diff| {np.abs(ours - params).max():.3g})")
    f, p = statistics.median(times["fedstack"]), statistics.median(times["plain"])
    print(f"median wall time: fedstack local {f:.1f} s, plain PyTorch {p:.1f} s, ratio {f / p:.3f} (goal ≤ 1.10)")


if __name__ == "__main__":
    main()
