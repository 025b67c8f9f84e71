"""Bring your own PyTorch model, loss and per-client data: a federated simulation in ~30 lines."""

import sys

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

import fedstack


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
        return self.layers(x)


def make_trainer():  # module level, so each worker process can build its own trainer once
    return fedstack.TorchTrainer(SmallNet(), loss_fn=nn.functional.cross_entropy)


def main(rounds: int = 15) -> fedstack.History:
    x, y = load_digits(return_X_y=True)
    x = (x / 16).astype(np.float32)
    # Each "hospital" holds the digits it happened to see: client i gets the samples with i = index % 8.
    clients = [(x[i:1500:8], y[i:1500:8]) for i in range(8)]
    data = fedstack.FederatedDataset.from_clients(clients, test=(x[1500:], y[1500:]))
    torch.manual_seed(0)
    history = fedstack.simulate(make_trainer, data, make_trainer().get_params(),
                                strategy=fedstack.FedAvg(fedstack.FitConfig(epochs=2, batch_size=16, lr=0.1)),
                                rounds=rounds, clients_per_round=4, engine=fedstack.make_engine("pool", workers=2),
                                seed=0)
    for record in history.rounds:
        print(f"round {record['round']:2d}  test accuracy {record['test_accuracy']:.3f}")
    print(f"per-client accuracy after training: {history.rounds[-1]['federated']}")
    return history


if __name__ == "__main__":  # the pool engine starts worker processes that import this file
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 15)
