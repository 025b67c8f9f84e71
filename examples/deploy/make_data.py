"""Writes one .npz per client (x, y): the files a real device would already hold."""

import sys
from pathlib import Path

import numpy as np

from fedstack.data import build_dataset

out, clients = Path(sys.argv[1]), int(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
dataset = build_dataset("digits", num_clients=clients, partition="dirichlet", alpha=1.0, seed=0, holdout=0)
for i in range(clients):
    data = dataset.client(i)
    np.savez(out / f"client-{i + 1}.npz", x=data.x[data.train_idx], y=data.y[data.train_idx])
print(f"wrote {clients} client data files to {out}")
