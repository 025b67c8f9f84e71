"""Federated scikit-learn: an SGDClassifier (logistic regression) trained by FedAvg on 8 clients' digits.

    python examples/sklearn_sgd.py [ROUNDS]
"""

import functools
import sys

import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import SGDClassifier

import fedstack
from fedstack.adapters.sklearn import SklearnTrainer


def main(rounds: int = 10):
    x, y = load_digits(return_X_y=True)
    x = (x / 16).astype(np.float32)
    data = fedstack.FederatedDataset.from_arrays(x[:1500], y[:1500], x[1500:], y[1500:], num_clients=8,
                                                 partition="dirichlet", alpha=1.0)
    # a module-level class and a functools.partial: picklable, so pool workers build their own trainer
    factory = functools.partial(SklearnTrainer, SGDClassifier(loss="log_loss", alpha=1e-4), 64, list(range(10)))
    history = fedstack.simulate(factory, data, factory().get_params(),
                                strategy=fedstack.FedAvg(fedstack.FitConfig(epochs=1, batch_size=16, lr=0.05)),
                                rounds=rounds, clients_per_round=4, engine=fedstack.make_engine("pool", workers=2))
    print(f"test accuracy after {rounds} rounds: {history.rounds[-1]['test_accuracy']:.3f}")
    return history


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
