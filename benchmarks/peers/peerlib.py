"""What the peer scripts of benchmarks/vs_peers.py share: the inputs, the models, one client's SGD, evaluation.

Imported by the Flower and pfl scripts in their own virtual environments (torch and numpy only, no
fedstack): the architectures below are copies of fedstack.models.build_model's `mlp` and `cnn`.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np

RESULT_PREFIX = "VSP_RESULT "


class Inputs:
    """The shared workload vs_peers.py wrote: data split, client schedule, batch orders, initial model.

    The arrays are memory-mapped copy-on-write (.npy), so processes that map them share the pages
    (PSS counts them once); with `data=False` only the workload is read. `order(r, k)` is the
    example indices the k-th client of round r (0-based) visits, in order: its shuffle for every
    local epoch, concatenated (the same draws fedstack makes).
    """

    def __init__(self, folder: str | Path, model: str, data: bool = True):
        folder = Path(folder)
        self.meta = json.loads((folder / f"workload-{model}.json").read_text())
        arrays = np.load(folder / f"workload-{model}.npz")
        self.params0 = arrays["params0"]
        self.schedule = arrays["schedule"]  # [rounds, clients_per_round] client ids
        self.client_sizes = arrays["client_sizes"]  # examples per client
        self._orders, self._offsets = arrays["order_flat"], arrays["order_offsets"]
        self._idx, self._idx_offsets = arrays["client_idx_flat"], arrays["client_idx_offsets"]
        if data:
            for name in ("x", "y", "x_test", "y_test"):
                file = folder / f"{name if '_' in name else name + '_train'}.npy"
                setattr(self, name, np.load(file, mmap_mode="c"))
        for key in ("model", "rounds", "clients_per_round", "epochs", "batch_size", "lr", "eval_batch_size",
                    "num_classes"):
            setattr(self, key, self.meta[key])
        self.input_shape = tuple(self.meta["input_shape"])

    def client_indices(self, cid: int) -> np.ndarray:
        """Client `cid`'s examples (indices into x, y): the split every peer shares."""
        return self._idx[self._idx_offsets[cid]:self._idx_offsets[cid + 1]]

    def order(self, rnd: int, slot: int) -> np.ndarray:
        i = rnd * self.clients_per_round + slot
        return self._orders[self._offsets[i]:self._offsets[i + 1]]


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int):
    """fedstack.models.build_model's `mlp` (McMahan's 2NN) and `cnn` (McMahan's CNN), copied."""
    from torch import nn

    features = math.prod(input_shape)
    if name == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(features, 200), nn.ReLU(),
                             nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, num_classes))
    if name == "cnn":
        channels, height, width = input_shape
        return nn.Sequential(
            nn.Conv2d(channels, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(64 * (height // 4) * (width // 4), 512), nn.ReLU(), nn.Linear(512, num_classes))
    raise ValueError(f"unknown model {name!r} (mlp | cnn)")


def set_flat(model, vector: np.ndarray) -> None:
    """Load a flat float32 vector into the model's parameters, in `parameters()` order (fedstack's order)."""
    import torch

    offset = 0
    for p in model.parameters():
        p.data.copy_(torch.from_numpy(np.ascontiguousarray(vector[offset:offset + p.numel()])).view_as(p))
        offset += p.numel()
    if offset != vector.size:
        raise ValueError(f"vector has {vector.size} values, the model {offset}")


def get_flat(model) -> np.ndarray:
    import torch

    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy().copy()


def sgd(model, x: np.ndarray, y: np.ndarray, order: np.ndarray, batch_size: int, lr: float) -> None:
    """Plain SGD over `order` in batches of `batch_size` (the loop of benchmarks/overhead.py's plain_loop)."""
    import torch

    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for i in range(0, len(order), batch_size):
        b = order[i:i + batch_size]
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(torch.from_numpy(x[b])), torch.from_numpy(y[b])).backward()
        opt.step()


def evaluate(model, x: np.ndarray, y: np.ndarray, batch_size: int) -> tuple[float, float]:
    """(accuracy, mean loss) on (x, y), eager PyTorch in batches of `batch_size`."""
    import torch

    model.eval()
    correct, loss = 0, 0.0
    with torch.inference_mode():
        for i in range(0, len(y), batch_size):
            out = model(torch.from_numpy(x[i:i + batch_size]))
            target = torch.from_numpy(y[i:i + batch_size])
            loss += float(torch.nn.functional.cross_entropy(out, target, reduction="sum"))
            correct += int((out.argmax(1) == target).sum())
    return correct / len(y), loss / len(y)


def arguments(doc: str):
    """The parser every peer script shares (--inputs, --model, --params-out); a peer adds its own options."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--inputs", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--params-out")
    return parser


def one_thread() -> None:
    """One torch thread in this process, as in every process of every peer."""
    import torch

    torch.set_num_threads(1)


def emit(result: dict, params: np.ndarray | None = None, params_out: str | None = None) -> None:
    """Print the result line vs_peers.py reads; save the final parameters where asked."""
    if params is not None and params_out:
        np.save(params_out, params)
    result.setdefault("python", sys.version.split()[0])
    result.setdefault("reported_at", time.time())
    print(RESULT_PREFIX + json.dumps(result), flush=True)
