"""Federated Keras: a Keras 3 MLP, on Keras's torch backend, trained by FedAvg on 8 clients' digits.

    pip install 'fedstack[keras,sklearn]'   # Keras 3 and torch; scikit-learn for the digits
    python examples/keras_mlp.py [ROUNDS]
"""

import functools
import sys

import numpy as np
from sklearn.datasets import load_digits

import fedstack
from fedstack.adapters.keras import KerasTrainer  # before `import keras`: it sets KERAS_BACKEND=torch

import keras  # noqa: E402


def mlp():
    """The model: built (keras.Input), uncompiled; it outputs logits, the trainer's default loss takes them."""
    return keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)])


def main(rounds: int = 10):
    x, y = load_digits(return_X_y=True)
    x = (x / 16).astype(np.float32)
    data = fedstack.FederatedDataset.from_arrays(x[:1500], y[:1500], x[1500:], y[1500:], num_clients=8,
                                                 partition="dirichlet", alpha=1.0)
    # a module-level function and a functools.partial: picklable, so pool workers build their own trainer
    factory = functools.partial(KerasTrainer, mlp, seed=0)
    history = fedstack.simulate(factory, data, factory().get_params(),
                                strategy=fedstack.FedAvg(fedstack.FitConfig(epochs=2, batch_size=16, lr=0.5)),
                                rounds=rounds, clients_per_round=4, engine=fedstack.make_engine("pool", workers=2))
    print(f"test accuracy after {rounds} rounds: {history.rounds[-1]['test_accuracy']:.3f}")
    return history


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
